"""One association per destination: C-STORE objects, check every response, fall back to
another SR class when the destination does not take the original one.

Secondary Capture pages are written uncompressed (every PACS takes that) and, unless told
otherwise, sent RLE Lossless to a destination that accepts it for their class (a page is
5.8 MB uncompressed, 0.1-1 MB in RLE); the association proposes both, so a destination
that takes only the uncompressed syntax gets the page as written.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.association import Association

from strokeflow.config import Destination
from strokeflow.dicomnet.scu import DicomNetworkError
from strokeflow.dicomnet.status import STORED
from strokeflow.report.structured_report import SR_SOP_CLASSES, sr_in_encoding

LOG = logging.getLogger(__name__)

#: Objects read and compressed ahead of the one being sent (bounds the memory held).
PREPARE_AHEAD = 2
#: SR encodings tried in this order when the destination rejects a report's class.
SR_FALLBACK_ORDER = ("comprehensive3d", "comprehensive", "enhanced")
_SR_CLASSES = {uid: name for name, uid in SR_SOP_CLASSES.items()}
#: Failure statuses (PS3.4 B.2.3, PS3.7 C) that say the object itself, or this
#: destination's configuration, is the problem: sending it again later gets the same answer.
_PERMANENT_FAILURES = frozenset(
    {
        0x0117,  # invalid SOP instance
        0x0122,  # SOP class not supported
        0x0124,  # not authorized
        0x0210,  # duplicate invocation
        0x0211,  # unrecognized operation
        0x0212,  # mistyped argument
    }
)


def is_permanent_failure(status: int | None) -> bool:
    """Whether a C-STORE failure status means "retrying will not help".

    Error: Data Set Does Not Match SOP Class (0xA9xx), Error: Cannot Understand (0xCxxx)
    and the refusals in ``_PERMANENT_FAILURES`` are permanent. Refused: Out of Resources
    (0xA7xx), processing failure (0x0110), resource limitation (0x0213), other codes and
    no answer at all (``None``) may pass: they are retried with back-off.
    """
    if status is None:
        return False
    return status in _PERMANENT_FAILURES or 0xA900 <= status <= 0xA9FF or status >> 12 == 0xC


@dataclass(frozen=True)
class StoreItem:
    """One file to send."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class ObjectOutcome:
    """What the destination answered for one object.

    ``status`` is the last C-STORE status (``None``: never sent or no answer);
    ``sent_sop_class_uid``/``sent_sop_instance_uid`` name what was actually stored
    (differs from the file for an SR sent in a fallback class). ``permanent`` failures
    (no acceptable class, or a status :func:`is_permanent_failure` names) are not worth
    retrying on this destination.
    """

    stored: bool
    status: int | None
    error: str | None = None
    sent_sop_class_uid: str | None = None
    sent_sop_instance_uid: str | None = None
    permanent: bool = False


def _candidates(ds: Dataset, accepted: set[str]) -> list[tuple[str, Dataset | None]]:
    """(class, dataset to send or None for the original) in the order to try."""
    original = str(ds.SOPClassUID)
    if original not in _SR_CLASSES:
        return [(original, None)] if original in accepted else []
    found: list[tuple[str, Dataset | None]] = []
    for encoding in SR_FALLBACK_ORDER:
        target = SR_SOP_CLASSES[encoding]
        if target not in accepted:
            continue
        if target == original:
            found.append((target, None))
            continue
        try:
            converted = sr_in_encoding(ds, encoding)  # type: ignore[arg-type]
        except ValueError as exc:
            LOG.info("SR %s cannot be sent as %s: %s", ds.SOPInstanceUID, encoding, exc)
            continue
        # The same UID on every retry, so a resend after a lost answer is not a new report.
        uid = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), encoding])
        converted.SOPInstanceUID = uid
        if "file_meta" in dir(converted):
            converted.file_meta.MediaStorageSOPInstanceUID = uid
        found.append((target, converted))
    return found


def _compressible(ds: Dataset) -> bool:
    """A Secondary Capture page stored uncompressed: worth sending RLE Lossless."""
    return (
        str(ds.SOPClassUID) == SecondaryCaptureImageStorage
        and "PixelData" in ds
        and not ds.file_meta.TransferSyntaxUID.is_compressed
    )


