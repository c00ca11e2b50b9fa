"""Accuracy of the CT perfusion analysis on a validation family it was not tuned on.

Usage: ``python benchmarks/robustness.py [--quick] [--jobs 1] [--dicom 3] [--seed-base 100]
[--json rows.json]``

Every anatomical lesion kind of ``strokeflow.phantom.family`` (5) is imaged by every
acquisition protocol of ``strokeflow.phantom.protocols`` (12): 60 cases with fixed seeds,
analysed in memory by ``strokeflow.analysis.ctp.analyse_ctp``. A few simultaneous-timing
cases (``--dicom``) also go through the full DICOM path: written by the project's CT
writer (``strokeflow.phantom.ctp_dicom``) and analysed by ``strokeflow.analyze``; the
writer keeps one time per frame, so protocols with per-slice offsets (spiral, shuttle)
stay in memory. Tile phantoms (``strokeflow.phantom.tiles``) under six protocols score
CBF and Tmax per tile. ``--quick`` runs one lesion kind per protocol and two tile cases.

Printed: one line per case (errors included, never fatal), then per protocol the bias
and 95 % limits of agreement (bias +- 1.96 SD) of core, Tmax > 6 s, Tmax > 10 s and HIR,
the fraction within tolerance (core within max(5 mL, 10 %), Tmax volumes within
max(10 mL, 10 %); an error counts as a miss), decision agreement and false malignant
profiles, the overall median core error in %, the tile scores, and the wall time. A value
the analysis declines to assert (None, e.g. Tmax > 10 s after a scan too short for the
tissue) is counted under "n/a", not as a miss, and its decisions are not scored.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from strokeflow.analysis.ctp import analyse_ctp
from strokeflow.analysis.settings import CtpSettings
from strokeflow.phantom.family import LESION_KINDS, FamilyCase, simulate_lesion_case
from strokeflow.phantom.protocols import PROTOCOLS, protocol_by_name
from strokeflow.phantom.tiles import simulate_tile_case

TILE_PROTOCOLS = ("1s_45s", "dense_sparse", "3s_90s_10mm", "short_25s", "low_output", "spiral_1.5s")
DICOM_CASES = (("medium", "1s_45s"), ("small", "dense_sparse"), ("severe", "2s_60s_8mm"))
DECISIONS = ("defuse3", "defuse2", "extend", "malignant_profile")
VOLUMES = ("core", "tmax6", "tmax10")


def lesion_cases(quick: bool, seed_base: int = 100) -> list[dict[str, Any]]:
    """The lesion cases: every kind x every protocol, or one kind per protocol.

    Case seeds are ``seed_base + 10 * protocol index + kind index``; another base gives
    the same design with other outlines, perfusion values and noise.
    """
    cases = []
    for p, protocol in enumerate(PROTOCOLS):
        kinds = [LESION_KINDS[p % len(LESION_KINDS)]] if quick else list(LESION_KINDS)
        for kind in kinds:
            k = LESION_KINDS.index(kind)
            cases.append({"kind": kind, "protocol": protocol.name, "seed": seed_base + 10 * p + k})
    return cases


def tolerance_ml(name: str, truth_ml: float) -> float:
    """Acceptance tolerance: core max(5 mL, 10 %), Tmax volumes max(10 mL, 10 %)."""
    return max(5.0 if name == "core" else 10.0, 0.10 * truth_ml)


def _estimate_from_analysis(analysis: Any) -> dict[str, Any]:
    m = analysis.metrics
    # What the analysis declines to assert is None here as in results.json (the DICOM
    # cases): a value reported as "not assessable" is never a reading to score.
    na = analysis.not_assessable
    return {
        "core": m.core_ml,
        "tmax6": m.tmax6_ml,
        "tmax10": None if "tmax10_ml" in na else m.tmax10_ml,
        "hir": None if "hypoperfusion_intensity_ratio" in na else m.hypoperfusion_intensity_ratio,
        "decisions": dict(analysis.decisions),
        "side": analysis.lesion_side,
        "flags": [f"{f.code}:{f.severity}" for f in analysis.flags],
    }


def _estimate_from_results(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "core": result.get("core_ml"),
        "tmax6": result.get("tmax6_ml"),
        "tmax10": result.get("tmax10_ml"),
        "hir": result.get("hypoperfusion_intensity_ratio"),
        "decisions": dict(result.get("decisions") or {}),
        "side": result.get("lesion_side"),
        "flags": [f"{f['code']}:{f['severity']}" for f in result["quality"]["flags"]],
    }


def _analyse_dicom(case: FamilyCase) -> dict[str, Any]:
    # Imported here: only the DICOM cases need the service and the project's writer.
    from strokeflow.analyze import AnalyzeOptions, analyze_paths
    from strokeflow.phantom.ctp import CtpPhantom, CtpPhantomOptions
    from strokeflow.phantom.ctp_dicom import write_ctp_study

    s = case.series
    nt, nz, ny, _ = s.signal.shape
    dz, dy, _ = s.geometry.voxel_size_mm
    options = CtpPhantomOptions(
        seed=int(case.truth["seed"]),
        matrix=ny,
        fov_mm=ny * dy,
        slices=nz,
        slice_mm=dz,
        frames=nt,
    )
    phantom = CtpPhantom(
        hu=s.signal,
        times_s=s.times_s[:, 0],
        affine_lps=s.geometry.affine_lps,
        labels=case.labels_fine,
        zones=case.zones_fine,
        truth=case.truth,
        options=options,
    )
    with tempfile.TemporaryDirectory(prefix="sf-robust-") as tmp:
        root = Path(tmp)
        write_ctp_study(phantom, root / "in", extra_series=False)
        outcome = analyze_paths(
            [root / "in"], root / "out", AnalyzeOptions(write_maps=False, write_dicom=False)
        )
    analyses = [a for st in outcome.results["studies"] for a in st["analyses"]]
    if len(analyses) != 1:
        raise RuntimeError(f"{len(analyses)} analyses from one written study")
    return _estimate_from_results(analyses[0])


def _describe(exc: Exception) -> str:
    """The exception and where it was raised, on one line."""
    last = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})"


def run_lesion_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Simulate and analyse one lesion case; never raises (errors become the status)."""
    row: dict[str, Any] = {**spec, "status": "ok"}
    t0 = time.perf_counter()
    try:
        protocol = protocol_by_name(spec["protocol"])
        case = simulate_lesion_case(spec["kind"], protocol, spec["seed"])
        t = case.truth
        row["truth"] = {
            "core": t["core_ml"],
            "tmax6": t["tmax6_ml"],
            "tmax10": t["tmax10_ml"],
            "hir": t["hir"],
            "decisions": t["decisions"],
            "side": t["lesion_side"],
        }
        t0 = time.perf_counter()
        if spec.get("dicom"):
            row["estimate"] = _analyse_dicom(case)
        else:
            row["estimate"] = _estimate_from_analysis(analyse_ctp(case.series, CtpSettings()))
    except Exception as exc:
        row["status"] = _describe(exc)
    row["analysis_s"] = round(time.perf_counter() - t0, 2)
    return row


