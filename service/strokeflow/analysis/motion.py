"""In-plane binning and rigid in-plane motion correction of a CT perfusion slab.

A CTP slab is thin (8..16 slices of 5 mm), so a moving head is modelled by one in-plane
rigid transform per frame: a shift ``(dy, dx)`` and a rotation about the slab's z axis,
common to all slices. Contrast changes the intensities of vessels and tissue over time,
so frames are registered on the skull, which does not enhance.

Transform convention: for frame ``t`` the content that sits at reference position ``p``
(array indices ``(y, x)``) is found at ``R(theta) (p - c) + c + shift`` in frame ``t``,
with ``c`` the centre of the skull in the reference frame and ``R(theta)`` turning the
+y axis towards the +x axis for positive ``theta``. ``shifts_mm`` and ``rotations_deg``
are therefore the motion of the head relative to the reference frame.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from strokeflow.analysis.stages import usable_cpus

#: The bone-only image ``clip(hu, 700, 1500) - 700`` used for registration: enhancing
#: arteries (+300..600 HU over ~40 HU blood) stay below 700 HU, so the image is blind to
#: contrast, and clipping at 1500 HU keeps dense skull-base bone from dominating.
BONE_LOW_HU = 700.0
BONE_HIGH_HU = 1500.0

#: Radius of the brain-sized circle whose largest displacement reports the motion.
BRAIN_RADIUS_MM = 75.0

#: Motion below this many pixels (on the brain circle) is not resampled: interpolation
#: would blur the frame for nothing.
NEGLIGIBLE_MOTION_PX = 0.1

# Coarse rotation search for the starting point of the Gauss-Newton refinement.
_SEARCH_ANGLES_DEG = np.arange(-12.0, 12.01, 3.0)
# Gaussian pre-smoothing (px) of the bone projections: coarse for a wide capture range,
# then fine for accuracy.
_LEVEL_SIGMAS_PX = (5.0, 2.5)
_MAX_ITER = 30
_MIN_BONE_PIXELS = 50


@dataclass(frozen=True)
class MotionResult:
    """Outcome of :func:`correct_motion`.

    Attributes
    ----------
    corrected : numpy.ndarray
        ``(t, z, y, x)`` float32 signal resampled onto the reference frame.
    shifts_mm : numpy.ndarray
        ``(t, 2)`` head shift ``(dy, dx)`` in mm along the array axes.
    rotations_deg : numpy.ndarray
        ``(t,)`` in-plane head rotation in degrees (+y towards +x).
    displacement_mm : numpy.ndarray
        ``(t,)`` largest displacement of a brain-sized circle (radius 75 mm) around the
        skull centre: ``|shift| + 2 r |sin(theta / 2)|``.
    residual : numpy.ndarray
        ``(t,)`` misalignment after correction: mean absolute difference of the bone
        images to the reference, relative to the reference's mean bone signal.
    excluded : numpy.ndarray
        ``(t,)`` bool: frames that could not be corrected and must not be analysed.
    messages : list of str
        One line per excluded frame or skipped step, for the report.
    """

    corrected: np.ndarray
    shifts_mm: np.ndarray
    rotations_deg: np.ndarray
    displacement_mm: np.ndarray
    residual: np.ndarray
    excluded: np.ndarray
    messages: list[str] = field(default_factory=list)


#: Residuals (fraction of the mean bone signal) below this never exclude a frame.
MIN_EXCLUDED_RESIDUAL = 0.05


def bin_inplane(signal: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` in-plane blocks.

    Rows and columns that do not fill a whole block (the remainder) are cropped.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(..., y, x)`` array, any numeric dtype (int16 HU included).
    factor : int
        Block edge in pixels; 1 returns a float32 copy.

    Returns
    -------
    numpy.ndarray
        ``(..., y // factor, x // factor)`` float32.

    Raises
    ------
    ValueError
        If ``factor`` < 1 or larger than the image.
    """
    if factor < 1:
        raise ValueError(f"binning factor must be >= 1; got {factor}")
    if signal.ndim < 2:
        raise ValueError(f"signal must have (y, x) as its last axes; got shape {signal.shape}")
    ny, nx = signal.shape[-2:]
    by, bx = ny // factor, nx // factor
    if by == 0 or bx == 0:
        raise ValueError(f"binning factor {factor} is larger than the {ny} x {nx} image")
    if factor == 1:
        return np.array(signal, dtype=np.float32)
    # Strided sums instead of reshape(...).mean(): the reduction over a length-`factor`
    # inner axis is several times slower in numpy than `factor` whole-array additions.
    cols = np.zeros((*signal.shape[:-2], ny, bx), dtype=np.float32)
    for i in range(factor):
        cols += signal[..., i : bx * factor : factor]
    out = np.zeros((*signal.shape[:-2], by, bx), dtype=np.float32)
    for j in range(factor):
        out += cols[..., j : by * factor : factor, :]
    out *= np.float32(1.0 / (factor * factor))
    return out


