"""Find DICOM files, read their headers once, and decode their pixels fast.

Headers are parsed with ``stop_before_pixels``; the byte offset of uncompressed pixel
data is remembered so that :func:`read_frame` can later map it straight from the file
without a second header parse (5x faster than pydicom for native little-endian data).
Compressed transfer syntaxes (RLE, JPEG-LS, JPEG 2000, ...) go through pydicom and its
installed decoder plugins.

One file can hold several images, and then yields one header per image (``frame_index``):

* enhanced multi-frame MR and CT: every frame's position, orientation, pixel spacing,
  rescale, b-value, echo time and acquisition time are read from its per-frame (or the
  shared) functional groups with pydicom, so the frames pass through the assembly like
  classic images;
* Siemens mosaic (ImageType MOSAIC): the tiles of the stored image are the slices, and
  their true positions come from the Siemens CSA header through nibabel's
  ``nibabel.nicom`` (the mosaic's own ImagePositionPatient is that of the whole tiled
  image, not of any slice).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strokeflow.assemble.raw_header import RawHeader, read_raw_header

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom (0.3-0.4 s to import) and nibabel are imported where a file needs them: the
# headers of plain single-frame files are walked by ``raw_header`` and their native
# pixels mapped by numpy, so a CT perfusion of such files never imports either.

_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NATIVE_LITTLE_ENDIAN = {_IMPLICIT_LE, "1.2.840.10008.1.2.1"}
#: Tags of the keywords read from every header (pydicom's dictionary is not imported for
#: them); another keyword is looked up in that dictionary.
_TAGS = {
    "AcquisitionDate": 0x00080022,
    "AcquisitionDateTime": 0x0008002A,
    "AcquisitionTime": 0x00080032,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "Columns": 0x00280011,
    "ContentDate": 0x00080023,
    "ContentTime": 0x00080033,
    "ContrastBolusAgent": 0x00180010,
    "FrameOfReferenceUID": 0x00200052,
    "ImageOrientationPatient": 0x00200037,
    "ImagePositionPatient": 0x00200032,
    "ImageType": 0x00080008,
    "InstanceNumber": 0x00200013,
    "KVP": 0x00180060,
    "Manufacturer": 0x00080070,
    "ManufacturerModelName": 0x00081090,
    "Modality": 0x00080060,
    "NumberOfFrames": 0x00280008,
    "PixelRepresentation": 0x00280103,
    "PixelSpacing": 0x00280030,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
    "Rows": 0x00280010,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "SamplesPerPixel": 0x00280002,
    "SeriesDate": 0x00080021,
    "SeriesDescription": 0x0008103E,
    "SeriesInstanceUID": 0x0020000E,
    "SeriesNumber": 0x00200011,
    "SliceThickness": 0x00180050,
    "StudyDate": 0x00080020,
    "StudyInstanceUID": 0x0020000D,
    "TemporalPositionIdentifier": 0x00200100,
    "TemporalResolution": 0x00200110,
}
_PER_FRAME_GROUPS_TAG = 0x52009230
#: Per-frame b-values below this (s/mm²) are b = 0: Philips writes 0.001-0.004 on the
#: b0 images of some DTI protocols.
B0_LIMIT_S_MM2 = 0.01


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

    A file holding several images gives one header per image: ``frame_index`` is the
    frame of an enhanced multi-frame file or the tile of a Siemens mosaic (None for a
    single-frame file), ``rows``/``columns``/``position_mm`` are those of that image, and
    ``stored_shape`` is the (rows, columns) of the stored mosaic. ``b_value`` and
    ``echo_time_ms`` are filled from an enhanced file's functional groups (None: read
    from the file's own tags when needed).
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
    frame_index: int | None = None
    stored_shape: tuple[int, int] | None = None
    b_value: float | None = None
    echo_time_ms: float | None = None

    @property
    def image_key(self) -> tuple[str, int]:
        """SOP instance and frame: what identifies one image (a copied file repeats it)."""
        return self.sop_uid, -1 if self.frame_index is None else self.frame_index


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


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(keyword) or 0
    return tag


def _str(ds: Dataset | RawHeader, keyword: str) -> str:
    """Value of a text element without pydicom's per-value conversion (the costly part of
    reading a header); multiple values come back joined by a backslash."""
    elem = ds.get_item(_tag(keyword))
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        return text.strip(" \0")
    if isinstance(value, str):
        return value.strip()
    from pydicom.multival import MultiValue  # a converted value: pydicom is loaded

    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _float(ds: Dataset | RawHeader, keyword: str) -> float | None:
    text = _str(ds, keyword).split("\\")[0].strip()
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _int(ds: Dataset | RawHeader, keyword: str) -> int | None:
    value = _float(ds, keyword)
    return None if value is None else int(value)


def _floats(ds: Dataset | RawHeader, keyword: str, n: int) -> tuple[float, ...] | None:
    text = _str(ds, keyword)
    try:
        numbers = tuple(float(v) for v in text.split("\\")) if text else ()
    except ValueError:
        return None
    return numbers if len(numbers) == n else None


def _us(ds: Dataset | RawHeader, keyword: str, default: int) -> int:
    """Unsigned short element (Rows, BitsAllocated...) read from its raw bytes."""
    elem = ds.get_item(_tag(keyword))
    if elem is None or elem.value is None or elem.value == b"":
        return default
    value = elem.value
    if isinstance(value, bytes):
        little = ds.original_encoding[1] is not False
        return int.from_bytes(value[:2], "little" if little else "big")
    return int(value)


def _pixel_offset(fp: Any, ds: Dataset | RawHeader, syntax: str, file_size: int) -> int | None:
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
    if syntax == _IMPLICIT_LE:
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


def read_headers(path: Path) -> list[InstanceHeader] | DicomProblem | None:
    """Parse one file's header: one :class:`InstanceHeader` per image it holds.

    Returns
    -------
    list of InstanceHeader, DicomProblem or None
        One header for a single-frame file, one per frame (enhanced multi-frame) or tile
        (Siemens mosaic) otherwise. None for a file that is not DICOM at all (no ``DICM``
        preamble and does not parse as raw DICOM either): such files are ignored
        silently.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            raw = read_raw_header(fp, size)
            if raw is not None:
                plain = _plain_headers(path, raw, fp, size)
                if plain is not None:
                    return plain
            fp.seek(0)
            preamble = fp.read(132)
            has_preamble = len(preamble) == 132 and preamble[128:132] == b"DICM"
            if not has_preamble and not _may_be_raw_dicom(preamble):
                return None
            fp.seek(0)
            try:
                import pydicom

                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble)
                if not has_preamble and "SOPInstanceUID" not in ds:
                    return None
                if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
                    return None  # a media index, not an image
                syntax = str(ds.file_meta.get("TransferSyntaxUID", _IMPLICIT_LE))
                offset = _pixel_offset(fp, ds, syntax, size) if _us(ds, "Rows", 0) else None
                header = _header_from_dataset(path, ds, syntax, offset)
                if isinstance(header, DicomProblem):
                    return header
                if "PerFrameFunctionalGroupsSequence" in ds:
                    return _frame_headers(header, ds)
                if "MOSAIC" in header.image_type and header.rows:
                    return _mosaic_headers(header, ds)
                return [header]
            except Exception as exc:  # a corrupt file must never stop the scan
                if not has_preamble:
                    return None
                return DicomProblem(str(path), f"unreadable DICOM: {exc}")
    except OSError as exc:
        return DicomProblem(str(path), f"cannot read file: {exc}")


