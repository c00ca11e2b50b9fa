"""DSC perfusion maps, typed as what they are: CBF and CBV in relative units.

The deconvolution (:func:`strokeflow.analysis.maps.compute_maps`) returns fields named in
absolute units because CT has a calibrated concentration scale (HU). DSC has none: the
delta-R2* of tissue and artery relate to concentration through relaxivities that are not
known per voxel, so its flow and volume are only comparable within one study.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strokeflow.analysis.maps import PerfusionMaps


@dataclass(frozen=True)
class RelativePerfusionMaps:
    """DSC maps on the perfusion grid ``(z, y, x)`` (NaN outside the tissue).

    Attributes
    ----------
    cbf_relative : numpy.ndarray
        Cerebral blood flow in relative (arbitrary, study-specific) units, float32.
    cbv_relative : numpy.ndarray
        Cerebral blood volume in relative units, float32.
    mtt_s, tmax_s, ttp_s : numpy.ndarray
        Mean transit time, Tmax and time to peak in seconds: times need no scale.
    """

    cbf_relative: np.ndarray
    cbv_relative: np.ndarray
    mtt_s: np.ndarray
    tmax_s: np.ndarray
    ttp_s: np.ndarray

    @classmethod
    def from_deconvolution(cls, maps: PerfusionMaps) -> RelativePerfusionMaps:
        """The maps of a DSC deconvolution, with its flow and volume marked relative."""
        return cls(
            cbf_relative=maps.cbf_ml_100g_min,
            cbv_relative=maps.cbv_ml_100g,
            mtt_s=maps.mtt_s,
            tmax_s=maps.tmax_s,
            ttp_s=maps.ttp_s,
        )
