"""The deconvolution's chunks run side by side in threads and give the maps of one thread,
to the bit; the CLI starts with one BLAS thread (the analysis makes its own) before numpy
is imported."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from strokeflow.analysis import ctp
from strokeflow.analysis.ctp import analyse_ctp
from strokeflow.analysis.maps import PerfusionMaps, compute_maps
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.physics import arterial_input, tissue_enhancement

STEP_S = 1.0
T_S = np.arange(0.0, 50.0, STEP_S)
AIF = arterial_input(T_S, arrival_s=6.0, peak=400.0)
MAP_NAMES = [f.name for f in dataclasses.fields(PerfusionMaps)]


def _assert_same_maps(a: PerfusionMaps, b: PerfusionMaps) -> None:
    for name in MAP_NAMES:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        # The chunks are the same whatever the number of threads: the same products.
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("workers", [2, 3])
def test_chunks_in_threads_give_the_maps_of_one_thread(workers: int) -> None:
    rng = np.random.default_rng(5)
    nz, ny, nx = 3, 12, 14
    delays = rng.uniform(0.0, 9.0, nz * ny * nx)
    flows = rng.uniform(10.0, 60.0, nz * ny * nx)
    curves = np.stack(
        [
            tissue_enhancement(T_S, AIF, f, 4.0, delay_s=d)
            for f, d in zip(flows, delays, strict=True)
        ],
        axis=1,
    )
    conc = (curves + rng.normal(0.0, 2.0, curves.shape)).astype(np.float32)
    conc = conc.reshape(T_S.size, nz, ny, nx)
    mask = rng.random((nz, ny, nx)) > 0.2
    options = {"mask": mask, "cbf_readout": "value", "two_delay_tmax": True, "chunk_voxels": 50}
    one = compute_maps(conc, AIF, STEP_S, **options)
    split = compute_maps(conc, AIF, STEP_S, workers=workers, **options)
    _assert_same_maps(split, one)
    # Every voxel of the mask has its maps, none outside (no run of voxels lost).
    assert np.all(np.isfinite(split.cbv_ml_100g[mask]))
    assert np.all(np.isnan(split.cbv_ml_100g[~mask]))


def test_ctp_phantom_analysed_with_threads_gives_the_volumes_of_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    phantom = simulate_ctp(CtpPhantomOptions(matrix=96, slices=4, frames=30))
    nz = phantom.hu.shape[1]
    series = PerfusionSeries(
        signal=phantom.hu,
        times_s=np.repeat(phantom.times_s[:, None], nz, axis=1),
        geometry=Geometry(phantom.affine_lps),
    )
    monkeypatch.setattr(ctp, "usable_cpus", lambda: 1)
    serial = analyse_ctp(series)
    monkeypatch.setattr(ctp, "usable_cpus", lambda: 3)
    threaded = analyse_ctp(series)
    _assert_same_maps(threaded.maps, serial.maps)
    for region in ("core", "tmax6", "tmax10"):
        np.testing.assert_array_equal(getattr(threaded, region), getattr(serial, region))
    assert threaded.metrics == serial.metrics


def _blas_threads_after_cli_import(env: dict[str, str]) -> tuple[str, str]:
    code = (
        "import os, sys\n"
        "import strokeflow.cli\n"
        "print('numpy' in sys.modules, os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    loaded, threads = out.stdout.split()
    return loaded, threads


def test_cli_sets_one_blas_thread_before_numpy_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    assert _blas_threads_after_cli_import(env) == ("False", "1")


def test_cli_keeps_the_blas_threads_the_user_set() -> None:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", PYTHONPATH=os.pathsep.join(sys.path))
    assert _blas_threads_after_cli_import(env) == ("False", "2")
