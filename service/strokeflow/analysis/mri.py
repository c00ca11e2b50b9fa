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

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from strokeflow.analysis.coregister import RigidResult, register_rigid, resample, resample_mask
from strokeflow.analysis.ctp import AnalysisError, preliminary_affected_side
from strokeflow.analysis.decisions import (
    HYPOPERFUSION_TMAX_S,
    RULE_SETS,
    SEVERE_HYPOPERFUSION_TMAX_S,
    LesionMetrics,
    evaluate_decisions,
    lesion_metrics,
)
from strokeflow.analysis.denoise import smooth_within_mask
from strokeflow.analysis.diffusion import (
    CORE_ADC_THRESHOLD_UM2_S,
    CSF_ADC_UM2_S,
    DiffusionCore,
    adc_core,
    adc_from_dwi,
    mr_brain_mask,
    scanner_adc_um2_s,
)
from strokeflow.analysis.dsc import (
    DeltaR2,
    DscAif,
    frame_displacement_mm,
    select_dsc_aif,
    to_delta_r2,
)
from strokeflow.analysis.dsc_maps import RelativePerfusionMaps
from strokeflow.analysis.hemispheres import LEFT, RIGHT, Hemispheres, find_hemispheres, side_name
from strokeflow.analysis.lesions import TmaxRegion, clean_mask, extra_tmax_regions, volume_ml
from strokeflow.analysis.maps import PerfusionMaps, compute_maps
from strokeflow.analysis.motion import bin_inplane
from strokeflow.analysis.quality import MriQualityLimits, QualityFlag, quality_ok
from strokeflow.analysis.resample import resample_uniform
from strokeflow.analysis.timing import StageClock
from strokeflow.analysis.volume import Geometry, PerfusionSeries

__all__ = [
    "AnalysisError",
    "DiffusionImages",
    "MriAcquisition",
    "MriAnalysis",
    "MriSettings",
    "ScannerAdc",
    "analyse_mri",
]

#: Lowest and highest b-value for which the 620 x10^-6 mm²/s core threshold holds.
B_VALUE_RANGE_S_MM2 = (800.0, 1500.0)


@dataclass(frozen=True)
class MriSettings:
    """Parameters of the MR analysis.

    Attributes
    ----------
    adc_core_threshold_um2_s : float
        Core: ADC below this (x10^-6 mm²/s).
    csf_adc_um2_s : float
        Voxels with ADC above this are CSF, excluded from the tissue.
    tmax_thresholds_s : tuple of float
        Hypoperfusion thresholds (s) reported as volumes. Tmax > 6 s and > 10 s, on
        which the published decision rules are defined, are always measured; any other
        threshold adds a volume named by its value (``MriAnalysis.tmax_extra``).
    min_cluster_ml : float
        Connected lesion clusters smaller than this are discarded (as for CT).
    analysis_pixel_mm : float
        In-plane pixel size the DSC series is binned to (by a whole factor: 1.8 mm
        pixels are binned 2 x 2). DSC has low SNR and an EPI point-spread of 2-3 pixels,
        so binning loses little detail; the lesion border on the common grid follows the
        DWI tissue mask. It makes the deconvolution 4 x cheaper (and on the phantom the
        Tmax > 6 s volume within 1 % of the unbinned analysis).
    smoothing_sigma_mm : float
        Sigma of the in-mask spatial smoothing of the DSC curves.
    temporal_step_s : float
        Uniform time step of the deconvolution grid.
    oscillation_index : float
        oSVD oscillation-index target.
    correct_tmax_bias : bool
        Use the engine's regularisation-bias correction of Tmax and CBF
        (``compute_maps(correct_tmax_lag=...)``). The MR phantom's wide arterial bolus
        otherwise biases Tmax by about +2 s.
    register : bool
        Refine the DICOM-geometry alignment of DWI and DSC by rigid registration.
    quality : MriQualityLimits
        Limits that raise the quality flags.
    """

    adc_core_threshold_um2_s: float = CORE_ADC_THRESHOLD_UM2_S
    csf_adc_um2_s: float = CSF_ADC_UM2_S
    tmax_thresholds_s: tuple[float, ...] = (6.0, 10.0)
    min_cluster_ml: float = 0.5
    analysis_pixel_mm: float = 3.5
    smoothing_sigma_mm: float = 2.0
    temporal_step_s: float = 1.0
    oscillation_index: float = 0.095
    correct_tmax_bias: bool = True
    register: bool = True
    quality: MriQualityLimits = field(default_factory=MriQualityLimits)


