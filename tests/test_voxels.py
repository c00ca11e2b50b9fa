"""Voxel curves taken from and put back into (t, z, y, x) series: boolean indexing's values."""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.voxels import put_voxel_curves, voxel_curves


def _series() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    series = rng.normal(size=(7, 3, 9, 11)).astype(np.float32)
    mask = rng.random((3, 9, 11)) < 0.4
    return series, mask


def test_curves_are_those_of_boolean_indexing() -> None:
    series, mask = _series()
    curves = voxel_curves(series, mask)
    np.testing.assert_array_equal(curves, series[:, mask])
    assert curves.dtype == series.dtype
    curves[:] = 0.0  # a copy: the series keeps its values
    assert series[:, mask].any()
    # A leading slice of the frames is read the same way.
    np.testing.assert_array_equal(voxel_curves(series[:3], mask), series[:3][:, mask])


def test_putting_curves_writes_the_masked_voxels_only() -> None:
    series, mask = _series()
    before = series.copy()
    values = np.arange(7 * mask.sum(), dtype=np.float32).reshape(7, -1)
    put_voxel_curves(series, mask, values)
    np.testing.assert_array_equal(series[:, mask], values)
    np.testing.assert_array_equal(series[:, ~mask], before[:, ~mask])


def test_a_non_contiguous_series_is_still_written() -> None:
    series, mask = _series()
    view = np.swapaxes(np.swapaxes(series, 2, 3).copy(), 2, 3)  # same shape, other strides
    assert not view.flags.c_contiguous
    values = np.ones((7, int(mask.sum())), dtype=np.float32)
    put_voxel_curves(view, mask, values)
    np.testing.assert_array_equal(view[:, mask], values)
    np.testing.assert_array_equal(voxel_curves(view, mask), values)


def test_shapes_must_agree() -> None:
    series, mask = _series()
    with pytest.raises(ValueError, match="frame shape"):
        voxel_curves(series, mask[:, :-1])
    with pytest.raises(ValueError, match="voxels"):
        put_voxel_curves(series, mask, np.zeros((7, 3), dtype=np.float32))
