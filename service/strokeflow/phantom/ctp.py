"""Digital CT perfusion phantom: anatomy, perfusion zones and the 4D HU series, arrays only.

Coordinates: the head is centred on the LPS origin in-plane; ``X`` mm increases towards
the patient's left (image column), ``Y`` mm posterior (image row), slices go towards the
head. Everything anatomical is defined in mm, so the volumes do not depend on the
matrix; the lesion is defined relative to the slab (see ``_lesion_scale``).

Label codes (``CtpPhantom.labels``): 0 air, 1 scalp, 2 skull, 3 sulcal/cisternal CSF,
4 ventricle, 5 cortical grey matter, 6 deep grey matter, 7 white matter, 8 artery,
9 venous sinus. Tissue = 5, 6, 7. Zone codes (``CtpPhantom.zones``, tissue voxels
only): 0 normal, 1 benign oligaemia, 2 penumbra, 3 severe penumbra (Tmax > 10 s), 4 core.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from strokeflow.analysis.decisions import evaluate_decisions, lesion_metrics
from strokeflow.phantom.physics import arterial_input, tissue_enhancement, venous_outflow

AIR, SCALP, SKULL, CSF, VENTRICLE, GREY, DEEP_GREY, WHITE, ARTERY, SINUS = range(10)
LABEL_NAMES = (
    "air",
    "scalp",
    "skull",
    "csf",
    "ventricle",
    "grey_matter",
    "deep_grey_matter",
    "white_matter",
    "artery",
    "venous_sinus",
)
TISSUE_LABELS = (GREY, DEEP_GREY, WHITE)

#: Noise of 5 mm CT perfusion source images at 0.45 mm pixels for an 80 kV clinical
#: protocol: Krissak et al. (PLoS One 2011) measured a parenchymal SNR of ~5 at 80 kV and
#: 200 mAs (~7 HU) and ~1.9 at 30 mAs (~18 HU); 12 HU sits between routine and low dose.
CLINICAL_NOISE_HU_AT_045MM = 12.0
ZONE_NAMES = ("normal", "oligaemia", "penumbra", "severe_penumbra", "core")

#: Unenhanced attenuation per label (HU); the skull gets a table/diploe profile instead.
BASE_HU = {
    AIR: -1000.0,
    SCALP: 40.0,
    SKULL: 1350.0,
    CSF: 7.0,
    VENTRICLE: 5.0,
    GREY: 40.0,
    DEEP_GREY: 38.0,
    WHITE: 28.0,
    ARTERY: 40.0,
    SINUS: 40.0,
}

#: Normal perfusion per tissue label: (CBF mL/100 g/min, MTT s).
NORMAL_PERFUSION = {GREY: (60.0, 4.0), DEEP_GREY: (50.0, 4.0), WHITE: (28.0, 4.8)}

#: Lesion zones 1-3: (CBF factor, MTT factor, Tmax delay s) relative to the tissue's normal.
ZONE_FACTORS = {1: (0.85, 1.3, 3.5), 2: (0.7, 1.6, 8.0), 3: (0.6, 1.8, 12.0)}
#: Core: absolute CBF (mL/100 g/min), MTT (s) and delay (s).
CORE_PERFUSION = (5.0, 10.0, 12.0)
#: Non-core zones never fall below this fraction of the mean normal tissue CBF, so that
#: relative CBF < 30 % is unambiguously core.
MIN_NONCORE_RCBF = 0.42

#: Reference slab for which the lesion sizes are tuned (8 slices x 5 mm).
REFERENCE_SLAB_MM = 40.0
ARTERIAL_ARRIVAL_S = 8.0
#: First-pass gamma variate: shape and scale (peak at arrival + 6 s, FWHM ~8.5 s).
AIF_ALPHA, AIF_BETA_S = 3.0, 2.0
VENOUS_DELAY_S = 5.5
VENOUS_DISPERSION_S = 3.0
#: Affected-side MCA beyond the occlusion: collateral filling, late and weak.
OCCLUDED_DELAY_S = 6.0
OCCLUDED_FRACTION = 0.35
ARTERY_PV = 0.75

# Head outline (outer scalp semi-axes, mm) and layer depths from the outer surface (mm).
HEAD_AX_MM, HEAD_AY_MM = 74.0, 94.0
_SULCUS_FIRST_RAD, _SULCUS_STEP_RAD, _SULCUS_COUNT = np.deg2rad(-174.0), np.deg2rad(12.0), 30
_SCALP_MM, _SKULL_OUT_MM, _CSF_RIM_MM, _CORTEX_MM = 3.0, 9.5, 11.0, 16.0

# Lesion ellipsoids per lesion kind and zone: (lateral centre, Y centre, semi-axes X, Y mm,
# semi-axis in slab half-thicknesses). Zones are intersected so that they nest.
_LESIONS: dict[str, dict[int, tuple[float, float, float, float, float]]] = {
    "standard": {
        1: (40.0, 0.0, 32.0, 52.0, 1.6),
        2: (42.0, 2.0, 26.0, 41.0, 1.3),
        3: (44.0, 2.0, 18.5, 28.0, 1.05),
        4: (42.0, 0.0, 13.5, 20.5, 1.0),
    },
    "large": {
        1: (36.0, 0.0, 40.0, 64.0, 1.8),
        2: (36.0, 0.0, 36.0, 58.0, 1.6),
        3: (36.0, 0.0, 32.0, 50.0, 1.5),
        4: (36.0, 0.0, 25.3, 38.4, 1.22),
    },
    "malignant": {
        1: (34.0, 0.0, 44.0, 74.0, 2.0),
        2: (34.0, 0.0, 42.0, 70.0, 1.9),
        3: (34.0, 0.0, 40.0, 66.0, 1.8),
        4: (34.0, 0.0, 31.0, 52.0, 1.42),
    },
}


@dataclass(frozen=True)
class CtpPhantomOptions:
    """What to simulate.

    Attributes
    ----------
    seed : int
        Seeds the lesion outline, timing jitter, motion directions, noise and UIDs.
    matrix, fov_mm : int, float
        In-plane pixels and field of view (pixel size = fov / matrix).
    slices, slice_mm : int, float
        Number of contiguous axial slices and their thickness.
    frames : int
        Number of time frames before truncation by ``scan_duration_s``.
    timing : {"regular", "irregular"}
        Regular: every ``frame_interval_s``. Irregular (dense-then-sparse): ~1 s frames
        for the first ``dense_phase_s``, then ~3 s, with a little jitter.
    dense_phase_s : float
        Length of the dense (~1 s) phase of irregular timing.
    frame_interval_s : float
        Sampling interval of regular timing.
    scan_duration_s : float or None
        Frames later than this are dropped (truncated bolus).
    noise_hu : float or None
        Gaussian noise sigma per voxel and frame; None: a clinical 80 kV perfusion
        protocol, 12 HU at 0.45 mm pixels and 5 mm slices, scaled by 0.45 / pixel_mm
        and sqrt(5 mm / slice_mm) (3 HU at the default 1.8 mm and 5 mm; a 1 mm slice
        collects a fifth of the photons). An ultra-low-dose scan is ~20 HU at 0.45 mm.
    lesion : {"none", "standard", "large", "malignant"}
        Lesion size class (see docs/phantom.md for the volumes).
    lesion_side : {"left", "right"}
        Hemisphere of the MCA occlusion.
    motion : {"none", "moderate", "severe"}
        Moderate: smooth in-plane rigid motion (<= ~4 mm, ~3 degrees) from 45 % of the
        scan on. Severe: moderate plus two frames with a jerk during the exposure (double
        contours, half of the frame nodded by one slice and turned).
    aif_peak_hu : float
        Peak of the first pass of the true arterial enhancement.
    residue_kind : {"exponential", "box", "linear"}
        Residue function of every tissue.
    arterial_arrival_s : float
        Time the arterial first pass starts on the scan clock (early arrival: good
        cardiac output or a late scan start; late: low cardiac output).
    bolus_width_scale : float
        Widens (> 1) the arterial first pass in time at the same area (so a lower peak)
        and delays its recirculation alike: 2 is the wide, low bolus of low cardiac output.
    artery_radius_scale : float
        Scales the radius of every artery; below ~0.6 the arteries cover less than
        0.5 % of the brain (small, partial-volumed arteries).
    """

    seed: int = 0
    matrix: int = 128
    fov_mm: float = 230.0
    slices: int = 8
    slice_mm: float = 5.0
    frames: int = 40
    timing: Literal["regular", "irregular"] = "regular"
    frame_interval_s: float = 1.5
    scan_duration_s: float | None = None
    noise_hu: float | None = None
    lesion: Literal["none", "standard", "large", "malignant"] = "standard"
    lesion_side: Literal["left", "right"] = "left"
    motion: Literal["none", "moderate", "severe"] = "none"
    aif_peak_hu: float = 400.0
    residue_kind: Literal["exponential", "box", "linear"] = "exponential"
    dense_phase_s: float = 30.0
    arterial_arrival_s: float = ARTERIAL_ARRIVAL_S
    bolus_width_scale: float = 1.0
    artery_radius_scale: float = 1.0

    @property
    def pixel_mm(self) -> float:
        """In-plane pixel size in mm."""
        return self.fov_mm / self.matrix

    @property
    def noise_sigma_hu(self) -> float:
        """The noise sigma actually used (``noise_hu`` or the clinical default)."""
        if self.noise_hu is not None:
            return float(self.noise_hu)
        return CLINICAL_NOISE_HU_AT_045MM * 0.45 / self.pixel_mm * np.sqrt(5.0 / self.slice_mm)


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


@dataclass(frozen=True)
class Anatomy:
    labels: np.ndarray  # (z, y, x) uint8
    base_hu: np.ndarray  # (z, y, x) float32
    pv_artery: np.ndarray  # (z, y, x) float32, normally filled arteries
    pv_occluded: np.ndarray  # (z, y, x) float32, arteries beyond the occlusion
    pv_sinus: np.ndarray  # (z, y, x) float32


@dataclass(frozen=True)
class Curves:
    fine_s: np.ndarray
    arterial: np.ndarray
    occluded: np.ndarray
    venous: np.ndarray
    tissue: np.ndarray  # (16, n_fine): class = 5 * tissue index + zone; 15 = no tissue
    parameters: list[dict[str, Any]]


def slice_positions_mm(options: CtpPhantomOptions) -> np.ndarray:
    """Patient z (mm) of the perfusion slice centres, increasing towards the head."""
    return _slab_centre_mm(options) + (np.arange(options.slices) - (options.slices - 1) / 2.0) * (
        options.slice_mm
    )


def phantom_affine(options: CtpPhantomOptions, slice_mm: float | None = None) -> np.ndarray:
    """Affine of the perfusion grid (or of a grid with other ``slice_mm`` over the slab).

    Parameters
    ----------
    options : CtpPhantomOptions
        Geometry of the study.
    slice_mm : float or None
        Slice spacing; None for the perfusion slices. Other spacings tile the same slab.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` voxel ``(x, y, z, 1)`` -> LPS mm; columns go to patient left, rows
        posterior, slices superior.
    """
    px = options.pixel_mm
    dz = options.slice_mm if slice_mm is None else slice_mm
    n = round(options.slices * options.slice_mm / dz)
    first_z = _slab_centre_mm(options) - (n - 1) / 2.0 * dz
    half = (options.matrix - 1) / 2.0 * px
    affine = np.diag([px, px, dz, 1.0])
    affine[:3, 3] = (-half, -half, first_z)
    return affine


def frame_times_s(options: CtpPhantomOptions) -> np.ndarray:
    """Frame times in seconds from the first frame, after truncation.

    Raises
    ------
    ValueError
        If fewer than two frames remain.
    """
    rng = np.random.default_rng([options.seed, 1])
    if options.timing == "regular":
        times = np.arange(options.frames) * options.frame_interval_s
    else:
        steps = np.empty(max(options.frames - 1, 0))
        t = 0.0
        for i in range(steps.size):
            step = 1.0 if t < options.dense_phase_s else 3.0
            steps[i] = step + rng.uniform(-0.1, 0.1) * step
            t += steps[i]
        times = np.concatenate([[0.0], np.cumsum(steps)])
    if options.scan_duration_s is not None:
        times = times[times <= options.scan_duration_s + 1e-9]
    if times.size < 2:
        raise ValueError(
            f"only {times.size} frame(s) within scan_duration_s={options.scan_duration_s}; "
            "need at least 2"
        )
    return np.asarray(times, dtype=np.float64)


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


def arterial_peak_time_s(options: CtpPhantomOptions | None = None) -> float:
    """Time of the first-pass arterial peak on the phantom's clock (for CT angiography)."""
    options = options or CtpPhantomOptions()
    # gamma_variate peaks at t0 + alpha * beta.
    return options.arterial_arrival_s + AIF_ALPHA * AIF_BETA_S * options.bolus_width_scale


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


def _slab_centre_mm(options: CtpPhantomOptions) -> float:
    # Table position of the slab centre: arbitrary but not zero, so that readers cannot
    # get away with ignoring ImagePositionPatient.
    return 42.5


Pose = tuple[float, float, float]  # (tx_mm, ty_mm, rotation_deg) of the head


def _in_plane_mm(
    options: CtpPhantomOptions, pose: Pose | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Head-frame coordinates (mm) of every pixel centre, for a head in ``pose``.

    The head moved as ``p_image = R p_head + t`` (rotation about the image centre), so
    pixels see ``p_head = R^T (p_image - t)``: a moved frame is rendered exactly, with no
    resampling blur, as a real scanner would image it.
    """
    coords = (np.arange(options.matrix) - (options.matrix - 1) / 2.0) * options.pixel_mm
    Y, X = np.meshgrid(coords, coords, indexing="ij")
    if pose is None or pose == (0.0, 0.0, 0.0):
        return X, Y
    tx, ty, rot = pose
    c, s = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
    Xs, Ys = X - tx, Y - ty
    return c * Xs + s * Ys, -s * Xs + c * Ys


def _slab_u(options: CtpPhantomOptions, z_mm: float) -> float:
    """Position in the slab in half-thicknesses: -1 bottom edge, +1 top edge."""
    half = options.slices * options.slice_mm / 2.0
    return (z_mm - _slab_centre_mm(options)) / half


def _partial_volume(distance_mm: np.ndarray, radius_mm: float, pixel_mm: float) -> np.ndarray:
    """Fraction of a pixel inside a vessel of ``radius_mm`` (linear edge over one pixel)."""
    return np.clip((radius_mm - distance_mm) / pixel_mm + 0.5, 0.0, 1.0)


def _segment_distance(
    X: np.ndarray, Y: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    s = np.clip(((X - ax) * dx + (Y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.asarray(np.hypot(X - ax - s * dx, Y - ay - s * dy))


def head_anatomy(options: CtpPhantomOptions, z_mm: np.ndarray, pose: Pose | None = None) -> Anatomy:
    """Labels, unenhanced HU and vessel partial volumes of the head in ``pose`` at ``z_mm``."""
    X, Y = _in_plane_mm(options, pose)
    shape = (z_mm.size, *X.shape)
    labels = np.zeros(shape, dtype=np.uint8)
    base = np.zeros(shape, dtype=np.float32)
    pv_art = np.zeros(shape, dtype=np.float32)
    pv_occ = np.zeros(shape, dtype=np.float32)
    pv_sin = np.zeros(shape, dtype=np.float32)
    px = options.pixel_mm
    occluded_sign = 0.0
    if options.lesion != "none":
        occluded_sign = 1.0 if options.lesion_side == "left" else -1.0
    r_mm = np.hypot(X, Y)
    phi = np.arctan2(Y, X)
    for k, z in enumerate(z_mm):
        u = _slab_u(options, float(z))
        shrink = 1.0 - 0.03 * u  # the head narrows towards the vertex
        ax, ay = HEAD_AX_MM * shrink, HEAD_AY_MM * shrink
        rho = np.hypot(X / ax, Y / ay)
        grad = np.hypot(X / ax**2, Y / ay**2)
        # First-order distance to the ellipse: (1 - rho) / |grad rho|, grad rho = grad / rho.
        depth = np.where(rho > 0.3, (1.0 - rho) * rho / np.maximum(grad, 1e-12), 1e3)
        lab = np.full(X.shape, WHITE, dtype=np.uint8)
        brain_depth = depth - _CSF_RIM_MM

        # Cortex: a ribbon under the surface, folded around radial sulci.
        grey = brain_depth < _CORTEX_MM - _CSF_RIM_MM
        # Radial sulci every 12 degrees; only the nearest one can reach a pixel at the
        # depths where sulci exist, so one lookup replaces a loop over all of them.
        nearest = np.rint((phi - _SULCUS_FIRST_RAD) / _SULCUS_STEP_RAD)
        offset = phi - (_SULCUS_FIRST_RAD + nearest * _SULCUS_STEP_RAD)
        across = r_mm * np.abs(np.sin(offset))
        index = nearest.astype(np.intp) % _SULCUS_COUNT
        sulcus_depth = (10.0 + 4.0 * np.sin(1.7 * np.arange(_SULCUS_COUNT) + 2.0 * u))[index]
        sulcus = (across < 0.8) & (brain_depth < sulcus_depth)
        grey |= (across < 4.0) & (brain_depth < sulcus_depth + 2.5)
        # Interhemispheric fissure with the medial cortex, in front of and behind the
        # corpus callosum.
        fissure_zone = (-30.0 + 4.0 * u > Y) | (32.0 - 4.0 * u < Y)
        grey |= fissure_zone & (np.abs(X) < 3.8)
        sulcus |= fissure_zone & (np.abs(X) < 0.9)
        # Sylvian fissures and insular cortex (lower and middle slab).
        y_sylvian = -6.0 + 4.0 * u
        if u < 0.6:
            ins = (np.abs(Y - y_sylvian) < 15.0) & (np.abs(X) > 33.0) & (np.abs(X) < 37.0)
            grey |= ins | ((np.abs(Y - y_sylvian) < 4.5) & (np.abs(X) > 35.0))
            sulcus |= (np.abs(Y - y_sylvian) < 1.6) & (np.abs(X) > 37.0)
        lab[grey] = GREY

        # Deep grey matter: lentiform and caudate nuclei, thalami.
        deep = np.zeros(X.shape, dtype=bool)
        if u < 0.45:
            deep |= np.hypot((np.abs(X) - 20.0) / 6.5, (Y + 3.0) / 13.0) < 1.0
            deep |= np.hypot((np.abs(X) - 10.0) / 4.0, (Y + 18.0) / 6.0) < 1.0
        if u < 0.25:
            deep |= np.hypot((np.abs(X) - 9.0) / 7.0, (Y - 10.0) / 9.0) < 1.0
        lab[deep] = DEEP_GREY
        lab[sulcus] = CSF

        # Lateral ventricles: bodies widening upwards, occipital horns low in the slab.
        grow = (1.0 + u) / 2.0
        vent = np.hypot((np.abs(X) - 4.0 - 1.5 * grow) / (2.5 + 2.0 * grow), (Y + 5.0) / 19.0) < 1
        if u < 0.0:
            vent |= np.hypot((np.abs(X) - 14.0) / 3.0, (Y - 27.0) / 7.0) < 1.0
        lab[vent] = VENTRICLE

        # Outer layers.
        lab[brain_depth < 0] = CSF
        lab[depth < _SKULL_OUT_MM] = SKULL
        lab[depth < _SCALP_MM] = SCALP
        lab[depth < 0] = AIR

        # Vessels. Arteries: anterior cerebral arteries near the midline, M1 along the
        # sylvian fissure low in the slab, M2 branches in the fissure above it.
        pv_a = np.zeros(X.shape)
        pv_o = np.zeros(X.shape)
        for side in (-1.0, 1.0):
            pieces = [(np.hypot(X - side * 2.3, Y + 33.0), 1.8, False)]
            if u < -0.2:
                pieces.append(
                    (_segment_distance(X, Y, (side * 12, -10), (side * 22, -9)), 1.9, False)
                )
                pieces.append(
                    (_segment_distance(X, Y, (side * 22, -9), (side * 36, -7)), 1.9, True)
                )
            else:
                pieces.append((np.hypot(X - side * 41.0, Y - y_sylvian + 2.0), 1.7, True))
                pieces.append((np.hypot(X - side * 45.0, Y - y_sylvian - 5.0), 1.7, True))
            for dist, radius, distal in pieces:
                pv = ARTERY_PV * _partial_volume(dist, radius * options.artery_radius_scale, px)
                if distal and side == occluded_sign:
                    pv_o = np.maximum(pv_o, pv)
                else:
                    pv_a = np.maximum(pv_a, pv)
        # Superior sagittal sinus: posterior midline under the skull, ~9 mm wide.
        sinus_y = ay - _CSF_RIM_MM - 4.5
        pv_s = _partial_volume(np.hypot(X, Y - sinus_y), 4.5, px)
        vessel = (pv_a > 0) | (pv_o > 0) | (pv_s > 0)
        lab[(pv_a > 0) | (pv_o > 0)] = ARTERY
        lab[pv_s > 0] = SINUS

        b = np.zeros(X.shape, dtype=np.float32)
        for code, value in BASE_HU.items():
            b[lab == code] = value
        skull = lab == SKULL
        # Dense outer and inner tables around a lighter diploe.
        frac = (depth[skull] - _SCALP_MM) / (_SKULL_OUT_MM - _SCALP_MM)
        b[skull] = 1200.0 + 300.0 * np.abs(2.0 * frac - 1.0)
        b[vessel] = BASE_HU[ARTERY]
        labels[k], base[k] = lab, b
        pv_art[k], pv_occ[k], pv_sin[k] = pv_a, pv_o, pv_s
    return Anatomy(labels, base, pv_art, pv_occ, pv_sin)


def _lesion_scale(options: CtpPhantomOptions) -> float:
    """In-plane scale of the lesion blobs for slabs other than the 40 mm reference.

    The blobs span a fixed fraction of the slab in z, so their volume grows with the
    slab; shrinking them in-plane by sqrt(40 mm / slab) keeps the volumes (and the
    decisions) close to the reference ones, within the limits the hemisphere allows.
    """
    slab = options.slices * options.slice_mm
    return float(np.clip(np.sqrt(REFERENCE_SLAB_MM / slab), 0.7, 1.3))


def lesion_zones(
    options: CtpPhantomOptions, z_mm: np.ndarray, labels: np.ndarray, pose: Pose | None = None
) -> np.ndarray:
    """Perfusion zone of every tissue voxel (0 normal ... 4 core) for the options' lesion."""
    zones = np.zeros(labels.shape, dtype=np.uint8)
    if options.lesion == "none":
        return zones
    side = 1.0 if options.lesion_side == "left" else -1.0
    X, Y = _in_plane_mm(options, pose)
    phi = np.arctan2(Y, side * X)
    rng = np.random.default_rng([options.seed, 3])
    # Slightly irregular outline: a few low angular harmonics, per zone, seeded.
    harmonics = rng.uniform(0.0, 2.0 * np.pi, size=(5, 3))
    scale = _lesion_scale(options)
    tissue = np.isin(labels, TISSUE_LABELS)
    inside = np.ones(labels.shape, dtype=bool)
    for zone, (cx, cy, sx, sy, su) in sorted(_LESIONS[options.lesion].items()):
        wobble = 1.0 + sum(0.04 * np.cos((n + 2) * phi + harmonics[zone, n]) for n in range(3))
        q_plane = np.hypot((side * X - cx * scale) / (sx * scale), (Y - cy * scale) / (sy * scale))
        mask = np.zeros(labels.shape, dtype=bool)
        for k, z in enumerate(z_mm):
            mask[k] = np.hypot(q_plane, _slab_u(options, float(z)) / su) < wobble
        inside &= mask
        zones[inside] = zone
    # Never cross the midline; lesions live in tissue only.
    medial = np.broadcast_to(side * X < 2.0, labels.shape)
    zones[medial | ~tissue] = 0
    return zones


def _tissue_parameters(
    options: CtpPhantomOptions, labels: np.ndarray
) -> tuple[list[dict[str, Any]], float]:
    """CBF, MTT and delay for every (tissue, zone) class and the mean normal CBF."""
    counts = {lab: int(np.count_nonzero(labels == lab)) for lab in TISSUE_LABELS}
    total = sum(counts.values())
    if total:
        mean_cbf = sum(NORMAL_PERFUSION[lab][0] * n for lab, n in counts.items()) / total
    else:
        mean_cbf = float(np.mean([v[0] for v in NORMAL_PERFUSION.values()]))
    params = []
    for lab in TISSUE_LABELS:
        cbf0, mtt0 = NORMAL_PERFUSION[lab]
        for zone in range(5):
            if zone == 0:
                cbf, mtt, delay = cbf0, mtt0, 0.0
            elif zone == 4:
                cbf, mtt, delay = CORE_PERFUSION
            else:
                f_cbf, f_mtt, delay = ZONE_FACTORS[zone]
                cbf, mtt = max(f_cbf * cbf0, MIN_NONCORE_RCBF * mean_cbf), f_mtt * mtt0
            params.append(
                {
                    "label": LABEL_NAMES[lab],
                    "zone": ZONE_NAMES[zone],
                    "cbf_ml_100g_min": round(cbf, 3),
                    "mtt_s": round(mtt, 3),
                    "cbv_ml_100g": round(cbf * mtt / 60.0, 3),
                    "tmax_s": delay,
                }
            )
    return params, float(mean_cbf)


def perfusion_curves(options: CtpPhantomOptions, labels: np.ndarray, end_s: float) -> Curves:
    """Arterial, venous, occluded-MCA and per-class tissue curves on a 0.1 s grid."""
    fine = np.arange(0.0, end_s + 0.1 + 1e-9, 0.1)
    width = options.bolus_width_scale
    # A wider bolus of the same dose is lower: the peak scales as 1 / width, so the
    # arterial area (and every tissue's enhancement per unit CBV) is kept.
    arterial = arterial_input(
        fine,
        options.arterial_arrival_s,
        options.aif_peak_hu / width,
        alpha=AIF_ALPHA,
        beta_s=AIF_BETA_S * width,
        recirculation_delay_s=9.0 * width,
    )
    occluded = OCCLUDED_FRACTION * venous_outflow(fine, arterial, OCCLUDED_DELAY_S, 3.0)
    venous = venous_outflow(fine, arterial, VENOUS_DELAY_S, VENOUS_DISPERSION_S)
    params, _ = _tissue_parameters(options, labels)
    tissue = np.zeros((16, fine.size), dtype=np.float64)
    for i, p in enumerate(params):
        tissue[i] = tissue_enhancement(
            fine,
            arterial,
            p["cbf_ml_100g_min"],
            p["mtt_s"],
            delay_s=p["tmax_s"],
            residue_kind=options.residue_kind,
        )
    return Curves(fine, arterial, occluded, venous, tissue, params)


def class_map(labels: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Index of each voxel's tissue curve: 5 x tissue label index + zone (15: none)."""
    classes = np.full(labels.shape, 15, dtype=np.intp)
    for i, lab in enumerate(TISSUE_LABELS):
        sel = labels == lab
        classes[sel] = 5 * i + zones[sel]
    return classes


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
    params, mean_cbf = _tissue_parameters(options, labels)

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
