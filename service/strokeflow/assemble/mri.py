"""Recognise the series of a mixed MR stroke study and assemble DWI, ADC and DSC.

A series is recognised by what it holds, not by one tag (``MrSeriesRole.role``):

* ``"dwi"``: diffusion-weighted images, b > :data:`MIN_DWI_B_S_MM2` s/mm² (DiffusionBValue,
  an enhanced frame's MR Diffusion functional group, or the private tags of Siemens
  ``(0019,xx0C)``, GE ``(0043,xx39)`` and Philips ``(2001,xx03)``) together with evidence
  of a diffusion sequence (ImageType DIFFUSION, DiffusionDirectionality, or the series
  description), so an ASL or field-map series with DiffusionBValue 0 on every image is
  not one. Inside a diffusion series, images without any b-value are the b0 (Canon), and
  b < 1 s/mm² is b = 0 (Philips writes 0.001-0.004). A diffusion series holding only b0
  images is a ``"dwi"`` too, joined to the trace of the same acquisition (same grid) when
  that lacks its b0; otherwise diffusion series are never pooled;
* ``"adc"``: a scanner ADC map (ImageType or description says ADC; not an exponential
  ADC);
* ``"dsc"``: DSC perfusion: the slice positions repeated at least :data:`MIN_DSC_FRAMES`
  times, without diffusion weighting, *and* a first-pass signal drop in brain of at least
  :data:`MIN_BOLUS_DROP` (a bolus): a BOLD fMRI or ASL run has none;
* ``"other"``: everything else (FLAIR, SWI, T1, BOLD, ASL, ...), with the reason.

A non-image object or an image without geometry inside a series is left out of it, with
the reason, never the whole series. Works from the
:class:`~strokeflow.assemble.series.StudyInventory` of
:func:`~strokeflow.assemble.series.build_inventory`; the few tags the header reader does
not keep (b-values, echo time) are read again from the files of MR series only.
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from strokeflow.analysis.diffusion import mr_brain_mask
from strokeflow.analysis.mri import DiffusionImages, MriAcquisition, ScannerAdc
from strokeflow.analysis.volume import Geometry
from strokeflow.assemble.ctp import AssemblyError, assemble_group, slice_geometry
from strokeflow.assemble.files import InstanceHeader, read_frame
from strokeflow.assemble.series import (
    StudyInventory,
    cluster_positions,
    frame_times_s,
    geometry_key,
    positions_along_normal,
    unexpanded_multiframe,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: Fewest repetitions of the slice positions for a DSC perfusion series.
MIN_DSC_FRAMES = 20
#: b-values closer than this (s/mm²) are the same shell.
B_VALUE_TOLERANCE = 10.0
#: Lowest b-value (s/mm²) of a diffusion-weighted image; b0 images and ASL crusher or
#: field-map "b-values" lie below it.
MIN_DWI_B_S_MM2 = 50.0
#: b-values below this (s/mm²) are b = 0 (Philips writes 0.001-0.004 on b0 images).
B0_BELOW_S_MM2 = 1.0
#: Smallest drop of the brain's mean signal below its baseline (over at least two frames)
#: that counts as the first pass of a contrast bolus. A DSC bolus darkens grey matter by
#: 20-40 % and the whole slice (with CSF and white matter) by 10-25 % at its peak; BOLD
#: and ASL fluctuate by 1-3 % and drift by a few percent over a run.
MIN_BOLUS_DROP = 0.08
_ADC_WORDS = re.compile(r"\bADC\b|apparent\s+diff", re.IGNORECASE)
_EXP_ADC = re.compile(r"\b(E|EXP)ADC\b|exponential", re.IGNORECASE)
_DWI_WORDS = re.compile(r"(?<![a-z])(DWI|DTI)(?![a-z])|diff|trace|tensor|dir\d+", re.IGNORECASE)
_ASL_WORDS = re.compile(r"\basl\b|pcasl|pasl|\bcasl|spin.?label", re.IGNORECASE)
_BOLD_WORDS = re.compile(r"bold|fmri|\brest", re.IGNORECASE)
_TENSOR_MAPS = {"FA", "TENSOR", "COLFA", "FA_COLOR", "MD", "TRACE_FA", "EXP", "EADC"}
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
    """What one MR series is for the stroke analysis, and why.

    Attributes
    ----------
    role : {"dwi", "adc", "dsc", "other"}
    reason : str
        In words, e.g. ``"trace b = 1000 s/mm², 12 directions ..."``.
    b_values : tuple of float
        Shells of a diffusion series (s/mm²).
    left_out : tuple of str
        Objects of the series that were left out of it, with the reason.
    n_positions, n_timepoints : int
        Slice positions, and images per position.
    n_directions : int
        Images per slice of the highest b-shell of a diffusion series.
    """

    series_uid: str
    series_number: int | None
    description: str
    role: str  # "dwi" | "adc" | "dsc" | "other"
    reason: str
    b_values: tuple[float, ...] = ()
    left_out: tuple[str, ...] = ()
    n_positions: int = 0
    n_timepoints: int = 1
    n_directions: int = 0

    @property
    def short(self) -> str:
        """What the series is, in a few words (summary page)."""
        if self.role == "dwi" and self.b_values and self.b_values[-1] > MIN_DWI_B_S_MM2:
            shells = "/".join(f"{b:g}" for b in self.b_values)
            dirs = f", {self.n_directions} dirs" if self.n_directions > 1 else ""
            return f"trace b {shells}{dirs}"
        if self.role == "dwi":
            return "b0 only"
        if self.role == "dsc":
            return f"{self.n_timepoints} time points"
        return "scanner map" if self.role == "adc" else self.role


@dataclass(frozen=True)
class _MrTags:
    b_value: float | None
    b_source: str
    echo_time_ms: float | None
    diffusion_sequence: bool  # DiffusionDirectionality, or a Siemens b-value sequence name


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
    from pydicom.multival import MultiValue  # a converted value: pydicom is loaded

    if isinstance(value, list | tuple | MultiValue):
        if not value:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _groups(ds: Dataset) -> set[int]:
    """The element groups present at the top level of ``ds``."""
    # keys(), not the dataset itself: iterating a Dataset converts every element.
    return {int(tag) >> 16 for tag in ds.keys()}  # noqa: SIM118


def b_value_of(ds: Dataset) -> tuple[float | None, str]:
    """The diffusion b-value of one image and the tag it came from.

    Raises
    ------
    Nothing: an absent or unreadable tag gives ``(None, "")``.
    """
    if "DiffusionBValue" in ds:
        b = _number(ds.DiffusionBValue)
        if b is not None:
            return (0.0 if b < B0_BELOW_S_MM2 else b), "DiffusionBValue"
    # A private lookup scans the group's creators; skip the groups a file does not have
    # (most files have none of them), which is most of the cost of reading the tags.
    groups = _groups(ds)
    for group, offset, creator, name in _PRIVATE_B_TAGS:
        if group not in groups:
            continue
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
        return (0.0 if b < B0_BELOW_S_MM2 else b), name
    return None, ""


@lru_cache(maxsize=8192)
def _file_tags(path: Path, mtime_ns: int, size: int) -> _MrTags:
    """Tags of one file (cached: a mosaic or a multi-frame file holds many images)."""
    import pydicom  # here, so that a study without MR series never imports it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    b, source = b_value_of(ds)
    te = _number(ds.get("EchoTime"))
    directionality = str(ds.get("DiffusionDirectionality", "") or "").upper()
    if not directionality and ds.get("MRDiffusionSequence"):
        # Classic Philips images carry the enhanced MR Diffusion macro as a sequence.
        item = ds.MRDiffusionSequence[0]
        directionality = str(item.get("DiffusionDirectionality", "") or "").upper()
    sequence = str(ds.get("SequenceName", "") or "")
    evidence = directionality not in ("", "NONE") or bool(re.search(r"_?b\d+", sequence))
    if 0x2001 in _groups(ds):
        try:
            # Philips (2001,xx04) Diffusion Direction: I(sotropic), O(blique), R/A/F or P.
            philips = ds.get_private_item(0x2001, 0x04, "Philips Imaging DD 001").value
            evidence |= str(philips).strip(" \0") not in ("", "NONE")
        except (KeyError, ValueError):
            pass
    return _MrTags(b, source, te, evidence)


def _read_tags(h: InstanceHeader) -> _MrTags:
    stat = h.path.stat()
    tags = _file_tags(h.path, stat.st_mtime_ns, stat.st_size)
    if h.b_value is not None or h.echo_time_ms is not None:
        # An enhanced frame carries its own b-value and echo time (functional groups).
        b = tags.b_value if h.b_value is None else h.b_value
        source = "MR Diffusion functional group" if h.b_value is not None else tags.b_source
        te = tags.echo_time_ms if h.echo_time_ms is None else h.echo_time_ms
        return _MrTags(b, source, te, tags.diffusion_sequence)
    return tags


def _static_kind(first: InstanceHeader) -> str:
    text = " ".join([first.series_description, *first.image_type])
    for pattern, name in _STRUCTURAL:
        if pattern.search(text):
            return name
    return "static MR"


def split_images(
    instances: list[InstanceHeader],
) -> tuple[list[InstanceHeader], tuple[str, ...]]:
    """The images of a series that have pixels and geometry, and what was left out.

    A vendor's private non-image object (or a presentation state, a report) inside an
    image series must cost only itself, never the series.

    Returns
    -------
    images : list of InstanceHeader
    left_out : tuple of str
        One line per kind of object left out, with the count and the reason.
    """
    images = []
    left: Counter[str] = Counter()
    for h in instances:
        if h.rows == 0 or h.columns == 0:
            left[f"no pixel data (SOP class {h.sop_class_uid or 'unknown'})"] += 1
        elif unexpanded_multiframe(h):
            left["multi-frame without per-frame functional groups"] += 1
        elif h.position_mm is None or h.orientation is None or h.pixel_spacing_mm is None:
            left[
                "no ImagePositionPatient/ImageOrientationPatient/PixelSpacing "
                f"(SOP class {h.sop_class_uid or 'unknown'})"
            ] += 1
        else:
            images.append(h)
    lines = tuple(
        f"{n} object{'s' if n > 1 else ''} left out: {why}" for why, n in sorted(left.items())
    )
    return images, lines


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
        images, left_out = split_images(study.instances_of(summary.series_uid))
        role, reason, bs, n_positions, n_times = _classify(images)
        if left_out:
            reason += "; " + "; ".join(left_out)
        roles.append(
            MrSeriesRole(
                summary.series_uid,
                summary.series_number,
                summary.description,
                role,
                reason,
                bs,
                left_out,
                n_positions,
                n_times,
                _directions(images, bs) if role == "dwi" else 0,
            )
        )
    return roles


def record_mr_roles(study: StudyInventory, roles: list[MrSeriesRole]) -> None:
    """Write the MR roles into the study's series summaries (kind, reason, positions).

    The CT recogniser of :func:`~strokeflow.assemble.series.build_inventory` knows only
    that an MR series is not CT; what results.json and the summary report for an MR
    series is what it is for the stroke analysis.
    """
    by_uid = {r.series_uid: r for r in roles}
    for i, summary in enumerate(study.series):
        role = by_uid.get(summary.series_uid)
        if role is not None:
            study.series[i] = replace(
                summary,
                kind=role.role,
                reason=role.reason,
                n_positions=role.n_positions,
                n_timepoints=role.n_timepoints,
            )


def _diffusion_evidence(images: list[InstanceHeader], tags: list[_MrTags]) -> str:
    """Why a series is a diffusion acquisition ("" when nothing says so)."""
    first = images[0]
    if "DIFFUSION" in first.image_type:
        return "ImageType DIFFUSION"
    if any(t.diffusion_sequence for t in tags):
        return "diffusion sequence"
    if _DWI_WORDS.search(first.series_description):
        return f"description '{first.series_description}'"
    return ""


def _classify(
    images: list[InstanceHeader],
) -> tuple[str, str, tuple[float, ...], int, int]:
    """(role, reason, b-value shells, slice positions, images per position)."""
    if not images:
        return "other", "no image with pixel data and geometry", (), 0, 1
    first = images[0]
    text = " ".join([first.series_description, *first.image_type])
    if "ADC" in first.image_type or _ADC_WORDS.search(first.series_description):
        if _EXP_ADC.search(text) or "EADC" in first.image_type:
            return "other", "exponential ADC (eADC) map; the ADC map itself is used", (), 0, 1
        kind = "/".join(first.image_type) or first.series_description
        return "adc", f"ADC map ({kind})", (), 0, 1
    if _TENSOR_MAPS & set(first.image_type):
        return "other", "diffusion tensor derived map (FA/tensor)", (), 0, 1
    try:
        _, index = cluster_positions(positions_along_normal(images))
    except ValueError as exc:
        return "other", f"unusable geometry ({exc})", (), 0, 1
    counts = np.bincount(index)
    n_positions, n_repeats = int(counts.size), int(counts.max())
    probe = [_read_tags(images[i]) for i in sorted({0, len(images) // 2, len(images) - 1})]
    diffusion_like = any(t.b_value is not None for t in probe) or _diffusion_evidence(images, probe)
    tags = [_read_tags(h) for h in images] if n_repeats > 1 or diffusion_like else probe
    evidence = _diffusion_evidence(images, tags)
    high = [t.b_value for t in tags if t.b_value is not None and t.b_value > MIN_DWI_B_S_MM2]
    if evidence and high:
        return _classify_diffusion(images, tags, evidence, n_positions, n_repeats)
    if high:
        return (
            "other",
            f"b-values up to {max(high):g} s/mm² but no sign of a diffusion sequence "
            "(ImageType, DiffusionDirectionality, description)",
            (),
            n_positions,
            n_repeats,
        )
    # Without diffusion weighting, only what the scanner calls the series makes it a
    # diffusion b0 (Philips writes DiffusionBValue 0, even a direction, on ASL and DSC).
    named = evidence.startswith(("ImageType", "description"))
    if named and n_repeats < MIN_DSC_FRAMES:
        if any(t.b_value is not None for t in tags):
            return _classify_diffusion(images, tags, evidence, n_positions, n_repeats)
        return (
            "other",
            "diffusion images without a b-value (DiffusionBValue or Siemens/GE/Philips "
            "private tags)",
            (),
            n_positions,
            n_repeats,
        )
    if n_repeats >= MIN_DSC_FRAMES:
        return _classify_time_series(images, index, probe, n_positions, n_repeats)
    if n_repeats > 1:
        return (
            "other",
            f"{n_repeats} images per slice: too few time points for perfusion "
            f"(>= {MIN_DSC_FRAMES}) and no diffusion weighting",
            (),
            n_positions,
            n_repeats,
        )
    return (
        "other",
        f"{_static_kind(first)} ({n_positions} slices): not used by the stroke analysis",
        (),
        n_positions,
        1,
    )


def _classify_diffusion(
    images: list[InstanceHeader],
    tags: list[_MrTags],
    evidence: str,
    n_positions: int,
    n_repeats: int,
) -> tuple[str, str, tuple[float, ...], int, int]:
    bs = _b_values(tags)
    if bs is None:
        return (
            "other",
            f"diffusion ({evidence}) with images lacking a b-value and no diffusion weighting",
            (),
            n_positions,
            n_repeats,
        )
    shells = _shells(bs)
    sources = sorted({t.b_source for t in tags if t.b_source})
    n_untagged = sum(t.b_value is None for t in tags)
    if n_untagged:
        sources.append(f"{n_untagged} untagged images taken as b = 0")
    tagged = f"({', '.join(sources)}; {evidence})"
    if shells[-1] <= MIN_DWI_B_S_MM2:
        return (
            "dwi",
            f"diffusion b0 only, b = {', '.join(f'{b:g}' for b in shells)} s/mm², "
            f"{n_positions} slices {tagged}: the b0 of a trace series on the same grid",
            tuple(shells),
            n_positions,
            n_repeats,
        )
    high = shells[-1]
    n_dirs = _directions(images, tuple(shells))
    made = (
        f"trace b = {high:g} s/mm², {n_dirs} directions combined (geometric mean)"
        if n_dirs > 1
        else f"trace b = {high:g} s/mm²"
    )
    listed = ", ".join(f"{b:g}" for b in shells)
    reason = f"{made}; b = {listed} s/mm², {n_positions} slices {tagged}"
    return "dwi", reason, tuple(shells), n_positions, n_repeats


def _directions(images: list[InstanceHeader], shells: tuple[float, ...]) -> int:
    """Images per slice of the highest b-shell (1: a scanner trace image)."""
    if not shells or shells[-1] <= MIN_DWI_B_S_MM2:
        return 0
    bs = _b_values([_read_tags(h) for h in images])
    if bs is None:
        return 0
    _, index = cluster_positions(positions_along_normal(images))
    per_slice = np.bincount(index[np.abs(bs - shells[-1]) <= B_VALUE_TOLERANCE])
    return int(np.median(per_slice[per_slice > 0]))


def _b_values(tags: list[_MrTags]) -> np.ndarray | None:
    """b-value of every image of a diffusion series, untagged ones as b = 0 (Canon).

    None when untagged images are not joined by diffusion-weighted ones (then nothing
    says what they are).
    """
    known = [t.b_value for t in tags if t.b_value is not None]
    if not known:
        return None
    if len(known) < len(tags) and max(known) <= MIN_DWI_B_S_MM2:
        return None
    return np.array([0.0 if t.b_value is None else t.b_value for t in tags])


def _classify_time_series(
    images: list[InstanceHeader],
    index: np.ndarray,
    probe: list[_MrTags],
    n_positions: int,
    n_repeats: int,
) -> tuple[str, str, tuple[float, ...], int, int]:
    first = images[0]
    te = probe[0].echo_time_ms
    te_text = "no EchoTime" if te is None else f"TE {te:g} ms"
    try:
        drop, at = first_pass_drop(images, index)
    except (ValueError, AssemblyError) as exc:
        return "other", f"time series whose signal cannot be read ({exc})", (), n_positions, 1
    shape = f"{n_positions} slice positions x {n_repeats} time points"
    if drop >= MIN_BOLUS_DROP:
        return (
            "dsc",
            f"time resolved: {shape}, {te_text}; first-pass bolus: brain signal drops "
            f"{100 * drop:.0f} % at frame {at + 1}",
            (),
            n_positions,
            n_repeats,
        )
    text = " ".join([first.series_description, *first.image_type])
    what = (
        "ASL"
        if _ASL_WORDS.search(text)
        else "resting-state BOLD"
        if _BOLD_WORDS.search(text)
        else "time series"
    )
    return (
        "other",
        f"{what}, no bolus: {shape}, brain signal drops at most {100 * drop:.0f} % "
        f"(a DSC first pass drops >= {100 * MIN_BOLUS_DROP:.0f} %)",
        (),
        n_positions,
        n_repeats,
    )


def first_pass_drop(images: list[InstanceHeader], index: np.ndarray) -> tuple[float, int]:
    """Largest drop of the brain's mean signal below its baseline, on the middle slice.

    The baseline is the median of frames 2-6 (the first is before the T1 steady state);
    the brain is the largest bright component of the slice's mean image; the curve is
    median-filtered over 3 frames, so a drop must last two frames.

    Returns
    -------
    drop : float
        ``1 - min / baseline`` over the frames after the baseline (0 when none is lower).
    frame : int
        Frame of the minimum.

    Raises
    ------
    ValueError
        If the pixels cannot be read or the slice has no bright tissue.
    """
    counts = np.bincount(index)
    full = np.flatnonzero(counts == counts.max())
    z = int(full[full.size // 2])
    members = [h for h, i in zip(images, index, strict=True) if i == z]
    try:
        times, _ = frame_times_s(members, np.zeros(len(members), dtype=np.intp))
        order = np.argsort(times, kind="stable")
    except ValueError:
        order = np.argsort([h.instance_number or 0 for h in members], kind="stable")
    frames = np.empty((len(members), members[0].rows, members[0].columns), dtype=np.float32)
    for k, i in enumerate(order):
        read_frame(members[int(i)], frames[k])
    mean = frames.mean(axis=0)
    pixel_mm = members[0].pixel_spacing_mm[0] if members[0].pixel_spacing_mm else 2.0
    brain = mr_brain_mask(mean[None], pixel_mm)[0]
    if np.count_nonzero(brain) < 20:
        raise ValueError("no tissue on the middle slice")
    # A bolus darkens the brain for several frames; a 3-frame median ignores the single
    # frame a movement or a spike darkens.
    curve = ndimage.median_filter(frames[:, brain].mean(axis=1), size=3, mode="nearest")
    baseline = float(np.median(curve[1:6]))
    after = curve[2:]
    k = int(np.argmin(after))
    drop = max(0.0, 1.0 - float(after[k]) / baseline) if baseline > 0 else 0.0
    return drop, k + 2


def _shells(bs: np.ndarray) -> list[float]:
    """Distinct b-values (rounded), merging values within :data:`B_VALUE_TOLERANCE`."""
    shells: list[float] = []
    for b in np.sort(bs):
        if not shells or b - shells[-1] > B_VALUE_TOLERANCE:
            shells.append(float(round(b)))
    return shells


def assemble_mri(
    study: StudyInventory, roles: list[MrSeriesRole] | None = None
) -> MriAcquisition | None:
    """Assemble the DWI, ADC map and DSC perfusion of an MR stroke study.

    Parameters
    ----------
    study : StudyInventory
        From :func:`strokeflow.assemble.series.build_inventory`.
    roles : list of MrSeriesRole, optional
        From :func:`classify_mr_series` (computed when omitted).

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
    if roles is None:
        roles = classify_mr_series(study)
    for r in roles:
        if r.role == "other":
            log.info("series %s %r ignored: %s", r.series_number, r.description, r.reason)
        else:
            log.info("series %s %r: %s - %s", r.series_number, r.description, r.role, r.reason)
    by_role: dict[str, list[MrSeriesRole]] = defaultdict(list)
    for r in roles:
        by_role[r.role].append(r)
    warnings_: list[str] = [
        f"series {r.series_number} {r.description!r}: {line}"
        for r in roles
        if r.role != "other"
        for line in r.left_out
    ]
    dwi, dwi_uids = _assemble_dwi(study, by_role["dwi"], warnings_)
    if not (dwi or by_role["adc"] or by_role["dsc"]):
        return None
    adc, adc_uid = _assemble_adc(study, by_role["adc"], warnings_)
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
        instances, _ = split_images(study.instances_of(chosen.series_uid))
        key = Counter(geometry_key(h) for h in instances).most_common(1)[0][0]
        kept = [h for h in instances if geometry_key(h) == key]
        _, acq = assemble_group(study.study_uid, [chosen.series_uid], kept, key, warnings_, None)
        te = _read_tags(kept[0]).echo_time_ms
        pwi = replace(acq.perfusion, echo_time_s=None if te is None else te / 1000.0)
        pwi_uids = (chosen.series_uid,)
    used = {*dwi_uids, *pwi_uids, *([adc_uid] if adc_uid else [])}
    series_used = tuple(
        (f"{r.role.upper()} series {r.series_number}", r.short)
        for r in roles
        if r.series_uid in used
    )
    return MriAcquisition(
        dwi=dwi,
        adc=adc,
        pwi=pwi,
        dwi_series_uids=dwi_uids,
        adc_series_uid=adc_uid,
        pwi_series_uids=pwi_uids,
        warnings=tuple(warnings_),
        study_uid=study.study_uid,
        series_used=series_used,
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
    """The trace-weighted DWI of one diffusion acquisition (never several pooled).

    The diffusion-weighted series closest to the usual protocol is used (a b0 and a
    high b-value near 1000 s/mm², most slices); a b0-only series of the same grid is
    joined to it when it has no b0 of its own (Siemens XA writes them apart).
    """
    series = []
    for r in roles:
        images, _ = split_images(study.instances_of(r.series_uid))
        if not images:
            continue
        key = Counter(geometry_key(h) for h in images).most_common(1)[0][0]
        kept = [h for h in images if geometry_key(h) == key]
        if len(kept) < len(images):
            warnings_.append(
                f"DWI series {r.series_number}: {len(images) - len(kept)} of {len(images)} "
                "images on another grid left out"
            )
        series.append((r, key, kept))
    weighted = [s for s in series if s[0].b_values and s[0].b_values[-1] > MIN_DWI_B_S_MM2]
    if not weighted:
        return None, ()

    def score(item: tuple[MrSeriesRole, tuple[object, ...], list[InstanceHeader]]) -> tuple:
        r = item[0]
        low, high = 800.0, 1500.0
        usual = low <= r.b_values[-1] <= high
        return (r.b_values[0] <= MIN_DWI_B_S_MM2, usual, -abs(r.b_values[-1] - 1000.0),
                r.n_positions, len(item[2]))  # fmt: skip

    main = max(weighted, key=score)
    chosen = [main]
    if main[0].b_values[0] > MIN_DWI_B_S_MM2:
        b0_only = [s for s in series if s[0].b_values[-1] <= MIN_DWI_B_S_MM2 and s[1] == main[1]]
        if b0_only:
            chosen.append(max(b0_only, key=lambda s: len(s[2])))
    for r, _, _ in series:
        if all(r is not c[0] for c in chosen):
            warnings_.append(
                f"DWI series {r.series_number} {r.description!r} not used: a separate "
                f"diffusion acquisition (series {main[0].series_number} analysed)"
            )
    uids = tuple(c[0].series_uid for c in chosen)
    label = "DWI series " + " + ".join(uids)
    headers = [h for c in chosen for h in c[2]]
    per_series = [_b_values([_read_tags(h) for h in c[2]]) for c in chosen]
    if any(b is None for b in per_series):
        raise AssemblyError(f"{label}: images without a b-value")
    bvals = np.concatenate([b for b in per_series if b is not None])
    if bvals.size != len(headers):
        raise AssemblyError(f"{label}: images without a b-value")
    pixels, geometry, slice_of = _volume(headers, label)
    nz = int(slice_of.max()) + 1
    by_b: dict[float, np.ndarray] = {}
    for shell in _shells(bvals):
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
            # Isotropic trace = geometric mean of the images of a shell at each slice
            # (the directions of a DTI, or repeated trace images).
            logs = np.log(np.maximum(pixels[sel], 1e-3))
            for z in range(nz):
                volume[z] = np.exp(logs[slice_of[sel] == z].mean(axis=0))
        by_b[shell] = volume
    if not any(b > MIN_DWI_B_S_MM2 for b in by_b):
        warnings_.append(f"{label}: no complete diffusion-weighted b-value; DWI not used")
        return None, uids
    return DiffusionImages(by_b, geometry), uids


def _assemble_adc(
    study: StudyInventory, roles: list[MrSeriesRole], warnings_: list[str]
) -> tuple[ScannerAdc | None, str | None]:
    if not roles:
        return None, None
    chosen = roles[-1]
    instances, _ = split_images(study.instances_of(chosen.series_uid))
    pixels, geometry, slice_of = _volume(instances, f"ADC series {chosen.series_uid}")
    nz = int(slice_of.max()) + 1
    volume = np.zeros((nz, *pixels.shape[1:]), dtype=np.float32)
    for i, z in enumerate(slice_of):
        volume[z] = pixels[i]
    if len(roles) > 1:
        warnings_.append(f"{len(roles)} ADC maps; series {chosen.series_number} used")
    return ScannerAdc(volume, geometry), chosen.series_uid
