"""Core decisions that allow for per-voxel rCBF noise, on the CBF readouts of ``compute_maps``.

Usage: ``python benchmarks/core_decision.py --seed-base 7000 --save-dir DIR [--jobs 2]``
then ``python benchmarks/core_decision.py --replay DIR``.

Each family case (every lesion kind x every protocol, the design of
``benchmarks/robustness.py``) is analysed once by ``analyse_ctp`` (CT defaults); its CBF is
read three ways from the same deconvolution (``value``, the CT default; ``max/model``;
``value/model``) and saved with the masks and the true core fraction of each voxel. The
replay runs the lesion stage on the saved maps with each decision (rCBF < 0.30 in all):

* ``G1``, ``G1.5``: rCBF averaged in plane by a Gaussian of that sigma (voxels), over
  measured tissue only, before the threshold;
* ``conf0.5``, ``conf1``: rCBF + k * s < 0.30, s the spread of rCBF over the measured
  tissue of the voxel's 3 x 3 in-plane neighbourhood;
* ``value/G1(ratio)``, ``value/G2(ratio)``: the value CBF divided by the spatially averaged
  model peak ratio (value / value-model CBF of the voxel);
* ``mixed``: value voxels over the max/model reference;
* ``value/self``, ``value/self+noise`` (``--readouts``): the value CBF divided by the
  study's self-calibrated gain at the voxel's measured MTT (``analysis.flow_calibration``,
  noise-free or with the pre-bolus noise); ``ref ...``: only the reference calibrated;
  ``... mttG1``, ``... mttG2``: the gain read at the in-plane average of log MTT;
* ``nsdK``, ``EBK`` (``--readouts noise``): the readout's own noise SD
  (``analysis.flow_noise.value_noise_sd``) as a margin, rCBF + K * sd / reference < 0.30,
  or as the variance of an empirical-Bayes posterior rCBF (``tweedie_rcbf``), on the
  pipeline's and the self-calibrated reference.

It prints core within max(5 mL, 10 %), median core error, core bias and 95 % limits of
agreement, false core (no true core in the voxel) and missed all-core voxels, Tmax
volumes within max(10 mL, 10 %), decisions right without a critical flag and false
malignant profiles (``docs/deconvolution.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

import strokeflow.analysis.ctp as ctp
from core_budget import cases, saved_grid, truth_on_grid
from strokeflow.analysis.brainmask import BrainMasks
from strokeflow.analysis.decisions import evaluate_assessable_decisions, lesion_metrics
from strokeflow.analysis.flow_calibration import FlowCalibration, calibrate_flow, prebolus_noise_sd
from strokeflow.analysis.flow_noise import value_noise_sd
from strokeflow.analysis.hemispheres import find_hemispheres
from strokeflow.analysis.lesions import clean_mask, ctp_lesion_masks, fill_unmeasured, tmax_above
from strokeflow.analysis.maps import _FLOW_SCALE, PerfusionMaps, compute_maps
from strokeflow.analysis.settings import CtpSettings
from strokeflow.phantom.family import simulate_lesion_case
from strokeflow.phantom.protocols import protocol_by_name

#: The decisions are replayed on the maps of the former default (the reference and the
#: core as read, no noise margin), which the ``value`` row keeps.
SETTINGS = CtpSettings(core_reference_calibration="off", core_noise_margin_k=0.0)
DECISIONS = ("defuse3", "defuse2", "extend", "malignant_profile")
#: Readouts computed besides the pipeline's own (``value``), key in the saved file.
EXTRA_READOUTS = {"max/model": "cbf_mm", "value/model": "cbf_vm"}
#: The pipeline's CBF divided by its self-calibrated gain (``analysis.flow_calibration``),
#: noise-free and with the measured pre-bolus noise; key in the saved file.
CALIBRATED_READOUTS = {"value/self": "cbf_vs", "value/self+noise": "cbf_vsn"}
ALL_READOUTS = {**EXTRA_READOUTS, **CALIBRATED_READOUTS}
FLOW_SCALE = _FLOW_SCALE * 6000.0
_extra: dict[str, np.ndarray] = {}
_readouts: list[str] = list(EXTRA_READOUTS) + list(CALIBRATED_READOUTS)


def _maps_with_extra_readouts(*args: Any, **kwargs: Any) -> PerfusionMaps:
    maps = compute_maps(*args, **kwargs)
    for readout in EXTRA_READOUTS:
        if readout in _readouts:
            cbf = compute_maps(*args, **{**kwargs, "cbf_readout": readout}).cbf_ml_100g_min
            _extra[readout] = cbf
    conc, aif, step_s = args[:3]
    sigma_frames = SETTINGS.temporal_sigma_s / SETTINGS.temporal_step_s
    synthetic = {k: v for k, v in kwargs.items() if k != "mask"}

    def measure(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = compute_maps(curves, aif, step_s, **synthetic)
        return m.cbf_ml_100g_min, m.cbv_ml_100g

    tissue = np.asarray(kwargs["mask"])
    if "noise" in _readouts:
        _extra["noise"] = value_noise_sd(
            conc, aif, step_s, tissue, sigma_frames, SETTINGS.oscillation_index
        )
    for readout in CALIBRATED_READOUTS:
        if readout not in _readouts:
            continue
        noise_sd = 0.0
        if readout.endswith("+noise"):
            noise_sd = prebolus_noise_sd(conc[:, tissue], aif, sigma_frames)
        gain = calibrate_flow(
            aif, step_s, measure, FLOW_SCALE, noise_sd=noise_sd, noise_sigma_frames=sigma_frames
        )
        _extra[readout] = gain.corrected_cbf(maps.cbf_ml_100g_min, maps.cbv_ml_100g).astype(
            np.float32
        )
        _extra[readout + " gain"] = np.stack([gain.measured_mtt_s, gain.gain])
        _extra[readout + " noise"] = np.asarray(noise_sd)
    return maps


def save_case(spec: dict[str, Any]) -> str:
    """Analyse one case and save its maps of every readout; returns a status line."""
    name = f"{spec['kind']}/{spec['protocol']}/{spec['seed']}"
    try:
        _readouts[:] = spec["readouts"]
        ctp.compute_maps = _maps_with_extra_readouts
        case = simulate_lesion_case(spec["kind"], protocol_by_name(spec["protocol"]), spec["seed"])
        an = ctp.analyse_ctp(case.series, SETTINGS)
        truth = truth_on_grid(case, an)
        t, m = case.truth, an.masks
        meta = {
            "truth": {
                "core": t["core_ml"],
                "tmax6": t["tmax6_ml"],
                "tmax10": t["tmax10_ml"],
                "decisions": t["decisions"],
                "ref": t["mean_normal_cbf_ml_100g_min"],
            },
            "pipeline": {
                "core": an.metrics.core_ml,
                "tmax6": an.metrics.tmax6_ml,
                "na": list(an.not_assessable),
                "flags": [f"{f.code}:{f.severity}" for f in an.flags],
            },
        }
        arrays: dict[str, Any] = {
            "cbf_value": an.maps.cbf_ml_100g_min,
            "cbv": an.maps.cbv_ml_100g,
            **{key: _extra[r] for r, key in ALL_READOUTS.items() if r in _extra},
            **({"cbf_sd": _extra["noise"]} if "noise" in _extra else {}),
            **{
                key + suffix: _extra[r + " " + word]
                for r, key in CALIBRATED_READOUTS.items()
                if r in _extra
                for suffix, word in (("_gain", "gain"), ("_noise", "noise"))
            },
            "tmax": an.maps.tmax_s,
            # The core and its reference select by the single-delay Tmax.
            "core_tmax": an.maps.core_tmax_s,
            "core_fraction": truth.core_fraction.astype(np.float32),
            "tissue": m.tissue,
            "unmeasured": m.unmeasured,
            "csf": m.csf,
            "vessels": m.vessels,
            "brain": m.brain,
            "side": find_hemispheres(m.brain, an.geometry).side,
            "affine": an.geometry.affine_lps,
            "voxel_ml": an.geometry.voxel_volume_ml,
            "meta": json.dumps(meta),
        }
        path = f"{spec['save_dir']}/{spec['kind']}__{spec['protocol']}__{spec['seed']}.npz"
        np.savez_compressed(path, **arrays)
        return f"{name} ok"
    except Exception as exc:  # the benchmark reports, never stops
        return f"{name} {type(exc).__name__}: {exc}"


def tissue_gaussian(values: np.ndarray, tissue: np.ndarray, sigma_px: float) -> np.ndarray:
    """In-plane Gaussian average of ``values`` over ``tissue`` voxels only (NaN elsewhere)."""
    v = np.where(tissue, np.nan_to_num(values, nan=1.0), 0.0)
    sigma = (0.0, sigma_px, sigma_px)
    num = ndimage.gaussian_filter(v, sigma, mode="constant", truncate=2.0)
    den = ndimage.gaussian_filter(tissue.astype(np.float64), sigma, mode="constant", truncate=2.0)
    return np.where(tissue, num / np.maximum(den, 1e-9), np.nan)


def local_spread(values: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Sample standard deviation of ``values`` over the tissue of each 3 x 3 in-plane patch."""
    kernel = np.ones((1, 3, 3))
    v = np.where(tissue, np.nan_to_num(values, nan=1.0), 0.0)
    n = ndimage.convolve(tissue.astype(np.float64), kernel, mode="constant")
    m1 = ndimage.convolve(v, kernel, mode="constant") / np.maximum(n, 1)
    m2 = ndimage.convolve(v * v, kernel, mode="constant") / np.maximum(n, 1)
    return np.asarray(np.sqrt(np.maximum(m2 - m1 * m1, 0) * n / np.maximum(n - 1, 1)))


