"""Dynamic susceptibility contrast (DSC) MR perfusion: signal to delta-R2*, baseline,
arterial input with saturation rejection, and motion between frames.

Gadolinium shortens T2*: ``S(t) = S0 exp(-TE delta-R2*(t))`` with delta-R2*
proportional to the concentration, so ``delta-R2* = -ln(S / S0) / TE`` (1/s) plays the
role of the HU enhancement of CT and feeds the same deconvolution
(:func:`strokeflow.analysis.maps.compute_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strokeflow.analysis.inputs import VascularCurve, bolus_arrival_index, select_aif

#: Frames at the start of a DSC run that are still approaching the T1 steady state.
STEADY_STATE_FRAMES = 2
#: An arterial voxel whose signal falls below this many noise sigmas at the bolus peak
#: is saturated: its true drop is unknown and its curve is truncated.
SATURATION_SNR = 5.0
#: ... or below this fraction of its baseline (exp(-3): delta-R2* * TE > 3, where the
#: magnitude is dominated by noise and the T2* signal model no longer holds).
SATURATION_FRACTION = 0.05


@dataclass(frozen=True)
class DeltaR2:
    """The DSC series converted to delta-R2*.

    Attributes
    ----------
    delta_r2_s : numpy.ndarray
        ``(t, z, y, x)`` float32 delta-R2* in 1/s.
    s0 : numpy.ndarray
        ``(z, y, x)`` float32 baseline signal (mean of the baseline frames).
    baseline : slice
        Frames averaged into ``s0``.
    arrival_index : int
        First frame with contrast.
    noise_sigma : float
        Median temporal standard deviation of the baseline signal in the brain.
    min_signal : numpy.ndarray
        ``(z, y, x)`` float32 lowest signal of every voxel over the run.
    """

    delta_r2_s: np.ndarray
    s0: np.ndarray
    baseline: slice
    arrival_index: int
    noise_sigma: float
    min_signal: np.ndarray


def bolus_arrival_frame(signal: np.ndarray, brain: np.ndarray) -> int:
    """First frame in which contrast has arrived, from the earliest, deepest signal drops.

    Arteries darken first and most, so the CT rule (:func:`bolus_arrival_index`: the
    99.5th percentile of the change, followed until it reaches 20 % of its maximum) is
    applied to the signal drop. A later, brain-average arrival would let the arterial
    upslope into the baseline and bias every arterial delta-R2*.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(t, z, y, x)`` DSC magnitude on a uniform time grid.
    brain : numpy.ndarray
        ``(z, y, x)`` bool brain mask.

    Returns
    -------
    int
        Index of the first contrast frame (>= 1).
    """
    return bolus_arrival_index(-np.asarray(signal, dtype=np.float32), brain)


def to_delta_r2(signal: np.ndarray, brain: np.ndarray, echo_time_s: float) -> DeltaR2:
    """Convert DSC signal to delta-R2* against an automatically detected baseline.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(t, z, y, x)`` magnitude on a uniform time grid.
    brain : numpy.ndarray
        ``(z, y, x)`` bool brain mask (for the baseline and noise estimates).
    echo_time_s : float
        Echo time in seconds.

    Returns
    -------
    DeltaR2

    Raises
    ------
    ValueError
        If the echo time is not positive or the brain mask is empty.
    """
    if not echo_time_s > 0:
        raise ValueError(f"echo time must be positive; got {echo_time_s} s")
    if not brain.any():
        raise ValueError("empty brain mask: cannot find the DSC baseline")
    sig = np.asarray(signal, dtype=np.float32)
    arrival = bolus_arrival_frame(sig, brain)
    start = max(0, min(STEADY_STATE_FRAMES, arrival - 2))
    base = slice(start, arrival)
    s0 = sig[base].mean(axis=0)
    noise = (
        float(np.median(sig[base][:, brain].std(axis=0, ddof=1))) if arrival - start > 1 else 0.0
    )
    # A floor of one noise sigma keeps saturated voxels finite (their curve is flagged).
    floor = np.float32(max(noise, 1e-3))
    ratio = np.maximum(sig, floor) / np.maximum(s0, floor)[None]
    dr2 = -np.log(ratio) / np.float32(echo_time_s)
    dr2 = np.where(np.maximum(s0, 0)[None] > floor, dr2, 0.0).astype(np.float32)
    return DeltaR2(
        delta_r2_s=dr2,
        s0=s0.astype(np.float32),
        baseline=base,
        arrival_index=arrival,
        noise_sigma=noise,
        min_signal=sig.min(axis=0).astype(np.float32),
    )


def saturated_voxels(dr2: DeltaR2) -> np.ndarray:
    """Voxels whose signal reaches the noise floor or nearly vanishes during the bolus.

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` bool.
    """
    floor = SATURATION_SNR * dr2.noise_sigma
    return np.asarray(
        (dr2.min_signal < floor) | (dr2.min_signal < SATURATION_FRACTION * dr2.s0)
    ) & (dr2.s0 > floor)


@dataclass(frozen=True)
class DscAif:
    """The arterial input chosen for a DSC series and how it was found."""

    curve: VascularCurve
    n_saturated_rejected: int
    n_candidates: int


def select_dsc_aif(
    dr2: DeltaR2,
    delta_r2_uniform: np.ndarray,
    search: np.ndarray,
    step_s: float,
    voxel_volume_ml: float,
) -> DscAif | None:
    """Arterial input from the unsaturated voxels of ``search``.

    Saturated arterial voxels (signal at the noise floor at the bolus peak) have a
    truncated, flat-topped delta-R2* curve that would broaden the AIF and bias Tmax; they
    are removed before the CT arterial search (:func:`select_aif`) runs on the rest,
    which then finds the partial-volume voxels at the vessel edges, whose curves keep
    their shape.

    Parameters
    ----------
    dr2 : DeltaR2
        Conversion result (for the saturation test).
    delta_r2_uniform : numpy.ndarray
        ``(n, z, y, x)`` delta-R2* on the uniform analysis grid.
    search : numpy.ndarray
        ``(z, y, x)`` bool where arteries may be taken from.
    step_s : float
        Grid step.
    voxel_volume_ml : float
        Voxel volume (area filter of the search).

    Returns
    -------
    DscAif or None
        None when no unsaturated arterial curve is found.
    """
    saturated = saturated_voxels(dr2)
    allowed = search & ~saturated
    curve = select_aif(delta_r2_uniform, allowed, step_s, voxel_volume_ml)
    if curve is None:
        return None
    return DscAif(
        curve=curve,
        n_saturated_rejected=int(np.count_nonzero(search & saturated)),
        n_candidates=int(np.count_nonzero(allowed)),
    )


def frame_displacement_mm(
    signal: np.ndarray, head: np.ndarray, voxel_size_mm: tuple[float, float, float]
) -> np.ndarray:
    """Displacement of the head between DSC frames, from its outline's centroid.

    The outline of every frame is its signal above half of that frame's own median over
    the baseline ``head``: the bolus darkens the whole brain (by more than half at a
    strong bolus or a long echo time), so a level fixed on the baseline would shrink the
    outline at the bolus peak and move its centroid although the head is still. A
    frame-relative level follows the darkening; the head moving carries the outline.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(t, z, y, x)`` magnitude.
    head : numpy.ndarray
        ``(z, y, x)`` bool head mask of the baseline.
    voxel_size_mm : tuple of float
        ``(dz, dy, dx)``.

    Returns
    -------
    numpy.ndarray
        ``(t,)`` centroid distance in mm from the median centroid of the run.
    """
    nt = signal.shape[0]
    if not head.any():
        return np.zeros(nt)
    levels = 0.5 * np.median(signal[:, head], axis=1)
    outline = signal > levels[:, None, None, None].astype(signal.dtype)
    counts = np.count_nonzero(outline, axis=(1, 2, 3)).astype(np.float64)
    # Centroid per axis from the outline's marginal profiles (no (t, voxels) product).
    centroids = np.empty((nt, 3))
    for axis in range(3):
        others = tuple(1 + a for a in range(3) if a != axis)
        profile = np.count_nonzero(outline, axis=others)  # (t, n_axis)
        centroids[:, axis] = profile @ np.arange(profile.shape[1], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        centroids = centroids / counts[:, None] * np.asarray(voxel_size_mm, dtype=np.float64)
    centroids[counts == 0] = np.nan
    reference = np.nanmedian(centroids, axis=0)
    return np.asarray(np.nan_to_num(np.linalg.norm(centroids - reference, axis=1)))
