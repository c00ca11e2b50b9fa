"""The source images a result references: the earliest image at each slice position.

Every result object of an analysis references one image per slice of the analysed
series (SourceImageSequence, the SEG's source images, the SR's evidence); for a
perfusion series that is the first time point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from strokeflow.assemble.series import parse_da_s, parse_dt_s, parse_tm_s
from strokeflow.report.segmentation import is_enhanced, sort_along_normal


def _time_key(ds: Dataset) -> tuple[float, int]:
    """Acquisition time of an image (seconds), then InstanceNumber, for ordering."""
    value: float | None = None
    if ds.get("AcquisitionDateTime"):
        value = parse_dt_s(str(ds.AcquisitionDateTime))
    for tm, da in (("AcquisitionTime", "AcquisitionDate"), ("ContentTime", "ContentDate")):
        if value is None and ds.get(tm):
            clock = parse_tm_s(str(ds.get(tm)))
            day = parse_da_s(str(ds.get(da, "") or "")) or 0.0
            value = None if clock is None else clock + day
    if value is None:
        tpi = _number(ds.get("TemporalPositionIdentifier"))
        value = tpi if tpi is not None else math.inf
    return value, int(_number(ds.get("InstanceNumber")) or 0)


def _number(value: object) -> float | None:
    """A header number, or ``None`` when missing or not a number (a scanner's or a
    sender's garbled IS value must not stop the result objects)."""
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def load_source_references(source_paths: Sequence[Path]) -> list[Dataset]:
    """Headers of the earliest image at every slice position of the analysed series.

    Parameters
    ----------
    source_paths : sequence of Path
        Files of the perfusion acquisition (e.g. ``CtpAcquisition.source_paths``).

    Returns
    -------
    list of pydicom.Dataset
        One header per slice (no pixel data), ordered along the slice normal; or the
        enhanced multi-frame image itself.

    Raises
    ------
    ValueError
        If no file has a position and orientation.
    """
    best: dict[float, tuple[tuple[float, int], Dataset]] = {}
    for path in dict.fromkeys(source_paths):  # a multi-frame file is named once per frame
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if is_enhanced(ds):
            return [ds]  # one enhanced image: its functional groups place every frame
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        position = round(float(np.dot(np.cross(iop[:3], iop[3:]), ds.ImagePositionPatient)), 2)
        key = _time_key(ds)
        if position not in best or key < best[position][0]:
            best[position] = (key, ds)
    if not best:
        raise ValueError(
            f"none of {len(source_paths)} source files has ImagePositionPatient and "
            "ImageOrientationPatient"
        )
    return sort_along_normal([ds for _, ds in best.values()])