def _may_be_raw_dicom(head: bytes) -> bool:
    """Whether a file without the ``DICM`` preamble can start a dataset with a
    SOPInstanceUID: its first tag, in either byte order, must be of a group up to
    (0008,0018)'s (command, file meta, directory or identifying group). A stray text
    file (truth.json, a README) is then skipped without importing pydicom to parse it.
    """
    if len(head) < 8:
        return False
    groups = {int.from_bytes(head[:2], "little"), int.from_bytes(head[:2], "big")}
    return bool(groups & {0x0000, 0x0002, 0x0004, 0x0008})


def _plain_headers(
    path: Path, raw: RawHeader, fp: Any, size: int
) -> list[InstanceHeader] | DicomProblem | None:
    """The header of a single-image file from its walked raw elements; None: read the
    file with pydicom (a multi-frame or mosaic file, a DICOMDIR, or anything unusual)."""
    if raw.media_storage_sop_class_uid == _DICOMDIR_SOP_CLASS or _PER_FRAME_GROUPS_TAG in raw:
        return None
    try:
        offset = (
            _pixel_offset(fp, raw, raw.transfer_syntax_uid, size) if _us(raw, "Rows", 0) else None
        )
    except ValueError:
        return None  # truncated: pydicom's read names the reason as before
    header = _header_from_dataset(path, raw, raw.transfer_syntax_uid, offset)
    if isinstance(header, DicomProblem) or ("MOSAIC" in header.image_type and header.rows):
        return None
    return [header]


