"""pynetdicom's acceptor reactors, woken by what they wait for instead of polling.

pynetdicom runs two threads per association: the DUL reactor (reads PDUs, sends queued
primitives) and the association reactor (serves DIMSE messages). Each polls: the DUL
sleeps 1 ms whenever a loop found nothing to do, the association reactor sleeps 1 ms on
every loop. With a sender that waits for each answer (DCMTK ``storescu``) an instance
meets these sleeps several times (the request, each P-DATA PDU that has not fully arrived
yet, the response), ~2-3 ms of an instance's ~9 ms on a busy 2-core machine.

Here the DUL waits in ``select`` on the peer's socket and a wake-up pipe written when a
primitive is queued for sending, and the association reactor waits on an event the DUL
sets after every state-machine event. Both still wake every :data:`WAKE_S` at the latest,
so that pynetdicom's timers (ARTIM, idle) and kill flags are seen as before.

In data transfer, a received P-DATA-TF goes from the socket to the DIMSE message at once
(``PromptDUL._read_pdu_data``), and a plain C-STORE answer is sent by the association's
own thread (``PromptDUL.send_now``): per instance, that spares several copies of its
bytes, two thread hand-offs and a pass through the state machine per PDU, CPU that
concurrent senders on a 2-core machine need.

The two loops (``PromptDUL._run``, ``PromptAssociation._run_reactor``) and the PDU read
are adapted from pynetdicom 3.0's ``DULServiceProvider.run_reactor``,
``DULServiceProvider._read_pdu_data`` and ``Association._run_reactor`` (MIT licence,
Copyright (c) 2012-2021 Patrice Munger and pynetdicom contributors) with only the waits
and the P-DATA-TF path changed; :func:`make_prompt` leaves an association as it is under
any other pynetdicom version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
import time

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, _PDUType
from pynetdicom.pdu_primitives import P_DATA, _PDUPrimitiveType
from pynetdicom.utils import make_target

LOG = logging.getLogger(__name__)

#: Longest wait (s) before a reactor looks at its timers and flags again.
WAKE_S = 0.05
#: PDU types (PS3.8 9.3.1); any other is an invalid PDU (Evt19), as pynetdicom has it.
_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
#: The pynetdicom versions whose reactor loops these copies follow.
_FOLLOWED_VERSION = "3.0."


class PromptDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waiting on its socket and a wake-up pipe.

    Made from a :class:`DULServiceProvider` by :func:`make_prompt` (class swap) before its
    thread starts.
    """

    #: Set after every state-machine event (and when the reactor ends): the association
    #: reactor's signal that there may be something to serve.
    activity: threading.Event
    _wake_read: int
    _wake_write: int
    #: Held while a PDU goes out: by the reactor's own sends and by :meth:`send_now`.
    _send_lock: threading.Lock

    def _prepare(self) -> None:
        self.activity = threading.Event()
        self._send_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)

    def wake(self) -> None:
        """Make the reactor look at its queues and flags now."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            os.write(self._wake_write, b"\0")

    def send_pdu(self, primitive: _PDUPrimitiveType) -> None:
        """Queue ``primitive`` for sending, and wake the reactor to send it."""
        super().send_pdu(primitive)
        self.wake()

    def _send(self, pdu: _PDUType) -> None:
        """As pynetdicom's (encode, send), one PDU at a time with :meth:`send_now`."""
        with self._send_lock:
            super()._send(pdu)

    def send_now(self, encoded_pdu: bytes) -> bool:
        """Send an encoded P-DATA-TF PDU from the calling thread, where the reactor would
        send it at once and unchanged: in Sta6 (data transfer), with nothing queued ahead
        of it, over plain TCP (an SSL connection is not written from two threads), and
        with nobody watching PDUs or state transitions.

        This spares the hand-off to the reactor's thread (a wake-up, a loop, the state
        machine's action and a PDU object) for every C-STORE answer.

        Returns
        -------
        bool
            ``False`` if it was not sent: queue it with :meth:`send_pdu` instead.
        """
        assoc = self.assoc
        if assoc.get_handlers(evt.EVT_PDU_SENT) or assoc.get_handlers(evt.EVT_FSM_TRANSITION):
            return False
        transport = self.socket
        if transport is None or not isinstance(transport.socket, socket.socket):
            return False
        if isinstance(transport.socket, ssl.SSLSocket):
            return False
        with self._send_lock:
            if self.state_machine.current_state != "Sta6" or self.to_provider_queue.qsize():
                return False
            # A failed send queues Evt17 (transport closed) for the reactor, as its own do.
            transport.send(encoded_pdu)
        return True

    def _data_goes_straight_to_dimse(self) -> bool:
        """Whether a P-DATA-TF PDU received now may skip the state machine: in Sta6 its
        action (DT-2) only hands the data to DIMSE, nothing is queued ahead of it, and
        nobody watches received bytes, PDUs or transitions."""
        if self.state_machine.current_state != "Sta6" or self.event_queue.qsize():
            return False
        assoc = self.assoc
        return not (
            assoc.get_handlers(evt.EVT_DATA_RECV)
            or assoc.get_handlers(evt.EVT_PDU_RECV)
            or assoc.get_handlers(evt.EVT_FSM_TRANSITION)
        )

    def _read_pdu_data(self) -> None:
        """pynetdicom's PDU read, with a P-DATA-TF PDU in data transfer given to DIMSE at
        once (:meth:`_data_goes_straight_to_dimse`).

        pynetdicom copies each P-DATA-TF (128 KiB from DCMTK) four times on its way to the
        DIMSE message (into bytes, into each item's value, into the fragment, into the
        message) and passes it through two queues, a PDU object and the state machine.
        Here its items are views of the bytes received, copied once, into the message.
        Every other PDU, and one whose items do not parse, takes pynetdicom's way, with
        its events (Evt17 for a connection closed mid-PDU, Evt19 for an invalid one).
        """
        if not self._data_goes_straight_to_dimse():
            super()._read_pdu_data()
            return
        transport = self.socket
        assert transport is not None
        try:
            header = transport.recv(6)
            pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        except (OSError, TimeoutError, struct.error) as exc:
            LOG.debug("connection closed before a whole PDU header arrived: %s", exc)
            self.event_queue.put("Evt17")
            return
        if pdu_type not in _PDU_TYPES:
            LOG.error("unknown PDU type 0x%02X received", pdu_type)
            self.event_queue.put("Evt19")
            return
        try:
            body = transport.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            LOG.debug("connection closed before a whole PDU arrived: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            LOG.error("the received PDU is shorter than its header says")
            self.event_queue.put("Evt17")
            return
        values = pdv_items(body) if pdu_type == _P_DATA_TF else None
        if values is not None:
            primitive = P_DATA()
            primitive.presentation_data_value_list.extend(values)  # type: ignore[arg-type]
            dimse = self.assoc.dimse
            dimse.receive_primitive(primitive)
            if dimse.message is None:
                # A whole message (or one that failed) for the association reactor; the
                # fragments before it wake nobody (each wake-up was a thread switch).
                self.activity.set()
            return
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        except Exception as exc:
            LOG.error("unable to decode the received PDU: %s", exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def kill_dul(self) -> None:
        """Stop the reactor (at once, not at its next timeout)."""
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        """As pynetdicom's, but the reactor is woken to see its kill flag."""
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self.wake()
        return super().stop_dul()

    def _wait_for_work(self) -> None:
        """Wait until the peer sent data, a primitive is queued, or :data:`WAKE_S`."""
        if self.to_provider_queue.qsize() or self._kill_thread:
            return
        transport = self.socket
        raw = transport.socket if transport is not None else None
        if raw is None or raw.fileno() < 0:
            # Closing (Sta13) or closed: nothing to select on; pynetdicom's own pace.
            time.sleep(self._run_loop_delay)
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return  # decrypted bytes already buffered: select would not see them
        try:
            ready, _, _ = select.select([raw.fileno(), self._wake_read], [], [], WAKE_S)
        except (OSError, ValueError):
            return  # the socket went away meanwhile: the loop finds out and ends
        if self._wake_read in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_read, 4096)

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop; the idle sleep replaced by :meth:`_wait_for_work`."""
        try:
            self._run()
        finally:
            self.activity.set()
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _run(self) -> None:
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._wait_for_work()
            if self._kill_thread:
                break
            # The ARTIM timer first, so that its event is queued ahead of any other.
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # One primitive sent or one PDU received per loop, as pynetdicom does.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                LOG.error("exception in the DUL reactor, aborting the association: %s", exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                assert self.socket is not None
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            self.activity.set()
            sleep = False


def pdv_items(body: bytes | bytearray) -> list[tuple[int, memoryview]] | None:
    """The presentation data values of a P-DATA-TF PDU's body (after its 6-byte header),
    as pynetdicom's P-DATA primitive lists them: (context ID, message control header and
    fragment), each a view of ``body``.

    Returns
    -------
    list or None
        ``None`` when the items do not exactly fill the body, or an item is shorter than
        its context ID and control header (pynetdicom's decoder then says why).
    """
    view = memoryview(body)
    items = []
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 6:
            return None
        length = int.from_bytes(view[offset : offset + 4], "big")
        if length < 2 or offset + 4 + length > end:
            return None
        items.append((view[offset + 4], view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return items if items else None


class PromptAssociation(Association):
    """pynetdicom's acceptor association, its reactor woken by its :class:`PromptDUL`."""

    dul: PromptDUL

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop; its 1 ms sleep replaced by a wait on DUL activity.

        After serving a message it looks again at once: another may be queued already.
        """
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                self.dul.activity.wait(WAKE_S)
            # Cleared before looking: what the DUL does from now on sets it again.
            self.dul.activity.clear()
            # The reactor may be paused while a send_*() method waits for its answer.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            served = msg is not None
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOG.debug("association released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, pynetdicom.evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                # So that EVT_ACSE_RECV fires for its subscribers, as pynetdicom does.
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, pynetdicom.evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOG.error("network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


def prompt_reactors_supported() -> bool:
    """Whether this pynetdicom's reactor loops are the ones :mod:`reactor` follows."""
    return str(pynetdicom.__version__).startswith(_FOLLOWED_VERSION)


def make_prompt(assoc: Association) -> bool:
    """Turn a new acceptor ``assoc`` (threads not started) into a :class:`PromptAssociation`.

    Returns
    -------
    bool
        ``False`` (``assoc`` unchanged) under a pynetdicom version whose loops differ, or
        for an association that is not a plain pynetdicom one.
    """
    if not prompt_reactors_supported() or type(assoc) is not Association:
        return False
    if type(assoc.dul) is not DULServiceProvider or assoc.dul.is_alive():
        return False
    dul = assoc.dul
    dul.__class__ = PromptDUL
    assert isinstance(dul, PromptDUL)
    dul._prepare()
    # The thread was made with the old class's bound run_reactor as its target.
    dul._target = make_target(dul.run_reactor)  # type: ignore[attr-defined]
    assoc.__class__ = PromptAssociation
    return True
