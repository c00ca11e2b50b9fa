"""Group instances into studies and series, recognise what each series is, and time them.

A series is a CT perfusion (``"ctp"``) when it is time resolved: the same slice
positions (ImagePositionPatient projected on the slice normal) come back at least
:data:`MIN_CTP_FRAMES` times. Series of one study that hold one or a few time points
each, with the same acquisition geometry and slice positions, close in time, are one
perfusion exported one series per time point (dynamic-volume scanners, PACS exports):
they are all ``"ctp"`` when together they hold :data:`MIN_CTP_FRAMES` time points.
Static CT series are a CTA when a contrast agent is recorded or the description says
so, otherwise an NCCT; localizers are recognised from ImageType. A gantry tilt (slices
stacked obliquely to their normal) is named in the reason.
"""

from __future__ import annotations

import dataclasses
import itertools
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
#: Consecutive time points of a perfusion exported one series per time point are at most
#: this far apart: sparse tails sample every 3-5 s, while an NCCT precedes a CTA or a
#: perfusion by minutes and multiphase CTA phases come in threes.
MAX_TIME_POINT_GAP_S = 15.0
#: A stacking direction further than this from the slice normal is a gantry tilt.
MIN_TILT_DEG = 0.5
_NUMBERING = re.compile(r"[\d.:,;_#()\[\]/-]+")
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
    #: Every series of the perfusion this one is a part of, in time order, when the
    #: scanner exported it one series per time point (empty otherwise).
    merged_series_uids: tuple[str, ...] = ()


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


def tilt_deg(headers: Sequence[InstanceHeader]) -> float:
    """Angle between the slice normal and the direction the slices are stacked along.

    A gantry tilt leaves the images square but moves each slice along the table axis,
    so the line through the slice positions leaves the normal by the tilt angle (a
    sheared grid). Zero for fewer than two distinct positions.

    Parameters
    ----------
    headers : sequence of InstanceHeader
        Images of one orientation, with ImagePositionPatient.

    Returns
    -------
    float
        Degrees, 0-90.
    """
    z = positions_along_normal(headers)
    if z.size < 2 or float(z.max() - z.min()) <= POSITION_TOLERANCE_MM:
        return 0.0
    low = np.asarray(headers[int(np.argmin(z))].position_mm, dtype=np.float64)
    high = np.asarray(headers[int(np.argmax(z))].position_mm, dtype=np.float64)
    direction = (high - low) / np.linalg.norm(high - low)
    assert headers[0].orientation is not None  # positions_along_normal checked it
    cosine = float(np.clip(direction @ slice_normal(headers[0].orientation), -1.0, 1.0))
    return float(np.degrees(np.arccos(abs(cosine))))


def _geometry_note(headers: Sequence[InstanceHeader], z_mm: np.ndarray) -> str:
    """``"; gantry tilt 18.5 deg (sheared grid)"`` and uneven gaps, or ``""``."""
    notes = []
    tilt = tilt_deg(headers)
    if tilt > MIN_TILT_DEG:
        notes.append(f"gantry tilt {tilt:.1f} deg (sheared grid)")
    if z_mm.size > 2:
        gaps = np.diff(z_mm)
        if float(gaps.max() - gaps.min()) > 0.05 * float(np.median(gaps)):
            notes.append(f"slice gaps {gaps.min():.2f}-{gaps.max():.2f} mm")
    return "".join(f"; {n}" for n in notes)


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
    centres, index = cluster_positions(positions_along_normal(same))
    counts = np.bincount(index)
    n_positions, n_times = int(counts.size), int(counts.max())
    note = _geometry_note(same, centres)
    if n_times >= MIN_CTP_FRAMES:
        return (
            "ctp",
            f"time resolved: {n_positions} slice positions x up to {n_times} time points{note}",
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
            f"static volume, {n_positions} slices, contrast agent recorded{note}",
            n_positions,
            1,
        )
    if _CTA_WORDS.search(first.series_description):
        return (
            "cta",
            f"static volume, {n_positions} slices, description '{first.series_description}'{note}",
            n_positions,
            1,
        )
    return (
        "ncct",
        f"static volume, {n_positions} slices, no contrast agent recorded{note}",
        n_positions,
        1,
    )


