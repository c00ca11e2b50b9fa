"""Recognise the series of a mixed MR stroke study and assemble DWI, ADC and DSC.

Roles (``MrSeriesRole.role``):

* ``"dwi"``: diffusion-weighted images with a b-value per image (DiffusionBValue, or the
  private tags of Siemens ``(0019,xx0C)``, GE ``(0043,xx39)`` and Philips
  ``(2001,xx03)``); several b-values in one series or in several series;
* ``"adc"``: a scanner ADC map (ImageType or description says ADC; not an exponential
  ADC);
* ``"dsc"``: DSC perfusion, the same slice positions repeated at least
  :data:`MIN_DSC_FRAMES` times, without b-values;
* ``"other"``: everything else (FLAIR, SWI, T1, ...), with the reason, logged.

Works from the :class:`~strokeflow.assemble.series.StudyInventory` of
:func:`~strokeflow.assemble.series.build_inventory`; the few tags the CT header reader
does not keep (b-values, echo time) are read again from the files of MR series only.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from strokeflow.analysis.mri import DiffusionImages, MriAcquisition, ScannerAdc
from strokeflow.analysis.volume import Geometry
from strokeflow.assemble.ctp import AssemblyError, assemble_group, slice_geometry
from strokeflow.assemble.files import InstanceHeader, read_frame
from strokeflow.assemble.series import (
    StudyInventory,
    cluster_positions,
    geometry_key,
    positions_along_normal,
)

log = logging.getLogger(__name__)

#: Fewest repetitions of the slice positions for a DSC perfusion series.
MIN_DSC_FRAMES = 20
#: b-values closer than this (s/mm²) are the same shell.
B_VALUE_TOLERANCE = 10.0
_ADC_WORDS = re.compile(r"\bADC\b|apparent\s+diff", re.IGNORECASE)
_EXP_ADC = re.compile(r"\b(E|EXP)ADC\b|exponential", re.IGNORECASE)
_DWI_WORDS = re.compile(r"\bDWI\b|diff|trace", re.IGNORECASE)
_STRUCTURAL = (
    (re.compile(r"flair|dark.?fluid|tirm", re.IGNORECASE), "FLAIR"),
    (re.compile(r"\bswi\b|swan|susc|\bswip\b|\bt2\*|gre\b|hemo", re.IGNORECASE), "SWI/T2*"),
    (re.compile(r"tof|angio|\bmra\b", re.IGNORECASE), "MR angiography"),
    (re.compile(r"t1|mprage|bravo|tfe|spgr", re.IGNORECASE), "T1"),
    (re.compile(r"t2", re.IGNORECASE), "T2"),
)
#: Private b-value tags: (group, element offset, private creator, vendor).
_PRIVATE_B_TAGS = (
    (0x0019, 0x0C, "SIEMENS MR HEADER", "Siemens (0019,xx0C)"),
    (0x0043, 0x39, "GEMS_PARM_01", "GE (0043,xx39)"),
    (0x2001, 0x03, "Philips Imaging DD 001", "Philips (2001,xx03)"),
)


@dataclass(frozen=True)
class MrSeriesRole:
    """What one MR series is for the stroke analysis, and why."""

    series_uid: str
    series_number: int | None
    description: str
    role: str  # "dwi" | "adc" | "dsc" | "other"
    reason: str
    b_values: tuple[float, ...] = ()


@dataclass(frozen=True)
class _MrTags:
    b_value: float | None
    b_source: str
    echo_time_ms: float | None


def _number(value: Any) -> float | None:
    """A numeric DICOM value, also from raw bytes of an implicit-VR private element."""
    if isinstance(value, bytes):
        text = value.decode("ascii", errors="ignore").strip("\x00 ")
        if text and re.fullmatch(r"[-+0-9.eE\\ ]+", text):
            value = text.split("\\")[0]
        elif len(value) == 4:
            return float(struct.unpack("<f", value)[0])
        elif len(value) == 8:
            return float(struct.unpack("<d", value)[0])
        else:
            return None
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        if not value:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def b_value_of(ds: Dataset) -> tuple[float | None, str]:
    """The diffusion b-value of one image and the tag it came from.

    Raises
    ------
    Nothing: an absent or unreadable tag gives ``(None, "")``.
    """
    if "DiffusionBValue" in ds:
        b = _number(ds.DiffusionBValue)
        if b is not None:
            return b, "DiffusionBValue"
    for group, offset, creator, name in _PRIVATE_B_TAGS:
        try:
            element = ds.get_private_item(group, offset, creator)
        except (KeyError, ValueError):
            continue
        b = _number(element.value)
        if b is None:
            continue
        # Some GE versions add 10^9 (and older ones 10^5 multiples) to the b-value.
        if b >= 100_000:
            b = b % 100_000
        return b, name
    return None, ""


def _read_tags(h: InstanceHeader) -> _MrTags:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(h.path, stop_before_pixels=True, force=True)
    b, source = b_value_of(ds)
    te = _number(ds.get("EchoTime"))
    return _MrTags(b, source, te)


def _static_kind(first: InstanceHeader) -> str:
    text = " ".join([first.series_description, *first.image_type])
    for pattern, name in _STRUCTURAL:
        if pattern.search(text):
            return name
    return "static MR"


def classify_mr_series(study: StudyInventory) -> list[MrSeriesRole]:
    """Give every MR series of a study its role for the stroke analysis.

    Parameters
    ----------
    study : StudyInventory
        From :func:`strokeflow.assemble.series.build_inventory`.

    Returns
    -------
    list of MrSeriesRole
        One per MR series, in series order (non-MR series are left out).
    """
    roles = []
    for summary in study.series:
        if summary.modality != "MR":
            continue
        instances = study.instances_of(summary.series_uid)
        role, reason, bs = _classify(instances)
        roles.append(
            MrSeriesRole(
                summary.series_uid, summary.series_number, summary.description, role, reason, bs
            )
        )
    return roles


def _classify(instances: list[InstanceHeader]) -> tuple[str, str, tuple[float, ...]]:
    first = instances[0]
    if any(h.rows == 0 for h in instances):
        return "other", "no image data", ()
    if any(h.number_of_frames > 1 for h in instances):
        return "other", "multi-frame (enhanced) MR is not supported yet", ()
    if any(h.position_mm is None or h.orientation is None for h in instances):
        return "other", "no ImagePositionPatient/ImageOrientationPatient", ()
    text = " ".join([first.series_description, *first.image_type])
    if "ADC" in first.image_type or _ADC_WORDS.search(first.series_description):
        if _EXP_ADC.search(text) or "EADC" in first.image_type:
            return "other", "exponential ADC (eADC) map; the ADC map itself is used", ()
        return "adc", f"ADC map ({'/'.join(first.image_type) or first.series_description})", ()
    if "FA" in first.image_type or "TENSOR" in first.image_type:
        return "other", "diffusion tensor derived map (FA/tensor)", ()
    try:
        _, index = cluster_positions(positions_along_normal(instances))
    except ValueError as exc:
        return "other", f"unusable geometry ({exc})", ()
    counts = np.bincount(index)
    n_positions, n_repeats = int(counts.size), int(counts.max())
    if n_repeats >= MIN_DSC_FRAMES:
        probe = [_read_tags(instances[0]), _read_tags(instances[len(instances) // 2])]
        if any(t.b_value is not None and t.b_value > 0 for t in probe):
            return (
                "other",
                f"multi-direction diffusion ({n_repeats} images per slice); a trace-weighted "
                "DWI is needed",
                (),
            )
        te = probe[0].echo_time_ms
        te_text = "no EchoTime" if te is None else f"TE {te:g} ms"
        return (
            "dsc",
            f"time resolved: {n_positions} slice positions x {n_repeats} time points, {te_text}",
            (),
        )
    diffusion_hint = "DIFFUSION" in first.image_type or bool(
        _DWI_WORDS.search(first.series_description)
    )
    tags = [_read_tags(h) for h in instances] if diffusion_hint or n_repeats > 1 else []
    bs = [t.b_value for t in tags if t.b_value is not None]
    if bs:
        shells = _shells(np.asarray(bs))
        sources = sorted({t.b_source for t in tags if t.b_source})
        listed = ", ".join(f"{b:g}" for b in shells)
        return "dwi", f"diffusion, b = {listed} s/mm² ({', '.join(sources)})", tuple(shells)
    if diffusion_hint:
        return (
            "other",
            "diffusion images without a b-value (DiffusionBValue or Siemens/GE/Philips "
            "private tags)",
            (),
        )
    if n_repeats > 1:
        return (
            "other",
            f"{n_repeats} images per slice: too few time points for perfusion "
            f"(>= {MIN_DSC_FRAMES}) and no b-values",
            (),
        )
    return (
        "other",
        f"{_static_kind(first)} ({n_positions} slices): not used by the stroke analysis",
        (),
    )


def _shells(bs: np.ndarray) -> list[float]:
    """Distinct b-values (rounded), merging values within :data:`B_VALUE_TOLERANCE`."""
    shells: list[float] = []
    for b in np.sort(bs):
        if not shells or b - shells[-1] > B_VALUE_TOLERANCE:
            shells.append(float(round(b)))
    return shells


def assemble_mri(study: StudyInventory) -> MriAcquisition | None:
    """Assemble the DWI, ADC map and DSC perfusion of an MR stroke study.

    Parameters
    ----------
    study : StudyInventory
        From :func:`strokeflow.assemble.series.build_inventory`.

    Returns
    -------
    MriAcquisition or None
        None when the study holds no DWI, ADC or DSC series (every ignored series is
        logged with its reason).

    Raises
    ------
    AssemblyError
        If a recognised series cannot be assembled (unreadable times or pixels).
    """
    roles = classify_mr_series(study)
    for r in roles:
        if r.role == "other":
            log.info("series %s %r ignored: %s", r.series_number, r.description, r.reason)
        else:
            log.info("series %s %r: %s - %s", r.series_number, r.description, r.role, r.reason)
    by_role: dict[str, list[MrSeriesRole]] = defaultdict(list)
    for r in roles:
        by_role[r.role].append(r)
    if not (by_role["dwi"] or by_role["adc"] or by_role["dsc"]):
        return None
    warnings_: list[str] = []
    dwi, dwi_uids = _assemble_dwi(study, by_role["dwi"], warnings_)
    adc, adc_uid = _assemble_adc(study, by_role["adc"], dwi, warnings_)
    pwi = None
    pwi_uids: tuple[str, ...] = ()
    if by_role["dsc"]:
        # Several DSC runs: the one with the most images (a repeat after a failed bolus
        # is usually complete).
        chosen = max(by_role["dsc"], key=lambda r: len(study.instances_of(r.series_uid)))
        if len(by_role["dsc"]) > 1:
            warnings_.append(
                f"{len(by_role['dsc'])} DSC series; series {chosen.series_number} analysed"
            )
        instances = study.instances_of(chosen.series_uid)
        key = Counter(geometry_key(h) for h in instances).most_common(1)[0][0]
        kept = [h for h in instances if geometry_key(h) == key]
        _, acq = assemble_group(study.study_uid, [chosen.series_uid], kept, key, warnings_, None)
        te = _read_tags(kept[0]).echo_time_ms
        pwi = replace(acq.perfusion, echo_time_s=None if te is None else te / 1000.0)
        pwi_uids = (chosen.series_uid,)
    return MriAcquisition(
        dwi=dwi,
        adc=adc,
        pwi=pwi,
        dwi_series_uids=dwi_uids,
        adc_series_uid=adc_uid,
        pwi_series_uids=pwi_uids,
        warnings=tuple(warnings_),
        study_uid=study.study_uid,
    )


def _volume(instances: list[InstanceHeader], label: str) -> tuple[np.ndarray, Geometry, np.ndarray]:
    """Decode images into ``(n, y, x)`` and return them with the slice index of each."""
    z_all = positions_along_normal(instances)
    z_mm, slice_of = cluster_positions(z_all)
    geometry, warning = slice_geometry(instances, slice_of, z_mm, label)
    if warning:
        log.warning(warning)
    first = instances[0]
    pixels = np.empty((len(instances), first.rows, first.columns), dtype=np.float32)
    for i, h in enumerate(instances):
        read_frame(h, pixels[i])
    return pixels, geometry, slice_of


def _assemble_dwi(
    study: StudyInventory, roles: list[MrSeriesRole], warnings_: list[str]
) -> tuple[DiffusionImages | None, tuple[str, ...]]:
    if not roles:
        return None, ()
    instances = [h for r in roles for h in study.instances_of(r.series_uid)]
    key = Counter(geometry_key(h) for h in instances).most_common(1)[0][0]
    kept = [h for h in instances if geometry_key(h) == key]
    if len(kept) < len(instances):
        warnings_.append(
            f"DWI: {len(instances) - len(kept)} of {len(instances)} images on another grid left out"
        )
    label = "DWI series " + " + ".join(r.series_uid for r in roles)
    tags = [_read_tags(h) for h in kept]
    with_b = [(h, t.b_value) for h, t in zip(kept, tags, strict=True) if t.b_value is not None]
    if not with_b:
        raise AssemblyError(f"{label}: no b-value on any image")
    headers = [h for h, _ in with_b]
    pixels, geometry, slice_of = _volume(headers, label)
    nz = int(slice_of.max()) + 1
    bvals = np.array([b for _, b in with_b])
    shells = _shells(bvals)
    by_b: dict[float, np.ndarray] = {}
    for shell in shells:
        sel = np.abs(bvals - shell) <= B_VALUE_TOLERANCE
        present = np.unique(slice_of[sel])
        if present.size < nz:
            warnings_.append(
                f"{label}: b = {shell:g} s/mm² covers {present.size} of {nz} slices; not used"
            )
            continue
        volume = np.empty((nz, *pixels.shape[1:]), dtype=np.float32)
        if np.count_nonzero(sel) == nz:
            # One (trace) image per slice, the usual case: it is the trace-weighted image.
            volume[slice_of[sel]] = pixels[sel]
        else:
            # Trace-weighted image = geometric mean of the images of a shell at each slice
            # (directions, or repeated trace images).
            logs = np.log(np.maximum(pixels[sel], 1e-3))
            for z in range(nz):
                volume[z] = np.exp(logs[slice_of[sel] == z].mean(axis=0))
        by_b[shell] = volume
    if len(by_b) < 2:
        warnings_.append(f"{label}: fewer than two complete b-values; DWI not used")
        return None, tuple(r.series_uid for r in roles)
    return DiffusionImages(by_b, geometry), tuple(r.series_uid for r in roles)


def _assemble_adc(
    study: StudyInventory,
    roles: list[MrSeriesRole],
    dwi: DiffusionImages | None,
    warnings_: list[str],
) -> tuple[ScannerAdc | None, str | None]:
    if not roles:
        return None, None
    chosen = roles[-1]
    instances = study.instances_of(chosen.series_uid)
    pixels, geometry, slice_of = _volume(instances, f"ADC series {chosen.series_uid}")
    nz = int(slice_of.max()) + 1
    volume = np.zeros((nz, *pixels.shape[1:]), dtype=np.float32)
    for i, z in enumerate(slice_of):
        volume[z] = pixels[i]
    if len(roles) > 1:
        warnings_.append(f"{len(roles)} ADC maps; series {chosen.series_number} used")
    return ScannerAdc(volume, geometry), chosen.series_uid
