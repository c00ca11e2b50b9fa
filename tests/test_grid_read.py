"""Reading a CT perfusion straight into the analysis grid gives what the full-resolution
read followed by slab combination and in-plane binning gives: the same arrays, the same
maps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from strokeflow.analysis.ctp import analyse_ctp
from strokeflow.analysis.motion import bin_inplane
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.slabs import binning_factor, combine_slices, plan_slabs
from strokeflow.assemble import StudyInventory, assemble_ctp, build_inventory, scan_paths
from strokeflow.assemble.ctp import CtpAcquisition, ReadGrid
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study

SETTINGS = CtpSettings()
GRID = ReadGrid(SETTINGS.analysis_pixel_mm, SETTINGS.analysis_slab_mm, SETTINGS.thin_slice_below_mm)


def _study(root: Path) -> StudyInventory:
    headers, problems = scan_paths([root])
    assert problems == []
    (study,) = build_inventory(headers)
    return study


def _old_path(acq: CtpAcquisition) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the analysis did to a full-resolution acquisition before reading into the grid."""
    perfusion = acq.perfusion
    plan = plan_slabs(
        perfusion.geometry.voxel_size_mm[0],
        perfusion.signal.shape[1],
        SETTINGS.analysis_slab_mm,
        SETTINGS.thin_slice_below_mm,
    )
    slabs = combine_slices(perfusion, plan)
    factor = binning_factor(slabs.geometry.voxel_size_mm[1], SETTINGS.analysis_pixel_mm)
    signal = bin_inplane(slabs.signal, factor) if factor > 1 else slabs.signal
    affine = slabs.geometry.downsampled(factor).affine_lps
    return signal, slabs.times_s, slabs.missing, affine


@pytest.fixture(scope="module")
def thin_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 0.9 mm pixels (binned 2 x 2) and 1.25 mm slices (4 per slab, 2 edge slices left out).
    root = tmp_path_factory.mktemp("thin")
    options = CtpPhantomOptions(matrix=256, slices=18, slice_mm=1.25, frames=20, seed=3)
    write_ctp_study(simulate_ctp(options), root, extra_series=False)
    return root


def test_grid_read_equals_full_read_then_slabs_and_bins(thin_study: Path) -> None:
    study = _study(thin_study)
    (full,) = assemble_ctp(study)
    (grid,) = assemble_ctp(study, grid=GRID)
    signal, times, missing, affine = _old_path(full)
    assert grid.slabs is not None and grid.slabs.slices_per_slab == 4
    assert grid.slabs.dropped_slices == 2
    assert grid.perfusion.signal.shape == signal.shape == (20, 4, 128, 128)
    np.testing.assert_array_equal(grid.perfusion.signal, signal)
    np.testing.assert_array_equal(grid.perfusion.times_s, times)
    np.testing.assert_array_equal(grid.perfusion.missing, missing)
    np.testing.assert_array_equal(grid.perfusion.geometry.affine_lps, affine)
    assert grid.input_shape == full.perfusion.signal.shape
    assert grid.source_paths == full.source_paths
    assert grid.warnings == full.warnings


def test_grid_read_fills_missing_and_unreadable_images_like_the_full_read(
    thin_study: Path, tmp_path: Path
) -> None:
    study = _study(thin_study)
    (full,) = assemble_ctp(study)
    # Drop one image and truncate another after the header scan: one absent, one
    # unreadable, in different slabs.
    paths = sorted(full.source_paths)
    absent, broken = paths[7], paths[200]
    kept = [h for h in study.instances if h.path != absent]
    data = broken.read_bytes()
    damaged = tmp_path / broken.name
    damaged.write_bytes(data[: len(data) // 2])
    kept = [h if h.path != broken else dataclasses.replace(h, path=damaged) for h in kept]
    partial = StudyInventory(study.study_uid, study.series, kept)
    (full,) = assemble_ctp(partial)
    (grid,) = assemble_ctp(partial, grid=GRID)
    signal, times, missing, _ = _old_path(full)
    assert missing.sum() >= 2
    # Equal to the float32 rounding of the slab mean: the interpolation weights come from
    # the same times, shifted by at most a float64 rounding when the earliest image is
    # the unreadable one.
    np.testing.assert_allclose(grid.perfusion.signal, signal, rtol=0, atol=1e-3)
    np.testing.assert_allclose(grid.perfusion.times_s, times, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(grid.perfusion.missing, missing)
    assert grid.warnings == full.warnings
    assert any("unreadable image" in w for w in grid.warnings)
    assert any("frames missing" in w for w in grid.warnings)


def test_maps_from_the_grid_read_equal_those_of_the_full_read(thin_study: Path) -> None:
    study = _study(thin_study)
    (full,) = assemble_ctp(study)
    (grid,) = assemble_ctp(study, grid=GRID)
    old = analyse_ctp(full.perfusion, SETTINGS)
    new = analyse_ctp(grid.perfusion, SETTINGS, on_grid=grid.slabs)
    for name in ("cbf_ml_100g_min", "cbv_ml_100g", "mtt_s", "tmax_s", "ttp_s"):
        np.testing.assert_array_equal(getattr(new.maps, name), getattr(old.maps, name), name)
    np.testing.assert_array_equal(new.core, old.core)
    np.testing.assert_array_equal(new.tmax6, old.tmax6)
    assert new.slabs == old.slabs
    assert [f.code for f in new.flags] == [f.code for f in old.flags]
    np.testing.assert_array_equal(new.geometry.affine_lps, old.geometry.affine_lps)


def test_reference_candidates_give_the_references_read_from_every_file(thin_study: Path) -> None:
    from strokeflow.report.source_references import load_source_references

    (acq,) = assemble_ctp(_study(thin_study), grid=GRID)
    assert len(acq.reference_paths) == 18  # one earliest image per input slice
    every = load_source_references(acq.source_paths)
    few = load_source_references(acq.reference_paths)
    assert [d.SOPInstanceUID for d in few] == [d.SOPInstanceUID for d in every]