def _time_point_key(
    summary: SeriesSummary, instances: list[InstanceHeader]
) -> tuple[object, ...] | None:
    """What the series of a perfusion exported one series per time point share, or None.

    The acquisition geometry and protocol (frame of reference, orientation, matrix,
    pixel spacing, slice thickness, kVp), whether a contrast agent is recorded, the
    series description without its numbering ("Perfusion t01" and "Perfusion t02" are
    one; a second reconstruction described otherwise is not), and the set of slice
    positions (0.01 mm). Only plain single-frame CT images qualify: localizers, derived
    and multi-frame images never join a perfusion.
    """
    if summary.kind == "localizer":
        return None
    first = instances[0]
    if first.modality != "CT" or first.image_type[:1] == ("DERIVED",):
        return None
    if any(
        h.rows == 0 or h.number_of_frames > 1 or h.position_mm is None or h.orientation is None
        for h in instances
    ):
        return None
    keys = {geometry_key(h) for h in instances}
    if len(keys) != 1:
        return None
    positions = frozenset(round(float(v) * 100) for v in positions_along_normal(instances))
    contrast = any(h.contrast_agent for h in instances)
    return (keys.pop(), contrast, _plain_description(first), positions)


def _plain_description(h: InstanceHeader) -> str:
    """SeriesDescription without numbering: ``"Perfusion t01"`` -> ``"perfusion t"``."""
    return " ".join(_NUMBERING.sub(" ", h.series_description.lower()).split())


def merge_time_point_series(
    summaries: list[SeriesSummary], series: dict[str, list[InstanceHeader]]
) -> list[SeriesSummary]:
    """Recognise a perfusion exported one series per time point, and call its series "ctp".

    Series of one study with the same geometry, protocol and slice positions (see
    :func:`_time_point_key`) are ordered by time and chained while each starts within
    :data:`MAX_TIME_POINT_GAP_S` of the last time point before it; series repeating
    time points already in a chain (a second reconstruction) are chained apart. A chain of at
    least two series holding :data:`MIN_CTP_FRAMES` distinct time points together is one
    perfusion: every member becomes ``"ctp"``, with a reason naming its time points and
    ``merged_series_uids``. An NCCT and a CTA of one study never merge: they differ in
    kVp or thickness, lie minutes apart, and are two time points, not five.

    Parameters
    ----------
    summaries : list of SeriesSummary
        One per series of one study, from :func:`_classify`.
    series : dict of str to list of InstanceHeader
        The instances of each series, by SeriesInstanceUID.

    Returns
    -------
    list of SeriesSummary
        ``summaries`` with the members of every such perfusion replaced.
    """
    # A cheap first sort (first image only) spares the full key of every image to the
    # usual study, whose perfusion is one series that nothing else resembles.
    rough: dict[tuple[object, ...], list[SeriesSummary]] = defaultdict(list)
    for summary in summaries:
        first = series[summary.series_uid][0]
        rough[(geometry_key(first), _plain_description(first))].append(summary)
    groups: dict[tuple[object, ...], list[SeriesSummary]] = defaultdict(list)
    for similar in rough.values():
        for summary in similar if len(similar) > 1 else ():
            key = _time_point_key(summary, series[summary.series_uid])
            if key is not None:
                groups[key].append(summary)
    replaced: dict[str, SeriesSummary] = {}
    for members in groups.values():
        while len(members) >= 2:
            chains, members = _time_point_chains(members, series)
            for chain in chains:
                _merge_chain(chain, replaced)
    return [replaced.get(s.series_uid, s) for s in summaries]


