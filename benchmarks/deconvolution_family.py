"""CBF bias and Tmax error of deconvolution methods over a family of protocols and residues.

The curves are made here, not by ``strokeflow.phantom``: a gamma-variate arterial input
family (several shapes, widths, arrivals and peak heights, with a small dispersed
recirculation) is convolved on a 0.05 s grid with exponential, gamma (shape 3) and box
residues delayed by 0-10.5 s, sampled by each acquisition protocol, given Gaussian noise
on the acquired frames, and then processed like ``analysis.ctp`` does: PCHIP resampling
to a 1 s grid (``resample_uniform``), a 1 s temporal Gaussian on the tissue curves and
the arterial input alike, and ``compute_maps``.

Printed per protocol and residue, for every candidate method:

* CBF bias: the mean over noise realisations of estimate / truth - 1 (%), summarised
  over the CBF 10-70 x MTT grid as the mean and the worst case (largest |bias|);
* Tmax error: the mean over realisations of estimate - delay (s), summarised as the
  mean absolute and the worst case over delays near 6 s and 10 s (5.5, 6.5, 9.5, 10.5 s).

``--split train`` (the default) uses the arterial inputs and seeds the method was
chosen on; ``--split heldout`` uses other arterial inputs (other shapes, widths,
arrivals) and other seeds, to confirm the choice.

Run:  python benchmarks/deconvolution_family.py [--split heldout] [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import gammaincc

from strokeflow.analysis.maps import compute_maps
from strokeflow.analysis.resample import resample_uniform
from strokeflow.analysis.residue_fit import residue_fitter

#: Hematocrit and density factor the maps apply: the curves carry its inverse.
FLOW_PER_CBF = (1.04 / 0.73) / 6000.0
FINE_S = 0.05
GRID_STEP_S = 1.0
TEMPORAL_SIGMA_S = 1.0

CBFS = (10.0, 20.0, 30.0, 45.0, 60.0, 70.0)
MTTS_S = (3.0, 5.0, 8.0, 12.0)
#: Physiological blood volumes only (mL/100 g): a CBF of 10 at MTT 3 s (CBV 0.5) or of
#: 70 at 12 s (CBV 14) is not tissue.
CBV_RANGE = (1.2, 8.5)
DELAYS_S = (0.0, 3.0, 5.5, 6.5, 9.5, 10.5)
TMAX_EDGE_DELAYS_S = (5.5, 6.5, 9.5, 10.5)
RESIDUES = ("exponential", "gamma3", "box")


@dataclass(frozen=True)
class Aif:
    """Gamma-variate arterial input: peak height, arrival, shape alpha and scale beta."""

    peak_hu: float
    arrival_s: float
    alpha: float
    beta_s: float

    def curve(self, t_s: np.ndarray) -> np.ndarray:
        """Enhancement at ``t_s``: first pass plus a 12 % recirculation 9 s behind the peak."""
        return self._gamma(t_s, 1.0, self.arrival_s, self.beta_s) + self._gamma(
            t_s, 0.12, self.arrival_s + self.alpha * self.beta_s + 9.0, 2.0 * self.beta_s
        )

    def _gamma(self, t_s: np.ndarray, scale: float, t0_s: float, beta_s: float) -> np.ndarray:
        x = np.clip(t_s - t0_s, 0.0, None) / (self.alpha * beta_s)
        return scale * self.peak_hu * x**self.alpha * np.exp(self.alpha * (1.0 - x))


TRAIN_AIFS = (
    Aif(400.0, 4.0, 3.0, 1.3),
    Aif(250.0, 9.0, 2.5, 2.2),
    Aif(500.0, 6.0, 4.0, 1.0),
)
HELDOUT_AIFS = (
    Aif(320.0, 7.0, 3.5, 1.6),
    Aif(200.0, 11.0, 2.0, 2.8),
    Aif(450.0, 3.0, 5.0, 0.8),
)


def protocols() -> dict[str, np.ndarray]:
    """Acquisition times (s) of each sampling protocol."""
    return {
        "1 s x 60 s": np.arange(0.0, 60.01, 1.0),
        "1.5 s x 60 s": np.arange(0.0, 60.01, 1.5),
        "2 s x 60 s": np.arange(0.0, 60.01, 2.0),
        "3 s x 60 s": np.arange(0.0, 60.01, 3.0),
        "1 s to 22 s, 3 s": np.concatenate([np.arange(0.0, 22.01, 1.0), np.arange(25.0, 61, 3)]),
        "1.5 s x 36 s": np.arange(0.0, 36.01, 1.5),
    }


def residue(kind: str, t_s: np.ndarray, mtt_s: float) -> np.ndarray:
    """Residue function of unit height at ``t_s`` (0 before 0)."""
    t = np.clip(t_s, 0.0, None)
    if kind == "exponential":
        r = np.exp(-t / mtt_s)
    elif kind == "gamma3":
        r = gammaincc(3.0, 3.0 * t / mtt_s)
    elif kind == "box":
        r = (t < mtt_s).astype(np.float64)
    else:
        raise ValueError(f"unknown residue {kind!r}")
    return np.where(t_s >= 0, r, 0.0)


@dataclass(frozen=True)
class Cases:
    """Truth of every simulated curve."""

    cbf: np.ndarray
    mtt_s: np.ndarray
    delay_s: np.ndarray
    kind: np.ndarray


def tissue_curves(aif: Aif, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, Cases]:
    """Noise-free arterial ``(t,)`` and tissue ``(t, ncases)`` curves at ``times_s``."""
    fine = np.arange(0.0, times_s[-1] + FINE_S, FINE_S)
    a_fine = aif.curve(fine)
    curves, truth = [], []
    for kind in RESIDUES:
        for mtt in MTTS_S:
            for delay in DELAYS_S:
                r = residue(kind, fine - delay, mtt)
                conv = np.convolve(a_fine, r)[: fine.size] * FINE_S
                sampled = np.interp(times_s, fine, conv)
                for cbf in CBFS:
                    if not CBV_RANGE[0] <= cbf * mtt / 60.0 <= CBV_RANGE[1]:
                        continue
                    curves.append(FLOW_PER_CBF * cbf * sampled)
                    truth.append((cbf, mtt, delay, kind))
    cases = Cases(
        cbf=np.array([c[0] for c in truth]),
        mtt_s=np.array([c[1] for c in truth]),
        delay_s=np.array([c[2] for c in truth]),
        kind=np.array([c[3] for c in truth]),
    )
    return aif.curve(times_s), np.stack(curves, axis=1), cases


Method = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]


def _maps_method(**kwargs: Any) -> Method:
    def run(conc: np.ndarray, aif: np.ndarray, step_s: float) -> tuple[np.ndarray, np.ndarray]:
        maps = compute_maps(conc, aif, step_s, **kwargs)
        return maps.cbf_ml_100g_min, maps.tmax_s

    return run


def _model_fit_method() -> Method:
    """CBF and Tmax both from the residue-model fit (posterior means), seeded by the oSVD."""

    def run(conc: np.ndarray, aif: np.ndarray, step_s: float) -> tuple[np.ndarray, np.ndarray]:
        maps = compute_maps(conc, aif, step_s, fitted_tmax=True)
        seed = maps.tmax_s.astype(np.float64)
        flow, delay = residue_fitter(aif, step_s).fit(conc, seed)
        cbf = (0.73 / 1.04) * 6000.0 * flow
        return cbf, np.clip(delay, 0.0, None)

    return run


def _fitted_flow_blend_method(lo_s: float, hi_s: float) -> Method:
    """Per-voxel mix: the fitted flow where the fitted MTT is long, the default CBF elsewhere.

    The weight of the fitted flow ``F`` rises linearly from 0 at a fitted transit time
    ``60 * CBV / F`` of ``lo_s`` to 1 at ``hi_s``; Tmax is the default's. The fit is seeded
    by the fitted onset (``compute_maps`` seeds it by the half-rise of the oSVD residue).
    Rejected (docs/deconvolution.md, "A per-voxel mix with the fitted flow").
    """

    def run(conc: np.ndarray, aif: np.ndarray, step_s: float) -> tuple[np.ndarray, np.ndarray]:
        maps = compute_maps(conc, aif, step_s)
        seed = np.clip(compute_maps(conc, aif, step_s, fitted_tmax=True).tmax_s, 0.0, None)
        flow, _ = residue_fitter(aif, step_s).fit(conc, seed.astype(np.float64))
        cbf_fit = (0.73 / 1.04) * 6000.0 * flow
        with np.errstate(divide="ignore", invalid="ignore"):
            mtt_fit = np.where(cbf_fit > 0, 60.0 * maps.cbv_ml_100g / cbf_fit, np.nan)
        weight = np.nan_to_num(np.clip((mtt_fit - lo_s) / (hi_s - lo_s), 0.0, 1.0), nan=0.0)
        cbf = (1.0 - weight) * maps.cbf_ml_100g_min + weight * cbf_fit
        return cbf, maps.tmax_s

    return run


def candidate_methods() -> dict[str, Method]:
    """The methods compared, by name."""
    return {
        "oSVD": _maps_method(method="osvd", residue_fit=False),
        "oSVD OI 0.05": _maps_method(method="osvd", residue_fit=False, oscillation_index=0.05),
        "oSVD+peak-corr": _maps_method(method="osvd", residue_fit=False, correct_cbf_bias=True),
        "model fit CBF+Tmax": _model_fit_method(),
        "oSVD CBF, fit Tmax": _maps_method(flow_window_s=None, fitted_tmax=True),
        "fit Tmax, k window 1/3": _maps_method(flow_window_s=(1.0, 3.0), fitted_tmax=True),
        "fit Tmax, k window 0.5/2": _maps_method(flow_window_s=(0.5, 2.0), fitted_tmax=True),
        "default: k window 1/3": _maps_method(),
        "k window 1/3, exponential lag only": _maps_method(model_lag="off"),
        "k window 1/3, model lag": _maps_method(model_lag="full"),
        "two-delay Tmax": _maps_method(two_delay_tmax=True),
        "fit F, MTT 6-10": _fitted_flow_blend_method(6.0, 10.0),
        "fit F, MTT 8-12": _fitted_flow_blend_method(8.0, 12.0),
        "max/model": _maps_method(cbf_readout="max/model"),
        "value": _maps_method(cbf_readout="value"),
        "value/model": _maps_method(cbf_readout="value/model"),
        "value/self": _maps_method(cbf_readout="value", flow_calibration="self"),
        "value/self+noise": _maps_method(
            cbf_readout="value",
            flow_calibration="self+noise",
            noise_sigma_frames=TEMPORAL_SIGMA_S / GRID_STEP_S,
        ),
    }


def run_case(
    methods: dict[str, Method],
    aif: Aif,
    times_s: np.ndarray,
    noise_hu: float,
    reps: int,
    rng: np.random.Generator,
) -> tuple[Cases, dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Per-case mean CBF ratio and Tmax error of each method for one input and protocol."""
    a, clean, cases = tissue_curves(aif, times_s)
    ncase = clean.shape[1]
    noisy = np.repeat(clean, reps, axis=1) + rng.normal(0.0, noise_hu, (times_s.size, ncase * reps))
    # The arterial input is a mean over many voxels: much less noisy than one tissue voxel.
    a_noisy = a + rng.normal(0.0, noise_hu / 2.0, a.shape)
    conc, _ = resample_uniform(noisy.astype(np.float32), times_s, GRID_STEP_S)
    aif_u, _ = resample_uniform(a_noisy[:, None].astype(np.float32), times_s, GRID_STEP_S)
    sigma = TEMPORAL_SIGMA_S / GRID_STEP_S
    conc = gaussian_filter1d(conc, sigma, axis=0, mode="nearest")
    aif_u = gaussian_filter1d(aif_u[:, 0], sigma, mode="nearest")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for name, method in methods.items():
        start = time.perf_counter()
        cbf, tmax = method(conc, aif_u.astype(np.float32), GRID_STEP_S)
        seconds[name] = time.perf_counter() - start
        ratio = (cbf.reshape(ncase, reps) / cases.cbf[:, None]).mean(axis=1)
        terr = (tmax.reshape(ncase, reps) - cases.delay_s[:, None]).mean(axis=1)
        out[name] = (ratio, terr)
    return cases, out, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("train", "heldout"), default="train")
    parser.add_argument("--quick", action="store_true", help="one arterial input, 4 repeats")
    parser.add_argument("--noise-hu", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--methods", nargs="+", help="subset of the candidate names")
    args = parser.parse_args()
    methods = candidate_methods()
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods}
    aifs: tuple[Aif, ...] = TRAIN_AIFS if args.split == "train" else HELDOUT_AIFS
    reps = 4 if args.quick else 12
    if args.quick:
        aifs = aifs[:1]
    rng = np.random.default_rng(2024 if args.split == "train" else 77)
    totals = {name: 0.0 for name in methods}
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in methods}
    # (noise, residue) -> method -> per-protocol CBF bias by MTT and Tmax error.
    compact: dict[tuple[float, str], dict[str, list[tuple[list[float], float]]]] = {}
    for noise in args.noise_hu:
        print(f"\n== {args.split}, tissue noise {noise:g} HU per acquired frame ==")
        print(
            "CBF bias (%) at MTT " + "/".join(f"{m:g}" for m in MTTS_S) + " s (mean over CBF "
            "10-70), worst |CBF bias| (%), mean |Tmax error| (s) at delays 5.5-10.5 s"
        )
        print(f"{'protocol':<18} {'residue':<12}" + "".join(f" {n:>30}" for n in methods))
        for proto, times in protocols().items():
            per: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in methods}
            cases = None
            for aif in aifs:
                cases, out, seconds = run_case(methods, aif, times, noise, reps, rng)
                for name in methods:
                    per[name].append(out[name])
                    totals[name] += seconds[name]
            assert cases is not None
            for kind in RESIDUES:
                sel = cases.kind == kind
                edge = sel & np.isin(cases.delay_s, TMAX_EDGE_DELAYS_S)
                line = f"{proto:<18} {kind:<12}"
                for name in methods:
                    ratio = np.concatenate([r for r, _ in per[name]])
                    terr = np.concatenate([t for _, t in per[name]])
                    mtt = np.tile(cases.mtt_s, len(aifs))
                    sel_all = np.tile(sel, len(aifs))
                    edge_all = np.tile(edge, len(aifs))
                    bias = 100.0 * (ratio - 1.0)
                    by_mtt = [bias[sel_all & (mtt == m)].mean() for m in MTTS_S]
                    worst = float(np.abs(bias[sel_all]).max())
                    t_abs = float(np.abs(terr[edge_all]).mean())
                    rows[name].append((float(np.abs(by_mtt).max()), worst, t_abs))
                    compact.setdefault((noise, kind), {}).setdefault(name, []).append(
                        (by_mtt, t_abs)
                    )
                    line += (
                        " " + "/".join(f"{b:+3.0f}" for b in by_mtt) + f" {worst:4.0f} {t_abs:4.1f}"
                    )
                print(line)
    print(
        "\nmean over protocols: CBF bias (%) at MTT "
        + "/".join(f"{m:g}" for m in MTTS_S)
        + " s, mean |Tmax error| (s) near 6 and 10 s"
    )
    print(f"{'noise':<6} {'residue':<12}" + "".join(f" {n:>26}" for n in methods))
    for (noise, kind), per_method in compact.items():
        line = f"{noise:<6g} {kind:<12}"
        for name in methods:
            vals = per_method[name]
            mean_bias = np.mean([v[0] for v in vals], axis=0)
            mean_t = float(np.mean([v[1] for v in vals]))
            line += " " + "/".join(f"{b:+3.0f}" for b in mean_bias) + f" {mean_t:5.2f}"
        print(line)
    print(
        "\nsummary over rows: largest |mean CBF bias at one MTT| %, rows with every MTT "
        "within 10 %, largest mean |Tmax error| s, rows within 1 s, run time s"
    )
    for name in methods:
        arr = np.array(rows[name])
        print(
            f"  {name:<16} {arr[:, 0].max():6.1f}  {np.count_nonzero(arr[:, 0] <= 10)}/{len(arr)}"
            f"  {arr[:, 2].max():5.2f}  {np.count_nonzero(arr[:, 2] <= 1.0)}/{len(arr)}"
            f"  {totals[name]:6.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