@dataclass(frozen=True)
class DiffusionImages:
    """Trace-weighted DWI of one acquisition.

    Attributes
    ----------
    by_b_value : dict of float to numpy.ndarray
        b-value (s/mm²) -> ``(z, y, x)`` float32 trace-weighted image; needs a b0
        (b <= 50) and a high b-value.
    geometry : Geometry
        Grid of the images.
    """

    by_b_value: dict[float, np.ndarray]
    geometry: Geometry


@dataclass(frozen=True)
class ScannerAdc:
    """An ADC map computed by the scanner, values as stored (after rescale)."""

    values: np.ndarray
    geometry: Geometry


@dataclass(frozen=True)
class MriAcquisition:
    """The series of one MR stroke study that the analysis uses.

    Attributes
    ----------
    dwi, adc, pwi
        Trace-weighted DWI, scanner ADC map and DSC perfusion (``PerfusionSeries`` with
        ``echo_time_s``); any may be None.
    dwi_series_uids, adc_series_uid, pwi_series_uids
        Where they came from.
    warnings : tuple of str
        Assembly problems a person should know about.
    study_uid : str
    series_used : tuple of (str, str)
        Each series used, as ``(role and series number, what it is)``, e.g.
        ``("DWI series 701", "trace b 1000, 12 directions")``, for the summary page.
    """

    dwi: DiffusionImages | None
    adc: ScannerAdc | None
    pwi: PerfusionSeries | None
    dwi_series_uids: tuple[str, ...] = ()
    adc_series_uid: str | None = None
    pwi_series_uids: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    study_uid: str = ""
    series_used: tuple[tuple[str, str], ...] = ()


@dataclass
class MriAnalysis:
    """Everything the MR pipeline produced.

    Masks in the common space (the DWI grid ``geometry``, ``(z, y, x)``): ``brain``,
    ``tissue``, ``core``, ``tmax6``, ``tmax10`` (the published Tmax > 6 s and > 10 s),
    ``tmax_extra`` (a site's other thresholds). Perfusion maps (relative CBF and CBV)
    and ``pwi_tissue`` are on ``pwi_geometry``: the binned DSC grid cropped to the
    brain's bounding box (the AIF voxel indices refer to it too).
    Without perfusion, ``perfusion_available`` is False, the Tmax masks, maps and
    ``metrics`` are None, and the mismatch decisions are None (unknown).
    """

    geometry: Geometry
    adc_um2_s: np.ndarray
    adc_source: str
    adc_units: str
    b_value_s_mm2: float | None
    brain: np.ndarray
    tissue: np.ndarray
    core: np.ndarray
    core_ml: float
    perfusion_available: bool
    tmax6: np.ndarray | None
    tmax10: np.ndarray | None
    metrics: LesionMetrics | None
    decisions: dict[str, bool | None]
    lesion_side: str | None
    pwi_geometry: Geometry | None = None
    maps: RelativePerfusionMaps | None = None
    pwi_tissue: np.ndarray | None = None
    aif: DscAif | None = None
    grid_s: np.ndarray | None = None
    registration: RigidResult | None = None
    frame_motion_mm: np.ndarray | None = None
    flags: list[QualityFlag] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    tmax_extra: tuple[TmaxRegion, ...] = ()

    @property
    def quality_ok(self) -> bool:
        """True when no flag is a warning or critical."""
        return quality_ok(self.flags)


