"""Digital MR stroke phantom: DWI (b0, b1000), scanner ADC and DSC perfusion, arrays only.

The head, its vessels and the perfusion zones are those of the CT phantom
(:mod:`strokeflow.phantom.ctp`), rendered on two grids: a fine diffusion grid and a
coarser perfusion grid covering the same slab, as on a scanner. The MR contrast is
added here:

* DWI: ``S_b = S0 * exp(-b * ADC)`` per tissue class, the core with ADC ~ 500 x10^-6
  mm²/s (truth: ADC < 620), Rician noise (magnitude of complex Gaussian noise).
* DSC: delta-R2* is proportional to the contrast concentration, so the CT phantom's
  enhancement curves (computed with an arterial peak in 1/s instead of HU) are the
  delta-R2* curves, and ``S = S0 * exp(-TE * delta-R2*)``. The arterial peak is high
  enough that voxels filled with blood fall to the noise floor (saturation), while
  partial-volume voxels at the vessel edge keep a measurable, undistorted curve. Each
  slice is acquired at its own time within the TR (interleaved order).
* Patient motion between the DWI and the DSC series: a rigid move of the head (rotation
  about the scanner z axis and a translation) applied to the perfusion anatomy only,
  while the DICOM geometry of both series stays the scanner's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from strokeflow.analysis.decisions import evaluate_decisions, lesion_metrics
from strokeflow.phantom.ctp import (
    AIR,
    ARTERY,
    CSF,
    DEEP_GREY,
    GREY,
    LABEL_NAMES,
    SCALP,
    SINUS,
    SKULL,
    TISSUE_LABELS,
    VENTRICLE,
    WHITE,
    ZONE_NAMES,
    CtpPhantomOptions,
    class_map,
    head_anatomy,
    lesion_zones,
    perfusion_curves,
    phantom_affine,
    slice_positions_mm,
)

CORE_ZONE = 4

#: Apparent diffusion coefficient per label (x10^-6 mm²/s = µm²/s).
ADC_UM2_S = {
    AIR: 0.0,
    SCALP: 1000.0,
    SKULL: 1000.0,
    CSF: 3000.0,
    VENTRICLE: 3000.0,
    GREY: 820.0,
    DEEP_GREY: 760.0,
    WHITE: 720.0,
    ARTERY: 1800.0,
    SINUS: 1800.0,
}
#: ADC of the ischaemic core (cytotoxic oedema).
CORE_ADC_UM2_S = 510.0
#: b0 (T2-weighted spin-echo EPI, fat suppressed) signal per label, grey matter = 1.
DWI_S0 = {
    AIR: 0.0,
    SCALP: 0.3,
    SKULL: 0.03,
    CSF: 2.2,
    VENTRICLE: 2.3,
    GREY: 1.0,
    DEEP_GREY: 0.95,
    WHITE: 0.8,
    ARTERY: 0.3,
    SINUS: 0.5,
}
#: Vasogenic T2 increase of the core on b0 (mild in the first hours).
CORE_S0_FACTOR = 1.1
#: Baseline signal of the DSC gradient-echo EPI per label, grey matter = 1.
DSC_S0 = {
    AIR: 0.0,
    SCALP: 0.4,
    SKULL: 0.03,
    CSF: 1.6,
    VENTRICLE: 1.6,
    GREY: 1.0,
    DEEP_GREY: 0.9,
    WHITE: 0.8,
    ARTERY: 0.9,
    SINUS: 0.8,
}
#: Signal of grey matter in arbitrary scanner units (images are stored as integers).
SIGNAL_SCALE = 1000.0


@dataclass(frozen=True)
class MriPhantomOptions:
    """What to simulate.

    Attributes
    ----------
    seed : int
        Seeds the lesion outline, the noise and the UIDs.
    lesion : {"none", "standard", "large", "malignant"}
        Lesion size class (as the CT phantom).
    lesion_side : {"left", "right"}
        Hemisphere of the occlusion.
    dwi_matrix, pwi_matrix : int
        In-plane pixels of the diffusion and perfusion grids (same field of view).
    fov_mm : float
        Field of view of both grids.
    slices, slice_mm : int, float
        Contiguous axial slices of both series.
    dwi, adc_map, perfusion : bool
        Which series exist: the DWI b0/b-high images, a scanner ADC map, the DSC series.
    b_value_s_mm2 : float
        High b-value of the DWI.
    dwi_snr : float
        b0 grey-matter signal over the noise sigma.
    frames, tr_s, te_s : int, float, float
        DSC time points, repetition time (= frame interval) and echo time.
    dsc_snr : float
        Baseline grey-matter signal over the noise sigma of the DSC series.
    arterial_peak_r2_s : float
        Peak delta-R2* (1/s) of the first pass in a blood-filled voxel.
    pwi_shift_mm : tuple of float
        Patient translation (LPS x, y, z in mm) between the DWI and the DSC series.
    pwi_rotation_deg : float
        Patient rotation about the scanner z axis between the series.
    dsc_motion_mm : tuple of float
        Head motion during the DSC run: in-plane translation (LPS x, y in mm) of every
        frame from ``dsc_motion_from_frame`` on (a patient who moves once and stays).
    dsc_motion_from_frame : int
        First DSC frame showing the moved head.
    """

    seed: int = 0
    lesion: Literal["none", "standard", "large", "malignant"] = "standard"
    lesion_side: Literal["left", "right"] = "left"
    dwi_matrix: int = 256
    pwi_matrix: int = 128
    fov_mm: float = 230.0
    slices: int = 20
    slice_mm: float = 5.0
    dwi: bool = True
    adc_map: bool = True
    perfusion: bool = True
    b_value_s_mm2: float = 1000.0
    dwi_snr: float = 60.0
    frames: int = 60
    tr_s: float = 1.5
    te_s: float = 0.030
    dsc_snr: float = 60.0
    arterial_peak_r2_s: float = 250.0
    pwi_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pwi_rotation_deg: float = 0.0
    dsc_motion_mm: tuple[float, float] = (0.0, 0.0)
    dsc_motion_from_frame: int = 0


@dataclass(frozen=True)
class MriPhantom:
    """A simulated MR stroke study and its truth.

    Attributes
    ----------
    dwi : dict of float to numpy.ndarray
        b-value (s/mm²) -> ``(z, y, x)`` float32 magnitude image on the DWI grid; empty
        when the study has no DWI.
    adc_um2_s : numpy.ndarray or None
        ``(z, y, x)`` scanner ADC map (x10^-6 mm²/s) computed from the noisy DWI, zero
        in the background as scanners write it; None without ``adc_map``.
    dwi_affine_lps : numpy.ndarray
        ``(4, 4)`` voxel ``(x, y, z, 1)`` -> LPS mm of the DWI grid.
    dsc : numpy.ndarray or None
        ``(t, z, y, x)`` float32 DSC magnitude signal; None without perfusion.
    dsc_times_s : numpy.ndarray
        ``(t, z)`` acquisition time of every DSC image from the first one.
    pwi_affine_lps : numpy.ndarray
        ``(4, 4)`` affine of the DSC grid.
    dwi_zones, pwi_zones : numpy.ndarray
        ``(z, y, x)`` uint8 perfusion zones on each grid (the PWI one after motion).
    saturated_aif : numpy.ndarray
        ``(z, y, x)`` bool on the PWI grid: arterial voxels whose signal reaches the
        noise floor at the bolus peak.
    truth : dict
        JSON-serialisable truth (volumes, decisions, parameters).
    options : MriPhantomOptions
    """

    dwi: dict[float, np.ndarray]
    adc_um2_s: np.ndarray | None
    dwi_affine_lps: np.ndarray
    dsc: np.ndarray | None
    dsc_times_s: np.ndarray
    pwi_affine_lps: np.ndarray
    dwi_zones: np.ndarray
    pwi_zones: np.ndarray
    saturated_aif: np.ndarray
    truth: dict[str, Any]
    options: MriPhantomOptions = field(default_factory=MriPhantomOptions)


def _ct_options(options: MriPhantomOptions, matrix: int) -> CtpPhantomOptions:
    return CtpPhantomOptions(
        seed=options.seed,
        matrix=matrix,
        fov_mm=options.fov_mm,
        slices=options.slices,
        slice_mm=options.slice_mm,
        frames=max(options.frames, 2),
        frame_interval_s=options.tr_s,
        lesion=options.lesion,
        lesion_side=options.lesion_side,
        aif_peak_hu=options.arterial_peak_r2_s,
    )


def _rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of ``sigma`` per channel."""
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.asarray(np.hypot(real, imag), dtype=np.float32)