def bone_image(signal_hu: np.ndarray) -> np.ndarray:
    """Bone-only image ``clip(hu, 700, 1500) - 700`` (float32), blind to contrast."""
    out = np.clip(signal_hu, BONE_LOW_HU, BONE_HIGH_HU).astype(np.float32, copy=False)
    out -= np.float32(BONE_LOW_HU)
    return out


def correct_motion(
    signal_hu: np.ndarray,
    pixel_mm: float,
    *,
    reference: int = 0,
    max_motion_mm: float = 15.0,
    times_s: np.ndarray | None = None,
    residual_mad_factor: float = 6.0,
    residual_min_ratio: float = 1.5,
) -> MotionResult:
    """Register every frame rigidly in-plane to a reference frame, and flag failures.

    The transform of each frame is estimated on the z-sum of its bone images (exact for
    a transform common to the slab, and 1/z of the cost): phase correlation over a
    coarse set of rotations for the start, then inverse-compositional Gauss-Newton on
    ``(dy, dx, theta)`` at two smoothing levels. Frames whose motion is not negligible
    are resampled (linear interpolation). A frame is excluded when its motion exceeds
    ``max_motion_mm`` or when it stays misaligned after correction: residual above
    ``median + residual_mad_factor * MAD`` of all frames and above
    ``residual_min_ratio * median`` (through-plane motion changes the slab content,
    which no in-plane transform can undo).

    Parameters
    ----------
    signal_hu : numpy.ndarray
        ``(t, z, y, x)`` CT signal in HU (typically after :func:`bin_inplane`).
    pixel_mm : float
        In-plane pixel size in mm.
    reference : int
        Index of the reference frame; use an early, pre-contrast frame.
    max_motion_mm : float
        Frames whose brain-circle displacement exceeds this are excluded.
    times_s : numpy.ndarray, optional
        ``(t,)`` frame times in seconds, only to name frames in the messages.
    residual_mad_factor, residual_min_ratio : float
        Robust outlier rule on the post-correction residual (see above).

    Returns
    -------
    MotionResult

    Raises
    ------
    ValueError
        If the array is not 4-D, ``pixel_mm`` is not positive or ``reference`` is out of range.
    """
    if signal_hu.ndim != 4:
        raise ValueError(f"signal must be (t, z, y, x); got shape {signal_hu.shape}")
    if not pixel_mm > 0:
        raise ValueError(f"pixel_mm must be positive; got {pixel_mm}")
    nt = signal_hu.shape[0]
    if not 0 <= reference < nt:
        raise ValueError(f"reference frame {reference} is outside the {nt} frames")
    data = np.asarray(signal_hu, dtype=np.float32)
    messages: list[str] = []

    bones = bone_image(data)
    proj = bones.sum(axis=1)  # (t, y, x): the transform is common to all slices
    ref_proj = proj[reference]
    ny, nx = ref_proj.shape
    if np.count_nonzero(ref_proj) < _MIN_BONE_PIXELS:
        messages.append(
            f"motion correction skipped: reference frame {reference} shows no skull "
            f"(fewer than {_MIN_BONE_PIXELS} pixels above {BONE_LOW_HU:.0f} HU)"
        )
        zeros = np.zeros(nt)
        return MotionResult(
            corrected=data.copy(),
            shifts_mm=np.zeros((nt, 2)),
            rotations_deg=zeros.copy(),
            displacement_mm=zeros.copy(),
            residual=zeros.copy(),
            excluded=np.zeros(nt, dtype=bool),
            messages=messages,
        )

    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    total = ref_proj.sum(dtype=np.float64)
    centre = np.array(
        [(yy * ref_proj).sum() / total, (xx * ref_proj).sum() / total], dtype=np.float64
    )
    # Coarse level on a 2x binned grid (4x cheaper, wide capture range), then full grid.
    factors = (2, 1) if min(ny, nx) >= 32 else (1, 1)
    levels = [
        _Level(bin_inplane(ref_proj, f), sigma / f, _to_level(f), centre)
        for f, sigma in zip(factors, _LEVEL_SIGMAS_PX, strict=True)
    ]
    ref_fft = np.fft.rfft2(levels[0].ref)

    params = np.zeros((nt, 3))  # (dy, dx, theta) in px and radians

    def register(t: int) -> None:
        matrix = np.eye(3)
        for i, (f, lv) in enumerate(zip(factors, levels, strict=True)):
            moving = ndimage.gaussian_filter(bin_inplane(proj[t], f), lv.sigma, truncate=3.0)
            if i == 0:
                matrix = lv.from_level(_initial_guess(ref_fft, moving, lv.centre, lv.coords))
            matrix = lv.refine(moving, matrix)
        params[t] = _params_from_matrix(matrix, centre)

    # Frames are registered independently, and the FFTs, interpolations and filters
    # release the GIL: one thread per core.
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
        list(pool.map(register, [t for t in range(nt) if t != reference]))

    shifts_mm = params[:, :2] * pixel_mm
    theta = params[:, 2]
    radius_px = BRAIN_RADIUS_MM / pixel_mm
    displacement_px = np.hypot(params[:, 0], params[:, 1]) + 2 * radius_px * np.abs(
        np.sin(theta / 2)
    )

    corrected = data.copy()
    for t in range(nt):
        if displacement_px[t] > NEGLIGIBLE_MOTION_PX:
            m = _rigid_matrix(theta[t], params[t, 0], params[t, 1], centre)
            _warp_slab(data[t], m, out=corrected[t])

    ref_bone = bones[reference]
    scale = float(ref_bone.mean(dtype=np.float64))
    residual = np.empty(nt)
    for t in range(nt):
        b = bones[t] if displacement_px[t] <= NEGLIGIBLE_MOTION_PX else bone_image(corrected[t])
        residual[t] = float(np.abs(b - ref_bone).mean(dtype=np.float64)) / scale

    excluded = np.zeros(nt, dtype=bool)
    names = [
        f"frame {t}" + (f" (t={float(times_s[t]):.1f} s)" if times_s is not None else "")
        for t in range(nt)
    ]
    others = np.delete(residual, reference)
    if others.size >= 3:
        med = float(np.median(others))
        mad = 1.4826 * float(np.median(np.abs(others - med)))
        # The floor keeps exact (noise-free) data, where MAD is 0, from excluding frames
        # for rounding-level residuals.
        limit = max(
            med + residual_mad_factor * mad, residual_min_ratio * med, MIN_EXCLUDED_RESIDUAL
        )
        for i in np.flatnonzero(residual > limit).tolist():
            excluded[i] = True
            ratio = residual[i] / med if med > 0 else float("inf")
            messages.append(
                f"{names[i]}: through-plane motion (misaligned after in-plane correction, "
                f"residual {ratio:.1f}x the median), excluded"
            )
    displacement_mm = displacement_px * pixel_mm
    for i in np.flatnonzero(displacement_mm > max_motion_mm).tolist():
        if not excluded[i]:
            messages.append(
                f"{names[i]}: head moved {displacement_mm[i]:.1f} mm "
                f"(limit {max_motion_mm:.1f} mm), excluded"
            )
        excluded[i] = True

    return MotionResult(
        corrected=corrected,
        shifts_mm=shifts_mm,
        rotations_deg=np.degrees(theta),
        displacement_mm=displacement_mm,
        residual=residual,
        excluded=excluded,
        messages=messages,
    )


