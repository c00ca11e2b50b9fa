"""The ``results.json`` entries of an analysis, written from its :class:`AnalysisSummary`.

One writer for every modality (:meth:`~strokeflow.report.summary.AnalysisSummary.to_json`);
`ctp_summary` and `mri_summary` build the summary of each modality (light imports: no
highdicom or matplotlib, so `analyze --no-dicom` never loads them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strokeflow.analysis.ctp import CtpAnalysis
from strokeflow.analysis.mri import MriAcquisition, MriAnalysis, MriSettings
from strokeflow.analysis.settings import CtpSettings
from strokeflow.report.summary import AnalysisSummary, curve_json, tmax_volumes

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
    analysed: thin input slices are averaged into slabs of about 5 mm. ``smoothing`` is
    the edge-preserving filter's width for this study and what chose it.
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
            "smoothing": None
            if analysis.filter_width is None
            else {
                "sigma_mm": analysis.filter_width.sigma_mm,
                "arterial_fwhm_s": analysis.filter_width.arterial_fwhm_s,
                "tissue_contrast_to_noise": None
                if analysis.filter_width.tissue_cnr is None
                else round(analysis.filter_width.tissue_cnr, 2),
                "reason": analysis.filter_width.reason,
                # The CBF (and so the core) read in part from lightly filtered curves.
                "flow_filter_sigma_mm": analysis.filter_width.flow_sigma_mm,
                "flow_filter_share": analysis.filter_width.flow_share,
                "aligned_flow_share": analysis.filter_width.aligned_flow_share,
                "aligned_flow_oscillation_stride": (
                    analysis.filter_width.aligned_oscillation_stride
                ),
            },
            "unwashed_tissue_ml": analysis.unwashed_tissue_ml,
            "tmax_region_vote_px": settings.tmax_vote_px,
        },
        warnings=tuple(warnings),
        timings_s=dict(timings_s or {}),
        study_instance_uid=study_instance_uid,
    )


def mri_summary(
    analysis: MriAnalysis,
    acquisition: MriAcquisition,
    settings: MriSettings,
    timings_s: dict[str, float] | None = None,
    warnings: Sequence[str] = (),
    study_instance_uid: str = "",
) -> AnalysisSummary:
    """What an MR stroke analysis found.

    Parameters
    ----------
    analysis : MriAnalysis
        From :func:`strokeflow.analysis.mri.analyse_mri`.
    acquisition : MriAcquisition
        The series analysed (for their UIDs).
    settings : MriSettings
        The thresholds used.
    timings_s : dict, optional
        Stage timings of the caller (reading, assembly); the analysis' own stage
        timings (``analysis.timings_s``) follow them.
    warnings : sequence of str
        Assembly warnings.
    study_instance_uid : str
        The study.

    Returns
    -------
    AnalysisSummary
        Besides the shared entries, results.json gets ``dwi_series_instance_uids``,
        ``adc_series_instance_uid``, ``pwi_series_instance_uids``, ``adc`` and
        ``coregistration``. Without perfusion the Tmax volumes, mismatch and ratios are
        None and the mismatch decisions None (unknown), never False.
    """
    m = analysis.metrics
    dz, dy, dx = analysis.geometry.voxel_size_mm
    reg = analysis.registration
    adc_uids = [] if acquisition.adc_series_uid is None else [acquisition.adc_series_uid]
    uids = [*acquisition.dwi_series_uids, *adc_uids, *acquisition.pwi_series_uids]
    aif = None
    if analysis.aif is not None and analysis.grid_s is not None and analysis.pwi_geometry:
        aif = curve_json(
            analysis.aif.curve, analysis.grid_s, analysis.pwi_geometry, "delta_r2_per_s", (3, 2)
        )
        aif["saturated_voxels_rejected"] = analysis.aif.n_saturated_rejected
    return AnalysisSummary(
        kind="mri",
        series_instance_uids=tuple(uids),
        core_ml=analysis.core_ml,
        tmax=tmax_volumes(m, analysis.tmax_extra, {}),
        mismatch_ml=None if m is None else m.mismatch_ml,
        mismatch_ratio=None if m is None else m.mismatch_ratio,
        hypoperfusion_intensity_ratio=None if m is None else m.hypoperfusion_intensity_ratio,
        core_to_penumbra_ratio=None if m is None else m.core_to_penumbra_ratio,
        lesion_side=analysis.lesion_side,
        decisions=dict(analysis.decisions),
        not_assessable={},
        perfusion_available=analysis.perfusion_available,
        flags=tuple(analysis.flags),
        core_thresholds={
            "core_adc_below_um2_s": settings.adc_core_threshold_um2_s,
            "csf_adc_above_um2_s": settings.csf_adc_um2_s,
        },
        min_cluster_ml=settings.min_cluster_ml,
        method={
            "core": "ADC below threshold in brain tissue (CSF excluded)",
            "deconvolution": DECONVOLUTION if analysis.perfusion_available else None,
            "oscillation_index": settings.oscillation_index,
        },
        details={
            "dwi_series_instance_uids": list(acquisition.dwi_series_uids),
            "adc_series_instance_uid": acquisition.adc_series_uid,
            "pwi_series_instance_uids": list(acquisition.pwi_series_uids),
            "adc": {
                "source": analysis.adc_source,
                "stored_units": analysis.adc_units,
                "b_value_s_mm2": analysis.b_value_s_mm2,
            },
            "rcbf_reference": None,
            "aif": aif,
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
        },
        warnings=tuple(warnings),
        # The caller's stages (reading, assembly) first, then the analysis' own.
        timings_s={**(timings_s or {}), **analysis.timings_s},
        study_instance_uid=study_instance_uid,
    )
