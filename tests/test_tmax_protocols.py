"""Tmax readout on scans too short for delayed tissue (issue 12).

The regularisation lag subtracted from the peak of the oSVD residue was calibrated on
zero-delay residues that lie inside the scan. A delayed residue in a short scan is cut
by the last frame, which moves its regularised peak later still; the best-fitting model
curve, sampled and truncated like the data, says by how much.
"""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.maps import compute_maps
from strokeflow.phantom.bolus import (
    TissueClass,
    arterial_curve,
    fine_grid_s,
    sample_curves,
    tissue_curves,
)

DELAYS_S = np.array([9.0, 11.0])
REPS = 40


def _study(duration_s: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Gamma-residue tissue at Tmax 9 and 11 s (either side of 10 s), 1 s sampling."""
    fine = fine_grid_s(duration_s + 1.0)
    arterial = arterial_curve(fine, 5.0, 1.2, 380.0)
    classes = [TissueClass(30.0, 8.0, float(d), "gamma") for d in DELAYS_S]
    t = np.arange(0.0, duration_s + 0.5, 1.0)
    clean = sample_curves(fine, tissue_curves(fine, arterial, classes), t)
    rng = np.random.default_rng(seed)
    noisy = np.repeat(clean, REPS, axis=1) + rng.normal(0.0, 0.5, (t.size, REPS * DELAYS_S.size))
    return noisy.astype(np.float32), np.interp(t, fine, arterial)


def _tmax_error_s(duration_s: float, model_lag: str, seed: int = 1) -> np.ndarray:
    curves, aif = _study(duration_s, seed)
    maps = compute_maps(curves, aif, 1.0, model_lag=model_lag)  # type: ignore[arg-type]
    return np.median(maps.tmax_s.reshape(DELAYS_S.size, REPS), axis=1) - DELAYS_S


def test_delayed_tissue_in_a_35_s_scan_gets_tmax_within_1_s() -> None:
    # Without the truncation term both shells read more than 1 s late, so tissue just
    # below 10 s was counted in Tmax > 10 s (the +16 mL over-call of 35 s scans).
    assert np.all(_tmax_error_s(35.0, "off") > 1.0)
    assert np.all(np.abs(_tmax_error_s(35.0, "truncation")) < 1.0)


def test_truncation_term_leaves_a_long_scan_unchanged() -> None:
    # A 60 s scan holds the whole first pass: the model curve at the voxel's delay and
    # at 0 s show the same lag, so the readout is the exponential-calibrated one.
    np.testing.assert_allclose(
        _tmax_error_s(60.0, "truncation"), _tmax_error_s(60.0, "off"), atol=0.05
    )


def test_unknown_model_lag_is_refused() -> None:
    curves, aif = _study(35.0)
    with pytest.raises(ValueError, match="model_lag"):
        compute_maps(curves, aif, 1.0, model_lag="late")  # type: ignore[arg-type]