def _requested_contexts(ae: AE, metas: list[tuple[str, UID]], compress_pages: bool) -> None:
    """Contexts for (SOP class, transfer syntax as written) of every object to send."""
    classes: dict[str, list[str]] = {}
    for sop_class, syntax in metas:
        wanted = [sop_class]
        if sop_class in _SR_CLASSES:
            wanted = [SR_SOP_CLASSES[name] for name in SR_FALLBACK_ORDER]
        offered = [str(syntax), ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        if (
            compress_pages
            and sop_class == SecondaryCaptureImageStorage
            and not syntax.is_compressed
        ):
            offered.insert(0, RLELossless)
        for cls in wanted:
            syntaxes = classes.setdefault(cls, [])
            for ts in offered:
                if ts not in syntaxes:
                    syntaxes.append(ts)
    for cls, syntaxes in classes.items():
        # One context per syntax, so a destination can refuse one and accept another.
        for ts in syntaxes:
            ae.add_requested_context(cls, ts)


def _meta(item: StoreItem) -> tuple[str, UID]:
    """(SOP class, transfer syntax) from the file's meta header; the row's class if the
    file cannot be read (its read fails again, and is reported, when it is prepared)."""
    try:
        meta = read_file_meta_info(item.path)
        return str(meta.MediaStorageSOPClassUID), UID(str(meta.TransferSyntaxUID))
    except (OSError, InvalidDicomError, AttributeError) as exc:
        LOG.debug("meta header of %s not read: %s", item.path, exc)
        return item.sop_class_uid, UID(ExplicitVRLittleEndian)


def _prepare(path: Path, rle: bool) -> Dataset:
    """The data set to send: read, and RLE Lossless if an uncompressed page and ``rle``."""
    ds = dcmread(path)
    return _rle(ds) if rle and _compressible(ds) else ds


def _rle(ds: Dataset) -> Dataset:
    """A copy of an uncompressed page, RLE Lossless (same UIDs: the same object)."""
    packed = copy.deepcopy(ds)
    packed.compress(RLELossless, generate_instance_uid=False)
    return packed


def _encoded_for(ds: Dataset, sop_class: str, accepted: set[tuple[str, str]]) -> Dataset:
    """``ds`` as is when its transfer syntax was accepted for ``sop_class``; otherwise,
    if compressed, decompressed (sent as Explicit VR Little Endian)."""
    syntax = ds.file_meta.TransferSyntaxUID
    if (sop_class, str(syntax)) in accepted or not syntax.is_compressed:
        return ds
    plain = copy.deepcopy(ds)
    plain.decompress()
    return plain


def _send_one(
    assoc: Association, ds: Dataset, accepted_pairs: set[tuple[str, str]]
) -> ObjectOutcome:
    accepted = {cls for cls, _ in accepted_pairs}
    candidates = _candidates(ds, accepted)
    if not candidates:
        return ObjectOutcome(
            stored=False,
            status=None,
            error=f"the destination accepts no presentation context for SOP class "
            f"{ds.SOPClassUID}" + (" nor any SR fallback" if ds.SOPClassUID in _SR_CLASSES else ""),
            permanent=True,
        )
    last: ObjectOutcome | None = None
    for sop_class, converted in candidates:
        try:
            to_send = _encoded_for(
                ds if converted is None else converted, sop_class, accepted_pairs
            )
            response = assoc.send_c_store(to_send)
        except (ValueError, RuntimeError) as exc:
            # No usable context, or no decoder here for the pixel data (pydicom's error for
            # that is a RuntimeError subclass): not a network problem, so retrying later
            # would not help.
            last = ObjectOutcome(False, None, f"{sop_class}: {exc}", sop_class, permanent=True)
            continue
        status = int(response.Status) if "Status" in response else None
        if status in STORED:
            return ObjectOutcome(True, status, None, sop_class, str(to_send.SOPInstanceUID))
        text = "no answer" if status is None else f"status 0x{status:04X}"
        permanent = is_permanent_failure(status)
        if permanent:
            text += " (permanent: not retried)"
        last = ObjectOutcome(False, status, f"{sop_class}: {text}", sop_class, permanent=permanent)
        if not assoc.is_established:
            break
    assert last is not None
    return last


def _send_prepared(
    assoc: Association,
    destination: Destination,
    item: StoreItem,
    prepared: Future[Dataset],
    accepted: set[tuple[str, str]],
) -> ObjectOutcome:
    try:
        ds = prepared.result()
    except (OSError, InvalidDicomError, ValueError, RuntimeError) as exc:
        # This object alone: the others go on; it stays pending and is retried.
        return ObjectOutcome(False, None, f"{item.path.name} could not be read: {exc}")
    if not assoc.is_established:
        return ObjectOutcome(False, None, f"{destination} ended the association early")
    return _send_one(assoc, ds, accepted)


def store_objects(
    items: list[StoreItem],
    destination: Destination,
    calling_ae_title: str,
    *,
    compress_pages: bool = True,
) -> list[ObjectOutcome]:
    """C-STORE ``items`` to ``destination`` over one association, checking every answer.

    Parameters
    ----------
    items : list of StoreItem
    destination : Destination
    calling_ae_title : str
    compress_pages : bool
        Send uncompressed Secondary Capture pages RLE Lossless where the destination
        accepts it for their class (as written otherwise).

    Returns
    -------
    list of ObjectOutcome
        One per item, in order. Items after a lost association, and an item whose file
        cannot be read, come back unsent (retryable).

    Raises
    ------
    DicomNetworkError
        The destination cannot be reached or refuses the association.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.maximum_pdu_size = 0
    _requested_contexts(ae, [_meta(item) for item in items], compress_pages)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        what = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise DicomNetworkError(f"{destination} {what}")
    accepted = {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
    }
    rle = compress_pages and (SecondaryCaptureImageStorage, RLELossless) in accepted
    outcomes: list[ObjectOutcome] = []
    # Each object is read (and compressed) by a helper thread while the one before it is
    # on the wire and being stored by the destination: the first page goes out after one
    # page's preparation, not after all of them.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="strokeflow-dispatch") as pool:
        ahead: deque[tuple[StoreItem, Future[Dataset]]] = deque()
        queue = iter(items)

        def top_up() -> None:
            while len(ahead) < PREPARE_AHEAD and (item := next(queue, None)) is not None:
                ahead.append((item, pool.submit(_prepare, item.path, rle)))

        try:
            top_up()
            while ahead:
                item, prepared = ahead.popleft()
                top_up()
                outcome = _send_prepared(assoc, destination, item, prepared, accepted)
                if not outcome.stored:
                    LOG.warning(
                        "%s: %s did not store %s", item.path.name, destination, outcome.error
                    )
                outcomes.append(outcome)
        finally:
            for _, pending in ahead:
                pending.cancel()
            if assoc.is_established:
                assoc.release()
    return outcomes
