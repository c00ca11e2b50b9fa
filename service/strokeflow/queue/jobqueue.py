"""huey as a carrier of job ids: SQLite storage by default, Redis when the URL says so.

huey does not acknowledge a task: a message taken by a worker that then dies is gone.
That is fine here because the job table is the truth; :mod:`strokeflow.worker.maintenance`
re-enqueues jobs whose lease expired or whose message was lost, and claiming a job is a
compare-and-set in SQL, so a duplicate message runs nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from huey import Huey, RedisHuey, SqliteHuey

LOG = logging.getLogger(__name__)

#: The huey queue name (also the Redis key prefix).
QUEUE_NAME = "strokeflow"

#: What a worker does with a job id taken from the queue.
JobHandler = Callable[[int], None]


def _make_huey(queue_url: str) -> Huey:
    parts = urlsplit(queue_url)
    if parts.scheme in ("redis", "rediss", "unix"):
        return RedisHuey(QUEUE_NAME, url=queue_url, results=False, blocking=True, read_timeout=1)
    if parts.scheme == "sqlite":
        # sqlite:////abs/path -> /abs/path ; sqlite:///rel/path -> rel/path
        path = Path(queue_url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(QUEUE_NAME, filename=str(path), results=False, timeout=30)
    raise ValueError(f"queue URL {queue_url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")


class JobQueue:
    """Put job ids on the queue and take them off.

    Parameters
    ----------
    queue_url : str
        ``sqlite:////abs/queue.sqlite`` or ``redis://host:6379/0``.
    handler : callable, optional
        Called with each job id a worker takes (only needed by workers).
    """

    def __init__(self, queue_url: str, handler: JobHandler | None = None) -> None:
        self.url = queue_url
        self.huey = _make_huey(queue_url)
        self._handler = handler

        @self.huey.task(name="run_job")
        def run_job(job_id: int) -> None:
            if self._handler is None:
                raise RuntimeError(f"job {job_id} taken by a queue without a handler")
            self._handler(job_id)

        self._task = run_job

    def enqueue(self, job_ids: list[int]) -> None:
        """Put each job id on the queue."""
        for job_id in job_ids:
            self._task(job_id)
            LOG.info("job %d enqueued", job_id)

    def pending(self) -> int:
        """Messages waiting on the queue."""
        return int(self.huey.pending_count())

    def run_next(self) -> bool:
        """Take one message and run it here; ``False`` when the queue was empty.

        With Redis this blocks up to one second waiting for a message. An exception
        of the handler propagates (the job row already records it).
        """
        task = self.huey.dequeue()
        if task is None:
            return False
        self.huey.execute(task)
        return True

    def flush(self) -> None:
        """Drop every waiting message (tests; the job table still knows every job)."""
        self.huey.flush()


def open_queue(queue_url: str, handler: JobHandler | None = None) -> JobQueue:
    """A :class:`JobQueue` on ``queue_url`` (see :class:`JobQueue`)."""
    return JobQueue(queue_url, handler)
