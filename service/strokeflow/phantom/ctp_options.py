"""What the CT perfusion phantom simulates, on which grid and at which frame times.

Label codes (``CtpPhantom.labels``): 0 air, 1 scalp, 2 skull, 3 sulcal/cisternal CSF,
4 ventricle, 5 cortical grey matter, 6 deep grey matter, 7 white matter, 8 artery,
9 venous sinus. Tissue = 5, 6, 7. Zone codes (``CtpPhantom.zones``, tissue voxels
only): 0 normal, 1 benign oligaemia, 2 penumbra, 3 severe penumbra (Tmax > 10 s), 4 core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

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

#: Time the arterial first pass starts on the scan clock (default of the options).
ARTERIAL_ARRIVAL_S = 8.0


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


def slice_positions_mm(options: CtpPhantomOptions) -> np.ndarray:
    """Patient z (mm) of the perfusion slice centres, increasing towards the head."""
    return slab_centre_mm(options) + (np.arange(options.slices) - (options.slices - 1) / 2.0) * (
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
    first_z = slab_centre_mm(options) - (n - 1) / 2.0 * dz
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


def slab_centre_mm(options: CtpPhantomOptions) -> float:
    """Patient z (mm) of the slab centre.

    A table position that is arbitrary but not zero, so that readers cannot get away
    with ignoring ImagePositionPatient.
    """
    return 42.5