@dataclass(frozen=True)
class _Diffusion:
    """Diffusion results on the brain's bounding box (``geometry``) of the DWI grid."""

    full_geometry: Geometry
    full_shape: tuple[int, int, int]
    box: tuple[slice, slice]  # rows, columns of the box in the full grid
    geometry: Geometry
    reference: np.ndarray  # image with bright CSF, for registration
    adc: np.ndarray
    source: str
    units: str
    b_value: float | None
    brain: np.ndarray
    tissue: np.ndarray
    core: np.ndarray


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
    diffusion = _diffusion(acq, settings, flags)
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
            **_diffusion_fields(diffusion),
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

    perf = _perfusion(acq.pwi, diffusion, settings, flags, clock)

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
        **_diffusion_fields(diffusion),
        core_ml=metrics.core_ml,
        perfusion_available=True,
        tmax6=_uncrop(tmax6, diffusion, False),
        tmax10=_uncrop(tmax10, diffusion, False),
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
            TmaxRegion(r.threshold_s, _uncrop(r.mask, diffusion, False), r.volume_ml) for r in extra
        ),
    )


def _diffusion_fields(diffusion: _Diffusion) -> dict[str, Any]:
    """The ``MriAnalysis`` fields that come from the diffusion part, on the full DWI grid."""
    return {
        "geometry": diffusion.full_geometry,
        "adc_um2_s": _uncrop(diffusion.adc, diffusion, np.nan),
        "adc_source": diffusion.source,
        "adc_units": diffusion.units,
        "b_value_s_mm2": diffusion.b_value,
        "brain": _uncrop(diffusion.brain, diffusion, False),
        "tissue": _uncrop(diffusion.tissue, diffusion, False),
        "core": _uncrop(diffusion.core, diffusion, False),
    }


def _uncrop(values: np.ndarray, diffusion: _Diffusion, fill: float | bool) -> np.ndarray:
    """A ``(z, y, x)`` array of the diffusion box placed back on the full DWI grid."""
    full = np.full(diffusion.full_shape, fill, dtype=values.dtype)
    full[:, diffusion.box[0], diffusion.box[1]] = values
    return full


def _side(mask: np.ndarray, hemis: Hemispheres, vv: float) -> str | None:
    n_left = np.count_nonzero(mask & (hemis.side == LEFT))
    n_right = np.count_nonzero(mask & (hemis.side == RIGHT))
    if max(n_left, n_right) * vv < 1.0:
        return None
    return side_name(LEFT if n_left >= n_right else RIGHT)


