"""Every tunable of the analysis in one frozen object, with the published defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from strokeflow.analysis.quality import QualityLimits


@dataclass(frozen=True)
class CtpSettings:
    """Parameters of the CT perfusion analysis.

    Attributes
    ----------
    core_rcbf_threshold : float
        Ischaemic core: relative CBF below this fraction of normal contralateral tissue.
    core_requires_tmax_s : float
        Core voxels must also be hypoperfused (Tmax above this); 0 disables the check.
    tmax_thresholds_s : tuple of float
        Hypoperfusion thresholds (s) reported as volumes. Tmax > 6 s and > 10 s, on
        which the published decision rules are defined, are always measured; any other
        threshold adds a volume named by its value (``CtpAnalysis.tmax_extra``).
    analysis_pixel_mm : float
        Target in-plane pixel size after binning (noise reduction and speed).
    analysis_slab_mm : float
        Target thickness of the analysis slabs that thin slices are averaged into.
    thin_slice_below_mm : float
        Input slices thinner than this are combined into ``analysis_slab_mm`` slabs
        (whole groups of adjacent slices), before any noise filtering.
    smoothing_sigma_mm : float
        Spatial sigma of the time-profile bilateral filter (edge-preserving smoothing)
        for a study with a sharp arterial input and clear tissue curves.
    smoothing_sigma_wide_mm : float
        The filter's sigma for a study whose arterial input (found on the unfiltered
        curves) is wide or whose tissue curves are noisy; between, the sigma moves
        linearly with the arterial FWHM across ``smoothing_fwhm_range_s`` and with the
        tissue contrast-to-noise ratio across ``smoothing_cnr_range``, the wider kept
        (``analysis.filter_width``). Equal to ``smoothing_sigma_mm``: one width for all.
        Measured in docs/deconvolution.md, "A filter width that follows the study".
    smoothing_fwhm_range_s : tuple of float
        ``(sharp, wide)`` arterial FWHM (s) of the narrow and of the wide width.
    smoothing_cnr_range : tuple of float
        ``(noisy, clear)`` peak of the median tissue enhancement over its pre-bolus noise
        SD, of the wide and of the narrow width.
    smoothing_iterations : int
        Passes of that filter.
    smoothing_strength : float
        Profile-similarity scale of that filter: smaller keeps lesion borders sharper.
    flow_filter_sigma_mm : float
        Spatial sigma of the light bilateral filter whose curves the CBF (and so the core)
        is read from in a study with a sharp arterial input (``docs/deconvolution.md``, "The
        flow read from lightly filtered curves"); Tmax and the other maps keep the study's
        filter. The share of the CBF taken from it falls from 1 at an arterial FWHM of
        ``smoothing_fwhm_range_s[0]`` to 0 at ``[1]``.
    flow_filter_iterations : int
        Passes of that light filter; 0 reads the CBF from the study's filter everywhere.
    flow_align_dead_zone_s : float
        Where the light filter's share is below 1 (a wide arterial input), the rest of the
        CBF is read from curves filtered at the study's width after each delayed curve was
        shifted to the normal tissue's arrival (and back): the filter then mixes neighbours
        reached at other times without widening the curves (``analysis.delay_align``;
        docs/deconvolution.md, "The flow of delayed tissue read from delay-aligned
        curves"). Delays within this many seconds of the tissue's median Tmax are not
        shifted. Negative: no alignment, the study's filter.
    flow_align_sigma_mm : float
        In-plane sigma of the smoothing of the study's Tmax that sets the shifts.
    flow_align_acquired_oscillation : bool
        The delay-aligned curves' oSVD takes its oscillation index on residue samples
        spaced by the acquisition's frame interval rather than by the grid step the curves
        were interpolated to, in proportion to the aligned flow's share: a stride of
        ``1 + share * (interval / temporal_step_s - 1)`` grid samples
        (``filter_width.aligned_oscillation_stride``; docs/deconvolution.md, "The
        oscillation index of the delay-aligned flow at the acquired frame interval"). A
        scan too short for the tissue (the ``tissue_truncated`` flag) keeps the grid's
        index. False: the grid's own index everywhere.
    temporal_step_s : float
        Uniform time step the curves are resampled to before deconvolution.
    temporal_sigma_s : float
        Sigma of the Gaussian applied along time to the tissue curves AND the arterial
        input before deconvolution (0 disables it). Filtering both with one kernel keeps
        the convolution model exact, C_t * g = (C_a * g) conv R, while the noise that makes
        the oSVD choose heavy regularisation is damped.
    oscillation_index : float
        Oscillation-index target of the oSVD (Wu 2003): the least regularised solution
        whose residue function oscillates less than this is kept, voxel by voxel.
    correct_cbf_bias : bool
        Divide CBF by the oSVD regularisation peak ratio (see ``analysis.maps``).
    two_delay_tmax : bool
        Tmax of the dominant of two delays where a voxel's curve mixes two, and the Tmax
        regions extended into the vessel and skull rims they surround (the two belong
        together; the core keeps the single-delay Tmax). Measured in docs/deconvolution.md,
        "A cheaper two-delay Tmax": Tmax > 10 s within tolerance 45/54 -> 51/54 and
        43/52 -> 51/52 on two seed bases, core unchanged.
    unpaired_tmax : {"mean", "peak", "onset"}
        With ``two_delay_tmax``, Tmax of a searched voxel where no pair is accepted:
        "peak" the lag-corrected peak of the oSVD residue (late by the residue's shape,
        ~1 s at the 5 s shell), "onset" the single-delay fit's onset (early where
        filtering mixed an earlier neighbour in, and in noisy low-flow tissue), "mean"
        their mean where the peak reads at most 10 s and the peak beyond
        (``compute_maps(unpaired_tmax=..., unpaired_mean_below_s=...)``). Measured in
        docs/deconvolution.md, "The readout of voxels without a pair": Tmax > 6 s within
        tolerance 53 -> 58 and 53 -> 60 of 60 cases on seeds 100+ and 11000+, Tmax > 10 s,
        the core and the decisions unchanged.
    unpaired_onset_sd_s : float
        With ``unpaired_tmax="mean"``: the mean is taken beyond 10 s too where the fitted
        onset is well determined (posterior SD of its delay at most this, s); where it is
        not (noisy, low-flow, severely delayed tissue) the peak stays. 0 disables it.
        0.2 s was chosen of 0.2 / 0.3 / 0.4 / 0.6 on seeds 7000+ (docs/deconvolution.md,
        "A well-determined onset beyond 10 s").
    core_reference_calibration : {"off", "self", "self+noise"}
        "off", "self" or "self+noise": the rCBF reference is taken from the CBF divided by
        the study's self-calibrated gain (``analysis.flow_calibration``; "+noise" with the
        measured pre-bolus noise in the synthetic curves), the voxels' CBF staying as read.
        "off": from the CBF as read (about 0.84 x the true normal flow on the phantoms).
        Default "self+noise", together with ``pair_flow_cap``: alone it uncovers the
        delay-mixed penumbra read low (docs/deconvolution.md, "The flow of voxels that mix
        two delays": both together, core within tolerance 33 -> 41 and 27 -> 36 of 60 on
        two seed bases).
    core_noise_margin_k : float
        Core where ``rCBF + k * sd / reference`` is below ``core_rcbf_threshold``, ``sd``
        the voxel's noise SD of the CBF readout (``analysis.flow_noise``): a noisy
        penumbral voxel read low is not called core. 0 disables the margin (and its map).
        Measured in docs/deconvolution.md, "Where the false core lies": with
        ``core_reference_calibration="self+noise"`` and k = 0.5, core within tolerance
        33 -> 35 and 27 -> 41 of 60 on two seed bases, but the low-dose phantoms' core
        11 -> 8 of 12, so the margin stays off by default.
    pair_flow_cap : float
        Where a voxel's curve is fitted better by two delays than by one (the two-delay
        Tmax's pair), its CBF is multiplied by the pair's total flow over the single-delay
        fit's flow, clipped to [1, this]: a voxel whose slab or filtering mixes penumbral
        zones reached at different times has a lower, spread residue peak and reads as
        core (docs/deconvolution.md, "The flow of voxels that mix two delays"). Values
        <= 1 disable it. Needs ``two_delay_tmax``. 1.5 was chosen of 1.25 / 1.5 / 2.0 on
        seeds 7000+ and confirmed on 100+ and 11000+.
    min_cluster_ml : float
        Connected lesion clusters smaller than this are discarded.
    tmax_vote_px : int
        Side (odd, pixels) of the in-plane majority vote that cleans the Tmax regions
        (Tmax > 6 s, > 10 s and a site's own; ``lesions.clean_mask``); the core keeps a
        3 x 3 vote. A wide vote evens out a noisy Tmax near a threshold, which would
        otherwise add the more voluminous side's noise to the region (docs/deconvolution.md,
        "A wider vote for the Tmax regions").
    max_motion_mm : float
        Frames needing more in-plane correction than this, or that stay misaligned after
        correction, are excluded.
    quality : QualityLimits
        Limits that raise the quality flags (``[analysis.ctp.quality]``).
    """

    core_rcbf_threshold: float = 0.30
    core_requires_tmax_s: float = 6.0
    tmax_thresholds_s: tuple[float, ...] = (6.0, 10.0)
    analysis_pixel_mm: float = 1.8
    analysis_slab_mm: float = 5.0
    thin_slice_below_mm: float = 3.0
    smoothing_sigma_mm: float = 3.5
    smoothing_sigma_wide_mm: float = 4.5
    smoothing_fwhm_range_s: tuple[float, float] = (6.0, 10.0)
    smoothing_cnr_range: tuple[float, float] = (1.0, 1.3)
    smoothing_iterations: int = 3
    smoothing_strength: float = 0.5
    flow_filter_sigma_mm: float = 2.0
    flow_filter_iterations: int = 2
    flow_align_dead_zone_s: float = 2.0
    flow_align_sigma_mm: float = 3.6
    flow_align_acquired_oscillation: bool = True
    temporal_step_s: float = 1.0
    temporal_sigma_s: float = 1.0
    oscillation_index: float = 0.095
    correct_cbf_bias: bool = False
    two_delay_tmax: bool = True
    unpaired_tmax: Literal["peak", "mean", "onset"] = "mean"
    unpaired_onset_sd_s: float = 0.2
    core_reference_calibration: Literal["off", "self", "self+noise"] = "self+noise"
    core_noise_margin_k: float = 0.0
    pair_flow_cap: float = 1.5
    min_cluster_ml: float = 0.5
    tmax_vote_px: int = 5
    max_motion_mm: float = 15.0
    quality: QualityLimits = field(default_factory=QualityLimits)

    def __post_init__(self) -> None:
        if self.core_reference_calibration not in ("off", "self", "self+noise"):
            raise ValueError(
                "core_reference_calibration must be 'off', 'self' or 'self+noise'; "
                f"got {self.core_reference_calibration!r}"
            )
        if not self.core_noise_margin_k >= 0:
            raise ValueError(
                f"core_noise_margin_k must be non-negative; got {self.core_noise_margin_k}"
            )
        if not (0 <= self.unpaired_onset_sd_s < float("inf")):
            raise ValueError(
                f"unpaired_onset_sd_s must be a finite delay >= 0; got {self.unpaired_onset_sd_s}"
            )
        if not (0 <= self.pair_flow_cap < float("inf")):
            raise ValueError(
                f"pair_flow_cap must be a finite factor >= 0; got {self.pair_flow_cap}"
            )
        for name in ("smoothing_fwhm_range_s", "smoothing_cnr_range"):
            low, high = getattr(self, name)
            if not (0 <= low <= high < float("inf")):
                raise ValueError(
                    f"{name} must be (low, high) with 0 <= low <= high; got {low, high}"
                )
        if self.tmax_vote_px < 3 or self.tmax_vote_px % 2 == 0:
            raise ValueError(f"tmax_vote_px must be an odd number >= 3; got {self.tmax_vote_px}")
        if self.flow_filter_iterations < 0:
            raise ValueError(
                f"flow_filter_iterations must be >= 0; got {self.flow_filter_iterations}"
            )
        if not self.flow_align_dead_zone_s < float("inf"):
            raise ValueError(
                f"flow_align_dead_zone_s must be finite; got {self.flow_align_dead_zone_s}"
            )
        for name in (
            "smoothing_sigma_mm",
            "smoothing_sigma_wide_mm",
            "flow_filter_sigma_mm",
            "flow_align_sigma_mm",
        ):
            if not (0 < getattr(self, name) < float("inf")):
                raise ValueError(f"{name} must be a finite width > 0 mm; got {getattr(self, name)}")
