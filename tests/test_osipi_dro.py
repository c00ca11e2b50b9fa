"""OSIPI DSC digital reference object: the deconvolution against data we did not generate.

The 14 curves (CNR 200, gamma-variate residue, no delay) are read in place from
``../shared/data/osipi-dsc-dro`` (see its README). The DRO applies no haematocrit or tissue
density factor, so the maps, which carry ``k_H / rho``, are divided by it here. Its tissue
curves were made by a left Riemann sum of the convolution (residue sampled from t = 0 with
R(0) = 1), which adds ``F * tr / 2`` to their area: their area ratio is
``CBV + CBF * tr / 120`` (mL/100 mL), measured on the 14 curves to within their noise, and
that is the reference the model-free CBV is compared with.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pytest

from shared_data import shared_data
from strokeflow.analysis.constants import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR
from strokeflow.analysis.maps import compute_maps

#: The maps are per 100 g with k_H / rho applied; the DRO has neither.
TO_DRO_UNITS = BRAIN_DENSITY_G_PER_ML / HEMATOCRIT_FACTOR


@dataclass(frozen=True)
class DroResult:
    ref_cbf: np.ndarray
    ref_cbv: np.ndarray
    tr_s: np.ndarray
    cbf: np.ndarray
    cbv: np.ndarray


@pytest.fixture(scope="module")
def dro() -> DroResult:
    path = shared_data("osipi-dsc-dro/dsc_data.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14, f"{path}: expected 14 curves, found {len(rows)}"
    ref_cbf, ref_cbv, tr, cbf, cbv = [], [], [], [], []
    for row in rows:
        tissue = np.array(row["C_tis"].split(), dtype=np.float64)
        aif = np.array(row["C_aif"].split(), dtype=np.float64)
        step_s = float(row["tr"])
        maps = compute_maps(tissue[:, None].astype(np.float32), aif.astype(np.float32), step_s)
        ref_cbf.append(float(row["cbf"]))
        ref_cbv.append(float(row["cbv"]))
        tr.append(step_s)
        cbf.append(float(maps.cbf_ml_100g_min[0]) * TO_DRO_UNITS)
        cbv.append(float(maps.cbv_ml_100g[0]) * TO_DRO_UNITS)
    return DroResult(*(np.array(v) for v in (ref_cbf, ref_cbv, tr, cbf, cbv)))


def test_cbf_and_cbv_pass_the_osipi_tolerance(dro: DroResult) -> None:
    # OSIPI's own rule: |measured - ref| <= atol + rtol |ref|.
    assert np.all(np.abs(dro.cbf - dro.ref_cbf) <= 15.0 + 0.1 * dro.ref_cbf)
    assert np.all(np.abs(dro.cbv - dro.ref_cbv) <= 1.0 + 0.1 * dro.ref_cbv)


def test_cbv_within_10_percent_of_the_area_of_the_dro_curves(dro: DroResult) -> None:
    riemann_cbv = dro.ref_cbv + dro.ref_cbf * dro.tr_s / 120.0
    np.testing.assert_allclose(dro.cbv, riemann_cbv, rtol=0.10)


def test_cbf_has_no_large_error_at_any_flow(dro: DroResult) -> None:
    # A regression guard at the level reached (largest error 27 %, at CBF 5): the issue's
    # 10 % on 14 of 14 is pinned, and still failing, by the test below.
    np.testing.assert_allclose(dro.cbf, dro.ref_cbf, rtol=0.30)


@pytest.mark.xfail(
    strict=True,
    reason="issue 12 acceptance not reached: CBF from the maximum of the oSVD residue is "
    "within 10 % on 7 of 14 (gamma residue: -12 to -16 % at MTT 3.4-6 s; noise: +16 and +27 % "
    "at CBF 20 and 5); see docs/deconvolution.md",
)
def test_cbf_within_10_percent_on_14_of_14(dro: DroResult) -> None:
    np.testing.assert_allclose(dro.cbf, dro.ref_cbf, rtol=0.10)
