"""Write small but real CT DICOM files for tests (and benchmarks).

Two entry points:

* :func:`write_ct_instance` writes one single-frame CT image from a ``(y, x)`` HU array;
* :func:`write_ctp_series` writes a whole time-resolved series from a ``(t, z, y, x)``
  HU array, with the frame times encoded the way a chosen vendor would;
* :func:`write_ctp_time_point_series` writes the same as one series per time point (or
  per few time points), as dynamic-volume scanners and some PACS export a perfusion;
* :func:`write_ct_volume` writes a static ``(z, y, x)`` volume (NCCT, CTA, localizer).

Everything is deterministic (UIDs derived from a name) so that failures reproduce.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

#: How frame times are written: which tags a vendor fills.
TimeMode = Literal["acquisition_datetime", "acquisition_time", "content_time", "temporal_position"]

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def uid(name: str) -> str:
    """A valid, deterministic DICOM UID derived from ``name``."""
    digits = int(hashlib.sha1(name.encode()).hexdigest()[:24], 16)
    return f"2.25.{digits}"


@dataclass
class StudyTags:
    """Identity shared by every file of one synthetic study."""

    study_uid: str = field(default_factory=lambda: uid("study"))
    frame_of_reference_uid: str = field(default_factory=lambda: uid("for"))
    study_date: str = "20240102"
    patient_id: str = "SF-TEST-001"


def _time_tags(when: datetime, mode: TimeMode, frame_index: int, resolution_ms: float) -> dict:
    date = when.strftime("%Y%m%d")
    time = when.strftime("%H%M%S.%f")
    if mode == "acquisition_datetime":
        return {
            "AcquisitionDateTime": date + time,
            "AcquisitionDate": date,
            "AcquisitionTime": time,
        }
    if mode == "acquisition_time":
        return {"AcquisitionDate": date, "AcquisitionTime": time}
    if mode == "content_time":
        return {"ContentDate": date, "ContentTime": time}
    if mode == "temporal_position":
        return {"TemporalPositionIdentifier": frame_index + 1, "TemporalResolution": resolution_ms}
    raise ValueError(f"unknown time mode {mode!r}")


def write_ct_instance(
    path: Path,
    pixels_hu: np.ndarray,
    *,
    study: StudyTags,
    series_uid: str,
    sop_uid: str,
    position_mm: Sequence[float],
    orientation: Sequence[float] = AXIAL,
    pixel_spacing_mm: tuple[float, float] = (0.5, 0.5),
    slice_thickness_mm: float = 5.0,
    kvp: float = 80.0,
    series_number: int = 1,
    series_description: str = "",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    instance_number: int = 1,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    signed: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one single-frame CT image.

    Parameters
    ----------
    path : Path
        File to write (parent folders are created).
    pixels_hu : numpy.ndarray
        ``(y, x)`` Hounsfield units; stored as ``round((hu - intercept) / slope)``.
    signed : bool
        Store int16 (PixelRepresentation 1) instead of uint16.
    transfer_syntax : str
        Any syntax pydicom can encode (``RLELossless``, ``JPEGLSLossless``,
        ``JPEG2000Lossless``...).
    extra : dict, optional
        More tags by keyword (e.g. ``{"ContentTime": "101500"}``).

    Returns
    -------
    Path
        ``path``.
    """
    stored = np.round((np.asarray(pixels_hu, dtype=np.float64) - rescale_intercept) / rescale_slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"HU do not fit {dtype.__name__} with this rescale")
    stored_arr = stored.astype(dtype)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PatientName = "Test^Phantom"
    ds.PatientID = study.patient_id
    ds.StudyDate = study.study_date
    ds.StudyTime = "100000"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.Manufacturer = "StrokeFlow test factory"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.InstanceNumber = instance_number
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(v) for v in position_mm]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing_mm]
    ds.SliceThickness = slice_thickness_mm
    ds.KVP = kvp
    ds.RescaleSlope = rescale_slope
    ds.RescaleIntercept = rescale_intercept
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored_arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = stored_arr.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ctp_series(
    directory: Path,
    signal_hu: np.ndarray,
    times_s: np.ndarray,
    *,
    study: StudyTags | None = None,
    series_uid: str | None = None,
    series_number: int = 4,
    series_description: str = "CTP 4D",
    start: datetime = datetime(2024, 1, 2, 10, 15, 0),
    time_mode: TimeMode = "acquisition_datetime",
    first_slice_z_mm: float = 20.0,
    slice_spacing_mm: float | Sequence[float] = 5.0,
    slice_direction: Sequence[float] | None = None,
    frame_offset: int = 0,
    omit: Iterable[tuple[int, int]] = (),
    shuffle_names: bool = True,
    **instance_kwargs: Any,
) -> list[Path]:
    """Write a time-resolved (perfusion) series, one file per (frame, slice).

    Parameters
    ----------
    directory : Path
        Folder for the files.
    signal_hu : numpy.ndarray
        ``(t, z, y, x)`` HU.
    times_s : numpy.ndarray
        ``(t,)`` or ``(t, z)`` seconds after ``start`` for each frame (and slice).
    time_mode : str
        Which tags carry the time; ``"temporal_position"`` writes
        TemporalPositionIdentifier and TemporalResolution from the first interval.
    first_slice_z_mm, slice_spacing_mm : float
        Slice ``k`` lies at ``first + k * spacing`` (or at the cumulative sum of a
        per-gap sequence) along ``slice_direction`` from the origin.
    slice_direction : sequence of 3 float, optional
        Unit vector the slices step along (default: the slice normal
        ``cross(row, col)`` of the orientation, i.e. +z for axial images).
    frame_offset : int
        Added to the frame index for numbering (a series that continues another).
    omit : iterable of (t, z)
        Frames not written (missing images).
    shuffle_names : bool
        Name files by a random number so that directory order means nothing.
    **instance_kwargs
        Passed on to :func:`write_ct_instance`.

    Returns
    -------
    list of Path
        The files written.
    """
    study = study or StudyTags()
    series_uid = series_uid or uid(
        f"{study.study_uid}-ctp-{series_number}-{frame_offset}-{first_slice_z_mm}"
    )
    nt, nz = signal_hu.shape[:2]
    times = np.asarray(times_s, dtype=np.float64)
    if times.ndim == 1:
        times = np.repeat(times[:, None], nz, axis=1)
    if np.isscalar(slice_spacing_mm):
        z_mm = first_slice_z_mm + np.arange(nz) * float(slice_spacing_mm)  # type: ignore[arg-type]
    else:
        z_mm = first_slice_z_mm + np.concatenate([[0.0], np.cumsum(slice_spacing_mm)])
    orientation = np.asarray(instance_kwargs.get("orientation", AXIAL), dtype=np.float64)
    direction = (
        np.cross(orientation[:3], orientation[3:])
        if slice_direction is None
        else np.asarray(slice_direction, dtype=np.float64)
    )
    resolution_ms = float((times[1, 0] - times[0, 0]) * 1000.0) if nt > 1 else 1000.0
    skipped = set(omit)
    base_extra = dict(instance_kwargs.pop("extra", None) or {})
    rng = random.Random(series_uid)
    paths = []
    for t in range(nt):
        for z in range(nz):
            if (t, z) in skipped:
                continue
            when = start + timedelta(seconds=float(times[t, z]))
            extra = dict(base_extra)
            extra.update(_time_tags(when, time_mode, t + frame_offset, resolution_ms))
            number = (t + frame_offset) * nz + z + 1
            name = f"{rng.getrandbits(48):012x}.dcm" if shuffle_names else f"t{t:03d}_z{z:03d}.dcm"
            paths.append(
                write_ct_instance(
                    directory / name,
                    signal_hu[t, z],
                    study=study,
                    series_uid=series_uid,
                    sop_uid=uid(f"{series_uid}-{t}-{z}"),
                    position_mm=tuple(direction * float(z_mm[z])),
                    series_number=series_number,
                    series_description=series_description,
                    instance_number=number,
                    extra=extra,
                    **instance_kwargs,
                )
            )
    return paths


