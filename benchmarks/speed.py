"""Wall time and peak memory of ``strokeflow analyze`` on full-size CT perfusion and MR studies.

Usage: ``python benchmarks/speed.py [--case ct|mri|all] [--repeat N] [--keep DIR]``
(CT size: ``--matrix 512 --slices 16 --frames 40 --slice-mm 5``; MR size:
``--mri-dwi-matrix 256 --mri-pwi-matrix 128 --mri-slices 20 --mri-frames 60``).

``--scaling 640,1280,2400,4800`` instead runs a series of CT studies of growing size
(:data:`SCALING_STUDIES`: the 16 x 5 mm x 40-frame study, then thinner and more slices,
up to a 160 x 1 mm x 30-frame whole-brain study) and prints one row per study: the plain
read before and after the analysis (interleaved, same files), the analysis wall time
(min and median of ``--repeat`` runs), the min's ratio to the faster of the two reads,
peak RSS, the DICOM result objects' build time (the fastest of ``--dicom-repeat`` runs
with DICOM output, interleaved like the others; min and median printed below the row)
and the bytes sent per study (pages RLE Lossless, as ``strokeflow`` sends them to a PACS
that accepts it, and as written). ``--compare OTHER/service`` runs another checkout's
``strokeflow`` too, interleaved with this one on the same files (before/after figures
from one run). ``--keep DIR`` reuses the studies already written there.

Each study is simulated by its phantom and written as DICOM into a temporary folder (the
MR study holds FLAIR and SWI distractors, DWI b0/b1000, the scanner ADC map and the DSC
series); then ``strokeflow analyze`` runs in a child process, which reports its own peak
RSS (VmHWM; ``wait4``'s ``ru_maxrss`` would include this process's memory at the fork),
and the stage timings from results.json are printed. The main timing runs with
``--no-dicom`` (``--repeat`` times: min and median), a last run writes the DICOM result
objects too. The baseline measured in the same run is a plain ``pydicom.dcmread`` +
``pixel_array`` loop over the same files: the least any tool that reads the study must
spend; the analysis is reported as a multiple of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage

from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.phantom.mri import MriPhantomOptions, simulate_mri
from strokeflow.phantom.mri_dicom import write_mri_study

CT_TARGET_S = 10.0
MRI_TARGET_S = 5.0
#: Images -> (slices, slice thickness mm, frames) of the --scaling series.
SCALING_STUDIES = {
    640: (16, 5.0, 40),
    1280: (32, 2.5, 40),
    2400: (80, 1.0, 30),
    4800: (160, 1.0, 30),
}


@dataclass(frozen=True)
class _Run:
    wall_s: float
    peak_mib: float
    results: dict[str, Any]


def _read_baseline(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        pydicom.dcmread(p).pixel_array  # noqa: B018 - decoding is what is timed
    return time.perf_counter() - t0


#: The analyze child: the CLI, then its own peak RSS (VmHWM) written where it is told. The
#: rusage that ``wait4`` reports is not its own: Linux carries the high-water mark of the
#: memory the child had before ``exec`` (a fork of this benchmark, phantom and all) into
#: its ``ru_maxrss``, which is why this benchmark once reported 2.0 GiB for a 0.7 GiB run.
_CHILD = """
import atexit, os

def _peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["SPEED_BENCH_PEAK_FILE"], "w") as out:
        out.write(kib)