def _header_from_dataset(
    path: Path, ds: Dataset | RawHeader, syntax: str, offset: int | None
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


def _binary_float(ds: Dataset, keyword: str) -> float | None:
    """A binary (FD/FL) element through pydicom's conversion (raw bytes are not text)."""
    try:
        value = ds.get(keyword)
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _converted(frame: Dataset, shared: Dataset | None, keyword: str) -> float | None:
    """A classic attribute a legacy converted enhanced image keeps in its unassigned
    per-frame (else shared) converted attributes."""
    for groups, sequence in (
        (frame, "UnassignedPerFrameConvertedAttributesSequence"),
        (shared, "UnassignedSharedConvertedAttributesSequence"),
    ):
        item = _group_item(groups, None, sequence)
        if item is not None and keyword in item:
            return _binary_float(item, keyword)
    return None


def _group_item(frame: Dataset | None, shared: Dataset | None, sequence: str) -> Dataset | None:
    """First item of a functional group, from the frame's own groups, else the shared ones."""
    for groups in (frame, shared):
        if groups is not None and sequence in groups and len(groups[sequence].value):
            item: Dataset = groups[sequence].value[0]
            return item
    return None


def _frame_headers(header: InstanceHeader, ds: Dataset) -> list[InstanceHeader] | DicomProblem:
    """One header per frame of an enhanced multi-frame image (its functional groups)."""
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if len(per_frame) != header.number_of_frames:
        return DicomProblem(
            str(header.path),
            f"{header.number_of_frames} frames but {len(per_frame)} per-frame functional groups",
        )
    frame_bytes = header.rows * header.columns * header.bits_allocated // 8
    frame_bytes *= header.samples_per_pixel
    headers = []
    for index, frame in enumerate(per_frame):
        plane = _group_item(frame, shared, "PlanePositionSequence")
        orient = _group_item(frame, shared, "PlaneOrientationSequence")
        measures = _group_item(frame, shared, "PixelMeasuresSequence")
        rescale = _group_item(frame, shared, "PixelValueTransformationSequence")
        content = _group_item(frame, shared, "FrameContentSequence")
        diffusion = _group_item(frame, shared, "MRDiffusionSequence")
        echo = _group_item(frame, shared, "MREchoSequence")
        position = None if plane is None else _floats(plane, "ImagePositionPatient", 3)
        orientation = None if orient is None else _floats(orient, "ImageOrientationPatient", 6)
        spacing = None if measures is None else _floats(measures, "PixelSpacing", 2)
        b_value = (
            _converted(frame, shared, "DiffusionBValue")
            if diffusion is None
            else _binary_float(diffusion, "DiffusionBValue")
        )
        echo_ms = (
            _converted(frame, shared, "EchoTime")
            if echo is None
            else _binary_float(echo, "EffectiveEchoTime")
        )
        changes: dict[str, Any] = {
            "frame_index": index,
            "number_of_frames": header.number_of_frames,
            "orientation": orientation,
            "position_mm": (position[0], position[1], position[2]) if position else None,
            "pixel_spacing_mm": (spacing[0], spacing[1]) if spacing else None,
            "b_value": None if b_value is None else (0.0 if b_value < B0_LIMIT_S_MM2 else b_value),
            "echo_time_ms": echo_ms,
            "pixel_offset": (
                None if header.pixel_offset is None else header.pixel_offset + index * frame_bytes
            ),
        }
        if measures is not None and _float(measures, "SliceThickness") is not None:
            changes["slice_thickness_mm"] = _float(measures, "SliceThickness")
        if rescale is not None and _float(rescale, "RescaleSlope") is not None:
            changes["rescale_slope"] = _float(rescale, "RescaleSlope") or 1.0
            changes["rescale_intercept"] = _float(rescale, "RescaleIntercept") or 0.0
        if content is not None:
            changes["acquisition_datetime"] = _str(content, "FrameAcquisitionDateTime")
            temporal = _int(content, "TemporalPositionIndex")
            if temporal is not None:
                changes["temporal_position"] = temporal
        headers.append(replace(header, **changes))
    return headers


def _mosaic_headers(header: InstanceHeader, ds: Dataset) -> list[InstanceHeader] | DicomProblem:
    """One header per slice of a Siemens mosaic, placed by the CSA header (nibabel).

    Raises
    ------
    Nothing: a mosaic nibabel cannot read is a DicomProblem naming the reason.
    """
    with warnings.catch_warnings():
        # nibabel calls its DICOM readers experimental; only the CSA mosaic geometry of
        # MosaicWrapper is used, which dcm2niix's test collections exercise.
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers
    try:
        wrapper = dicomwrappers.wrapper_from_data(ds)
        if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
            # Read whole, the tiled picture would pass for one slice: refuse it instead.
            return DicomProblem(
                str(header.path),
                "ImageType MOSAIC without NumberOfImagesInMosaic in the CSA header",
            )
        n_slices = int(wrapper.n_mosaic)
        tile_rows, tile_columns = (int(v) for v in wrapper.image_shape[:2])
        affine = np.asarray(wrapper.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types on a damaged CSA header
        return DicomProblem(str(header.path), f"Siemens mosaic without a usable CSA header: {exc}")
    origin, step = affine[:3, 3], affine[:3, 2]
    return [
        replace(
            header,
            frame_index=k,
            rows=tile_rows,
            columns=tile_columns,
            stored_shape=(header.rows, header.columns),
            position_mm=tuple(float(v) for v in origin + k * step),  # type: ignore[arg-type]
        )
        for k in range(n_slices)
    ]


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
    seen: set[tuple[str, int]] = set()
    for path in iter_files(paths):
        with warnings.catch_warnings():
            # pydicom warns about every non-conformant value; the problems that matter
            # are returned as DicomProblem instead of flooding the log.
            warnings.simplefilter("ignore")
            result = read_headers(path)
        if result is None:
            continue
        if isinstance(result, DicomProblem):
            problems.append(result)
            continue
        for header in result:
            if header.image_key not in seen:
                seen.add(header.image_key)
                headers.append(header)
    return headers, problems


def read_frame(header: InstanceHeader, out: np.ndarray) -> None:
    """Decode one image into ``out`` as rescaled float32 (HU for CT).

    The image is the file's only one, the frame ``header.frame_index`` of an enhanced
    multi-frame file, or that tile of a Siemens mosaic.

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
        the file (and the frame).
    """
    shape = header.stored_shape or (header.rows, header.columns)
    try:
        if header.pixel_offset is not None and header.bits_allocated in (8, 16, 32):
            dtype = np.dtype(f"<{'i' if header.pixel_signed else 'u'}{header.bits_allocated // 8}")
            raw = np.fromfile(
                header.path, dtype=dtype, count=shape[0] * shape[1], offset=header.pixel_offset
            )
            if raw.size != shape[0] * shape[1]:
                raise ValueError(f"{raw.size} of {shape[0] * shape[1]} pixels present")
            pixels = _apply_bits_stored(raw.reshape(shape), header, in_place=True)
        elif header.number_of_frames > 1 and header.frame_index is not None:
            import pydicom.pixels

            pixels = pydicom.pixels.pixel_array(header.path, index=header.frame_index)
        else:
            import pydicom

            pixels = pydicom.dcmread(header.path).pixel_array
    except Exception as exc:  # any decoder failure is a per-file problem, never fatal
        raise ValueError(f"{_where(header)}: cannot decode pixel data ({exc})") from exc
    if pixels.shape != shape:
        raise ValueError(f"{_where(header)}: pixel array {pixels.shape}, expected {shape}")
    if header.stored_shape is not None and header.frame_index is not None:
        pixels = _mosaic_tile(pixels, header.frame_index, header.rows, header.columns)
    _rescale_into(pixels, header.rescale_slope, header.rescale_intercept, out)


def _rescale_into(pixels: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """``out = float32(pixels * slope) + float32(intercept)``, as float32.

    With slope 1 and integers of up to 16 bits (exact in float32), the product is the
    pixel itself: one pass (pixel + intercept in float32) gives the same bits as the
    multiply-then-add of the general case, in half the passes over the image.
    """
    if slope == 1.0 and pixels.dtype.kind in "ui" and pixels.dtype.itemsize <= 2:
        if intercept:
            np.add(pixels, np.float32(intercept), out=out, casting="unsafe")
        else:
            np.copyto(out, pixels, casting="unsafe")
        return
    np.multiply(pixels, slope, out=out, casting="unsafe")
    if intercept:
        out += np.float32(intercept)


def _where(header: InstanceHeader) -> str:
    """The file, and the frame or tile, for messages."""
    if header.frame_index is None:
        return str(header.path)
    return f"{header.path} frame {header.frame_index + 1}"


def _mosaic_tile(mosaic: np.ndarray, index: int, rows: int, columns: int) -> np.ndarray:
    """Tile ``index`` of a mosaic, tiles filled row by row from the top left."""
    per_row = mosaic.shape[1] // columns
    r, c = divmod(index, per_row)
    return mosaic[r * rows : (r + 1) * rows, c * columns : (c + 1) * columns]


def _apply_bits_stored(
    pixels: np.ndarray, header: InstanceHeader, *, in_place: bool = False
) -> np.ndarray:
    """Drop bits above BitsStored (unsigned) or sign-extend from them (signed).

    ``in_place`` overwrites ``pixels`` (an array read for this call alone).
    """
    unused = header.bits_allocated - header.bits_stored
    if unused <= 0:
        return pixels
    out = pixels if in_place else None
    if header.pixel_signed:
        shifted = np.left_shift(pixels, unused, out=out)
        return np.right_shift(shifted, unused, out=shifted)
    return np.bitwise_and(pixels, (1 << header.bits_stored) - 1, out=out)
