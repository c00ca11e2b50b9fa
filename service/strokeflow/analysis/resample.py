"""Resampling of irregularly and per-slice timed perfusion series onto one uniform grid.

Deconvolution needs every curve on the same uniform time grid as the arterial input.
Scanners deliver neither: protocols sample densely during the bolus and sparsely after
it, and multi-slab acquisitions give every slice its own clock.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

from strokeflow.analysis.stages import usable_cpus


def resample_uniform(
    signal: np.ndarray,
    times_s: np.ndarray,
    step_s: float,
    method: Literal["pchip", "linear"] = "pchip",
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate every slice onto one common uniform time grid.

    The default is shape-preserving piecewise-cubic (PCHIP) interpolation: linear
    interpolation clips the sharp arterial peak when frames are 1.5-2 s apart, and that
    model error makes the deconvolution underestimate CBF by a further 10-15 %; PCHIP
    restores the peak without the overshoot of a cubic spline.

    The grid starts at the latest first acquisition time over slices and ends at or
    before the earliest last acquisition time, so no slice is extrapolated.

    Parameters
    ----------
    signal : numpy.ndarray
        ``(t, z, y, x)`` series, or ``(t, nvox)`` curves.
    times_s : numpy.ndarray
        Acquisition times in seconds, strictly increasing along ``t``: ``(t, z)`` for a
        4D ``signal`` (one clock per slice) or ``(t,)`` (one clock shared by all).
    step_s : float
        Step of the uniform grid in seconds.
    method : {"pchip", "linear"}
        Interpolation between acquired frames.

    Returns
    -------
    signal_uniform : numpy.ndarray
        ``(n, z, y, x)`` (or ``(n, nvox)``) float32 signal on the grid.
    grid_s : numpy.ndarray
        ``(n,)`` float64 grid times in seconds, ``grid_s[0]`` being the common start.

    Raises
    ------
    ValueError
        If shapes disagree, times are not strictly increasing, or the slices' time
        ranges overlap by less than one step.
    """
    signal = np.asarray(signal)
    times = np.asarray(times_s, dtype=np.float64)
    if not step_s > 0:
        raise ValueError(f"step_s must be positive; got {step_s}")
    if method not in ("pchip", "linear"):
        raise ValueError(f"method must be 'pchip' or 'linear'; got {method!r}")
    if signal.ndim not in (2, 4):
        raise ValueError(f"signal must be (t, z, y, x) or (t, nvox); got shape {signal.shape}")
    nt = signal.shape[0]
    if nt < 2:
        raise ValueError(f"need at least 2 time points to resample; got {nt}")

    # Bring both layouts to slices: (t, z, voxels-per-slice) and times (t, z).
    if signal.ndim == 4:
        nz = signal.shape[1]
        slabs = signal.reshape(nt, nz, -1)
        if times.shape == (nt,):
            times = np.repeat(times[:, None], nz, axis=1)
        elif times.shape != (nt, nz):
            raise ValueError(
                f"times_s must be (t,) = ({nt},) or (t, z) = {(nt, nz)} for signal of shape "
                f"{signal.shape}; got {times.shape}"
            )
    else:
        if times.shape != (nt,):
            raise ValueError(
                f"times_s must be (t,) = ({nt},) for signal of shape {signal.shape}; "
                f"got {times.shape}"
            )
        slabs = signal[:, None, :]
        times = times[:, None]

    if not np.all(np.isfinite(times)):
        bad = np.argwhere(~np.isfinite(times))[0]
        raise ValueError(f"acquisition time of frame {bad[0]} at slice {bad[1]} is not finite")
    steps = np.diff(times, axis=0)
    if np.any(steps <= 0):
        frame, z = np.argwhere(steps <= 0)[0]
        raise ValueError(
            f"acquisition times must increase; at slice {z} frame {frame + 1} "
            f"({times[frame + 1, z]:.3f} s) is not after frame {frame} ({times[frame, z]:.3f} s)"
        )

    start_s = float(times[0].max())
    end_s = float(times[-1].min())
    # The tolerance keeps a grid point that lands on the last time despite rounding.
    n = int(np.floor((end_s - start_s) / step_s + 1e-6)) + 1
    if end_s <= start_s or n < 2:
        raise ValueError(
            f"slices share too little time to resample: common range {start_s:.3f} s to "
            f"{end_s:.3f} s is shorter than one step of {step_s} s"
        )
    grid_s = start_s + step_s * np.arange(n, dtype=np.float64)

    nz_out = slabs.shape[1]
    out = np.empty((n, nz_out, slabs.shape[2]), dtype=np.float32)

    def one_slice(z: int) -> None:
        t_z = times[:, z]
        if method == "pchip":
            out[:, z] = pchip(t_z, slabs[:, z], grid_s)
            return
        # Frame i1 is the first acquisition at or after each grid time; i0 = i1 - 1.
        i1 = np.clip(np.searchsorted(t_z, grid_s, side="left"), 1, nt - 1)
        i0 = i1 - 1
        w = ((grid_s - t_z[i0]) / (t_z[i1] - t_z[i0])).astype(np.float32)[:, None]
        s0 = slabs[i0, z].astype(np.float32, copy=False)
        s1 = slabs[i1, z].astype(np.float32, copy=False)
        out[:, z] = s0 + w * (s1 - s0)

    # Slices are independent and numpy releases the GIL in its array loops.
    with ThreadPoolExecutor(max_workers=min(nz_out, usable_cpus())) as pool:
        list(pool.map(one_slice, range(nz_out)))

    if signal.ndim == 4:
        return out.reshape((n, *signal.shape[1:])), grid_s
    return out[:, 0, :], grid_s


