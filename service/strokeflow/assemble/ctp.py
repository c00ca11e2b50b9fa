"""Assemble the perfusion series of a study into one ``(t, z, y, x)`` HU array.

Steps: pick the ``"ctp"`` series, group them by acquisition geometry (frame of
reference, orientation, matrix, pixel spacing, slice thickness, kVp), chain series that
continue each other in time (split in time) or sit side by side in z (slabs), order
slices along the normal and images of each slice by time, align incomplete slices to a
complete one, decode all pixels into one preallocated float32 array (thread pool), and
fill missing frames by linear interpolation in time.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from strokeflow.analysis.slabs import (
    SlabPlan,
    binning_factor,
    plan_slabs,
    slab_clock,
    slab_geometry,
)
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.assemble.files import InstanceHeader, read_frame
from strokeflow.assemble.grid_read import SliceImages, read_into_grid
from strokeflow.assemble.references import reference_candidates
from strokeflow.assemble.series import (
    StudyInventory,
    cluster_positions,
    describe_key,
    frame_times_s,
    geometry_key,
    positions_along_normal,
    slice_normal,
)

#: Series of one geometry further apart in time than this are separate acquisitions.
MAX_SERIES_GAP_S = 120.0
#: Relative deviation of a slice gap from the median that triggers a warning.
SLICE_GAP_TOLERANCE = 0.05
#: Smallest image matrix (pixels per side) and field of view the analysis can use: a
#: brain is about 140 mm wide, and brain masks, hemispheres and arterial candidates
#: need a grid of tens of voxels.
MIN_MATRIX = 16
MIN_FIELD_OF_VIEW_MM = 100.0


class AssemblyError(Exception):
    """A perfusion series was found but cannot be assembled; the message says why."""


@dataclass(frozen=True)
class ReadGrid:
    """The analysis grid to read a perfusion into (see :mod:`strokeflow.assemble.grid_read`).

    The values are those of :class:`strokeflow.analysis.settings.CtpSettings` of the
    same names: ``analysis_pixel_mm``, ``analysis_slab_mm``, ``thin_slice_below_mm``.
    """

    pixel_mm: float
    slab_mm: float
    thin_below_mm: float


@dataclass(frozen=True)
class CtpAcquisition:
    """One assembled CT perfusion acquisition.

    Attributes
    ----------
    study_uid, series_uids
        Where it came from (several series when the scanner split it).
    perfusion : PerfusionSeries
        Signal in HU, per-slice times, geometry, missing-frame mask.
    warnings : list of str
        Problems a person should know about (missing frames, uneven slice gaps...).
    source_paths : list of Path
        Files whose pixels were used.
    time_source : str
        DICOM tag the frame times were taken from.
    slice_positions_mm : tuple of float
        Position of each slice along the slice normal.
    reference : dict of str to str
        Non-identifying context (StudyDate, Manufacturer, model, kVp, series
        description); never patient names or IDs.
    slabs : SlabPlan or None
        When read into the analysis grid (:class:`ReadGrid`): how the input slices were
        combined into the slabs of ``perfusion``, which is binned in-plane too. None:
        ``perfusion`` holds the input slices and pixels as acquired.
    input_shape : tuple of int
        ``(t, z, y, x)`` of the images as acquired.
    input_voxel_mm : tuple of float
        ``(dz, dy, dx)`` of the images as acquired.
    reference_paths : list of Path
        The files among ``source_paths`` that the result objects may reference: at
        every slice position those of the earliest image (see
        :func:`strokeflow.assemble.references.reference_candidates`), so that only they
        are read again.
    """

    study_uid: str
    series_uids: list[str]
    perfusion: PerfusionSeries
    warnings: list[str]
    source_paths: list[Path]
    time_source: str = ""
    slice_positions_mm: tuple[float, ...] = ()
    reference: dict[str, str] = field(default_factory=dict)
    slabs: SlabPlan | None = None
    input_shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    input_voxel_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    reference_paths: list[Path] = field(default_factory=list)


def assemble_ctp(
    study: StudyInventory, max_workers: int | None = None, grid: ReadGrid | None = None
) -> list[CtpAcquisition]:
    """Assemble every CT perfusion acquisition of a study (usually 0 or 1).

    Parameters
    ----------
    study : StudyInventory
        From :func:`strokeflow.assemble.series.build_inventory`.
    max_workers : int, optional
        Threads decoding pixels (default: CPU count + 1, at most 8).
    grid : ReadGrid, optional
        Read straight into the analysis grid (slabs, in-plane bins); default: the
        images as acquired.

    Returns
    -------
    list of CtpAcquisition
        In acquisition order; empty when the study has no perfusion series.

    Raises
    ------
    AssemblyError
        If a perfusion series cannot be assembled at all (no usable times, no pixel
        spacing, a slice with fewer than two readable frames...).
    """
    by_series: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in study.instances:
        by_series[h.series_uid].append(h)
    groups: dict[tuple[object, ...], list[tuple[str, list[InstanceHeader]]]] = defaultdict(list)
    early_warnings: dict[str, list[str]] = defaultdict(list)
    for summary in study.series:
        if summary.kind != "ctp":
            continue
        instances = by_series[summary.series_uid]
        keys = [geometry_key(h) for h in instances]
        key = Counter(keys).most_common(1)[0][0]
        kept = [h for h, k in zip(instances, keys, strict=True) if k == key]
        if len(kept) < len(instances):
            early_warnings[summary.series_uid].append(
                f"series {summary.series_uid}: {len(instances) - len(kept)} of {len(instances)} "
                f"images with a different geometry or kVp were left out"
            )
        groups[key].append((summary.series_uid, kept))

    acquisitions: list[tuple[float, CtpAcquisition]] = []
    for key, members in groups.items():
        for chain in _chain_series(members):
            uids = [uid for uid, _ in chain]
            warnings = [w for uid in uids for w in early_warnings[uid]]
            instances = [h for _, hs in chain for h in hs]
            acquisitions.append(
                assemble_group(study.study_uid, uids, instances, key, warnings, max_workers, grid)
            )
    acquisitions.sort(key=lambda pair: pair[0])
    return [acquisition for _, acquisition in acquisitions]


def _series_span(instances: list[InstanceHeader]) -> tuple[float, float, set[int]]:
    """(first time, last time, rounded slice positions) of one series."""
    z = positions_along_normal(instances)
    _, index = cluster_positions(z)
    times, _ = frame_times_s(instances, index)
    return float(times.min()), float(times.max()), {round(float(v) * 100) for v in z}


def _chain_series(
    members: list[tuple[str, list[InstanceHeader]]],
) -> list[list[tuple[str, list[InstanceHeader]]]]:
    """Split series of one geometry into acquisitions.

    Series join an acquisition when they cover other slices (slabs) or continue it in
    time within :data:`MAX_SERIES_GAP_S`; a series repeating the same slices at the same
    times (a second reconstruction) starts an acquisition of its own.
    """
    if len(members) == 1:
        return [members]
    spans = []
    for uid, hs in members:
        try:
            spans.append(_series_span(hs))
        except ValueError as exc:
            raise AssemblyError(f"series {uid}: {exc}") from exc
    order = sorted(range(len(members)), key=lambda i: spans[i][0])
    chains: list[list[int]] = []
    for i in order:
        start, _, positions = spans[i]
        for chain in chains:
            chain_end = max(spans[j][1] for j in chain)
            fits = start <= chain_end + MAX_SERIES_GAP_S and all(
                not (positions & spans[j][2]) or start > spans[j][1] for j in chain
            )
            if fits:
                chain.append(i)
                break
        else:
            chains.append([i])
    return [[members[i] for i in chain] for chain in chains]


def check_analysable(acquisition: CtpAcquisition) -> None:
    """Refuse an acquisition whose images cannot hold a brain.

    Parameters
    ----------
    acquisition : CtpAcquisition

    Raises
    ------
    AssemblyError
        When the matrix is smaller than :data:`MIN_MATRIX` pixels or the field of view
        smaller than :data:`MIN_FIELD_OF_VIEW_MM` on a side; the message gives the
        time points, slices and matrix (the caller names the series).
    """
    nt, nz, ny, nx = acquisition.input_shape
    _, dy, dx = acquisition.input_voxel_mm
    fov_y, fov_x = ny * dy, nx * dx
    if min(ny, nx) >= MIN_MATRIX and min(fov_y, fov_x) >= MIN_FIELD_OF_VIEW_MM:
        return
    n_series = len(acquisition.series_uids)
    merged = f" ({n_series} series merged)" if n_series > 1 else ""
    raise AssemblyError(
        f"CT perfusion of {nt} time points x {nz} slices recognised{merged}, but its "
        f"{ny} x {nx} image matrix ({fov_y:.1f} x {fov_x:.1f} mm) cannot be analysed: the "
        f"analysis needs at least {MIN_MATRIX} x {MIN_MATRIX} pixels covering "
        f"{MIN_FIELD_OF_VIEW_MM:.0f} x {MIN_FIELD_OF_VIEW_MM:.0f} mm"
    )


def series_label(series_uids: Sequence[str]) -> str:
    """``"series A + B"``; a long list (one series per time point) is shortened."""
    if len(series_uids) <= 3:
        return "series " + " + ".join(series_uids)
    return f"{len(series_uids)} series {series_uids[0]} ... {series_uids[-1]}"


def assemble_group(
    study_uid: str,
    series_uids: list[str],
    instances: list[InstanceHeader],
    key: tuple[object, ...],
    warnings: list[str],
    max_workers: int | None,
    grid: ReadGrid | None = None,
) -> tuple[float, CtpAcquisition]:
    """Assemble one acquisition; returns (absolute start time, acquisition).

    With ``grid`` the pixels are read into the analysis grid (see :class:`ReadGrid`).
    """
    label = series_label(series_uids)
    first = instances[0]
    if first.pixel_spacing_mm is None or first.orientation is None:
        raise AssemblyError(
            f"{label}: no PixelSpacing/ImageOrientationPatient ({describe_key(key)})"
        )
    z_all = positions_along_normal(instances)
    z_mm, slice_of = cluster_positions(z_all)
    nz = z_mm.size
    try:
        times_abs, time_source = frame_times_s(instances, slice_of)
    except ValueError as exc:
        raise AssemblyError(f"{label}: {exc}") from exc

    # Images of each slice in time order; identical (slice, time) pairs are duplicates.
    per_slice: list[list[int]] = [[] for _ in range(nz)]
    n_duplicates = 0
    for i in np.lexsort((times_abs, slice_of)):
        lst = per_slice[slice_of[i]]
        if lst and abs(times_abs[lst[-1]] - times_abs[i]) <= 1e-4:
            n_duplicates += 1
            continue
        lst.append(int(i))
    if n_duplicates:
        warnings.append(f"{label}: {n_duplicates} duplicate images (same slice and time) ignored")

    nt = max(len(lst) for lst in per_slice)
    series_of = [h.series_uid for h in instances]
    frame_of = _align_frames(per_slice, times_abs, series_of, z_mm, nt, label)

    missing = np.ones((nt, nz), dtype=bool)
    times = np.full((nt, nz), np.nan)
    jobs = []
    for z, lst in enumerate(per_slice):
        for i, t in zip(lst, frame_of[z], strict=True):
            jobs.append((t, z, instances[i]))
            times[t, z] = times_abs[i]
    # Times of absent images come from the other slices (independent of the pixels).
    _fill_missing_times(times, missing)
    workers = max_workers or min(8, (os.cpu_count() or 1) + 1)
    geometry, gap_warning = slice_geometry(instances, slice_of, z_mm, label)
    shape_tyx = (nt, first.rows, first.columns)
    plan: SlabPlan | None = None
    _, dy, _ = geometry.voxel_size_mm
    factor = 1 if grid is None else binning_factor(dy, grid.pixel_mm)
    if grid is None or factor > min(first.rows, first.columns):
        # A matrix smaller than one bin is read as it is, for check_analysable to refuse.
        signal, missing, errors = _read_full(jobs, shape_tyx, nz, workers)
        t0 = np.nanmin(np.where(missing, np.nan, times))
        times -= t0
        unusable = _check_slices(missing, z_mm, label)
        for z in range(nz):
            if unusable is None and missing[:, z].any():
                _interpolate_slice(signal[:, z], times[:, z], missing[:, z])
    else:
        # Interpolation inside the reader uses the clock of the images present; an
        # unreadable first image moves the origin afterwards (a float64 shift only).
        present = np.zeros((nt, nz), dtype=bool)
        for t, z, _ in jobs:
            present[t, z] = True
        t0 = np.nanmin(np.where(present, times, np.nan))
        times -= t0
        plan = plan_slabs(geometry.voxel_size_mm[0], nz, grid.slab_mm, grid.thin_below_mm)
        slices = [
            SliceImages(z, [(t, instances[i]) for i, t in zip(lst, frame_of[z], strict=True)])
            for z, lst in enumerate(per_slice)
        ]
        signal, missing, errors = read_into_grid(
            slices, plan, factor, shape_tyx, times, _interpolate_slice, workers
        )
        unusable = _check_slices(missing, z_mm, label)
        shift = np.nanmin(np.where(missing, np.nan, times))
        if shift:
            times -= shift
            t0 += shift
    for e in errors:
        warnings.append(f"{label}: unreadable image skipped and filled by interpolation: {e}")
    if unusable is not None:
        raise AssemblyError(unusable)
    used = [h for t, z, h in jobs if not missing[t, z]]
    source_paths = [h.path for h in used]
    for z in range(nz):
        n_missing = int(missing[:, z].sum())
        if n_missing:
            warnings.append(
                f"{label}: {n_missing} of {nt} frames missing at slice {z} (z={z_mm[z]:.1f} mm); "
                f"filled by linear interpolation in time"
            )
    input_shape = (nt, nz, first.rows, first.columns)
    input_voxel_mm = geometry.voxel_size_mm
    slab_times, slab_missing = times, missing
    if plan is not None:
        slab_times, slab_missing = slab_clock(times, missing, plan)
        geometry = slab_geometry(geometry, plan).downsampled(factor)
    if gap_warning:
        warnings.append(gap_warning)
    reference = {
        "StudyDate": first.study_date,
        "Manufacturer": first.manufacturer,
        "ManufacturerModelName": first.model,
        "KVP": "" if first.kvp is None else f"{first.kvp:g}",
        "SeriesDescription": first.series_description,
        "SeriesNumber": "" if first.series_number is None else str(first.series_number),
    }
    return float(t0), CtpAcquisition(
        study_uid=study_uid,
        series_uids=series_uids,
        perfusion=PerfusionSeries(
            signal=signal, times_s=slab_times, geometry=geometry, missing=slab_missing
        ),
        warnings=warnings,
        source_paths=source_paths,
        time_source=time_source,
        slice_positions_mm=tuple(float(v) for v in z_mm),
        reference=reference,
        slabs=plan,
        input_shape=input_shape,
        input_voxel_mm=input_voxel_mm,
        reference_paths=reference_candidates(used),
    )


def _read_full(
    jobs: list[tuple[int, int, InstanceHeader]],
    shape_tyx: tuple[int, int, int],
    nz: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image into one ``(t, z, y, x)`` float32 array (thread pool).

    Returns the array, the ``(t, z)`` missing mask (no image or undecodable) and the
    decoding errors in job order.
    """
    nt, ny, nx = shape_tyx
    signal = np.empty((nt, nz, ny, nx), dtype=np.float32)
    missing = np.ones((nt, nz), dtype=bool)

    def load(job: tuple[int, int, InstanceHeader]) -> str | None:
        t, z, h = job
        try:
            read_frame(h, signal[t, z])
        except ValueError as exc:
            return str(exc)
        missing[t, z] = False
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = [e for e in pool.map(load, jobs) if e is not None]
    return signal, missing, errors


