"""Arterial bolus, venous outflow, residue functions and tissue curves of the family.

A different model from ``strokeflow.phantom.physics`` on purpose, so that the analysis is
scored on curves it was not developed with:

* arterial first pass: a lagged normal (a Gaussian convolved with an exponential, the
  shape of indicator-dilution curves after transit through the lungs), starting at the
  arrival time; recirculation: the first pass delayed and dispersed by an exponential,
  carrying ``RECIRCULATION_FRACTION`` of its area;
* residue functions: exponential, gamma (the survival function of a shape-3 gamma
  transit-time distribution) and box (plug flow); all have R(0) = 1, a maximum at t = 0
  and integral MTT, so that Tmax (the lag of the maximum of the flow-scaled residue)
  equals the tissue delay;
* tissue enhancement ``C_t = (rho / k_H) * CBF / 6000 * C_a(t - delay) conv R`` with the
  density and haematocrit factor of ``strokeflow.analysis.constants`` (the definition of
  the flow unit, shared by every CT perfusion method).

All curves are computed on a uniform fine grid (``FINE_STEP_S``) from t = 0 and sampled
at the acquisition times by linear interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.signal import fftconvolve

from strokeflow.analysis.constants import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR

FamilyResidue = Literal["exponential", "gamma", "box"]
RESIDUE_KINDS: tuple[FamilyResidue, ...] = ("exponential", "gamma", "box")

FINE_STEP_S = 0.05
#: Lagged normal of a normal cardiac output: Gaussian sigma and exponential time constant.
FIRST_PASS_SIGMA_S, FIRST_PASS_TAU_S = 1.6, 2.4
RECIRCULATION_FRACTION = 0.15
RECIRCULATION_DELAY_S, RECIRCULATION_TAU_S = 9.0, 5.0
#: Brain transit to the draining sinus: pure delay plus exponential dispersion (unit area).
VENOUS_DELAY_S, VENOUS_TAU_S = 4.0, 2.5
#: Arteries beyond an occlusion fill late and weakly through collaterals.
COLLATERAL_DELAY_S, COLLATERAL_TAU_S, COLLATERAL_FRACTION = 4.0, 3.0, 0.45
#: ``rho / k_H / 6000``: flow in mL/100 g/min to 1/s, with the analysis' constants.
FLOW_TO_PER_S = BRAIN_DENSITY_G_PER_ML / HEMATOCRIT_FACTOR / 6000.0


def fine_grid_s(end_s: float) -> np.ndarray:
    """Uniform grid from 0 to at least ``end_s`` with step ``FINE_STEP_S``."""
    n = int(np.ceil(end_s / FINE_STEP_S)) + 2
    return np.arange(n, dtype=np.float64) * FINE_STEP_S


def _exponential_kernel(fine_s: np.ndarray, tau_s: float) -> np.ndarray:
    """Unit-area (on the grid) exponential kernel ``exp(-t / tau)``."""
    k = np.exp(-fine_s / tau_s)
    return np.asarray(k / k.sum())


def _delay_disperse(
    fine_s: np.ndarray, curve: np.ndarray, delay_s: float, tau_s: float
) -> np.ndarray:
    """``curve`` delayed by ``delay_s`` and convolved with a unit-area exponential."""
    shifted = np.interp(fine_s - delay_s, fine_s, curve, left=0.0)
    out = fftconvolve(shifted, _exponential_kernel(fine_s, tau_s))[: fine_s.size]
    # FFT round-off leaves ~1e-14 before the first rise; indicator is never negative.
    out[fine_s < delay_s] = 0.0
    return np.asarray(np.clip(out, 0.0, None))


def arterial_curve(
    fine_s: np.ndarray, arrival_s: float, width: float = 1.0, peak_hu: float = 380.0
) -> np.ndarray:
    """Arterial enhancement (HU) on the fine grid: lagged-normal first pass + recirculation.

    Parameters
    ----------
    fine_s : numpy.ndarray
        ``(n,)`` uniform grid from 0 (``fine_grid_s``).
    arrival_s : float
        Time of the first rise.
    width : float
        Bolus width relative to a normal cardiac output; the first pass area (the dose
        reaching the brain) is kept, so its peak is ``peak_hu / width``.
    peak_hu : float
        First-pass peak at ``width = 1``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` HU above baseline, zero before ``arrival_s``.
    """
    sigma, tau = FIRST_PASS_SIGMA_S * width, FIRST_PASS_TAU_S * width
    centre = arrival_s + 2.5 * sigma
    gauss = np.where(fine_s >= arrival_s, np.exp(-0.5 * ((fine_s - centre) / sigma) ** 2), 0.0)
    first = np.clip(fftconvolve(gauss, _exponential_kernel(fine_s, tau))[: fine_s.size], 0, None)
    first[fine_s < arrival_s] = 0.0
    first *= (peak_hu / width) / first.max()
    recirculation = RECIRCULATION_FRACTION * _delay_disperse(
        fine_s, first, RECIRCULATION_DELAY_S * np.sqrt(width), RECIRCULATION_TAU_S * width
    )
    return np.asarray(first + recirculation)


def venous_curve(fine_s: np.ndarray, arterial: np.ndarray) -> np.ndarray:
    """Sinus enhancement: the arterial curve after brain transit (area conserved)."""
    return _delay_disperse(fine_s, arterial, VENOUS_DELAY_S, VENOUS_TAU_S)


def collateral_curve(fine_s: np.ndarray, arterial: np.ndarray) -> np.ndarray:
    """Enhancement of arteries beyond an occlusion: late, dispersed and weak."""
    return COLLATERAL_FRACTION * _delay_disperse(
        fine_s, arterial, COLLATERAL_DELAY_S, COLLATERAL_TAU_S
    )


def residue_function(fine_s: np.ndarray, mtt_s: float, kind: FamilyResidue) -> np.ndarray:
    """Residue R(t) on the fine grid: R(0) = 1, non-increasing, integral ``mtt_s``.

    Parameters
    ----------
    fine_s : numpy.ndarray
        ``(n,)`` uniform grid from 0.
    mtt_s : float
        Mean transit time (the integral of R).
    kind : {"exponential", "gamma", "box"}
        Exponential ``exp(-t / MTT)``; gamma: survival of a shape-3 gamma transit-time
        density, ``exp(-x) (1 + x + x^2 / 2)`` with ``x = 3 t / MTT``; box: 1 up to MTT.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64.
    """
    if mtt_s <= 0:
        raise ValueError(f"mean transit time must be positive; got {mtt_s}")
    t = np.asarray(fine_s, dtype=np.float64)
    if kind == "exponential":
        return np.asarray(np.exp(-t / mtt_s))
    if kind == "gamma":
        x = 3.0 * t / mtt_s
        return np.asarray(np.exp(-x) * (1.0 + x + 0.5 * x * x))
    if kind == "box":
        step = t[1] - t[0] if t.size > 1 else FINE_STEP_S
        # The edge sample carries the fraction of its cell before MTT, so that the
        # discrete integral is MTT for any MTT, not only multiples of the step.
        return np.asarray(np.clip((mtt_s - t) / step + 0.5, 0.0, 1.0))
    raise ValueError(f"unknown residue kind {kind!r}; use one of {RESIDUE_KINDS}")


@dataclass(frozen=True)
class TissueClass:
    """Perfusion of one tissue compartment.

    Attributes
    ----------
    cbf_ml_100g_min, mtt_s, delay_s : float
        Flow, mean transit time and bolus delay relative to the arterial input.
    residue : {"exponential", "gamma", "box"}
        Residue shape.
    """

    cbf_ml_100g_min: float
    mtt_s: float
    delay_s: float
    residue: FamilyResidue

    @property
    def cbv_ml_100g(self) -> float:
        """Blood volume by the central volume theorem."""
        return self.cbf_ml_100g_min * self.mtt_s / 60.0

    @property
    def tmax_s(self) -> float:
        """Lag of the residue maximum: the delay, since every residue peaks at t = 0."""
        return self.delay_s

    def as_dict(self) -> dict[str, float | str]:
        """JSON-ready truth of the class."""
        return {
            "cbf_ml_100g_min": round(self.cbf_ml_100g_min, 4),
            "cbv_ml_100g": round(self.cbv_ml_100g, 4),
            "mtt_s": round(self.mtt_s, 4),
            "tmax_s": round(self.tmax_s, 4),
            "delay_s": round(self.delay_s, 4),
            "residue": self.residue,
        }


def tissue_curves(
    fine_s: np.ndarray, arterial: np.ndarray, classes: list[TissueClass]
) -> np.ndarray:
    """Enhancement of every tissue class on the fine grid, ``(n_classes, n)`` HU.

    The convolution integral is a trapezoid sum (half weight on R(0)), exact to second
    order in the step for the smooth residues.
    """
    out = np.zeros((len(classes), fine_s.size), dtype=np.float64)
    if not classes:
        return out
    delayed = np.stack([np.interp(fine_s - c.delay_s, fine_s, arterial, left=0.0) for c in classes])
    residues = np.stack([residue_function(fine_s, c.mtt_s, c.residue) for c in classes])
    residues[:, 0] *= 0.5
    conv = fftconvolve(delayed, residues, axes=1)[:, : fine_s.size] * FINE_STEP_S
    flow = np.array([c.cbf_ml_100g_min for c in classes]) * FLOW_TO_PER_S
    out[:] = flow[:, None] * conv
    return out


def sample_curves(fine_s: np.ndarray, curves: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``(k, n)`` fine curves at ``(m,)`` times: ``(m, k)``."""
    pos = np.clip(np.asarray(times_s, dtype=np.float64) / FINE_STEP_S, 0.0, fine_s.size - 1.0)
    lo = np.minimum(np.floor(pos).astype(np.intp), fine_s.size - 2)
    w = (pos - lo)[:, None]
    c = np.asarray(curves, dtype=np.float64).T
    return np.asarray(c[lo] * (1.0 - w) + c[lo + 1] * w)