def write_ctp_time_point_series(
    directory: Path,
    signal_hu: np.ndarray,
    times_s: np.ndarray,
    *,
    study: StudyTags | None = None,
    points_per_series: int = 1,
    series_number: int | None = None,
    series_description: str = "Perfusion",
    **series_kwargs: Any,
) -> list[str]:
    """Write a perfusion as one series per ``points_per_series`` time points.

    Parameters
    ----------
    signal_hu, times_s
        As for :func:`write_ctp_series`.
    points_per_series : int
        Time points in each series.
    series_number : int, optional
        One SeriesNumber for every series (as Toshiba/Canon writes); default: numbered
        from 10 on, one per series.
    series_description : str
        Each series is described ``"<description> t01"``, ``"... t02"``...
    **series_kwargs
        Passed on to :func:`write_ctp_series`.

    Returns
    -------
    list of str
        SeriesInstanceUIDs in time order.
    """
    study = study or StudyTags()
    uids = []
    for k, t0 in enumerate(range(0, signal_hu.shape[0], points_per_series)):
        t1 = t0 + points_per_series
        series_uid = uid(f"{study.study_uid}-timepoint-{series_description}-{t0}")
        write_ctp_series(
            directory,
            signal_hu[t0:t1],
            np.asarray(times_s)[t0:t1],
            study=study,
            series_uid=series_uid,
            series_number=10 + k if series_number is None else series_number,
            series_description=f"{series_description} t{k + 1:02d}",
            frame_offset=t0,
            **series_kwargs,
        )
        uids.append(series_uid)
    return uids