def pchip(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """Shape-preserving piecewise-cubic (PCHIP, Fritsch-Carlson) interpolation along axis 0.

    The arithmetic of ``scipy.interpolate.PchipInterpolator(x, y, axis=0)(x_new)``
    operation for operation (derivatives, Hermite coefficients, power-basis evaluation
    in float64), so the values are the same, without building a piecewise polynomial
    object or importing ``scipy.interpolate`` (a second of process start-up).

    Parameters
    ----------
    x : numpy.ndarray
        ``(t,)`` strictly increasing sample positions, at least 2.
    y : numpy.ndarray
        ``(t, n)`` samples.
    x_new : numpy.ndarray
        ``(m,)`` positions to evaluate at, inside ``[x[0], x[-1]]`` (outside, the end
        cubics are extrapolated).

    Returns
    -------
    numpy.ndarray
        ``(m, n)`` float64.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    h = (x[1:] - x[:-1])[:, None]
    m = (y[1:] - y[:-1]) / h
    d = np.zeros_like(y)
    if y.shape[0] == 2:
        d[0] = m[0]
        d[1] = m[0]
    else:
        sign = np.sign(m)
        flat = (sign[1:] != sign[:-1]) | (m[1:] == 0) | (m[:-1] == 0)
        w1 = 2 * h[1:] + h[:-1]
        w2 = h[1:] + 2 * h[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            harmonic = (w1 / m[:-1] + w2 / m[1:]) / (w1 + w2)
            d[1:-1] = np.where(flat, 0.0, 1.0 / harmonic)
        d[0] = _pchip_end(h[0], h[1], m[0], m[1])
        d[-1] = _pchip_end(h[-1], h[-2], m[-1], m[-2])
    x_new = np.asarray(x_new, dtype=np.float64)
    i = np.clip(np.searchsorted(x, x_new, side="right") - 1, 0, x.size - 2)
    out = np.empty((x_new.size, y.shape[1]), dtype=np.float64)
    # Interval by interval (the points are sorted), so that every coefficient row is
    # broadcast instead of gathered once per output point.
    bounds = np.flatnonzero(np.diff(i)) + 1
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, i.size], strict=True):
        j = int(i[a])
        slope, d0 = m[j], d[j]
        t = (d0 + d[j + 1] - 2 * slope) / h[j]
        c0 = t / h[j]
        c1 = (slope - d0) / h[j] - t
        s = (x_new[a:b] - x[j])[:, None]
        s2 = s * s
        out[a:b] = ((y[j] + d0 * s) + c1 * s2) + c0 * (s2 * s)
    return out


def _pchip_end(h0: np.ndarray, h1: np.ndarray, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
    """One-sided three-point end derivative, limited to keep the end monotone."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    wrong_sign = np.sign(d) != np.sign(m0)
    overshoot = (np.sign(m0) != np.sign(m1)) & (np.abs(d) > 3.0 * np.abs(m0))
    d = np.where(wrong_sign, 0.0, d)
    return np.where(~wrong_sign & overshoot, 3.0 * m0, d)
