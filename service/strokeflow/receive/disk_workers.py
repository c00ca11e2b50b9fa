"""Threads that run a receiving process's fsyncs and hashes beside its associations.

Each C-STORE hands its file's fsync and its folder's (and, for a lone association, its
hash) to other threads, so that they run at once and while the association thread checks
the data set. :class:`concurrent.futures.ThreadPoolExecutor` did this with a ``Future``
(a ``Condition`` built and notified in Python), a work item and its idle semaphore for
every task: in a py-spy profile of 4 senders, ~8 % of the receiving processes' Python
time went to ``submit`` alone. Here a task is a slot object with a C lock that is
released when it is done, and tasks travel on a ``queue.SimpleQueue``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class DiskTask(Generic[T]):
    """One task's outcome; :meth:`result` waits for it."""

    __slots__ = ("_args", "_call", "_done", "_error", "_value")

    def __init__(self, call: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._call = call
        self._args = args
        self._done = threading.Lock()
        self._done.acquire()  # released by the worker once the task has run
        self._value: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        """Run the task (in a worker) and release its waiter."""
        try:
            self._value = self._call(*self._args)
        except BaseException as exc:  # handed to the waiter, as a Future does
            self._error = exc
        finally:
            self._args = ()
            self._done.release()

    def result(self) -> T:
        """Wait for the task; its return value, or its exception raised here."""
        with self._done:
            pass
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class DiskWorkers:
    """Up to ``max_workers`` threads, started as tasks need them and kept.

    A task never waits behind another while fewer than ``max_workers`` run: a new thread
    starts when no started one is idle.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._tasks: queue.SimpleQueue[DiskTask[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopped = False

    def submit(self, call: Callable[..., T], *args: Any) -> DiskTask[T]:
        """Run ``call(*args)`` in a worker thread.

        Raises
        ------
        RuntimeError
            After :meth:`shutdown`.
        """
        task = DiskTask(call, args)
        with self._lock:
            if self._stopped:
                raise RuntimeError("disk workers are shut down")
            if self._idle:
                self._idle -= 1  # this one is taken: the next task may need a new thread
            elif len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._tasks.put(task)
        return task

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            task.run()
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads (waits for them)."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        for thread in threads:
            thread.join()
