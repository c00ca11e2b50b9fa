"""Tissue curves brought to one arrival time, so that a spatial filter mixes like with like.

The study's bilateral filter averages each voxel's curve with its neighbours. Across the
shells of a penumbra the neighbours are reached 2-4 s earlier or later, so the averaged
curve is wider than any of them and its residue peaks low: the penumbra's flow reads low
and falls into the core. Under a sharp arterial input the light filter avoids that by
mixing less; under a wide one its curves are too noisy (docs/deconvolution.md, "The flow
of delayed tissue read from delay-aligned curves"). Shifting every delayed curve to the
arrival of the normal tissue before the filter, and back after it, lets the filter average
as much as the study needs without widening the curves.

The shift of a voxel is its study Tmax smoothed in plane (so that it does not follow the
voxel's own noise, which would align the noise and raise the flow), relative to the
tissue's median, less a dead zone that leaves normal tissue where it is.
"""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.denoise import smooth_within_mask
from strokeflow.analysis.voxels import voxel_curves

__all__ = ["MAX_TMAX_S", "alignment_shifts_frames", "shift_curves"]

#: Tmax beyond which a voxel is shifted no further (s): a guard against the Tmax of noisy,
#: scan-truncated curves. Lower caps trade one case against another (docs/deconvolution.md).
MAX_TMAX_S = 15.0


def shift_curves(curves: np.ndarray, shift_frames: np.ndarray) -> np.ndarray:
    """Curves read ``shift_frames`` later: ``out[t] = curves[t + shift]`` (linear, edges held).

    Parameters
    ----------
    curves : numpy.ndarray
        ``(t, n)`` curves on a uniform time grid.
    shift_frames : numpy.ndarray
        ``(n,)`` shift of each curve in frames (fractions allowed); a positive shift
        moves the curve earlier.

    Returns
    -------
    numpy.ndarray
        float32 ``(t, n)``. Samples read beyond either end take that end's value.

    Raises
    ------
    ValueError
        If the shapes disagree or there are fewer than two frames.
    """
    nt, n = curves.shape
    shifts = np.asarray(shift_frames, dtype=np.float32)
    if shifts.shape != (n,):
        raise ValueError(f"shift_frames must be shaped ({n},); got {shifts.shape}")
    if nt < 2:
        raise ValueError(f"shifting needs at least two frames; got {nt}")
    data = np.asarray(curves, dtype=np.float32)
    out = data.copy()
    # Most tissue is not shifted (the dead zone): only the moving curves are read anew.
    moving = np.flatnonzero(shifts)
    if moving.size == 0:
        return out
    at = np.arange(nt, dtype=np.float32)[:, None] + shifts[None, moving]
    np.clip(at, 0.0, nt - 1.0, out=at)
    lower = np.minimum(at.astype(np.int64), nt - 2)
    frac = at - lower
    cols = moving[None, :]
    block = data[lower, cols] * (1.0 - frac)
    block += data[lower + 1, cols] * frac
    out[:, moving] = block
    return out


def alignment_shifts_frames(
    tmax_s: np.ndarray,
    tissue: np.ndarray,
    *,
    sigma_px: float,
    dead_zone_s: float,
    step_s: float,
) -> np.ndarray:
    """The shift (frames) that brings each tissue voxel's arrival near the normal tissue's.

    Parameters
    ----------
    tmax_s : numpy.ndarray
        ``(z, y, x)`` Tmax of the study's maps (NaN where not read).
    tissue : numpy.ndarray
        ``(z, y, x)`` bool tissue mask.
    sigma_px : float
        In-plane Gaussian sigma (pixels) of the Tmax smoothing within the tissue.
    dead_zone_s : float
        Delays within this many seconds of the tissue's median Tmax are not shifted; larger
        ones are shifted by their excess over it. The smoothed Tmax is held within
        ``[0, MAX_TMAX_S]``.
    step_s : float
        Frame interval of the curves to be shifted.

    Returns
    -------
    numpy.ndarray
        float32 ``(n,)`` in the order of ``numpy.flatnonzero(tissue)``, for
        :func:`shift_curves`: positive for voxels reached later than the normal tissue.

    Raises
    ------
    ValueError
        If the shapes disagree or a parameter is negative.
    """
    if tmax_s.shape != tissue.shape:
        raise ValueError(f"tmax_s {tmax_s.shape} and tissue {tissue.shape} differ in shape")
    if sigma_px < 0 or dead_zone_s < 0 or step_s <= 0:
        raise ValueError(
            f"sigma_px and dead_zone_s must be >= 0 and step_s > 0; got {sigma_px}, "
            f"{dead_zone_s}, {step_s}"
        )
    m = tissue.astype(bool)
    tmax = np.asarray(tmax_s, dtype=np.float32)
    read = m & np.isfinite(tmax)
    if not read.any():
        return np.zeros(int(np.count_nonzero(m)), dtype=np.float32)
    filled = np.where(read, tmax, np.float32(np.median(tmax[read]))).astype(np.float32)
    smooth = smooth_within_mask(filled, m, (sigma_px, sigma_px))
    arrival_s = np.clip(voxel_curves(smooth[None], m)[0], 0.0, MAX_TMAX_S)
    delay = arrival_s - np.float32(np.median(arrival_s))
    excess = np.maximum(np.abs(delay) - np.float32(dead_zone_s), 0.0)
    return (np.sign(delay) * excess / np.float32(step_s)).astype(np.float32)
