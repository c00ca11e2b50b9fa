"""The receiving socket acknowledges at once: a sender with Nagle's algorithm on is not stalled.

A sender that keeps Nagle's algorithm on (DCMTK's default) holds the last partial segment of each
message until what it sent before is acknowledged; with the receiver's delayed acknowledgement that
cost up to 40 ms an instance (37 against 380 instances/s in ``benchmarks/ingest.py``'s Nagle run).
"""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from strokeflow.receive import limits


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_QUICKACK is Linux's")
def test_every_read_of_a_pdu_asks_for_an_immediate_acknowledgement() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = bytes(range(256)) * 2048  # 512 KiB: several reads
    sender = threading.Thread(
        target=lambda: socket.create_connection(("127.0.0.1", port)).sendall(payload)
    )
    sender.start()
    conn, _ = server.accept()
    seen: list[int] = []
    real_setsockopt = conn.setsockopt

    class Recording:
        """The accepted socket, recording the options set on it before each read."""

        def setsockopt(self, level: int, option: int, value: int) -> None:
            seen.append(option)
            real_setsockopt(level, option, value)

        def recv_into(self, view: memoryview, nbytes: int) -> int:
            return conn.recv_into(view, nbytes)

    reader = limits._WholeReadSocket.__new__(limits._WholeReadSocket)
    reader.socket = Recording()  # type: ignore[assignment]
    data = reader.recv(len(payload))
    sender.join()
    conn.close()
    server.close()
    assert bytes(data) == payload
    # Set before every read (the kernel clears it by itself), nothing else set.
    assert seen and set(seen) == {socket.TCP_QUICKACK}


def test_quick_ack_is_harmless_on_a_socket_that_refuses_it() -> None:
    class NotTcp:
        def setsockopt(self, *args: object) -> None:
            raise OSError("not a TCP socket")

    limits._quick_ack(NotTcp())  # no exception
