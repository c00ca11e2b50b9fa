"""The task queue (huey): carries job ids from the listener to the workers."""

from strokeflow.queue.jobqueue import JobQueue, open_queue

__all__ = ["JobQueue", "open_queue"]
