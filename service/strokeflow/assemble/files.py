"""Find DICOM files, read their headers once, and decode their pixels fast.

Headers are parsed with ``stop_before_pixels``; the byte offset of uncompressed pixel
data is remembered so that :func:`read_frame` can later map it straight from the file
without a second header parse (5x faster than pydicom for native little-endian data).
Compressed transfer syntaxes (RLE, JPEG-LS, JPEG 2000, ...) go through pydicom and its
installed decoder plugins.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_NATIVE_LITTLE_ENDIAN = {str(ImplicitVRLittleEndian), str(ExplicitVRLittleEndian)}


@dataclass(frozen=True)
class DicomProblem:
    """A file that looked like DICOM but could not be used, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class InstanceHeader:
    """What the assembly needs from one DICOM instance (no patient-identifying data).

    Times are kept as the raw DICOM strings; ``strokeflow.assemble.series`` decides
    which of them to trust. ``pixel_offset`` is the byte offset of the pixel values
    of native little-endian files (None: decode with pydicom).
    """

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    sop_class_uid: str = ""
    series_number: int | None = None
    series_description: str = ""
    image_type: tuple[str, ...] = ()
    frame_of_reference_uid: str = ""
    orientation: tuple[float, ...] | None = None
    position_mm: tuple[float, float, float] | None = None
    rows: int = 0
    columns: int = 0
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: float | None = None
    kvp: float | None = None
    number_of_frames: int = 1
    instance_number: int | None = None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    contrast_agent: str = ""
    acquisition_datetime: str = ""
    acquisition_date: str = ""
    acquisition_time: str = ""
    content_date: str = ""
    content_time: str = ""
    series_date: str = ""
    study_date: str = ""
    temporal_position: int | None = None
    temporal_resolution_ms: float | None = None
    manufacturer: str = ""
    model: str = ""
    transfer_syntax_uid: str = ""
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_signed: bool = False
    samples_per_pixel: int = 1
    pixel_offset: int | None = None


def iter_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Yield the files named, and every file below the folders named (sorted, recursive).

    Raises
    ------
    FileNotFoundError
        If a path does not exist (a typo on the command line is worth stopping for).
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"input {p} does not exist")


def _str(ds: Dataset, keyword: str) -> str:
    """Value of a text element without pydicom's per-value conversion (the costly part of
    reading a header); multiple values come back joined by a backslash."""
    elem = ds.get_item(tag_for_keyword(keyword) or 0)
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        return text.strip(" \0")
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _float(ds: Dataset, keyword: str) -> float | None:
    text = _str(ds, keyword).split("\\")[0].strip()
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _float(ds, keyword)
    return None if value is None else int(value)