atexit.register(_peak)
from strokeflow.cli import main
main()
"""


def _analyze(
    study: Path,
    out: Path,
    *,
    dicom: bool,
    blas_threads: int | None,
    service_dir: Path | None = None,
) -> _Run:
    """One ``strokeflow analyze`` child process: its wall time, own peak RSS, results.

    ``service_dir`` runs another tree's ``strokeflow`` (``--compare``) instead of this one.
    """
    cli_args = ["analyze", str(study), "--out", str(out)]
    if not dicom:
        cli_args.append("--no-dicom")
    peak_file = out / "peak_rss_kib"
    # Not a STROKEFLOW_* name: any of those makes ``analyze`` read the whole configuration
    # (strokeflow.cli.analysis_settings), which a run without one does not.
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(service_dir)] if service_dir else sys.path),
        SPEED_BENCH_PEAK_FILE=str(peak_file),
    )
    if blas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(blas_threads)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "analyze.log"
    with log_path.open("w") as log:
        t0 = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, *cli_args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        code = child.wait()
        wall_s = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(
            f"strokeflow analyze {study} failed with exit code {code}:\n{log_path.read_text()}"
        )
    results = json.loads((out / "results.json").read_text())
    return _Run(wall_s, int(peak_file.read_text()) / 1024.0, results)


def _object_bytes(folder: Path) -> tuple[int, int]:
    """(bytes as sent, bytes as written) of the DICOM result objects under ``folder``.

    Pages are sent RLE Lossless to a destination that accepts it (``dispatch.store_scu``);
    the rest as written.
    """
    sent = written = 0
    for path in sorted(folder.rglob("*.dcm")):
        size = path.stat().st_size
        written += size
        ds = pydicom.dcmread(path)
        if str(ds.SOPClassUID) == SecondaryCaptureImageStorage and not (
            ds.file_meta.TransferSyntaxUID.is_compressed
        ):
            plain = len(ds.PixelData)
            ds.compress(RLELossless, generate_instance_uid=False)
            size += len(ds.PixelData) - plain
        sent += size
    return sent, written


def _analysis(results: dict[str, Any], kind: str) -> dict[str, Any]:
    for analysis in results["studies"][0]["analyses"]:
        if analysis["kind"] == kind:
            return dict(analysis)
    raise SystemExit(f"results.json holds no {kind} analysis")


def _report(
    label: str,
    study: Path,
    work: Path,
    n_files: int,
    baseline_s: float,
    kind: str,
    target_s: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    runs = [
        _analyze(study, work / f"result-{kind}-{i}", dicom=False, blas_threads=args.blas_threads)
        for i in range(args.repeat)
    ]
    walls = [r.wall_s for r in runs]
    best = min(runs, key=lambda r: r.wall_s)
    median_s = statistics.median(walls)
    with_dicom = _analyze(
        study, work / f"result-{kind}-dicom", dicom=True, blas_threads=args.blas_threads
    )
    analysis = _analysis(best.results, kind)
    print(f"cores: {os.cpu_count()}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"baseline: pydicom read+decode of {n_files} files: {baseline_s:.2f} s")
    print(
        f"strokeflow analyze --no-dicom (process wall time, incl. start-up and NIfTI): "
        f"{best.wall_s:.2f} s min, {median_s:.2f} s median of {len(runs)} "
        f"({', '.join(f'{w:.2f}' for w in walls)})"
    )
    print(f"  = {best.wall_s / baseline_s:.1f} x the read-only baseline")
    dicom_s = _analysis(with_dicom.results, kind)["timings_s"].get("dicom_objects")
    extra = f", of which DICOM objects {dicom_s:.2f} s" if dicom_s is not None else ""
    print(f"strokeflow analyze with DICOM result objects: {with_dicom.wall_s:.2f} s{extra}")
    sent, written = _object_bytes(work / f"result-{kind}-dicom" / "dicom")
    print(f"result objects: {sent / 1e6:.2f} MB sent (pages RLE), {written / 1e6:.2f} MB written")
    print(f"peak memory (max RSS of the analyze process): {best.peak_mib:.0f} MiB")
    print(f"where the time goes (s), fastest {label} run:")
    for stage, seconds in analysis["timings_s"].items():
        print(f"  {stage:<16} {seconds:7.3f}")
    print(f"results: core {analysis['core_ml']} mL, Tmax>6 {analysis['tmax6_ml']} mL")
    print(f"target < {target_s:.0f} s: {'met' if best.wall_s < target_s else 'NOT met'} (min)")
    return analysis


def _ct_case(args: argparse.Namespace, work: Path) -> None:
    study = work / "study-ct"
    t0 = time.perf_counter()
    phantom = simulate_ctp(
        CtpPhantomOptions(
            matrix=args.matrix, slices=args.slices, slice_mm=args.slice_mm, frames=args.frames
        )
    )
    paths = write_ctp_study(phantom, study, extra_series=False)
    print(
        f"== CT perfusion: phantom {args.matrix}x{args.matrix}x{args.slices} slices of "
        f"{args.slice_mm:g} mm x {args.frames} frames: {len(paths)} files written in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    truth = phantom.truth
    del phantom  # its volumes need not stay in memory while the analysis runs
    baseline_s = _read_baseline(paths)
    _report("CT", study, work, len(paths), baseline_s, "ctp", CT_TARGET_S, args)
    print(f"truth:   core {truth['core_ml']:.1f} mL, Tmax>6 {truth['tmax6_ml']:.1f} mL")


def _scaling_row(n_images: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    slices, slice_mm, frames = SCALING_STUDIES[n_images]
    study = work / f"study-{n_images}"
    if not (study / "truth.json").exists():
        phantom = simulate_ctp(
            CtpPhantomOptions(matrix=args.matrix, slices=slices, slice_mm=slice_mm, frames=frames)
        )
        write_ctp_study(phantom, study, extra_series=False)
        del phantom
    paths = sorted(study.rglob("*.dcm"))
    trees: list[tuple[str, Path | None]] = [("this", None)]
    if args.compare:
        trees.append(("compare", args.compare))
    before_s = _read_baseline(paths)
    # Interleaved: run i of every tree, then run i + 1, so that load changes hit both.
    runs: dict[str, list[_Run]] = {label: [] for label, _ in trees}
    for i in range(args.repeat):
        for label, tree in trees:
            out = work / f"result-{n_images}-{label}-{i}"
            runs[label].append(
                _analyze(study, out, dicom=False, blas_threads=None, service_dir=tree)
            )
    # The runs with DICOM output, interleaved the same way (ABBA...); the one with the
    # fastest objects stage is the row's, its folder the one whose bytes are counted.
    dicom_runs: dict[str, list[_Run]] = {label: [] for label, _ in trees}
    for i in range(args.dicom_repeat):
        for label, tree in trees if i % 2 == 0 else trees[::-1]:
            out = work / f"result-{n_images}-{label}-dicom-{i}"
            dicom_runs[label].append(
                _analyze(study, out, dicom=True, blas_threads=None, service_dir=tree)
            )
    after_s = _read_baseline(paths)
    best_dicom = {
        label: min(range(args.dicom_repeat), key=lambda i: _objects_s(dicom_runs[label][i]))
        for label, _ in trees
    }
    rows = [
        _scaling_figures(
            f"{slices:>4} x {slice_mm:g} mm x {frames:<3} {label:<8}",
            len(paths),
            (before_s, after_s),
            runs[label],
            dicom_runs[label][best_dicom[label]],
            work / f"result-{n_images}-{label}-dicom-{best_dicom[label]}" / "dicom",
        )
        for label, _ in trees
    ]
    if args.dicom_repeat > 1:
        for label, _ in trees:
            objects = [_objects_s(r) for r in dicom_runs[label]]
            print(
                f"{'':>6} {label} objects s of {len(objects)} runs: min {min(objects):.2f}, "
                f"median {statistics.median(objects):.2f}",
                flush=True,
            )
    if len(rows) == 2:
        this, other = rows
        line = (
            f"{'':>6} this / compare: min {this['analyze_s'] / other['analyze_s']:.2f}, "
            f"median {this['analyze_median_s'] / other['analyze_median_s']:.2f}"
        )
        if args.dicom_repeat > 1:
            this_objects, other_objects = (
                [_objects_s(r) for r in dicom_runs[label]] for label, _ in trees
            )
            line += (
                f"; objects min {min(this_objects) / min(other_objects):.2f}, median "
                f"{statistics.median(this_objects) / statistics.median(other_objects):.2f}"
            )
        print(line, flush=True)
    return rows[0]


def _objects_s(run: _Run) -> float:
    """The DICOM result objects' stage time of a CT run with DICOM output."""
    value: float = _analysis(run.results, "ctp")["timings_s"].get("dicom_objects", 0.0)
    return value


