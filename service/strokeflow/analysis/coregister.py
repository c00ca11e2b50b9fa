"""Bring volumes of different MR series into one voxel grid.

Every series carries its position in the patient (the ``Geometry`` affine built from
ImagePositionPatient, ImageOrientationPatient and PixelSpacing), so resampling by the
affines aligns them as long as the patient lay still. When the head moved between the
series, a rigid registration (6 parameters, normalised cross-correlation inside the
brain) refines the alignment.

Transform convention: ``rigid_lps`` is a ``(4, 4)`` matrix mapping a point of the
target (fixed) series, in LPS mm, to the point of the source (moving) series that shows
the same anatomy. The identity means "trust the DICOM geometry".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeflow.analysis.volume import Geometry

#: Registration results moving the head less than this are not applied.
MIN_RIGID_MOTION_MM = 0.5
#: ... nor those improving the correlation by less than this.
MIN_NCC_GAIN = 0.01
#: Pixel size of the working grid of the registration.
_REGISTRATION_PIXEL_MM = 3.5
#: Most fixed-image points the cost is evaluated on.
_MAX_POINTS = 6000
_PERMUTE = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z) <-> (z, y, x)


@dataclass(frozen=True)
class RigidResult:
    """Outcome of :func:`register_rigid`.

    Attributes
    ----------
    rigid_lps : numpy.ndarray
        ``(4, 4)`` target-to-source transform in LPS mm (identity when not applied).
    applied : bool
        True when the registration moved the head enough, and improved the match
        enough, to be used.
    translation_mm : tuple of float
        LPS translation of the found transform.
    rotation_deg : tuple of float
        Rotations about the x, y and z axes (degrees) of the found transform.
    ncc_before, ncc_after : float
        Correlation inside the brain with the DICOM geometry alone, and after.
    displacement_mm : float
        Largest displacement of a 75 mm radius sphere around the brain centre.
    """

    rigid_lps: np.ndarray
    applied: bool
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    ncc_before: float
    ncc_after: float
    displacement_mm: float


def voxel_map_zyx(
    source: Geometry, target: Geometry, rigid_lps: np.ndarray | None = None
) -> np.ndarray:
    """``(4, 4)`` matrix from target voxel ``(z, y, x, 1)`` to source voxel ``(z, y, x, 1)``."""
    rigid = np.eye(4) if rigid_lps is None else rigid_lps
    m_xyz = np.linalg.inv(source.affine_lps) @ rigid @ target.affine_lps
    return np.asarray(_PERMUTE @ m_xyz @ _PERMUTE)


def resample(
    volume: np.ndarray,
    source: Geometry,
    target: Geometry,
    target_shape: tuple[int, int, int],
    *,
    rigid_lps: np.ndarray | None = None,
    order: int = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample a ``(z, y, x)`` volume from its grid onto another one.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(z, y, x)`` values on ``source``.
    source, target : Geometry
        Grids of the input and the output.
    target_shape : tuple of int
        ``(z, y, x)`` shape of the output.
    rigid_lps : numpy.ndarray, optional
        Target-to-source rigid transform (see module docstring).
    order : int
        Spline order (0 nearest, 1 trilinear).
    fill : float
        Value outside the source grid.

    Returns
    -------
    numpy.ndarray
        ``target_shape`` float32 array.
    """
    m = voxel_map_zyx(source, target, rigid_lps)
    out = ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=target_shape,
        order=order,
        mode="constant",
        cval=fill,
    )
    return np.asarray(out, dtype=np.float32)


def resample_mask(
    mask: np.ndarray,
    source: Geometry,
    target: Geometry,
    target_shape: tuple[int, int, int],
    *,
    rigid_lps: np.ndarray | None = None,
) -> np.ndarray:
    """Resample a boolean mask: trilinear fraction, kept where at least half inside.

    The 0.5 level preserves volume between grids of different resolution, unlike
    nearest-neighbour, which rounds every boundary voxel the same way.
    """
    fraction = resample(mask.astype(np.float32), source, target, target_shape, rigid_lps=rigid_lps)
    return np.asarray(fraction >= 0.5)


