"""The arterial input under a late, wide, low bolus: what the CT pipeline measures, and why.

Usage: ``python benchmarks/bolus_input.py [--seed-base 7000] [--protocols 1.5s_60s_wide
low_output] [--kinds small medium ...] [--variants default true_aif ...] [--jobs 2]
[--json rows.json]``

Every lesion kind of ``strokeflow.phantom.family`` under the wide/late-bolus protocols of
``strokeflow.phantom.protocols`` (seeds ``seed_base + 10 * protocol index + kind index``,
the design of ``benchmarks/robustness.py``) is analysed by ``analyse_ctp`` once per
variant. Printed against the generator's truth, per case and variant:

* the core volume and its truth;
* ``ref``: the reference CBF / the true mean normal CBF;
* ``rcore``: the median rCBF of all-core voxels / the true core rCBF;
* the arterial input as ``compute_maps`` receives it (scaled by the venous factor and
  filtered) against the true arterial curve on the same grid and filter: peak and area
  ratio, time-to-peak shift, and the shares of arterial lumen in the voxels chosen;
* the bolus arrival frame found, against the truth's.

Variants replace one step of the pipeline by the truth (``true_aif``: the true arterial
curve, no venous rescaling; ``true_shape``: the true curve scaled to the measured input's
area) or change one setting (``sigma0``: no temporal filter), so that the error of each
step is measured alone. Choose on seeds other than the benchmark's own 100+.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

import strokeflow.analysis.ctp as ctp
import strokeflow.analysis.maps as maps
from harness import map_cases
from strokeflow.analysis.decisions import evaluate_assessable_decisions, lesion_metrics
from strokeflow.analysis.deconvolution import OSVD_THRESHOLDS, osvd_deconvolver
from strokeflow.analysis.hemispheres import LEFT, RIGHT, find_hemispheres
from strokeflow.analysis.lesions import NORMAL_TMAX_S, clean_mask, fill_unmeasured, volume_ml
from strokeflow.analysis.settings import CtpSettings
from strokeflow.phantom.family import LESION_KINDS, FamilyCase, simulate_lesion_case
from strokeflow.phantom.protocols import PROTOCOLS, protocol_by_name

CORE_ZONE = 5
ARTERY_LABEL = 8
WIDE_PROTOCOLS = ("1.5s_60s_wide", "low_output")
VARIANTS = (
    "default",
    "mean_ref",
    "true_aif",
    "true_shape",
    "sigma0",
    "ladder",
    "noise_free",
    "noise_free_ladder",
    "mean_ref+true_aif",
)
#: The oSVD ladder carried on below its floor (0.01 x s_max) for the ``ladder`` variants.
EXTENDED_LADDER = (*OSVD_THRESHOLDS, 0.007, 0.005, 0.0035, 0.002)


def _true_input_on_grid(case: FamilyCase, grid_s: np.ndarray) -> np.ndarray:
    """The true arterial enhancement at the analysis grid's times (from the frame samples)."""
    frames = np.asarray(case.truth["frame_times_s"], dtype=np.float64)[:, 0]
    art = np.asarray(case.truth["arterial_curve_hu"], dtype=np.float64)
    return np.interp(grid_s, frames, art)


def _slab_fraction(case: FamilyCase, analysis: Any, fine: np.ndarray) -> np.ndarray:
    """The share of each analysis voxel's 1 mm truth where ``fine`` (1 mm slices) holds."""
    slabs = analysis.slabs
    per = round(slabs.input_slice_mm) * slabs.slices_per_slab
    first = slabs.first_slice * round(slabs.input_slice_mm)
    nz = slabs.n_slabs
    part = fine[first : first + nz * per]
    _, ny, nx = part.shape
    return np.asarray(part.reshape(nz, per, ny, nx).mean(axis=1))


def _core_fraction(case: FamilyCase, analysis: Any) -> np.ndarray:
    return _slab_fraction(case, analysis, case.zones_fine == CORE_ZONE)


def _artery_share(case: FamilyCase, analysis: Any, voxels_zyx: np.ndarray) -> float:
    share = _slab_fraction(case, analysis, case.labels_fine == ARTERY_LABEL)
    z, y, x = (voxels_zyx[:, i] for i in range(3))
    return float(share[z, y, x].mean())


