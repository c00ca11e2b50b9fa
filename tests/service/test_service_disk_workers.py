"""The receiver's disk worker threads."""

from __future__ import annotations

import threading

import pytest

from strokeflow.receive.disk_workers import DiskWorkers


def test_a_task_gives_its_value_or_raises_its_error() -> None:
    workers = DiskWorkers(2, "test-disk")
    try:
        assert workers.submit(pow, 2, 10).result() == 1024
        failing = workers.submit(int, "not a number")
        with pytest.raises(ValueError):
            failing.result()
        with pytest.raises(ValueError):  # asked again: the same answer
            failing.result()
    finally:
        workers.shutdown()


def test_tasks_run_at_once_up_to_the_maximum() -> None:
    workers = DiskWorkers(3, "test-disk")
    started = [threading.Event() for _ in range(3)]
    go = threading.Event()

    def wait_for_all(i: int) -> bool:
        started[i].set()
        return all(e.wait(5) for e in started) and go.wait(5)

    try:
        tasks = [workers.submit(wait_for_all, i) for i in range(3)]
        assert all(e.wait(5) for e in started)  # none waits behind another
        go.set()
        assert [t.result() for t in tasks] == [True, True, True]
        # Finished threads are reused: no fourth one.
        assert workers.submit(len, "abc").result() == 3
        assert len(workers._threads) == 3
    finally:
        workers.shutdown()


def test_shutdown_runs_what_is_queued_and_refuses_more() -> None:
    workers = DiskWorkers(1, "test-disk")
    done: list[int] = []
    tasks = [workers.submit(done.append, i) for i in range(5)]
    workers.shutdown()
    assert done == [0, 1, 2, 3, 4]
    assert all(t.result() is None for t in tasks)
    with pytest.raises(RuntimeError):
        workers.submit(len, "x")