def _rigid_matrix(params: np.ndarray, centre_lps: np.ndarray) -> np.ndarray:
    """Rotation (degrees about x, y, z) about ``centre_lps`` followed by a translation."""
    ax, ay, az = np.deg2rad(params[:3])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    r = rz @ ry @ rx
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre_lps - r @ centre_lps + params[3:6]
    return m


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def register_rigid(
    fixed: np.ndarray,
    fixed_geometry: Geometry,
    fixed_mask: np.ndarray,
    moving: np.ndarray,
    moving_geometry: Geometry,
    *,
    max_iterations: int = 2000,
) -> RigidResult:
    """Rigidly register ``moving`` to ``fixed`` inside ``fixed_mask``, starting from the
    DICOM geometry.

    Both images should show CSF bright (DWI b0 and the DSC baseline do); the match is
    the normalised cross-correlation of Gaussian-smoothed images over the fixed mask,
    maximised with Powell's method on a ~3.5 mm working grid.

    Parameters
    ----------
    fixed : numpy.ndarray
        ``(z, y, x)`` reference image (e.g. DWI b0).
    fixed_geometry : Geometry
        Its grid.
    fixed_mask : numpy.ndarray
        ``(z, y, x)`` bool region to match (the brain).
    moving : numpy.ndarray
        ``(z, y, x)`` image to align (e.g. the DSC baseline).
    moving_geometry : Geometry
        Its grid.
    max_iterations : int
        Bound on the cost evaluations.

    Returns
    -------
    RigidResult

    Raises
    ------
    ValueError
        If the fixed mask is empty.
    """
    if not fixed_mask.any():
        raise ValueError("empty fixed mask: nothing to register on")
    _, dy, _ = fixed_geometry.voxel_size_mm
    factor = max(1, round(_REGISTRATION_PIXEL_MM / dy))
    nz, ny, nx = fixed.shape
    ny_c, nx_c = ny // factor, nx // factor
    coarse = fixed[:, : ny_c * factor, : nx_c * factor].reshape(nz, ny_c, factor, nx_c, factor)
    fixed_c = coarse.mean(axis=(2, 4)).astype(np.float32)
    mask_c = (
        fixed_mask[:, : ny_c * factor, : nx_c * factor]
        .reshape(nz, ny_c, factor, nx_c, factor)
        .mean(axis=(2, 4))
        >= 0.5
    )
    geom_c = fixed_geometry.downsampled(factor)
    # Smoothing (also across slices) keeps the cost smooth between grid positions, where
    # trilinear interpolation would otherwise favour grid-aligned (unmoved) solutions.
    fixed_c = ndimage.gaussian_filter(fixed_c, (0.7, 1.0, 1.0))
    moving_s = ndimage.gaussian_filter(np.asarray(moving, dtype=np.float32), (0.7, 1.0, 1.0))
    points = np.argwhere(mask_c)  # (k, 3) z, y, x
    # Every stride-th brain voxel: a regular subset whose correlation has the same optimum
    # (the images are smoothed over more than the gap) at a fraction of the cost per
    # evaluation, which is what a registration spends its time on.
    stride = max(1, int(np.ceil(points.shape[0] / _MAX_POINTS)))
    points = points[::stride]
    values = fixed_c[tuple(points.T)]
    homogeneous = np.concatenate([points[:, ::-1], np.ones((points.shape[0], 1))], axis=1)
    points_lps = homogeneous @ geom_c.affine_lps.T  # (k, 4)
    centre = points_lps[:, :3].mean(axis=0)
    inv_moving = np.linalg.inv(moving_geometry.affine_lps)

    def sample(params: np.ndarray) -> np.ndarray:
        src = points_lps @ (inv_moving @ _rigid_matrix(params, centre)).T  # (k, 4) x, y, z
        return np.asarray(
            ndimage.map_coordinates(moving_s, src[:, 2::-1].T, order=1, mode="constant", cval=0.0)
        )

    def cost(params: np.ndarray) -> float:
        return -_ncc(values, sample(params))

    start = np.zeros(6)
    before = -cost(start)
    # Heads mostly move in-plane (nodding is limited by the head rest): the in-plane
    # rotation and shift are found first, then all six parameters are refined briefly.
    in_plane = [2, 3, 4]

    def cost_in_plane(p3: np.ndarray) -> float:
        full = np.zeros(6)
        full[in_plane] = p3
        return cost(full)

    # Imported here: scipy.optimize is a large import that CT-only runs never need.
    from scipy import optimize

    first = optimize.minimize(
        cost_in_plane,
        np.zeros(3),
        method="Powell",
        options={"xtol": 0.1, "ftol": 1e-4, "maxfev": max_iterations},
    )
    start[in_plane] = first.x
    res = optimize.minimize(
        cost,
        start,
        method="Powell",
        options={"xtol": 0.2, "ftol": 1e-3, "maxfev": max(1, max_iterations // 20)},
    )
    if res.fun > first.fun:
        res = optimize.OptimizeResult(x=start, fun=first.fun)
    params = np.asarray(res.x, dtype=np.float64)
    after = -float(res.fun)
    rigid = _rigid_matrix(params, centre)
    angle = np.arccos(np.clip((np.trace(rigid[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))
    displacement = float(np.linalg.norm(params[3:6]) + 2.0 * 75.0 * np.sin(angle / 2.0))
    applied = displacement >= MIN_RIGID_MOTION_MM and after - before >= MIN_NCC_GAIN
    return RigidResult(
        rigid_lps=rigid if applied else np.eye(4),
        applied=bool(applied),
        translation_mm=(float(params[3]), float(params[4]), float(params[5])),
        rotation_deg=(float(params[0]), float(params[1]), float(params[2])),
        ncc_before=before,
        ncc_after=after,
        displacement_mm=displacement,
    )
