"""The summary and the result-object parts of an MR stroke analysis (DWI/ADC, DSC).

Same pages, SEG and SR as CT perfusion (:mod:`strokeflow.report.content`), in the
common DWI space: the lesion pages outline the ADC core (magenta) and Tmax > 6 s (green)
on the high-b DWI, the SEG lies on the DWI source grid, the map pages show the ADC and the
DSC maps (CBF and CBV in relative units). Without a DSC series only the core is
reported; the Tmax volumes and the mismatch decisions are "n/a" (null), never "NO".
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from strokeflow.analysis.decisions import HYPOPERFUSION_TMAX_S, SEVERE_HYPOPERFUSION_TMAX_S
from strokeflow.analysis.mri import MriAcquisition, MriAnalysis, MriSettings
from strokeflow.assemble.files import InstanceHeader
from strokeflow.assemble.series import StudyInventory
from strokeflow.report.content import (
    PERFUSION_NOT_AVAILABLE,
    CoreDefinition,
    ModalityParts,
    location_text,
)
from strokeflow.report.render import Curve, MapSpec
from strokeflow.report.source_references import load_source_references

#: Procedure codes (LOINC): DSC perfusion needs gadolinium, a diffusion-only study not.
MR_BRAIN_WITH_CONTRAST = Code("24587-8", "LN", "MR Brain WO and W contrast IV")
MR_BRAIN = Code("24590-2", "LN", "MR Brain")
MR_PERFUSION_METHOD = Code("126303", "DCM", "Perfusion analysis by Susceptibility MR technique")
DIFFUSION_METHOD = Code("129105", "DCM", "Diffusion image analysis")
#: ADC display range (x10^-6 mm²/s): CSF (~3000) saturates, tissue and core are spread.
ADC_WINDOW_UM2_S = (0.0, 2000.0)


def _anatomy(
    analysis: MriAnalysis, acquisition: MriAcquisition
) -> tuple[np.ndarray, tuple[float, float], str]:
    """High-b DWI on the analysis grid (or the ADC), its window and its name."""
    dwi = acquisition.dwi
    if (
        dwi is not None
        and dwi.by_b_value
        and np.allclose(dwi.geometry.affine_lps, analysis.geometry.affine_lps, atol=1e-3)
    ):
        b = max(dwi.by_b_value)
        image = dwi.by_b_value[b]
        if image.shape == analysis.core.shape:
            inside = image[analysis.brain] if analysis.brain.any() else image.ravel()
            high = float(np.percentile(inside, 99.5)) if inside.size else 1.0
            return image, (0.0, max(high, 1e-3)), f"DWI b = {b:g} s/mm²"
    return analysis.adc_um2_s, ADC_WINDOW_UM2_S, "ADC"


def _relative_range(values: np.ndarray, tissue: np.ndarray | None) -> float:
    """Upper display limit of a relative map: its 99th percentile in tissue."""
    finite = values[np.isfinite(values) & (tissue if tissue is not None else True)]
    if finite.size == 0:
        return 1.0
    top = float(np.percentile(finite, 99.0))
    return top if top > 0 else 1.0


def _maps(analysis: MriAnalysis) -> list[MapSpec]:
    """ADC in brain, then the DSC maps (relative CBF and CBV) on their own grid."""
    adc_shown = np.where(analysis.brain, analysis.adc_um2_s, np.nan).astype(np.float32)
    maps = [MapSpec("ADC", adc_shown, "x10^-6 mm²/s", *ADC_WINDOW_UM2_S, cmap="gray")]
    pm, grid, tissue = analysis.maps, analysis.pwi_geometry, analysis.pwi_tissue
    if analysis.perfusion_available and pm is not None and grid is not None:
        maps += [
            MapSpec(
                "CBF",
                pm.cbf_relative,
                "relative",
                0.0,
                _relative_range(pm.cbf_relative, tissue),
                geometry=grid,
            ),
            MapSpec(
                "CBV",
                pm.cbv_relative,
                "relative",
                0.0,
                _relative_range(pm.cbv_relative, tissue),
                geometry=grid,
            ),
            MapSpec("MTT", pm.mtt_s, "s", 0.0, 15.0, geometry=grid),
            MapSpec("Tmax", pm.tmax_s, "s", 0.0, 12.0, geometry=grid),
        ]
    return maps


def mri_parts(
    analysis: MriAnalysis, acquisition: MriAcquisition, settings: MriSettings
) -> ModalityParts:
    """What an MR stroke analysis adds to the shared content."""
    perfusion = analysis.perfusion_available and analysis.metrics is not None
    thr = settings.adc_core_threshold_um2_s
    cluster = f"; clusters under {settings.min_cluster_ml:g} mL removed"
    core_def = (
        f"ADC < {thr:g} x10^-6 mm2/s in brain tissue (ADC > {settings.csf_adc_um2_s:g} "
        f"is CSF, excluded){cluster}"
    )
    tmax_masks: dict[float, np.ndarray] = {}
    if perfusion:
        assert analysis.tmax6 is not None and analysis.tmax10 is not None
        tmax_masks = {
            HYPOPERFUSION_TMAX_S: analysis.tmax6,
            SEVERE_HYPOPERFUSION_TMAX_S: analysis.tmax10,
            **{r.threshold_s: r.mask for r in analysis.tmax_extra},
        }
    curves = []
    if analysis.aif is not None and analysis.grid_s is not None and analysis.pwi_geometry:
        curves.append(
            Curve(
                "AIF",
                analysis.grid_s - analysis.grid_s[0],
                analysis.aif.curve.curve,
                location_text(analysis.aif.curve, analysis.pwi_geometry),
                (255, 70, 70),
            )
        )
    method = (
        f"DSC: oSVD deconvolution (oscillation index {settings.oscillation_index:g}) of "
        "delta-R2*, automatically detected arterial input; Tmax mapped to DWI space"
        if perfusion
        else "diffusion only (no DSC perfusion series)"
    )
    anatomy, window, anatomy_name = _anatomy(analysis, acquisition)
    series = (
        ", ".join(f"{name} ({what})" for name, what in acquisition.series_used) or "not recorded"
    )
    return ModalityParts(
        core=CoreDefinition(
            analysis.core,
            f"Ischemic core (ADC < {thr:g} um2/s)",
            f"Core (ADC < {thr:g} x10⁻⁶ mm²/s)",
            core_def,
            name="ADC core",
        ),
        tmax_masks=tmax_masks,
        tmax_wording=("DSC ", " in DWI space"),
        geometry=analysis.geometry,
        anatomy_zyx=anatomy,
        anatomy_window=window,
        anatomy_head_zyx=analysis.brain,
        maps=_maps(analysis),
        curves=curves,
        curve_unit="delta-R2* (1/s)",
        curve_title="Arterial input (DSC)",
        notice=""
        if perfusion
        else f"{PERFUSION_NOT_AVAILABLE}. Tmax, mismatch and the mismatch decisions "
        "need a DSC perfusion series.",
        footer=f"Core: ADC < {thr:g} x10^-6 mm²/s ({analysis.adc_source} ADC) with DWI "
        f"hyperintensity. Series: {series}. Method: {method}. "
        f"Lesion pages on the {anatomy_name}.",
        parameters_before=[
            f"core: {core_def}",
            f"ADC source: {analysis.adc_source}",
            f"perfusion: {method}",
        ],
        procedure=MR_BRAIN_WITH_CONTRAST if perfusion else MR_BRAIN,
        method=MR_PERFUSION_METHOD if perfusion else DIFFUSION_METHOD,
        region_methods={"core": DIFFUSION_METHOD},
    )


def _source_headers(study: StudyInventory, acquisition: MriAcquisition) -> list[InstanceHeader]:
    """Images of the diffusion series whose grid the MR results lie on (see
    :func:`mri_source_paths`)."""
    if acquisition.dwi is not None and acquisition.dwi_series_uids:
        uids = list(acquisition.dwi_series_uids)
        shape = acquisition.dwi.by_b_value[max(acquisition.dwi.by_b_value)].shape
    elif acquisition.adc is not None and acquisition.adc_series_uid is not None:
        uids = [acquisition.adc_series_uid]
        shape = acquisition.adc.values.shape
    else:
        raise ValueError(f"study {study.study_uid}: no DWI or ADC series to reference")
    best: list[InstanceHeader] = []
    best_positions = -1
    for uid in uids:
        kept = [
            h
            for h in study.instances_of(uid)
            if (h.rows, h.columns) == shape[1:] and h.position_mm is not None
        ]
        positions = len({tuple(round(v, 2) for v in h.position_mm or ()) for h in kept})
        if positions >= best_positions:
            best, best_positions = kept, positions
    return best


def mri_source_paths(study: StudyInventory, acquisition: MriAcquisition) -> list[Path]:
    """Files of the diffusion series whose grid the MR results lie on.

    The DWI series (the one covering most slice positions when the b-values are split
    over several), or the scanner ADC map when there is no usable DWI; the result
    objects reference one image per slice of it.

    Parameters
    ----------
    study : StudyInventory
        The study the acquisition was assembled from.
    acquisition : MriAcquisition
        Its assembled series.

    Returns
    -------
    list of Path
        Each file once (a multi-frame or mosaic file holds several slices).

    Raises
    ------
    ValueError
        If the acquisition has no diffusion series.
    """
    return list(dict.fromkeys(h.path for h in _source_headers(study, acquisition)))


def mri_source_references(study: StudyInventory, acquisition: MriAcquisition) -> list[Dataset]:
    """Headers the MR result objects reference: one per slice, or one multi-frame image.

    Classic images: the earliest image at each slice position
    (:func:`~strokeflow.report.source_references.load_source_references`). An enhanced
    multi-frame image is referenced as itself. A Siemens mosaic holds every slice in one
    image whose own position is that of the tiled picture: each slice is referenced by
    a copy of the mosaic's header that carries the slice's true geometry (from the CSA
    header, as assembled), so that every object lies where the slices are.

    Raises
    ------
    ValueError
        If the acquisition has no diffusion series or its files cannot be read.
    """
    headers = _source_headers(study, acquisition)
    if all(h.frame_index is None for h in headers):
        return load_source_references([h.path for h in headers])
    first = min(headers, key=lambda h: (h.instance_number or 0, str(h.path)))
    ds = pydicom.dcmread(first.path, stop_before_pixels=True)
    if first.stored_shape is None:
        return [ds]  # enhanced multi-frame: its functional groups place every frame
    tiles = sorted((h for h in headers if h.path == first.path), key=lambda h: h.frame_index or 0)
    out: list[Dataset] = []
    for h in tiles:
        tile = copy.deepcopy(ds)
        assert h.position_mm is not None and h.orientation is not None
        tile.ImagePositionPatient = [f"{v:.6f}" for v in h.position_mm]
        tile.ImageOrientationPatient = [f"{v:.8f}" for v in h.orientation]
        tile.Rows, tile.Columns = h.rows, h.columns
        out.append(tile)
    return out
