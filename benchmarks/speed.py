"""Wall time and peak memory of ``strokeflow analyze`` on a full-size CT perfusion study.

Usage: ``python benchmarks/speed.py [--matrix 512 --slices 16 --frames 40] [--keep DIR]``

The study is simulated by the phantom and written as DICOM into a temporary folder; then
``strokeflow analyze`` runs in a child process (so its peak RSS is its own) and the stage
timings from results.json are printed. The baseline measured in the same run is a plain
``pydicom.dcmread`` + ``pixel_array`` loop over the same files: the least any tool that reads
the study must spend; the analysis is reported as a multiple of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study


def _read_baseline(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        pydicom.dcmread(p).pixel_array  # noqa: B018 - decoding is what is timed
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--keep", type=Path, help="write the study here and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="strokeflow-speed-"))
    study = work / "study"
    out = work / "result"
    t0 = time.perf_counter()
    phantom = simulate_ctp(
        CtpPhantomOptions(matrix=args.matrix, slices=args.slices, frames=args.frames)
    )
    paths = write_ctp_study(phantom, study, extra_series=False)
    print(
        f"phantom {args.matrix}x{args.matrix}x{args.slices} slices x {args.frames} frames: "
        f"{len(paths)} files written in {time.perf_counter() - t0:.1f} s"
    )
    baseline_s = _read_baseline(paths)

    cli_args = ["analyze", str(study), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    t1 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from strokeflow.cli import main; main()", *cli_args],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wall_s = time.perf_counter() - t1
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    results = json.loads((out / "results.json").read_text())
    analysis = results["studies"][0]["analyses"][0]

    print(f"cores: {os.cpu_count()}")
    print(f"baseline: pydicom read+decode of {len(paths)} files: {baseline_s:.2f} s")
    print(f"strokeflow analyze (process wall time, incl. start-up and NIfTI): {wall_s:.2f} s")
    print(f"  = {wall_s / baseline_s:.1f} x the read-only baseline")
    print(f"peak memory (max RSS of the analyze process): {peak_mib:.0f} MiB")
    print("where the time goes (s):")
    for stage, seconds in analysis["timings_s"].items():
        print(f"  {stage:<16} {seconds:7.3f}")
    print(f"results: core {analysis['core_ml']} mL, Tmax>6 {analysis['tmax6_ml']} mL")
    print(
        f"truth:   core {phantom.truth['core_ml']:.1f} mL, "
        f"Tmax>6 {phantom.truth['tmax6_ml']:.1f} mL"
    )
    target_s = 10.0
    print(f"target < {target_s:.0f} s: {'met' if wall_s < target_s else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