def _diffusion(acq: MriAcquisition, settings: MriSettings, flags: list[QualityFlag]) -> _Diffusion:
    computed = None
    b_high = None
    trace = None  # high-b trace DWI on the diffusion box, for the hyperintensity test
    dwi = acq.dwi
    bs = sorted(dwi.by_b_value) if dwi is not None else []
    has_b0 = bool(bs) and bs[0] <= 50.0 and bs[-1] >= 300.0
    if dwi is not None and not has_b0 and acq.adc is None:
        raise AnalysisError(
            f"DWI b-values {', '.join(f'{b:g}' for b in bs)} s/mm²: a b0 (<= 50) and a "
            "high b-value (~1000) are needed for the ADC"
        )
    if dwi is not None and has_b0:
        b_high = bs[-1]
        full_geometry = dwi.geometry
        b0 = dwi.by_b_value[bs[0]]
        full_brain = mr_brain_mask(b0, full_geometry.voxel_size_mm[1])
        if not full_brain.any():
            raise AnalysisError("no brain found in the diffusion images")
        # Everything after the mask works on the brain's bounding box: half the grid.
        box = _brain_box(full_brain)
        geometry = _cropped(full_geometry, box[0].start, box[1].start)
        brain = full_brain[:, box[0], box[1]]
        reference = b0[:, box[0], box[1]]
        trace = dwi.by_b_value[b_high][:, box[0], box[1]]
        computed = adc_from_dwi(reference, trace, b_high - bs[0], brain)
    else:
        assert acq.adc is not None
        full_geometry = acq.adc.geometry
        adc_image = np.asarray(acq.adc.values, dtype=np.float32)
        full_brain = mr_brain_mask(adc_image, full_geometry.voxel_size_mm[1], threshold=0.0)
        if not full_brain.any():
            raise AnalysisError("no brain found in the diffusion images")
        box = _brain_box(full_brain)
        geometry = _cropped(full_geometry, box[0].start, box[1].start)
        brain = full_brain[:, box[0], box[1]]
        reference = adc_image[:, box[0], box[1]]
        if dwi is not None and bs and bs[-1] >= 300.0:
            # A trace-weighted series without its b0 (Siemens XA writes them apart): no
            # ADC from it, but its signal still tells restricted diffusion from anatomy.
            b_high = bs[-1]
            trace = _on_grid(
                dwi.by_b_value[b_high], dwi.geometry, full_geometry, full_brain.shape, box
            )
    if b_high is not None:
        low, high = B_VALUE_RANGE_S_MM2
        if not low <= b_high <= high:
            flags.append(
                QualityFlag(
                    "b_value",
                    "warning",
                    f"highest b-value is {b_high:g} s/mm²: the ADC < "
                    f"{settings.adc_core_threshold_um2_s:g} core threshold is validated for "
                    "b = 1000 s/mm²",
                )
            )

    if acq.adc is not None:
        values = _on_grid(acq.adc.values, acq.adc.geometry, full_geometry, full_brain.shape, box)
        try:
            adc, units = scanner_adc_um2_s(values, brain)
        except ValueError as exc:
            if computed is None:
                raise AnalysisError(str(exc)) from exc
            flags.append(QualityFlag("adc_map_rejected", "warning", f"{exc}; ADC computed"))
            adc, units, source = computed, "x10^-6 mm²/s", "computed"
        else:
            source = "scanner"
            if units != "x10^-6 mm²/s":
                flags.append(QualityFlag("adc_units", "info", f"scanner ADC map stored in {units}"))
            if computed is not None:
                _compare_adc(adc, computed, brain, settings, flags)
    else:
        assert computed is not None
        adc, units, source = computed, "x10^-6 mm²/s", "computed"

    found = adc_core(
        adc,
        brain,
        geometry,
        dwi_trace=trace,
        threshold_um2_s=settings.adc_core_threshold_um2_s,
        min_cluster_ml=settings.min_cluster_ml,
        csf_adc_um2_s=settings.csf_adc_um2_s,
    )
    flags.extend(_core_flags(found, trace is not None, geometry.voxel_volume_ml, settings))
    return _Diffusion(
        full_geometry,
        full_brain.shape,
        box,
        geometry,
        reference,
        adc,
        source,
        units,
        b_high,
        brain,
        found.tissue,
        found.core,
    )


def _on_grid(
    values: np.ndarray,
    geometry: Geometry,
    full_geometry: Geometry,
    full_shape: tuple[int, ...],
    box: tuple[slice, slice],
) -> np.ndarray:
    """A ``(z, y, x)`` image of another series on the diffusion box (resampled if needed)."""
    if (
        geometry.affine_lps.shape == (4, 4)
        and np.allclose(geometry.affine_lps, full_geometry.affine_lps, atol=1e-3)
        and values.shape == full_shape
    ):
        return np.asarray(values[:, box[0], box[1]])
    target = _cropped(full_geometry, box[0].start, box[1].start)
    shape = (full_shape[0], box[0].stop - box[0].start, box[1].stop - box[1].start)
    return resample(values, geometry, target, shape, order=1)


