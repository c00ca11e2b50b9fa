"""Per-study self-calibration of the CBF readout against the study's own arterial input.

The oSVD readout of CBF is biased, and the bias depends on the transit time: a short
residue is smoothed by the arterial input's limited bandwidth (normal tissue reads about
0.8 x its flow), a long, low one less so or even raised by noise. How large the loss is
depends on the bolus (a wide, late bolus or 3 s sampling loses more), so no fixed table
fits every study. Here the study calibrates itself: tissue curves are synthesised from
its own measured arterial input on its own grid, for a grid of transit times and a
family of residue shapes (exponential, gamma of shape 3, box: the sharpest, a middle and
the flattest plausible shape, averaged, as the data cannot tell them apart at short
transit times), and pushed through the same readout as the voxels (``measure``, the
caller's own map computation). Their measured CBF over the true CBF, as a function of the
measured MTT (CBV / CBF, what a voxel shows), is the gain ``g`` divided out of each
voxel's CBF.

Tissue curves are synthesised by a continuous convolution (the arterial input linearly
interpolated on a fine grid, the residue evaluated there) and sampled on the grid, not
with the deconvolution's own discretisation, so the calibration sees the discretisation
error a real curve carries. Optionally noise of the study's measured level (and the
temporal correlation of its filter) is added, so the gain includes the upward bias of
the readout on noisy low-flow curves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import gammaincc

#: True transit times (s) of the synthetic curves.
CAL_MTT_S = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
#: Residue shapes averaged: gamma shape (1 is the exponential; inf is the box).
CAL_SHAPES = (1.0, 3.0, float("inf"))
#: Delays (s) of the synthetic tissue after the arterial input.
CAL_DELAYS_S = (0.0, 2.0, 4.0)
#: Blood volumes (mL/100 g) of the synthetic tissue; only matters with noise.
CAL_CBV_ML_100G = (2.0, 4.0)
#: Gains outside this range are not divided out (a calibration gone wrong must not
#: multiply a map by more than this).
MIN_GAIN, MAX_GAIN = 0.5, 1.5

#: Sub-samples per grid step of the continuous convolution.
_FINE = 10


@dataclass(frozen=True)
class FlowCalibration:
    """Gain of a CBF readout as a function of the measured transit time.

    Attributes
    ----------
    measured_mtt_s : numpy.ndarray
        ``(k,)`` increasing measured MTT (s) at which the gain is tabulated.
    gain : numpy.ndarray
        ``(k,)`` measured CBF / true CBF there (averaged over shapes and delays in log).
    """

    measured_mtt_s: np.ndarray
    gain: np.ndarray

    def gain_at(self, mtt_s: np.ndarray) -> np.ndarray:
        """Gain at measured MTTs (log-linear between nodes, constant beyond the ends).

        Parameters
        ----------
        mtt_s : numpy.ndarray
            Measured MTT in seconds; NaN or non-positive gives a gain of 1.

        Returns
        -------
        numpy.ndarray
            float64 gains, clipped to ``[MIN_GAIN, MAX_GAIN]``.
        """
        m = np.asarray(mtt_s, dtype=np.float64)
        ok = np.isfinite(m) & (m > 0)
        x = np.log(np.where(ok, m, 1.0))
        g = np.interp(x, np.log(self.measured_mtt_s), self.gain)
        return np.where(ok, np.clip(g, MIN_GAIN, MAX_GAIN), 1.0)

    def corrected_cbf(self, cbf: np.ndarray, cbv: np.ndarray) -> np.ndarray:
        """CBF divided by the gain at its measured MTT (``60 * cbv / cbf``).

        Parameters
        ----------
        cbf : numpy.ndarray
            Measured CBF, mL/100 g/min.
        cbv : numpy.ndarray
            Measured CBV, mL/100 g, same shape.

        Returns
        -------
        numpy.ndarray
            float64 corrected CBF (unchanged where the MTT is undefined).
        """
        c = np.asarray(cbf, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mtt = np.where(c > 0, 60.0 * np.asarray(cbv, dtype=np.float64) / c, np.nan)
        return c / self.gain_at(mtt)


def residue_curve(shape: float, mtt_s: float, t_s: np.ndarray) -> np.ndarray:
    """Residue function of unit peak and mean transit time ``mtt_s`` at times ``t_s``.

    Parameters
    ----------
    shape : float
        Gamma shape of the transit-time distribution: 1 exponential, ``inf`` box.
    mtt_s : float
        Mean transit time (the residue's integral), s.
    t_s : numpy.ndarray
        Times after the onset, s (negative gives 0).

    Returns
    -------
    numpy.ndarray
        float64 residue values in [0, 1].
    """
    t = np.asarray(t_s, dtype=np.float64)
    if np.isinf(shape):
        r = (t < mtt_s).astype(np.float64)
    else:
        r = gammaincc(shape, np.maximum(t, 0.0) * shape / mtt_s)
    return np.where(t >= 0, r, 0.0)


def synthetic_curves(
    aif: np.ndarray, step_s: float, flow_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise-free tissue curves of the calibration grid from a measured arterial input.

    Parameters
    ----------
    aif : numpy.ndarray
        ``(n,)`` arterial enhancement on the uniform grid.
    step_s : float
        Grid step, s.
    flow_scale : float
        CBF [mL/100 g/min] of a residue scaled by 1/s flow: ``CBF = flow_scale * F``
        (``6000 * k_H / rho`` in ``analysis.maps``).

    Returns
    -------
    curves : numpy.ndarray
        ``(n, m)`` float64 tissue curves in the unit of ``aif``.
    cbf : numpy.ndarray
        ``(m,)`` their true CBF.
    series : numpy.ndarray
        ``(m, 4)`` shape, delay, CBV and MTT of each curve.
    """
    a = np.asarray(aif, dtype=np.float64)
    n = a.size
    dt = step_s / _FINE
    t_fine = np.arange(n * _FINE) * dt
    a_fine = np.interp(t_fine, np.arange(n) * step_s, a)
    rows, columns, cbfs = [], [], []
    for shape in CAL_SHAPES:
        for delay_s in CAL_DELAYS_S:
            for mtt_s in CAL_MTT_S:
                r = residue_curve(shape, mtt_s, t_fine - delay_s)
                unit = np.convolve(a_fine, r)[: n * _FINE : _FINE] * dt
                for cbv in CAL_CBV_ML_100G:
                    cbf = 60.0 * cbv / mtt_s
                    columns.append(unit * cbf / flow_scale)
                    cbfs.append(cbf)
                    rows.append((shape, delay_s, cbv, mtt_s))
    return np.stack(columns, axis=1), np.asarray(cbfs), np.asarray(rows)


def calibrate_flow(
    aif: np.ndarray,
    step_s: float,
    measure: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    flow_scale: float,
    *,
    noise_sd: float = 0.0,
    noise_sigma_frames: float = 0.0,
    repeats: int = 8,
    seed: int = 0,
) -> FlowCalibration:
    """Calibrate a CBF readout on synthetic curves of the study's arterial input.

    Parameters
    ----------
    aif : numpy.ndarray
        ``(n,)`` arterial enhancement on the uniform grid, as the voxels are deconvolved.
    step_s : float
        Grid step, s.
    measure : callable
        ``curves (n, m) -> (cbf (m,), cbv (m,))``: the readout under calibration.
    flow_scale : float
        See ``synthetic_curves``.
    noise_sd : float
        Standard deviation of the noise added to each synthetic sample (the voxels'
        measured noise, after their filtering); 0 calibrates noise-free.
    noise_sigma_frames : float
        Sigma (frames) of the temporal Gaussian the voxels' noise went through: white
        noise is filtered by it, then scaled to ``noise_sd``.
    repeats : int
        Noise realisations per synthetic curve (with noise); the median is taken.
    seed : int
        Seed of the noise.

    Returns
    -------
    FlowCalibration

    Raises
    ------
    ValueError
        If the readout gives no usable synthetic curve.
    """
    curves, cbf_true, series = synthetic_curves(aif, step_s, flow_scale)
    reps = repeats if noise_sd > 0 else 1
    batch = np.repeat(curves, reps, axis=1)
    if noise_sd > 0:
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(batch.shape)
        if noise_sigma_frames > 0:
            noise = gaussian_filter1d(noise, noise_sigma_frames, axis=0, mode="nearest")
            noise /= noise.std()
        batch = batch + noise_sd * noise
    cbf, cbv = measure(batch.astype(np.float32))
    cbf = np.asarray(cbf, dtype=np.float64).reshape(-1, reps)
    cbv = np.asarray(cbv, dtype=np.float64).reshape(-1, reps)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.nanmedian(np.where(cbf > 0, cbf, np.nan), axis=1) / cbf_true
        mtt = np.nanmedian(np.where(cbf > 0, 60.0 * cbv / cbf, np.nan), axis=1)
    # One gain curve per (shape, delay, CBV) series along its true MTTs, brought onto a
    # common axis of measured MTT and averaged in log over the series.
    grid = np.geomspace(1.0, 40.0, 48)
    logs = []
    keys = series[:, :3]
    for key in np.unique(keys, axis=0):
        sel = np.all(keys == key, axis=1) & np.isfinite(gain) & np.isfinite(mtt) & (gain > 0)
        if np.count_nonzero(sel) < 3:
            continue
        order = np.argsort(series[sel, 3])
        x = np.maximum.accumulate(mtt[sel][order])
        logs.append(np.interp(np.log(grid), np.log(x), np.log(gain[sel][order])))
    if not logs:
        raise ValueError("flow calibration: the readout gave no usable synthetic curve")
    return FlowCalibration(grid, np.exp(np.mean(logs, axis=0)))


def prebolus_noise_sd(curves: np.ndarray, aif: np.ndarray, sigma_frames: float = 0.0) -> float:
    """Noise standard deviation of tissue curves from their frames before the bolus.

    The frames before the arterial input reaches a tenth of its peak (less one) hold no
    contrast in tissue, which the bolus reaches after the artery; the sample variance of
    each voxel over them is averaged. Filtered noise is correlated from frame to frame,
    which lowers a sample variance over few frames; that expected loss (for a Gaussian
    filter of ``sigma_frames``) is divided out.

    Parameters
    ----------
    curves : numpy.ndarray
        ``(n, m)`` tissue curves (enhancement above baseline).
    aif : numpy.ndarray
        ``(n,)`` arterial enhancement on the same grid.
    sigma_frames : float
        Sigma (frames) of the temporal Gaussian the curves went through; 0 for none.

    Returns
    -------
    float
        The noise standard deviation, in the unit of ``curves``; 0 when fewer than three
        pre-bolus frames exist.
    """
    a = np.asarray(aif, dtype=np.float64)
    rise = int(np.argmax(a >= 0.1 * a.max()))
    n_pre = rise - 1
    c = np.asarray(curves)
    if n_pre < 3 or c.shape[1] == 0:
        return 0.0
    pre = c[:n_pre].astype(np.float64)
    variance = float(np.mean(np.var(pre, axis=0, ddof=1)))
    lag = np.arange(n_pre)
    if sigma_frames > 0:
        # Autocorrelation of Gaussian-filtered white noise at lag k: exp(-k^2 / (4 s^2)).
        rho = np.exp(-((lag[:, None] - lag[None, :]) ** 2) / (4.0 * sigma_frames**2))
    else:
        rho = np.eye(n_pre)
    # E[sample variance] = sd^2 * (1 - mean of the off-diagonal correlations).
    off = (rho.sum() - n_pre) / (n_pre * (n_pre - 1))
    return float(np.sqrt(variance / max(1.0 - off, 0.05)))
