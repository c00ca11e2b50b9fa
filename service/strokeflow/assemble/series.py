"""Group instances into studies and series, recognise what each series is, and time them.

A series is a CT perfusion (``"ctp"``) when it is time resolved: the same slice
positions (ImagePositionPatient projected on the slice normal) come back at least
:data:`MIN_CTP_FRAMES` times. Static CT series are a CTA when a contrast agent is
recorded or the description says so, otherwise an NCCT; localizers are recognised
from ImageType.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from strokeflow.assemble.files import InstanceHeader

#: Fewest time points for a time-resolved series to count as perfusion (a multiphase
#: CTA has 2-4 phases; a perfusion has tens of frames).
MIN_CTP_FRAMES = 5
#: Slice positions closer than this along the normal are the same slice.
POSITION_TOLERANCE_MM = 0.01
#: Enhanced (and legacy converted enhanced) CT and MR image storage: multi-frame IODs
#: whose frames are placed by per-frame functional groups.
ENHANCED_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2.2",
        "1.2.840.10008.5.1.4.1.1.4.1",
        "1.2.840.10008.5.1.4.1.1.4.4",
    }
)
_CTA_WORDS = re.compile(r"\b(CTA|ANGIO\w*|ARTERIAL)\b", re.IGNORECASE)
_DAY_S = 86400.0


@dataclass(frozen=True)
class SeriesSummary:
    """What a series is, in one line a person can read."""

    series_uid: str
    series_number: int | None
    description: str
    modality: str
    n_instances: int
    n_positions: int
    kind: str  # "ctp" | "ncct" | "cta" | "localizer" | "other"
    reason: str
    n_timepoints: int = 1


@dataclass(frozen=True)
class StudyInventory:
    """Every series of one study, and every instance read from it."""

    study_uid: str
    series: list[SeriesSummary]
    instances: list[InstanceHeader]

    def instances_of(self, series_uid: str) -> list[InstanceHeader]:
        """The instances of one series."""
        return [h for h in self.instances if h.series_uid == series_uid]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal ``cross(row, col)`` of an ImageOrientationPatient."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(orientation)} has parallel axes")
    return normal / norm


def cluster_positions(
    values_mm: np.ndarray, tolerance_mm: float = POSITION_TOLERANCE_MM
) -> tuple[np.ndarray, np.ndarray]:
    """Merge positions closer than ``tolerance_mm``.

    Returns
    -------
    centres_mm : numpy.ndarray
        Sorted distinct positions (mean of each cluster).
    index : numpy.ndarray
        For each input value, the index of its cluster in ``centres_mm``.
    """
    values = np.asarray(values_mm, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    new_cluster = np.diff(values[order]) > tolerance_mm
    labels_sorted = np.concatenate([[0], np.cumsum(new_cluster)]).astype(np.intp)
    index = np.empty(values.size, dtype=np.intp)
    index[order] = labels_sorted
    n = int(labels_sorted[-1]) + 1 if values.size else 0
    centres = np.bincount(index, weights=values, minlength=n) / np.maximum(
        np.bincount(index, minlength=n), 1
    )
    return centres, index


def _orientation_key(h: InstanceHeader) -> tuple[float, ...] | None:
    return None if h.orientation is None else tuple(round(v, 3) for v in h.orientation)


def geometry_key(h: InstanceHeader) -> tuple[object, ...]:
    """What must be equal for two instances to belong to one acquisition."""
    spacing = None if h.pixel_spacing_mm is None else tuple(round(v, 3) for v in h.pixel_spacing_mm)
    thickness = None if h.slice_thickness_mm is None else round(h.slice_thickness_mm, 2)
    kvp = None if h.kvp is None else round(h.kvp, 1)
    return (
        h.frame_of_reference_uid,
        _orientation_key(h),
        h.rows,
        h.columns,
        spacing,
        thickness,
        kvp,
    )


def describe_key(key: tuple[object, ...]) -> str:
    """A geometry key in words, for messages."""
    names = (
        "frame of reference",
        "orientation",
        "rows",
        "columns",
        "pixel spacing",
        "thickness",
        "kVp",
    )
    return ", ".join(f"{n} {v}" for n, v in zip(names, key, strict=True))


def positions_along_normal(headers: Sequence[InstanceHeader]) -> np.ndarray:
    """ImagePositionPatient projected on the slice normal of the first instance, in mm."""
    first = headers[0].orientation
    if first is None:
        raise ValueError("no ImageOrientationPatient")
    normal = slice_normal(first)
    positions = np.array([h.position_mm for h in headers], dtype=np.float64)
    if positions.ndim != 2:
        raise ValueError("an image without ImagePositionPatient")
    return positions @ normal


def unexpanded_multiframe(h: InstanceHeader) -> bool:
    """A multi-frame object whose frames could not be read as images of their own.

    Enhanced files arrive as one header per frame (:mod:`strokeflow.assemble.files`);
    what is left is a multi-frame object without per-frame functional groups (US, NM),
    or one claiming an enhanced class without them.
    """
    return h.frame_index is None and (
        h.number_of_frames > 1 or h.sop_class_uid in ENHANCED_SOP_CLASSES
    )


def _classify(instances: list[InstanceHeader]) -> tuple[str, str, int, int]:
    """Return (kind, reason, n_positions, n_timepoints) for one series."""
    first = instances[0]
    if any(h.rows == 0 for h in instances):
        return "other", f"no image data (modality {first.modality or 'unknown'})", 0, 1
    if any(unexpanded_multiframe(h) for h in instances):
        return (
            "other",
            f"multi-frame {first.modality or 'image'} without per-frame functional groups",
            1,
            1,
        )
    if first.modality != "CT":
        return "other", f"modality {first.modality or 'unknown'} is not CT", 1, 1
    if any("LOCALIZER" in h.image_type or "SCOUT" in h.image_type for h in instances):
        return "localizer", "ImageType LOCALIZER", 1, 1
    if any(h.position_mm is None or h.orientation is None for h in instances):
        return "other", "no ImagePositionPatient/ImageOrientationPatient", 1, 1
    # Use the dominant orientation: a stray reformat must not hide a perfusion series.
    main_orientation = Counter(_orientation_key(h) for h in instances).most_common(1)[0][0]
    same = [h for h in instances if _orientation_key(h) == main_orientation]
    _, index = cluster_positions(positions_along_normal(same))
    counts = np.bincount(index)
    n_positions, n_times = int(counts.size), int(counts.max())
    if n_times >= MIN_CTP_FRAMES:
        return (
            "ctp",
            f"time resolved: {n_positions} slice positions x up to {n_times} time points",
            n_positions,
            n_times,
        )
    if n_times > 1:
        reason = (
            f"only {n_times} time points per slice (multiphase CTA?); "
            f"perfusion needs >= {MIN_CTP_FRAMES}"
        )
        return "other", reason, n_positions, n_times
    if n_positions < 2:
        return "other", "a single CT image", n_positions, 1
    if first.image_type[:1] == ("DERIVED",):
        return "other", f"derived images (ImageType {'/'.join(first.image_type)})", n_positions, 1
    if any(h.contrast_agent for h in instances):
        return (
            "cta",
            f"static volume, {n_positions} slices, contrast agent recorded",
            n_positions,
            1,
        )
    if _CTA_WORDS.search(first.series_description):
        return (
            "cta",
            f"static volume, {n_positions} slices, description '{first.series_description}'",
            n_positions,
            1,
        )
    return (
        "ncct",
        f"static volume, {n_positions} slices, no contrast agent recorded",
        n_positions,
        1,
    )


def build_inventory(headers: Sequence[InstanceHeader]) -> list[StudyInventory]:
    """Group headers by study and series and classify every series.

    Parameters
    ----------
    headers : sequence of InstanceHeader
        From :func:`strokeflow.assemble.files.scan_paths`, in any order.

    Returns
    -------
    list of StudyInventory
        One per study, series sorted by SeriesNumber.
    """
    studies: dict[str, dict[str, list[InstanceHeader]]] = defaultdict(lambda: defaultdict(list))
    for h in headers:
        studies[h.study_uid][h.series_uid].append(h)
    inventories = []
    for study_uid, series in studies.items():
        summaries = []
        for series_uid, instances in series.items():
            kind, reason, n_positions, n_times = _classify(instances)
            first = instances[0]
            summaries.append(
                SeriesSummary(
                    series_uid=series_uid,
                    series_number=first.series_number,
                    description=first.series_description,
                    modality=first.modality,
                    n_instances=len(instances),
                    n_positions=n_positions,
                    kind=kind,
                    reason=reason,
                    n_timepoints=n_times,
                )
            )
        summaries.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
        instances_all = [h for s in series.values() for h in s]
        inventories.append(StudyInventory(study_uid, summaries, instances_all))
    return inventories


# --- time -----------------------------------------------------------------------------


def parse_tm_s(value: str) -> float | None:
    """DICOM TM (``HHMMSS.FFFFFF``, ``HHMM``, or ACR-NEMA ``HH:MM:SS``) as seconds of day."""
    text = value.strip().replace(":", "")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return None
    hours = int(whole[0:2])
    minutes = int(whole[2:4]) if len(whole) >= 4 else 0
    seconds = int(whole[4:6]) if len(whole) >= 6 else 0
    return hours * 3600.0 + minutes * 60.0 + seconds + (float("0." + fraction) if fraction else 0.0)


def parse_da_s(value: str) -> float | None:
    """DICOM DA (``YYYYMMDD`` or ``YYYY.MM.DD``) as seconds since year 1."""
    text = value.strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])).toordinal() * _DAY_S
    except ValueError:
        return None


def parse_dt_s(value: str) -> float | None:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``) as seconds since year 1 (offset ignored).

    The UTC offset is ignored on purpose: all images of one acquisition share it.
    """
    text = re.split(r"[+-]", value.strip(), maxsplit=1)[0]
    if len(text) < 8:
        return None
    day = parse_da_s(text[:8])
    if day is None:
        return None
    clock = parse_tm_s(text[8:]) if len(text) > 8 else 0.0
    return None if clock is None else day + clock