class _Level:
    """Inverse-compositional Gauss-Newton on one smoothed (and binned) reference.

    ``scale`` maps full-grid ``(y, x, 1)`` coordinates to this level's grid; transforms
    go in and out in full-grid coordinates.
    """

    def __init__(
        self, ref_proj: np.ndarray, sigma: float, scale: np.ndarray, centre_full: np.ndarray
    ) -> None:
        self.sigma = sigma
        self.scale = scale
        self.scale_inv = np.linalg.inv(scale)
        self.ref = ndimage.gaussian_filter(ref_proj.astype(np.float64), sigma, truncate=3.0)
        yy, xx = np.mgrid[0 : self.ref.shape[0], 0 : self.ref.shape[1]].astype(np.float64)
        self.coords = np.stack([yy.ravel(), xx.ravel(), np.ones(yy.size)])  # (3, n)
        self.centre = (scale @ np.append(centre_full, 1.0))[:2]
        cy, cx = self.centre
        gy, gx = np.gradient(self.ref)
        # Steepest-descent images for (dy, dx, theta) at the identity, where
        # dW/dtheta = (-(x - cx), y - cy).
        sd = np.stack([gy, gx, -gy * (xx - cx) + gx * (yy - cy)])
        self.sd = sd.reshape(3, -1)
        self.hessian_inv = np.linalg.inv(self.sd @ self.sd.T)
        self.ref_flat = self.ref.ravel()
        # Stop at 1e-3 full-grid px of shift, 1e-5 rad (0.001 px at 100 px radius).
        self.tol_px = 1e-3 * scale[0, 0]

    def from_level(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.scale_inv @ matrix @ self.scale)

    def refine(self, moving: np.ndarray, matrix_full: np.ndarray) -> np.ndarray:
        matrix = self.scale @ matrix_full @ self.scale_inv
        for _ in range(_MAX_ITER):
            pts = (matrix @ self.coords)[:2]
            warped = ndimage.map_coordinates(moving, pts, order=1, mode="nearest")
            dp = self.hessian_inv @ (self.sd @ (warped - self.ref_flat))
            matrix = matrix @ np.linalg.inv(_rigid_matrix(dp[2], dp[0], dp[1], self.centre))
            if abs(dp[0]) < self.tol_px and abs(dp[1]) < self.tol_px and abs(dp[2]) < 1e-5:
                break
        return self.from_level(matrix)


