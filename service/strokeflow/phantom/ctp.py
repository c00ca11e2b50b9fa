"""Digital CT perfusion phantom: anatomy, perfusion zones and the 4D HU series, arrays only.

The parts: what to simulate and on which grid (:mod:`~strokeflow.phantom.ctp_options`),
the head and the lesion (:mod:`~strokeflow.phantom.ctp_anatomy`), the enhancement
curves (:mod:`~strokeflow.phantom.ctp_curves`); this module renders the frames, with
motion and noise, and writes down the truth. Its names are the phantom's public face.

Label codes (``CtpPhantom.labels``): 0 air, 1 scalp, 2 skull, 3 sulcal/cisternal CSF,
4 ventricle, 5 cortical grey matter, 6 deep grey matter, 7 white matter, 8 artery,
9 venous sinus. Tissue = 5, 6, 7. Zone codes (``CtpPhantom.zones``, tissue voxels
only): 0 normal, 1 benign oligaemia, 2 penumbra, 3 severe penumbra (Tmax > 10 s), 4 core.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strokeflow.analysis.decisions import evaluate_decisions, lesion_metrics
from strokeflow.phantom.ctp_anatomy import (
    ARTERY_PV,
    BASE_HU,
    HEAD_AX_MM,
    HEAD_AY_MM,
    Anatomy,
    Pose,
    head_anatomy,
    lesion_zones,
)
from strokeflow.phantom.ctp_curves import (
    Curves,
    arterial_peak_time_s,
    class_map,
    perfusion_curves,
    tissue_parameters,
)
from strokeflow.phantom.ctp_options import (
    AIR,
    ARTERIAL_ARRIVAL_S,
    ARTERY,
    CLINICAL_NOISE_HU_AT_045MM,
    CSF,
    DEEP_GREY,
    GREY,
    LABEL_NAMES,
    SCALP,
    SINUS,
    SKULL,
    TISSUE_LABELS,
    VENTRICLE,
    WHITE,
    ZONE_NAMES,
    CtpPhantomOptions,
    frame_times_s,
    phantom_affine,
    slice_positions_mm,
)

__all__ = [
    "AIR",
    "ARTERIAL_ARRIVAL_S",
    "ARTERY",
    "ARTERY_PV",
    "BASE_HU",
    "CLINICAL_NOISE_HU_AT_045MM",
    "CSF",
    "DEEP_GREY",
    "GREY",
    "HEAD_AX_MM",
    "HEAD_AY_MM",
    "LABEL_NAMES",
    "SCALP",
    "SINUS",
    "SKULL",
    "TISSUE_LABELS",
    "VENTRICLE",
    "WHITE",
    "ZONE_NAMES",
    "Anatomy",
    "CtpPhantom",
    "CtpPhantomOptions",
    "Curves",
    "Pose",
    "arterial_peak_time_s",
    "class_map",
    "frame_times_s",
    "head_anatomy",
    "lesion_zones",
    "perfusion_curves",
    "phantom_affine",
    "render_static",
    "simulate_ctp",
    "slice_positions_mm",
]


@dataclass(frozen=True)
class CtpPhantom:
    """A simulated CT perfusion study and its truth.

    Attributes
    ----------
    hu : numpy.ndarray
        ``(t, z, y, x)`` float32 HU with noise and motion, before quantisation.
    times_s : numpy.ndarray
        ``(t,)`` frame times in seconds from the first frame (all slices of a frame
        are acquired together).
    affine_lps : numpy.ndarray
        ``(4, 4)`` voxel ``(x=col, y=row, z=slice, 1)`` -> LPS mm, as ``Geometry``.
    labels : numpy.ndarray
        ``(z, y, x)`` uint8 tissue classes of the reference (motion-free) frame.
    zones : numpy.ndarray
        ``(z, y, x)`` uint8 perfusion zones (tissue voxels only).
    truth : dict
        JSON-serialisable truth (volumes, decisions, curves, motion, options).
    options : CtpPhantomOptions
        The options it was simulated with.
    """

    hu: np.ndarray
    times_s: np.ndarray
    affine_lps: np.ndarray
    labels: np.ndarray
    zones: np.ndarray
    truth: dict[str, Any]
    options: CtpPhantomOptions = field(default_factory=CtpPhantomOptions)


def simulate_ctp(options: CtpPhantomOptions) -> CtpPhantom:
    """Simulate a CT perfusion study with a known lesion.

    Parameters
    ----------
    options : CtpPhantomOptions
        What to simulate.

    Returns
    -------
    CtpPhantom
        HU series, frame times, geometry, labels, zones and truth.

    Raises
    ------
    ValueError
        For options that cannot be simulated (too few frames, bad sizes).
    """
    _check(options)
    times = frame_times_s(options)
    z_mm = slice_positions_mm(options)
    anatomy = head_anatomy(options, z_mm)
    zones = lesion_zones(options, z_mm, anatomy.labels)
    curves = perfusion_curves(options, anatomy.labels, times[-1])
    classes = class_map(anatomy.labels, zones)

    motion = _motion(options, times.size)
    sigma = options.noise_sigma_hu
    noise_rng = np.random.default_rng([options.seed, 2])
    hu = np.empty((times.size, *anatomy.labels.shape), dtype=np.float32)
    # Moved frames are rendered from the anatomy in its new pose (exact, no resampling).
    posed: dict[tuple[float, ...], tuple[Anatomy, np.ndarray]] = {
        (0.0, 0.0, 0.0, 0.0): (anatomy, classes)
    }

    def sampled_render(key: tuple[float, float, float, float], t_s: float) -> np.ndarray:
        if key not in posed:
            z_seen = z_mm + key[3]
            moved = head_anatomy(options, z_seen, key[:3])
            zones_seen = lesion_zones(options, z_seen, moved.labels, key[:3])
            posed[key] = (moved, class_map(moved.labels, zones_seen))
        return _render(*posed[key], curves, t_s)

    # A scanner integrates over each pixel; point sampling would alias sharp edges
    # (skull, ventricles, lesion borders) differently in every pose of a moving head.
    # Pixels are therefore the mean of 2 x 2 sub-pixel samples: sampling at p + s is
    # the pose translated by -s.
    quarter = options.pixel_mm / 4.0
    subpixels = [(sx, sy) for sx in (-quarter, quarter) for sy in (-quarter, quarter)]

    def posed_render(key: tuple[float, float, float, float], t_s: float) -> np.ndarray:
        tx, ty, rot, dz = key
        total = np.zeros(anatomy.labels.shape, dtype=np.float32)
        for sx, sy in subpixels:
            total += sampled_render((round(tx - sx, 6), round(ty - sy, 6), rot, dz), t_s)
        return total / np.float32(len(subpixels))

    for f, t in enumerate(times):
        m = motion[f]
        pose = (m["tx_mm"], m["ty_mm"], m["rotation_deg"], 0.0)
        frame = posed_render(pose, float(t))
        if m["through_plane_mm"]:
            jerked = (
                m["tx_mm"] + m["jerk_tx_mm"],
                m["ty_mm"] + m["jerk_ty_mm"],
                m["rotation_deg"] + m["jerk_rotation_deg"],
                m["through_plane_mm"],
            )
            frame = 0.5 * frame + 0.5 * posed_render(jerked, float(t))
        frame += noise_rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(sigma)
        hu[f] = frame

    affine = phantom_affine(options)
    truth = _truth(options, times, anatomy.labels, zones, curves, motion, affine)
    return CtpPhantom(
        hu=hu,
        times_s=times,
        affine_lps=affine,
        labels=anatomy.labels,
        zones=zones,
        truth=truth,
        options=options,
    )


def render_static(
    options: CtpPhantomOptions, slice_mm: float, time_s: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless, motion-free volume of the same head on another slice grid.

    Used for the companion series (non-contrast CT, CT angiography).

    Parameters
    ----------
    options : CtpPhantomOptions
        The perfusion study's options (geometry and lesion).
    slice_mm : float
        Slice spacing of the grid, which tiles the perfusion slab.
    time_s : float or None
        Contrast time point (seconds on the perfusion clock); None: no contrast.

    Returns
    -------
    hu : numpy.ndarray
        ``(z, y, x)`` float32 HU.
    affine_lps : numpy.ndarray
        ``(4, 4)`` affine of the grid.
    """
    _check(options)
    affine = phantom_affine(options, slice_mm)
    n = round(options.slices * options.slice_mm / slice_mm)
    z_mm = affine[2, 3] + np.arange(n) * slice_mm
    anatomy = head_anatomy(options, z_mm)
    if time_s is None:
        return anatomy.base_hu.copy(), affine
    zones = lesion_zones(options, z_mm, anatomy.labels)
    curves = perfusion_curves(options, anatomy.labels, max(time_s, 1.0))
    return _render(anatomy, class_map(anatomy.labels, zones), curves, time_s), affine