def _core_flags(
    found: DiffusionCore, has_trace: bool, voxel_volume_ml: float, settings: MriSettings
) -> list[QualityFlag]:
    flags = []
    symmetric_ml = volume_ml(found.symmetric, voxel_volume_ml)
    if symmetric_ml >= settings.min_cluster_ml:
        flags.append(
            QualityFlag(
                "symmetric_low_adc",
                "warning"
                if symmetric_ml >= settings.quality.symmetric_low_adc_warning_ml
                else "info",
                f"{symmetric_ml:.1f} mL of bilateral, mirror-symmetric ADC < "
                f"{settings.adc_core_threshold_um2_s:g} (deep white matter of a DTI, or "
                "tissue at the edge of the field of view) not counted as core: check the ADC "
                "map",
            )
        )
    if found.not_bright_ml >= settings.min_cluster_ml:
        flags.append(
            QualityFlag(
                "low_adc_without_dwi_signal",
                "info",
                f"{found.not_bright_ml:.1f} mL with ADC < {settings.adc_core_threshold_um2_s:g} "
                "but a DWI no brighter than the contralateral tissue: not restricted diffusion, "
                "not counted as core",
            )
        )
    if not has_trace:
        flags.append(
            QualityFlag(
                "core_without_dwi",
                "info",
                "no trace-weighted DWI: the core is defined by the ADC map alone",
            )
        )
    return flags


def _compare_adc(
    scanner: np.ndarray,
    computed: np.ndarray,
    brain: np.ndarray,
    settings: MriSettings,
    flags: list[QualityFlag],
) -> None:
    both = brain & (scanner > 0) & (scanner < settings.csf_adc_um2_s)
    both &= np.isfinite(computed)
    if np.count_nonzero(both) < 100:
        return
    rel = float(np.median(np.abs(scanner[both] - computed[both]) / np.maximum(computed[both], 1)))
    if rel > settings.quality.max_adc_disagreement:
        flags.append(
            QualityFlag(
                "adc_disagreement",
                "warning",
                f"scanner ADC map differs from the ADC computed from the b-values by "
                f"{100 * rel:.0f} % (median over tissue): check the map's units and b-values",
            )
        )


@dataclass(frozen=True)
class _Perfusion:
    geometry: Geometry
    maps: PerfusionMaps
    tissue: np.ndarray
    tmax_filled: np.ndarray  # Tmax (s) also just outside the tissue, 0 outside the brain
    aif: DscAif
    grid_s: np.ndarray
    registration: RigidResult
    frame_motion_mm: np.ndarray


