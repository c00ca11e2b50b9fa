"""Limits that keep one peer from locking the DICOM listener out and bound its memory.

pynetdicom counts every accepted connection as an association from the moment it is
accepted, waits 30 s for an A-ASSOCIATE-RQ that may never come, and reads a PDU of any
declared length into memory. Seventeen silent connections therefore refused everyone for
30 s, and one P-DATA-TF claiming 1 GiB was buffered whole. :class:`LimitedAssociationServer`
puts these limits in front of it, all with the standard library's own hooks
(``socketserver.verify_request``, a ``socket.socket`` subclass, ``SSLContext.sslsocket_class``)
rather than by patching pynetdicom:

- at most ``max_associations_per_host`` connections from one peer address; more are closed
  at once, before a thread is made for them;
- a connection must finish its TLS handshake and start an A-ASSOCIATE-RQ within
  ``association_request_timeout_s``, and a first byte that cannot start one (garbage) is
  answered with an A-ABORT and closed at once; neither reaches pynetdicom, so neither counts
  towards ``max_associations``;
- an established association idle for ``idle_association_timeout_s`` is aborted (pynetdicom's
  network timeout), and no single read or write may stall for longer (the socket timeout);
- a PDU declaring more than ``max_pdu_receive_bytes`` (what we advertise as our maximum
  length) is refused from its 6-byte header: A-ABORT, connection closed, body never read;
  so is a data set whose fragments add up to more than ``max_dataset_bytes`` (pynetdicom
  assembles each data set in memory), at the fragment header that crosses it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from strokeflow.config import Settings
from strokeflow.receive.reactor import make_prompt
from strokeflow.receive.store_response import use_quick_store_responses

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.association import Association
    from pynetdicom.events import EventHandlerType
    from pynetdicom.presentation import PresentationContext

LOG = logging.getLogger(__name__)

#: Bound for PDUs other than P-DATA-TF, whose length our maximum length does not govern. The
#: largest legitimate one is an A-ASSOCIATE-RQ: 128 presentation contexts each proposing
#: thirty 64-character transfer syntaxes come to ~270 KiB; the rest are a few bytes.
NON_DATA_PDU_BYTES = 1 << 20

_P_DATA_TF = 0x04
_A_ASSOCIATE_RQ = b"\x01"
#: A PDV item header (4-byte length, context ID, control byte): senders differ on whether
#: the maximum length counts it, so a P-DATA-TF may exceed the maximum by that much.
_PDV_HEADER_BYTES = 6
#: How often the same peer's refusals of one kind are logged loudly (the rest at DEBUG).
_WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The listener's limits per connection and per peer address."""

    max_connections_per_host: int
    request_timeout_s: float
    idle_timeout_s: float
    max_pdu_bytes: int
    max_dataset_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits configured in ``settings``."""
        return cls(
            max_connections_per_host=settings.max_associations_per_host,
            request_timeout_s=settings.association_request_timeout_s,
            idle_timeout_s=settings.idle_association_timeout_s,
            max_pdu_bytes=settings.max_pdu_receive_bytes,
            max_dataset_bytes=settings.max_dataset_bytes,
        )

    def pdu_limit(self, pdu_type: int) -> int:
        """Largest PDU length field accepted for a PDU of ``pdu_type``."""
        data_limit = self.max_pdu_bytes + _PDV_HEADER_BYTES
        if pdu_type == _P_DATA_TF:
            return data_limit
        return max(data_limit, NON_DATA_PDU_BYTES)


class _Throttle:
    """Logs each peer's refusals of one kind at most once per ``_WARN_EVERY_S`` at ``level``,
    the rest at DEBUG: a flood of attacking connections must not flood the log too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}

    def log(self, level: int, peer: str, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            loud = now - self._last.get((peer, kind), -_WARN_EVERY_S) >= _WARN_EVERY_S
            if loud:
                if len(self._last) > 4096:  # peers come and go; keep the table small
                    self._last.clear()
                self._last[(peer, kind)] = now
        LOG.log(level if loud else logging.DEBUG, message, *args)


_THROTTLE = _Throttle()


class _Slot:
    """One connection's place in its host's count; released once, whichever path ends it."""

    def __init__(self, slots: _HostSlots, host: str) -> None:
        self._slots = slots
        self.host = host
        self._released = False

    def release(self) -> None:
        with self._slots.lock:
            if self._released:
                return
            self._released = True
            self._slots.open[self.host] -= 1
            if self._slots.open[self.host] <= 0:
                del self._slots.open[self.host]


class _HostSlots:
    """Open connections per peer address."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self.lock = threading.Lock()
        self.open: Counter[str] = Counter()

    def take(self, host: str) -> _Slot | None:
        """A slot for a new connection from ``host``, or ``None`` when it has too many."""
        with self.lock:
            if self.open[host] < self.per_host:
                self.open[host] += 1
                return _Slot(self, host)
        _THROTTLE.log(
            logging.WARNING,
            host,
            "per-host",
            "connection from %s closed: it already has %d open (max_associations_per_host)",
            host,
            self.per_host,
        )
        return None


class _PduGuard(socket.socket):
    """Watches the PDU framing of everything received and refuses an oversized PDU.

    pynetdicom reads a PDU as its 6-byte header, then ``recv(length)`` into one growing
    buffer. The guard sees every byte pynetdicom reads, however it chunks its reads, so it
    knows where each header starts; on a header declaring more than the limit it sends an
    A-ABORT, closes the connection and reports end-of-stream, which pynetdicom takes as the
    transport closing (A-P-ABORT to the association) without reading the body.
    """

    limits: ConnectionLimits | None = None
    slot: _Slot | None = None
    peer: str = ""
    _header: bytes = b""
    _body_left: int = 0
    _in_p_data: bool = False
    _pdv_header: bytes = b""
    _pdv_left: int = 0
    _dataset_bytes: int = 0
    _refused: bool = False

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._refused:
            return b""
        data = super().recv(buflen, flags)
        if flags & socket.MSG_PEEK or self.limits is None:
            return data
        if not self._frames_within_limit(data):
            self._refuse()
            return b""
        return data

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        if self._refused:
            return 0
        if nbytes is None:  # each base's own default: the buffer's size
            received = super().recv_into(buffer, flags=flags)
        else:
            received = super().recv_into(buffer, nbytes, flags)
        if flags & socket.MSG_PEEK or self.limits is None:
            return received
        if not self._frames_within_limit(memoryview(buffer)[:received]):
            self._refuse()
            return 0
        return received

    def _frames_within_limit(self, data: bytes | memoryview) -> bool:
        assert self.limits is not None
        view = memoryview(data)
        while view:
            if self._body_left:
                body = view[: self._body_left]
                if self._in_p_data and not self._pdvs_within_limit(body):
                    return False
                self._body_left -= len(body)
                view = view[len(body) :]
                continue
            need = 6 - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < 6:
                return True
            pdu_type, _, length = struct.unpack(">BBL", self._header)
            self._header = b""
            if length > self.limits.pdu_limit(pdu_type):
                LOG.warning(
                    "connection from %s aborted: PDU type 0x%02X declares %d bytes, above the "
                    "%d accepted (max_pdu_receive_bytes)",
                    self.peer,
                    pdu_type,
                    length,
                    self.limits.pdu_limit(pdu_type),
                )
                return False
            self._body_left = length
            # PDV items never span PDUs: a malformed one is pynetdicom's to refuse.
            self._in_p_data = pdu_type == _P_DATA_TF
            self._pdv_header, self._pdv_left = b"", 0
        return True

    def _pdvs_within_limit(self, body: memoryview) -> bool:
        """Follow the PDV items of a P-DATA-TF body; count one data set's fragments.

        pynetdicom assembles a data set in memory from its fragments, however many PDUs
        they come in; a data set whose fragments add up to more than ``max_dataset_bytes``
        is refused at the fragment header that crosses it.
        """
        assert self.limits is not None
        while body:
            if self._pdv_left:
                taken = min(self._pdv_left, len(body))
                self._pdv_left -= taken
                body = body[taken:]
                continue
            need = 6 - len(self._pdv_header)
            self._pdv_header += bytes(body[:need])
            body = body[need:]
            if len(self._pdv_header) < 6:
                return True
            item_length, _, control = struct.unpack(">LBB", self._pdv_header)
            self._pdv_header = b""
            self._pdv_left = max(item_length - 2, 0)  # after context ID and control byte
            if control & 0x01:
                continue  # a command fragment: small, bounded by the PDU limit
            self._dataset_bytes += self._pdv_left
            if self._dataset_bytes > self.limits.max_dataset_bytes:
                LOG.warning(
                    "connection from %s aborted: a data set of more than %d bytes is being "
                    "sent (max_dataset_bytes)",
                    self.peer,
                    self.limits.max_dataset_bytes,
                )
                return False
            if control & 0x02:
                self._dataset_bytes = 0  # its last fragment
        return True

    def _refuse(self) -> None:
        self._refused = True
        # Source 2 (service provider), reason 6: invalid PDU parameter value (PS3.8 9.3.8).
        send_abort(self, reason=0x06)
        with contextlib.suppress(OSError):
            self.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.slot is not None:
            self.slot.release()
        super().close()


class GuardedSocket(_PduGuard):
    """An accepted plain TCP connection with its PDU framing watched."""


class GuardedSSLSocket(_PduGuard, ssl.SSLSocket):
    """An accepted TLS connection with its PDU framing watched (``sslsocket_class``)."""


def send_abort(sock: socket.socket, *, reason: int) -> None:
    """Send an A-ABORT (service-provider source, ``reason``) if the peer still listens."""
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = reason
    with contextlib.suppress(OSError):
        sock.sendall(pdu.encode())


class LimitedRequestHandler(RequestHandler):
    """Hands a connection to pynetdicom only once it starts an A-ASSOCIATE-RQ.

    The thread stays with its association until the association ends, so that the host's
    slot is held exactly as long as the connection is in use.
    """

    server: LimitedAssociationServer
    association: Association | None = None

    def handle(self) -> None:
        sock: socket.socket = self.request
        limits = self.server.limits
        peer = str(self.client_address[0])
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.do_handshake()
            except (OSError, ValueError) as exc:
                _THROTTLE.log(
                    logging.WARNING,
                    peer,
                    "tls",
                    "connection from %s closed: TLS handshake failed: %s",
                    peer,
                    exc,
                )
                self.server.shutdown_request(sock)
                return
        if not _starts_association_request(sock, peer, limits.request_timeout_s):
            self.server.shutdown_request(sock)
            return
        sock.settimeout(limits.idle_timeout_s)
        super().handle()
        if self.association is not None:
            self.association.join()

    def _create_association(self) -> Association:
        # pynetdicom makes and starts the association inside handle(); keep it to join.
        self.association = super()._create_association()
        if type(self.association.dul.socket) is AssociationSocket:
            # Same object, one method more efficient (see _WholeReadSocket).
            self.association.dul.socket.__class__ = _WholeReadSocket
        make_prompt(self.association)  # reactors woken by events, not 1 ms polls
        use_quick_store_responses(self.association)
        return self.association


class _WholeReadSocket(AssociationSocket):
    """pynetdicom's socket wrapper, reading a PDU in as few calls as the kernel allows.

    pynetdicom reads 4 KiB per ``recv``: 128 calls through Python (and the guard) for a
    512 KiB image; this asks for everything still missing, up to 1 MiB at a time, straight
    into the buffer it returns (not into a chunk then copied onto the buffer). The guard
    still sees every byte (it watches ``recv`` and ``recv_into``).
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        got = 0
        with memoryview(buffer) as view:
            while got < nr_bytes:
                _quick_ack(sock)
                received = sock.recv_into(view[got:], min(nr_bytes - got, 1 << 20))
                if not received:  # the connection closed: what arrived, as pynetdicom does
                    break
                got += received
        if got < nr_bytes:
            del buffer[got:]
        return buffer


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _quick_ack(sock: Any) -> None:
    """Ask the kernel to acknowledge what arrives at once (Linux ``TCP_QUICKACK``, which
    the kernel clears again by itself, so it is set before every read).

    A sender with Nagle's algorithm on holds the last, partial segment of each message
    until everything before it is acknowledged; a delayed acknowledgement (up to 40 ms)
    then stalls every instance. Not available, or not a TCP socket: nothing is done.
    """
    if _TCP_QUICKACK is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class _CheaplyCopiedContexts(list[Any]):
    """The server's presentation contexts; pynetdicom deep-copies them for every association.

    A deep copy of every storage class with every transfer syntax re-validates each UID
    (~0.1-0.3 s per association on 2 busy cores). The contexts hold only immutable values
    and lists of them: a copy of each object and of its lists is as good.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        copies = []
        for context in self:
            twin = copy.copy(context)
            for name, value in vars(context).items():
                if isinstance(value, list):
                    setattr(twin, name, list(value))
            copies.append(twin)
        return copies


def _starts_association_request(sock: socket.socket, peer: str, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the first byte; whether it can start an A-ASSOCIATE-RQ."""
    pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
    if not pending:
        readable, _, _ = select.select([sock], [], [], timeout_s)
        if not readable:
            _THROTTLE.log(
                logging.INFO,
                peer,
                "silent",
                "connection from %s closed: no A-ASSOCIATE-RQ within %.0f s "
                "(association_request_timeout_s)",
                peer,
                timeout_s,
            )
            return False
    if isinstance(sock, ssl.SSLSocket):
        return True  # TLS cannot peek; pynetdicom refuses garbage after the handshake
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except OSError as exc:
        LOG.debug("connection from %s closed before its A-ASSOCIATE-RQ: %s", peer, exc)
        return False
    if not first:
        LOG.debug("connection from %s closed before its A-ASSOCIATE-RQ", peer)
        return False
    if first != _A_ASSOCIATE_RQ:
        _THROTTLE.log(
            logging.WARNING,
            peer,
            "garbage",
            "connection from %s closed: its first PDU (type 0x%02X) is not an A-ASSOCIATE-RQ",
            peer,
            first[0],
        )
        # Reason 1: unrecognised PDU (PS3.8 9.3.8).
        send_abort(sock, reason=0x01)
        return False
    return True


class LimitedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`ConnectionLimits` in front of it.

    Parameters
    ----------
    ae, address, ae_title, contexts, ssl_context, evt_handlers
        As for :class:`pynetdicom.transport.AssociationServer`.
    limits : ConnectionLimits
    """

    # Connection threads live as long as their associations; stopping the server must not
    # wait for them (pynetdicom's own threads end their associations as before).
    daemon_threads = True
    block_on_close = False
    # socketserver listens with a backlog of 5: a burst of attacking connections would fill
    # it, and a legitimate SYN would wait for its retransmission (1 s, then 3 s).
    request_queue_size = 128

    def __init__(
        self,
        ae: ApplicationEntity,
        address: tuple[str, int] | tuple[str, int, int, int],
        ae_title: str,
        contexts: list[PresentationContext],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[EventHandlerType] | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        self.limits = limits
        self._slots = _HostSlots(limits.max_connections_per_host)
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            ssl_context,
            evt_handlers,
            request_handler=LimitedRequestHandler,
        )
        self.contexts = _CheaplyCopiedContexts(self.contexts)
        if self.ssl_context is not None:
            self.ssl_context.sslsocket_class = GuardedSSLSocket

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection as a guarded socket; a TLS handshake waits for its thread.

        pynetdicom would do the handshake here, in the one thread that accepts every
        connection, where a client that never sends its hello would stop all the others.
        """
        assert self.socket is not None
        raw, address = self.socket.accept()
        raw.settimeout(self.limits.request_timeout_s)
        if self.ssl_context is not None:
            sock: socket.socket = self.ssl_context.wrap_socket(
                raw, server_side=True, do_handshake_on_connect=False
            )
        else:
            sock = GuardedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
            sock.settimeout(self.limits.request_timeout_s)
        assert isinstance(sock, _PduGuard)
        sock.limits = self.limits
        sock.peer = str(address[0])
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse a connection from a host that already has its maximum open."""
        slot = self._slots.take(str(client_address[0]))
        if slot is None:
            return False
        request.slot = slot
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run the connection; its host's slot is free again however it ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            slot = getattr(request, "slot", None)
            if slot is not None:
                slot.release()

    def open_connections(self, host: str) -> int:
        """Connections from ``host`` open now."""
        with self._slots.lock:
            return self._slots.open[host]