def _floats(ds: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    text = _str(ds, keyword)
    try:
        numbers = tuple(float(v) for v in text.split("\\")) if text else ()
    except ValueError:
        return None
    return numbers if len(numbers) == n else None


def _us(ds: Dataset, keyword: str, default: int) -> int:
    """Unsigned short element (Rows, BitsAllocated...) read from its raw bytes."""
    elem = ds.get_item(tag_for_keyword(keyword) or 0)
    if elem is None or elem.value is None or elem.value == b"":
        return default
    value = elem.value
    if isinstance(value, bytes):
        little = ds.original_encoding[1] is not False
        return int.from_bytes(value[:2], "little" if little else "big")
    return int(value)


def _pixel_offset(fp: Any, ds: Dataset, syntax: str, file_size: int) -> int | None:
    """Byte offset of native pixel values right after the header (None if not native).

    Raises
    ------
    ValueError
        If the file ends before the pixel data the header announces (truncated).
    """
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG:
        return None
    if syntax == str(ImplicitVRLittleEndian):
        length = int.from_bytes(head[4:8], "little")
        offset = start + 8
    elif head[4:6] in (b"OW", b"OB"):
        length = int.from_bytes(head[8:12], "little")
        offset = start + 12
    else:
        return None
    if length == 0xFFFFFFFF:  # encapsulated although the syntax says native
        return None
    rows, cols = _us(ds, "Rows", 0), _us(ds, "Columns", 0)
    expected = rows * cols * _us(ds, "BitsAllocated", 16) // 8 * _us(ds, "SamplesPerPixel", 1)
    expected *= _int(ds, "NumberOfFrames") or 1
    if offset + min(length, expected) > file_size:
        raise ValueError(
            f"truncated: {file_size - offset} of {expected} bytes of pixel data present"
        )
    if syntax not in _NATIVE_LITTLE_ENDIAN or length < expected:
        return None
    return offset


def read_header(path: Path) -> InstanceHeader | DicomProblem | None:
    """Parse one file's header.

    Returns
    -------
    InstanceHeader, DicomProblem or None
        None for a file that is not DICOM at all (no ``DICM`` preamble and does not
        parse as raw DICOM either): such files are ignored silently.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            preamble = fp.read(132)
            has_preamble = len(preamble) == 132 and preamble[128:132] == b"DICM"
            fp.seek(0)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble)
                if not has_preamble and "SOPInstanceUID" not in ds:
                    return None
                if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
                    return None  # a media index, not an image
                syntax = str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
                offset = _pixel_offset(fp, ds, syntax, size) if _us(ds, "Rows", 0) else None
                return _header_from_dataset(path, ds, syntax, offset)
            except Exception as exc:  # a corrupt file must never stop the scan
                if not has_preamble:
                    return None
                return DicomProblem(str(path), f"unreadable DICOM: {exc}")
    except OSError as exc:
        return DicomProblem(str(path), f"cannot read file: {exc}")


def _header_from_dataset(
    path: Path, ds: Dataset, syntax: str, offset: int | None
) -> InstanceHeader | DicomProblem:
    missing = [
        k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not _str(ds, k)
    ]
    if missing:
        return DicomProblem(str(path), f"DICOM file without {', '.join(missing)}")
    position = _floats(ds, "ImagePositionPatient", 3)
    spacing = _floats(ds, "PixelSpacing", 2)
    image_type = [v for v in _str(ds, "ImageType").split("\\") if v]
    return InstanceHeader(
        path=path,
        study_uid=_str(ds, "StudyInstanceUID"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        sop_uid=_str(ds, "SOPInstanceUID"),
        modality=_str(ds, "Modality").upper(),
        sop_class_uid=_str(ds, "SOPClassUID"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_str(ds, "SeriesDescription"),
        image_type=tuple(str(v).strip().upper() for v in image_type),
        frame_of_reference_uid=_str(ds, "FrameOfReferenceUID"),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position_mm=(position[0], position[1], position[2]) if position else None,
        rows=_us(ds, "Rows", 0),
        columns=_us(ds, "Columns", 0),
        pixel_spacing_mm=(spacing[0], spacing[1]) if spacing else None,
        slice_thickness_mm=_float(ds, "SliceThickness"),
        kvp=_float(ds, "KVP"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        instance_number=_int(ds, "InstanceNumber"),
        rescale_slope=_float(ds, "RescaleSlope") or 1.0,
        rescale_intercept=_float(ds, "RescaleIntercept") or 0.0,
        contrast_agent=_str(ds, "ContrastBolusAgent"),
        acquisition_datetime=_str(ds, "AcquisitionDateTime"),
        acquisition_date=_str(ds, "AcquisitionDate"),
        acquisition_time=_str(ds, "AcquisitionTime"),
        content_date=_str(ds, "ContentDate"),
        content_time=_str(ds, "ContentTime"),
        series_date=_str(ds, "SeriesDate"),
        study_date=_str(ds, "StudyDate"),
        temporal_position=_int(ds, "TemporalPositionIdentifier"),
        temporal_resolution_ms=_float(ds, "TemporalResolution"),
        manufacturer=_str(ds, "Manufacturer"),
        model=_str(ds, "ManufacturerModelName"),
        transfer_syntax_uid=syntax,
        bits_allocated=_us(ds, "BitsAllocated", 16),
        bits_stored=_us(ds, "BitsStored", _us(ds, "BitsAllocated", 16)),
        pixel_signed=bool(_us(ds, "PixelRepresentation", 0)),
        samples_per_pixel=_us(ds, "SamplesPerPixel", 1),
        pixel_offset=offset,
    )


def scan_paths(paths: Sequence[Path]) -> tuple[list[InstanceHeader], list[DicomProblem]]:
    """Read the headers of every DICOM file in ``paths`` (files or folders, recursive).

    Non-DICOM files (no ``DICM`` preamble and not parseable) are skipped silently;
    corrupt DICOM files are reported, never fatal. A SOP instance found twice (copied
    files) is kept once.

    Parameters
    ----------
    paths : sequence of Path
        Files and/or folders, in any order.

    Returns
    -------
    headers : list of InstanceHeader
    problems : list of DicomProblem

    Raises
    ------
    FileNotFoundError
        If one of ``paths`` does not exist.
    """
    headers: list[InstanceHeader] = []
    problems: list[DicomProblem] = []
    seen: set[str] = set()
    for path in iter_files(paths):
        with warnings.catch_warnings():
            # pydicom warns about every non-conformant value; the problems that matter
            # are returned as DicomProblem instead of flooding the log.
            warnings.simplefilter("ignore")
            result = read_header(path)
        if result is None:
            continue
        if isinstance(result, DicomProblem):
            problems.append(result)
        elif result.sop_uid not in seen:
            seen.add(result.sop_uid)
            headers.append(result)
    return headers, problems


def read_frame(header: InstanceHeader, out: np.ndarray) -> None:
    """Decode one single-frame image into ``out`` as rescaled float32 (HU for CT).

    Parameters
    ----------
    header : InstanceHeader
        From :func:`scan_paths`.
    out : numpy.ndarray
        ``(rows, columns)`` float32 view to write into (e.g. one slice of a 4D array).

    Raises
    ------
    ValueError
        If the pixel data cannot be decoded or has the wrong shape; the message names
        the file.
    """
    shape = (header.rows, header.columns)
    try:
        if header.pixel_offset is not None and header.bits_allocated in (8, 16, 32):
            dtype = np.dtype(f"<{'i' if header.pixel_signed else 'u'}{header.bits_allocated // 8}")
            raw = np.fromfile(
                header.path, dtype=dtype, count=shape[0] * shape[1], offset=header.pixel_offset
            )
            if raw.size != shape[0] * shape[1]:
                raise ValueError(f"{raw.size} of {shape[0] * shape[1]} pixels present")
            pixels = _apply_bits_stored(raw.reshape(shape), header)
        else:
            ds = pydicom.dcmread(header.path)
            pixels = ds.pixel_array
    except Exception as exc:  # any decoder failure is a per-file problem, never fatal
        raise ValueError(f"{header.path}: cannot decode pixel data ({exc})") from exc
    if pixels.shape != shape:
        raise ValueError(f"{header.path}: pixel array {pixels.shape}, expected {shape}")
    np.multiply(pixels, header.rescale_slope, out=out, casting="unsafe")
    if header.rescale_intercept:
        out += np.float32(header.rescale_intercept)


def _apply_bits_stored(pixels: np.ndarray, header: InstanceHeader) -> np.ndarray:
    """Drop bits above BitsStored (unsigned) or sign-extend from them (signed)."""
    unused = header.bits_allocated - header.bits_stored
    if unused <= 0:
        return pixels
    if header.pixel_signed:
        return (pixels << unused) >> unused
    return pixels & ((1 << header.bits_stored) - 1)