def _scaling_figures(
    label: str,
    n_images: int,
    reads_s: tuple[float, float],
    runs: list[_Run],
    with_dicom: _Run,
    dicom_dir: Path,
) -> dict[str, float]:
    """One printed row of the scaling table."""
    before_s, after_s = reads_s
    best = min(runs, key=lambda r: r.wall_s)
    objects_s = _objects_s(with_dicom)
    sent, written = _object_bytes(dicom_dir)
    read_s = min(before_s, after_s)
    row = {
        "images": n_images,
        "read_before_s": before_s,
        "read_after_s": after_s,
        "analyze_s": best.wall_s,
        "analyze_median_s": statistics.median(r.wall_s for r in runs),
        "ratio": best.wall_s / read_s,
        "peak_mib": max(r.peak_mib for r in runs),
        "with_dicom_s": with_dicom.wall_s,
        "objects_s": objects_s,
        "sent_mb": sent / 1e6,
        "written_mb": written / 1e6,
    }
    print(
        f"{row['images']:>6} {label} "
        f"{before_s:6.2f} {after_s:6.2f} {best.wall_s:8.2f} {row['analyze_median_s']:8.2f} "
        f"{row['ratio']:6.1f} "
        f"{row['peak_mib']:8.0f} {with_dicom.wall_s:8.2f} {objects_s:7.2f} "
        f"{objects_s / read_s:7.2f} {row['sent_mb']:7.2f} {row['written_mb']:8.2f}",
        flush=True,
    )
    return row