def _check_slices(missing: np.ndarray, z_mm: np.ndarray, label: str) -> str | None:
    """Why the acquisition cannot be used (a slice with fewer than two frames), or None."""
    nt = missing.shape[0]
    for z in range(missing.shape[1]):
        present = nt - int(missing[:, z].sum())
        if present < 2:
            return (
                f"{label}: slice {z} (z={z_mm[z]:.1f} mm) has {present} readable of {nt} frames; "
                f"cannot interpolate"
            )
    return None


def _align_frames(
    per_slice: list[list[int]],
    times_abs: np.ndarray,
    series_of: Sequence[str],
    z_mm: np.ndarray,
    nt: int,
    label: str,
) -> list[list[int]]:
    """Frame index of every image of every slice.

    Complete slices (``nt`` images) map in time order. An incomplete slice is matched
    to the nearest complete slice of the same series (same slab, scanned at the same
    moments) by a monotone least-absolute-time-difference assignment, so a gap anywhere
    (start, middle, end) is found. A slab with no complete slice is matched to another
    slab after a shift of its clock, trying every frame for its first image (ties go to
    the earliest, i.e. a slab that stopped early).
    """
    slab = [frozenset(series_of[i] for i in lst) for lst in per_slice]
    complete = [z for z, lst in enumerate(per_slice) if len(lst) == nt]
    frames: list[list[int]] = []
    for z, lst in enumerate(per_slice):
        if len(lst) == nt:
            frames.append(list(range(nt)))
            continue
        own_t = times_abs[lst]
        same_slab = [c for c in complete if slab[c] == slab[z]]
        if same_slab:
            ref = min(same_slab, key=lambda c: abs(z_mm[c] - z_mm[z]))
            _, assignment = _monotone_match(own_t, times_abs[per_slice[ref]])
            frames.append(assignment)
            continue
        ref = min(complete, key=lambda c: abs(z_mm[c] - z_mm[z]))
        ref_t = times_abs[per_slice[ref]]
        best: tuple[float, list[int]] | None = None
        for k0 in range(nt - len(lst) + 1):
            cost, assignment = _monotone_match(own_t - (own_t[0] - ref_t[k0]), ref_t)
            if best is None or cost < best[0] - 1e-6:
                best = (cost, assignment)
        if best is None:
            raise AssemblyError(f"{label}: cannot align slice {z} (z={z_mm[z]:.1f} mm) in time")
        frames.append(best[1])
    return frames


