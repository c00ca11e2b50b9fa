"""The DICOM storage SCP: C-ECHO and C-STORE, durable before success.

For every C-STORE the dataset is checked (decodable, UIDs valid and matching the command,
native pixel data of the announced size), written exactly as received (no transcoding)
once, at its place, and answered 0x0000 only when the file and its folder are fsynced; its
SQL rows follow in batches (:mod:`strokeflow.receive.index`). Disk or database trouble
answers 0xA700 (out of resources); refused data is quarantined with the reason and
answered 0xA900 / 0xC000. No instance problem ends the association or the listener.
pynetdicom's association threads are woken by events (:mod:`strokeflow.receive.reactor`)
and plain answers encoded directly (:mod:`strokeflow.receive.store_response`).

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.dicomnet.status import DATASET_DOES_NOT_MATCH, OUT_OF_RESOURCES, SUCCESS
from strokeflow.ports import dicom_listen_port
from strokeflow.receive.checks import (
    InstanceRefusedError,
    InstanceUids,
    check_content,
    context_transfer_syntax,
    read_dataset,
    text_value,
)
from strokeflow.receive.disk_workers import DiskWorkers
from strokeflow.receive.index import IndexWriter, PendingInstance, instance_record
from strokeflow.receive.limits import ConnectionLimits, LimitedAssociationServer
from strokeflow.receive.part10 import part10_header
from strokeflow.receive.shared_port import AcceptBoard, SharedPortServer
from strokeflow.receive.storage import (
    create_new,
    discard_new,
    free_disk_mb,
    quarantine,
    sync_and_close,
    sync_folders,
)
from strokeflow.store.engine import read_only
from strokeflow.store.repository import (
    InstanceChange,
    InstanceRecord,
    Placement,
    placement,
    versioned_path,
)
from strokeflow.store.studies import RESULT_SOP_CLASSES, is_own_result, note_instance

LOG = logging.getLogger(__name__)

#: How long a release, or a resend's SQL decision, waits for the index writer (s).
FLUSH_TIMEOUT_S = 10.0
#: (7FE0,0010) Pixel Data.
_PIXEL_DATA = 0x7FE00010


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
    #: The receiving processes' shared counts, when this is one of several.
    board: AcceptBoard | None = None
    _tallies: dict[Any, AssociationTally] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    #: Read-only connections for placement lookups, free for the next one.
    _readers: list[Connection] = field(default_factory=list, init=False, repr=False)
    _disk: DiskWorkers = field(init=False, repr=False)
    _index: IndexWriter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # A file's fsync, its folder's and a hash at once per association open at once.
        self._disk = DiskWorkers(3 * self.settings.max_associations, "disk-write")
        self._index = IndexWriter(self.sessions, self.data_dir, lambda: self.clock())

    def open_index(self) -> None:
        """Before the first association: open the index's connections (a reader for the
        lookups, one for the writer) and make the lookup's statement, which the first
        instance would otherwise wait for.

        Raises
        ------
        SQLAlchemyError
            The index cannot be read.
        """
        self._lookup("", "")
        with self.sessions() as session:
            session.connection()

    @property
    def _engine(self) -> Engine:
        return cast(Engine, self.sessions.kw["bind"])

    @property
    def index(self) -> IndexWriter:
        """The writer of acknowledged instances' rows (``flush()`` waits for it)."""
        return self._index

    def close(self) -> None:
        """Write the queued rows, stop the disk writers (after the server has stopped)."""
        self._index.close()
        self._disk.shutdown()
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()

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
            (evt.EVT_ACSE_RECV, self.on_acse_recv),
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

        The dataset's UIDs are decoded and checked, and its Part 10 file written once,
        straight to its place (never over another file). Its fsync and its folder's run in
        ``disk-write`` threads (:mod:`strokeflow.receive.disk_workers`) while this thread
        looks the UIDs up in the index (one read; the index writer's queue first) and
        checks every element; the bytes are hashed there too for a lone association, in
        this thread when others are open in any receiving process. Once both fsyncs have
        returned, 0x0000 is answered. Its rows are written
        afterwards, in a batch, by the index writer (:mod:`strokeflow.receive.index`). An
        instance already known (a resend, its place taken) and result-class objects take
        :meth:`_store_known`, which decides in SQL first. Refused data goes to quarantine
        (its file deleted); disk or database trouble answers 0xA700.
        """
        label = self._label(event)
        try:
            ds, relpath, uids = read_dataset(event)
        except InstanceRefusedError as exc:
            return self._refuse(event, label, str(exc), exc.status)
        failure = self._index.failure
        if failure is not None:
            self._tally(event).failed += 1
            LOG.error(
                "association %s: study %s instance %s not stored, the index cannot be written: %s",
                label,
                uids.study,
                uids.sop_instance,
                failure,
            )
            return OUT_OF_RESOURCES
        request = cast(C_STORE, event.request)
        assert request.DataSet is not None  # read_dataset decoded it
        transfer_syntax = str(event.context.transfer_syntax)
        header = part10_header(uids.sop_class, uids.sop_instance, transfer_syntax)
        body = request.DataSet.getbuffer()
        if uids.sop_class in RESULT_SOP_CLASSES:
            # Perhaps one of our own results coming back (a rare class): SQL decides.
            return self._store_known(event, label, ds, relpath, (header, bytes(body)))
        try:
            new = create_new(self.data_dir, relpath, (header, body))
        except FileExistsError:
            # A resend, or another association's a moment ago.
            return self._store_known(event, label, ds, relpath, (header, bytes(body)))
        except OSError as exc:
            self._tally(event).failed += 1
            return self._disk_error(label, ds, exc)
        # The file's and the folder's fsync start together: both then wait for the same
        # journal commit. A folder fsync that starts after that commit has ended costs
        # another disk flush (benchmarks/ingest.py, one sender, same run: 115 -> 47
        # instances/s with the two one after the other, 183 -> 102/s with the folder's
        # after the checks).
        synced = self._disk.submit(sync_and_close, new.fd)
        folders_synced = self._disk.submit(sync_folders, new.folders)
        # A lone association hashes in the pool too, on the core its checks leave idle
        # (in this thread it lengthened each answer: one sender 125/s against 159/s); with
        # others open, here or in the other receiving processes, the cores are busy and a
        # third hand-off is CPU they need.
        digest = self._disk.submit(_sha256, header, body) if self._alone() else None
        try:
            known_series = self._check_placement(uids)
            check_content(ds, context_transfer_syntax(event))
        except InstanceRefusedError as exc:
            discard_new(new, synced)
            return self._refuse(event, label, str(exc), exc.status, header + bytes(body))
        except SQLAlchemyError as exc:
            discard_new(new, synced)
            self._tally(event).failed += 1
            return self._database_error(label, ds, exc)
        if known_series is not None:  # indexed, though not at its first place
            discard_new(new, synced)
            return self._store_known(event, label, ds, relpath, (header, bytes(body)))
        # Otherwise hashed here while the disk works (hashlib lets the GIL go). Either
        # way the received bytes are not held past the answer.
        sha256 = digest.result() if digest is not None else _sha256(header, body)
        try:
            folders_synced.result()
            synced.result()
        except OSError as exc:
            discard_new(new, synced)
            self._tally(event).failed += 1
            return self._disk_error(label, ds, exc)
        size_bytes = len(header) + len(body)
        study_uid, sop_uid = uids.study, uids.sop_instance
        # The row needs the header only: the pixel data's copy is not kept while the
        # batch gathers (a few MiB per receiving process).
        if _PIXEL_DATA in ds:
            del ds[_PIXEL_DATA]
        self._index.put(
            PendingInstance(
                ds=ds,
                study_uid=study_uid,
                series_uid=uids.series,
                sop_instance_uid=sop_uid,
                relpath=relpath,
                transfer_syntax_uid=transfer_syntax,
                size_bytes=size_bytes,
                calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
                sha256=sha256,
            )
        )
        LOG.debug("association %s: study %s instance %s new", label, study_uid, sop_uid)
        tally = self._tally(event)
        with self._lock:
            tally.size_bytes += size_bytes
            tally.new += 1
            tally.studies.add(study_uid)
        return SUCCESS

    def _alone(self) -> bool:
        """Whether this is the only association open (in any receiving process)."""
        if self.board is not None:
            return self.board.open_connections() <= 1
        return len(self._tallies) <= 1

    def _check_placement(self, uids: InstanceUids) -> str | None:
        """The series the index (or the writer's queue) has this instance in, if any.

        Raises
        ------
        InstanceRefusedError
            The series belongs to another study, or the instance to another series.
        SQLAlchemyError
            The index cannot be read.
        """
        sop_uid, series_uid, study_uid = uids.sop_instance, uids.series, uids.study
        instance_series, series_study = self._index.pending_placement(sop_uid, series_uid)
        if instance_series is None or series_study is None:
            known = self._lookup(sop_uid, series_uid)
            instance_series = instance_series or known.instance_series_uid
            series_study = series_study or known.series_study_uid
        if series_study is not None and series_study != study_uid:
            raise InstanceRefusedError(
                f"series {series_uid} already belongs to another study; instance "
                f"{sop_uid} claims study {study_uid}"
            )
        if instance_series is not None and instance_series != series_uid:
            raise InstanceRefusedError(
                f"instance {sop_uid} is already stored in another series; now it claims "
                f"series {series_uid}"
            )
        return instance_series

    def _lookup(self, sop_uid: str, series_uid: str) -> Placement:
        """:func:`placement` on a read-only connection kept for the next lookup (opening
        one per instance cost a sixth of the receiving process's CPU)."""
        with self._lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = read_only(self._engine)
        try:
            known = placement(conn, sop_uid, series_uid)
            if conn.dialect.name != "sqlite":
                # PostgreSQL opened a transaction: end it, so that the kept connection
                # does not sit idle in one (SQLite's reads take none).
                conn.rollback()
        except BaseException:
            conn.close()  # not kept: it may be broken
            raise
        with self._lock:
            self._readers.append(conn)
        return known

    def _store_known(
        self, event: Event, label: str, ds: Dataset, relpath: Path, parts: tuple[bytes, bytes]
    ) -> int:
        """A resend, a result-class object or a file already in place: SQL decides
        (duplicate, replacement, our own result) before anything is written, and the rows
        commit before the answer."""
        if not self._index.flush(FLUSH_TIMEOUT_S):
            self._tally(event).failed += 1
            return self._database_error(label, ds, f"index writer behind: {self._index.failure}")
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            check_content(ds, context_transfer_syntax(event))
        except InstanceRefusedError as exc:
            return self._refuse(event, label, str(exc), exc.status, b"".join(parts))
        sha256 = _sha256(*parts)
        if (self.data_dir / relpath).exists():  # never over an earlier version's file
            relpath = Path(versioned_path(relpath.as_posix(), sha256))
        record = instance_record(
            ds,
            transfer_syntax_uid=transfer_syntax,
            relpath=relpath,
            size_bytes=len(parts[0]) + len(parts[1]),
            sha256=sha256,
            calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
        )
        manufacturer = text_value(ds, "Manufacturer", 64)
        try:
            with self.sessions() as session, session.begin():
                own = is_own_result(
                    session, record.sop_class_uid, record.sop_instance_uid, manufacturer
                )
                change = note_instance(session, record, self.clock(), own_result=own)
                if change is InstanceChange.REPLACED:
                    relpath = Path(versioned_path(record.path, record.sha256))
                # (A versioned name already there holds these very bytes.)
                missing = not (self.data_dir / relpath).exists()
                if change is not InstanceChange.DUPLICATE and missing:
                    new = create_new(self.data_dir, relpath, parts)
                    try:
                        sync_and_close(new.fd)
                        sync_folders(new.folders)
                    except BaseException:
                        new.path.unlink(missing_ok=True)
                        raise
        except ValueError as exc:
            return self._refuse(event, label, str(exc), DATASET_DOES_NOT_MATCH, b"".join(parts))
        except OSError as exc:
            self._tally(event).failed += 1
            return self._disk_error(label, ds, exc)
        except SQLAlchemyError as exc:
            self._tally(event).failed += 1
            return self._database_error(label, ds, exc)
        LOG.debug(
            "association %s: study %s instance %s %s%s",
            label,
            record.study_uid,
            record.sop_instance_uid,
            change.value,
            " (our own result object)" if own else "",
        )
        self._count(event, record, change, own=own)
        return SUCCESS

    def _count(
        self, event: Event, record: InstanceRecord, change: InstanceChange, *, own: bool
    ) -> None:
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

    @staticmethod
    def _database_error(label: str, ds: Dataset, exc: object) -> int:
        LOG.error(
            "association %s: study %s instance %s not stored, database error: %s",
            label,
            ds.StudyInstanceUID,
            ds.SOPInstanceUID,
            exc,
        )
        return OUT_OF_RESOURCES

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

    def on_acse_recv(self, event: Event) -> None:
        """On a release request, before it is answered: wait until the rows of every
        instance acknowledged so far are written, so that a sender whose release
        completed finds its instances in the index."""
        primitive = getattr(event, "primitive", None)
        release_request = isinstance(primitive, A_RELEASE) and primitive.result is None
        if release_request and not self._index.flush(FLUSH_TIMEOUT_S):
            LOG.warning(
                "association %s released with instances not yet indexed: %s",
                self._label(event),
                self._index.failure,
            )

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
        if tally.studies:
            # After the association's rows, by the same writer (the quiet timeout still
            # completes these studies should the database refuse).
            self._index.release(tally.studies)


def _sha256(*parts: bytes | memoryview) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def make_ae(settings: Settings) -> AE:
    """The application entity: every storage SOP class with every transfer syntax."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # pynetdicom's standard handlers describe every PDU and DIMSE message for its
        # INFO/DEBUG lines, and copy each data set to say whether it is empty, whether
        # the lines are written or not.
        _config.LOG_HANDLER_LEVEL = "none"
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


def start_server(
    receiver: Receiver, *, shared: tuple[socket.socket, AcceptBoard] | None = None
) -> ThreadedAssociationServer:
    """Start listening on ``settings.dicom_address:dicom_port`` in a background thread.

    Parameters
    ----------
    receiver : Receiver
    shared : (socket, AcceptBoard), optional
        Accept on this listening socket, which other receiving processes share
        (:mod:`strokeflow.receive.shared_port`), instead of binding one.

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

    def announce(port: int) -> None:
        LOG.info(
            "listening for DICOM as %s on %s:%d%s",
            settings.ae_title,
            settings.dicom_address,
            port,
            " (TLS)" if settings.tls_enabled else "",
        )

    shared_kwargs: dict[str, Any] = {}
    if shared is not None:
        # Said once the listener has made the shared socket listen, not before.
        shared_kwargs = {"listen_socket": shared[0], "board": shared[1], "announce": announce}
    try:
        server = ae.make_server(
            (settings.dicom_address, settings.dicom_port),
            evt_handlers=receiver.handlers,
            ssl_context=ssl_context,
            server_class=SharedPortServer if shared is not None else LimitedAssociationServer,
            limits=ConnectionLimits.from_settings(settings),
            **shared_kwargs,
        )
    except OSError as exc:
        raise dicom_listen_port(settings).refusal(exc) from exc
    thread = threading.Thread(
        target=server.serve_forever, name=f"dicom-listener:{settings.dicom_port}", daemon=True
    )
    thread.start()
    ae._servers.append(server)  # so that ae.shutdown() also stops it
    if shared is None:
        announce(server.server_address[1])
    return server
