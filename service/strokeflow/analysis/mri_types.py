"""The MR stroke analysis' inputs, settings and result (:mod:`strokeflow.analysis.mri`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from strokeflow.analysis.coregister import RigidResult
from strokeflow.analysis.decisions import (
    LesionMetrics,
)
from strokeflow.analysis.diffusion import (
    CORE_ADC_THRESHOLD_UM2_S,
    CSF_ADC_UM2_S,
)
from strokeflow.analysis.dsc import (
    DscAif,
)
from strokeflow.analysis.dsc_maps import RelativePerfusionMaps
from strokeflow.analysis.lesions import TmaxRegion
from strokeflow.analysis.quality import MriQualityLimits, QualityFlag, quality_ok
from strokeflow.analysis.volume import Geometry, PerfusionSeries


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
