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
    """One entry of ``studies[].analyses`` for a CT perfusion acquisition.

    Quantities and decisions the acquisition cannot support (``analysis.not_assessable``,
    e.g. Tmax > 10 s when the scan ended before the tissue washed out) are null, and
    ``not_assessable`` gives the reason for each. ``analysis_slab_mm`` is the slice
    thickness analysed: thin input slices are averaged into slabs of about 5 mm.
    """
    m = analysis.metrics
    # Quantities the acquisition cannot support are null, with the reason beside them.
    na = analysis.not_assessable
    tmax10_ml = None if "tmax10_ml" in na else m.tmax10_ml
    hir = None if "hypoperfusion_intensity_ratio" in na else m.hypoperfusion_intensity_ratio
    slabs = analysis.slabs
    aif = _curve(analysis.aif, analysis.grid_s, analysis.geometry)
    if aif is not None:
        aif["partial_volume_scale"] = round(analysis.aif_scale, 3)
    dz, dy, dx = analysis.geometry.voxel_size_mm
    return {
        "kind": "ctp",
        "series_instance_uids": series_instance_uids,
        "core_ml": m.core_ml,
        "tmax6_ml": m.tmax6_ml,
        "tmax10_ml": tmax10_ml,
        "mismatch_ml": m.mismatch_ml,
        "mismatch_ratio": m.mismatch_ratio,
        "hypoperfusion_intensity_ratio": hir,
        "core_to_penumbra_ratio": m.core_to_penumbra_ratio,
        "lesion_side": analysis.lesion_side,
        "decisions": analysis.decisions,
        "not_assessable": dict(na),
        "decision_rules": rule_table(),
        "collaterals": {
            "hypoperfusion_intensity_ratio": hir,
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
        "analysis_slab_mm": round(slabs.slab_mm, 3),
        "analysis_grid": {
            "shape_zyx": list(analysis.core.shape),
            "voxel_size_mm_zyx": [round(dz, 3), round(dy, 3), round(dx, 3)],
            "input_slice_mm": round(slabs.input_slice_mm, 3),
            "slices_per_slab": slabs.slices_per_slab,
            "input_slices_left_out": slabs.dropped_slices,
        },
        "bolus_arrival_s": round(analysis.arrival_s, 2),
        "unwashed_tissue_ml": analysis.unwashed_tissue_ml,
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