def run_tile_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Simulate and analyse one tile phantom; score CBF and Tmax per tile."""
    row: dict[str, Any] = {**spec, "status": "ok"}
    t0 = time.perf_counter()
    try:
        case = simulate_tile_case(protocol_by_name(spec["protocol"]), spec["seed"])
        t0 = time.perf_counter()
        analysis = analyse_ctp(case.series, CtpSettings())
        cbf = np.asarray(analysis.maps.cbf_ml_100g_min)
        tmax = np.asarray(analysis.maps.tmax_s)
        if cbf.shape != case.tile_index.shape:
            raise RuntimeError(f"analysis grid {cbf.shape} differs from {case.tile_index.shape}")
        scores = []
        for tile in case.truth["tiles"]:
            # The 3 x 3 centre of a 7 x 7 tile: clear of smoothing across tile borders.
            (y0, _), (x0, _), z = tile["y"], tile["x"], tile["slice"]
            sl = (z, slice(y0 + 2, y0 + 5), slice(x0 + 2, x0 + 5))
            scores.append(
                {
                    "cbf_true": tile["cbf_ml_100g_min"],
                    "cbf": float(np.nanmedian(cbf[sl])),
                    "tmax_true": tile["tmax_s"],
                    "tmax": float(np.nanmedian(tmax[sl])),
                    "residue": tile["residue"],
                    "mtt_true": tile["mtt_s"],
                }
            )
        row["tiles"] = scores
    except Exception as exc:
        row["status"] = _describe(exc)
    row["analysis_s"] = round(time.perf_counter() - t0, 2)
    return row


def _run(
    fn: Callable[[dict[str, Any]], dict[str, Any]], specs: list[dict[str, Any]], jobs: int
) -> Iterator[dict[str, Any]]:
    if jobs <= 1:
        for spec in specs:
            yield fn(spec)
        return
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(fn, s) for s in specs]
        for spec, fut in zip(specs, futures, strict=True):
            try:
                yield fut.result()
            except Exception as exc:  # a worker that died, not an analysis error
                yield {**spec, "status": f"worker failed: {type(exc).__name__}: {exc}"}


def _fmt(v: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:{width}.1f}"


def case_line(row: dict[str, Any]) -> str:
    """One printed line per lesion case."""
    name = f"{row['kind']}/{row['protocol']}{'/dicom' if row.get('dicom') else ''}"
    if row["status"] != "ok":
        return f"{name:<32} ERROR {row['status']}"
    est, tru = row["estimate"], row["truth"]
    parts = []
    for v in VOLUMES:
        e, t = est[v], tru[v]
        mark = "  " if e is None else ("ok" if abs(e - t) <= tolerance_ml(v, t) else "XX")
        parts.append(f"{_fmt(e)}/{_fmt(t)} {mark}")
    hir = "/".join("-" if v is None else f"{v:.2f}" for v in (est["hir"], tru["hir"]))
    dec = "".join(_decision_mark(est["decisions"].get(k), tru["decisions"][k]) for k in DECISIONS)
    side = "ok" if est["side"] == tru["side"] else "XX"
    flags = ",".join(est["flags"])
    return (
        f"{name:<32} {'  '.join(parts)}  HIR {hir:<10} dec {dec} side {side}"
        f" {row['analysis_s']:5.1f}s {flags}"
    )


def _decision_mark(est: bool | None, truth: bool) -> str:
    if est is None:
        return "-"
    return "." if est == truth else "X"


def _agreement(rows: list[dict[str, Any]], key: str) -> tuple[float, float, float, int]:
    diffs = [
        r["estimate"][key] - r["truth"][key]
        for r in rows
        if r["estimate"][key] is not None and r["truth"][key] is not None
    ]
    if not diffs:
        return math.nan, math.nan, math.nan, 0
    d = np.asarray(diffs, dtype=np.float64)
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    bias = float(d.mean())
    return bias, bias - 1.96 * sd, bias + 1.96 * sd, d.size


def _within(rows: list[dict[str, Any]], key: str) -> tuple[int, int, int]:
    """Cases within tolerance, cases scored (errors count as misses), cases not asserted."""
    ok = n = not_asserted = 0
    for r in rows:
        if r["status"] != "ok":
            n += 1
        elif r["estimate"][key] is None:
            not_asserted += 1
        else:
            n += 1
            ok += abs(r["estimate"][key] - r["truth"][key]) <= tolerance_ml(key, r["truth"][key])
    return ok, n, not_asserted


def decisions_right(row: dict[str, Any]) -> bool:
    """Every decision the analysis asserted equals the truth (None = not asserted)."""
    est = row["estimate"]["decisions"]
    return all(est.get(k) is None or est[k] == row["truth"]["decisions"][k] for k in DECISIONS)


def _not_asserted(row: dict[str, Any]) -> bool:
    est = row["estimate"]
    return est["tmax10"] is None or any(est["decisions"].get(k) is None for k in DECISIONS)


def summary_lines(rows: list[dict[str, Any]], label: str) -> str:
    """One summary row (a protocol or all of them)."""
    good = [r for r in rows if r["status"] == "ok"]
    n_err = len(rows) - len(good)
    cells = [f"{label:<16} {len(rows):>2} {n_err:>3}"]
    for key, digits in (("core", 1), ("tmax6", 1), ("tmax10", 1), ("hir", 2)):
        bias, lo, hi, n = _agreement(good, key)
        if n == 0:
            cells.append(f"{'-':>22}")
        else:
            cells.append(f"{bias:+7.{digits}f} [{lo:+6.{digits}f},{hi:+6.{digits}f}]")
    for key in VOLUMES:
        k, n, _ = _within(rows, key)
        cells.append(f"{k:>2}/{n:<2}")
    right = sum(decisions_right(r) for r in good)
    false_malignant = sum(
        bool(r["estimate"]["decisions"].get("malignant_profile"))
        and not r["truth"]["decisions"]["malignant_profile"]
        for r in good
    )
    side = sum(r["estimate"]["side"] == r["truth"]["side"] for r in good)
    n_a = sum(_not_asserted(r) for r in good)
    cells.append(
        f"{right:>5}/{len(good):<4} {false_malignant:>4}  {side:>2}/{len(good):<2} {n_a:>3}"
    )
    return " ".join(cells)


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Per-protocol table, the overall row, and the median core error."""
    head = (
        f"{'protocol':<16} {'n':>2} {'err':>3} {'core bias [95% LoA] mL':>22} "
        f"{'Tmax>6 bias [LoA] mL':>22} {'Tmax>10 bias [LoA] mL':>22} {'HIR bias [LoA]':>22} "
        "core  T>6   T>10  decisions FalseMal side  n/a"
    )
    print(head)
    print("-" * len(head))
    for name in dict.fromkeys(r["protocol"] for r in rows):
        print(summary_lines([r for r in rows if r["protocol"] == name], name))
    print("-" * len(head))
    print(summary_lines(rows, "all"))
    good = [r for r in rows if r["status"] == "ok" and r["truth"]["core"] > 0]
    pct = [100.0 * (r["estimate"]["core"] - r["truth"]["core"]) / r["truth"]["core"] for r in good]
    if pct:
        print(
            f"median core error {np.median(pct):+.1f} % over {len(pct)} cases "
            f"(range {min(pct):+.1f} to {max(pct):+.1f} %)"
        )
    no_critical = [
        r
        for r in rows
        if r["status"] == "ok" and not any(f.endswith(":critical") for f in r["estimate"]["flags"])
    ]
    right = sum(decisions_right(r) for r in no_critical)
    false_malignant = sum(
        bool(r["estimate"]["decisions"].get("malignant_profile"))
        and not r["truth"]["decisions"]["malignant_profile"]
        for r in rows
        if r["status"] == "ok"
    )
    print(
        f"decisions right in {right}/{len(no_critical)} cases without a critical flag; "
        f"false malignant profiles {false_malignant}; "
        f"{len(rows) - sum(r['status'] == 'ok' for r in rows)} errors"
    )
    cells = []
    for key in VOLUMES:
        k, n, m = _within(rows, key)
        extra = f", {m} not asserted" if m else ""
        cells.append(f"{key} {k}/{n} ({100.0 * k / max(n, 1):.0f} %{extra})")
    print("within tolerance (target >= 95 %): " + "; ".join(cells))