def _scaling_case(args: argparse.Namespace, work: Path) -> None:
    sizes = [int(v) for v in args.scaling.split(",")]
    unknown = [n for n in sizes if n not in SCALING_STUDIES]
    if unknown:
        raise SystemExit(f"--scaling: no study of {unknown} images; choose from {SCALING_STUDIES}")
    print(f"cores: {os.cpu_count()}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        "images study                 tree   read s (before, after)  analyze s (min, median)  "
        "ratio  "
        "peak MiB  +DICOM s  objects s  objects/read  MB sent  MB written"
    )
    rows = [_scaling_row(n, args, work) for n in sizes]
    first = rows[0]
    for row in rows[1:]:
        growth = row["analyze_s"] / first["analyze_s"]
        print(
            f"{row['images']} images: {row['images'] / first['images']:.2f} x the images, "
            f"{growth:.2f} x the analysis time"
        )


def _mri_case(args: argparse.Namespace, work: Path) -> None:
    study = work / "study-mri"
    t0 = time.perf_counter()
    options = MriPhantomOptions(
        dwi_matrix=args.mri_dwi_matrix,
        pwi_matrix=args.mri_pwi_matrix,
        slices=args.mri_slices,
        frames=args.mri_frames,
    )
    phantom = simulate_mri(options)
    paths = write_mri_study(phantom, study)
    print(
        f"== MR: phantom DWI {options.dwi_matrix}x{options.dwi_matrix}x{options.slices} "
        f"(b0, b{options.b_value_s_mm2:g}, ADC map) + DSC {options.pwi_matrix}x"
        f"{options.pwi_matrix}x{options.slices} x {options.frames} frames (+ FLAIR, SWI): "
        f"{len(paths)} files written in {time.perf_counter() - t0:.1f} s"
    )
    baseline_s = _read_baseline(paths)
    _report("MR", study, work, len(paths), baseline_s, "mri", MRI_TARGET_S, args)
    t = phantom.truth
    print(
        f"truth:   core {t['core_ml']:.1f} mL, Tmax>6 {t['tmax6_ml']:.1f} mL, "
        f"decisions {json.dumps(t['decisions'])}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("ct", "mri", "all"), default="all")
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--slice-mm", type=float, default=5.0)
    parser.add_argument(
        "--scaling",
        help="comma-separated study sizes in images (of 640,1280,2400,4800): the CT "
        "scaling series instead of --case",
    )
    parser.add_argument("--mri-dwi-matrix", type=int, default=256)
    parser.add_argument("--mri-pwi-matrix", type=int, default=128)
    parser.add_argument("--mri-slices", type=int, default=20)
    parser.add_argument("--mri-frames", type=int, default=60)
    parser.add_argument(
        "--repeat", type=int, default=3, help="--no-dicom runs per case (min and median)"
    )
    parser.add_argument(
        "--dicom-repeat",
        type=int,
        default=1,
        help="with --scaling: runs with DICOM output per tree, interleaved (objects s: the "
        "min, and min and median of all when more than one)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        help="OPENBLAS_NUM_THREADS for the analyze process (default: inherited)",
    )
    parser.add_argument("--keep", type=Path, help="write the studies here and keep them")
    parser.add_argument(
        "--compare",
        type=Path,
        help="with --scaling: also run the strokeflow of this service folder (e.g. another "
        "checkout's service/), interleaved with this one on the same files",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.dicom_repeat < 1:
        parser.error("--dicom-repeat must be at least 1")

    work = args.keep or Path(tempfile.mkdtemp(prefix="strokeflow-speed-"))
    if args.scaling:
        _scaling_case(args, work)
        return 0
    if args.case in ("ct", "all"):
        _ct_case(args, work)
    if args.case in ("mri", "all"):
        _mri_case(args, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
