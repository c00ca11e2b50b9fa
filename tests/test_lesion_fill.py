"""Lesion masks reach the tissue the maps leave out beside vessels and the skull."""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.lesions import fill_unmeasured, tmax_above
from strokeflow.analysis.maps import PerfusionMaps


def _slab() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 20 x 20 slice: a vessel lumen with its rim inside a core, another one outside."""
    shape = (1, 20, 20)
    lumen = np.zeros(shape, dtype=bool)
    lumen[0, 8, 8] = lumen[0, 8, 16] = True
    rim = np.zeros(shape, dtype=bool)
    rim[0, 7:10, 7:10] = rim[0, 7:10, 15:18] = True
    rim &= ~lumen
    tissue = ~(lumen | rim)
    core = np.zeros(shape, dtype=bool)
    core[0, 3:14, 3:14] = True
    return core & tissue, tissue, rim, lumen


def test_core_includes_the_tissue_beside_a_vessel_inside_it() -> None:
    core, tissue, rim, lumen = _slab()
    filled = fill_unmeasured(core, tissue, rim)
    inside = rim.copy()
    inside[0, :, 12:] = False
    assert filled[inside].all()
    assert not filled[lumen].any()


def test_core_does_not_spread_into_the_rim_of_a_vessel_outside_it() -> None:
    core, tissue, rim, _ = _slab()
    filled = fill_unmeasured(core, tissue, rim)
    outside = rim.copy()
    outside[0, :, :12] = False
    assert not filled[outside].any()
    np.testing.assert_array_equal(filled & tissue, core)


def test_tmax_regions_extend_into_the_rims_they_surround() -> None:
    core, tissue, rim, lumen = _slab()
    tmax = np.where(core, 8.0, 2.0).astype(np.float32)
    maps = PerfusionMaps(*(np.zeros(core.shape, np.float32),) * 3, tmax, tmax)
    plain = tmax_above(maps, tissue, 0.01, 0.0, 6.0)
    filled = tmax_above(maps, tissue, 0.01, 0.0, 6.0, rim)
    assert not plain[rim].any()
    inside = rim.copy()
    inside[0, :, 12:] = False
    assert filled[inside].all()
    assert not (filled & rim & ~inside).any()
    assert not filled[lumen].any()
    np.testing.assert_array_equal(filled & tissue, plain)
