"""Several receiving processes on one listening socket, each connection to the least busy.

With ``SO_REUSEPORT`` every process had its own accept queue and the kernel chose one by a
hash of the peer's address and port: four senders went to four processes only about one
time in ten, and three associations in one process share one GIL (benchmarks/ingest.py,
4 senders, 4 processes: associations per process 3/1/0/0 in a profiled run). Here the
listener opens the socket once and passes it to its receiving processes; each writes how
many connections it holds on an :class:`AcceptBoard` in shared memory, and a process holding
more than the least busy one lets that one accept (for up to :data:`DEFER_MAX_S`, so that a
stuck process cannot hold a connection back).
"""

from __future__ import annotations

import ctypes
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from typing import Any

from strokeflow.receive.limits import LimitedAssociationServer

#: How long (s) a busier process leaves a waiting connection to a less busy one.
DEFER_MAX_S = 0.5
#: How often (s) a deferring process looks whether the connection has been taken.
DEFER_STEP_S = 0.002
#: The count of a process that has exited: never the least busy.
GONE = 2**30


#: How often (s) a receiving process looks whether the listener has started listening.
LISTEN_POLL_S = 0.05


def bound_socket(address: tuple[str, int]) -> socket.socket:
    """Bind, non-blocking: several processes accept from it, and the one that loses the
    race for a connection must get ``BlockingIOError``, not wait for the next. It listens
    (:meth:`socket.socket.listen`) once every receiving process is ready: until then a
    sender is refused, and tries again, rather than left waiting unanswered.

    Raises
    ------
    OSError
        The address cannot be bound.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def board_memory(context: SpawnContext, processes: int) -> ctypes.Array[ctypes.c_int]:
    """The shared counts for ``processes`` receiving processes (give each an
    :class:`AcceptBoard` on it with its own index)."""
    return context.RawArray(ctypes.c_int, processes)


@dataclass
class AcceptBoard:
    """Connections open in each receiving process, in memory they all share.

    Each process writes only its own slot, so no lock is shared between processes (one
    killed while holding it would stop the others); a stale read costs at most one
    connection placed less well.
    """

    counts: ctypes.Array[ctypes.c_int]
    #: This process's slot.
    index: int
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def busier_than_another(self) -> bool:
        """Whether some other process holds fewer connections than this one."""
        counts = self.counts[:]
        mine = counts[self.index]
        return any(n < mine for i, n in enumerate(counts) if i != self.index)

    def open_connections(self) -> int:
        """Connections open in all the receiving processes together."""
        return sum(n for n in self.counts[:] if n < GONE)

    def mark_gone(self) -> None:
        """Mark this slot's process as exited (called by the parent, which watches it)."""
        self.counts[self.index] = GONE

    def add(self, delta: int) -> None:
        """Count a connection opened (+1) or closed (-1) in this process."""
        with self._lock:  # the accepting thread and the connection threads
            self.counts[self.index] += delta


class SharedPortServer(LimitedAssociationServer):
    """:class:`LimitedAssociationServer` on an inherited listening socket, leaving
    connections to less busy processes.

    Keyword arguments besides ``limits``: ``listen_socket``, ``board``, and ``announce``,
    called with the port once the socket listens.
    """

    def __init__(
        self,
        *args: Any,
        listen_socket: socket.socket,
        board: AcceptBoard,
        announce: Callable[[int], None],
        **kwargs: Any,
    ) -> None:
        self._shared = listen_socket
        self.board = board
        self._announce = announce
        self._stopping = False
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Use the inherited socket instead of binding one."""
        assert self.socket is not None
        self.socket.close()
        self.socket = self._shared
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Nothing: the listener makes the inherited socket listen."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve once the shared socket listens (a bound socket that does not yet listen
        reads as ready, and accepting from it fails at once)."""
        while not self._stopping and not self._listens():
            time.sleep(LISTEN_POLL_S)
        if not self._stopping:
            self._announce(self._shared.getsockname()[1])
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        """Stop serving, also while waiting for the socket to listen."""
        self._stopping = True
        super().shutdown()

    def _listens(self) -> bool:
        return bool(self._shared.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, after a less busy process has had its chance.

        Raises
        ------
        BlockingIOError
            Another process accepted the connection (``socketserver`` then waits again).
        """
        deadline = time.monotonic() + DEFER_MAX_S
        while self.board.busier_than_another() and time.monotonic() < deadline:
            time.sleep(DEFER_STEP_S)
            readable, _, _ = select.select([self._shared], [], [], 0)
            if not readable:
                raise BlockingIOError("connection taken by another receiving process")
        return super().get_request()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Count the connection as this process's until its thread ends."""
        self.board.add(1)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.board.add(-1)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run the connection; it stops counting however it ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.board.add(-1)
