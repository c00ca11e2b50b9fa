"""Write a simulated CT perfusion study as a DICOM study (plus ``truth.json``).

Series written: the perfusion series (optionally split in time over several series, down
to one series per time point as dynamic-volume scanners and some PACS export it), and
with ``extra_series`` the companions a real study carries, which an assembler must
recognise and set aside: a non-contrast head CT, a 1 mm CT angiogram at the arterial
peak and a localizer. All share the Study and the Frame of Reference. With a gantry
tilt the axial images are written as a tilted scanner writes them: the same pixels, the
column direction turned about the patient's left-right axis, and the slices moved along
the table axis (a sheared grid) so that the planes stay ``slice_mm`` apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from strokeflow.phantom.ctp import (
    HEAD_AX_MM,
    HEAD_AY_MM,
    CtpPhantom,
    arterial_peak_time_s,
    render_static,
)

TransferSyntaxName = Literal["explicit", "implicit", "rle", "jpegls", "jpeg2000"]
TimeTag = Literal["acquisition", "content", "temporal_position"]

_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
_STUDY_START = datetime(2024, 3, 14, 9, 30, 0)
RESCALE_INTERCEPT = -1024.0
_MAX_STORED = 4095  # 12 bits stored


def quantise_hu(hu: np.ndarray) -> np.ndarray:
    """Stored pixel values for HU: ``round(HU + 1024)`` clipped to 12 bits, uint16.

    Parameters
    ----------
    hu : numpy.ndarray
        Hounsfield units, any shape.

    Returns
    -------
    numpy.ndarray
        uint16 stored values; ``stored + RescaleIntercept`` (slope 1) gives the HU back
        to within 0.5 HU (exactly after clipping to [-1024, 3071]).
    """
    return np.clip(np.rint(hu - RESCALE_INTERCEPT), 0, _MAX_STORED).astype(np.uint16)


def write_ctp_study(
    phantom: CtpPhantom,
    out_dir: Path,
    *,
    transfer_syntax: TransferSyntaxName = "explicit",
    split_series: int = 1,
    extra_series: bool = True,
    shuffle_names: bool = True,
    time_tag: TimeTag = "acquisition",
    gantry_tilt_deg: float = 0.0,
) -> list[Path]:
    """Write the phantom as DICOM CT images and ``out_dir/truth.json``.

    Parameters
    ----------
    phantom : CtpPhantom
        The simulated study.
    out_dir : pathlib.Path
        Folder to write into (created if missing).
    transfer_syntax : {"explicit", "implicit", "rle", "jpegls", "jpeg2000"}
        Little-endian explicit/implicit VR, or lossless compression.
    split_series : int
        Split the perfusion frames in time over this many series (same Frame of Reference);
        the frame count writes one series per time point, described "... t01", "... t02".
    extra_series : bool
        Also write non-contrast CT, CT angiography and a localizer.
    shuffle_names : bool
        Random (seeded) file names instead of descriptive ones.
    time_tag : {"acquisition", "content", "temporal_position"}
        Where the frame time goes: AcquisitionDate/Time, ContentDate/Time, or only
        TemporalPositionIdentifier + NumberOfTemporalPositions + TemporalResolution.
    gantry_tilt_deg : float
        Gantry tilt (GantryDetectorTilt) of the axial series, -30 to 30 degrees.

    Returns
    -------
    list of pathlib.Path
        The DICOM files: perfusion (frame by frame, slice by slice), then the extra series.

    Raises
    ------
    ValueError
        For an unknown transfer syntax or time tag, an impossible split or tilt.
    """
    if transfer_syntax not in _SYNTAXES:
        raise ValueError(
            f"unknown transfer syntax {transfer_syntax!r}; use one of {list(_SYNTAXES)}"
        )
    if time_tag not in ("acquisition", "content", "temporal_position"):
        raise ValueError(f"unknown time tag {time_tag!r}")
    n_frames, n_slices = phantom.hu.shape[:2]
    if not 1 <= split_series <= n_frames:
        raise ValueError(
            f"split_series must be 1..{n_frames} (the frame count); got {split_series}"
        )
    if not -30.0 <= gantry_tilt_deg <= 30.0:
        raise ValueError(f"gantry_tilt_deg must be within +-30 degrees; got {gantry_tilt_deg}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = phantom.options
    seed = options.seed
    names = _Namer(seed, shuffle_names)

    def uid(*parts: object) -> str:
        return str(
            # pydicom joins the entropy sources without a separator: ("p", 1, 12) and
            # ("p", 11, 2) would collide, so the parts are joined unambiguously first.
            generate_uid(
                entropy_srcs=["strokeflow-phantom-ctp", str(seed), "/".join(map(str, parts))]
            )
        )

    study: dict[str, Any] = {
        "StudyInstanceUID": uid("study"),
        "FrameOfReferenceUID": uid("frame-of-reference"),
        "seed": seed,
        "syntax": _SYNTAXES[transfer_syntax],
        "tilt_deg": float(gantry_tilt_deg),
    }
    paths: list[Path] = []
    stored = quantise_hu(phantom.hu)
    affine = phantom.affine_lps
    interval_ms = float(np.median(np.diff(phantom.times_s))) * 1000.0 if n_frames > 1 else 0.0
    series_of_frame = np.minimum(np.arange(n_frames) * split_series // n_frames, split_series - 1)
    per_time_point = split_series == n_frames > 1
    for s in range(split_series):
        series_uid = uid("perfusion", s)
        frames = np.flatnonzero(series_of_frame == s)
        for f in frames:
            when = _STUDY_START + timedelta(seconds=float(phantom.times_s[f]))
            for z in range(n_slices):
                ds = _base_dataset(study, uid("perfusion", f, z), series_uid, 3 + s)
                ds.SeriesDescription = "CT PERFUSION 5mm" + (
                    f" t{f + 1:02d}" if per_time_point else ""
                )
                ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
                ds.KVP = "80"
                ds.XRayTubeCurrent = 150
                ds.ContrastBolusAgent = "IOHEXOL 350"
                ds.AcquisitionNumber = int(f) + 1
                ds.InstanceNumber = int(f) * n_slices + z + 1
                _set_plane(ds, affine, z, options.slice_mm, study["tilt_deg"], stored.shape[2:])
                _set_time(ds, time_tag, when, int(f), n_frames, interval_ms)
                ds.WindowCenter, ds.WindowWidth = "40", "80"
                paths.append(names.write(ds, stored[f, z], out_dir, f"ctp_s{s}_t{f:03d}_z{z:03d}"))

    if extra_series:
        paths += _write_extras(phantom, study, uid, names, out_dir)

    truth = dict(phantom.truth)
    truth["dicom"] = {
        "transfer_syntax": transfer_syntax,
        "split_series": split_series,
        "extra_series": extra_series,
        "time_tag": time_tag,
        "gantry_tilt_deg": float(gantry_tilt_deg),
        "study_instance_uid": study["StudyInstanceUID"],
        "frame_of_reference_uid": study["FrameOfReferenceUID"],
        "perfusion_series_uids": [uid("perfusion", s) for s in range(split_series)],
        "perfusion_files": n_frames * n_slices,
    }
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return paths


class _Namer:
    """File names: descriptive, or random hex from a seeded generator."""

    def __init__(self, seed: int, shuffle: bool) -> None:
        self._rng = np.random.default_rng([seed, 5]) if shuffle else None

    def write(self, ds: Dataset, pixels: np.ndarray, out_dir: Path, stem: str) -> Path:
        if self._rng is not None:
            stem = "".join(f"{b:02x}" for b in self._rng.integers(0, 256, 8))
        path = out_dir / f"{stem}.dcm"
        _set_pixels(ds, pixels)
        ds.save_as(path, enforce_file_format=True)
        return path


def _base_dataset(
    study: dict[str, Any], sop_uid: str, series_uid: str, series_number: int
) -> Dataset:
    seed = study["seed"]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = study["syntax"]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "PHANTOM^CTP"
    ds.PatientID = f"SFPHANTOM{seed}"
    ds.PatientBirthDate = "19560101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study["StudyInstanceUID"]
    ds.StudyDate = _STUDY_START.strftime("%Y%m%d")
    ds.StudyTime = _STUDY_START.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = f"SF{seed:08d}"[-16:]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT STROKE PROTOCOL"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = ds.StudyDate
    ds.PatientPosition = "HFS"
    ds.Manufacturer = "StrokeFlow phantom"
    ds.ManufacturerModelName = "strokeflow.phantom.ctp"
    ds.FrameOfReferenceUID = study["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "HEAD"
    ds.ConvolutionKernel = "H30s"
    return ds


def _set_plane(
    ds: Dataset,
    affine: np.ndarray,
    z: int,
    thickness_mm: float,
    tilt_deg: float = 0.0,
    shape_yx: tuple[int, ...] = (1, 1),
) -> None:
    """Plane of slice ``z`` of an axial grid, tilted about the left-right axis.

    A tilted gantry keeps the slice centre on the table axis and turns the column
    direction by the tilt; slices then follow each other along the table by
    ``spacing / cos(tilt)``, which keeps the planes ``spacing`` apart (the sheared
    grid a real tilted scanner writes, positive tilt as GE writes +18.5).
    """
    row_dir = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    col_dir = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    spacing = np.linalg.norm(affine[:3, :2], axis=0)
    position = (affine @ np.array([0.0, 0.0, float(z), 1.0]))[:3]
    if tilt_deg:
        angle = np.radians(tilt_deg)
        half_y, half_x = ((n - 1) / 2.0 for n in shape_yx)
        # Centre of slice 0, then along the table (patient z) by spacing / cos(tilt).
        centre = affine[:3, 3] + affine[:3, 0] * half_x + affine[:3, 1] * half_y
        table_mm = z * float(np.linalg.norm(affine[:3, 2])) / np.cos(angle)
        centre = centre + np.array([0.0, 0.0, table_mm])
        col_dir = np.array([0.0, np.cos(angle), -np.sin(angle)])
        position = centre - affine[:3, 0] * half_x - col_dir * spacing[1] * half_y
        ds.GantryDetectorTilt = _ds(tilt_deg)
    ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.PixelSpacing = [_ds(float(spacing[1])), _ds(float(spacing[0]))]
    ds.SliceThickness = _ds(thickness_mm)
    ds.SliceLocation = _ds(position[2])


def _set_time(
    ds: Dataset, time_tag: TimeTag, when: datetime, frame: int, n_frames: int, interval_ms: float
) -> None:
    if time_tag == "acquisition":
        ds.AcquisitionDate = when.strftime("%Y%m%d")
        ds.AcquisitionTime = when.strftime("%H%M%S.%f")
    elif time_tag == "content":
        ds.ContentDate = when.strftime("%Y%m%d")
        ds.ContentTime = when.strftime("%H%M%S.%f")
    else:
        ds.TemporalPositionIdentifier = frame + 1
        ds.NumberOfTemporalPositions = n_frames
        ds.TemporalResolution = _ds(interval_ms)


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    syntax = ds.file_meta.TransferSyntaxUID
    data = np.ascontiguousarray(pixels, dtype=np.uint16)
    if syntax.is_compressed:
        ds.compress(syntax, data, generate_instance_uid=False)
    else:
        ds.PixelData = data.tobytes()


def _write_extras(
    phantom: CtpPhantom,
    study: dict[str, Any],
    uid: Callable[..., str],
    names: _Namer,
    out_dir: Path,
) -> list[Path]:
    options = phantom.options
    rng = np.random.default_rng([options.seed, 6])
    paths: list[Path] = []
    first = _STUDY_START - timedelta(minutes=4)

    # Non-contrast CT: same slice positions, 120 kVp, lower noise (higher dose).
    ncct, affine = render_static(options, options.slice_mm, None)
    ncct += rng.standard_normal(ncct.shape, dtype=np.float32) * np.float32(
        0.5 * options.noise_sigma_hu
    )
    series_uid = uid("ncct")
    for z, image in enumerate(quantise_hu(ncct)):
        ds = _base_dataset(study, uid("ncct", z), series_uid, 2)
        ds.SeriesDescription = "NCCT HEAD 5mm"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = z + 1
        _set_plane(ds, affine, z, options.slice_mm, study["tilt_deg"], ncct.shape[1:])
        ds.SliceThickness = _ds(options.slice_mm + 0.5)  # nominal, differs from the CTP
        ds.AcquisitionDate = first.strftime("%Y%m%d")
        ds.AcquisitionTime = first.strftime("%H%M%S.%f")
        ds.WindowCenter, ds.WindowWidth = "40", "80"
        paths.append(names.write(ds, image, out_dir, f"ncct_z{z:03d}"))

    # CT angiography: 1 mm slices over the same slab at the arterial peak.
    cta, affine = render_static(options, 1.0, arterial_peak_time_s())
    cta += rng.standard_normal(cta.shape, dtype=np.float32) * np.float32(options.noise_sigma_hu)
    series_uid = uid("cta")
    when = _STUDY_START + timedelta(minutes=3)
    for z, image in enumerate(quantise_hu(cta)):
        ds = _base_dataset(study, uid("cta", z), series_uid, 10)
        ds.SeriesDescription = "CTA HEAD 1mm"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "100"
        ds.ContrastBolusAgent = "IOHEXOL 350"
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = z + 1
        _set_plane(ds, affine, z, 1.0)
        ds.AcquisitionDate = when.strftime("%Y%m%d")
        ds.AcquisitionTime = when.strftime("%H%M%S.%f")
        ds.WindowCenter, ds.WindowWidth = "300", "700"
        paths.append(names.write(ds, image, out_dir, f"cta_z{z:03d}"))

    # Localizer: a lateral projection of the head ellipsoid (attenuation ~ chord length).
    ds = _base_dataset(study, uid("localizer"), uid("localizer-series"), 1)
    ds.SeriesDescription = "TOPOGRAM HEAD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.KVP = "120"
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    n, px = 256, 1.0
    ys = (np.arange(n) - n / 2) * px  # columns: anterior -> posterior
    zs = phantom.affine_lps[2, 3] + 60.0 - np.arange(n) * px  # rows: head -> feet
    zc = float(phantom.affine_lps[2, 3])
    Zg, Yg = np.meshgrid(zs, ys, indexing="ij")
    inside = 1.0 - (Yg / HEAD_AY_MM) ** 2 - ((Zg - zc + 20.0) / 110.0) ** 2
    chord_mm = 2.0 * HEAD_AX_MM * np.sqrt(np.clip(inside, 0.0, None))
    image = np.clip(np.rint(chord_mm * 12.0), 0, _MAX_STORED).astype(np.uint16)
    ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = [_ds(0.0), _ds(ys[0]), _ds(zs[0])]
    ds.PixelSpacing = [_ds(px), _ds(px)]
    ds.SliceThickness = "1"
    ds.AcquisitionDate = first.strftime("%Y%m%d")
    ds.AcquisitionTime = (first - timedelta(minutes=1)).strftime("%H%M%S.%f")
    ds.WindowCenter, ds.WindowWidth = "1024", "2048"
    paths.append(names.write(ds, image, out_dir, "localizer"))
    return paths


def _ds(value: float) -> str:
    """Decimal string of at most 16 characters."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text[:16]
