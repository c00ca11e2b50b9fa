"""The PCHIP of analysis.resample computes what scipy's PchipInterpolator computes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import PchipInterpolator

from strokeflow.analysis.resample import pchip


@pytest.mark.parametrize("n_times", [2, 3, 30])
def test_pchip_equals_scipy_exactly(n_times: int) -> None:
    rng = np.random.default_rng(n_times)
    x = np.cumsum(rng.uniform(0.5, 3.0, n_times))
    y = rng.normal(size=(n_times, 500)).astype(np.float32)
    y[:, :50] = 0.0  # flat curves
    y[: n_times // 2, 50:100] = 2.0  # steps: zero slopes next to rising ones
    x_new = np.linspace(x[0], x[-1], 4 * n_times)
    expected = PchipInterpolator(x, y, axis=0)(x_new)
    np.testing.assert_array_equal(pchip(x, y, x_new), expected)
