"""Perfusion maps (CBF, CBV, MTT, Tmax, TTP) from enhancement curves and an arterial input.

Conventions (the same as ``strokeflow.phantom.physics``), with ``k = F * R`` the
deconvolved, flow-scaled residue in 1/s and ``rho``/``k_H`` from ``constants``:

* CBF [mL/100 g/min] = (k_H / rho) * 6000 * max k
* CBV [mL/100 g]     = (k_H / rho) * 100 * integral C_t / integral C_a (area ratio)
* MTT [s]            = 60 * CBV / CBF (central volume theorem)
* Tmax [s]           = lag of the maximum of k, sub-frame by parabolic interpolation, less
  the regularisation lag (below) and what a scan too short for the voxel's delay adds to
  it (``model_lag``); negative lags (tissue earlier than the arterial input) are clipped
  to 0. Optionally (``fitted_tmax``) the onset of the residue from a
  least-squares fit of a residue model seeded by the oSVD (``analysis.residue_fit``).
* TTP [s]            = time to peak of the temporally smoothed tissue curve, from the
  start of the uniform grid

CBF is the maximum of the oSVD residue within -1..+3 s of the fitted onset: the residue
of tracer held in the tissue is largest at its onset, later only by the regularisation,
and noise maxima further along the low tail of hypoperfused tissue would otherwise
inflate its CBF. Choice by measurement: ``benchmarks/deconvolution_family.py``,
``docs/deconvolution.md``. ``cbf_readout="value"`` (what ``analysis.ctp`` uses) reads the
residue at the lag where the voxel's fitted models peak instead of its maximum, which
noise biases upwards (``analysis.flow_readout``).

Regularisation bias correction (oSVD): truncating the SVD smooths k, which lowers its
maximum (CBF underestimated, most for short transit times: -30 to -50 % at MTT 4 s) and
moves it later (Tmax overestimated by 1-2 s). For this arterial input, every rung of the
threshold ladder deconvolves noise-free exponential residues of known flow and MTT; the
peak ratio and the lag it shows, looked up at the voxel's rung and measured MTT, are
divided out of CBF (``correct_cbf_bias``, off by default) and subtracted from Tmax
(``correct_tmax_lag``). CBV (an area ratio) needs no correction.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d

from strokeflow.analysis.constants import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR
from strokeflow.analysis.deconvolution import (
    SSVD_THRESHOLD,
    Deconvolver,
    aif_matrix,
    osvd_deconvolver,
    ssvd_deconvolver,
)
from strokeflow.analysis.flow_calibration import (
    FlowCalibration,
    calibrate_flow,
    prebolus_noise_sd,
)
from strokeflow.analysis.flow_noise import (
    noise_sd_at_rung,
    pooled_prebolus_variance,
    rung_noise_gain,
)
from strokeflow.analysis.flow_readout import (
    ModelPeakTable,
    model_peak_table,
    model_residues_by_rung,
    residue_at_lag,
    voxel_peak_model,
)
from strokeflow.analysis.residue_fit import (
    FIT_DELAY_HALF_WIDTH_S,
    FIT_DELAY_STEP_S,
    ResidueFitter,
    residue_fitter,
)

_FLOW_SCALE = HEMATOCRIT_FACTOR / BRAIN_DENSITY_G_PER_ML


@dataclass(frozen=True)
class PerfusionMaps:
    """Perfusion maps, each shaped like one frame of the input (NaN outside the mask).

    Attributes
    ----------
    cbf_ml_100g_min : numpy.ndarray
        Cerebral blood flow, float32.
    cbv_ml_100g : numpy.ndarray
        Cerebral blood volume, float32.
    mtt_s : numpy.ndarray
        Mean transit time, float32 (NaN where CBF <= 0).
    tmax_s : numpy.ndarray
        Time to the maximum of the residue function, float32, >= 0.
    ttp_s : numpy.ndarray
        Time to peak of the tissue curve from the start of the grid, float32.
    single_delay_tmax_s : numpy.ndarray or None
        With ``compute_maps(two_delay_tmax=True)``: the single-delay Tmax readout, float32,
        which picks the rCBF reference tissue and the core's Tmax condition
        (``analysis.lesions``), so that the two-delay readout changes the Tmax regions
        only. None: ``tmax_s`` is that readout.
    reference_cbf_ml_100g_min : numpy.ndarray or None
        With ``compute_maps(reference_calibration=...)``: CBF divided by the study's
        self-calibrated gain, float32, from which ``analysis.lesions`` takes only the rCBF
        reference (the voxels stay as read). None: the reference is taken from
        ``cbf_ml_100g_min``.
    cbf_noise_sd_ml_100g_min : numpy.ndarray or None
        With ``compute_maps(cbf_noise_sd=True)``: the per-voxel noise SD of the CBF value
        readout (``analysis.flow_noise``), float32, NaN where it cannot be estimated.
    """

    cbf_ml_100g_min: np.ndarray
    cbv_ml_100g: np.ndarray
    mtt_s: np.ndarray
    tmax_s: np.ndarray
    ttp_s: np.ndarray
    single_delay_tmax_s: np.ndarray | None = None
    reference_cbf_ml_100g_min: np.ndarray | None = None
    cbf_noise_sd_ml_100g_min: np.ndarray | None = None

    @property
    def core_tmax_s(self) -> np.ndarray:
        """Tmax that selects the reference tissue and the core: the single-delay readout."""
        return self.tmax_s if self.single_delay_tmax_s is None else self.single_delay_tmax_s


def compute_maps(
    concentration: np.ndarray,
    aif: np.ndarray,
    step_s: float,
    *,
    method: Literal["osvd", "ssvd"] = "osvd",
    oscillation_index: float = 0.095,
    oscillation_stride: float = 1.0,
    ssvd_threshold: float = SSVD_THRESHOLD,
    mask: np.ndarray | None = None,
    chunk_voxels: int = 8192,
    workers: int = 1,
    ttp_smoothing_s: float = 1.0,
    correct_tmax_lag: bool = True,
    correct_cbf_bias: bool = False,
    residue_window_s: tuple[float, float] | None = (12.0, 3.0),
    residue_fit: bool = True,
    flow_window_s: tuple[float, float] | None = (1.0, 3.0),
    fitted_tmax: bool = False,
    model_lag: Literal["off", "full", "truncation"] = "truncation",
    two_delay_tmax: bool = False,
    two_delay_above_s: float | None = None,
    unpaired_tmax: str = "peak",
    unpaired_mean_below_s: float | None = None,
    unpaired_onset_sd_s: float | None = None,
    pair_flow_cap: float | None = None,
    pair_flow_above_s: float | None = None,
    cbf_readout: Literal["max", "max/model", "value/model", "value"] = "max",
    flow_calibration: Literal["off", "self", "self+noise"] = "off",
    noise_sigma_frames: float = 0.0,
    reference_calibration: Literal["off", "self", "self+noise"] = "off",
    cbf_noise_sd: bool = False,
) -> PerfusionMaps:
    """Deconvolve every voxel and derive the perfusion maps.

    Parameters
    ----------
    concentration : numpy.ndarray
        ``(n, z, y, x)`` (or ``(n, nvox)``) enhancement above baseline on the uniform
        grid, in the units of ``aif`` (e.g. HU).
    aif : numpy.ndarray
        ``(n,)`` arterial enhancement on the same grid.
    step_s : float
        Grid step in seconds.
    method : {"osvd", "ssvd"}
        Block-circulant SVD with oscillation-index thresholds (delay-insensitive), or the
        standard truncated SVD baseline.
    oscillation_index : float
        oSVD target oscillation index (Wu 2003).
    oscillation_stride : float
        oSVD: grid samples between the residue samples the index compares
        (``deconvolution.osvd_deconvolver``; 1 on the grid itself). The self-calibration
        and the model tables read the same deconvolver.
    ssvd_threshold : float
        sSVD relative singular-value threshold.
    mask : numpy.ndarray, optional
        Boolean, shaped like one frame: voxels to analyse. Default: all voxels.
    chunk_voxels : int
        Voxels deconvolved per matrix product; bounds memory (about
        ``40 * n * chunk_voxels`` bytes per worker) and changes the results only by
        float32 rounding (the grouping of voxels into products).
    workers : int
        Threads that deconvolve chunks side by side (numpy releases the GIL in the
        products that take the time). The chunks do not depend on it, so the maps are
        the same, to the bit, for any number of workers.
    ttp_smoothing_s : float
        Sigma of the temporal Gaussian applied to the tissue curves before their peak is
        located (0 disables it).
    correct_tmax_lag : bool
        oSVD only: subtract the regularisation lag from Tmax (module docstring).
    correct_cbf_bias : bool
        oSVD only: divide CBF by the regularisation peak ratio. Off by default: it
        restores high flows but amplifies the noise of low-flow voxels, which are
        heavily regularised, so relative CBF (core) gets worse, not better.
    residue_window_s : (float, float) or None
        The maximum of the residue is searched only between ``before`` seconds before
        and ``after`` seconds after the lag at which the tissue curve peaks relative to
        the arterial curve: the residue of tissue reached by the bolus cannot peak
        after the tissue curve does, and noise maxima elsewhere would otherwise inflate
        the CBF of low-flow tissue and scatter its Tmax. None searches all lags.
    residue_fit : bool
        oSVD only: fit a residue model seeded by the oSVD residue
        (``analysis.residue_fit``) to locate each residue's onset, which anchors the
        CBF search (``flow_window_s``) and, with ``fitted_tmax``, gives Tmax.
    flow_window_s : (float, float) or None
        With ``residue_fit``: CBF is the maximum of the oSVD residue between ``before``
        seconds before and ``after`` seconds after the fitted onset, where the residue of
        a tracer that stays in the tissue peaks (at the onset, moved later by the
        regularisation); maxima of noise further along the tail of a low, long residue
        otherwise inflate the CBF of hypoperfused tissue. None keeps the wider
        ``residue_window_s``.
    fitted_tmax : bool
        With ``residue_fit``: Tmax is the fitted onset instead of the lag of the maximum
        of the oSVD residue less its regularisation lag. Better on unmixed curves (box
        residues, coarse sampling), but off by default: where spatial filtering or
        partial volume mixes an earlier neighbour into a voxel, the single-delay model
        follows the earlier rise (about 1 s early on the project's phantom; see
        ``docs/deconvolution.md``).
    model_lag : {"off", "full", "truncation"}
        With ``residue_fit`` and ``correct_tmax_lag``, the voxel's best-fitting model
        curves (likelihood-weighted over the fitted delays; sampled and cut by the last
        frame like the data) are deconvolved at the voxel's rung. "truncation" (default)
        also subtracts the lag their delay adds to the same model starting at 0 s: the
        scan's end cutting a delayed residue moves its regularised peak later (1-2 s for
        tissue at 9-11 s in a 35 s scan), which the zero-delay exponential calibration
        cannot know; for a scan that holds the whole first pass it is ~0. "full" replaces
        the exponential lag by the model's own (residue shape included): best on clean
        curves, but early on noisy, spatially filtered tissue (``docs/deconvolution.md``).
        "off": the exponential calibration alone. The peak itself still follows the
        dominant delay of a voxel that mixes delays.
    two_delay_tmax : bool
        With ``residue_fit``: where two delayed model curves explain a voxel clearly better
        than one (``ResidueFitter.fit_models(two_delays=True)``), Tmax is the delay of the
        one holding most of the blood volume; elsewhere the readout above, which is also
        kept as ``PerfusionMaps.single_delay_tmax_s`` (``docs/deconvolution.md``, "Tmax
        of voxels that mix two delays" and "A cheaper two-delay Tmax").
    two_delay_above_s : float or None
        With ``two_delay_tmax``: pairs are searched only in voxels whose search window
        (which a pair's delays cannot leave) reaches past this delay (s) or whose
        single-delay Tmax is above it; elsewhere (most normal tissue, for a threshold of a
        few seconds) the single-delay readout stays and the pair search's cost is saved.
        Tmax above this delay or any later one is the same as with None (every voxel).
    unpaired_tmax : {"peak", "onset", "mean"}
        With ``two_delay_tmax``: Tmax of a searched voxel where no pair is accepted. "peak"
        is the single-delay readout above (lag-corrected peak: late by the residue's
        shape, e.g. ~1 s on gamma-3 residues at 5 s), "onset" the fitted onset (early
        where spatial filtering mixed an earlier neighbour in), "mean" the mean of the
        two. Normal tissue that is not searched, and the core's
        ``single_delay_tmax_s``, keep the single-delay readout (``docs/deconvolution.md``,
        "The readout of voxels without a pair").
    unpaired_mean_below_s : float, optional
        With ``unpaired_tmax="mean"``: the mean only where the peak readout is at most
        this delay; beyond it (severely delayed, low-flow tissue, whose noisy onset reads
        early) the peak stays. None: everywhere.
    unpaired_onset_sd_s : float, optional
        With ``unpaired_mean_below_s``: the mean also beyond that delay where the fitted
        onset is well determined, its posterior SD over the fit's delays (the likelihood
        weights) at most this many seconds. None: only below ``unpaired_mean_below_s``.
    pair_flow_cap : float, optional
        With ``two_delay_tmax``: where a searched voxel's pair is accepted, CBF is
        multiplied by the pair's total flow over the single-delay fit's flow (a curve
        spread over two delays has a lower residue peak and a single model of stretched
        transit time; the pair does not), at least 1 and at most this factor. None: off.
    pair_flow_above_s : float, optional
        With ``pair_flow_cap``: only in voxels that the pair search's gate admits for this
        delay (s) rather than ``two_delay_above_s``, so that site Tmax thresholds, which
        widen the search, leave the CBF map alone. None: ``two_delay_above_s``.
    cbf_readout : {"max", "max/model", "value/model", "value"}
        With ``residue_fit`` and ``flow_window_s``: "max" is the maximum of the oSVD
        residue near the fitted onset; "max/model" divides it by the regularised peak
        ratio of the voxel's fitted models at its rung (``analysis.flow_readout``);
        "value" reads the residue at the lag where those models peak instead of its
        maximum (not raised by noise); "value/model" does both.
    flow_calibration : {"off", "self", "self+noise"}
        "self": CBF is divided by the gain this very readout shows, at the voxel's
        measured MTT, on tissue curves synthesised from this arterial input for a grid
        of transit times and residue shapes (``analysis.flow_calibration``);
        "self+noise" adds noise of the level measured on the tissue's pre-bolus frames
        to those curves, so the gain also holds the readout's noise bias.
    noise_sigma_frames : float
        Sigma (frames) of the temporal Gaussian the curves went through, for the noise
        of "self+noise" (its correlation and the pre-bolus estimate of its level), and of
        ``cbf_noise_sd``.
    reference_calibration : {"off", "self", "self+noise"}
        As ``flow_calibration``, but the calibrated CBF is returned apart
        (``PerfusionMaps.reference_cbf_ml_100g_min``) and ``cbf_ml_100g_min`` is left as
        read: the rCBF reference is taken from the calibrated map, the voxels are not
        divided by a gain looked up at their own noisy MTT (``docs/deconvolution.md``).
    cbf_noise_sd : bool
        oSVD only: also return the per-voxel noise SD of the CBF readout
        (``PerfusionMaps.cbf_noise_sd_ml_100g_min``, ``analysis.flow_noise``): the
        pre-bolus variance pooled over 3 x 3 in-plane tissue, propagated through the
        voxel's rung. Exact for the "value" readout (the residue at one lag).

    Returns
    -------
    PerfusionMaps
        float32 maps shaped like one frame; NaN outside the mask and where the curve is
        not finite.

    Raises
    ------
    ValueError
        On inconsistent shapes, a non-positive step or chunk size, a negative flow window,
        or an arterial input without enhancement.
    """
    conc = np.asarray(concentration)
    if conc.ndim not in (2, 4):
        raise ValueError(f"concentration must be (t, z, y, x) or (t, nvox); got shape {conc.shape}")
    n = conc.shape[0]
    frame_shape = conc.shape[1:]
    a = np.asarray(aif, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"aif must have one sample per frame, shape ({n},); got {a.shape}")
    if chunk_voxels < 1:
        raise ValueError(f"chunk_voxels must be at least 1; got {chunk_voxels}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    if not step_s > 0:
        raise ValueError(f"step_s must be positive; got {step_s}")
    if model_lag not in ("off", "full", "truncation"):
        raise ValueError(f"model_lag must be 'off', 'full' or 'truncation'; got {model_lag!r}")
    if cbf_readout not in ("max", "max/model", "value/model", "value"):
        raise ValueError(
            f"cbf_readout must be 'max', 'max/model', 'value' or 'value/model'; got {cbf_readout!r}"
        )
    if flow_calibration not in ("off", "self", "self+noise"):
        raise ValueError(
            f"flow_calibration must be 'off', 'self' or 'self+noise'; got {flow_calibration!r}"
        )
    if unpaired_tmax not in ("peak", "onset", "mean"):
        raise ValueError(f"unpaired_tmax must be 'peak', 'onset' or 'mean'; got {unpaired_tmax!r}")
    if reference_calibration not in ("off", "self", "self+noise"):
        raise ValueError(
            "reference_calibration must be 'off', 'self' or 'self+noise'; "
            f"got {reference_calibration!r}"
        )
    if cbf_noise_sd and method != "osvd":
        raise ValueError("cbf_noise_sd needs method='osvd' (the noise is read per rung)")
    if flow_window_s is not None and not min(flow_window_s) >= 0:
        raise ValueError(f"flow_window_s must be two non-negative seconds; got {flow_window_s}")

    flat = conc.reshape(n, -1)
    if mask is None:
        valid = np.ones(flat.shape[1], dtype=bool)
    else:
        m = np.asarray(mask)
        if m.shape != frame_shape:
            raise ValueError(f"mask must be shaped like one frame {frame_shape}; got {m.shape}")
        valid = m.reshape(-1).astype(bool)
    voxels = np.flatnonzero(valid)

    aif_area = _trapezoid_area(a[:, None])[0]
    if not aif_area > 0:
        raise ValueError(
            f"arterial input has no positive area ({aif_area:.3g}); check the arterial "
            "voxel selection and the baseline subtraction"
        )

    if method == "osvd":
        dec = osvd_deconvolver(
            a, step_s, oscillation_index=oscillation_index, oscillation_stride=oscillation_stride
        )
    elif method == "ssvd":
        dec = ssvd_deconvolver(a, step_s, threshold=ssvd_threshold)
    else:
        raise ValueError(f"method must be 'osvd' or 'ssvd'; got {method!r}")

    peak_window = None
    if residue_window_s is not None:
        smooth_aif = a
        if ttp_smoothing_s > 0:
            smooth_aif = gaussian_filter1d(a, ttp_smoothing_s / step_s, mode="nearest")
        aif_ttp_s = float(np.argmax(smooth_aif)) * step_s
        peak_window = (aif_ttp_s, residue_window_s[0], residue_window_s[1])
    calibration = (
        _bias_calibration(dec, a, step_s)
        if (method == "osvd" and (correct_tmax_lag or correct_cbf_bias))
        else None
    )
    fitter = residue_fitter(a, step_s) if (method == "osvd" and residue_fit) else None
    model_lags = (
        _model_lag_table(dec, fitter, step_s, relative=model_lag == "truncation")
        if (fitter is not None and correct_tmax_lag and model_lag != "off" and not fitted_tmax)
        else None
    )
    peak_table = (
        model_peak_table(dec, fitter, step_s, flow_window_s)
        if (fitter is not None and flow_window_s is not None and cbf_readout != "max")
        else None
    )

    def chunk_maps(curves: np.ndarray) -> dict[str, np.ndarray]:
        return _chunk_maps(
            curves,
            dec,
            aif_area,
            step_s,
            ttp_smoothing_s,
            calibration,
            peak_window,
            correct_tmax_lag,
            correct_cbf_bias,
            fitter,
            flow_window_s,
            fitted_tmax,
            model_lags,
            model_lag == "truncation",
            two_delay_tmax,
            peak_table,
            cbf_readout,
            two_delay_above_s,
            unpaired_tmax,
            unpaired_mean_below_s,
            unpaired_onset_sd_s,
            pair_flow_cap,
            pair_flow_above_s,
        )

    def self_calibration(mode: str) -> FlowCalibration:
        noise_sd = 0.0
        if mode == "self+noise":
            # A few thousand voxels give the mean variance to a few per cent.
            sample = voxels[:: max(1, voxels.size // 20000)]
            noise_sd = prebolus_noise_sd(np.take(flat, sample, axis=1), a, noise_sigma_frames)

        def measure(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = chunk_maps(curves)
            return m["cbf"], m["cbv"]

        return calibrate_flow(
            a,
            step_s,
            measure,
            _FLOW_SCALE * 6000.0,
            noise_sd=noise_sd,
            noise_sigma_frames=noise_sigma_frames,
        )

    gain = self_calibration(flow_calibration) if flow_calibration != "off" else None
    ref_gain = None
    if reference_calibration == flow_calibration:
        ref_gain = gain
    elif reference_calibration != "off":
        ref_gain = self_calibration(reference_calibration)
    noise_var = noise_gain = None
    if cbf_noise_sd:
        tissue = valid.reshape(frame_shape)
        noise_var = pooled_prebolus_variance(conc, a, tissue, noise_sigma_frames).reshape(-1)
        noise_gain = rung_noise_gain(dec, noise_sigma_frames)
    nvox_total = flat.shape[1]
    names = ("cbf", "cbv", "mtt", "tmax", "ttp") + (("single_tmax",) if two_delay_tmax else ())
    names += ("ref_cbf",) if ref_gain is not None else ()
    names += ("cbf_sd",) if noise_gain is not None else ()
    outputs = {name: np.full(nvox_total, np.nan, dtype=np.float32) for name in names}

    def one_chunk(start: int) -> None:
        idx = voxels[start : start + chunk_voxels]
        curves = np.take(flat, idx, axis=1).astype(np.float32, copy=False)
        finite = np.all(np.isfinite(curves), axis=0)
        if not finite.all():
            idx = idx[finite]
            curves = curves[:, finite]
        if idx.size == 0:
            return
        chunk = chunk_maps(curves)
        rung = chunk.pop("rung")
        if ref_gain is not None:
            # Before ``gain``: a study calibrated both ways reads its reference from the
            # same calibrated map, not from a doubly divided one.
            chunk["ref_cbf"] = ref_gain.corrected_cbf(chunk["cbf"], chunk["cbv"])
        if noise_var is not None and noise_gain is not None:
            chunk["cbf_sd"] = noise_sd_at_rung(noise_var[idx], noise_gain, rung)
        if gain is not None:
            chunk["cbf"] = gain.corrected_cbf(chunk["cbf"], chunk["cbv"])
            chunk["mtt"] = _mtt_s(chunk["cbf"], chunk["cbv"])
        # Chunks write disjoint voxels of the outputs.
        for name, values in chunk.items():
            outputs[name][idx] = values

    starts = range(0, voxels.size, chunk_voxels)
    if workers == 1 or len(starts) < 2:
        for start in starts:
            one_chunk(start)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
            list(pool.map(one_chunk, starts))

    def shaped(name: str) -> np.ndarray:
        return outputs[name].reshape(frame_shape)

    return PerfusionMaps(
        cbf_ml_100g_min=shaped("cbf"),
        cbv_ml_100g=shaped("cbv"),
        mtt_s=shaped("mtt"),
        tmax_s=shaped("tmax"),
        ttp_s=shaped("ttp"),
        single_delay_tmax_s=shaped("single_tmax") if two_delay_tmax else None,
        reference_cbf_ml_100g_min=shaped("ref_cbf") if ref_gain is not None else None,
        cbf_noise_sd_ml_100g_min=shaped("cbf_sd") if noise_gain is not None else None,
    )


def _chunk_maps(
    curves: np.ndarray,
    dec: Deconvolver,
    aif_area: float,
    step_s: float,
    ttp_smoothing_s: float,
    calibration: _BiasCalibration | None,
    peak_window: tuple[float, float, float] | None,
    correct_tmax_lag: bool,
    correct_cbf_bias: bool,
    fitter: ResidueFitter | None = None,
    flow_window_s: tuple[float, float] | None = None,
    fitted_tmax: bool = False,
    model_lags: np.ndarray | None = None,
    model_lags_relative: bool = False,
    two_delay_tmax: bool = False,
    peak_table: ModelPeakTable | None = None,
    cbf_readout: str = "max",
    two_delay_above_s: float | None = None,
    unpaired_tmax: str = "peak",
    unpaired_mean_below_s: float | None = None,
    unpaired_onset_sd_s: float | None = None,
    pair_flow_cap: float | None = None,
    pair_flow_above_s: float | None = None,
) -> dict[str, np.ndarray]:
    """Maps of one ``(n, nvox)`` chunk of finite curves."""
    k, rung = dec.residues(curves)
    k_all_lags = k
    smooth = curves
    if ttp_smoothing_s > 0:
        smooth = gaussian_filter1d(curves, ttp_smoothing_s / step_s, axis=0, mode="nearest")
    ttp_idx, ttp_offset = _peak_with_offset(smooth, wrap=False)
    ttp = (ttp_idx + ttp_offset) * step_s
    if peak_window is not None:
        k = _restrict_to_window(k, ttp, peak_window, dec, step_s)
    peak_idx, offset = _peak_with_offset(k, wrap=dec.circulant)
    k_max = np.take_along_axis(k, peak_idx[None, :], axis=0)[0]
    lag = peak_idx + offset
    if dec.circulant:
        # Samples N..2N-1 of a circulant residue are negative lags (wrap-around).
        lag = np.where(peak_idx >= dec.n_frames, lag - dec.n_lags, lag)
    tmax_raw = lag * step_s
    peak_lag_s = tmax_raw
    single_tmax: np.ndarray | None = None

    cbf = _FLOW_SCALE * 6000.0 * np.clip(k_max, 0.0, None)
    cbv = _FLOW_SCALE * 100.0 * _trapezoid_area(curves) / aif_area
    mtt = _mtt_s(cbf, cbv)
    if calibration is not None and correct_tmax_lag:
        tmax_raw = tmax_raw - calibration.lookup(rung, mtt)[1]
    if fitter is not None and dec.circulant:
        # Seed: where the residue first rises to half its peak. The peak itself can lie
        # anywhere on the plateau of a box-like residue; its rise marks the delay.
        half_rise_s = _half_rise_lag(k, peak_idx, dec) * step_s
        fit = fitter.fit_models(curves, half_rise_s)
        flow, delay_s = fit.flow_per_s, fit.delay_s
        # Only the onset is taken: the fitted flow is not better than max k overall, as
        # short transit times leave flow and residue shape unidentifiable
        # (docs/deconvolution.md, benchmarks/deconvolution_family.py).
        onset_s = np.where(flow > 0, delay_s, tmax_raw)
        if flow_window_s is not None:
            near = _max_near_onset(k, onset_s, flow_window_s, dec, step_s)
            flow_read = np.where(np.isfinite(near), near, k_max)
            if peak_table is not None:
                ratio, model_peak_s = voxel_peak_model(peak_table, fit, rung)
                if cbf_readout.startswith("value"):
                    value = residue_at_lag(k_all_lags, model_peak_s, dec, step_s)
                    flow_read = np.where(np.isfinite(value), value, flow_read)
                if cbf_readout.endswith("/model"):
                    flow_read = flow_read / ratio
            cbf = _FLOW_SCALE * 6000.0 * np.clip(flow_read, 0, None)
            mtt = _mtt_s(cbf, cbv)
        if fitted_tmax:
            tmax_raw = onset_s
        elif model_lags is not None:
            # The shift of the regularised peak from the onset that noise-free curves of
            # the best models show at this voxel's rung (relative: only what their delay
            # adds, i.e. the scan's end cutting them). Averaged over the delays of the
            # fit with its likelihood weights, as the onset is.
            delay_idx = fit.window_start[None, :] + np.arange(fit.weights.shape[0])[:, None]
            model_shift_s = (fit.weights * model_lags[rung[None, :], delay_idx, fit.models]).sum(0)
            base_s = tmax_raw if model_lags_relative else peak_lag_s
            tmax_raw = np.where(flow > 0, base_s - model_shift_s, tmax_raw)
        if two_delay_tmax:
            single_tmax = np.clip(tmax_raw, 0.0, None)
            # A pair's delays lie within the window, which ends at most half a delay step
            # more than FIT_DELAY_HALF_WIDTH_S past the seed. Where it ends below the
            # threshold and the single readout is below it too, Tmax stays below it either
            # way: the regions above it are those of searching every voxel.
            window_end_s = half_rise_s + FIT_DELAY_HALF_WIDTH_S + 0.5 * FIT_DELAY_STEP_S

            readout_s = tmax_raw  # the single-delay readout: the gates read it, not the pair's

            def searched_for(above_s: float | None) -> np.ndarray:
                if above_s is None:
                    return flow > 0
                return (flow > 0) & ((window_end_s > above_s) | (readout_s > above_s))

            search = searched_for(two_delay_above_s)
            if search.any():
                # The pair is searched in the single fit's window: the half-rise follows
                # the earlier component of a mixed voxel, and the window reaches 3 s past
                # it. The single-delay readout stays for the core.
                pair = fitter.fit_two_delays(curves[:, search], half_rise_s[search])
                fallback_s = tmax_raw[search]
                if unpaired_tmax == "onset":
                    fallback_s = np.where(flow[search] > 0, onset_s[search], fallback_s)
                elif unpaired_tmax == "mean":
                    use = flow[search] > 0
                    if unpaired_mean_below_s is not None:
                        below = fallback_s <= unpaired_mean_below_s
                        if unpaired_onset_sd_s is not None:
                            onset_sd = _onset_sd_s(fit.weights[:, search], fitter)
                            below |= onset_sd <= unpaired_onset_sd_s
                        use &= below
                    fallback_s = np.where(use, 0.5 * (onset_s[search] + fallback_s), fallback_s)
                tmax_raw = tmax_raw.copy()
                tmax_raw[search] = pair.dominant_delay_s(fallback_s)
                if pair_flow_cap is not None:
                    single = flow[search]
                    flow_above_s = (
                        two_delay_above_s if pair_flow_above_s is None else pair_flow_above_s
                    )
                    paired = pair.accepted & searched_for(flow_above_s)[search]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        gain = np.where(paired, pair.flow_per_s / single, 1.0)
                    cbf = cbf.copy()
                    cbf[search] *= np.clip(np.nan_to_num(gain, nan=1.0), 1.0, pair_flow_cap)
                    mtt = _mtt_s(cbf, cbv)
    if calibration is not None and correct_cbf_bias:
        # After the flow window: the peak it reads is the one the regularisation lowered.
        cbf = cbf / calibration.lookup(rung, mtt)[0]
        mtt = _mtt_s(cbf, cbv)
    tmax = np.clip(tmax_raw, 0.0, None)
    out = {"cbf": cbf, "cbv": cbv, "mtt": mtt, "tmax": tmax, "ttp": ttp, "rung": rung}
    if two_delay_tmax:
        out["single_tmax"] = tmax if single_tmax is None else single_tmax
    return out


def maps_on_grid(maps: PerfusionMaps, where: np.ndarray) -> PerfusionMaps:
    """Maps of the voxels of ``where`` (``(n,)`` each) placed on its grid, NaN elsewhere.

    Parameters
    ----------
    maps : PerfusionMaps
        Maps of ``compute_maps`` over ``(t, n)`` curves: one value per voxel of ``where``,
        in ``numpy.flatnonzero`` order.
    where : numpy.ndarray
        Boolean, shaped like one frame, with ``n`` voxels set.

    Returns
    -------
    PerfusionMaps
        float32 maps shaped like ``where``.
    """
    n = int(np.count_nonzero(where))

    def placed(values: np.ndarray) -> np.ndarray:
        if values.shape != (n,):
            raise ValueError(f"a map of {values.shape} for {n} voxels of {where.shape}")
        grid = np.full(where.shape, np.nan, dtype=np.float32)
        grid[where] = values
        return grid

    def optional(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else placed(values)

    return PerfusionMaps(
        cbf_ml_100g_min=placed(maps.cbf_ml_100g_min),
        cbv_ml_100g=placed(maps.cbv_ml_100g),
        mtt_s=placed(maps.mtt_s),
        tmax_s=placed(maps.tmax_s),
        ttp_s=placed(maps.ttp_s),
        single_delay_tmax_s=optional(maps.single_delay_tmax_s),
        reference_cbf_ml_100g_min=optional(maps.reference_cbf_ml_100g_min),
        cbf_noise_sd_ml_100g_min=optional(maps.cbf_noise_sd_ml_100g_min),
    )


def blend_flow(maps: PerfusionMaps, other: PerfusionMaps, share: float) -> PerfusionMaps:
    """``maps`` with its CBF taken ``share`` from ``other`` (MTT recomputed from it).

    The CBF, the reference CBF map and the CBF noise map (where ``maps`` holds them) are
    ``(1 - share) * maps + share * other``; CBV, Tmax and TTP stay those of ``maps``.

    Parameters
    ----------
    maps, other : PerfusionMaps
        Maps of one study on one grid, e.g. from two filters of its curves.
    share : float
        0..1.

    Returns
    -------
    PerfusionMaps
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1]; got {share}")

    def mix(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return a
        return ((1.0 - share) * a + share * b).astype(np.float32)

    cbf = ((1.0 - share) * maps.cbf_ml_100g_min + share * other.cbf_ml_100g_min).astype(np.float32)
    return dataclasses.replace(
        maps,
        cbf_ml_100g_min=cbf,
        mtt_s=_mtt_s(cbf, maps.cbv_ml_100g).astype(np.float32),
        reference_cbf_ml_100g_min=mix(
            maps.reference_cbf_ml_100g_min, other.reference_cbf_ml_100g_min
        ),
        cbf_noise_sd_ml_100g_min=mix(maps.cbf_noise_sd_ml_100g_min, other.cbf_noise_sd_ml_100g_min),
    )


def _mtt_s(cbf: np.ndarray, cbv: np.ndarray) -> np.ndarray:
    """MTT (s) = 60 CBV / CBF (mL/100 g, mL/100 g/min); NaN where CBF is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cbf > 0, 60.0 * cbv / cbf, np.nan)


def _onset_sd_s(weights: np.ndarray, fitter: ResidueFitter) -> np.ndarray:
    """Posterior SD (s) of the fitted onset: the spread of the fit's delay likelihood
    weights ``(window, nvox)``; 0 where the voxel has none."""
    step_s = float(fitter.delays_s[1] - fitter.delays_s[0])
    index = np.arange(weights.shape[0], dtype=np.float64)[:, None]
    mean = (weights * index).sum(axis=0)
    var = (weights * (index - mean) ** 2).sum(axis=0)
    return np.sqrt(np.maximum(var, 0.0)) * step_s


#: True transit times (s) at which the regularisation bias is calibrated.
_CAL_MTT_S = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 30.0])

#: The peak ratio is not divided out below this: noise-only voxels must not be amplified.
_MIN_PEAK_RATIO = 0.25


@dataclass(frozen=True)
class _BiasCalibration:
    """Per rung: measured MTT, peak ratio and lag of noise-free exponential residues."""

    measured_mtt_s: np.ndarray  # (rungs, mtts), increasing along mtts
    peak_ratio: np.ndarray  # (rungs, mtts)
    lag_s: np.ndarray  # (rungs, mtts)

    def lookup(self, rung: np.ndarray, mtt_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Peak ratio and lag for voxels of the given rungs and measured MTTs."""
        ratio = np.ones(rung.shape, dtype=np.float64)
        lag = np.zeros(rung.shape, dtype=np.float64)
        measured = np.nan_to_num(mtt_s, nan=float(self.measured_mtt_s.min()))
        for r in np.unique(rung):
            sel = rung == r
            x = self.measured_mtt_s[r]
            ratio[sel] = np.interp(measured[sel], x, self.peak_ratio[r])
            lag[sel] = np.interp(measured[sel], x, self.lag_s[r])
        return np.clip(ratio, _MIN_PEAK_RATIO, None), lag


def _bias_calibration(dec: Deconvolver, aif: np.ndarray, step_s: float) -> _BiasCalibration:
    """Deconvolve zero-delay exponential residues of unit flow at every rung."""
    n = dec.n_frames
    t = np.arange(dec.n_lags) * step_s
    mtt = _CAL_MTT_S[None, :]
    # Interval averages of exp(-t/MTT) over [j dt, (j+1) dt): the discrete residue the
    # convolution matrix assumes; its true peak (flow) is 1.
    r = mtt / step_s * (np.exp(-t[:, None] / mtt) - np.exp(-(t[:, None] + step_s) / mtt))
    r[n:] = 0.0
    curves = (aif_matrix(aif, step_s, circulant=dec.circulant) @ r)[:n].astype(np.float32)
    w = (dec.u_t @ curves) * dec.inv_s[:, None]
    shape = (len(dec.ranks), _CAL_MTT_S.size)
    peak_ratio, lag_s, measured = np.empty(shape), np.empty(shape), np.empty(shape)
    for i, rank in enumerate(dec.ranks):
        k = dec.v[:, :rank] @ w[:rank]
        idx, offset = _peak_with_offset(k, wrap=dec.circulant)
        peak = np.take_along_axis(k, idx[None, :], axis=0)[0].astype(np.float64)
        lag = (idx + offset).astype(np.float64)
        if dec.circulant:
            lag = np.where(idx >= n, lag - dec.n_lags, lag)
        peak_ratio[i] = np.clip(peak, 1e-6, None)
        lag_s[i] = np.clip(lag * step_s, 0.0, None)
        # What the voxel would report as MTT: CBV / CBF = MTT / peak ratio.
        measured[i] = np.maximum.accumulate(_CAL_MTT_S / peak_ratio[i])
    return _BiasCalibration(measured, np.minimum(peak_ratio, 1.0), lag_s)


def _model_lag_table(
    dec: Deconvolver, fitter: ResidueFitter, step_s: float, *, relative: bool = False
) -> np.ndarray:
    """Peak lag less onset (s) of every model curve of ``fitter``, at every rung.

    Returns a ``(rungs, delays, models)`` array: the model curves (unit norm; the lag
    does not depend on the scale) are deconvolved like tissue curves at each rung of the
    ladder and the lag of their residue's maximum read as for a voxel.
    """
    n_delays, n, n_models = fitter.atoms.shape
    onset_s = np.repeat(fitter.delays_s, n_models)
    out = np.empty((len(dec.ranks), n_delays * n_models))
    for i, k in enumerate(model_residues_by_rung(dec, fitter)):
        idx, offset = _peak_with_offset(k, wrap=dec.circulant)
        lag = (idx + offset).astype(np.float64)
        if dec.circulant:
            lag = np.where(idx >= n, lag - dec.n_lags, lag)
        out[i] = lag * step_s - onset_s
    table = out.reshape(len(dec.ranks), n_delays, n_models)
    if relative:
        # Only what the delay adds: the same model starting at 0 s.
        table = table - table[:, [int(np.argmin(np.abs(fitter.delays_s)))], :]
    return table


def _max_near_onset(
    k: np.ndarray,
    onset_s: np.ndarray,
    window: tuple[float, float],
    dec: Deconvolver,
    step_s: float,
) -> np.ndarray:
    """Maximum of each circulant residue between ``window`` seconds around its onset."""
    n, length = dec.n_frames, dec.n_lags
    j = np.arange(length)
    # Samples N..2N-1 of a circulant residue are negative lags.
    lag_s = np.where(j >= n, j - length, j) * step_s
    before_s, after_s = window
    inside = (lag_s[:, None] >= (onset_s - before_s)[None, :]) & (
        lag_s[:, None] <= (onset_s + after_s)[None, :]
    )
    return np.asarray(np.where(inside, k, -np.inf).max(axis=0))


def _half_rise_lag(k: np.ndarray, peak_idx: np.ndarray, dec: Deconvolver) -> np.ndarray:
    """Lag (samples) at which a circulant residue last crosses half its peak before it."""
    n, length = dec.n_frames, dec.n_lags
    # Lag order -(L - N) .. N - 1: the wrapped negative lags first.
    ordered = np.concatenate([k[n:], k[:n]])
    peak = np.where(peak_idx >= n, peak_idx - n, peak_idx + (length - n))
    cols = np.arange(k.shape[1])
    half = 0.5 * ordered[peak, cols]
    j = np.arange(length)[:, None]
    below = (ordered < half[None, :]) & (j < peak[None, :])
    last = np.where(below, j, -1).max(axis=0)
    # Linear interpolation of the crossing between the last sample below and the next.
    nxt = np.clip(last + 1, 0, length - 1)
    lo = ordered[np.clip(last, 0, length - 1), cols]
    hi = ordered[nxt, cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where((last >= 0) & (hi > lo), (half - lo) / (hi - lo), 1.0)
    crossing = np.where(last >= 0, last + np.clip(np.nan_to_num(frac), 0.0, 1.0), peak)
    return crossing - (length - n)


def _restrict_to_window(
    k: np.ndarray,
    ttp_s: np.ndarray,
    window: tuple[float, float, float],
    dec: Deconvolver,
    step_s: float,
) -> np.ndarray:
    """Residues with the samples outside each voxel's plausible peak window set to -inf."""
    aif_ttp_s, before_s, after_s = window
    n, length = dec.n_frames, dec.n_lags
    j = np.arange(length)
    lag_s = (np.where(j >= n, j - length, j) if dec.circulant else j) * step_s
    expected = ttp_s - aif_ttp_s
    inside = (lag_s[:, None] >= (expected - before_s)[None, :]) & (
        lag_s[:, None] <= (expected + after_s)[None, :]
    )
    return np.where(inside, k, -np.inf)


def _peak_with_offset(y: np.ndarray, *, wrap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index of the maximum along axis 0 and its parabolic sub-sample offset in [-0.5, 0.5].

    With ``wrap`` the neighbours of the ends are taken circularly; otherwise the ends get
    no offset.
    """
    length, nvox = y.shape
    idx = np.argmax(y, axis=0)
    cols = np.arange(nvox)
    if wrap:
        before = y[(idx - 1) % length, cols]
        after = y[(idx + 1) % length, cols]
        interior = np.ones(nvox, dtype=bool)
    else:
        before = y[np.clip(idx - 1, 0, length - 1), cols]
        after = y[np.clip(idx + 1, 0, length - 1), cols]
        interior = (idx > 0) & (idx < length - 1)
    centre = y[idx, cols]
    # A neighbour outside the residue window is -inf: no parabola, no offset.
    interior &= np.isfinite(before) & np.isfinite(after)
    with np.errstate(divide="ignore", invalid="ignore"):
        curvature = before.astype(np.float64) - 2.0 * centre + after
        offset = np.where(interior & (curvature < 0), 0.5 * (before - after) / curvature, 0.0)
    return idx, np.clip(np.nan_to_num(offset), -0.5, 0.5)


def _trapezoid_area(curves: np.ndarray) -> np.ndarray:
    """Trapezoid-rule area of ``(n, nvox)`` curves in units of samples (step factored out)."""
    c = np.asarray(curves, dtype=np.float64)
    return np.asarray(c.sum(axis=0) - 0.5 * (c[0] + c[-1]))
