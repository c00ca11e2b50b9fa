"""The SEG's projection of analysis-grid masks onto the source slices."""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.volume import Geometry
from strokeflow.report.mask_grid import packed_slices, segments_overlap
from strokeflow.report.segmentation import grid_lookup, mask_to_grid, masks_to_grid


def _by_lookup(
    masks: list[np.ndarray], mask_geometry: Geometry, target: Geometry, shape: tuple[int, int, int]
) -> np.ndarray:
    """Reference: one flat index per target voxel, as grid_lookup gives it."""
    lookup = grid_lookup(mask_geometry, masks[0].shape, target, shape)
    return np.stack([mask_to_grid(m, mask_geometry, target, shape, lookup) for m in masks], -1)


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    out = np.eye(4)
    out[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return out


_GRIDS = [
    (4, 1, (0.0, 0.0, 0.0), 0.0),
    (3, 2, (0.7, -1.3, 2.0), 0.0),
    (2, 5, (5.0, 3.0, -4.0), 17.0),
]


@pytest.mark.parametrize(("bin_xy", "bin_z", "offset_mm", "degrees"), _GRIDS)
def test_masks_on_the_source_grid_match_the_per_voxel_lookup(
    bin_xy: int, bin_z: int, offset_mm: tuple[float, float, float], degrees: float
) -> None:
    source = Geometry(np.diag([0.5, 0.5, 1.0, 1.0]))
    analysis_affine = np.diag([0.5 * bin_xy, 0.5 * bin_xy, 1.0 * bin_z, 1.0])
    analysis_affine[:3, 3] = offset_mm
    analysis = Geometry(_rotation_z(degrees) @ analysis_affine)
    rng = np.random.default_rng(bin_xy * 10 + bin_z)
    masks = [rng.random((6, 11, 9)) > p for p in (0.3, 0.6, 0.9)]
    shape = (13, 40, 37)
    expected = _by_lookup(masks, analysis, source, shape)
    got = masks_to_grid(masks, analysis, source, shape)
    assert got.shape == (*shape, 3) and got.dtype == bool
    np.testing.assert_array_equal(got, expected)
    # The target extends past the mask grid on some side: those voxels are False.
    assert expected.any() and not expected.all()


@pytest.mark.parametrize(("bin_xy", "bin_z", "offset_mm", "degrees"), _GRIDS)
@pytest.mark.parametrize("shape", [(13, 40, 37), (7, 16, 24)])
def test_packed_slices_are_the_resampled_slices_packed_as_dicom_packs_1_bit_frames(
    bin_xy: int,
    bin_z: int,
    offset_mm: tuple[float, float, float],
    degrees: float,
    shape: tuple[int, int, int],
) -> None:
    source = Geometry(np.diag([0.5, 0.5, 1.0, 1.0]))
    analysis_affine = np.diag([0.5 * bin_xy, 0.5 * bin_xy, 1.0 * bin_z, 1.0])
    analysis_affine[:3, 3] = offset_mm
    analysis = Geometry(_rotation_z(degrees) @ analysis_affine)
    rng = np.random.default_rng(bin_xy * 10 + bin_z)
    masks = [rng.random((6, 11, 9)) > p for p in (0.3, 0.6, 0.9)]
    fine = masks_to_grid(masks, analysis, source, shape)
    packed = packed_slices(masks, analysis, source, shape)
    nz, ny, nx = shape
    assert packed.shape == (3, nz, -(-ny * nx // 8)) and packed.dtype == np.uint8
    for k in range(3):
        for z in range(nz):
            expected = np.packbits(fine[z, :, :, k].ravel(), bitorder="little")
            np.testing.assert_array_equal(packed[k, z], expected)
    assert segments_overlap(packed)  # random masks share pixels
    disjoint = [masks[0], masks[1] & ~masks[0]]
    assert not segments_overlap(packed_slices(disjoint, analysis, source, shape))