def _monotone_match(t: np.ndarray, ref: np.ndarray) -> tuple[float, list[int]]:
    """Assign each of the sorted times ``t`` to a distinct, increasing index of ``ref``
    minimising the summed absolute time difference (dynamic programming)."""
    m, n = t.size, ref.size
    cost = np.abs(t[:, None] - ref[None, :])
    total = np.full((m, n), np.inf)
    back = np.zeros((m, n), dtype=np.intp)
    total[0] = cost[0]
    for j in range(1, m):
        # best previous index strictly below k: running minimum shifted by one
        prev = total[j - 1]
        run_idx = np.zeros(n, dtype=np.intp)
        run_min = np.full(n, np.inf)
        best_v, best_i = np.inf, 0
        for k in range(n):
            run_min[k], run_idx[k] = best_v, best_i
            if prev[k] < best_v:
                best_v, best_i = prev[k], k
        total[j] = cost[j] + run_min
        back[j] = run_idx
    k = int(np.argmin(total[-1]))
    best = float(total[-1, k])
    assignment = [k]
    for j in range(m - 1, 0, -1):
        k = int(back[j, k])
        assignment.append(k)
    return best, assignment[::-1]


def _fill_missing_times(times: np.ndarray, missing: np.ndarray) -> None:
    """Give missing (or unreadable) frames a time from the other slices of that frame.

    A slice's offset from the frame's median is kept, so multi-slab clocks survive.
    """
    known = ~np.isnan(times)
    if known.all():
        return
    frame_median = np.nanmedian(np.where(known, times, np.nan), axis=1)
    if np.isnan(frame_median).any():  # a frame with no image at all: interpolate by index
        k = np.arange(frame_median.size)
        ok = ~np.isnan(frame_median)
        frame_median = np.interp(k, k[ok], frame_median[ok])
    offsets = np.nanmedian(np.where(known, times - frame_median[:, None], np.nan), axis=0)
    fill = frame_median[:, None] + np.nan_to_num(offsets)[None, :]
    times[~known] = fill[~known]


