"""What every gradlab process shares to be observed: structured logs and Prometheus exposition.

At the bottom of the layers (beside science and settings): api, worker and cli use it; it
imports nothing of gradlab.
"""
