"""The ``results.json`` document written by ``strokeflow analyze``."""

from __future__ import annotations

from typing import Any

import numpy as np

from strokeflow import __version__
from strokeflow.analysis.ctp import CtpAnalysis
from strokeflow.analysis.decisions import HIR_POOR_COLLATERALS, rule_table
from strokeflow.analysis.inputs import VascularCurve
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry


def _curve(curve: VascularCurve | None, grid_s: np.ndarray, geometry: Geometry) -> Any:
    if curve is None:
        return None
    return {
        "times_s": [round(float(t), 2) for t in grid_s - grid_s[0]],
        "curve_hu": [round(float(v), 2) for v in curve.curve],
        "location_lps_mm": curve.location_lps_mm(geometry),
        "voxels_zyx": curve.voxels_zyx.astype(int).tolist(),
        "peak_hu": round(curve.peak, 1),
        "time_to_peak_s": round(curve.ttp_s, 2),
        "fwhm_s": round(curve.fwhm_s, 2),
        "tail_fraction": round(curve.tail_fraction, 3),
    }


def ctp_analysis_json(
    analysis: CtpAnalysis,
    series_instance_uids: list[str],
    settings: CtpSettings,
    timings_s: dict[str, float],
    warnings: list[str],
) -> dict[str, Any]:
    """One entry of ``studies[].analyses`` for a CT perfusion acquisition."""
    m = analysis.metrics
    aif = _curve(analysis.aif, analysis.grid_s, analysis.geometry)
    if aif is not None:
        aif["partial_volume_scale"] = round(analysis.aif_scale, 3)
    dz, dy, dx = analysis.geometry.voxel_size_mm
    return {
        "kind": "ctp",
        "series_instance_uids": series_instance_uids,
        "core_ml": m.core_ml,
        "tmax6_ml": m.tmax6_ml,
        "tmax10_ml": m.tmax10_ml,
        "mismatch_ml": m.mismatch_ml,
        "mismatch_ratio": m.mismatch_ratio,
        "hypoperfusion_intensity_ratio": m.hypoperfusion_intensity_ratio,
        "core_to_penumbra_ratio": m.core_to_penumbra_ratio,
        "lesion_side": analysis.lesion_side,
        "decisions": analysis.decisions,
        "decision_rules": rule_table(),
        "collaterals": {
            "hypoperfusion_intensity_ratio": m.hypoperfusion_intensity_ratio,
            "poor_if_above": HIR_POOR_COLLATERALS,
        },
        "thresholds": {
            "core_rcbf_below": settings.core_rcbf_threshold,
            "core_requires_tmax_s_above": settings.core_requires_tmax_s,
            "tmax_s_above": list(settings.tmax_thresholds_s),
            "min_cluster_ml": settings.min_cluster_ml,
        },
        "rcbf_reference": {
            "cbf_ml_100g_min": round(analysis.reference_cbf_ml_100g_min, 2),
            "description": analysis.reference_description,
        },
        "aif": aif,
        "vof": _curve(analysis.vof, analysis.grid_s, analysis.geometry),
        "motion": {
            "max_displacement_mm": round(float(np.max(analysis.motion.displacement_mm)), 2),
            "excluded_frames": np.nonzero(analysis.motion.excluded)[0].tolist(),
        },
        "analysis_grid": {
            "shape_zyx": list(analysis.core.shape),
            "voxel_size_mm_zyx": [round(dz, 3), round(dy, 3), round(dx, 3)],
        },
        "quality": {
            "ok": analysis.quality_ok,
            "flags": [f.as_dict() for f in analysis.flags],
        },
        "warnings": warnings,
        "method": {
            "deconvolution": "block-circulant SVD with oscillation-index threshold (oSVD)",
            "oscillation_index": settings.oscillation_index,
            "software": f"StrokeFlow {__version__}",
        },
        "timings_s": timings_s,
    }
