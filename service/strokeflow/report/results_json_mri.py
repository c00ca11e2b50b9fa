"""The ``results.json`` entry of an MR stroke analysis (``"kind": "mri"``), and its maps.

Same keys as the CT perfusion entry (:func:`strokeflow.report.results_json.ctp_analysis_json`)
plus ``dwi_series_instance_uids``, ``adc_series_instance_uid``,
``pwi_series_instance_uids`` and ``perfusion_available``. Without perfusion, the Tmax
volumes, mismatch and ratios are ``null`` and the mismatch decisions are ``null``
(unknown), never ``false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from strokeflow import __version__
from strokeflow.analysis.decisions import HIR_POOR_COLLATERALS, rule_table
from strokeflow.analysis.mri import MriAcquisition, MriAnalysis, MriSettings
from strokeflow.report.nifti import save_volume


def _aif(analysis: MriAnalysis) -> dict[str, Any] | None:
    if analysis.aif is None or analysis.grid_s is None or analysis.pwi_geometry is None:
        return None
    curve = analysis.aif.curve
    grid = analysis.grid_s
    return {
        "times_s": [round(float(t), 2) for t in grid - grid[0]],
        "curve_delta_r2_per_s": [round(float(v), 3) for v in curve.curve],
        "location_lps_mm": curve.location_lps_mm(analysis.pwi_geometry),
        "voxels_zyx": curve.voxels_zyx.astype(int).tolist(),
        "peak_delta_r2_per_s": round(curve.peak, 2),
        "time_to_peak_s": round(curve.ttp_s, 2),
        "fwhm_s": round(curve.fwhm_s, 2),
        "tail_fraction": round(curve.tail_fraction, 3),
        "saturated_voxels_rejected": analysis.aif.n_saturated_rejected,
    }


def mri_analysis_json(
    analysis: MriAnalysis,
    acquisition: MriAcquisition,
    settings: MriSettings,
    timings_s: dict[str, float],
    warnings: list[str],
) -> dict[str, Any]:
    """One entry of ``studies[].analyses`` for an MR stroke study.

    Parameters
    ----------
    analysis : MriAnalysis
        From :func:`strokeflow.analysis.mri.analyse_mri`.
    acquisition : MriAcquisition
        The series analysed (for their UIDs).
    settings : MriSettings
        The thresholds used.
    timings_s : dict
        Stage timings of the caller (reading, assembly); the analysis' own stage
        timings (``analysis.timings_s``) are appended.
    warnings : list of str
        Assembly warnings.

    Returns
    -------
    dict
        JSON-serialisable entry.
    """
    m = analysis.metrics
    dz, dy, dx = analysis.geometry.voxel_size_mm
    reg = analysis.registration
    adc_uids = [] if acquisition.adc_series_uid is None else [acquisition.adc_series_uid]
    uids = [*acquisition.dwi_series_uids, *adc_uids, *acquisition.pwi_series_uids]
    return {
        "kind": "mri",
        "series_instance_uids": uids,
        "dwi_series_instance_uids": list(acquisition.dwi_series_uids),
        "adc_series_instance_uid": acquisition.adc_series_uid,
        "pwi_series_instance_uids": list(acquisition.pwi_series_uids),
        "perfusion_available": analysis.perfusion_available,
        "core_ml": analysis.core_ml,
        "tmax6_ml": None if m is None else m.tmax6_ml,
        "tmax10_ml": None if m is None else m.tmax10_ml,
        "mismatch_ml": None if m is None else m.mismatch_ml,
        "mismatch_ratio": None if m is None else m.mismatch_ratio,
        "hypoperfusion_intensity_ratio": None if m is None else m.hypoperfusion_intensity_ratio,
        "core_to_penumbra_ratio": None if m is None else m.core_to_penumbra_ratio,
        "lesion_side": analysis.lesion_side,
        "decisions": analysis.decisions,
        "decision_rules": rule_table(),
        "collaterals": {
            "hypoperfusion_intensity_ratio": None if m is None else m.hypoperfusion_intensity_ratio,
            "poor_if_above": HIR_POOR_COLLATERALS,
        },
        "thresholds": {
            "core_adc_below_um2_s": settings.adc_core_threshold_um2_s,
            "csf_adc_above_um2_s": settings.csf_adc_um2_s,
            "tmax_s_above": list(settings.tmax_thresholds_s),
            "min_cluster_ml": settings.min_cluster_ml,
        },
        "adc": {
            "source": analysis.adc_source,
            "stored_units": analysis.adc_units,
            "b_value_s_mm2": analysis.b_value_s_mm2,
        },
        "rcbf_reference": None,
        "aif": _aif(analysis),
        "vof": None,
        "motion": {
            "max_displacement_mm": None
            if analysis.frame_motion_mm is None
            else round(float(np.max(analysis.frame_motion_mm)), 2),
            "excluded_frames": [],
        },
        "coregistration": None
        if reg is None
        else {
            "method": "DICOM geometry" + (" + rigid registration (NCC)" if reg.applied else ""),
            "applied": reg.applied,
            "translation_mm_lps": [round(v, 2) for v in reg.translation_mm],
            "rotation_deg_xyz": [round(v, 2) for v in reg.rotation_deg],
            "ncc_before": round(reg.ncc_before, 3),
            "ncc_after": round(reg.ncc_after, 3),
        },
        "analysis_grid": {
            "shape_zyx": list(analysis.core.shape),
            "voxel_size_mm_zyx": [round(dz, 3), round(dy, 3), round(dx, 3)],
            "space": "DWI",
        },
        "quality": {
            "ok": analysis.quality_ok,
            "flags": [f.as_dict() for f in analysis.flags],
        },
        "warnings": warnings,
        "method": {
            "core": "ADC below threshold in brain tissue (CSF excluded)",
            "deconvolution": "block-circulant SVD with oscillation-index threshold (oSVD)"
            if analysis.perfusion_available
            else None,
            "oscillation_index": settings.oscillation_index,
            "software": f"StrokeFlow {__version__}",
        },
        # The caller's stages (reading, assembly) first, then the analysis' own.
        "timings_s": {**timings_s, **analysis.timings_s},
    }


def write_mri_maps(analysis: MriAnalysis, out_dir: Path) -> list[Path]:
    """Write the ADC, masks (DWI space) and perfusion maps (PWI space) as NIfTI."""
    out_dir.mkdir(parents=True, exist_ok=True)
    g = analysis.geometry
    volumes: dict[str, np.ndarray] = {
        "adc_um2_s": analysis.adc_um2_s,
        "core_mask": analysis.core,
        "tissue_mask": analysis.tissue,
    }
    if analysis.tmax6 is not None and analysis.tmax10 is not None:
        volumes["tmax6_mask"] = analysis.tmax6
        volumes["tmax10_mask"] = analysis.tmax10
    paths = [save_volume(v, g, out_dir / f"{name}.nii.gz") for name, v in volumes.items()]
    if analysis.maps is not None and analysis.pwi_geometry is not None:
        maps = analysis.maps
        pwi = {
            "pwi_cbf_relative": maps.cbf_relative,
            "pwi_cbv_relative": maps.cbv_relative,
            "pwi_mtt_s": maps.mtt_s,
            "pwi_tmax_s": maps.tmax_s,
            "pwi_ttp_s": maps.ttp_s,
        }
        paths += [
            save_volume(v, analysis.pwi_geometry, out_dir / f"{name}.nii.gz")
            for name, v in pwi.items()
        ]
    return paths
