"""Bolus arrival, and automatic arterial input (AIF) and venous output (VOF) curves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeflow.analysis.volume import Geometry
from strokeflow.analysis.voxels import voxel_curves


@dataclass(frozen=True)
class VascularCurve:
    """A measured vascular curve and where it was taken.

    Attributes
    ----------
    curve : numpy.ndarray
        ``(n,)`` enhancement above baseline on the analysis time grid.
    voxels_zyx : numpy.ndarray
        ``(k, 3)`` indices of the voxels averaged.
    peak : float
        Maximum of ``curve``.
    ttp_s : float
        Time of the maximum on the analysis grid.
    fwhm_s : float
        Full width at half maximum.
    tail_fraction : float
        Last value over the peak: near 0 when the bolus has washed out.
    """

    curve: np.ndarray
    voxels_zyx: np.ndarray
    peak: float
    ttp_s: float
    fwhm_s: float
    tail_fraction: float

    def location_lps_mm(self, geometry: Geometry) -> list[float]:
        """Mean position of the voxels in patient coordinates (mm)."""
        zyx = self.voxels_zyx.mean(axis=0)
        xyz1 = np.array([zyx[2], zyx[1], zyx[0], 1.0])
        return [round(float(v), 1) for v in (geometry.affine_lps @ xyz1)[:3]]


def bolus_arrival_index(signal: np.ndarray, brain: np.ndarray) -> int:
    """Index of the first frame in which contrast has arrived.

    The arterial signal rises first and most: the 99.5th percentile of the brain's
    enhancement over the first frame is followed until it exceeds 20 % of its maximum.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(n, z, y, x)`` signal on the uniform time grid.
    brain : numpy.ndarray
        ``(z, y, x)`` bool intracranial mask.

    Returns
    -------
    int
        Frame index ``>= 1`` (at least one baseline frame is kept).
    """
    inside = voxel_curves(signal, brain)
    early = np.median(inside[: min(3, inside.shape[0])], axis=0)
    high = np.percentile(inside - early, 99.5, axis=1)
    rise = high - high[0]
    top = float(rise.max())
    if top <= 0:
        return 1
    above = np.nonzero(rise > 0.2 * top)[0]
    # The frame before the first clear rise is still baseline (partial arrival).
    return max(1, int(above[0]) - 1) if above.size else 1


#: A voxel has risen when its enhancement exceeds this fraction of its own peak and stays
#: above it for ``_RISE_FRAMES`` frames: the start of the first pass, not a noise spike.
_RISE_FRACTION = 0.15
_RISE_FRAMES = 3


def rise_index(curves: np.ndarray) -> np.ndarray:
    """First frame of each curve's sustained rise above 15 % of its own peak.

    Parameters
    ----------
    curves : numpy.ndarray
        ``(n, k)`` enhancement curves (signal minus an early baseline).

    Returns
    -------
    numpy.ndarray
        ``(k,)`` int frame indices; ``n`` where a curve never rises.
    """
    n = curves.shape[0]
    # A 3-frame running mean keeps a single noisy frame from starting the rise.
    padded = np.concatenate([curves[:1], curves, curves[-1:]], axis=0)
    smooth = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
    above = smooth > _RISE_FRACTION * smooth.max(axis=0)
    run = min(_RISE_FRAMES, n)
    sustained = above[: n - run + 1].copy()
    for lag in range(1, run):
        sustained &= above[lag : n - run + 1 + lag]
    first = np.where(sustained.any(axis=0), sustained.argmax(axis=0), n)
    return np.asarray(first, dtype=np.intp)


def arterial_rise_index(signal: np.ndarray, search: np.ndarray, min_voxels: int = 3) -> int | None:
    """Frame in which the earliest strongly enhancing voxels of ``search`` start to rise.

    Arteries fill first, but a small artery is too few voxels to move a brain-wide
    percentile: the arrival is taken from the strongly enhancing voxels themselves
    (enhancement above a quarter of the strongest: arteries and veins, never tissue),
    as the ``min_voxels``-th earliest rise among them, so that a few noisy voxels do not
    make it early and a late-filling vein cannot make it late.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(n, z, y, x)`` signal on the uniform time grid (enhancement is positive).
    search : numpy.ndarray
        ``(z, y, x)`` bool blood-like voxels (brain and vessels, no bone).
    min_voxels : int
        How many voxels must have risen.

    Returns
    -------
    int or None
        Frame index of the rise; None when fewer than ``min_voxels`` voxels enhance strongly.
    """
    curves = voxel_curves(signal, search)
    if curves.shape[1] < min_voxels or curves.shape[0] < 4:
        return None
    early = np.median(curves[: min(3, curves.shape[0])], axis=0)
    enhancement = curves - early
    peak = enhancement.max(axis=0)
    # The 99.9th percentile, not the maximum: one corrupt voxel must not set the scale.
    top = float(np.percentile(peak, 99.9))
    if top <= 0:
        return None
    strong = peak > 0.25 * top
    if np.count_nonzero(strong) < min_voxels:
        return None
    rises = np.sort(rise_index(enhancement[:, strong]))
    first = int(rises[min_voxels - 1])
    return first if first < curves.shape[0] else None


def first_pass_start(signal: np.ndarray, voxels_zyx: np.ndarray) -> int | None:
    """Frame in which the mean raw curve of the given voxels starts its first pass.

    Used to check that the baseline frames hold no arterial first pass: measured on the
    signal itself, so a baseline that swallowed the rise cannot hide it.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(n, z, y, x)`` signal on the uniform time grid.
    voxels_zyx : numpy.ndarray
        ``(k, 3)`` voxel indices (e.g. ``VascularCurve.voxels_zyx``).

    Returns
    -------
    int or None
        Frame index; None when the curve does not rise.
    """
    z, y, x = (np.asarray(voxels_zyx, dtype=np.intp)[:, i] for i in range(3))
    curve = signal[:, z, y, x].astype(np.float64).mean(axis=1)
    enhancement = curve - float(np.median(curve[: min(3, curve.size)]))
    if enhancement.max() <= 0:
        return None
    first = int(rise_index(enhancement[:, None])[0])
    return first if first < curve.size else None


def _features(curves: np.ndarray, step_s: float) -> tuple[np.ndarray, ...]:
    """Peak, time to peak, FWHM and tail fraction of ``(n, k)`` curves."""
    peak = curves.max(axis=0)
    ttp = curves.argmax(axis=0).astype(np.float64) * step_s
    above_half = curves >= 0.5 * peak
    fwhm = above_half.sum(axis=0).astype(np.float64) * step_s
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(peak > 0, curves[-1] / peak, 1.0)
        roughness = np.where(
            peak > 0, np.abs(np.diff(curves, n=2, axis=0)).sum(axis=0) / peak, np.inf
        )
    return peak, ttp, fwhm, tail, roughness


def _summarise(curves: np.ndarray, voxels: np.ndarray, step_s: float) -> VascularCurve:
    curve = curves.mean(axis=1)
    peak, ttp, fwhm, tail, _ = _features(curve[:, None], step_s)
    return VascularCurve(
        curve=curve.astype(np.float64),
        voxels_zyx=voxels,
        peak=float(peak[0]),
        ttp_s=float(ttp[0]),
        fwhm_s=float(fwhm[0]),
        tail_fraction=float(tail[0]),
    )


def select_aif(
    concentration: np.ndarray,
    search: np.ndarray,
    step_s: float,
    voxel_volume_ml: float,
    n_voxels: int = 6,
) -> VascularCurve | None:
    """Find the arterial input among the voxels of ``search``.

    Candidates are the 1 % most enhancing voxels. Arteries are the earliest, narrowest
    and smoothest of them, in small vessel segments (area filter: clusters above
    2 mL are sinuses or confluent veins). Candidates are clustered by their time to peak
    and the earliest cluster wins; its ``n_voxels`` highest-peaking voxels are averaged.

    Parameters
    ----------
    concentration : numpy.ndarray
        ``(n, z, y, x)`` enhancement above baseline (not smoothed).
    search : numpy.ndarray
        ``(z, y, x)`` bool where to look (the unaffected hemisphere).
    step_s : float
        Time step of the grid.
    voxel_volume_ml : float
        Voxel volume, for the area filter.
    n_voxels : int
        Number of voxels averaged into the final curve.

    Returns
    -------
    VascularCurve or None
        None when no voxel looks arterial.
    """
    idx = np.argwhere(search)
    if idx.shape[0] < n_voxels:
        return None
    curves = voxel_curves(concentration, search)
    n_cand = int(np.clip(0.01 * idx.shape[0], 20, 400))
    # Only the candidates' curves are described further (the same features, a fraction
    # of the work): from here on, positions index the candidates.
    order = np.argsort(curves.max(axis=0))[::-1][:n_cand]
    curves, idx = curves[:, order], idx[order]
    peak, ttp, fwhm, tail, roughness = _features(curves, step_s)
    # Area filter: drop candidates in large enhancing clusters (sinuses, confluence).
    cand_mask = np.zeros(search.shape, dtype=bool)
    cand_mask[tuple(idx.T)] = True
    labels, _ = ndimage.label(cand_mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    size_ml = sizes[labels[tuple(idx.T)]] * voxel_volume_ml
    ok = (size_ml <= 2.0) & (tail < 0.5) & (peak > 0)
    # Smoothness: drop the roughest third (noise spikes, not bolus curves).
    ok &= roughness <= np.percentile(roughness[ok], 67) if ok.any() else ok
    kept = np.flatnonzero(ok)
    if kept.size < 2:
        return None
    # Earliest arrivals first; then the narrowest and highest.
    t_first = float(ttp[kept].min())
    early = kept[ttp[kept] <= t_first + 2.0 * step_s + 1.0]
    if early.size < n_voxels:
        early = kept[np.argsort(ttp[kept])[: max(n_voxels, 2)]]
    score = peak[early] / np.maximum(fwhm[early], step_s)
    chosen = early[np.argsort(score)[::-1][:n_voxels]]
    return _summarise(curves[:, chosen], idx[chosen], step_s)


def select_vof(
    concentration: np.ndarray,
    search: np.ndarray,
    aif: VascularCurve,
    step_s: float,
    n_voxels: int = 6,
) -> VascularCurve | None:
    """Find the venous output: the largest-area curve peaking after the artery.

    Large veins (superior sagittal sinus) are free of partial volume, so their area
    is the truest measure of the bolus; ``search`` should hold the posterior brain near
    the midline, where the sinus runs.

    Returns
    -------
    VascularCurve or None
        None when no later-peaking voxel exists.
    """
    idx = np.argwhere(search)
    if idx.shape[0] < n_voxels:
        return None
    curves = voxel_curves(concentration, search)
    peak, ttp, _, tail, _ = _features(curves, step_s)
    area = curves.sum(axis=0) * step_s
    later = (ttp > aif.ttp_s + step_s) & (peak > 0.5 * aif.peak)
    if np.count_nonzero(later) < n_voxels:
        later = (ttp > aif.ttp_s) & (peak > 0.25 * aif.peak)
    # Prefer curves that wash out: a step that never returns is bone smeared into the
    # voxel by motion correction, not blood. Only when none washes out (a scan too
    # short for the bolus) are the others used, and the truncation is then flagged.
    washing_out = later & (tail < 0.5)
    if np.count_nonzero(washing_out) >= n_voxels:
        later = washing_out
    if np.count_nonzero(later) < 2:
        return None
    cand = np.nonzero(later)[0]
    chosen = cand[np.argsort(area[cand])[::-1][:n_voxels]]
    return _summarise(curves[:, chosen], idx[chosen], step_s)


def partial_volume_scale(aif: VascularCurve, vof: VascularCurve | None) -> float:
    """Factor by which the AIF is scaled so its area matches the venous area.

    Small arteries are partial-volumed, which would overestimate CBF and CBV; the
    sinus is not. The factor is kept within 1..3: a vein smaller than the artery means
    the vein was partial-volumed itself, and a larger factor means neither is reliable.
    """
    if vof is None:
        return 1.0
    a_area = float(np.clip(aif.curve, 0, None).sum())
    v_area = float(np.clip(vof.curve, 0, None).sum())
    if a_area <= 0:
        return 1.0
    return float(np.clip(v_area / a_area, 1.0, 3.0))