def _lookup(table: dict[int, float], labels: np.ndarray) -> np.ndarray:
    lut = np.zeros(max(table) + 1, dtype=np.float32)
    for code, value in table.items():
        lut[code] = value
    return lut[labels]


def slice_acquisition_order(n_slices: int) -> np.ndarray:
    """Acquisition slot of every slice in an interleaved EPI (odd slices first)."""
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    slot = np.empty(n_slices, dtype=np.intp)
    slot[order] = np.arange(n_slices)
    return slot


def simulate_mri(options: MriPhantomOptions) -> MriPhantom:
    """Simulate an MR stroke study (DWI, ADC map, DSC) with a known lesion.

    Parameters
    ----------
    options : MriPhantomOptions
        What to simulate.

    Returns
    -------
    MriPhantom

    Raises
    ------
    ValueError
        For options that cannot be simulated (too few frames, a non-positive TE).
    """
    if options.perfusion and (options.frames < 10 or options.te_s <= 0 or options.tr_s <= 0):
        raise ValueError(
            f"DSC needs >= 10 frames and positive TR/TE; got {options.frames} frames, "
            f"TR {options.tr_s} s, TE {options.te_s} s"
        )
    rng = np.random.default_rng([options.seed, 11])
    dwi_ct = _ct_options(options, options.dwi_matrix)
    z_mm = slice_positions_mm(dwi_ct)
    dwi_anatomy = head_anatomy(dwi_ct, z_mm)
    dwi_zones = lesion_zones(dwi_ct, z_mm, dwi_anatomy.labels)
    dwi_affine = phantom_affine(dwi_ct)
    core = dwi_zones == CORE_ZONE

    dwi: dict[float, np.ndarray] = {}
    adc_map: np.ndarray | None = None
    if options.dwi or options.adc_map:
        s0 = _lookup(DWI_S0, dwi_anatomy.labels) * np.float32(SIGNAL_SCALE)
        s0[core] *= np.float32(CORE_S0_FACTOR)
        adc = _lookup(ADC_UM2_S, dwi_anatomy.labels)
        adc[core] = CORE_ADC_UM2_S
        sigma = SIGNAL_SCALE / options.dwi_snr
        b = options.b_value_s_mm2
        b0 = _rician(s0, sigma, rng)
        bh = _rician(s0 * np.exp(-b * adc * 1e-6).astype(np.float32), sigma, rng)
        if options.dwi:
            dwi = {0.0: b0, float(b): bh}
        if options.adc_map:
            # As scanners do: ADC from the noisy images, background (b0 below a few
            # noise sigmas) set to 0, stored as integers in x10^-6 mm²/s.
            with np.errstate(divide="ignore", invalid="ignore"):
                raw = np.log(np.maximum(b0, 1.0) / np.maximum(bh, 1.0)) / b * 1e6
            adc_map = np.where(b0 > 5.0 * sigma, np.clip(raw, 0.0, 4000.0), 0.0).astype(np.float32)

    pwi_ct = _ct_options(options, options.pwi_matrix)
    pwi_affine = phantom_affine(pwi_ct)
    pwi_anatomy = head_anatomy(pwi_ct, z_mm)
    pwi_zones_still = lesion_zones(pwi_ct, z_mm, pwi_anatomy.labels)
    moved = _MovedMaps.build(pwi_anatomy, pwi_zones_still, pwi_affine, options)
    times = (
        np.arange(options.frames)[:, None] * options.tr_s
        + slice_acquisition_order(options.slices)[None, :] * options.tr_s / options.slices
    )
    dsc: np.ndarray | None = None
    saturated = np.zeros(pwi_zones_still.shape, dtype=bool)
    curves = perfusion_curves(pwi_ct, pwi_anatomy.labels, float(times.max()) + options.tr_s)
    if options.perfusion:
        dsc = _render_dsc(moved, curves, times, options, rng)
        peak_r2 = moved.pv_artery * float(curves.arterial.max())
        sigma_dsc = SIGNAL_SCALE / options.dsc_snr
        saturated = moved.s0 * np.exp(-options.te_s * peak_r2) < 2.0 * sigma_dsc
        saturated &= moved.pv_artery > 0

    truth = _truth(options, dwi_zones, dwi_anatomy.labels, dwi_affine, moved.zones, pwi_affine)
    truth["arterial_curve_r2_s"] = [
        round(float(v), 3) for v in np.interp(times[:, 0], curves.fine_s, curves.arterial)
    ]
    truth["saturated_arterial_voxels"] = int(np.count_nonzero(saturated))
    return MriPhantom(
        dwi=dwi,
        adc_um2_s=adc_map,
        dwi_affine_lps=dwi_affine,
        dsc=dsc,
        dsc_times_s=times,
        pwi_affine_lps=pwi_affine,
        dwi_zones=dwi_zones,
        pwi_zones=moved.zones,
        saturated_aif=saturated,
        truth=truth,
        options=options,
    )


