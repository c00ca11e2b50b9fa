"""Per-voxel noise standard deviation of the CBF value readout.

The value readout (``compute_maps(cbf_readout="value")``) is the oSVD residue at one lag,
a linear function ``a . c`` of the voxel's curve at the rung it kept, so its variance is
``a^T S a`` with ``S`` the curve's noise covariance. ``S`` is the voxel's pre-bolus
sample variance, pooled over the tissue of its 3 x 3 in-plane patch (the noise level
varies slowly in space, unlike the flow, so pooling does not mix a border), corrected for
the temporal Gaussian's correlation and carrying its autocorrelation
``exp(-k^2 / 4 s^2)``. ``a^T rho a`` is the median over lags 0..N-1 of the rung's inverse
rows (nearly constant for a circulant inverse).

It is a noise index, not a calibrated uncertainty: in all-core phantom tissue the
observed CBF scatter is 1.5-1.7 x this SD (0.4-5 x by protocol), as the rung choice, the
readout's lag and the spatial filter add variation it does not see
(``docs/deconvolution.md``, "Where the false core lies").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from strokeflow.analysis.constants import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR
from strokeflow.analysis.deconvolution import Deconvolver, osvd_deconvolver

#: mL/100 g/min per unit of flow-scaled residue (1/s), as in ``analysis.maps``.
_CBF_PER_RESIDUE = HEMATOCRIT_FACTOR / BRAIN_DENSITY_G_PER_ML * 6000.0


def _autocorrelation(n: int, sigma_frames: float) -> np.ndarray:
    lag = np.arange(n)
    if sigma_frames <= 0:
        return np.eye(n)
    return np.exp(-((lag[:, None] - lag[None, :]) ** 2) / (4.0 * sigma_frames**2))


def pooled_prebolus_variance(
    concentration: np.ndarray, aif: np.ndarray, tissue: np.ndarray, sigma_frames: float
) -> np.ndarray:
    """Noise variance of each voxel's curve from its pre-bolus frames, pooled in plane.

    Parameters
    ----------
    concentration : numpy.ndarray
        ``(n, z, y, x)`` or ``(n, nvox)`` tissue enhancement (a flat voxel axis is not
        pooled).
    aif : numpy.ndarray
        ``(n,)`` arterial enhancement on the same grid; the frames before it reaches a
        tenth of its peak (less one) hold no contrast in tissue.
    tissue : numpy.ndarray
        Boolean, shaped like one frame: the voxels measured and pooled.
    sigma_frames : float
        Sigma (frames) of the temporal Gaussian the curves went through (0 for none): the
        expected loss of a sample variance of correlated noise is divided out.

    Returns
    -------
    numpy.ndarray
        float64, shaped like one frame, in the squared unit of ``concentration``; NaN
        outside ``tissue`` and everywhere when fewer than 3 pre-bolus frames exist.
    """
    a = np.asarray(aif, dtype=np.float64)
    n_pre = int(np.argmax(a >= 0.1 * a.max())) - 1
    t = np.asarray(tissue, dtype=bool)
    out = np.full(t.shape, np.nan)
    if n_pre < 3:
        return out
    pre_rho = _autocorrelation(n_pre, sigma_frames)
    loss = 1.0 - (pre_rho.sum() - n_pre) / (n_pre * (n_pre - 1))
    pre = np.asarray(concentration)[:n_pre].astype(np.float64)
    var = np.where(t, np.var(pre, axis=0, ddof=1), 0.0)
    var = np.nan_to_num(var, nan=0.0)
    if t.ndim == 3:
        kernel = np.ones((1, 3, 3))
        count = ndimage.convolve(t.astype(np.float64), kernel, mode="constant")
        var = ndimage.convolve(var, kernel, mode="constant") / np.maximum(count, 1.0)
    out[t] = var[t] / max(loss, 0.05)
    return out


def rung_noise_gain(dec: Deconvolver, sigma_frames: float) -> np.ndarray:
    """Residue noise SD per unit curve noise SD at each rung of a deconvolver.

    Parameters
    ----------
    dec : Deconvolver
        The oSVD deconvolver the voxels went through.
    sigma_frames : float
        Sigma (frames) of the temporal Gaussian that correlates the curves' noise.

    Returns
    -------
    numpy.ndarray
        ``(len(dec.ranks),)`` float64: ``sqrt(a^T rho a)``, median over lags 0..N-1.
    """
    n = dec.n_frames
    rho = _autocorrelation(n, sigma_frames)
    gain = np.zeros(len(dec.ranks))
    for i, r in enumerate(dec.ranks):
        rows = dec.v[:n, :r].astype(np.float64) @ (
            dec.inv_s[:r, None].astype(np.float64) * dec.u_t[:r].astype(np.float64)
        )
        gain[i] = np.sqrt(np.median(np.einsum("ln,nm,lm->l", rows, rho, rows)))
    return gain


def value_noise_sd(
    concentration: np.ndarray,
    aif: np.ndarray,
    step_s: float,
    tissue: np.ndarray,
    sigma_frames: float,
    oscillation_index: float = 0.095,
) -> np.ndarray:
    """Per-voxel SD (mL/100 g/min) of the CBF value readout from the curve's noise.

    Deconvolves the tissue once for the rungs; ``compute_maps(cbf_noise_sd=True)`` reads
    them from its own deconvolution instead.

    Parameters
    ----------
    concentration : numpy.ndarray
        ``(n, z, y, x)`` tissue enhancement on the uniform grid.
    aif : numpy.ndarray
        ``(n,)`` arterial enhancement, as deconvolved.
    step_s : float
        Grid step, s.
    tissue : numpy.ndarray
        Boolean ``(z, y, x)``: the voxels measured.
    sigma_frames : float
        Sigma (frames) of the temporal Gaussian the curves went through.
    oscillation_index : float
        oSVD target oscillation index, as in ``compute_maps``.

    Returns
    -------
    numpy.ndarray
        float32 ``(z, y, x)``; NaN outside ``tissue`` or where fewer than 3 pre-bolus
        frames exist.
    """
    conc = np.asarray(concentration)
    n = conc.shape[0]
    # float64, as compute_maps builds its deconvolver: the same rungs.
    a = np.asarray(aif, dtype=np.float64)
    t = np.asarray(tissue, dtype=bool)
    var = pooled_prebolus_variance(conc, a, t, sigma_frames)
    dec = osvd_deconvolver(a, step_s, oscillation_index=oscillation_index)
    gain = rung_noise_gain(dec, sigma_frames)
    idx = np.flatnonzero(t.reshape(-1))
    flat = conc.reshape(n, -1)
    rung = np.empty(idx.size, dtype=np.intp)
    for start in range(0, idx.size, 8192):
        part = idx[start : start + 8192]
        rung[start : start + part.size] = dec.residues(flat[:, part].astype(np.float32))[1]
    out = np.full(t.size, np.nan, dtype=np.float32)
    out[idx] = noise_sd_at_rung(var.reshape(-1)[idx], gain, rung)
    return out.reshape(t.shape)


def noise_sd_at_rung(variance: np.ndarray, gain: np.ndarray, rung: np.ndarray) -> np.ndarray:
    """CBF noise SD (mL/100 g/min) of voxels from their curve variance and rung.

    Parameters
    ----------
    variance : numpy.ndarray
        ``(m,)`` curve noise variance (``pooled_prebolus_variance``).
    gain : numpy.ndarray
        ``rung_noise_gain`` of the deconvolver.
    rung : numpy.ndarray
        ``(m,)`` int rung each voxel kept.

    Returns
    -------
    numpy.ndarray
        ``(m,)`` float32.
    """
    return (_CBF_PER_RESIDUE * np.sqrt(variance) * gain[rung]).astype(np.float32)