def _mean_curve_reference(analysis: Any, captured: dict[str, Any], settings: CtpSettings) -> Any:
    """The analysis with its reference read from the mean curve of the reference tissue.

    The mean curve of thousands of normal voxels is nearly noise-free, so the oSVD keeps
    its least regularised rung there; the voxels keep their own readout.
    """
    masks, geometry = analysis.masks, analysis.geometry
    hemis = find_hemispheres(masks.brain, geometry)
    tmax = np.nan_to_num(analysis.maps.core_tmax_s, nan=0.0)
    normal = masks.tissue & (tmax < NORMAL_TMAX_S)
    side = {"left": LEFT, "right": RIGHT}.get(analysis.lesion_side or "", 0)
    if side:
        normal &= hemis.side == -side
    cbf = np.nan_to_num(analysis.maps.cbf_ml_100g_min, nan=0.0)
    conc = captured["concentration"]
    curve = conc[:, normal].astype(np.float64).mean(axis=1)[:, None].astype(np.float32)
    kw = {k: v for k, v in captured["kw"].items() if k not in ("mask", "workers")}
    # Noise-free, the oSVD's floor (0.01 x s_max) is what limits the mean curve's readout.
    maps.osvd_deconvolver = functools.partial(osvd_deconvolver, thresholds=EXTENDED_LADDER)
    try:
        single = maps.compute_maps(curve, captured["aif"], captured["step"], **kw)
    finally:
        maps.osvd_deconvolver = osvd_deconvolver
    rim_factor = analysis.reference_cbf_ml_100g_min / float(cbf[normal].mean())
    reference = float(single.cbf_ml_100g_min[0]) * rim_factor
    rcbf = np.where(masks.tissue, cbf / reference, np.nan)
    raw = np.nan_to_num(rcbf, nan=1.0) < settings.core_rcbf_threshold
    raw &= tmax > settings.core_requires_tmax_s
    vv = geometry.voxel_volume_ml
    core = fill_unmeasured(
        clean_mask(raw, masks.tissue, vv, settings.min_cluster_ml), masks.tissue, masks.unmeasured
    )
    metrics = lesion_metrics(
        volume_ml(core, vv), analysis.metrics.tmax6_ml, analysis.metrics.tmax10_ml
    )
    return dataclasses.replace(
        analysis,
        core=core,
        rcbf=rcbf.astype(np.float32),
        reference_cbf_ml_100g_min=reference,
        metrics=metrics,
        decisions=evaluate_assessable_decisions(metrics, analysis.not_assessable),
    )


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Analyse one case under one variant; never raises (errors become the status)."""
    row: dict[str, Any] = {**spec, "status": "ok"}
    t0 = time.perf_counter()
    original = ctp._vascular_inputs
    variant = spec["variant"]
    try:
        case = simulate_lesion_case(
            spec["kind"],
            protocol_by_name(spec["protocol"]),
            spec["seed"],
            noise=not variant.startswith("noise_free"),
        )
        if variant.endswith("ladder"):
            maps.osvd_deconvolver = functools.partial(osvd_deconvolver, thresholds=EXTENDED_LADDER)
        settings = CtpSettings()
        if spec["variant"] == "sigma0":
            settings = dataclasses.replace(settings, temporal_sigma_s=0.0)
        seen: dict[str, Any] = {}

        def patched(concentration: np.ndarray, *args: Any) -> Any:
            aif, vof, scale, side = original(concentration, *args)
            seen["aif"], seen["scale"] = aif, scale
            if "true_aif" in variant or "true_shape" in variant:
                step = args[4]
                grid = np.arange(concentration.shape[0]) * step + seen["grid0"]
                true = _true_input_on_grid(case, grid)
                if "true_shape" in variant:
                    true = true * (aif.curve.clip(0).sum() * scale) / true.sum()
                aif = dataclasses.replace(aif, curve=true, peak=float(true.max()))
                scale = 1.0
            return aif, vof, scale, side

        times = case.series.times_s
        seen["grid0"] = float(times[0].max())
        ctp._vascular_inputs = patched
        captured: dict[str, Any] = {}

        def capture(concentration: np.ndarray, aif: np.ndarray, step: float, **kw: Any) -> Any:
            captured.update(concentration=concentration, aif=aif, step=step, kw=kw)
            return maps.compute_maps(concentration, aif, step, **kw)

        ctp.compute_maps = capture
        analysis = ctp.analyse_ctp(case.series, settings)
        if "mean_ref" in variant:
            analysis = _mean_curve_reference(analysis, captured, settings)
        grid = analysis.grid_s - analysis.grid_s[0]
        true = _true_input_on_grid(case, analysis.grid_s)
        measured = seen["aif"].curve * seen["scale"]
        if settings.temporal_sigma_s > 0:
            s = settings.temporal_sigma_s / settings.temporal_step_s
            true_f = gaussian_filter1d(true, s, mode="nearest")
            meas_f = gaussian_filter1d(measured, s, mode="nearest")
        else:
            true_f, meas_f = true, measured
        f = _core_fraction(case, analysis)
        all_core = (f >= 0.999) & analysis.masks.tissue
        classes = case.truth["tissue_classes"]
        core_cbf = next(c["cbf_ml_100g_min"] for c in classes if c["zone"] == "core")
        true_ref = float(case.truth["mean_normal_cbf_ml_100g_min"])
        rcore = float(np.nanmedian(analysis.rcbf[all_core])) if all_core.any() else float("nan")
        arrival_true = float(case.truth["protocol"]["arrival_s"])
        row.update(
            core_ml=analysis.metrics.core_ml,
            truth_core_ml=float(case.truth["core_ml"]),
            ref=analysis.reference_cbf_ml_100g_min / true_ref,
            rcore=rcore / (core_cbf / true_ref),
            core_cbf=(
                float(np.nanmedian(analysis.maps.cbf_ml_100g_min[all_core])) / core_cbf
                if all_core.any()
                else float("nan")
            ),
            aif_peak=float(meas_f.max() / true_f.max()),
            aif_area=float(meas_f.clip(0).sum() / true_f.sum()),
            aif_ttp_shift_s=float(grid[int(meas_f.argmax())] - grid[int(true_f.argmax())]),
            aif_raw_peak=float(seen["aif"].curve.max() / true.max()),
            aif_scale=float(seen["scale"]),
            aif_artery_share=_artery_share(case, analysis, seen["aif"].voxels_zyx),
            true_tail=float(true[-1] / true.max()),
            arrival_s=analysis.arrival_s,
            arrival_true_s=arrival_true,
            decisions_right=analysis.decisions == case.truth["decisions"]
            or all(
                analysis.decisions.get(k) in (None, v) for k, v in case.truth["decisions"].items()
            ),
        )
    except Exception as exc:
        row["status"] = f"{type(exc).__name__}: {exc}"
    finally:
        ctp._vascular_inputs = original
        ctp.compute_maps = maps.compute_maps
        maps.osvd_deconvolver = osvd_deconvolver
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def line(r: dict[str, Any]) -> str:
    """One printed row."""
    head = f"{r['kind']:<10} {r['protocol']:<14} {r['seed']:>5} {r['variant']:<10}"
    if r["status"] != "ok":
        return f"{head} {r['status']}"
    return (
        f"{head} core {r['core_ml']:6.1f}/{r['truth_core_ml']:6.1f}  ref {r['ref']:.3f}  "
        f"rcore {r['rcore']:.2f}  ccbf {r['core_cbf']:.2f}  aif pk {r['aif_peak']:.2f} "
        f"area {r['aif_area']:.2f} ttp {r['aif_ttp_shift_s']:+.1f}s raw {r['aif_raw_peak']:.2f} "
        f"x{r['aif_scale']:.2f} art {r['aif_artery_share']:.2f} tail {r['true_tail']:.2f}  "
        f"arr {r['arrival_s']:.1f}/{r['arrival_true_s']:.1f}  "
        f"dec {'ok' if r['decisions_right'] else 'XX'}"
    )


def summary(rows: list[dict[str, Any]]) -> None:
    """Per variant: core within tolerance, median errors and ratios."""
    for v in dict.fromkeys(r["variant"] for r in rows):
        ok = [r for r in rows if r["variant"] == v and r["status"] == "ok"]
        if not ok:
            continue
        within = sum(
            abs(r["core_ml"] - r["truth_core_ml"]) <= max(5.0, 0.1 * r["truth_core_ml"]) for r in ok
        )
        err = [100 * (r["core_ml"] - r["truth_core_ml"]) / r["truth_core_ml"] for r in ok]
        bias = [r["core_ml"] - r["truth_core_ml"] for r in ok]
        print(
            f"{v:<10} n {len(ok):>3}  core within {within}/{len(ok)}  median err "
            f"{np.median(err):+.1f} %  bias {np.mean(bias):+.1f} mL  "
            f"ref {np.median([r['ref'] for r in ok]):.3f}"
            f"  rcore {np.nanmedian([r['rcore'] for r in ok]):.2f}  aif area "
            f"{np.median([r['aif_area'] for r in ok]):.2f} peak "
            f"{np.median([r['aif_peak'] for r in ok]):.2f}  decisions "
            f"{sum(r['decisions_right'] for r in ok)}/{len(ok)}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-base", type=int, default=7000)
    parser.add_argument("--protocols", nargs="+", default=list(WIDE_PROTOCOLS))
    parser.add_argument("--kinds", nargs="+", default=list(LESION_KINDS))
    parser.add_argument("--variants", nargs="+", default=["default", "true_aif"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = [p.name for p in PROTOCOLS]
    specs = [
        {
            "kind": kind,
            "protocol": proto,
            "seed": args.seed_base + 10 * names.index(proto) + LESION_KINDS.index(kind),
            "variant": v,
        }
        for proto in args.protocols
        for kind in args.kinds
        for v in args.variants
    ]
    rows = []
    for r in map_cases(run_case, specs, args.jobs):
        print(line(r), flush=True)
        rows.append(r)
    summary(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