@dataclass(frozen=True)
class _MovedMaps:
    """The perfusion grid's static maps after the patient moved (rigid)."""

    classes: np.ndarray
    zones: np.ndarray
    s0: np.ndarray
    pv_artery: np.ndarray
    pv_occluded: np.ndarray
    pv_sinus: np.ndarray

    @staticmethod
    def build(
        anatomy: Any, zones: np.ndarray, affine: np.ndarray, options: MriPhantomOptions
    ) -> _MovedMaps:
        classes = class_map(anatomy.labels, zones)
        s0 = _lookup(DSC_S0, anatomy.labels) * np.float32(SIGNAL_SCALE)
        maps = [classes, zones, s0, anatomy.pv_artery, anatomy.pv_occluded, anatomy.pv_sinus]
        if not any(options.pwi_shift_mm) and options.pwi_rotation_deg == 0:
            return _MovedMaps(*maps)
        # The head moved by p' = R p + t (LPS mm); the voxel at scanner position p now
        # shows head point R^T (p - t). In voxel indices (x, y, z): v_src = A^-1 R^T (A v - t).
        theta = np.deg2rad(options.pwi_rotation_deg)
        c, s = np.cos(theta), np.sin(theta)
        rigid = np.eye(4)
        rigid[:2, :2] = [[c, -s], [s, c]]
        rigid[:3, 3] = options.pwi_shift_mm
        m_xyz = np.linalg.inv(affine) @ np.linalg.inv(rigid) @ affine
        perm = np.eye(4)[[2, 1, 0, 3]]
        m_zyx = perm @ m_xyz @ perm
        out = []
        for i, arr in enumerate(maps):
            order = 0 if i < 2 else 1
            # Class 15 is "no tissue": what moves in from outside the grid is air.
            cval = 15 if i == 0 else 0
            warped = ndimage.affine_transform(
                arr, m_zyx[:3, :3], offset=m_zyx[:3, 3], order=order, mode="constant", cval=cval
            )
            out.append(warped.astype(arr.dtype))
        return _MovedMaps(*out)


