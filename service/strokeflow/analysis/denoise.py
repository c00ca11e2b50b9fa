"""Edge-preserving spatial smoothing of low-dose perfusion data (normalised convolution)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Three sigmas hold 99.7 % of the kernel; the default four only costs time.
_TRUNCATE = 3.0


def smooth_within_mask(
    signal: np.ndarray, mask: np.ndarray, sigma_px: tuple[float, float]
) -> np.ndarray:
    """In-plane Gaussian smoothing restricted to a mask (normalised convolution).

    Every voxel inside ``mask`` becomes the Gaussian-weighted mean of the *masked*
    voxels around it in its own slice: ``G*(s m) / G*m``. Values outside the mask
    (CSF, bone, vessels) therefore never leak into it, so tissue edges stay sharp
    while the noise of low-dose acquisitions drops. Voxels outside the mask are
    returned unchanged.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(t, z, y, x)`` time series or ``(z, y, x)`` volume.
    mask : numpy.ndarray
        ``(z, y, x)`` bool: the voxels to smooth and to draw values from.
    sigma_px : tuple of float
        Gaussian sigma ``(sigma_y, sigma_x)`` in pixels; 0 disables that axis.

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``signal``.

    Raises
    ------
    ValueError
        If the shapes disagree or a sigma is negative.
    """
    if signal.ndim not in (3, 4):
        raise ValueError(f"signal must be (t, z, y, x) or (z, y, x); got shape {signal.shape}")
    if mask.shape != signal.shape[-3:]:
        raise ValueError(
            f"mask shape {mask.shape} does not match the (z, y, x) shape {signal.shape[-3:]}"
        )
    if len(sigma_px) != 2 or min(sigma_px) < 0:
        raise ValueError(f"sigma_px must be two non-negative values; got {sigma_px}")
    m = mask.astype(bool)
    data = np.asarray(signal, dtype=np.float32)
    if max(sigma_px) == 0 or not m.any():
        return data.copy()

    mf = m.astype(np.float32)
    sig_vol = (0.0, float(sigma_px[0]), float(sigma_px[1]))
    weight = ndimage.gaussian_filter(mf, sig_vol, truncate=_TRUNCATE, mode="constant")
    sig = (0.0,) * (data.ndim - 2) + sig_vol[1:]
    # One filter call over the whole (t, z, y, x) block: vectorised over time.
    num = ndimage.gaussian_filter(data * mf, sig, truncate=_TRUNCATE, mode="constant")
    # The mask's own centre weight keeps the denominator > 0 wherever mask is True.
    inv_w = np.zeros_like(weight)
    np.divide(1.0, weight, out=inv_w, where=m)
    num *= inv_w
    np.copyto(num, data, where=~m)
    return num