def _check(options: CtpPhantomOptions) -> None:
    if options.matrix < 16 or options.slices < 1 or options.frames < 2:
        raise ValueError(
            f"phantom needs matrix >= 16, slices >= 1, frames >= 2; got matrix "
            f"{options.matrix}, slices {options.slices}, frames {options.frames}"
        )
    if options.fov_mm < 2.0 * HEAD_AY_MM + 10.0:
        raise ValueError(
            f"fov_mm {options.fov_mm} is too small for the {2 * HEAD_AY_MM:.0f} mm long head"
        )
    if options.slice_mm <= 0 or options.frame_interval_s <= 0:
        raise ValueError("slice_mm and frame_interval_s must be positive")
    if options.bolus_width_scale <= 0 or options.artery_radius_scale <= 0:
        raise ValueError("bolus_width_scale and artery_radius_scale must be positive")
    if options.arterial_arrival_s < 0 or options.dense_phase_s < 0:
        raise ValueError("arterial_arrival_s and dense_phase_s must not be negative")


def _render(anatomy: Anatomy, classes: np.ndarray, curves: Curves, t_s: float) -> np.ndarray:
    def at(curve: np.ndarray) -> np.float32:
        return np.float32(np.interp(t_s, curves.fine_s, curve))

    table = np.array([at(c) for c in curves.tissue], dtype=np.float32)
    frame = anatomy.base_hu + table[classes]
    frame += anatomy.pv_artery * at(curves.arterial)
    frame += anatomy.pv_occluded * at(curves.occluded)
    frame += anatomy.pv_sinus * at(curves.venous)
    return np.asarray(frame, dtype=np.float32)


