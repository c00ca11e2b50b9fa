"""NIfTI export of the maps and masks (CT perfusion and MR), for researchers."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from strokeflow.analysis.ctp import CtpAnalysis
from strokeflow.analysis.lesions import TmaxRegion
from strokeflow.analysis.mri import MriAnalysis
from strokeflow.analysis.stages import usable_cpus
from strokeflow.analysis.volume import Geometry

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_affine(geometry: Geometry) -> np.ndarray:
    """RAS affine for data stored in ``(x, y, z)`` order (NIfTI's convention)."""
    return _LPS_TO_RAS @ geometry.affine_lps


def save_volume(volume_zyx: np.ndarray, geometry: Geometry, path: Path) -> Path:
    """Write a ``(z, y, x)`` array as a compressed NIfTI file; returns the path."""
    data = np.ascontiguousarray(np.transpose(volume_zyx, (2, 1, 0)))
    if data.dtype == bool:
        data = data.astype(np.uint8)
    image = nib.Nifti1Image(data, nifti_affine(geometry))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return path


def save_volumes(volumes: Sequence[tuple[np.ndarray, Geometry, Path]]) -> list[Path]:
    """:func:`save_volume` of each ``(volume_zyx, geometry, path)``, files side by side.

    Each file is gzip-compressed and written by a thread of its own, one per core:
    zlib and the file system calls release the GIL, and the compression is most of the
    time (the ten CT maps of the 640-image study: ~50 ms of zlib, ~45 ms of opening
    files, one after the other). The files are those of :func:`save_volume`, byte for
    byte.

    Parameters
    ----------
    volumes : sequence of (numpy.ndarray, Geometry, Path)
        Each ``(z, y, x)`` array, its geometry and the ``.nii.gz`` path to write.

    Returns
    -------
    list of Path
        The paths written, in the order of ``volumes``.
    """
    if len(volumes) < 2:
        return [save_volume(*item) for item in volumes]
    with ThreadPoolExecutor(max_workers=min(len(volumes), usable_cpus())) as pool:
        return list(pool.map(lambda item: save_volume(*item), volumes))


def write_ctp_maps(analysis: CtpAnalysis, out_dir: Path) -> list[Path]:
    """Write CBF, CBV, MTT, Tmax, TTP, rCBF and the lesion masks into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    g = analysis.geometry
    maps = analysis.maps
    volumes = {
        "cbf_ml_100g_min": maps.cbf_ml_100g_min,
        "cbv_ml_100g": maps.cbv_ml_100g,
        "mtt_s": maps.mtt_s,
        "tmax_s": maps.tmax_s,
        "ttp_s": maps.ttp_s,
        "rcbf": analysis.rcbf,
        "core_mask": analysis.core,
        "tmax6_mask": analysis.tmax6,
        "tmax10_mask": analysis.tmax10,
        **_extra_masks(analysis.tmax_extra),
        "tissue_mask": analysis.masks.tissue,
    }
    return save_volumes([(v, g, out_dir / f"{name}.nii.gz") for name, v in volumes.items()])


def _extra_masks(regions: tuple[TmaxRegion, ...]) -> dict[str, np.ndarray]:
    """A site's extra Tmax masks, named by their threshold (``tmax8_mask``)."""
    return {f"tmax{r.threshold_s:g}_mask": r.mask for r in regions}


def write_mri_maps(analysis: MriAnalysis, out_dir: Path) -> list[Path]:
    """Write the ADC, masks (DWI space) and perfusion maps (PWI space) as NIfTI."""
    out_dir.mkdir(parents=True, exist_ok=True)
    g = analysis.geometry
    volumes: dict[str, np.ndarray] = {
        "adc_um2_s": analysis.adc_um2_s,
        "core_mask": analysis.core,
        "tissue_mask": analysis.tissue,
    }
    if analysis.tmax6 is not None and analysis.tmax10 is not None:
        volumes["tmax6_mask"] = analysis.tmax6
        volumes["tmax10_mask"] = analysis.tmax10
        volumes.update(_extra_masks(analysis.tmax_extra))
    items = [(v, g, out_dir / f"{name}.nii.gz") for name, v in volumes.items()]
    maps, pwi_geometry = analysis.maps, analysis.pwi_geometry
    if maps is not None and pwi_geometry is not None:
        pwi = {
            "pwi_cbf_relative": maps.cbf_relative,
            "pwi_cbv_relative": maps.cbv_relative,
            "pwi_mtt_s": maps.mtt_s,
            "pwi_tmax_s": maps.tmax_s,
            "pwi_ttp_s": maps.ttp_s,
        }
        items += [(v, pwi_geometry, out_dir / f"{name}.nii.gz") for name, v in pwi.items()]
    return save_volumes(items)