def _render_dsc(
    moved: _MovedMaps,
    curves: Any,
    times: np.ndarray,
    options: MriPhantomOptions,
    rng: np.random.Generator,
) -> np.ndarray:
    nt, nz = times.shape
    out = np.empty((nt, nz, *moved.s0.shape[1:]), dtype=np.float32)
    sigma = SIGNAL_SCALE / options.dsc_snr
    te = np.float32(options.te_s)
    for z in range(nz):
        t_z = times[:, z]
        table = np.stack([np.interp(t_z, curves.fine_s, c) for c in curves.tissue], axis=1)
        art = np.interp(t_z, curves.fine_s, curves.arterial).astype(np.float32)
        occ = np.interp(t_z, curves.fine_s, curves.occluded).astype(np.float32)
        ven = np.interp(t_z, curves.fine_s, curves.venous).astype(np.float32)
        cls = moved.classes[z]
        for f in range(nt):
            r2 = table[f].astype(np.float32)[cls]
            r2 += moved.pv_artery[z] * art[f]
            r2 += moved.pv_occluded[z] * occ[f]
            r2 += moved.pv_sinus[z] * ven[f]
            out[f, z] = moved.s0[z] * np.exp(-te * r2)
    if any(options.dsc_motion_mm):
        _move_frames(out, options)
    return _rician(out, sigma, rng)