def _merge_chain(
    chain: list[tuple[SeriesSummary, np.ndarray]], replaced: dict[str, SeriesSummary]
) -> None:
    """Call the series of one chain "ctp" when together they are a perfusion."""
    times_s = np.sort(np.concatenate([t for _, t in chain]))
    if len(chain) < 2 or times_s.size < MIN_CTP_FRAMES:
        return
    if all(m.kind == "ctp" for m, _ in chain):
        return  # already perfusion series; assemble_ctp chains them
    uids = tuple(m.series_uid for m, _ in chain)
    interval_s = float(np.median(np.diff(times_s)))
    for m, own in chain:
        first, last = (int(i) + 1 for i in np.searchsorted(times_s, own[[0, -1]]))
        points = f"time point {first}" if first == last else f"time points {first}-{last}"
        reason = (
            f"{points} of {times_s.size} of one CT perfusion exported as "
            f"{len(chain)} series (same frame of reference, orientation, matrix and "
            f"{m.n_positions} slice positions; every {interval_s:.1f} s)"
        )
        replaced[m.series_uid] = dataclasses.replace(
            m, kind="ctp", reason=reason, merged_series_uids=uids
        )


def _time_point_chains(
    members: list[SeriesSummary], series: dict[str, list[InstanceHeader]]
) -> tuple[list[list[tuple[SeriesSummary, np.ndarray]]], list[SeriesSummary]]:
    """Chains of series close in time, and the series that repeat a chain's time points.

    Each chain member comes with its sorted time points (s): the times of its images
    at the first slice (all members share the slice positions, so every member has
    images there). The repeats (a second reconstruction) are chained in a next pass.
    """
    timed = _time_points_s(members, series)
    if timed is None:
        return [], []  # no common clock: nothing can be said about their order
    members, own_times = timed
    chains: list[list[tuple[SeriesSummary, np.ndarray]]] = []
    chain: list[tuple[SeriesSummary, np.ndarray]] = []
    repeats: list[SeriesSummary] = []
    order = sorted(
        range(len(members)),
        key=lambda i: (
            float(own_times[i][0]),
            members[i].series_number or 0,
            members[i].series_uid,
        ),
    )
    for i in order:
        t = own_times[i]
        held = np.concatenate([own for _, own in chain]) if chain else np.empty(0)
        if chain and float(t[0]) - float(held.max()) > MAX_TIME_POINT_GAP_S:
            chains.append(chain)
            chain, held = [], np.empty(0)
        if held.size and float(np.abs(np.subtract.outer(t, held)).min()) <= 1e-3:
            repeats.append(members[i])  # the same moments again: a second reconstruction
            continue
        chain.append((members[i], t))
    if chain:
        chains.append(chain)
    return chains, repeats


def _time_points_s(
    members: list[SeriesSummary], series: dict[str, list[InstanceHeader]]
) -> tuple[list[SeriesSummary], list[np.ndarray]] | None:
    """The sorted times (s) of each member's images at the first slice, on one clock.

    The members' images are timed together (one time tag for all, midnight unwrapped);
    when that fails because two members repeat the same moments (a tag cannot tell
    repeated images apart then), each member is timed alone and members without any
    time are left out. None when no member has a time.
    """
    instances = [h for m in members for h in series[m.series_uid]]
    _, slice_of = cluster_positions(positions_along_normal(instances))
    owner = np.repeat(np.arange(len(members)), [len(series[m.series_uid]) for m in members])
    try:
        times_all, _ = frame_times_s(instances, slice_of)
    except ValueError:
        kept, parts = [], []
        for m in members:
            own = series[m.series_uid]
            _, own_slice = cluster_positions(positions_along_normal(own))
            try:
                times, _ = frame_times_s(own, own_slice)
            except ValueError:
                continue
            kept.append(m)
            parts.append(times[own_slice == 0])
        if not kept:
            return None
        flat = unwrap_midnight(np.concatenate(parts))
        bounds = np.cumsum([0] + [p.size for p in parts])
        return kept, [np.sort(flat[a:b]) for a, b in itertools.pairwise(bounds)]
    return members, [
        np.sort(times_all[(slice_of == 0) & (owner == i)]) for i in range(len(members))
    ]


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
        summaries = merge_time_point_series(summaries, series)
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
