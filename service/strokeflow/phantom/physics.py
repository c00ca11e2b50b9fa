"""Indicator-dilution physics shared by the phantoms and the accuracy benchmark.

Conventions (the same constants as the analysis, see ``strokeflow.analysis.constants``):
a tissue voxel's contrast enhancement is

    C_t(t) = (rho / k_H) * (CBF / 6000) * integral C_a(tau - delay) R(t - tau) dtau

with CBF in mL/100 g/min, rho = 1.04 g/mL the brain density, k_H = 0.73 the
large-to-small-vessel haematocrit correction, C_a the arterial enhancement (HU for CT,
delta-R2* for MR) and R the residue function (R(0) = 1, integral R = MTT). Then
CBV [mL/100 g] = CBF * MTT / 60, the central volume theorem.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from strokeflow.analysis.constants import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR

ResidueKind = Literal["exponential", "box", "linear"]


def gamma_variate(
    t_s: np.ndarray, t0_s: float, alpha: float, beta_s: float, peak: float
) -> np.ndarray:
    """Gamma-variate bolus ``peak * (x/x_max)^alpha * exp(alpha - x/beta)``, x = t - t0.

    The curve is zero before ``t0_s`` and reaches ``peak`` at ``t0_s + alpha * beta_s``.
    """
    x = np.clip(np.asarray(t_s, dtype=np.float64) - t0_s, 0.0, None)
    x_max = alpha * beta_s
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(x > 0, (x / x_max) ** alpha * np.exp(alpha - x / beta_s), 0.0)
    return peak * y


def arterial_input(
    t_s: np.ndarray,
    arrival_s: float = 8.0,
    peak: float = 400.0,
    alpha: float = 3.0,
    beta_s: float = 1.5,
    recirculation_fraction: float = 0.12,
    recirculation_delay_s: float = 9.0,
) -> np.ndarray:
    """Arterial input: a gamma-variate first pass plus a delayed, dispersed recirculation.

    The recirculation is a wider gamma variate whose area is ``recirculation_fraction``
    of the first pass, arriving ``recirculation_delay_s`` after it, followed by a slow
    steady state, as seen in clinical CTP and DSC curves.
    """
    first = gamma_variate(t_s, arrival_s, alpha, beta_s, peak)
    first_area = peak * beta_s * np.exp(alpha) * alpha ** (-alpha) * _gamma(alpha + 1.0)
    rec_alpha, rec_beta = 3.0, 3.0
    rec_unit_area = (
        rec_beta * np.exp(rec_alpha) * rec_alpha ** (-rec_alpha) * _gamma(rec_alpha + 1.0)
    )
    rec_peak = recirculation_fraction * first_area / rec_unit_area
    second = gamma_variate(t_s, arrival_s + recirculation_delay_s, rec_alpha, rec_beta, rec_peak)
    return np.asarray(first + second)


def residue(t_s: np.ndarray, mtt_s: float, kind: ResidueKind = "exponential") -> np.ndarray:
    """Residue function R(t) with R(0) = 1 and integral ``mtt_s`` (0 for t < 0)."""
    t = np.asarray(t_s, dtype=np.float64)
    if kind == "exponential":
        r = np.exp(-np.clip(t, 0.0, None) / mtt_s)
    elif kind == "box":
        r = (t < mtt_s).astype(np.float64)
    elif kind == "linear":
        r = np.clip(1.0 - t / (2.0 * mtt_s), 0.0, None)
    else:
        raise ValueError(f"unknown residue kind {kind!r}")
    return np.where(t >= 0, r, 0.0)


def tissue_enhancement(
    t_s: np.ndarray,
    aif: np.ndarray,
    cbf_ml_100g_min: float,
    mtt_s: float,
    delay_s: float = 0.0,
    residue_kind: ResidueKind = "exponential",
    dt_fine_s: float = 0.05,
) -> np.ndarray:
    """Tissue enhancement for a given arterial curve by the indicator-dilution model.

    Parameters
    ----------
    t_s : numpy.ndarray
        ``(n,)`` increasing sample times in seconds; ``aif`` is sampled on them.
    aif : numpy.ndarray
        ``(n,)`` arterial enhancement at ``t_s``.
    cbf_ml_100g_min, mtt_s : float
        Flow and mean transit time of the tissue.
    delay_s : float
        Arrival delay of the bolus in this tissue relative to the measured artery.
    residue_kind : {"exponential", "box", "linear"}
        Shape of the residue function.
    dt_fine_s : float
        Step of the fine grid the convolution is computed on.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` tissue enhancement at ``t_s``, in the units of ``aif``.
    """
    t = np.asarray(t_s, dtype=np.float64)
    fine = np.arange(0.0, t[-1] + dt_fine_s, dt_fine_s)
    ca = np.interp(fine - delay_s, t, aif, left=0.0, right=float(aif[-1]))
    r = residue(fine, mtt_s, residue_kind)
    flow = (BRAIN_DENSITY_G_PER_ML / HEMATOCRIT_FACTOR) * cbf_ml_100g_min / 6000.0
    conv = np.convolve(ca, r)[: fine.size] * dt_fine_s
    return np.asarray(np.interp(t, fine, flow * conv))


def venous_outflow(
    t_s: np.ndarray,
    arterial: np.ndarray,
    delay_s: float = 5.5,
    dispersion_s: float = 2.0,
    dt_fine_s: float = 0.05,
) -> np.ndarray:
    """Venous enhancement: the arterial curve delayed and dispersed, its area conserved.

    All the indicator that enters the brain leaves it through the veins, so the
    integral of the venous curve equals the arterial one (indicator conservation); the
    brain's transit delays the bolus by ``delay_s`` and spreads it with a unit-area
    gamma kernel (shape 2, mean ``dispersion_s``).

    Parameters
    ----------
    t_s : numpy.ndarray
        ``(n,)`` increasing sample times in seconds; ``arterial`` is sampled on them.
    arterial : numpy.ndarray
        ``(n,)`` arterial enhancement at ``t_s``.
    delay_s : float
        Pure transit delay from the artery to the draining vein.
    dispersion_s : float
        Mean of the dispersion kernel (0 gives a pure delay).
    dt_fine_s : float
        Step of the fine grid the convolution is computed on.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` venous enhancement at ``t_s``, in the units of ``arterial``.
    """
    t = np.asarray(t_s, dtype=np.float64)
    fine = np.arange(0.0, t[-1] + dt_fine_s, dt_fine_s)
    ca = np.interp(fine - delay_s, t, arterial, left=0.0, right=float(arterial[-1]))
    if dispersion_s <= 0:
        return np.asarray(np.interp(t, fine, ca))
    scale = dispersion_s / 2.0
    kernel = (fine / scale) * np.exp(-fine / scale)
    # Normalised on the discrete grid so that the discrete convolution conserves area exactly.
    kernel /= kernel.sum()
    conv = np.convolve(ca, kernel)[: fine.size]
    return np.asarray(np.interp(t, fine, conv))


def _gamma(x: float) -> float:
    from math import gamma

    return gamma(x)
