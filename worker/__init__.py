"""Workers: the Celery app and task, the embedded local worker, and the code they share."""
