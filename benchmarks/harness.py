"""Pieces the benchmarks share: free ports, waiting, server processes and their
environment, cases run in worker processes. Benchmarks run as scripts
(``python benchmarks/x.py``), so this folder is on ``sys.path`` and they import it by
name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

_In = TypeVar("_In")
_Out = TypeVar("_Out")


def map_cases(fn: Callable[[_In], _Out], cases: Iterable[_In], jobs: int) -> Iterator[_Out]:
    """``fn`` of every case, in order: in this process for ``jobs <= 1``, else in a pool of
    ``jobs`` worker processes (``fn`` and the cases must pickle)."""
    if jobs <= 1:
        yield from map(fn, cases)
        return
    with ProcessPoolExecutor(jobs) as pool:
        yield from pool.map(fn, cases)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s; exit naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on loopback ``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A server process in its own process group (its children are stopped with it)."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=out, env=env, start_new_session=True
            )

    def check_alive(self) -> bool:
        """True while running; exits with the log's tail when the server died."""
        if self.process.poll() is None:
            return True
        tail = self.log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{self.name} exited with code {self.process.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after 30 s."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass


def strokeflow_env(data_dir: Path, port: int, **values: object) -> dict[str, str]:
    """The environment of a ``strokeflow`` process: loopback, its own data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROKEFLOW_")}
    env.update(
        {
            "STROKEFLOW_DATA_DIR": str(data_dir),
            "STROKEFLOW_DICOM_PORT": str(port),
            "STROKEFLOW_BIND_ADDRESS": "127.0.0.1",
            "STROKEFLOW_MIN_FREE_DISK_MB": "0",
        }
    )
    env.update({f"STROKEFLOW_{k.upper()}": str(v) for k, v in values.items()})
    return env
