"""The listener cannot be locked out: the attacks of issue 14 (rows 3 and 4), on loopback.

A legitimate C-ECHO comes from another loopback address (127.0.0.2) than the attacker
(127.0.0.1), since the limits are per peer address; it must be answered within 2 s while
the attack goes on and after it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from servicekit import pynetdicom_store, wait_for, write_ct_files

ATTACKER = "127.0.0.1"
CLIENT = "127.0.0.2"
ECHO_LIMIT_S = 2.0


def echo_latency_s(port: int, source: str = CLIENT) -> float | None:
    """Seconds a C-ECHO from ``source`` took to be answered with success; ``None`` if not."""
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ECHO_LIMIT_S + 1
    ae.connection_timeout = ECHO_LIMIT_S + 1
    start = time.monotonic()
    assoc = ae.associate(ATTACKER, port, ae_title="STROKEFLOW", bind_address=(source, 0))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status or status.Status != 0x0000:
        return None
    return time.monotonic() - start


def echo_throughout(port: int, window_s: float, source: str = CLIENT) -> list[float]:
    """C-ECHO every 0.25 s for ``window_s``; each must be answered within the limit."""
    latencies = []
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        latency = echo_latency_s(port, source)
        assert latency is not None, f"C-ECHO from {source} refused after {latencies}"
        latencies.append(latency)
        time.sleep(0.25)
    assert max(latencies) < ECHO_LIMIT_S, latencies
    return latencies


def baseline_echo_s(port: int) -> float:
    """Slowest of a few C-ECHOs before the attack: the reference for this machine now."""
    return max(echo_throughout(port, 1.0))


def _connect(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((ATTACKER, port))
    return sock


def _closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the listener closes ``sock`` within ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset: closed too
    return True


def test_silent_connections_do_not_lock_others_out(make_listener: Callable[..., Any]) -> None:
    listener = make_listener()  # default limits: what a deployment gets
    request_timeout_s = listener.settings.association_request_timeout_s
    baseline_s = baseline_echo_s(listener.port)
    silent = []
    dropped_s: list[float] = []

    def watch(sock: socket.socket, opened: float) -> None:
        if _closed_by_peer(sock, request_timeout_s + 5.0):
            dropped_s.append(time.monotonic() - opened)

    watchers = []
    for _ in range(17):
        silent.append(_connect(ATTACKER, listener.port))
        watchers.append(threading.Thread(target=watch, args=(silent[-1], time.monotonic())))
    for watcher in watchers:
        watcher.start()
    try:
        latencies = echo_throughout(listener.port, 10.0)
    finally:
        for watcher in watchers:
            watcher.join(timeout=request_timeout_s + 10.0)
        for sock in silent:
            sock.close()
    assert len(dropped_s) == len(silent), "a silent connection was kept open"
    dropped_s.sort()
    per_host = listener.settings.max_associations_per_host
    # Those beyond the host's limit are closed at once, the rest after the request timeout.
    assert dropped_s[len(silent) - per_host - 1] < 1.0, dropped_s
    assert request_timeout_s - 0.5 < dropped_s[-1] < request_timeout_s + 2.0, dropped_s
    assert echo_latency_s(listener.port, ATTACKER) is not None  # the host may come back
    print(
        f"silent x17: echo max {max(latencies):.3f} s over {len(latencies)} echoes "
        f"(before: {baseline_s:.3f} s); "
        f"{len(silent) - per_host} closed within {dropped_s[len(silent) - per_host - 1]:.3f} s, "
        f"the rest after {dropped_s[-1]:.2f} s"
    )


def test_a_silent_connection_is_dropped_within_the_request_timeout(
    make_listener: Callable[..., Any],
) -> None:
    listener = make_listener(association_request_timeout_s=1.5)
    with _connect(ATTACKER, listener.port) as sock:
        start = time.monotonic()
        assert _closed_by_peer(sock, 5.0)
        dropped_s = time.monotonic() - start
    assert 1.0 < dropped_s < 3.0, dropped_s
    print(f"silent connection dropped after {dropped_s:.2f} s (timeout 1.5 s)")


def _idle_association(port: int) -> Association:
    ae = AE(ae_title="IDLE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.connection_timeout = 3
    return ae.associate(ATTACKER, port, ae_title="STROKEFLOW", bind_address=(ATTACKER, 0))


def test_idle_associations_are_limited_per_host_and_closed(
    make_listener: Callable[..., Any],
) -> None:
    listener = make_listener(idle_association_timeout_s=4.0, max_associations_per_host=8)
    baseline_s = baseline_echo_s(listener.port)
    started = time.monotonic()
    held = [_idle_association(listener.port) for _ in range(16)]
    try:
        established = [a for a in held if a.is_established]
        assert len(established) == 8  # the host's limit; the others were closed at once
        latencies = echo_throughout(listener.port, 3.0)
        wait_for(
            lambda: not any(a.is_established for a in established),
            timeout_s=8.0,
            what="idle associations to be aborted",
        )
        closed_after_s = time.monotonic() - started
        assert all(a.is_aborted for a in established)
        assert closed_after_s > 3.5, closed_after_s
        assert echo_latency_s(listener.port, ATTACKER) is not None  # the host may come back
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.abort()
    print(
        f"idle x16: 8 held, echo max {max(latencies):.3f} s (before: {baseline_s:.3f} s); "
        f"closed after {closed_after_s:.1f} s (timeout 4 s)"
    )


def test_garbage_connections_are_dropped_at_once(make_listener: Callable[..., Any]) -> None:
    listener = make_listener()
    baseline_s = baseline_echo_s(listener.port)
    rng = np.random.default_rng(14)
    payloads = [rng.bytes(int(rng.integers(1, 512))) for _ in range(20)]
    # One that starts like an A-ASSOCIATE-RQ and is garbage after: pynetdicom's decoder
    # meets it.
    payloads.append(b"\x01\x00" + struct.pack(">L", 200) + rng.bytes(200))
    closed = []

    def attack() -> None:
        for payload in payloads:
            with _connect(ATTACKER, listener.port) as sock:
                sock.sendall(payload)
                start = time.monotonic()
                if _closed_by_peer(sock, 3.0):
                    closed.append(time.monotonic() - start)

    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        latencies = echo_throughout(listener.port, 3.0)
    finally:
        attacker.join(timeout=60)
    assert len(closed) == len(payloads)
    assert max(closed) < 1.0, closed
    latencies.append(echo_latency_s(listener.port, ATTACKER) or ECHO_LIMIT_S)
    assert max(latencies) < ECHO_LIMIT_S
    print(
        f"garbage x21: each closed within {max(closed):.3f} s; echo max {max(latencies):.3f} s "
        f"(before: {baseline_s:.3f} s)"
    )


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextmanager
def _peak_rss() -> Iterator[list[int]]:
    """Samples this process's RSS every 10 ms; yields ``[baseline, peak]``."""
    figures = [_rss_bytes(), _rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            figures[1] = max(figures[1], _rss_bytes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield figures
    finally:
        stop.set()
        sampler.join()


def test_an_oversized_pdu_is_refused_from_its_header(make_listener: Callable[..., Any]) -> None:
    listener = make_listener()  # the listener runs in this process: its RSS is ours
    ae = AE(ae_title="BIGPDU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(ATTACKER, listener.port, ae_title="STROKEFLOW")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    chunk = bytes(1 << 20)
    streamed = 0
    with _peak_rss() as rss:
        start = time.monotonic()
        try:
            raw.sendall(b"\x04\x00" + struct.pack(">L", 1 << 30))
            while streamed < 300 << 20:
                raw.sendall(chunk)
                streamed += len(chunk)
        except OSError:
            pass
        refused_s = time.monotonic() - start
        wait_for(lambda: assoc.is_aborted, timeout_s=5.0, what="the A-ABORT")
    growth = rss[1] - rss[0]
    assert streamed < 64 << 20, f"{streamed >> 20} MiB were taken before the abort"
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB"
    assert echo_latency_s(listener.port) is not None
    print(
        f"1 GiB PDU: aborted after {streamed >> 20} MiB in {refused_s:.2f} s; "
        f"RSS {rss[0] >> 20} -> peak {rss[1] >> 20} MiB"
    )


def test_pdus_at_the_advertised_maximum_are_received(
    make_listener: Callable[..., Any], tmp_path: Path
) -> None:
    listener = make_listener(max_pdu_receive_bytes=65536)
    files = write_ct_files(tmp_path / "sent", 2, size=512)  # 512 KiB of pixels each
    assert pynetdicom_store(listener.port, files) == [0x0000, 0x0000]


def test_a_pdu_over_the_maximum_by_one_byte_is_refused(
    make_listener: Callable[..., Any],
) -> None:
    listener = make_listener(max_pdu_receive_bytes=65536)
    ae = AE(ae_title="BIGPDU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(ATTACKER, listener.port, ae_title="STROKEFLOW")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    raw.sendall(b"\x04\x00" + struct.pack(">L", 65536 + 6 + 1))
    wait_for(lambda: assoc.is_aborted, timeout_s=5.0, what="the A-ABORT")


@pytest.fixture
def tls_settings(tmp_path: Path) -> dict[str, Path]:
    from test_service_tls import _self_signed

    certs = tmp_path / "certs"
    certs.mkdir()
    key, cert = _self_signed(certs, "strokeflow")
    return {"tls_certificate": cert, "tls_key": key}


def test_a_silent_connection_does_not_stop_tls_handshakes(
    make_listener: Callable[..., Any], tls_settings: dict[str, Path]
) -> None:
    import ssl

    listener = make_listener(**tls_settings)
    client = ssl.create_default_context(cafile=str(tls_settings["tls_certificate"]))
    client.check_hostname = False
    with _connect(ATTACKER, listener.port):
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.connection_timeout = ECHO_LIMIT_S + 1
        start = time.monotonic()
        assoc = ae.associate(
            ATTACKER, listener.port, ae_title="STROKEFLOW", tls_args=(client, "strokeflow")
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert time.monotonic() - start < ECHO_LIMIT_S
    # The PDU limit holds inside TLS too.
    big = ae.associate(
        ATTACKER, listener.port, ae_title="STROKEFLOW", tls_args=(client, "strokeflow")
    )
    assert big.is_established
    tls_socket = big.dul.socket.socket  # type: ignore[union-attr]
    assert tls_socket is not None
    with contextlib.suppress(OSError):  # the listener may close while this is written
        tls_socket.sendall(b"\x04\x00" + struct.pack(">L", 1 << 30) + bytes(1 << 20))
    wait_for(lambda: big.is_aborted, timeout_s=5.0, what="the A-ABORT over TLS")


def _dataset_fragments(context_id: int, fragment_bytes: int) -> bytes:
    """One P-DATA-TF PDU carrying one data set fragment (not the last) of zeros."""
    pdv = struct.pack(">LBB", fragment_bytes + 2, context_id, 0x00) + bytes(fragment_bytes)
    return b"\x04\x00" + struct.pack(">L", len(pdv)) + pdv


def test_a_data_set_beyond_the_maximum_is_refused_as_it_arrives(
    make_listener: Callable[..., Any],
) -> None:
    # Every PDU within the maximum, but one data set without end: pynetdicom would
    # assemble it in memory.
    listener = make_listener(max_dataset_bytes=16 << 20)
    ae = AE(ae_title="BIGSET")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(ATTACKER, listener.port, ae_title="STROKEFLOW")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    pdu = _dataset_fragments(assoc.accepted_contexts[0].context_id or 1, (1 << 20) - 6)
    streamed = 0
    with _peak_rss() as rss:
        try:
            while streamed < 300 << 20:
                raw.sendall(pdu)
                streamed += len(pdu)
        except OSError:
            pass
        wait_for(lambda: assoc.is_aborted, timeout_s=5.0, what="the A-ABORT")
    growth = rss[1] - rss[0]
    assert streamed < 48 << 20, f"{streamed >> 20} MiB were taken before the abort"
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB"
    assert echo_latency_s(listener.port) is not None
    print(
        f"endless data set (limit 16 MiB): aborted after {streamed >> 20} MiB; "
        f"RSS {rss[0] >> 20} -> peak {rss[1] >> 20} MiB"
    )


def test_data_sets_up_to_the_maximum_are_stored_and_larger_ones_refused(
    make_listener: Callable[..., Any], tmp_path: Path
) -> None:
    listener = make_listener(max_dataset_bytes=1 << 20)
    small = write_ct_files(tmp_path / "small", 2, size=512)  # 512 KiB each: the count resets
    assert pynetdicom_store(listener.port, small) == [0x0000, 0x0000]
    large = write_ct_files(tmp_path / "large", 1, study="study-b", size=1024)  # 2 MiB
    assert pynetdicom_store(listener.port, large) == [None]  # aborted, not answered
    assert echo_latency_s(listener.port) is not None
