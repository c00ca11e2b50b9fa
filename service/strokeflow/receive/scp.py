"""The DICOM storage SCP: C-ECHO and C-STORE, durable before success.

For every C-STORE the dataset is checked (decodable, UIDs valid and matching the command,
native pixel data of the announced size), written exactly as received (no transcoding)
with write-fsync-rename, recorded in SQL, and only then answered 0x0000. Disk or database
trouble answers 0xA700 (out of resources); refused data is quarantined with the reason
and answered 0xA900 / 0xC000. No instance problem ends the association or the listener.

Associations are refused, with the reason logged, for a calling AE title or peer host not
on the allow-lists, a called AE title other than ours, or free disk below the watermark.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.dicomnet.status import DATASET_DOES_NOT_MATCH, OUT_OF_RESOURCES, SUCCESS
from strokeflow.ports import dicom_listen_port
from strokeflow.receive.checks import (
    InstanceRefusedError,
    check_content,
    int_value,
    read_dataset,
    text_value,
)
from strokeflow.receive.limits import ConnectionLimits, LimitedAssociationServer
from strokeflow.receive.part10 import part10_header
from strokeflow.receive.storage import (
    free_disk_mb,
    move_into_place,
    quarantine,
    sync_and_close,
    write_temp,
)
from strokeflow.store.repository import InstanceChange, InstanceRecord, versioned_path
from strokeflow.store.studies import is_own_result, mark_released, note_instance

LOG = logging.getLogger(__name__)


@dataclass
class AssociationTally:
    """What one association sent: logged once, at INFO, when it ends (each instance is
    logged at DEBUG only: a study is hundreds of them)."""

    started_s: float = field(default_factory=time.monotonic)
    #: Studies with new data from this association (released when it ends).
    studies: set[str] = field(default_factory=set)
    new: int = 0
    replaced: int = 0
    duplicates: int = 0
    own_results: int = 0
    refused: int = 0
    failed: int = 0
    size_bytes: int = 0

    @property
    def instances(self) -> int:
        """C-STORE requests answered."""
        return (
            self.new
            + self.replaced
            + self.duplicates
            + self.own_results
            + self.refused
            + self.failed
        )

    def summary(self) -> str:
        """One line: counts, studies, size and duration."""
        parts = [f"{self.new} new"]
        for count, what in (
            (self.replaced, "replaced"),
            (self.duplicates, "identical resends"),
            (self.own_results, "our own results (study not reopened)"),
            (self.refused, "refused"),
            (self.failed, "not stored (disk/database)"),
        ):
            if count:
                parts.append(f"{count} {what}")
        studies = ", ".join(sorted(self.studies)) or "none"
        return (
            f"{self.instances} instances ({', '.join(parts)}), "
            f"{self.size_bytes / 1e6:.1f} MB in {time.monotonic() - self.started_s:.1f} s; "
            f"studies {studies}"
        )


@dataclass
class Receiver:
    """Everything one receiving process needs; its ``handlers`` are bound to the server."""

    settings: Settings
    sessions: sessionmaker[Session]
    #: Time source, replaceable in tests.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _tallies: dict[Any, AssociationTally] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _disk: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # One writer per association that may be open at once.
        self._disk = ThreadPoolExecutor(
            max_workers=self.settings.max_associations, thread_name_prefix="disk-write"
        )

    def close(self) -> None:
        """Stop the disk writers (after the server has stopped)."""
        self._disk.shutdown(wait=True)

    @property
    def data_dir(self) -> Path:
        """Root of the stored files."""
        return self.settings.data_dir

    @property
    def handlers(self) -> list[EventHandlerType]:
        """pynetdicom event handlers."""
        return [
            (evt.EVT_CONN_OPEN, self.on_connection_open),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_association_end),
            (evt.EVT_ABORTED, self.on_association_end),
            (evt.EVT_CONN_CLOSE, self.on_association_end),
        ]

    @staticmethod
    def on_connection_open(event: Event) -> None:
        """Turn Nagle's algorithm off on the accepted socket.

        Each C-STORE response is a small packet; with Nagle on, a sender whose own
        socket also delays ACKs waits ~40 ms per instance (measured: 9.4 s instead of
        4.6 s for a 640-image study to a bare pynetdicom SCP).
        """
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            LOG.debug("TCP_NODELAY not set: %s", exc)

    @staticmethod
    def _label(event: Event) -> str:
        requestor = event.assoc.requestor
        return f"{requestor.ae_title}@{requestor.address}:{requestor.port}"

    def refusal_reason(self, calling: str, called: str, host: str) -> tuple[str, tuple[int, ...]]:
        """Why an association request must be refused, and the A-ASSOCIATE-RJ codes.

        Returns ``("", ())`` when it may be accepted.
        """
        allowed = self.settings.allowed_calling_aets
        if allowed and calling not in allowed:
            return f"calling AE title {calling!r} is not allowed", (0x01, 0x01, 0x03)
        if called != self.settings.ae_title:
            return (
                f"called AE title {called!r} is not ours ({self.settings.ae_title!r})",
                (0x01, 0x01, 0x07),
            )
        if self.settings.allowed_hosts and host not in self.settings.allowed_hosts:
            return f"host {host} is not allowed", (0x01, 0x01, 0x01)
        free = free_disk_mb(self.data_dir)
        if free < self.settings.min_free_disk_mb:
            return (
                f"only {free:.0f} MiB free in {self.data_dir}, below the "
                f"{self.settings.min_free_disk_mb:.0f} MiB watermark",
                (0x02, 0x03, 0x01),
            )
        return "", ()

    def on_requested(self, event: Event) -> None:
        """Refuse an association request that fails a check (the reason is logged)."""
        primitive = event.assoc.requestor.primitive
        assert primitive is not None  # EVT_REQUESTED comes with the A-ASSOCIATE-RQ
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        host = str(event.assoc.requestor.address)
        try:
            reason, codes = self.refusal_reason(calling, called, host)
        except OSError as exc:
            reason, codes = f"data directory unusable: {exc}", (0x02, 0x03, 0x01)
        if reason:
            LOG.warning("association %s@%s -> %s refused: %s", calling, host, called, reason)
            event.assoc.acse.send_reject(*codes)
            # As pynetdicom's own refusals do: let the DUL send the A-ASSOCIATE-RJ, then stop.
            event.assoc.kill()

    def on_accepted(self, event: Event) -> None:
        """Start counting what the association sends."""
        with self._lock:
            self._tallies[event.assoc] = AssociationTally()
        LOG.debug("association %s accepted", self._label(event))

    def _tally(self, event: Event) -> AssociationTally:
        with self._lock:
            return self._tallies.setdefault(event.assoc, AssociationTally())

    def on_echo(self, event: Event) -> int:
        """Answer C-ECHO."""
        LOG.debug("association %s: C-ECHO", self._label(event))
        return SUCCESS

    def on_store(self, event: Event) -> int:
        """Store one instance durably, then answer; never raises.

        The Part 10 file is written as received to a temporary file in this thread (page
        cache, fast); its fsync, which needs no GIL, runs in the ``disk-write`` pool while
        this thread hashes the bytes, checks every element and writes the SQL rows. Once
        the fsync is done the file is renamed into place and its directory fsynced, the rows
        commit, and only then is 0x0000 answered. Refused data goes to quarantine instead;
        disk or database trouble rolls back and answers 0xA700.
        """
        label = self._label(event)
        try:
            ds, relpath = read_dataset(event)
        except InstanceRefusedError as exc:
            return self._refuse(event, label, str(exc), exc.status)
        parts = (
            part10_header(
                str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(event.context.transfer_syntax)
            ),
            event.encoded_dataset(include_meta=False),
        )
        try:
            tmp, fd = write_temp(self.data_dir, parts)
        except OSError as exc:
            self._tally(event).failed += 1
            return self._disk_error(label, ds, exc)
        synced = self._disk.submit(sync_and_close, fd)
        sha256 = hashlib.sha256(parts[0])
        sha256.update(parts[1])  # without the GIL, beside the fsync
        try:
            check_content(ds, UID(event.context.transfer_syntax))
        except InstanceRefusedError as exc:
            _discard(synced, tmp)
            return self._refuse(event, label, str(exc), exc.status, b"".join(parts))
        record = _instance_record(event, ds, relpath, parts, sha256.hexdigest())
        manufacturer = text_value(ds, "Manufacturer", 64)
        try:
            with self.sessions() as session, session.begin():
                own = is_own_result(
                    session, record.sop_class_uid, record.sop_instance_uid, manufacturer
                )
                change = note_instance(session, record, self.clock(), own_result=own)
                synced.result()
                if change is InstanceChange.REPLACED:  # never over an earlier version's file
                    relpath = Path(versioned_path(record.path, record.sha256))
                move_into_place(self.data_dir, tmp, relpath)
        except ValueError as exc:
            _discard(synced, tmp)
            return self._refuse(event, label, str(exc), DATASET_DOES_NOT_MATCH, b"".join(parts))
        except OSError as exc:
            _discard(synced, tmp)
            self._tally(event).failed += 1
            return self._disk_error(label, ds, exc)
        except SQLAlchemyError as exc:
            _discard(synced, tmp)
            self._tally(event).failed += 1
            LOG.error(
                "association %s: study %s instance %s not recorded, database error: %s",
                label,
                record.study_uid,
                record.sop_instance_uid,
                exc,
            )
            return OUT_OF_RESOURCES
        LOG.debug(
            "association %s: study %s instance %s %s%s",
            label,
            record.study_uid,
            record.sop_instance_uid,
            change.value,
            " (our own result object)" if own else "",
        )
        tally = self._tally(event)
        with self._lock:
            tally.size_bytes += record.size_bytes
            if own and change is not InstanceChange.DUPLICATE:
                # Our own results coming back release nothing: they reopen nothing.
                tally.own_results += 1
            elif change is InstanceChange.NEW:
                tally.new += 1
                tally.studies.add(record.study_uid)
            elif change is InstanceChange.REPLACED:
                tally.replaced += 1
                tally.studies.add(record.study_uid)
            else:
                tally.duplicates += 1
        return SUCCESS

    @staticmethod
    def _disk_error(label: str, ds: Dataset, exc: OSError) -> int:
        LOG.error(
            "association %s: study %s instance %s not stored, disk error: %s",
            label,
            ds.StudyInstanceUID,
            ds.SOPInstanceUID,
            exc,
        )
        return OUT_OF_RESOURCES

    def _refuse(
        self, event: Event, label: str, reason: str, status: int, payload: bytes | None = None
    ) -> int:
        self._tally(event).refused += 1
        try:
            data = payload if payload is not None else event.encoded_dataset(include_meta=True)
            where = quarantine(self.data_dir, data, f"association {label}: {reason}")
        except Exception as exc:  # a refusal must still be answered
            LOG.error(
                "association %s: instance refused (%s), not quarantined: %s", label, reason, exc
            )
            return OUT_OF_RESOURCES if isinstance(exc, OSError) else status
        LOG.warning(
            "association %s: instance refused (%s), quarantined as %s", label, reason, where.name
        )
        return status

    def on_association_end(self, event: Event) -> None:
        """Mark the studies this association sent as released (the quiet period starts) and
        log what it sent, once (released, aborted and closed all end up here)."""
        with self._lock:
            tally = self._tallies.pop(event.assoc, None)
        if tally is None:
            return
        if tally.instances:
            LOG.info("association %s ended: %s", self._label(event), tally.summary())
        else:
            LOG.debug("association %s ended without C-STORE", self._label(event))
        if not tally.studies:
            return
        try:
            with self.sessions() as session, session.begin():
                mark_released(session, tally.studies, self.clock())
        except SQLAlchemyError as exc:
            # The quiet timeout still completes these studies.
            LOG.error(
                "association %s: could not mark studies released: %s", self._label(event), exc
            )


def _discard(synced: Future[None], tmp: Path) -> None:
    """Delete a temporary file once its fsync is over (whether or not it succeeded)."""
    try:
        synced.result()
    except OSError as exc:
        LOG.debug("temporary file %s not synced: %s", tmp.name, exc)
    tmp.unlink(missing_ok=True)


def _instance_record(
    event: Event, ds: Dataset, relpath: Path, parts: tuple[bytes, bytes], sha256: str
) -> InstanceRecord:
    return InstanceRecord(
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        path=relpath.as_posix(),
        size_bytes=len(parts[0]) + len(parts[1]),
        sha256=sha256,
        calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
        patient_id=text_value(ds, "PatientID", 64),
        accession_number=text_value(ds, "AccessionNumber", 16),
        study_date=text_value(ds, "StudyDate", 8),
        study_description=text_value(ds, "StudyDescription", 64),
        modality=text_value(ds, "Modality", 16),
        series_number=int_value(ds, "SeriesNumber"),
        series_description=text_value(ds, "SeriesDescription", 64),
        expected_study_instances=int_value(ds, "NumberOfStudyRelatedInstances"),
        expected_series_instances=int_value(ds, "NumberOfSeriesRelatedInstances"),
    )


class _ReusePortServer(LimitedAssociationServer):
    """Lets several receiving processes listen on one port; the kernel spreads connections."""

    def server_bind(self) -> None:
        assert self.socket is not None
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def make_ae(settings: Settings) -> AE:
    """The application entity: every storage SOP class with every transfer syntax."""
    ae = AE(ae_title=settings.ae_title)
    # Advertised to senders; receive/limits.py refuses a PDU declaring more.
    ae.maximum_pdu_size = settings.max_pdu_receive_bytes
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = False  # checked in Receiver.on_requested, with a logged reason
    ae.dimse_timeout = 120
    ae.acse_timeout = settings.association_request_timeout_s
    ae.network_timeout = settings.idle_association_timeout_s
    for context in StoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the listener when a certificate is configured (client certificates with a CA)."""
    if settings.tls_certificate is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_certificate, settings.tls_key)
    if settings.tls_ca is not None:
        context.load_verify_locations(settings.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def start_server(receiver: Receiver, *, reuse_port: bool = False) -> ThreadedAssociationServer:
    """Start listening on ``settings.dicom_address:dicom_port`` in a background thread.

    Parameters
    ----------
    receiver : Receiver
    reuse_port : bool
        Share the port with other processes (``SO_REUSEPORT``).

    Returns
    -------
    ThreadedAssociationServer
        Call ``shutdown()`` to stop; ``server_address`` has the bound port (port 0 picks one).

    Raises
    ------
    PortInUseError
        The port is taken or the address is not this host's; the message names the setting.
    """
    settings = receiver.settings
    ae = make_ae(settings)
    ssl_context = make_ssl_context(settings)
    try:
        server = ae.make_server(
            (settings.dicom_address, settings.dicom_port),
            evt_handlers=receiver.handlers,
            ssl_context=ssl_context,
            server_class=_ReusePortServer if reuse_port else LimitedAssociationServer,
            limits=ConnectionLimits.from_settings(settings),
        )
    except OSError as exc:
        raise dicom_listen_port(settings).refusal(exc) from exc
    thread = threading.Thread(
        target=server.serve_forever, name=f"dicom-listener:{settings.dicom_port}", daemon=True
    )
    thread.start()
    ae._servers.append(server)  # so that ae.shutdown() also stops it
    LOG.info(
        "listening for DICOM as %s on %s:%d%s",
        settings.ae_title,
        settings.dicom_address,
        server.server_address[1],
        " (TLS)" if settings.tls_enabled else "",
    )
    return server