def _motion(options: CtpPhantomOptions, n_frames: int) -> list[dict[str, float]]:
    """Per-frame rigid motion of the head relative to frame 0."""
    motion = [
        {
            "tx_mm": 0.0,
            "ty_mm": 0.0,
            "rotation_deg": 0.0,
            "through_plane_mm": 0.0,
            "jerk_tx_mm": 0.0,
            "jerk_ty_mm": 0.0,
            "jerk_rotation_deg": 0.0,
        }
        for _ in range(n_frames)
    ]
    if options.motion == "none" or n_frames < 4:
        return motion
    rng = np.random.default_rng([options.seed, 4])
    signs = rng.choice([-1.0, 1.0], size=3)
    start = int(0.45 * n_frames)
    ramp = max(3, n_frames // 6)
    for f in range(start, n_frames):
        s = min(1.0, (f - start + 1) / ramp)
        p = 0.5 - 0.5 * np.cos(np.pi * s)  # smooth start and stop
        wiggle = 0.1 * np.sin(0.9 * (f - start))
        motion[f]["tx_mm"] = round(float(signs[0] * 3.2 * p * (1.0 + wiggle) / 1.1), 4)
        motion[f]["ty_mm"] = round(float(signs[1] * 2.4 * p), 4)
        motion[f]["rotation_deg"] = round(float(signs[2] * 3.0 * p), 4)
    if options.motion == "severe":
        for f in sorted({max(1, int(0.3 * n_frames)), int(0.7 * n_frames)}):
            # A jerk during the frame's exposure: half of it sees the head nodded by one
            # slice and turned, which leaves double contours no rigid transform can undo.
            motion[f]["through_plane_mm"] = options.slice_mm
            motion[f]["jerk_tx_mm"] = round(float(signs[0] * 5.0), 4)
            motion[f]["jerk_ty_mm"] = round(float(-signs[1] * 4.0), 4)
            motion[f]["jerk_rotation_deg"] = round(float(signs[2] * 6.0), 4)
    return motion


def _truth(
    options: CtpPhantomOptions,
    times: np.ndarray,
    labels: np.ndarray,
    zones: np.ndarray,
    curves: Curves,
    motion: list[dict[str, float]],
    affine: np.ndarray,
) -> dict[str, Any]:
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.bincount(zones.ravel(), minlength=5)
    core_ml = float(counts[4]) * voxel_ml
    tmax6_ml = float(counts[2:].sum()) * voxel_ml
    tmax10_ml = float(counts[3:].sum()) * voxel_ml
    metrics = lesion_metrics(core_ml, tmax6_ml, tmax10_ml)
    params, mean_cbf = tissue_parameters(options, labels)

    def sample(curve: np.ndarray) -> list[float]:
        return [round(float(v), 3) for v in np.interp(times, curves.fine_s, curve)]

    venous_at = np.interp(times, curves.fine_s, curves.venous)
    venous_peak = float(curves.venous.max())
    truncated = bool(
        venous_at[-1] > 0.25 * venous_peak
        or times[-1] < float(curves.fine_s[curves.venous.argmax()])
    )
    tissue = np.isin(labels, TISSUE_LABELS)
    return {
        "generator": "strokeflow.phantom.ctp",
        "modality": "CT",
        "options": dataclasses.asdict(options),
        "lesion_side": None if options.lesion == "none" else options.lesion_side,
        "core_ml": round(core_ml, 3),
        "tmax6_ml": round(tmax6_ml, 3),
        "tmax10_ml": round(tmax10_ml, 3),
        "zone_ml": {
            name: round(float(counts[i]) * voxel_ml, 3) for i, name in enumerate(ZONE_NAMES)
        },
        "metrics": dataclasses.asdict(metrics),
        "decisions": evaluate_decisions(metrics),
        "tissue_ml": round(float(np.count_nonzero(tissue)) * voxel_ml, 3),
        "voxel_size_mm": [options.slice_mm, options.pixel_mm, options.pixel_mm],
        "voxel_volume_ml": voxel_ml,
        "affine_lps": affine.tolist(),
        "noise_sigma_hu": options.noise_sigma_hu,
        "frame_times_s": [round(float(t), 4) for t in times],
        "bolus_truncated": truncated,
        "arterial_curve_hu": sample(curves.arterial),
        "venous_curve_hu": sample(curves.venous),
        "occluded_mca_curve_hu": sample(curves.occluded),
        "artery_partial_volume": ARTERY_PV,
        "sinus_partial_volume": 1.0,
        "mean_normal_cbf_ml_100g_min": round(mean_cbf, 3),
        "tissue_parameters": params,
        "motion": motion,
        "uncorrectable_frames": [i for i, m in enumerate(motion) if m["through_plane_mm"]],
        "moved_frames": [
            i for i, m in enumerate(motion) if m["tx_mm"] or m["ty_mm"] or m["rotation_deg"]
        ],
        "label_codes": {str(i): name for i, name in enumerate(LABEL_NAMES)},
        "zone_codes": {str(i): name for i, name in enumerate(ZONE_NAMES)},
    }
