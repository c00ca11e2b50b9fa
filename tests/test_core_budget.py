"""The core error budget (benchmarks/core_budget.py) accounts for every millilitre."""

from __future__ import annotations

import numpy as np

from benchmark_modules import load_benchmark
from strokeflow.analysis.brainmask import BrainMasks
from strokeflow.analysis.settings import CtpSettings


def _slab() -> tuple[BrainMasks, np.ndarray, np.ndarray, np.ndarray]:
    """One 40 x 40 slice: a 12 x 12 core whose border column is half core."""
    shape = (1, 40, 40)
    tissue = np.ones(shape, dtype=bool)
    tissue[0, 20, 20] = False  # a vessel lumen inside the core
    none = np.zeros(shape, dtype=bool)
    masks = BrainMasks(
        head=tissue | True,
        brain=tissue | True,
        csf=none,
        vessels=~tissue,
        tissue=tissue,
        unmeasured=none,
    )
    f = np.zeros(shape)
    f[0, 14:26, 14:26] = 1.0
    f[0, 14:26, 26] = 0.5
    rcbf = np.where(f >= 1.0, 0.15, 0.7).astype(np.float32)
    rcbf[0, 14:26, 26] = 0.15 * 0.5 + 0.7 * 0.5  # 0.425: partial volume, not called
    rcbf[0, 30, 30] = 0.1  # one speckle voxel outside, removed by the clean-up
    rcbf[~tissue] = np.nan
    tmax = np.full(shape, 12.0, dtype=np.float32)
    return masks, f, rcbf, tmax


def test_budget_misses_and_false_calls_add_up_to_the_estimate() -> None:
    budget_mod = load_benchmark("core_budget")
    masks, f, rcbf, tmax = _slab()
    budget, core = budget_mod.attribute(rcbf, tmax, masks, f, 0.01, CtpSettings())
    truth = float(f.sum()) * 0.01
    missed = sum(budget[k] for k in budget_mod.MISSES if k != "outside")
    assert np.isclose(truth - missed + budget["false"], budget["estimate"])
    assert np.isclose(budget["rcbf_part_core"], 12 * 0.5 * 0.01)
    assert np.isclose(budget["not_tissue"], 0.01)  # the lumen inside the core
    assert not core[0, 30, 30]


def test_budget_names_the_tmax_condition_when_it_rejects_the_core() -> None:
    budget_mod = load_benchmark("core_budget")
    masks, f, rcbf, tmax = _slab()
    tmax[:] = 3.0
    budget, core = budget_mod.attribute(rcbf, tmax, masks, f, 0.01, CtpSettings())
    assert not core.any()
    assert np.isclose(budget["tmax"], float(f[masks.tissue].sum()) * 0.01)


def test_budget_reruns_the_pipelines_core_on_a_family_case() -> None:
    # The budget re-runs the lesion stage itself; where it no longer reads what the
    # pipeline's core reads (the single-delay Tmax, the self-calibrated reference) every
    # case reports a mismatch instead of a budget.
    budget = load_benchmark("core_budget")
    spec = {"kind": "small", "protocol": "1s_45s", "seed": 7000, "noise": True}
    row = budget.run_case(spec)
    assert row["status"] == "ok", row["status"]
    measured = row["variants"]["measured"]["budget"]
    assert measured["estimate"] > 0
