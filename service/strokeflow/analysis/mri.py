"""The MR stroke pipeline: DWI/ADC core, DSC Tmax, mismatch in one space, decisions.

It gives the same answers as the CT pipeline (core, Tmax > 6 s and > 10 s volumes,
mismatch, decisions, quality) and reuses its parts: the oSVD deconvolution and maps
(:mod:`strokeflow.analysis.maps`), the arterial search (:mod:`.inputs`, behind a
saturation filter), the lesion clean-up (:mod:`.lesions`), the hemispheres and the
decision rule sets (:mod:`.decisions`).

Common space: the DWI grid (the finest, and the one the core is measured on). The Tmax
masks are computed on the perfusion grid and resampled onto it through the DICOM
geometry, refined by a rigid registration when the patient moved between the series.
"""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.coregister import resample
from strokeflow.analysis.ctp import AnalysisError
from strokeflow.analysis.decisions import (
    HYPOPERFUSION_TMAX_S,
    RULE_SETS,
    SEVERE_HYPOPERFUSION_TMAX_S,
    evaluate_decisions,
    lesion_metrics,
)
from strokeflow.analysis.dsc_maps import RelativePerfusionMaps
from strokeflow.analysis.hemispheres import LEFT, RIGHT, Hemispheres, find_hemispheres, side_name
from strokeflow.analysis.lesions import TmaxRegion, clean_mask, extra_tmax_regions, volume_ml
from strokeflow.analysis.mri_diffusion import (
    analyse_diffusion,
    diffusion_fields,
    uncrop,
)
from strokeflow.analysis.mri_perfusion import analyse_perfusion
from strokeflow.analysis.mri_types import (
    DiffusionImages,
    MriAcquisition,
    MriAnalysis,
    MriSettings,
    ScannerAdc,
)
from strokeflow.analysis.quality import QualityFlag
from strokeflow.analysis.timing import StageClock

__all__ = [
    "AnalysisError",
    "DiffusionImages",
    "MriAcquisition",
    "MriAnalysis",
    "MriSettings",
    "ScannerAdc",
    "analyse_mri",
]


def analyse_mri(acq: MriAcquisition, settings: MriSettings | None = None) -> MriAnalysis:
    """Run the MR stroke analysis on one study's DWI/ADC and DSC series.

    Parameters
    ----------
    acq : MriAcquisition
        Assembled series; DWI or a scanner ADC map is required, DSC is optional.
    settings : MriSettings, optional
        Thresholds and method parameters; the published defaults when omitted.

    Returns
    -------
    MriAnalysis

    Raises
    ------
    AnalysisError
        Without any diffusion series (the core cannot be measured), without a brain,
        or when the perfusion cannot be analysed at all (no echo time, no artery).
    """
    settings = settings or MriSettings()
    clock = StageClock()
    flags: list[QualityFlag] = []
    if acq.dwi is None and acq.adc is None:
        if acq.pwi is None:
            raise AnalysisError(
                "no diffusion (DWI or ADC) and no perfusion (DSC) series: nothing to analyse"
            )
        raise AnalysisError(
            "DSC perfusion without a diffusion series (DWI or ADC): the ischaemic core "
            "cannot be measured, so mismatch and decisions are impossible"
        )
    diffusion = analyse_diffusion(acq, settings, flags)
    clock.lap("diffusion")
    vv = diffusion.geometry.voxel_volume_ml
    core_ml = volume_ml(diffusion.core, vv)
    hemis = find_hemispheres(diffusion.brain, diffusion.geometry)

    if acq.pwi is None:
        flags.append(
            QualityFlag(
                "no_perfusion",
                "warning",
                "no DSC perfusion series: core only; Tmax volumes, mismatch and the "
                "mismatch decisions are not available",
            )
        )
        core_values = {"core_ml": round(core_ml, 1)}
        decisions: dict[str, bool | None] = {}
        for rule in RULE_SETS:
            # Only an "any of" rule met by the core alone can be decided without perfusion.
            met = rule.any_of and any(
                c.quantity in core_values and c.holds(core_values) for c in rule.criteria
            )
            decisions[rule.key] = True if met else None
        return MriAnalysis(
            **diffusion_fields(diffusion),
            core_ml=round(core_ml, 1),
            perfusion_available=False,
            tmax6=None,
            tmax10=None,
            metrics=None,
            decisions=decisions,
            lesion_side=_side(diffusion.core, hemis, vv),
            flags=flags,
            timings_s=clock.timings,
        )

    perf = analyse_perfusion(acq.pwi, diffusion, settings, flags, clock)

    def above(threshold_s: float) -> np.ndarray:
        # Thresholded on the perfusion grid (a volume-preserving 50 % border once
        # resampled), but over the whole brain, so that the lesion border on the DWI grid
        # follows the fine diffusion tissue mask rather than the coarse perfusion voxels.
        fraction = resample(
            (perf.tmax_filled > threshold_s).astype(np.float32),
            perf.geometry,
            diffusion.geometry,
            diffusion.core.shape,
            rigid_lps=perf.registration.rigid_lps,
        )
        return clean_mask(fraction >= 0.5, diffusion.tissue, vv, settings.min_cluster_ml)

    # Core is hypoperfused tissue by definition; Tmax>10 s is part of Tmax>6 s.
    tmax6 = above(HYPOPERFUSION_TMAX_S) | diffusion.core
    tmax10 = above(SEVERE_HYPOPERFUSION_TMAX_S) & tmax6
    extra = extra_tmax_regions(settings.tmax_thresholds_s, above, tmax6, vv)
    metrics = lesion_metrics(core_ml, volume_ml(tmax6, vv), volume_ml(tmax10, vv))
    clock.lap("mismatch")
    side = _side(tmax6, hemis, vv)
    return MriAnalysis(
        **diffusion_fields(diffusion),
        core_ml=metrics.core_ml,
        perfusion_available=True,
        tmax6=uncrop(tmax6, diffusion, False),
        tmax10=uncrop(tmax10, diffusion, False),
        metrics=metrics,
        decisions=dict(evaluate_decisions(metrics)),
        lesion_side=side,
        pwi_geometry=perf.geometry,
        maps=RelativePerfusionMaps.from_deconvolution(perf.maps),
        pwi_tissue=perf.tissue,
        aif=perf.aif,
        grid_s=perf.grid_s,
        registration=perf.registration,
        frame_motion_mm=perf.frame_motion_mm,
        flags=flags,
        timings_s=clock.timings,
        tmax_extra=tuple(
            TmaxRegion(r.threshold_s, uncrop(r.mask, diffusion, False), r.volume_ml) for r in extra
        ),
    )


def _side(mask: np.ndarray, hemis: Hemispheres, vv: float) -> str | None:
    n_left = np.count_nonzero(mask & (hemis.side == LEFT))
    n_right = np.count_nonzero(mask & (hemis.side == RIGHT))
    if max(n_left, n_right) * vv < 1.0:
        return None
    return side_name(LEFT if n_left >= n_right else RIGHT)
