"""The summary and the result-object parts of a CT perfusion analysis.

:func:`ctp_summary` says what the analysis found (results.json, job row, CLI, pages and
SR are written from it); :func:`ctp_parts` adds what only CT has: the rCBF core
definition, the HU anatomy, the absolute maps, the AIF and VOF and the slabs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.sr.coding import Code

from strokeflow.analysis.ctp import CtpAnalysis
from strokeflow.analysis.decisions import HYPOPERFUSION_TMAX_S, SEVERE_HYPOPERFUSION_TMAX_S
from strokeflow.analysis.settings import CtpSettings
from strokeflow.report.content import (
    CoreDefinition,
    ModalityParts,
    ResultContent,
    location_text,
    result_content,
)
from strokeflow.report.render import Curve, MapSpec
from strokeflow.report.summary import AnalysisSummary, curve_json, tmax_volumes

CT_PERFUSION_HEAD = Code("39142-5", "LN", "CT perfusion head with contrast IV")
CT_PERFUSION_METHOD = Code(
    "126301", "DCM", "Perfusion analysis by IV Iodinated Contrast CT technique"
)
DECONVOLUTION = "block-circulant SVD with oscillation-index threshold (oSVD)"


def ctp_summary(
    analysis: CtpAnalysis,
    settings: CtpSettings,
    series_instance_uids: Sequence[str] = (),
    timings_s: dict[str, float] | None = None,
    warnings: Sequence[str] = (),
    study_instance_uid: str = "",
) -> AnalysisSummary:
    """What a CT perfusion analysis found.

    Quantities and decisions the acquisition cannot support (``analysis.not_assessable``,
    e.g. Tmax > 10 s when the scan ended before the tissue washed out) are None, with
    the reason in ``not_assessable``. ``analysis_slab_mm`` is the slice thickness
    analysed: thin input slices are averaged into slabs of about 5 mm.
    """
    m = analysis.metrics
    na = analysis.not_assessable
    hir = None if "hypoperfusion_intensity_ratio" in na else m.hypoperfusion_intensity_ratio
    slabs = analysis.slabs
    aif = curve_json(analysis.aif, analysis.grid_s, analysis.geometry, "hu", (2, 1))
    aif["partial_volume_scale"] = round(analysis.aif_scale, 3)
    vof = analysis.vof
    dz, dy, dx = analysis.geometry.voxel_size_mm
    return AnalysisSummary(
        kind="ctp",
        series_instance_uids=tuple(series_instance_uids),
        core_ml=m.core_ml,
        tmax=tmax_volumes(m, analysis.tmax_extra, na),
        mismatch_ml=m.mismatch_ml,
        mismatch_ratio=m.mismatch_ratio,
        hypoperfusion_intensity_ratio=hir,
        core_to_penumbra_ratio=m.core_to_penumbra_ratio,
        lesion_side=analysis.lesion_side,
        decisions=dict(analysis.decisions),
        not_assessable=dict(na),
        perfusion_available=True,
        flags=tuple(analysis.flags),
        core_thresholds={
            "core_rcbf_below": settings.core_rcbf_threshold,
            "core_requires_tmax_s_above": settings.core_requires_tmax_s,
        },
        min_cluster_ml=settings.min_cluster_ml,
        method={"deconvolution": DECONVOLUTION, "oscillation_index": settings.oscillation_index},
        details={
            "rcbf_reference": {
                "cbf_ml_100g_min": round(analysis.reference_cbf_ml_100g_min, 2),
                "description": analysis.reference_description,
            },
            "aif": aif,
            "vof": None
            if vof is None
            else curve_json(vof, analysis.grid_s, analysis.geometry, "hu", (2, 1)),
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
        },
        warnings=tuple(warnings),
        timings_s=dict(timings_s or {}),
        study_instance_uid=study_instance_uid,
    )


def ctp_parts(analysis: CtpAnalysis, settings: CtpSettings) -> ModalityParts:
    """What a CT perfusion analysis adds to the shared content."""
    core_pct = f"{100 * settings.core_rcbf_threshold:g} %"
    core_def = f"rCBF < {settings.core_rcbf_threshold:g}"
    if settings.core_requires_tmax_s > 0:
        core_def += f" and Tmax > {settings.core_requires_tmax_s:g} s"
    cluster = f"; clusters under {settings.min_cluster_ml:g} mL removed"
    slabs = analysis.slabs
    slab_text = f"{slabs.slab_mm:g} mm ({slabs.slices_per_slab} x {slabs.input_slice_mm:g} mm)"
    times = analysis.grid_s - analysis.grid_s[0]
    curves = [
        Curve(label, times, curve.curve, location_text(curve, analysis.geometry), colour)
        for label, curve, colour in (
            ("AIF", analysis.aif, (255, 70, 70)),
            ("VOF", analysis.vof, (80, 160, 255)),
        )
        if curve is not None
    ]
    method = (
        f"oSVD deconvolution (oscillation index {settings.oscillation_index:g}), automatically "
        "detected AIF and VOF"
    )
    maps = analysis.maps
    return ModalityParts(
        core=CoreDefinition(
            analysis.core,
            f"Ischemic core (rCBF < {core_pct})",
            f"Core (rCBF < {core_pct})",
            core_def + cluster,
        ),
        tmax_masks={
            HYPOPERFUSION_TMAX_S: analysis.tmax6,
            SEVERE_HYPOPERFUSION_TMAX_S: analysis.tmax10,
            **{r.threshold_s: r.mask for r in analysis.tmax_extra},
        },
        tmax_wording=("", ""),
        geometry=analysis.geometry,
        anatomy_zyx=analysis.baseline_hu,
        anatomy_window=(0.0, 80.0),
        maps=[
            MapSpec("CBF", maps.cbf_ml_100g_min, "mL/100 g/min", 0.0, 60.0),
            MapSpec("CBV", maps.cbv_ml_100g, "mL/100 g", 0.0, 6.0),
            MapSpec("MTT", maps.mtt_s, "s", 0.0, 15.0),
            MapSpec("Tmax", maps.tmax_s, "s", 0.0, 12.0),
        ],
        curves=curves,
        curve_unit="enhancement (HU)",
        footer=f"Method: {method}. Core: {core_def}. rCBF reference: "
        f"{analysis.reference_description}.",
        parameters_before=[f"deconvolution: {method}", f"core: {core_def}"],
        parameters_after=[
            f"minimum cluster volume: {settings.min_cluster_ml:g} mL",
            f"rCBF reference: {analysis.reference_description}",
            *([f"analysis slabs: {slab_text}"] if slabs.combined else []),
        ],
        extra_rows=[("Analysis slabs", slab_text)] if slabs.combined else [],
        procedure=CT_PERFUSION_HEAD,
        method=CT_PERFUSION_METHOD,
    )


def ctp_result_content(analysis: CtpAnalysis, settings: CtpSettings) -> ResultContent:
    """The result objects' content of a CT perfusion analysis.

    Parameters
    ----------
    analysis : CtpAnalysis
        Maps, masks, metrics and decisions on the analysis grid.
    settings : CtpSettings
        The thresholds the analysis used.

    Returns
    -------
    ResultContent
    """
    return result_content(ctp_summary(analysis, settings), ctp_parts(analysis, settings))
