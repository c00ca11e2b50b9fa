"""Lesion masks from the perfusion maps: thresholds, clean-up, volumes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def clean_mask(
    mask: np.ndarray, allowed: np.ndarray, voxel_volume_ml: float, min_cluster_ml: float
) -> np.ndarray:
    """Remove speckle and small clusters from a thresholded ``(z, y, x)`` mask.

    A 3 x 3 in-plane majority vote (counted over ``allowed`` voxels only) removes isolated
    noise voxels and fills pinholes inside a lesion without moving its border; then
    3D-connected clusters smaller than ``min_cluster_ml`` are dropped.

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

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` bool cleaned mask, a subset of ``allowed``.
    """
    kernel = np.ones((1, 3, 3), dtype=np.float32)
    votes = ndimage.convolve((mask & allowed).astype(np.float32), kernel, mode="constant")
    voters = ndimage.convolve(allowed.astype(np.float32), kernel, mode="constant")
    majority = (votes > 0.5 * voters) & allowed
    labels, count = ndimage.label(majority, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return majority
    sizes = np.bincount(labels.ravel())
    min_voxels = min_cluster_ml / voxel_volume_ml
    keep = sizes >= min_voxels
    keep[0] = False
    return np.asarray(keep[labels])


def volume_ml(mask: np.ndarray, voxel_volume_ml: float) -> float:
    """Volume of a boolean mask in mL."""
    return float(np.count_nonzero(mask)) * voxel_volume_ml
