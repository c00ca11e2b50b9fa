"""Lesion masks from the perfusion maps: thresholds, clean-up, volumes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeflow.analysis.brainmask import BrainMasks
from strokeflow.analysis.decisions import (
    HYPOPERFUSION_TMAX_S,
    SEVERE_HYPOPERFUSION_TMAX_S,
    extra_tmax_thresholds_s,
)
from strokeflow.analysis.hemispheres import LEFT, RIGHT, Hemispheres, side_name
from strokeflow.analysis.maps import PerfusionMaps
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry

#: Tissue with Tmax below this is "normally perfused" and serves as the rCBF reference.
NORMAL_TMAX_S = 4.0


def clean_mask(
    mask: np.ndarray,
    allowed: np.ndarray,
    voxel_volume_ml: float,
    min_cluster_ml: float,
    *,
    vote_px: int = 3,
) -> np.ndarray:
    """Remove speckle and small clusters from a thresholded ``(z, y, x)`` mask.

    A ``vote_px`` x ``vote_px`` in-plane majority vote (counted over ``allowed`` voxels
    only) removes isolated noise voxels and fills pinholes inside a lesion without moving
    a straight border; then 3D-connected clusters smaller than ``min_cluster_ml`` are
    dropped.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(z, y, x)`` bool raw thresholded mask.
    allowed : numpy.ndarray
        ``(z, y, x)`` bool voxels that may be lesion (brain tissue).
    voxel_volume_ml : float
        Volume of one voxel.
    min_cluster_ml : float
        Smallest cluster kept.
    vote_px : int
        Odd side of the vote's in-plane window, >= 3.

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` bool cleaned mask, a subset of ``allowed``.

    Raises
    ------
    ValueError
        If ``vote_px`` is not an odd number >= 3.
    """
    if vote_px < 3 or vote_px % 2 == 0:
        raise ValueError(f"vote_px must be an odd number >= 3; got {vote_px}")
    votes = _inplane_count(mask & allowed, vote_px)
    voters = _inplane_count(allowed, vote_px)
    majority = (2 * votes > voters) & allowed
    labels, count = ndimage.label(majority, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return majority
    sizes = np.bincount(labels.ravel())
    min_voxels = min_cluster_ml / voxel_volume_ml
    keep = sizes >= min_voxels
    keep[0] = False
    return np.asarray(keep[labels])


def fill_unmeasured(mask: np.ndarray, tissue: np.ndarray, unmeasured: np.ndarray) -> np.ndarray:
    """Extend a lesion mask into unmeasured tissue voxels by their measured neighbours.

    A voxel of ``unmeasured`` (brain tissue whose curve is contaminated by a vessel or
    the skull, see ``BrainMasks``) joins the lesion when more than half of the measured
    tissue voxels of its 3 x 3 in-plane neighbourhood are lesion: the lesion volume then
    counts the tissue beside a vessel or under the skull like the tissue around it.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(z, y, x)`` bool lesion mask, a subset of ``tissue``.
    tissue : numpy.ndarray
        ``(z, y, x)`` bool measured tissue.
    unmeasured : numpy.ndarray
        ``(z, y, x)`` bool unmeasured tissue.

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` bool: ``mask`` plus the unmeasured voxels it surrounds.
    """
    votes = _inplane_count(mask & tissue)
    voters = _inplane_count(tissue)
    return np.asarray(mask | (unmeasured & (2 * votes > voters)))


def reference_cbf(cbf: np.ndarray, normal: np.ndarray, unmeasured: np.ndarray) -> float:
    """Mean CBF of the normal tissue, the unmeasured tissue beside it counted too.

    The rims beside vessels and the skull are cortex, the best-perfused tissue; left out,
    they leave a sample of mostly deeper, white-matter-rich tissue and a reference about
    4 % below the mean of the normal tissue (``docs/deconvolution.md``). An unmeasured
    voxel cannot be read (its curve mixes blood or bone), so it counts as the mean of the
    normal voxels of its 3 x 3 in-plane neighbourhood, as ``fill_unmeasured`` counts it
    as lesion by its neighbours.

    Parameters
    ----------
    cbf : numpy.ndarray
        ``(z, y, x)`` CBF, finite on ``normal``.
    normal : numpy.ndarray
        ``(z, y, x)`` bool normal measured tissue the reference is taken from.
    unmeasured : numpy.ndarray
        ``(z, y, x)`` bool unmeasured tissue (``BrainMasks.unmeasured``).

    Returns
    -------
    float
        The reference CBF, in the unit of ``cbf``.
    """
    kernel = np.ones((1, 3, 3), dtype=np.float64)
    values = np.where(normal, cbf, 0.0).astype(np.float64)
    sums = ndimage.convolve(values, kernel, mode="constant")
    counts = _inplane_count(normal)
    beside = unmeasured & ~normal & (counts > 0)
    total = float(values[normal].sum() + (sums[beside] / counts[beside]).sum())
    return total / max(1, int(np.count_nonzero(normal)) + int(np.count_nonzero(beside)))


def _inplane_count(mask: np.ndarray, size: int = 3) -> np.ndarray:
    """Per voxel, the True voxels of its ``size`` x ``size`` in-plane neighbourhood."""
    _, ny, nx = mask.shape
    r = size // 2
    padded = np.pad(mask.astype(np.uint8), ((0, 0), (r, r), (r, r)))
    count = np.zeros(mask.shape, dtype=np.uint8)
    for dy in range(size):
        for dx in range(size):
            count += padded[:, dy : dy + ny, dx : dx + nx]
    return count


def volume_ml(mask: np.ndarray, voxel_volume_ml: float) -> float:
    """Volume of a boolean mask in mL."""
    return float(np.count_nonzero(mask)) * voxel_volume_ml


@dataclass(frozen=True)
class TmaxRegion:
    """Tissue with Tmax above a site-configured threshold (beside the published 6 s, 10 s).

    Attributes
    ----------
    threshold_s : float
        The threshold, in seconds; it names the region everywhere (``Tmax > 8 s``).
    mask : numpy.ndarray
        ``(z, y, x)`` bool mask on the analysis grid.
    volume_ml : float
        Its volume, rounded to 0.1 mL like the published volumes.
    """

    threshold_s: float
    mask: np.ndarray
    volume_ml: float

    def __post_init__(self) -> None:
        if not self.threshold_s > 0:
            raise ValueError(f"Tmax threshold must be above 0 s; got {self.threshold_s}")
        if self.mask.dtype != bool or self.mask.ndim != 3:
            raise ValueError(f"Tmax > {self.threshold_s:g} s mask must be (z, y, x) bool")
        if self.volume_ml < 0:
            raise ValueError(f"Tmax > {self.threshold_s:g} s volume must not be negative")


def extra_tmax_regions(
    thresholds_s: Iterable[float],
    cleaned_above: Callable[[float], np.ndarray],
    tmax6: np.ndarray,
    voxel_volume_ml: float,
) -> tuple[TmaxRegion, ...]:
    """The regions of a site's Tmax thresholds other than the published 6 s and 10 s.

    Each is nested with the published Tmax > 6 s region, as Tmax > 10 s is: below 6 s it
    contains it (and so the core), above 6 s it lies inside it.

    Parameters
    ----------
    thresholds_s : iterable of float
        The configured ``tmax_thresholds_s``.
    cleaned_above : callable
        ``t -> (z, y, x) bool`` cleaned mask of Tmax above ``t`` seconds.
    tmax6 : numpy.ndarray
        The published Tmax > 6 s mask (core included).
    voxel_volume_ml : float
        Volume of one voxel.

    Returns
    -------
    tuple of TmaxRegion
        By ascending threshold.
    """
    regions = []
    for t in extra_tmax_thresholds_s(thresholds_s):
        above = cleaned_above(t)
        mask = above | tmax6 if t < HYPOPERFUSION_TMAX_S else above & tmax6
        regions.append(TmaxRegion(t, mask, round(volume_ml(mask, voxel_volume_ml), 1)))
    return tuple(regions)


def tmax_above(
    maps: PerfusionMaps,
    tissue: np.ndarray,
    voxel_volume_ml: float,
    min_cluster_ml: float,
    threshold_s: float,
    unmeasured: np.ndarray | None = None,
    *,
    vote_px: int = 3,
) -> np.ndarray:
    """Cleaned ``(z, y, x)`` mask of the tissue whose Tmax exceeds ``threshold_s``.

    One definition for the published thresholds and a site's own, so that they differ
    only in the threshold (a NaN Tmax counts as 0 s). With ``unmeasured`` (the vessel and
    skull rims, ``BrainMasks.unmeasured``) the mask extends into the rims it surrounds
    (``fill_unmeasured``), as the core does: the hypoperfused volume counts the tissue
    beside a vessel or under the skull like the tissue around it. ``vote_px`` is the
    window of ``clean_mask``'s majority vote (``CtpSettings.tmax_vote_px``).
    """
    tmax = np.nan_to_num(maps.tmax_s, nan=0.0)
    mask = clean_mask(tmax > threshold_s, tissue, voxel_volume_ml, min_cluster_ml, vote_px=vote_px)
    if unmeasured is not None:
        mask = fill_unmeasured(mask, tissue, unmeasured)
    return mask


def ctp_lesion_masks(
    maps: PerfusionMaps,
    masks: BrainMasks,
    hemis: Hemispheres,
    geometry: Geometry,
    settings: CtpSettings,
    *,
    fill_tmax_rims: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, str, str | None]:
    """Core, Tmax > 6 s and Tmax > 10 s masks of a CT perfusion analysis, and rCBF.

    The Tmax masks use the published thresholds (``decisions.PUBLISHED_TMAX_S``), never
    ``settings.tmax_thresholds_s``: the rule sets were defined on them. They read
    ``maps.tmax_s`` and, with ``fill_tmax_rims``, extend into the unmeasured rims they
    surround (``tmax_above``); the rCBF reference tissue and the core's Tmax condition
    read ``maps.core_tmax_s`` (the single-delay readout where the maps hold two). The
    reference is the mean of ``maps.reference_cbf_ml_100g_min`` where the maps hold it
    (the self-calibrated CBF), and the core is where ``rCBF + k * sd / reference`` is below
    the threshold, ``sd`` the voxel's ``maps.cbf_noise_sd_ml_100g_min`` and ``k`` the
    ``settings.core_noise_margin_k`` (no margin without the noise map).

    Returns
    -------
    tuple
        ``(core, tmax6, tmax10, rcbf, reference_cbf, reference_text, lesion_side)``:
        bool ``(z, y, x)`` masks (the core is included in Tmax > 6 s and extends into
        the unmeasured tissue it surrounds, ``fill_unmeasured``), the relative CBF map,
        the reference CBF (mL/100 g/min) and how it was taken, and the lesion side.
    """
    tissue = masks.tissue
    vv = geometry.voxel_volume_ml
    tmax = np.nan_to_num(maps.core_tmax_s, nan=0.0)
    rims = masks.unmeasured if fill_tmax_rims else None
    vote = settings.tmax_vote_px
    tmax6 = tmax_above(
        maps, tissue, vv, settings.min_cluster_ml, HYPOPERFUSION_TMAX_S, rims, vote_px=vote
    )
    tmax10 = tmax_above(
        maps, tissue, vv, settings.min_cluster_ml, SEVERE_HYPOPERFUSION_TMAX_S, rims, vote_px=vote
    )
    tmax10 &= tmax6
    n_left = np.count_nonzero(tmax6 & (hemis.side == LEFT))
    n_right = np.count_nonzero(tmax6 & (hemis.side == RIGHT))
    lesion = 0
    if max(n_left, n_right) * vv >= 5.0:
        lesion = LEFT if n_left >= n_right else RIGHT
    cbf = np.nan_to_num(maps.cbf_ml_100g_min, nan=0.0)
    normal = tissue & (tmax < NORMAL_TMAX_S)
    if lesion != 0:
        contralateral = normal & (hemis.side == -lesion)
        reference_text = (
            f"mean CBF of {side_name(-lesion)} (contralateral) hemisphere tissue "
            f"with Tmax < {NORMAL_TMAX_S:g} s"
        )
    else:
        contralateral = normal
        reference_text = f"mean CBF of all brain tissue with Tmax < {NORMAL_TMAX_S:g} s"
    if np.count_nonzero(contralateral) < 50:
        contralateral = tissue
        reference_text = "mean CBF of all brain tissue (too little normal tissue)"
    # The reference from the self-calibrated map where the maps hold one (the voxels stay
    # as read); the core's rCBF plus a margin of the voxel's readout noise.
    ref_map = maps.reference_cbf_ml_100g_min
    ref_source = cbf if ref_map is None else np.nan_to_num(ref_map, nan=0.0)
    reference = reference_cbf(ref_source, contralateral, masks.unmeasured)
    rcbf = np.where(tissue, cbf / max(reference, 1e-6), np.nan).astype(np.float32)
    core_rcbf = rcbf
    sd = maps.cbf_noise_sd_ml_100g_min
    if sd is not None and settings.core_noise_margin_k > 0:
        # Where the noise could not be estimated (too short a baseline) no margin.
        margin = settings.core_noise_margin_k * np.nan_to_num(sd, nan=0.0) / max(reference, 1e-6)
        core_rcbf = rcbf + margin
    raw_core = np.nan_to_num(core_rcbf, nan=1.0) < settings.core_rcbf_threshold
    if settings.core_requires_tmax_s > 0:
        raw_core &= tmax > settings.core_requires_tmax_s
    core = clean_mask(raw_core, tissue, vv, settings.min_cluster_ml)
    core = fill_unmeasured(core, tissue, masks.unmeasured)
    # Core is part of the hypoperfused tissue by definition.
    tmax6 |= core
    return core, tmax6, tmax10, rcbf, reference, reference_text, side_name(lesion)
