"""Write a simulated MR stroke study as real DICOM files, and the ``phantom mri`` command.

Series written (single-frame MR Image Storage, explicit VR little endian):

1. FLAIR and 2. SWI: static distractor volumes the analysis must ignore;
3. DWI trace-weighted, b0 and b-high in one series (or one series per b-value), the
   b-value in DiffusionBValue or in a vendor's private tag (Siemens ``(0019,100C)``, GE
   ``(0043,1039)`` with the 10^9 offset of some software versions, Philips
   ``(2001,1003)``);
4. the scanner ADC map (ImageType ``DERIVED\\PRIMARY\\DIFFUSION\\ADC``, x10^-6 mm²/s);
5. DSC perfusion: one image per slice and time point, AcquisitionTime per image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from strokeflow.phantom.mri import MriPhantom, MriPhantomOptions, simulate_mri

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
Vendor = Literal["standard", "siemens", "ge", "philips"]
_MANUFACTURER = {
    "standard": "StrokeFlow phantom",
    "siemens": "SIEMENS",
    "ge": "GE MEDICAL SYSTEMS",
    "philips": "Philips Medical Systems",
}
_START = datetime(2024, 3, 4, 9, 30, 0)


class _Writer:
    """Shared identity of one study and a file counter."""

    def __init__(self, out_dir: Path, seed: int, vendor: Vendor) -> None:
        self.out_dir = out_dir
        self.seed = seed
        self.vendor = vendor
        self.study_uid = self.uid("study")
        self.frame_uid = self.uid("frame-of-reference")
        self.paths: list[Path] = []

    def uid(self, name: str) -> str:
        # One source per part: pydicom concatenates them without a separator.
        return str(generate_uid(entropy_srcs=[f"strokeflow-mri-phantom/{self.seed}/{name}"]))

    def write(
        self,
        folder: str,
        pixels: np.ndarray,
        *,
        series_uid: str,
        series_number: int,
        description: str,
        image_type: Sequence[str],
        affine: np.ndarray,
        z: int,
        instance: int,
        when: datetime,
        echo_time_ms: float,
        repetition_time_ms: float,
        b_value: float | None = None,
    ) -> Path:
        stored = np.clip(np.round(pixels), 0, 65535).astype(np.uint16)
        sop_uid = self.uid(f"{series_uid}/{instance}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = self.frame_uid
        ds.PatientName = "Phantom^MR"
        ds.PatientID = f"SF-MR-{self.seed}"
        ds.StudyDate = _START.strftime("%Y%m%d")
        ds.StudyTime = _START.strftime("%H%M%S")
        ds.Modality = "MR"
        ds.Manufacturer = _MANUFACTURER[self.vendor]
        ds.MagneticFieldStrength = 1.5
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = instance
        ds.ImageType = list(image_type)
        ds.AcquisitionDate = when.strftime("%Y%m%d")
        ds.AcquisitionTime = when.strftime("%H%M%S.%f")
        ds.ContentDate = ds.AcquisitionDate
        ds.ContentTime = ds.AcquisitionTime
        ds.EchoTime = round(echo_time_ms, 3)
        ds.RepetitionTime = round(repetition_time_ms, 3)
        row_dir = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
        col_dir = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        position = affine @ np.array([0.0, 0.0, float(z), 1.0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in position[:3]]
        ds.PixelSpacing = [
            round(float(np.linalg.norm(affine[:3, 1])), 6),
            round(float(np.linalg.norm(affine[:3, 0])), 6),
        ]
        ds.SliceThickness = round(float(np.linalg.norm(affine[:3, 2])), 4)
        ds.SpacingBetweenSlices = ds.SliceThickness
        if b_value is not None:
            self._b_value(ds, b_value)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = stored.tobytes()
        path = self.out_dir / folder / f"IM{instance:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        self.paths.append(path)
        return path

    def _b_value(self, ds: Dataset, b: float) -> None:
        if self.vendor == "standard":
            ds.DiffusionBValue = float(b)
        elif self.vendor == "siemens":
            ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(
                0x0C, "IS", str(round(b))
            )
        elif self.vendor == "ge":
            # Some GE software versions add 10^9 to the b-value (slop_int_6).
            ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(
                0x39, "IS", [str(1_000_000_000 + round(b)), "8", "0", "0"]
            )
        else:
            ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(
                0x03, "FL", float(b)
            )


def write_mri_study(
    phantom: MriPhantom,
    out_dir: Path,
    *,
    vendor: Vendor = "standard",
    dwi_split_series: bool = False,
    distractors: bool = True,
) -> list[Path]:
    """Write the phantom's series as DICOM files under ``out_dir``.

    Parameters
    ----------
    phantom : MriPhantom
        From :func:`strokeflow.phantom.mri.simulate_mri`.
    out_dir : Path
        Folder; one sub-folder per series is created.
    vendor : {"standard", "siemens", "ge", "philips"}
        Where the DWI b-values are written (DiffusionBValue or a private tag).
    dwi_split_series : bool
        One DWI series per b-value instead of one series holding all.
    distractors : bool
        Also write FLAIR and SWI volumes, which the analysis must ignore.

    Returns
    -------
    list of Path
        Every file written.
    """
    o = phantom.options
    w = _Writer(out_dir, o.seed, vendor)
    dwi_affine = phantom.dwi_affine_lps
    nz = o.slices
    if distractors and phantom.dwi:
        b0 = phantom.dwi[0.0]
        for number, name, desc, itype, image in (
            (
                1,
                "flair",
                "t2_tirm_tra_dark-fluid FLAIR",
                ("ORIGINAL", "PRIMARY", "M", "NONE"),
                np.where(b0 > 1500, 0.2 * b0, b0),
            ),
            (2, "swi", "SWI_Images", ("ORIGINAL", "PRIMARY", "SWI", "NONE"), 0.8 * b0),
        ):
            uid = w.uid(name)
            for z in range(nz):
                w.write(
                    name,
                    image[z],
                    series_uid=uid,
                    series_number=number,
                    description=desc,
                    image_type=itype,
                    affine=dwi_affine,
                    z=z,
                    instance=z + 1,
                    when=_START + timedelta(seconds=z),
                    echo_time_ms=90.0,
                    repetition_time_ms=9000.0,
                )
    if phantom.dwi:
        start = _START + timedelta(minutes=3)
        b_values = sorted(phantom.dwi)
        shared_uid = w.uid("dwi")
        for i, b in enumerate(b_values):
            uid = w.uid(f"dwi-b{b:g}") if dwi_split_series else shared_uid
            number = 3 if not dwi_split_series else 30 + i
            itype = ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE" if b == 0 else "TRACEW")
            for z in range(nz):
                w.write(
                    "dwi" if not dwi_split_series else f"dwi_b{b:g}",
                    phantom.dwi[b][z],
                    series_uid=uid,
                    series_number=number,
                    description="ep2d_diff_3scan_trace",
                    image_type=itype,
                    affine=dwi_affine,
                    z=z,
                    instance=i * nz + z + 1,
                    when=start + timedelta(seconds=z),
                    echo_time_ms=89.0,
                    repetition_time_ms=5600.0,
                    b_value=b,
                )
    if phantom.adc_um2_s is not None:
        uid = w.uid("adc")
        for z in range(nz):
            w.write(
                "adc",
                phantom.adc_um2_s[z],
                series_uid=uid,
                series_number=4,
                description="ep2d_diff_3scan_trace_ADC",
                image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"),
                affine=dwi_affine,
                z=z,
                instance=z + 1,
                when=_START + timedelta(minutes=3, seconds=z),
                echo_time_ms=89.0,
                repetition_time_ms=5600.0,
            )
    if phantom.dsc is not None:
        uid = w.uid("dsc")
        start = _START + timedelta(minutes=8)
        nt = phantom.dsc.shape[0]
        for t in range(nt):
            for z in range(nz):
                when = start + timedelta(seconds=float(phantom.dsc_times_s[t, z]))
                w.write(
                    "dsc",
                    phantom.dsc[t, z],
                    series_uid=uid,
                    series_number=5,
                    description="ep2d_perf",
                    image_type=("ORIGINAL", "PRIMARY", "PERFUSION", "NONE"),
                    affine=phantom.pwi_affine_lps,
                    z=z,
                    instance=t * nz + z + 1,
                    when=when,
                    echo_time_ms=o.te_s * 1000.0,
                    repetition_time_ms=o.tr_s * 1000.0,
                )
    return w.paths


def write_mri_phantom_cli(
    out: Path,
    seed: int = 0,
    lesion: str = "standard",
    side: str = "left",
    adc_map: bool = True,
    perfusion: bool = True,
    dwi_matrix: int = 256,
    pwi_matrix: int = 128,
    slices: int = 20,
    frames: int = 60,
    vendor: str = "standard",
    pwi_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> str:
    """Body of ``strokeflow phantom mri OUT``: simulate, write DICOM and ``truth.json``.

    Parameters
    ----------
    out : Path
        Folder for the study and ``truth.json``.
    seed, lesion, side, adc_map, perfusion, dwi_matrix, pwi_matrix, slices, frames
        See :class:`strokeflow.phantom.mri.MriPhantomOptions`.
    vendor : str
        Where the b-values go: standard, siemens, ge or philips.
    pwi_shift_mm : tuple of float
        Patient move (LPS mm) between the DWI and the perfusion series.

    Returns
    -------
    str
        One line for the terminal (files written and the truth).

    Raises
    ------
    ValueError
        For an unknown lesion, side or vendor (the message lists the choices).
    """
    choices = {
        "lesion": ("none", "standard", "large", "malignant"),
        "side": ("left", "right"),
        "vendor": ("standard", "siemens", "ge", "philips"),
    }
    for name, value in (("lesion", lesion), ("side", side), ("vendor", vendor)):
        if value not in choices[name]:
            raise ValueError(f"--{name} must be one of {', '.join(choices[name])}; got {value!r}")
    options = replace(
        MriPhantomOptions(),
        seed=seed,
        lesion=lesion,  # type: ignore[arg-type]
        lesion_side=side,  # type: ignore[arg-type]
        adc_map=adc_map,
        perfusion=perfusion,
        dwi_matrix=dwi_matrix,
        pwi_matrix=pwi_matrix,
        slices=slices,
        frames=frames,
        pwi_shift_mm=tuple(float(v) for v in pwi_shift_mm),  # type: ignore[arg-type]
    )
    phantom = simulate_mri(options)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_mri_study(phantom, out, vendor=vendor)  # type: ignore[arg-type]
    (out / "truth.json").write_text(json.dumps(phantom.truth, indent=2))
    t = phantom.truth
    return (
        f"wrote {len(paths)} files to {out}; truth: core {t['core_ml']:.1f} mL, "
        f"Tmax>6s {t['tmax6_ml']:.1f} mL, Tmax>10s {t['tmax10_ml']:.1f} mL, "
        f"decisions {json.dumps(t['decisions'])}"
    )