def write_ct_volume(
    directory: Path,
    volume_hu: np.ndarray,
    *,
    study: StudyTags | None = None,
    series_uid: str | None = None,
    series_number: int = 2,
    series_description: str = "NCCT",
    first_slice_z_mm: float = 0.0,
    slice_spacing_mm: float = 5.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    contrast_agent: str | None = None,
    **instance_kwargs: Any,
) -> list[Path]:
    """Write a static ``(z, y, x)`` CT volume (NCCT, CTA, or a localizer with one slice).

    ``contrast_agent`` fills ContrastBolusAgent (as a CTA would); other keyword
    arguments go to :func:`write_ct_instance`.
    """
    study = study or StudyTags()
    series_uid = series_uid or uid(f"{study.study_uid}-volume-{series_number}")
    extra = dict(instance_kwargs.pop("extra", None) or {})
    if contrast_agent:
        extra["ContrastBolusAgent"] = contrast_agent
    extra.setdefault("AcquisitionDate", study.study_date)
    extra.setdefault("AcquisitionTime", "100500")
    paths = []
    for z in range(volume_hu.shape[0]):
        paths.append(
            write_ct_instance(
                directory / f"s{series_number}_{z:04d}.dcm",
                volume_hu[z],
                study=study,
                series_uid=series_uid,
                sop_uid=uid(f"{series_uid}-{z}"),
                position_mm=(0.0, 0.0, first_slice_z_mm + z * slice_spacing_mm),
                series_number=series_number,
                series_description=series_description,
                image_type=image_type,
                instance_number=z + 1,
                extra=extra,
                **instance_kwargs,
            )
        )
    return paths


def ramp_signal(nt: int, nz: int, ny: int = 16, nx: int = 16) -> np.ndarray:
    """A ``(t, z, y, x)`` HU test pattern in which every image is identifiable.

    HU = 100 z + 2 t + (x mod 3): linear in t (so interpolation in time is exact),
    distinct for every slice and frame, and not flat in x (orientation errors show).
    """
    t, z, _, x = np.meshgrid(
        np.arange(nt), np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"
    )
    return (100.0 * z + 2.0 * t + (x % 3)).astype(np.float32)