def tweedie_rcbf(rcbf: np.ndarray, sd_r: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Empirical-Bayes (Tweedie) posterior mean of each voxel's rCBF under Gaussian noise.

    ``E[r | m] = m + sd^2 d/dm log p(m)``, with ``p`` the density of the measured rCBF over
    ``candidates`` (a histogram on a 0.005 grid smoothed by a Gaussian of 0.02): a voxel is
    pulled toward where the study's measured values are dense, by its own noise variance,
    and not toward its neighbours (no spatial mixing of a border). The shift is limited
    to +-0.2.
    """
    vals = rcbf[candidates & np.isfinite(rcbf)]
    if vals.size < 50:
        return rcbf
    step = 0.005
    edges = np.arange(-0.5, 2.0 + step, step)
    hist, _ = np.histogram(vals, bins=edges)
    dens = ndimage.gaussian_filter1d(hist.astype(np.float64), 0.02 / step) + 1e-3
    centres = 0.5 * (edges[1:] + edges[:-1])
    dlogp = np.gradient(np.log(dens), step)
    shift = np.nan_to_num(sd_r) ** 2 * np.interp(np.nan_to_num(rcbf, nan=1.0), centres, dlogp)
    return np.asarray(rcbf + np.clip(shift, -0.2, 0.2))


def _core(rcbf: np.ndarray, tmax: np.ndarray, masks: BrainMasks, vv: float) -> np.ndarray:
    raw = np.nan_to_num(rcbf, nan=1.0) < SETTINGS.core_rcbf_threshold
    raw &= tmax > SETTINGS.core_requires_tmax_s
    core = clean_mask(raw, masks.tissue, vv, SETTINGS.min_cluster_ml)
    return fill_unmeasured(core, masks.tissue, masks.unmeasured)


def replay_case(path: Path) -> dict[str, Any]:
    """Every variant's volumes, decisions and false / missed core from one saved case."""
    d = np.load(path)
    meta = json.loads(str(d["meta"]))
    masks, hemis, geometry, vv = saved_grid(d)
    tissue = masks.tissue
    core_tmax = d["core_tmax"] if "core_tmax" in d else d["tmax"]
    tmax = np.nan_to_num(core_tmax, nan=0.0)

    def stage(cbf: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        maps = PerfusionMaps(cbf, cbf, cbf, d["tmax"], d["tmax"], core_tmax)
        core, _, _, rcbf, ref, _, _ = ctp_lesion_masks(maps, masks, hemis, geometry, SETTINGS)
        return core, rcbf, ref

    lesion = {"value": stage(d["cbf_value"])}
    lesion.update({r: stage(d[key]) for r, key in ALL_READOUTS.items() if key in d})
    variants: dict[str, np.ndarray] = {}
    for readout, (core, rcbf, _) in lesion.items():
        variants[readout] = core
        for sigma in (1.0, 1.5):
            smooth = tissue_gaussian(rcbf, tissue, sigma)
            variants[f"{readout} G{sigma:g}"] = _core(smooth, tmax, masks, vv)
        if readout in EXTRA_READOUTS:
            for k in (0.5, 1.0):
                margin = rcbf + k * local_spread(rcbf, tissue)
                variants[f"{readout} conf{k:g}"] = _core(margin, tmax, masks, vv)
            smooth = tissue_gaussian(rcbf, tissue, 1.0)
            margin = smooth + 0.5 * local_spread(smooth, tissue)
            variants[f"{readout} G1+conf0.5"] = _core(margin, tmax, masks, vv)
    value = np.nan_to_num(d["cbf_value"], nan=0.0)
    if "cbf_vm" in d:
        value_model = np.nan_to_num(d["cbf_vm"], nan=0.0)
        ok = tissue & (value > 0) & (value_model > 0)
        ratio = np.where(ok, value / np.where(ok, value_model, 1.0), np.nan)
        for sigma in (1.0, 2.0):
            smooth_ratio = np.where(ok, tissue_gaussian(ratio, ok, sigma), np.nanmedian(ratio[ok]))
            cbf = np.where(tissue, value / smooth_ratio, np.nan).astype(np.float32)
            variants[f"value/G{sigma:g}(ratio)"] = stage(cbf)[0]
    _, rcbf_value, ref_value = lesion["value"]
    if "max/model" in lesion:
        variants["mixed"] = _core(rcbf_value * ref_value / lesion["max/model"][2], tmax, masks, vv)
    for readout, key in CALIBRATED_READOUTS.items():
        if readout in lesion:
            # The voxels as read, only the reference calibrated.
            ref_only = rcbf_value * ref_value / lesion[readout][2]
            variants[f"ref {readout}"] = _core(ref_only, tmax, masks, vv)
            # The gain looked up at the in-plane average of log MTT rather than at the
            # voxel's own: its CBF noise then does not move its gain with it.
            cal = FlowCalibration(*d[key + "_gain"])
            ok = tissue & (value > 0)
            log_mtt = np.where(
                ok,
                np.log(np.maximum(60.0 * np.nan_to_num(d["cbv"]) / np.where(ok, value, 1), 1e-3)),
                0,
            )
            for sigma in (1.0, 2.0):
                smooth = np.exp(tissue_gaussian(log_mtt, ok, sigma))
                cbf = np.where(ok, value / cal.gain_at(smooth), np.nan).astype(np.float32)
                variants[f"{readout} mttG{sigma:g}"] = stage(cbf)[0]

    if "cbf_sd" in d:
        # The readout's own noise (value_noise_sd), as a margin and as the variance of an
        # empirical-Bayes posterior, on the pipeline's reference and the calibrated one.
        sd = d["cbf_sd"]
        cand = tissue & (tmax > SETTINGS.core_requires_tmax_s)
        pairs = [("value", rcbf_value, sd / ref_value)]
        for readout in CALIBRATED_READOUTS:
            if readout in lesion:
                ref_cal = lesion[readout][2]
                pairs.append((f"ref {readout}", rcbf_value * ref_value / ref_cal, sd / ref_cal))
        for label, rcbf, sd_r in pairs:
            for k in (0.25, 0.5, 0.75, 1.0, 2.0):
                variants[f"{label} nsd{k:g}"] = _core(rcbf + k * sd_r, tmax, masks, vv)
            for k in (1.0, 2.0, 3.0):
                post = tweedie_rcbf(rcbf, k * sd_r, cand)
                variants[f"{label} EB{k:g}"] = _core(post, tmax, masks, vv)

    pipe = PerfusionMaps(tmax, tmax, tmax, d["tmax"], d["tmax"])
    tmax6 = tmax_above(pipe, tissue, vv, SETTINGS.min_cluster_ml, 6.0)
    tmax10 = tmax_above(pipe, tissue, vv, SETTINGS.min_cluster_ml, 10.0) & tmax6
    na = [k for k in meta["pipeline"]["na"] if k in ("tmax10_ml", "hypoperfusion_intensity_ratio")]
    frac = d["core_fraction"]
    all_core = (frac >= 0.999) & tissue
    row: dict[str, Any] = {"name": path.stem, "meta": meta, "variants": {}}
    for name, core in variants.items():
        m = lesion_metrics(core.sum() * vv, (tmax6 | core).sum() * vv, tmax10.sum() * vv)
        row["variants"][name] = {
            "core": m.core_ml,
            "tmax6": m.tmax6_ml,
            "tmax10": None if na else m.tmax10_ml,
            "decisions": evaluate_assessable_decisions(m, na),
            "false": float(np.count_nonzero(core & (frac == 0))) * vv,
            "missed": float(np.count_nonzero(all_core & ~core)) * vv,
        }
    row["reference"] = {r: lesion[r][2] / meta["truth"]["ref"] for r in lesion}
    return row


def _within(est: float, truth: float, floor_ml: float) -> bool:
    return abs(est - truth) <= max(floor_ml, 0.1 * truth)


def summary(rows: list[dict[str, Any]]) -> str:
    """One line per variant over all cases."""
    lines = [
        f"{'variant':<24} {'core in':>7} {'med err':>8} {'bias [95% LoA] mL':>24} "
        f"{'false':>6} {'missed':>6} {'T>6 in':>7} {'T>10 in':>7} {'dec':>6} {'FMal':>4}"
    ]
    for name in rows[0]["variants"]:
        truths = [r["meta"]["truth"] for r in rows]
        ests = [r["variants"][name] for r in rows]
        diff = np.array([e["core"] - t["core"] for e, t in zip(ests, truths, strict=True)])
        err = [100 * (e["core"] - t["core"]) / t["core"] for e, t in zip(ests, truths, strict=True)]
        within = sum(_within(e["core"], t["core"], 5.0) for e, t in zip(ests, truths, strict=True))
        t6 = sum(_within(e["tmax6"], t["tmax6"], 10.0) for e, t in zip(ests, truths, strict=True))
        pairs10 = [(e, t) for e, t in zip(ests, truths, strict=True) if e["tmax10"] is not None]
        t10 = sum(_within(e["tmax10"], t["tmax10"], 10.0) for e, t in pairs10)
        right = n_dec = false_mal = 0
        for r, e, t in zip(rows, ests, truths, strict=True):
            dec = e["decisions"]
            false_mal += (
                bool(dec.get("malignant_profile")) and not t["decisions"]["malignant_profile"]
            )
            if any(f.endswith(":critical") for f in r["meta"]["pipeline"]["flags"]):
                continue
            n_dec += 1
            right += all(dec.get(k) is None or dec[k] == t["decisions"][k] for k in DECISIONS)
        half = 1.96 * diff.std(ddof=1)
        loa = f"{diff.mean():+.1f} [{diff.mean() - half:+.1f}, {diff.mean() + half:+.1f}]"
        false_ml = sum(e["false"] for e in ests)
        missed_ml = sum(e["missed"] for e in ests)
        lines.append(
            f"{name:<24} {within:>3}/{len(rows):<3} {np.median(err):+7.1f}% {loa:>24} "
            f"{false_ml:6.1f} {missed_ml:6.1f} {t6:>3}/{len(rows):<3} {t10:>3}/{len(pairs10):<3} "
            f"{right:>2}/{n_dec:<3} {false_mal:>4}"
        )
    for readout in rows[0]["reference"]:
        ratio = np.median([r["reference"][readout] for r in rows])
        lines.append(f"reference / true mean normal CBF, {readout}: median {ratio:.3f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed-base", type=int, default=7000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--save-dir", type=Path, help="analyse the cases, save their maps here")
    parser.add_argument("--replay", type=Path, help="run the decisions on a --save-dir")
    parser.add_argument(
        "--readouts",
        nargs="+",
        default=list(ALL_READOUTS),
        choices=[*ALL_READOUTS, "noise"],
        help="readouts saved besides the pipeline's value (default: all)",
    )
    args = parser.parse_args()
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
        specs = [
            {**s, "save_dir": str(args.save_dir), "readouts": args.readouts}
            for s in cases(args.seed_base, True, True)
        ]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for line in pool.map(save_case, specs):
                print(line, flush=True)
    if args.replay:
        paths = sorted(args.replay.glob("*.npz"))
        if not paths:
            print(f"{args.replay}: no saved cases (.npz)", file=sys.stderr)
            return 1
        rows = [replay_case(p) for p in paths]
        mismatch = [
            r["name"]
            for r in rows
            if abs(r["variants"]["value"]["core"] - r["meta"]["pipeline"]["core"]) > 0.06
        ]
        print(f"{len(rows)} cases; the value row differs from the pipeline's core in {mismatch}")
        print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