def _interpolate_slice(signal_tz: np.ndarray, times_t: np.ndarray, missing_t: np.ndarray) -> None:
    """Fill missing frames of one slice ``(t, y, x)`` linearly in time (nearest at ends)."""
    present = np.flatnonzero(~missing_t)
    for k in np.flatnonzero(missing_t):
        before = present[present < k]
        after = present[present > k]
        if before.size and after.size:
            k0, k1 = before[-1], after[0]
            w = (times_t[k] - times_t[k0]) / (times_t[k1] - times_t[k0])
            signal_tz[k] = (1.0 - w) * signal_tz[k0] + w * signal_tz[k1]
        else:
            signal_tz[k] = signal_tz[before[-1] if before.size else after[0]]


def slice_geometry(
    instances: Sequence[InstanceHeader], slice_of: np.ndarray, z_mm: np.ndarray, label: str
) -> tuple[Geometry, str | None]:
    """Affine from orientation, pixel spacing and the sorted slice positions."""
    first = instances[0]
    assert first.orientation is not None and first.pixel_spacing_mm is not None
    row_dir = np.asarray(first.orientation[:3])
    col_dir = np.asarray(first.orientation[3:6])
    row_spacing, col_spacing = (
        first.pixel_spacing_mm
    )  # PixelSpacing = (between rows, between columns)
    origin_of: dict[int, np.ndarray] = {}
    for h, z in zip(instances, slice_of, strict=True):
        origin_of.setdefault(int(z), np.asarray(h.position_mm, dtype=np.float64))
    nz = z_mm.size
    warning = None
    if nz > 1:
        step = (origin_of[nz - 1] - origin_of[0]) / (nz - 1)
        gaps = np.diff(z_mm)
        median = float(np.median(gaps))
        if np.any(np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median):
            listed = ", ".join(f"{g:.2f}" for g in gaps)
            warning = (
                f"{label}: non-uniform slice gaps ({listed} mm); the geometry assumes an "
                f"even {np.linalg.norm(step):.2f} mm, volumes may be off"
            )
    else:
        thickness = first.slice_thickness_mm or 1.0
        step = slice_normal(first.orientation) * thickness
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = origin_of[0]
    return Geometry(affine), warning