def _perfusion(
    pwi: PerfusionSeries,
    diffusion: _Diffusion,
    settings: MriSettings,
    flags: list[QualityFlag],
    clock: StageClock,
) -> _Perfusion:
    if pwi.echo_time_s is None or not pwi.echo_time_s > 0:
        raise AnalysisError("DSC series without EchoTime: delta-R2* cannot be computed")
    _, dy, _ = pwi.geometry.voxel_size_mm
    factor = max(1, round(settings.analysis_pixel_mm / dy))
    # Bin once, before anything else: every later step runs on the binned grid.
    signal = bin_inplane(pwi.signal, factor)
    geometry = pwi.geometry.downsampled(factor)
    dz, pixel_mm, dx = geometry.voxel_size_mm
    step = settings.temporal_step_s
    # Frames 2-5 are in the T1 steady state and before the bolus on any usable run.
    early = signal[min(2, signal.shape[0] - 1) : min(6, signal.shape[0])].mean(axis=0)
    brain = mr_brain_mask(early, pixel_mm)
    if not brain.any():
        raise AnalysisError("no brain found in the DSC perfusion images")
    # Motion is a property of the acquired frames, not of the interpolated grid.
    motion = frame_displacement_mm(signal, brain, (dz, pixel_mm, dx))
    # Everything after this looks at the brain only: its bounding box is half the grid.
    rows, cols = _brain_box(brain)
    signal, brain = signal[..., rows, cols], brain[:, rows, cols]
    geometry = _cropped(geometry, rows.start, cols.start)
    uniform, grid_s = resample_uniform(signal, pwi.times_s, step)
    del signal
    clock.lap("dsc_resample")

    dr2 = to_delta_r2(uniform, brain, pwi.echo_time_s)
    del uniform
    n_baseline = dr2.baseline.stop - dr2.baseline.start
    if n_baseline < settings.quality.min_baseline_frames:
        flags.append(
            QualityFlag(
                "short_baseline",
                "warning",
                f"only {n_baseline} pre-contrast frames before the bolus: the baseline "
                "signal is uncertain",
            )
        )
    clock.lap("dsc_delta_r2")

    registration = _register(diffusion, dr2.s0, geometry, settings)
    if registration.applied:
        tx, ty, tz = registration.translation_mm
        flags.append(
            QualityFlag(
                "series_motion",
                "info",
                f"the head moved {registration.displacement_mm:.1f} mm between the diffusion "
                f"and perfusion series (shift {tx:.1f}, {ty:.1f}, {tz:.1f} mm LPS); "
                "corrected by rigid registration",
            )
        )
    # Diffusion tissue (CSF excluded by its ADC) brought into the perfusion grid.
    inverse = np.linalg.inv(registration.rigid_lps)
    tissue_from_dwi = resample_mask(
        diffusion.tissue, diffusion.geometry, geometry, brain.shape, rigid_lps=inverse
    )
    peak = dr2.delta_r2_s.max(axis=0)
    candidate = tissue_from_dwi & brain
    typical = float(np.median(peak[candidate])) if candidate.any() else 0.0
    # Large vessels: enhancement far above tissue (their own curves are not tissue).
    vessels = ndimage.binary_dilation(brain & (peak > 4.0 * max(typical, 1e-3)))
    tissue = candidate & ~vessels
    if np.count_nonzero(tissue) < 50:
        raise AnalysisError(
            "the perfusion slab does not overlap the brain tissue of the diffusion series"
        )
    clock.lap("coregistration")

    sigma_px = settings.smoothing_sigma_mm / pixel_mm
    smoothed = smooth_within_mask(dr2.delta_r2_s, tissue, (sigma_px, sigma_px))
    hemis = find_hemispheres(brain, geometry)
    affected = preliminary_affected_side(smoothed, tissue, hemis, step)
    vv = geometry.voxel_volume_ml
    aif = None
    aif_side = 0
    if affected != 0:
        aif = select_dsc_aif(dr2, dr2.delta_r2_s, brain & (hemis.side == -affected), step, vv)
        aif_side = -affected
    if aif is None:
        aif = select_dsc_aif(dr2, dr2.delta_r2_s, brain, step, vv)
        aif_side = 0
    if aif is None:
        raise AnalysisError(
            "no arterial input found: no early, strongly enhancing, unsaturated vessel"
        )
    clock.lap("aif")

    maps = compute_maps(
        smoothed,
        aif.curve.curve.astype(np.float32),
        step,
        method="osvd",
        oscillation_index=settings.oscillation_index,
        mask=tissue,
        correct_tmax_lag=settings.correct_tmax_bias,
    )
    clock.lap("deconvolution")
    tmax_filled = _fill_outside(maps.tmax_s, tissue, brain, geometry)
    flags.extend(_dsc_flags(dr2, smoothed, tissue, aif, aif_side, affected, motion, settings))
    clock.lap("tmax")
    return _Perfusion(geometry, maps, tissue, tmax_filled, aif, grid_s, registration, motion)