def _source_values(h: InstanceHeader, source: str) -> float | None:
    if source == "AcquisitionDateTime":
        return parse_dt_s(h.acquisition_datetime) if h.acquisition_datetime else None
    if source in ("AcquisitionTime", "ContentTime"):
        clock_text, date_text = (
            (h.acquisition_time, h.acquisition_date)
            if source == "AcquisitionTime"
            else (h.content_time, h.content_date)
        )
        clock = parse_tm_s(clock_text)
        if clock is None:
            return None
        day = parse_da_s(date_text) if date_text else None
        return clock + (day if day is not None else 0.0)
    if source == "TemporalPositionIdentifier":
        if h.temporal_position is None or not h.temporal_resolution_ms:
            return None
        return (h.temporal_position - 1) * h.temporal_resolution_ms / 1000.0
    raise ValueError(f"unknown time source {source}")


TIME_SOURCES = (
    "AcquisitionDateTime",
    "AcquisitionTime",
    "ContentTime",
    "TemporalPositionIdentifier",
)


def unwrap_midnight(times_s: np.ndarray) -> np.ndarray:
    """Add a day to the times after midnight when the clock (or a stale date) wrapped.

    An acquisition lasts minutes, so a spread of more than 12 h means a wrap.
    """
    t = np.asarray(times_s, dtype=np.float64).copy()
    if t.size and t.max() - t.min() > _DAY_S / 2:
        t[t < t.max() - _DAY_S / 2] += _DAY_S
    return t


