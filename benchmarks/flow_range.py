"""Flow range of the CT pipeline on family cases: normal, core and their ratio against truth.

Usage: ``python benchmarks/flow_range.py [--seed-base 7000] [--jobs 2]
[--readouts max value/model ...] [--kinds-per-protocol 1]``

For each lesion case of ``strokeflow.phantom.family`` (one kind per protocol by default,
seeds ``seed_base + 10 * protocol index + kind index`` as in ``benchmarks/robustness.py``)
and each CBF readout of ``analysis.maps.compute_maps`` (``cbf_readout``), the case is
analysed by ``analyse_ctp`` and these are printed against the generator's truth:

* ``ref``: the reference CBF (contralateral normal tissue) / the true mean normal CBF;
* ``core``: the median CBF of all-core analysis voxels (true core fraction 1, the 1 mm
  truth averaged over the voxel and slab) / the true core CBF;
* ``rcore``: the median rCBF of those voxels / the true core rCBF;
* the core volume (mL) and its truth.

Choose a readout by the medians over cases of ``ref``, ``core`` and ``rcore`` (1 is
unbiased) and the core error, never on the benchmark's own seeds (100+).
"""

from __future__ import annotations

import argparse
import functools
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

import strokeflow.analysis.ctp as ctp
from strokeflow.analysis.maps import compute_maps
from strokeflow.analysis.settings import CtpSettings
from strokeflow.phantom.family import LESION_KINDS, simulate_lesion_case
from strokeflow.phantom.protocols import PROTOCOLS

#: Zone index of the core in ``FamilyCase.zones_fine``.
CORE_ZONE = 5


def core_fraction(zones_fine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """True core fraction of each analysis voxel, or None if the grids do not nest."""
    zf, yf, xf = zones_fine.shape
    z, y, x = shape
    if zf % z or yf % y or xf % x:
        return None
    core = (zones_fine == CORE_ZONE).astype(np.float64)
    blocks = core.reshape(z, zf // z, y, yf // y, x, xf // x)
    return np.asarray(blocks.mean(axis=(1, 3, 5)))


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Analyse one case with one readout; never raises (errors become the status)."""
    row: dict[str, Any] = {**spec, "status": "ok"}
    try:
        protocol = next(p for p in PROTOCOLS if p.name == spec["protocol"])
        case = simulate_lesion_case(spec["kind"], protocol, spec["seed"])
        truth = case.truth
        ctp.compute_maps = functools.partial(compute_maps, cbf_readout=spec["readout"])
        t0 = time.perf_counter()
        analysis = ctp.analyse_ctp(case.series, CtpSettings())
        row["seconds"] = time.perf_counter() - t0
        normal = truth["mean_normal_cbf_ml_100g_min"]
        classes = truth["tissue_classes"]
        core_cbf = next(c["cbf_ml_100g_min"] for c in classes if c["zone"] == "core")
        row["ref"] = analysis.reference_cbf_ml_100g_min / normal
        row["core_ml"] = analysis.metrics.core_ml
        row["core_true_ml"] = truth["core_ml"]
        frac = core_fraction(case.zones_fine, analysis.maps.cbf_ml_100g_min.shape)
        if frac is not None:
            sel = (frac >= 0.999) & analysis.masks.tissue
            cbf = analysis.maps.cbf_ml_100g_min[sel]
            rcbf = analysis.rcbf[sel]
            row["n_core_voxels"] = int(sel.sum())
            voxel_ml = analysis.geometry.voxel_volume_ml
            # Called core where the truth holds none, and all-core voxels not called.
            row["false_ml"] = float(np.count_nonzero(analysis.core & (frac == 0))) * voxel_ml
            row["missed_ml"] = float(np.count_nonzero(sel & ~analysis.core)) * voxel_ml
            row["core"] = float(np.nanmedian(cbf)) / core_cbf if sel.any() else float("nan")
            row["rcore"] = (
                float(np.nanmedian(rcbf)) / (core_cbf / normal) if sel.any() else float("nan")
            )
    except Exception as exc:  # the benchmark reports, never stops
        row["status"] = f"{type(exc).__name__}: {exc}"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-base", type=int, default=7000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--readouts", nargs="+", default=["max", "value/model"])
    parser.add_argument("--kinds-per-protocol", type=int, default=1)
    parser.add_argument("--protocols", nargs="+", help="subset of protocol names")
    args = parser.parse_args()
    specs = []
    for p, protocol in enumerate(PROTOCOLS):
        if args.protocols and protocol.name not in args.protocols:
            continue
        for j in range(args.kinds_per_protocol):
            k = (p + j) % len(LESION_KINDS)
            for readout in args.readouts:
                specs.append(
                    {
                        "kind": LESION_KINDS[k],
                        "protocol": protocol.name,
                        "seed": args.seed_base + 10 * p + k,
                        "readout": readout,
                    }
                )
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_case, specs))
    print(
        f"{'case':<34} {'readout':<12} {'ref':>5} {'core':>5} {'rcore':>5} {'core mL':>15} "
        f"{'false mL':>8} {'missed mL':>9}"
    )
    for r in rows:
        name = f"{r['kind']}/{r['protocol']}/{r['seed']}"
        if r["status"] != "ok":
            print(f"{name:<34} {r['readout']:<12} {r['status']}")
            continue
        print(
            f"{name:<34} {r['readout']:<12} {r['ref']:5.2f} {r.get('core', np.nan):5.2f} "
            f"{r.get('rcore', np.nan):5.2f} {r['core_ml']:7.1f}/{r['core_true_ml']:<7.1f} "
            f"{r.get('false_ml', np.nan):8.1f} {r.get('missed_ml', np.nan):9.1f}"
        )
    print("\nmedians over cases (range): ref, core, rcore; median core error %; within tol")
    for readout in args.readouts:
        ok = [r for r in rows if r["readout"] == readout and r["status"] == "ok"]
        if not ok:
            continue

        def stat(key: str, rows_: list[dict[str, Any]] = ok) -> str:
            v = np.array([r.get(key, np.nan) for r in rows_], dtype=np.float64)
            return f"{np.nanmedian(v):.2f} ({np.nanmin(v):.2f}-{np.nanmax(v):.2f})"

        err = [100.0 * (r["core_ml"] - r["core_true_ml"]) / r["core_true_ml"] for r in ok]
        within = sum(
            abs(r["core_ml"] - r["core_true_ml"]) <= max(5.0, 0.1 * r["core_true_ml"]) for r in ok
        )
        secs = sum(r["seconds"] for r in ok)
        false_ml = np.nansum([r.get("false_ml", np.nan) for r in ok])
        missed_ml = np.nansum([r.get("missed_ml", np.nan) for r in ok])
        print(
            f"  {readout:<12} ref {stat('ref')}  core {stat('core')}  rcore {stat('rcore')}  "
            f"core err {np.median(err):+.1f} %  within {within}/{len(ok)}  "
            f"false {false_ml:.1f} mL  missed {missed_ml:.1f} mL  {secs:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
