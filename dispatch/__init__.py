"""The producer side of the run queue: send committed run ids to whatever trains them.

Both the API and the worker (its reaper) import this; it never imports the worker's start-up
code, PyTorch, or asks for GPUs, so the API image stays small and starts in seconds.
"""
