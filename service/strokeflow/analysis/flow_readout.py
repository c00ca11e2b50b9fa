"""CBF read from an oSVD residue with the regularisation bias of the voxel's fitted models.

The maximum of a truncated-SVD residue is not the flow: the regularisation lowers the
peak of a short residue (the arterial input's bandwidth; -20 % at MTT 4 s even at the
least regularised rung) and noise raises the maximum of a low, long one. A calibration
on exponential residues (``maps.correct_cbf_bias``) over-corrects other shapes. Here
every model curve of the residue-model fit's table (``analysis.residue_fit``: gamma
residues of several shapes, transit times and delays, sampled like the data) is
deconvolved at every rung of the oSVD ladder, as a voxel is, and two things are read
from its residue within the flow window around its onset:

* ``peak_ratio``: the regularised peak over the model's true flow;
* ``peak_lag_s``: where that peak lies, relative to the onset.

A voxel then gets the likelihood-weighted mean of these over its fitted models (the
weights and best models of ``ResidueFit``) at the rung it kept, so the correction
follows the residue shape and transit time its curve shows rather than a fixed
exponential. ``readout="value_at_model_peak"`` also replaces the maximum by the value of
the residue at the models' peak lag: a value at a fixed lag is linear in the data, so
noise does not bias it upwards as it does a maximum.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from strokeflow.analysis.deconvolution import Deconvolver
from strokeflow.analysis.residue_fit import ResidueFit, ResidueFitter

#: A model peak ratio below this is not divided out (noise-only voxels, models whose
#: first pass the scan cuts), nor one above the upper bound.
MIN_PEAK_RATIO = 0.25
MAX_PEAK_RATIO = 1.5


@dataclass(frozen=True)
class ModelPeakTable:
    """Regularised peak of every model curve of a fitter at every rung of a deconvolver.

    Attributes
    ----------
    peak_ratio : numpy.ndarray
        ``(rungs, delays, models)`` float64 regularised peak within the flow window over
        the model's flow (1 where the model curve is empty).
    peak_lag_s : numpy.ndarray
        ``(rungs, delays, models)`` float64 lag (s) of that peak after the model's onset.
    """

    peak_ratio: np.ndarray
    peak_lag_s: np.ndarray


def model_residues_by_rung(dec: Deconvolver, fitter: ResidueFitter) -> Iterator[np.ndarray]:
    """The residues of the fitter's model curves, deconvolved at each rung in turn.

    Parameters
    ----------
    dec : Deconvolver
        Deconvolver of the arterial input the fitter was built on.
    fitter : ResidueFitter
        Model table of the same arterial input and grid.

    Yields
    ------
    numpy.ndarray
        ``(n_lags, delays * models)`` float32 residues of the unit-norm model curves
        (delay-major columns) at rung 0, 1, ... of ``dec.ranks``. One array, updated in
        place from rung to rung: read it before asking for the next.
    """
    n_delays, n, n_models = fitter.atoms.shape
    curves = np.ascontiguousarray(fitter.atoms.transpose(1, 0, 2).reshape(n, n_delays * n_models))
    w = (dec.u_t @ curves) * dec.inv_s[:, None]
    k = np.zeros((dec.n_lags, curves.shape[1]), dtype=np.float32)
    prev = 0
    for rank in dec.ranks:
        # Each rung keeps more components: add only its new ones.
        if rank > prev:
            k += dec.v[:, prev:rank] @ w[prev:rank]
            prev = rank
        yield k


def model_peak_table(
    dec: Deconvolver,
    fitter: ResidueFitter,
    step_s: float,
    flow_window_s: tuple[float, float],
) -> ModelPeakTable:
    """Deconvolve the fitter's model curves at every rung and read their peaks.

    Parameters
    ----------
    dec : Deconvolver
        Circulant (oSVD) deconvolver of the arterial input the fitter was built on.
    fitter : ResidueFitter
        Model table of the same arterial input and grid.
    step_s : float
        Grid step in seconds.
    flow_window_s : (float, float)
        Seconds before and after each model's onset where its peak is searched, as the
        voxel's CBF is searched around its fitted onset.

    Returns
    -------
    ModelPeakTable

    Raises
    ------
    ValueError
        If the deconvolver is not circulant or its grid differs from the fitter's.
    """
    n_delays, n, n_models = fitter.atoms.shape
    if not dec.circulant or dec.n_frames != n:
        raise ValueError(
            f"need the circulant deconvolver of the fitter's {n}-frame grid; got "
            f"{'circulant' if dec.circulant else 'lower-triangular'}, {dec.n_frames} frames"
        )
    onset_s = np.repeat(fitter.delays_s, n_models)
    # Unit-norm atoms: their flow is 1 / norm of the unit-flow curve.
    norm = fitter.norms.reshape(-1)
    j = np.arange(dec.n_lags)
    lag_s = np.where(j >= n, j - dec.n_lags, j) * step_s
    before_s, after_s = flow_window_s
    inside = (lag_s[:, None] >= (onset_s - before_s)[None, :]) & (
        lag_s[:, None] <= (onset_s + after_s)[None, :]
    )
    ratio = np.ones((len(dec.ranks), n_delays * n_models))
    peak_lag = np.zeros_like(ratio)
    cols = np.arange(n_delays * n_models)
    for i, k in enumerate(model_residues_by_rung(dec, fitter)):
        windowed = np.where(inside, k, -np.inf)
        idx = np.argmax(windowed, axis=0)
        peak = windowed[idx, cols].astype(np.float64)
        usable = np.isfinite(norm) & np.isfinite(peak)
        ratio[i] = np.where(usable, peak * np.where(np.isfinite(norm), norm, 0.0), 1.0)
        peak_lag[i] = np.where(usable, lag_s[idx] - onset_s, 0.0)
    shape = (len(dec.ranks), n_delays, n_models)
    return ModelPeakTable(ratio.reshape(shape), peak_lag.reshape(shape))


def voxel_peak_model(
    table: ModelPeakTable, fit: ResidueFit, rung: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Likelihood-weighted peak ratio and peak lag of each voxel's fitted models.

    Parameters
    ----------
    table : ModelPeakTable
        From ``model_peak_table`` for the voxels' deconvolver and fitter.
    fit : ResidueFit
        The voxels' fit.
    rung : numpy.ndarray
        ``(nvox,)`` rung each voxel kept.

    Returns
    -------
    peak_ratio : numpy.ndarray
        ``(nvox,)`` float64, clipped to ``[MIN_PEAK_RATIO, MAX_PEAK_RATIO]``; 1 where the
        fit found no model.
    peak_lag_s : numpy.ndarray
        ``(nvox,)`` float64 lag of the models' regularised peak after time 0 (their delay
        plus the lag of the peak after the onset); NaN where the fit found no model.
    """
    delay_idx = fit.window_start[None, :] + np.arange(fit.weights.shape[0])[:, None]
    r = rung[None, :]
    ratio = (fit.weights * table.peak_ratio[r, delay_idx, fit.models]).sum(axis=0)
    # The delays of the table step from delays_s[0]; fit.weights sum to 1 where found.
    lag = (fit.weights * table.peak_lag_s[r, delay_idx, fit.models]).sum(axis=0)
    found = fit.flow_per_s > 0
    ratio = np.where(found, np.clip(ratio, MIN_PEAK_RATIO, MAX_PEAK_RATIO), 1.0)
    return ratio, np.where(found, fit.delay_s + lag, np.nan)


def residue_at_lag(k: np.ndarray, lag_s: np.ndarray, dec: Deconvolver, step_s: float) -> np.ndarray:
    """Value of each circulant residue at ``lag_s`` (linear between samples).

    Parameters
    ----------
    k : numpy.ndarray
        ``(L, nvox)`` circulant residues (samples ``N..2N-1`` are negative lags).
    lag_s : numpy.ndarray
        ``(nvox,)`` lags in seconds; NaN gives NaN.
    dec : Deconvolver
        The deconvolver that made ``k``.
    step_s : float
        Grid step in seconds.

    Returns
    -------
    numpy.ndarray
        ``(nvox,)`` float64.
    """
    length = dec.n_lags
    pos = np.nan_to_num(lag_s, nan=0.0) / step_s
    lo = np.floor(pos)
    frac = pos - lo
    cols = np.arange(k.shape[1])
    i0 = lo.astype(np.intp) % length
    i1 = (i0 + 1) % length
    value = (1.0 - frac) * k[i0, cols] + frac * k[i1, cols]
    return np.where(np.isfinite(lag_s), value, np.nan)
