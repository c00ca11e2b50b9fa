"""Checks on a received C-STORE dataset before it is stored, and the C-STORE answers.

A dataset is refused when it cannot be decoded, is truncated, has missing or invalid UIDs
(checked before they become path components), UIDs that differ from the command's, or
native pixel data whose length does not match Rows x Columns x samples x frames x bits.
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path
from typing import NamedTuple, cast

from pydicom import config, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from strokeflow.dicomnet.status import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH
from strokeflow.receive.storage import InvalidUidError, check_uid, instance_relpath
from strokeflow.store import header_values

_PIXEL_DATA = BaseTag(0x7FE00010)
_UNDEFINED_LENGTH = 0xFFFFFFFF

#: VRs whose raw values pydicom converts without ever raising when reading validation is
#: WARN (its default): text is decoded with replacement, invalid DS values stay strings,
#: OB-like values stay bytes. tests/service/test_service_checks.py holds pydicom to it.
NEVER_FAILING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT", "OB", "OD", "OF", "OL", "OV", "OW"}
)
#: Bytes per value of the binary numeric VRs; pydicom refuses a length not a multiple.
_BINARY_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
#: An IS value that converts for sure (pydicom overflows on "inf", warns on "1.0").
_PLAIN_IS = re.compile(rb" *(?:[+-]?[0-9]{1,12})? *")


class InstanceRefusedError(ValueError):
    """Data that cannot be stored as an instance; ``status`` is the C-STORE answer."""

    def __init__(self, reason: str, status: int = DATASET_DOES_NOT_MATCH) -> None:
        super().__init__(reason)
        self.status = status


def text_value(ds: Dataset, keyword: str, limit: int) -> str | None:
    """``ds.keyword`` as text cut to ``limit`` characters (the column size); ``None`` if empty."""
    value = header_values.text(ds, keyword)
    return value[:limit] if value else None


def int_value(ds: Dataset, keyword: str) -> int | None:
    """``ds.keyword`` as an int; ``None`` if empty or not a number."""
    return header_values.integer(ds, keyword)


class InstanceUids(NamedTuple):
    """The checked UIDs of a received instance."""

    study: str
    series: str
    sop_instance: str
    sop_class: str


def _check_pixel_length(ds: Dataset, transfer_syntax: UID) -> None:
    raw = ds.get_item(_PIXEL_DATA)
    if raw is None or transfer_syntax.is_compressed:
        return
    # Still raw (not decoded) when untouched: its length is free, its value not needed.
    length = raw.length if isinstance(raw, RawDataElement) else len(raw.value or b"")
    if length == _UNDEFINED_LENGTH:
        raise InstanceRefusedError("native PixelData has undefined length")
    rows, columns = int_value(ds, "Rows"), int_value(ds, "Columns")
    bits = int_value(ds, "BitsAllocated")
    if not rows or not columns or not bits:
        raise InstanceRefusedError("PixelData present but Rows, Columns or BitsAllocated missing")
    frames = int_value(ds, "NumberOfFrames") or 1
    samples = int_value(ds, "SamplesPerPixel") or 1
    expected = (rows * columns * samples * frames * bits + 7) // 8
    # One padding byte keeps the value length even.
    if length not in (expected, expected + 1):
        raise InstanceRefusedError(
            f"PixelData is {length} bytes but {rows}x{columns}x{samples}x{frames} frames at "
            f"{bits} bits needs {expected}"
        )


def _check_truncation(ds: Dataset) -> None:
    # pydicom quietly accepts a value shorter than its declared length (a cut-off
    # transfer); the raw elements still carry the declared length.
    for raw in list(ds.values()):
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        arrived = len(raw.value or b"")
        if arrived < raw.length:
            raise InstanceRefusedError(
                f"dataset is truncated: element {raw.tag} declares {raw.length} bytes, "
                f"{arrived} arrived",
                CANNOT_UNDERSTAND,
            )


def _plainly_valid(raw: RawDataElement) -> bool:
    """Whether pydicom's conversion of ``raw`` surely succeeds, judged from its bytes.

    ``False`` means "ask pydicom": an unknown or implicit VR (resolved from the data
    dictionary), a sequence, or a value that may not convert.
    """
    vr = raw.VR
    if vr in NEVER_FAILING_VRS:
        return True
    value = raw.value or b""
    size = _BINARY_SIZES.get(vr or "")
    if size is not None:
        return len(value) % size == 0
    if vr == "IS":
        parts = value.rstrip(b" \x00").split(b"\\")
        return all(_PLAIN_IS.fullmatch(part) for part in parts)
    return False


def _check_values(ds: Dataset) -> None:
    """Convert, as pydicom would on first access, every value that might not convert.

    Values that surely convert (:func:`_plainly_valid`) are left raw: converting the ~50
    elements of a CT image costs ~2 ms, most of it for values that cannot fail.
    """
    for raw in list(ds.values()):
        # (Plain first: a Tag's == is a Python call, and pixel data is plain OB/OW.)
        if isinstance(raw, RawDataElement) and _plainly_valid(raw):
            continue
        tag = raw.tag
        if tag == _PIXEL_DATA:
            continue
        elem = ds[tag]  # raises when the value cannot be decoded
        if elem.VR == "SQ":
            for item in elem.value:
                _check_values(item)


def _check_vr_encoding(encoded: bytes, transfer_syntax: UID) -> None:
    """Refuse a dataset whose VR encoding is not the negotiated transfer syntax's.

    pydicom reads implicit-VR data sent under an explicit syntax (and the reverse) with a
    warning, by guessing from the first element; stored with the negotiated syntax in its
    file meta, such a file cannot be read back by other readers (DCMTK refuses it).
    Like pydicom, the first element's VR bytes decide: two upper-case letters are explicit.
    """
    if len(encoded) < 6 or not transfer_syntax.is_transfer_syntax or transfer_syntax.is_deflated:
        return
    looks_explicit = all(0x40 < b < 0x5B for b in encoded[4:6])
    if looks_explicit == transfer_syntax.is_implicit_VR:
        found, negotiated = ("explicit", "implicit") if looks_explicit else ("implicit", "explicit")
        raise InstanceRefusedError(
            f"dataset is encoded with {found} VR but the transfer syntax "
            f"{transfer_syntax.name} is {negotiated} VR",
            CANNOT_UNDERSTAND,
        )


def context_transfer_syntax(event: Event) -> UID:
    """The transfer syntax of the event's presentation context (pynetdicom's ``UID``, not
    made and validated again for each instance)."""
    value = event.context.transfer_syntax
    return value if isinstance(value, UID) else UID(value)


def read_dataset(event: Event) -> tuple[Dataset, Path, InstanceUids]:
    """Decode the C-STORE dataset's header, check its UIDs, give its storage path (relative).

    Raises
    ------
    InstanceRefusedError
        Undecodable data, a VR encoding that is not the transfer syntax's, invalid UIDs,
        or UIDs that differ from the command's.
    """
    request = cast(C_STORE, event.request)
    stream = request.DataSet
    if stream is not None:
        _check_vr_encoding(stream.getbuffer()[:6].tobytes(), context_transfer_syntax(event))
    try:
        ds = event.dataset
    except Exception as exc:  # any decoder error means the same to the sender
        raise InstanceRefusedError(f"dataset cannot be decoded: {exc}", CANNOT_UNDERSTAND) from exc
    try:
        uids = InstanceUids(
            check_uid(header_values.text(ds, "StudyInstanceUID"), "StudyInstanceUID"),
            check_uid(header_values.text(ds, "SeriesInstanceUID"), "SeriesInstanceUID"),
            check_uid(header_values.text(ds, "SOPInstanceUID"), "SOPInstanceUID"),
            check_uid(header_values.text(ds, "SOPClassUID"), "SOPClassUID"),
        )
    except InvalidUidError as exc:
        raise InstanceRefusedError(str(exc)) from exc
    except Exception as exc:  # a UID element whose value cannot be decoded
        raise InstanceRefusedError(f"dataset cannot be decoded: {exc}", CANNOT_UNDERSTAND) from exc
    relpath = instance_relpath(uids.study, uids.series, uids.sop_instance)
    if header_values.text(ds, "SOPInstanceUID") != str(request.AffectedSOPInstanceUID):
        raise InstanceRefusedError(
            f"SOPInstanceUID {ds.SOPInstanceUID} differs from the command's "
            f"{request.AffectedSOPInstanceUID}"
        )
    if uids.sop_class != str(request.AffectedSOPClassUID):
        raise InstanceRefusedError(
            f"SOPClassUID {uids.sop_class} differs from the command's {request.AffectedSOPClassUID}"
        )
    return ds, relpath, uids


def check_content(ds: Dataset, transfer_syntax: UID) -> None:
    """Check the whole dataset: not truncated, every value decodable, pixel data complete.

    Raises
    ------
    InstanceRefusedError
        With the reason and the C-STORE status to answer.
    """
    _check_truncation(ds)
    try:
        # Decoding is lazy: check every element now (pixel data excepted) so that a
        # garbled value is found here, not by the analysis later.
        if config.settings.reading_validation_mode == config.RAISE:
            for elem in ds.iterall():  # strict reading: any value may raise
                if elem.tag != _PIXEL_DATA:
                    _ = elem.value
        else:
            _check_values(ds)
    except Exception as exc:  # any decoder error means the same to the sender
        raise InstanceRefusedError(f"dataset cannot be decoded: {exc}", CANNOT_UNDERSTAND) from exc
    try:
        _check_pixel_length(ds, transfer_syntax)
    except InstanceRefusedError:
        raise
    except Exception as exc:
        reason = f"pixel data cannot be checked: {exc}"
        raise InstanceRefusedError(reason, CANNOT_UNDERSTAND) from exc


def read_stored(path: Path, relpath: Path) -> tuple[Dataset, UID, bytes]:
    """Read back a stored Part 10 file and check it as a received instance is checked.

    For files found on disk without an index row (start-up reconciliation): the same
    checks as :func:`read_dataset` and :func:`check_content`, with the File Meta
    Information standing in for the C-STORE command, and the path must be the one the
    UIDs give (``<sop>.dcm`` or a changed resend's ``<sop>_<hash>.dcm``).

    Returns
    -------
    (Dataset, UID, bytes)
        The dataset, its transfer syntax and the file's bytes.

    Raises
    ------
    InstanceRefusedError
        The reason the file cannot be indexed.
    """
    data = path.read_bytes()
    if len(data) < 144 or data[128:132] != b"DICM":
        raise InstanceRefusedError("not a DICOM Part 10 file (no DICM prefix)", CANNOT_UNDERSTAND)
    try:
        ds = dcmread(BytesIO(data))
        transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
        meta_sop = str(ds.file_meta.MediaStorageSOPInstanceUID)
    except Exception as exc:  # any decoder error means the same
        raise InstanceRefusedError(f"file cannot be decoded: {exc}", CANNOT_UNDERSTAND) from exc
    # (0002,0000) is the first element after the prefix: its value ends the meta group.
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    _check_vr_encoding(data[meta_end : meta_end + 6], transfer_syntax)
    try:
        expected = instance_relpath(
            ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")
        )
        check_uid(ds.get("SOPClassUID"), "SOPClassUID")
    except InvalidUidError as exc:
        raise InstanceRefusedError(str(exc)) from exc
    except Exception as exc:
        raise InstanceRefusedError(f"file cannot be decoded: {exc}", CANNOT_UNDERSTAND) from exc
    sop = str(ds.SOPInstanceUID)
    if meta_sop != sop:
        raise InstanceRefusedError(f"SOPInstanceUID {sop} differs from the file meta's {meta_sop}")
    name_ok = relpath.name == expected.name or (
        relpath.name.startswith(f"{sop}_") and relpath.suffix == ".dcm"
    )
    if relpath.parent != expected.parent or not name_ok:
        raise InstanceRefusedError(f"stored as {relpath} but its UIDs place it at {expected}")
    check_content(ds, transfer_syntax)
    return ds, transfer_syntax, data