def print_tiles(rows: list[dict[str, Any]]) -> None:
    """Per tile case: CBF within 10 % (truth 10-70), median CBF error, Tmax within 1 s."""
    print(
        f"{'tile case':<26} {'CBF+-10% (10-70)':>17} {'med CBF err':>12} {'Tmax+-1s':>9}  "
        "by residue (CBF ok / Tmax ok)"
    )
    for r in rows:
        name = f"tiles/{r['protocol']}"
        if r["status"] != "ok":
            print(f"{name:<26} ERROR {r['status']}")
            continue
        tiles = [t for t in r["tiles"] if 10.0 <= t["cbf_true"] <= 70.0]

        def score(ts: Iterable[dict[str, Any]]) -> tuple[int, int, int, list[float]]:
            ts = list(ts)
            cbf_ok = sum(abs(t["cbf"] - t["cbf_true"]) <= 0.1 * t["cbf_true"] for t in ts)
            tmax_ok = sum(abs(t["tmax"] - t["tmax_true"]) <= 1.0 for t in ts)
            err = [100.0 * (t["cbf"] - t["cbf_true"]) / t["cbf_true"] for t in ts]
            return cbf_ok, tmax_ok, len(ts), err

        cbf_ok, tmax_ok, n, err = score(tiles)
        by = []
        for kind in ("exponential", "gamma", "box"):
            c, t, m, _ = score(x for x in tiles if x["residue"] == kind)
            by.append(f"{kind[:3]} {c}/{t} of {m}")
        print(
            f"{name:<26} {cbf_ok:>8}/{n:<8} {np.nanmedian(err):+11.1f}% {tmax_ok:>4}/{n:<4}  "
            + "; ".join(by)
            + f"  {r['analysis_s']:.1f}s"
        )