def _brain_box(brain: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """Rows and columns of the brain's in-plane bounding box, ``margin`` voxels wider."""
    ny, nx = brain.shape[1:]
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    xs = np.flatnonzero(brain.any(axis=(0, 1)))
    return (
        slice(max(0, int(ys[0]) - margin), min(ny, int(ys[-1]) + margin + 1)),
        slice(max(0, int(xs[0]) - margin), min(nx, int(xs[-1]) + margin + 1)),
    )


def _cropped(geometry: Geometry, row0: int, col0: int) -> Geometry:
    """Geometry of the grid that starts at row ``row0`` and column ``col0`` of ``geometry``."""
    affine = geometry.affine_lps.copy()
    affine[:3, 3] += affine[:3, 0] * col0 + affine[:3, 1] * row0
    return Geometry(affine)


def _fill_outside(
    tmax_s: np.ndarray, tissue: np.ndarray, brain: np.ndarray, geometry: Geometry
) -> np.ndarray:
    """Tmax with the brain's non-tissue voxels (vessels, CSF, rim) given the nearest tissue
    value, and 0 outside the brain.

    The DWI tissue decides where the lesion may be; near the perfusion grid's tissue
    border, interpolation must not mix in the NaN (or 0) of excluded voxels, which would
    shrink the lesion by half a perfusion voxel all around.
    """
    valid = tissue & np.isfinite(tmax_s)
    if not valid.any():
        return np.zeros(tmax_s.shape, dtype=np.float32)
    _, nearest = ndimage.distance_transform_edt(
        ~valid, sampling=geometry.voxel_size_mm, return_indices=True
    )
    filled = tmax_s[tuple(nearest)]
    return np.asarray(np.where(brain, filled, 0.0), dtype=np.float32)


def _register(
    diffusion: _Diffusion, s0: np.ndarray, geometry: Geometry, settings: MriSettings
) -> RigidResult:
    if not settings.register:
        return RigidResult(np.eye(4), False, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, 0.0, 0.0)
    return register_rigid(diffusion.reference, diffusion.geometry, diffusion.brain, s0, geometry)


def _dsc_flags(
    dr2: DeltaR2,
    smoothed: np.ndarray,
    tissue: np.ndarray,
    aif: DscAif,
    aif_side: int,
    affected: int,
    motion_mm: np.ndarray,
    settings: MriSettings,
) -> list[QualityFlag]:
    limits = settings.quality
    flags: list[QualityFlag] = []
    worst = float(np.max(motion_mm))
    if worst > limits.max_frame_motion_mm:
        n_moved = int(np.count_nonzero(motion_mm > limits.max_frame_motion_mm))
        flags.append(
            QualityFlag(
                "motion",
                "warning",
                f"head motion during the perfusion scan: {n_moved} of {motion_mm.size} frames "
                f"displaced by up to {worst:.1f} mm (not corrected)",
            )
        )
    tissue_curve = smoothed[:, tissue].mean(axis=1)
    tissue_peak = float(tissue_curve.max())
    problems = []
    curve = aif.curve
    if tissue_peak > 0 and curve.peak < limits.min_aif_tissue_peak_ratio * tissue_peak:
        problems.append(
            f"arterial delta-R2* peak is only {curve.peak / tissue_peak:.1f} x the tissue peak"
        )
    if curve.fwhm_s > limits.max_aif_fwhm_s:
        problems.append(f"arterial bolus is wide (FWHM {curve.fwhm_s:.0f} s)")
    if affected != 0 and aif_side == 0:
        problems.append("no artery found in the unaffected hemisphere")
    if problems:
        flags.append(QualityFlag("poor_aif", "warning", "; ".join(problems)))
    if aif.n_saturated_rejected:
        flags.append(
            QualityFlag(
                "aif_saturation",
                "info",
                f"{aif.n_saturated_rejected} arterial voxels with signal at the noise floor "
                "(saturated) were not used for the arterial input",
            )
        )
    tail = tissue_curve[-1] / tissue_peak if tissue_peak > 0 else 1.0
    if curve.tail_fraction > limits.max_aif_tail_fraction or tail > limits.max_tissue_tail_fraction:
        flags.append(
            QualityFlag(
                "bolus_truncated",
                "critical",
                f"scan too short: tissue delta-R2* still at {100 * tail:.0f} % of its peak at "
                "the last frame; Tmax is underestimated",
            )
        )
    base = dr2.baseline
    if base.stop - base.start >= 2 and tissue.any():
        noise = float(np.median(dr2.delta_r2_s[base][:, tissue].std(axis=0, ddof=1)))
        snr = tissue_peak / max(noise, 1e-6)
        if snr < limits.min_dsc_snr:
            flags.append(
                QualityFlag(
                    "low_snr",
                    "warning",
                    f"low signal-to-noise: tissue delta-R2* peak {tissue_peak:.1f}/s against "
                    f"{noise:.1f}/s noise",
                )
            )
    return flags
