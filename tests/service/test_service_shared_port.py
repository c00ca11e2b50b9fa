"""The receiving processes' accept board."""

from __future__ import annotations

import ctypes

from strokeflow.receive.shared_port import GONE, AcceptBoard


def test_open_connections_counts_every_process_but_the_gone() -> None:
    counts = (ctypes.c_int * 3)(1, 0, 2)
    board = AcceptBoard(counts, 0)
    assert board.open_connections() == 3
    AcceptBoard(counts, 1).mark_gone()
    assert counts[1] == GONE
    assert board.open_connections() == 3
    board.add(1)
    assert board.open_connections() == 4
    assert not board.busier_than_another()  # 2, gone, 2
    AcceptBoard(counts, 2).add(-1)
    assert board.busier_than_another()  # 2, gone, 1
