"""The summary and the result-object parts of a CT perfusion analysis.

:func:`~strokeflow.report.results_json.ctp_summary` says what the analysis found
(results.json, job row, CLI, pages and SR are written from it); :func:`ctp_parts` adds
what only CT has: the rCBF core definition, the HU anatomy, the absolute maps, the AIF
and VOF and the slabs.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from strokeflow.analysis.ctp import CtpAnalysis
from strokeflow.analysis.decisions import HYPOPERFUSION_TMAX_S, SEVERE_HYPOPERFUSION_TMAX_S
from strokeflow.analysis.settings import CtpSettings
from strokeflow.report.content import (
    CoreDefinition,
    ModalityParts,
    location_text,
)
from strokeflow.report.render import Curve, MapSpec

CT_PERFUSION_HEAD = Code("39142-5", "LN", "CT perfusion head with contrast IV")
CT_PERFUSION_METHOD = Code(
    "126301", "DCM", "Perfusion analysis by IV Iodinated Contrast CT technique"
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
            f"Tmax regions cleaned by a {settings.tmax_vote_px} x {settings.tmax_vote_px} "
            "in-plane majority vote (core: 3 x 3)",
            f"rCBF reference: {analysis.reference_description}",
            *([f"analysis slabs: {slab_text}"] if slabs.combined else []),
        ],
        extra_rows=[("Analysis slabs", slab_text)] if slabs.combined else [],
        procedure=CT_PERFUSION_HEAD,
        method=CT_PERFUSION_METHOD,
    )
