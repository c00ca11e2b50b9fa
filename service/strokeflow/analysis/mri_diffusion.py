"""The diffusion half of the MR stroke analysis: ADC, core and its flags on the DWI grid.

It works on the brain's bounding box of the DWI grid (:class:`DiffusionResult`);
:func:`uncrop` puts its arrays back on the full grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from strokeflow.analysis.coregister import resample
from strokeflow.analysis.ctp import AnalysisError
from strokeflow.analysis.diffusion import (
    DiffusionCore,
    adc_core,
    adc_from_dwi,
    mr_brain_mask,
    scanner_adc_um2_s,
)
from strokeflow.analysis.lesions import volume_ml
from strokeflow.analysis.mri_types import MriAcquisition, MriSettings
from strokeflow.analysis.quality import QualityFlag
from strokeflow.analysis.volume import Geometry

#: Lowest and highest b-value for which the 620 x10^-6 mm²/s core threshold holds.
B_VALUE_RANGE_S_MM2 = (800.0, 1500.0)


@dataclass(frozen=True)
class DiffusionResult:
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


def diffusion_fields(diffusion: DiffusionResult) -> dict[str, Any]:
    """The ``MriAnalysis`` fields that come from the diffusion part, on the full DWI grid."""
    return {
        "geometry": diffusion.full_geometry,
        "adc_um2_s": uncrop(diffusion.adc, diffusion, np.nan),
        "adc_source": diffusion.source,
        "adc_units": diffusion.units,
        "b_value_s_mm2": diffusion.b_value,
        "brain": uncrop(diffusion.brain, diffusion, False),
        "tissue": uncrop(diffusion.tissue, diffusion, False),
        "core": uncrop(diffusion.core, diffusion, False),
    }


def uncrop(values: np.ndarray, diffusion: DiffusionResult, fill: float | bool) -> np.ndarray:
    """A ``(z, y, x)`` array of the diffusion box placed back on the full DWI grid."""
    full = np.full(diffusion.full_shape, fill, dtype=values.dtype)
    full[:, diffusion.box[0], diffusion.box[1]] = values
    return full


def analyse_diffusion(
    acq: MriAcquisition, settings: MriSettings, flags: list[QualityFlag]
) -> DiffusionResult:
    """ADC, brain, tissue and core of the diffusion series, on the brain's bounding box.

    Parameters
    ----------
    acq : MriAcquisition
        The DWI series (and the scanner ADC map, when there is one).
    settings : MriSettings
        Core and CSF thresholds and the quality limits.
    flags : list of QualityFlag
        The analysis' flags; the diffusion findings are appended.

    Returns
    -------
    DiffusionResult
        On the box of the DWI grid (:func:`uncrop` puts an array back on the full grid).

    Raises
    ------
    AnalysisError
        When the diffusion series cannot give an ADC map or no brain is found.
    """
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
        box = brain_box(full_brain)
        geometry = cropped_geometry(full_geometry, box[0].start, box[1].start)
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
        box = brain_box(full_brain)
        geometry = cropped_geometry(full_geometry, box[0].start, box[1].start)
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
    return DiffusionResult(
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
    target = cropped_geometry(full_geometry, box[0].start, box[1].start)
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


def brain_box(brain: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """Rows and columns of the brain's in-plane bounding box, ``margin`` voxels wider."""
    ny, nx = brain.shape[1:]
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    xs = np.flatnonzero(brain.any(axis=(0, 1)))
    return (
        slice(max(0, int(ys[0]) - margin), min(ny, int(ys[-1]) + margin + 1)),
        slice(max(0, int(xs[0]) - margin), min(nx, int(xs[-1]) + margin + 1)),
    )


def cropped_geometry(geometry: Geometry, row0: int, col0: int) -> Geometry:
    """Geometry of the grid that starts at row ``row0`` and column ``col0`` of ``geometry``."""
    affine = geometry.affine_lps.copy()
    affine[:3, 3] += affine[:3, 0] * col0 + affine[:3, 1] * row0
    return Geometry(affine)