def _move_frames(frames: np.ndarray, options: MriPhantomOptions) -> None:
    """Translate the DSC frames from ``dsc_motion_from_frame`` on, in place."""
    pixel_mm = options.fov_mm / options.pwi_matrix
    # Axial grid: x (LPS) runs along columns, y along rows (the phantom's affine).
    dx_px, dy_px = (v / pixel_mm for v in options.dsc_motion_mm)
    start = min(max(options.dsc_motion_from_frame, 0), frames.shape[0])
    for f in range(start, frames.shape[0]):
        frames[f] = ndimage.shift(frames[f], (0.0, dy_px, dx_px), order=1, mode="constant")


def _truth(
    options: MriPhantomOptions,
    dwi_zones: np.ndarray,
    dwi_labels: np.ndarray,
    dwi_affine: np.ndarray,
    pwi_zones: np.ndarray,
    pwi_affine: np.ndarray,
) -> dict[str, Any]:
    def volumes(zones: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
        vv = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        counts = np.bincount(zones.ravel(), minlength=5)
        return (
            float(counts[CORE_ZONE]) * vv,
            float(counts[2:].sum()) * vv,
            float(counts[3:].sum()) * vv,
        )

    core_ml, tmax6_ml, tmax10_ml = volumes(dwi_zones, dwi_affine)
    p_core, p_tmax6, p_tmax10 = volumes(pwi_zones, pwi_affine)
    metrics = lesion_metrics(core_ml, tmax6_ml, tmax10_ml)
    vv = float(abs(np.linalg.det(dwi_affine[:3, :3]))) / 1000.0
    return {
        "generator": "strokeflow.phantom.mri",
        "modality": "MR",
        "options": dataclasses.asdict(options),
        "lesion_side": None if options.lesion == "none" else options.lesion_side,
        "core_ml": round(core_ml, 3),
        "tmax6_ml": round(tmax6_ml, 3),
        "tmax10_ml": round(tmax10_ml, 3),
        "pwi_grid_ml": {
            "core": round(p_core, 3),
            "tmax6": round(p_tmax6, 3),
            "tmax10": round(p_tmax10, 3),
        },
        "metrics": dataclasses.asdict(metrics),
        "decisions": evaluate_decisions(metrics),
        "perfusion_available": options.perfusion,
        "tissue_ml": round(float(np.count_nonzero(np.isin(dwi_labels, TISSUE_LABELS))) * vv, 3),
        "adc_um2_s": {LABEL_NAMES[k]: v for k, v in ADC_UM2_S.items()} | {"core": CORE_ADC_UM2_S},
        "dwi_affine_lps": dwi_affine.tolist(),
        "pwi_affine_lps": pwi_affine.tolist(),
        "pwi_shift_mm": list(options.pwi_shift_mm),
        "pwi_rotation_deg": options.pwi_rotation_deg,
        "zone_codes": {str(i): name for i, name in enumerate(ZONE_NAMES)},
    }
