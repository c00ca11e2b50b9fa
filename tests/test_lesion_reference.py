"""The rCBF reference counts the normal tissue beside vessels and the skull."""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.lesions import reference_cbf


def _hemisphere() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 30 x 30 slice: cortex (CBF 60) in the outer 4 columns, white matter (CBF 25)
    inside; the outermost cortical column is an unmeasured rim at the skull."""
    shape = (1, 30, 30)
    cbf = np.full(shape, 25.0, dtype=np.float32)
    cbf[0, :, :4] = 60.0
    rim = np.zeros(shape, dtype=bool)
    rim[0, :, 0] = True
    normal = ~rim
    return np.where(rim, np.nan, cbf).astype(np.float32), normal, rim


def test_reference_counts_the_cortex_at_the_skull_like_its_neighbours() -> None:
    cbf, normal, rim = _hemisphere()
    measured_only = float(cbf[normal].mean())
    whole = (30 * 4 * 60.0 + 30 * 26 * 25.0) / (30 * 30)  # the tissue the rim belongs to
    got = reference_cbf(cbf, normal, rim)
    assert got > measured_only + 0.5
    assert abs(got - whole) < 1e-3


def test_reference_ignores_rims_away_from_normal_tissue() -> None:
    cbf, normal, rim = _hemisphere()
    far = np.zeros_like(rim)
    far[0, 10, 10] = True  # not adjacent to any voxel of `normal` once those are removed
    normal_small = normal.copy()
    normal_small[0, 8:13, 8:13] = False
    expected = float(cbf[normal_small].mean())
    assert abs(reference_cbf(cbf, normal_small, far) - expected) < 1e-4
    assert abs(reference_cbf(cbf, normal, np.zeros_like(rim)) - float(cbf[normal].mean())) < 1e-4
