"""MR building blocks on phantom arrays: ADC, saturated AIF, grids, registration, no-input."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from strokeflow.analysis.coregister import resample, resample_mask
from strokeflow.analysis.ctp import AnalysisError
from strokeflow.analysis.diffusion import adc_from_dwi, mr_brain_mask, scanner_adc_um2_s
from strokeflow.analysis.dsc import saturated_voxels, select_dsc_aif, to_delta_r2
from strokeflow.analysis.inputs import select_aif
from strokeflow.analysis.mri import (
    DiffusionImages,
    MriAcquisition,
    ScannerAdc,
    analyse_mri,
)
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.assemble.mri import b_value_of
from strokeflow.phantom.mri import MriPhantom, MriPhantomOptions, simulate_mri


def _acquisition(p: MriPhantom, *, dwi: bool = True, adc: bool = True) -> MriAcquisition:
    g_dwi = Geometry(p.dwi_affine_lps)
    pwi = None
    if p.dsc is not None:
        pwi = PerfusionSeries(
            p.dsc, p.dsc_times_s, Geometry(p.pwi_affine_lps), echo_time_s=p.options.te_s
        )
    return MriAcquisition(
        dwi=DiffusionImages(p.dwi, g_dwi) if dwi and p.dwi else None,
        adc=ScannerAdc(p.adc_um2_s, g_dwi) if adc and p.adc_um2_s is not None else None,
        pwi=pwi,
    )


@pytest.fixture(scope="module")
def diffusion_phantom() -> MriPhantom:
    return simulate_mri(
        MriPhantomOptions(dwi_matrix=128, slices=10, perfusion=False, lesion="large", seed=3)
    )


def test_scanner_and_computed_adc_give_the_same_core(diffusion_phantom: MriPhantom) -> None:
    p = diffusion_phantom
    from_map = analyse_mri(_acquisition(p, dwi=False))
    from_b = analyse_mri(_acquisition(p, adc=False))
    assert from_map.adc_source == "scanner" and from_b.adc_source == "computed"
    both = from_map.tissue & from_b.tissue
    rel = np.abs(from_map.adc_um2_s[both] - from_b.adc_um2_s[both]) / from_b.adc_um2_s[both]
    assert np.median(rel) < 0.02
    assert abs(from_map.core_ml - from_b.core_ml) < 1.0
    assert abs(from_b.core_ml - p.truth["core_ml"]) < 0.1 * p.truth["core_ml"]


@pytest.mark.parametrize(("scale", "units"), [(1e-3, "x10^-3 mm²/s"), (1e-6, "mm²/s")])
def test_scanner_adc_units_are_recognised(
    diffusion_phantom: MriPhantom, scale: float, units: str
) -> None:
    p = diffusion_phantom
    assert p.adc_um2_s is not None
    brain = mr_brain_mask(p.dwi[0.0], 230.0 / 128)
    adc, found = scanner_adc_um2_s(p.adc_um2_s * scale, brain)
    assert found == units
    np.testing.assert_allclose(adc[brain], p.adc_um2_s[brain], rtol=1e-4)


def test_non_adc_values_are_refused() -> None:
    brain = np.ones((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="fits none of the known units"):
        scanner_adc_um2_s(np.full((2, 8, 8), 4.0e4), brain)


def test_adc_from_b_values_recovers_the_tissue_values() -> None:
    adc_true = np.array([[[800.0, 500.0, 3000.0]]])
    b0 = np.full(adc_true.shape, 1000.0)
    b1000 = b0 * np.exp(-1000.0 * adc_true * 1e-6)
    adc = adc_from_dwi(b0, b1000, 1000.0)
    np.testing.assert_allclose(adc, adc_true, rtol=1e-4)


def test_study_without_perfusion_gives_core_only(diffusion_phantom: MriPhantom) -> None:
    a = analyse_mri(_acquisition(diffusion_phantom))
    assert not a.perfusion_available
    assert a.metrics is None and a.tmax6 is None
    assert a.decisions["defuse3"] is None and a.decisions["extend"] is None
    assert any(f.code == "no_perfusion" and "core only" in f.message for f in a.flags)
    assert not a.quality_ok
    assert a.lesion_side == "left"


def test_malignant_core_is_decided_without_perfusion() -> None:
    p = simulate_mri(
        MriPhantomOptions(dwi_matrix=64, slices=20, perfusion=False, lesion="malignant")
    )
    a = analyse_mri(_acquisition(p))
    assert p.truth["core_ml"] >= 100 and a.core_ml >= 100
    assert a.decisions["malignant_profile"] is True
    assert a.decisions["defuse3"] is None


def test_no_diffusion_and_no_perfusion_is_an_error() -> None:
    with pytest.raises(AnalysisError, match=r"no diffusion .* and no perfusion"):
        analyse_mri(MriAcquisition(dwi=None, adc=None, pwi=None))


def test_perfusion_without_diffusion_is_an_error() -> None:
    p = simulate_mri(MriPhantomOptions(dwi_matrix=32, pwi_matrix=32, slices=4, frames=20))
    acq = _acquisition(p, dwi=False, adc=False)
    with pytest.raises(AnalysisError, match="core cannot be measured"):
        analyse_mri(acq)


def test_saturated_arterial_curves_are_rejected() -> None:
    p = simulate_mri(
        MriPhantomOptions(dwi_matrix=32, pwi_matrix=64, slices=8, frames=40, adc_map=False)
    )
    assert p.dsc is not None and p.saturated_aif.any()
    brain = mr_brain_mask(p.dsc[2:6].mean(axis=0), 230.0 / 64)
    dr2 = to_delta_r2(p.dsc, brain, p.options.te_s)
    flagged = saturated_voxels(dr2)
    assert np.all(flagged[p.saturated_aif])
    vv = abs(np.linalg.det(p.pwi_affine_lps[:3, :3])) / 1000.0
    # The CT search alone falls for the saturated, flat-topped curves...
    naive = select_aif(dr2.delta_r2_s, brain, p.options.tr_s, vv)
    assert naive is not None and p.saturated_aif[tuple(naive.voxels_zyx.T)].any()
    # ... the DSC search does not, and its bolus is narrower.
    chosen = select_dsc_aif(dr2, dr2.delta_r2_s, brain, p.options.tr_s, vv)
    assert chosen is not None and chosen.n_saturated_rejected > 0
    assert not flagged[tuple(chosen.curve.voxels_zyx.T)].any()
    assert chosen.curve.fwhm_s < naive.fwhm_s


@pytest.fixture(scope="module")
def full_grid_phantom() -> MriPhantom:
    return simulate_mri(
        MriPhantomOptions(dwi_matrix=256, pwi_matrix=128, slices=8, frames=45, seed=1)
    )


def test_dwi_256_and_pwi_128_give_the_right_mismatch(full_grid_phantom: MriPhantom) -> None:
    p = full_grid_phantom
    a = analyse_mri(_acquisition(p))
    assert a.metrics is not None and a.tmax6 is not None
    assert a.tmax6.shape == a.core.shape == p.dwi_zones.shape
    t = p.truth
    assert abs(a.metrics.core_ml - t["core_ml"]) < 5.0
    assert abs(a.metrics.tmax6_ml - t["tmax6_ml"]) < 0.1 * t["tmax6_ml"]
    assert abs(a.metrics.mismatch_ml - t["metrics"]["mismatch_ml"]) < 0.12 * t["tmax6_ml"]
    assert a.decisions == t["decisions"]
    assert a.lesion_side == "left"
    # The masks overlap the true zones in the common (DWI) space.
    true_tmax6 = p.dwi_zones >= 2
    dice = 2 * np.count_nonzero(a.tmax6 & true_tmax6) / (a.tmax6.sum() + true_tmax6.sum())
    assert dice > 0.85


def test_patient_motion_between_series_is_registered() -> None:
    p = simulate_mri(
        MriPhantomOptions(
            dwi_matrix=128,
            pwi_matrix=64,
            slices=10,
            frames=45,
            pwi_shift_mm=(5.0, -3.0, 0.0),
            pwi_rotation_deg=4.0,
            seed=2,
        )
    )
    a = analyse_mri(_acquisition(p))
    reg = a.registration
    assert reg is not None and reg.applied
    np.testing.assert_allclose(reg.translation_mm[:2], (5.0, -3.0), atol=1.0)
    assert abs(reg.rotation_deg[2] - 4.0) < 1.0
    assert any(f.code == "series_motion" for f in a.flags)
    assert a.metrics is not None
    assert abs(a.metrics.tmax6_ml - p.truth["tmax6_ml"]) < 0.12 * p.truth["tmax6_ml"]
    assert a.decisions == p.truth["decisions"]


@pytest.mark.parametrize(
    ("creator", "group", "offset", "vr", "value", "vendor"),
    [
        ("SIEMENS MR HEADER", 0x0019, 0x0C, "IS", "1000", "Siemens"),
        ("GEMS_PARM_01", 0x0043, 0x39, "IS", ["1000001000", "8", "0", "0"], "GE"),
        ("Philips Imaging DD 001", 0x2001, 0x03, "FL", 1000.0, "Philips"),
        ("Philips Imaging DD 001", 0x2001, 0x03, "UN", np.float32(1000.0).tobytes(), "Philips"),
    ],
)
def test_b_value_from_vendor_private_tags(
    creator: str, group: int, offset: int, vr: str, value: object, vendor: str
) -> None:
    ds = Dataset()
    ds.private_block(group, creator, create=True).add_new(offset, vr, value)
    b, source = b_value_of(ds)
    assert b == pytest.approx(1000.0)
    assert source.startswith(vendor)


def test_standard_b_value_wins_over_private_tags() -> None:
    ds = Dataset()
    ds.DiffusionBValue = 800.0
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "1000")
    assert b_value_of(ds) == (800.0, "DiffusionBValue")
    assert b_value_of(Dataset()) == (None, "")


def test_perfusion_maps_lie_where_the_lesion_is(full_grid_phantom: MriPhantom) -> None:
    # The maps are on a binned grid cropped to the brain: its geometry must still put
    # the delayed tissue where the phantom's perfusion zones are.
    p = full_grid_phantom
    a = analyse_mri(_acquisition(p))
    assert a.maps is not None and a.pwi_geometry is not None and a.pwi_tissue is not None
    assert a.maps.tmax_s.shape == a.pwi_tissue.shape
    assert a.maps.tmax_s.shape[1] < p.pwi_zones.shape[1] // 2  # binned and cropped
    native = Geometry(p.pwi_affine_lps)
    tmax = resample(np.nan_to_num(a.maps.tmax_s), a.pwi_geometry, native, p.pwi_zones.shape)
    tissue = resample_mask(a.pwi_tissue, a.pwi_geometry, native, p.pwi_zones.shape)
    found, true = (tmax > 6.0) & tissue, (p.pwi_zones >= 2) & tissue
    assert 2 * np.count_nonzero(found & true) / (found.sum() + true.sum()) > 0.8