def report(rows: list[dict[str, Any]], tile_rows: list[dict[str, Any]]) -> None:
    """The summary tables of lesion and tile rows."""
    memory = [r for r in rows if not r.get("dicom")]
    print()
    print(f"in-memory lesion cases ({len(memory)}), per protocol; bias = estimate - truth")
    print_summary(memory)
    dicom = [r for r in rows if r.get("dicom")]
    if dicom:
        print()
        print(f"full DICOM path (written by strokeflow.phantom.ctp_dicom, {len(dicom)} cases)")
        print_summary(dicom)
    print()
    print_tiles(tile_rows)
    times = [r["analysis_s"] for r in rows + tile_rows if "analysis_s" in r]
    print()
    print(f"analysis time per case: median {np.median(times):.1f} s, max {max(times):.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 lesion cases + 2 tile cases")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--dicom",
        type=int,
        default=len(DICOM_CASES),
        help="cases also run through DICOM writing and strokeflow.analyze",
    )
    parser.add_argument("--json", type=Path, help="write every case's row to this file")
    parser.add_argument(
        "--seed-base",
        type=int,
        default=100,
        help="first lesion-case seed (default 100, the published figures); another base "
        "checks a change on cases it was not chosen on",
    )
    parser.add_argument(
        "--replay", type=Path, help="print the tables of a --json file instead of running"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    if args.replay:
        saved = json.loads(args.replay.read_text())
        report([r for r in saved if "kind" in r], [r for r in saved if "kind" not in r])
        return 0
    specs = lesion_cases(args.quick, args.seed_base)
    specs += [
        {"kind": kind, "protocol": proto, "seed": 900 + i, "dicom": True}
        for i, (kind, proto) in enumerate(DICOM_CASES[: max(0, args.dicom)])
    ]
    tile_protocols = TILE_PROTOCOLS[:2] if args.quick else TILE_PROTOCOLS
    tile_specs = [{"protocol": p, "seed": 500 + i} for i, p in enumerate(tile_protocols)]

    print(
        "case                              core est/truth mL   Tmax>6 est/truth   "
        "Tmax>10 est/truth   HIR est/truth  decisions (D3 D2 EXT MAL) side  time  flags"
    )
    rows = []
    for row in _run(run_lesion_case, specs, args.jobs):
        print(case_line(row), flush=True)
        rows.append(row)
    tile_rows = list(_run(run_tile_case, tile_specs, args.jobs))
    report(rows, tile_rows)
    print(
        f"total wall time {time.perf_counter() - start:.0f} s for {len(rows) + len(tile_rows)} "
        f"cases with --jobs {args.jobs}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows + tile_rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
