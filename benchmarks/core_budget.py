"""The core segmentation's own error budget: measured maps against oracle (truth) maps.

Usage: ``python benchmarks/core_budget.py [--seed-base 7000] [--full] [--noise-free]
[--jobs 1] [--json rows.json]``

Each family case (``strokeflow.phantom.family``, the design of ``benchmarks/robustness.py``:
one lesion kind per protocol, or every kind with ``--full``) is analysed by
``analyse_ctp``. Then the lesion stage (``lesions.ctp_lesion_masks``) is run again on the
same brain masks and hemispheres with the measured CBF or Tmax replaced by the truth,
brought onto the analysis grid the way the phantom renders it (the 1 mm truth averaged
over each input slice and each analysis slab; in plane the truth grid is the image grid):

* ``measured``: the pipeline's own maps (what ``analyse_ctp`` reports).
* ``oracle CBF``: true CBF (the mean flow of the voxel's 1 mm truth, CSF and vessel
  lumen 0), measured Tmax.
* ``oracle Tmax``: measured CBF, true Tmax (the delay of the zone that carries most of
  the voxel's flow: the deconvolved residue of a mixture peaks where most flow is).
* ``oracle both``: true CBF and Tmax; what is then missed is the segmentation's alone.
* ``oracle both, true ref``: as above with the truth's reference (the volume-weighted
  mean normal CBF of the contralateral hemisphere) in place of the measured one.

Every analysis voxel gets its true core fraction ``f``; the true core the analysis
misses (``f`` summed over voxels not called core, in mL) is attributed to the first
test that rejected it. Seeds default to 7000+, never the benchmark's 100+.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import map_cases
from strokeflow.analysis.brainmask import BrainMasks
from strokeflow.analysis.ctp import CtpAnalysis, analyse_ctp
from strokeflow.analysis.hemispheres import Hemispheres, find_hemispheres
from strokeflow.analysis.lesions import clean_mask, ctp_lesion_masks, fill_unmeasured
from strokeflow.analysis.maps import PerfusionMaps
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry
from strokeflow.phantom.ellipsoid_head import N_ZONES, TISSUE_LABELS
from strokeflow.phantom.family import LESION_KINDS, FamilyCase, simulate_lesion_case
from strokeflow.phantom.protocols import PROTOCOLS, protocol_by_name

CORE_ZONE = 5
VARIANTS = ("measured", "oracle CBF", "oracle Tmax", "oracle both", "oracle both, true ref")
#: Budget rows, in the order a voxel is tested (the first failed test takes its share).
MISSES = (
    "outside",
    "not_tissue",
    "tmax",
    "rcbf_all_core",
    "rcbf_part_core",
    "clean_mask",
)
ROW_TEXT = {
    "truth": "true core",
    "outside": "in slices the slab plan leaves out",
    "not_tissue": "is not in `masks.tissue` and not filled (vessel, skull rim, CSF)",
    "tmax": "has Tmax <= 6 s (`core_requires_tmax_s`)",
    "rcbf_all_core": "has rCBF >= 0.30, voxel all core",
    "rcbf_part_core": "has rCBF >= 0.30, voxel partly core",
    "clean_mask": "passed the thresholds, removed by `clean_mask`",
    "not_tissue_csf": "... of which CSF",
    "not_tissue_rim": "... of which unmeasured rims (vessel, skull) not filled",
    "not_tissue_vessel": "... of which vessel lumen",
    "recovered_vote": "true core added by the majority vote (failed a threshold)",
    "recovered_fill": "true core added by `fill_unmeasured`",
    "false": "called core but not core (partial volume, penumbra)",
    "estimate": "**estimated core**",
}


@dataclasses.dataclass(frozen=True)
class GridTruth:
    """The truth of one family case on the analysis grid, ``(z, y, x)`` arrays.

    Attributes
    ----------
    core_fraction : numpy.ndarray
        Share of each analysis voxel that is core (0..1).
    cbf_ml_100g_min : numpy.ndarray
        Mean true flow of the voxel (non-tissue counts 0).
    tmax_s : numpy.ndarray
        Delay of the zone carrying most of the voxel's flow (0 s without tissue).
    tissue_fraction : numpy.ndarray
        Share of each analysis voxel that is grey, deep grey or white matter.
    outside_core_ml : float
        True core in input slices that no analysis slab holds.
    """

    core_fraction: np.ndarray
    cbf_ml_100g_min: np.ndarray
    tmax_s: np.ndarray
    tissue_fraction: np.ndarray
    outside_core_ml: float


def truth_on_grid(case: FamilyCase, analysis: CtpAnalysis) -> GridTruth:
    """Average the 1 mm truth of ``case`` onto the analysis grid of ``analysis``.

    Parameters
    ----------
    case : FamilyCase
        The simulated case (1 mm truth labels and zones, tissue classes).
    analysis : CtpAnalysis
        Its analysis (slab plan and grid).

    Returns
    -------
    GridTruth

    Raises
    ------
    ValueError
        If the analysis grid is binned in plane (the family's pixels are not).
    """
    labels, zones = case.labels_fine, case.zones_fine
    classes = case.truth["tissue_classes"]
    cbf_of = np.zeros(len(classes) + 1)  # index -1: no tissue
    delay_of_zone = np.zeros(N_ZONES)
    cls = np.full(labels.shape, -1, dtype=np.intp)
    for i, lab in enumerate(TISSUE_LABELS):
        sel = labels == lab
        cls[sel] = N_ZONES * i + zones[sel]
    for k, c in enumerate(classes):
        cbf_of[k] = c["cbf_ml_100g_min"]
        delay_of_zone[k % N_ZONES] = c["delay_s"]
    fine_cbf = cbf_of[cls]
    fine_core = (zones == CORE_ZONE) & (cls >= 0)
    slabs = analysis.slabs
    per = round(slabs.input_slice_mm) * slabs.slices_per_slab
    first = slabs.first_slice * round(slabs.input_slice_mm)
    nz = slabs.n_slabs
    _, ny, nx = labels.shape
    if analysis.maps.cbf_ml_100g_min.shape != (nz, ny, nx):
        raise ValueError(
            f"analysis grid {analysis.maps.cbf_ml_100g_min.shape} is not the truth's "
            f"slabs of {(nz, ny, nx)}"
        )
    used = slice(first, first + nz * per)
    cbf = fine_cbf[used].reshape(nz, per, ny, nx).mean(axis=1)
    core = fine_core[used].reshape(nz, per, ny, nx).mean(axis=1)
    zone_flow = np.stack(
        [
            np.where(zones[used] == z, fine_cbf[used], 0.0).reshape(nz, per, ny, nx).sum(axis=1)
            for z in range(N_ZONES)
        ]
    )
    tmax = np.where(cbf > 0, delay_of_zone[zone_flow.argmax(axis=0)], 0.0)
    outside = float(np.count_nonzero(fine_core) - np.count_nonzero(fine_core[used]))
    return GridTruth(
        core_fraction=core,
        cbf_ml_100g_min=cbf.astype(np.float32),
        tmax_s=tmax.astype(np.float32),
        tissue_fraction=(cls[used] >= 0).reshape(nz, per, ny, nx).mean(axis=1),
        outside_core_ml=outside * case.fine_voxel_ml,
    )


def attribute(
    rcbf: np.ndarray,
    tmax_s: np.ndarray,
    masks: BrainMasks,
    core_fraction: np.ndarray,
    voxel_ml: float,
    settings: CtpSettings,
) -> tuple[dict[str, float], np.ndarray]:
    """Re-run the core's tests voxel by voxel and attribute the missed true core.

    Parameters
    ----------
    rcbf, tmax_s : numpy.ndarray
        ``(z, y, x)`` relative CBF (NaN outside tissue) and Tmax of the lesion stage.
    masks : BrainMasks
        The analysis' masks.
    core_fraction : numpy.ndarray
        ``(z, y, x)`` true core share of each voxel.
    voxel_ml : float
        Analysis voxel volume.
    settings : CtpSettings
        The core's threshold, Tmax condition and cluster size.

    Returns
    -------
    tuple
        The budget (mL per ``MISSES`` row, ``false`` and ``estimate``) and the core mask
        these tests give (equal to the lesion stage's when fed its rCBF).
    """
    tissue = masks.tissue
    below = np.nan_to_num(rcbf, nan=1.0) < settings.core_rcbf_threshold
    late = (
        np.nan_to_num(tmax_s, nan=0.0) > settings.core_requires_tmax_s
        if settings.core_requires_tmax_s > 0
        else np.ones_like(tissue)
    )
    cleaned = clean_mask(below & late, tissue, voxel_ml, settings.min_cluster_ml)
    core = fill_unmeasured(cleaned, tissue, masks.unmeasured)
    f = core_fraction
    missed = ~core
    rows = {
        "not_tissue": missed & ~tissue,
        "tmax": missed & tissue & ~late,
        "rcbf_all_core": missed & tissue & late & ~below & (f >= 0.999),
        "rcbf_part_core": missed & tissue & late & ~below & (f < 0.999),
        "clean_mask": missed & tissue & late & below,
    }
    outside_tissue = rows["not_tissue"]
    details = {
        "not_tissue_csf": outside_tissue & masks.csf,
        "not_tissue_rim": outside_tissue & masks.unmeasured,
        "not_tissue_vessel": outside_tissue & masks.vessels & ~masks.unmeasured & ~masks.csf,
        "recovered_vote": cleaned & ~(below & late),
        "recovered_fill": core & ~cleaned,
    }
    budget = {k: float(f[m].sum()) * voxel_ml for k, m in {**rows, **details}.items()}
    budget["false"] = float((1.0 - f[core]).sum()) * voxel_ml
    budget["estimate"] = float(np.count_nonzero(core)) * voxel_ml
    return budget, core


def _lesion_stage(
    analysis: CtpAnalysis, cbf: np.ndarray, tmax: np.ndarray, settings: CtpSettings
) -> tuple[np.ndarray, np.ndarray, float]:
    # ``tmax`` is the core's Tmax (``PerfusionMaps.core_tmax_s``): the single-delay readout
    # where the maps hold two, which is what the core's Tmax condition reads.
    # The reference map (the self-calibrated readout) belongs to the measured CBF only: with
    # the true CBF the reference is taken from it.
    measured = cbf is analysis.maps.cbf_ml_100g_min
    maps = dataclasses.replace(
        analysis.maps,
        cbf_ml_100g_min=cbf,
        tmax_s=tmax,
        single_delay_tmax_s=None,
        reference_cbf_ml_100g_min=analysis.maps.reference_cbf_ml_100g_min if measured else None,
    )
    hemis = find_hemispheres(analysis.masks.brain, analysis.geometry)
    core, _, _, rcbf, reference, _, _ = ctp_lesion_masks(
        maps, analysis.masks, hemis, analysis.geometry, settings
    )
    return core, rcbf, reference


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Analyse one case and give the budget of every variant (errors become the status)."""
    row: dict[str, Any] = {**spec, "status": "ok"}
    t0 = time.perf_counter()
    try:
        settings = CtpSettings()
        case = simulate_lesion_case(
            spec["kind"], protocol_by_name(spec["protocol"]), spec["seed"], noise=spec["noise"]
        )
        analysis = analyse_ctp(case.series, settings)
        truth = truth_on_grid(case, analysis)
        vv = analysis.geometry.voxel_volume_ml
        measured_cbf = analysis.maps.cbf_ml_100g_min
        measured_tmax = analysis.maps.core_tmax_s
        true_cbf = np.where(analysis.masks.tissue, truth.cbf_ml_100g_min, np.nan)
        true_tmax = np.where(analysis.masks.tissue, truth.tmax_s, np.nan)
        true_ref = float(case.truth["mean_normal_cbf_ml_100g_min"])
        inputs = {
            "measured": (measured_cbf, measured_tmax),
            "oracle CBF": (true_cbf, measured_tmax),
            "oracle Tmax": (measured_cbf, true_tmax),
            "oracle both": (true_cbf, true_tmax),
        }
        core_all = truth.core_fraction >= 0.999
        row["truth_core_ml"] = float(case.truth["core_ml"])
        row["true_reference"] = true_ref
        row["variants"] = {}
        for name, (cbf, tmax) in inputs.items():
            core, rcbf, reference = _lesion_stage(analysis, cbf, tmax, settings)
            budget, mine = attribute(rcbf, tmax, analysis.masks, truth.core_fraction, vv, settings)
            if not np.array_equal(mine, core):
                raise RuntimeError(f"{name}: the budget's core differs from the lesion stage's")
            cell = {"budget": budget, "reference": reference}
            all_core = core_all & analysis.masks.tissue
            if all_core.any():
                cell["core_rcbf_median"] = float(np.nanmedian(rcbf[all_core]))
            row["variants"][name] = cell
            if name == "oracle both":
                scaled = rcbf * np.float32(reference / true_ref)
                budget, _ = attribute(
                    scaled, tmax, analysis.masks, truth.core_fraction, vv, settings
                )
                row["variants"]["oracle both, true ref"] = {
                    "budget": budget,
                    "reference": true_ref,
                }
        for cell in row["variants"].values():
            cell["budget"]["outside"] = truth.outside_core_ml
        if spec.get("save_dir"):
            # Everything the lesion stage reads, to try other segmentation rules offline.
            m = analysis.masks
            np.savez_compressed(
                f"{spec['save_dir']}/{spec['kind']}_{spec['protocol']}_{spec['seed']}.npz",
                measured_cbf=measured_cbf,
                measured_tmax=measured_tmax,
                true_cbf=truth.cbf_ml_100g_min,
                true_tmax=truth.tmax_s,
                core_fraction=truth.core_fraction.astype(np.float32),
                tissue_fraction=truth.tissue_fraction.astype(np.float32),
                tissue=m.tissue,
                unmeasured=m.unmeasured,
                csf=m.csf,
                vessels=m.vessels,
                brain=m.brain,
                side=find_hemispheres(m.brain, analysis.geometry).side,
                voxel_ml=vv,
                true_reference=true_ref,
                truth_core_ml=row["truth_core_ml"],
                outside_core_ml=truth.outside_core_ml,
                affine=analysis.geometry.affine_lps,
            )
        if not np.isclose(
            row["variants"]["measured"]["budget"]["estimate"], analysis.metrics.core_ml, atol=0.06
        ):
            raise RuntimeError("measured variant differs from the analysis' core volume")
    except Exception as exc:
        row["status"] = f"{type(exc).__name__}: {exc}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def saved_grid(d: Any) -> tuple[BrainMasks, Hemispheres, Geometry, float]:
    """Masks, hemispheres, geometry and voxel volume (mL) of one saved case (``np.load``)."""
    masks = BrainMasks(
        head=d["brain"],
        brain=d["brain"],
        csf=d["csf"],
        vessels=d["vessels"],
        tissue=d["tissue"],
        unmeasured=d["unmeasured"],
    )
    hemis = Hemispheres(side=d["side"], centre_yx=(0.0, 0.0), angle_deg=0.0)
    return masks, hemis, Geometry(d["affine"]), float(d["voxel_ml"])


def replay_case(path: Path) -> dict[str, Any]:
    """The budget of every variant from a ``--save-dir`` file, lesion stage only.

    The stage is the current ``lesions.ctp_lesion_masks``, so a change to it is measured
    on the very maps it was measured on before (no re-analysis, seconds per case).
    """
    d = np.load(path)
    # Names are kind_protocol_seed; kinds and protocols hold underscores themselves.
    rest, seed = path.stem.rsplit("_", 1)
    kind = next(k for k in LESION_KINDS if rest.startswith(f"{k}_"))
    protocol = rest[len(kind) + 1 :]
    row: dict[str, Any] = {"kind": kind, "protocol": protocol, "seed": int(seed), "status": "ok"}
    settings = CtpSettings()
    masks, hemis, geometry, vv = saved_grid(d)
    tissue = masks.tissue
    true_ref = float(d["true_reference"])
    true_cbf = np.where(tissue, d["true_cbf"], np.nan)
    true_tmax = np.where(tissue, d["true_tmax"], np.nan)
    inputs = {
        "measured": (d["measured_cbf"], d["measured_tmax"]),
        "oracle CBF": (true_cbf, d["measured_tmax"]),
        "oracle Tmax": (d["measured_cbf"], true_tmax),
        "oracle both": (true_cbf, true_tmax),
    }
    row["truth_core_ml"] = float(d["truth_core_ml"])
    row["true_reference"] = true_ref
    row["variants"] = {}
    f = d["core_fraction"].astype(np.float64)
    for name, (cbf, tmax) in inputs.items():
        maps = PerfusionMaps(cbf, cbf, cbf, tmax, tmax)
        core, _, _, rcbf, reference, _, _ = ctp_lesion_masks(maps, masks, hemis, geometry, settings)
        budget, _ = attribute(rcbf, tmax, masks, f, vv, settings)
        budget["estimate"] = float(np.count_nonzero(core)) * vv
        row["variants"][name] = {"budget": budget, "reference": reference}
        if name == "oracle both":
            scaled = rcbf * np.float32(reference / true_ref)
            budget, _ = attribute(scaled, tmax, masks, f, vv, settings)
            row["variants"]["oracle both, true ref"] = {"budget": budget, "reference": true_ref}
    for cell in row["variants"].values():
        cell["budget"]["outside"] = float(d["outside_core_ml"])
    row["seconds"] = 0.0
    return row


def cases(seed_base: int, full: bool, noise: bool) -> list[dict[str, Any]]:
    """The robustness benchmark's design (seed ``base + 10 * protocol + kind``)."""
    out = []
    for p, protocol in enumerate(PROTOCOLS):
        kinds = list(LESION_KINDS) if full else [LESION_KINDS[p % len(LESION_KINDS)]]
        for kind in kinds:
            seed = seed_base + 10 * p + LESION_KINDS.index(kind)
            out.append({"kind": kind, "protocol": protocol.name, "seed": seed, "noise": noise})
    return out


def case_line(row: dict[str, Any]) -> str:
    """Core volume of each variant against the truth, one case."""
    name = f"{row['kind']}/{row['protocol']}/{row['seed']}"
    if row["status"] != "ok":
        return f"{name:<32} ERROR {row['status']}"
    t = row["truth_core_ml"]
    cells = []
    for v in VARIANTS:
        est = row["variants"][v]["budget"]["estimate"]
        cells.append(f"{est:6.1f} ({100.0 * (est - t) / t:+5.0f}%)")
    ref = row["variants"]["measured"]["reference"] / row["true_reference"]
    return f"{name:<32} {t:6.1f}  " + "  ".join(cells) + f"  ref {ref:.2f}  {row['seconds']}s"


def budget_table(rows: list[dict[str, Any]]) -> str:
    """The attribution table, one column per variant (sums over the cases, mL)."""
    good = [r for r in rows if r["status"] == "ok"]
    head = "| true core volume missed (mL), because the voxel ... | " + " | ".join(VARIANTS) + " |"
    lines = [head, "|---" * (len(VARIANTS) + 1) + "|"]
    truth = sum(r["truth_core_ml"] for r in good)
    lines.append(f"| {ROW_TEXT['truth']} | " + " | ".join(f"{truth:.1f}" for _ in VARIANTS) + " |")
    details = ("not_tissue_csf", "not_tissue_rim", "not_tissue_vessel")
    keys = (*MISSES[:2], *details, *MISSES[2:], "recovered_vote", "recovered_fill")
    for key in (*keys, "false", "estimate"):
        cells = []
        for v in VARIANTS:
            total = sum(r["variants"][v]["budget"][key] for r in good)
            sign = "+" if key == "false" else ""
            cells.append(f"{sign}{total:.1f}")
        lines.append(f"| {ROW_TEXT[key]} | " + " | ".join(cells) + " |")
    med, within = [], []
    for v in VARIANTS:
        errs, ok = [], 0
        for r in good:
            t, e = r["truth_core_ml"], r["variants"][v]["budget"]["estimate"]
            errs.append(100.0 * (e - t) / t)
            ok += abs(e - t) <= max(5.0, 0.1 * t)
        med.append(f"{np.median(errs):+.1f} %")
        within.append(f"{ok}/{len(good)}")
    lines.append("| median core error | " + " | ".join(med) + " |")
    lines.append("| core within max(5 mL, 10 %) | " + " | ".join(within) + " |")
    refs = [
        "{:.2f}".format(
            np.median([r["variants"][v]["reference"] / r["true_reference"] for r in good])
        )
        for v in VARIANTS
    ]
    lines.append("| reference CBF / true mean normal CBF (median) | " + " | ".join(refs) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-base", type=int, default=7000)
    parser.add_argument("--full", action="store_true", help="every lesion kind (60 cases)")
    parser.add_argument("--noise-free", action="store_true", help="render without noise")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--save-dir", help="write each case's maps and truth here (.npz)")
    parser.add_argument("--replay", type=Path, help="re-run the lesion stage on a --save-dir")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.replay:
        rows = [replay_case(p) for p in sorted(args.replay.glob("*.npz"))]
        for row in rows:
            print(case_line(row))
        print()
        print(budget_table(rows))
        return 0
    specs = cases(args.seed_base, args.full, not args.noise_free)
    if args.save_dir:
        for spec in specs:
            spec["save_dir"] = args.save_dir
    print(f"{'case':<32} {'truth':>6}  " + "  ".join(f"{v[:13]:>14}" for v in VARIANTS))
    rows = []
    for row in map_cases(run_case, specs, args.jobs):
        print(case_line(row), flush=True)
        rows.append(row)
    print()
    print(budget_table(rows))
    print(f"\n{len(rows)} cases, {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