def _warp_slab(slab: np.ndarray, matrix: np.ndarray, out: np.ndarray) -> None:
    """Bilinear resampling of every slice of ``slab`` (z, y, x) at ``matrix @ (y, x, 1)``.

    The sample positions and weights are shared by all slices, so they are computed
    once and applied by four gathers; positions outside the image take the nearest
    edge value. About 3x faster than one ``affine_transform`` per slice.
    """
    nz, ny, nx = slab.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    py = matrix[0, 0] * yy + matrix[0, 1] * xx + matrix[0, 2]
    px = matrix[1, 0] * yy + matrix[1, 1] * xx + matrix[1, 2]
    py = np.clip(py, 0, ny - 1).ravel()
    px = np.clip(px, 0, nx - 1).ravel()
    y0 = np.minimum(np.floor(py).astype(np.intp), ny - 2) if ny > 1 else np.zeros(py.size, np.intp)
    x0 = np.minimum(np.floor(px).astype(np.intp), nx - 2) if nx > 1 else np.zeros(px.size, np.intp)
    wy = (py - y0).astype(np.float32)
    wx = (px - x0).astype(np.float32)
    flat = slab.reshape(nz, ny * nx)
    i00 = y0 * nx + x0
    dy = nx if ny > 1 else 0
    dx = 1 if nx > 1 else 0
    top = flat[:, i00] * (1 - wx) + flat[:, i00 + dx] * wx
    bottom = flat[:, i00 + dy] * (1 - wx) + flat[:, i00 + dy + dx] * wx
    out.reshape(nz, ny * nx)[:] = top * (1 - wy) + bottom * wy


def _to_level(factor: int) -> np.ndarray:
    """Homogeneous map from full-grid to ``factor``-binned grid coordinates.

    Binned pixel ``i`` covers full pixels ``f i .. f i + f - 1`` (centre ``f i + (f-1)/2``).
    """
    off = -(factor - 1) / (2.0 * factor)
    return np.array([[1.0 / factor, 0.0, off], [0.0, 1.0 / factor, off], [0.0, 0.0, 1.0]])


def _rigid_matrix(theta: float, dy: float, dx: float, centre: np.ndarray) -> np.ndarray:
    """Homogeneous ``(y, x, 1)`` matrix of ``p -> R(theta)(p - c) + c + (dy, dx)``."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = centre + np.array([dy, dx]) - rot @ centre
    return m


def _params_from_matrix(m: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``(dy, dx, theta)`` of a rigid homogeneous matrix about ``centre``."""
    theta = float(np.arctan2(m[1, 0], m[0, 0]))
    shift = m[:2, 2] - centre + m[:2, :2] @ centre
    return np.array([shift[0], shift[1], theta])


def _initial_guess(
    ref_fft: np.ndarray, moving: np.ndarray, centre: np.ndarray, coords: np.ndarray
) -> np.ndarray:
    """Best rotation of a coarse set, with its phase-correlation shift, as a matrix."""
    best = (-np.inf, 0.0, np.zeros(2))
    for angle in np.radians(_SEARCH_ANGLES_DEG):
        rot = _rigid_matrix(angle, 0.0, 0.0, centre)
        turned = ndimage.map_coordinates(moving, (rot @ coords)[:2], order=1, mode="nearest")
        peak, shift = _phase_correlation(ref_fft, turned.reshape(moving.shape))
        if peak > best[0]:
            best = (peak, float(angle), shift)
    _, angle, shift = best
    # turned(p) = ref(p - s) means moving = ref moved by R s about the centre.
    c, s = np.cos(angle), np.sin(angle)
    moved = np.array([[c, -s], [s, c]]) @ shift
    return _rigid_matrix(angle, moved[0], moved[1], centre)


def _phase_correlation(ref_fft: np.ndarray, moving: np.ndarray) -> tuple[float, np.ndarray]:
    """Peak height and shift ``s`` (px) with ``moving(p) ~ ref(p - s)``."""
    cross = np.fft.rfft2(moving) * np.conj(ref_fft)
    cross /= np.maximum(np.abs(cross), 1e-12)
    corr = np.fft.irfft2(cross, s=moving.shape)
    iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
    ny, nx = corr.shape
    shift = np.array(
        [iy - ny if iy > ny // 2 else iy, ix - nx if ix > nx // 2 else ix], dtype=np.float64
    )
    return float(corr[iy, ix]), shift