def frame_times_s(
    headers: Sequence[InstanceHeader], slice_index: np.ndarray
) -> tuple[np.ndarray, str]:
    """Absolute acquisition time of every instance, from the best tag the vendor filled.

    A source is used only if every instance has it and it tells apart the repeated
    images of every slice (some vendors write the series start in AcquisitionTime).

    Parameters
    ----------
    headers : sequence of InstanceHeader
    slice_index : numpy.ndarray
        Slice (position cluster) of each header.

    Returns
    -------
    times_s : numpy.ndarray
        Seconds on an arbitrary but common origin.
    source : str
        The tag used.

    Raises
    ------
    ValueError
        If no tag gives distinct times; the message lists what was tried.
    """
    tried = []
    for source in TIME_SOURCES:
        values = [_source_values(h, source) for h in headers]
        n_missing = sum(v is None for v in values)
        if n_missing:
            tried.append(f"{source} absent in {n_missing} of {len(values)}")
            continue
        times = unwrap_midnight(np.array(values, dtype=np.float64))
        # Distinct per slice: sort by (slice, time) and look for repeats within a slice.
        order = np.lexsort((times, slice_index))
        same_slice = np.diff(slice_index[order]) == 0
        repeated = same_slice & (np.diff(times[order]) <= 1e-4)
        if repeated.sum() > 0.5 * same_slice.sum():
            tried.append(f"{source} is the same for the images of a slice")
            continue
        return times, source
    raise ValueError("no usable frame times (" + "; ".join(tried) + ")")
