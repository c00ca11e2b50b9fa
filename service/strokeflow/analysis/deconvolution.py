"""Truncated-SVD deconvolution of tissue curves by the arterial input function.

Two methods share one implementation:

* **oSVD** (Wu et al. 2003): the arterial input is zero-padded to ``L = 2N`` samples and
  written as a block-circulant matrix, which makes the deconvolution invariant to a
  shift of the tissue curve (bolus delay). Its SVD is computed once; the residue of
  every voxel is then computed for a short ladder of truncation thresholds, and each
  voxel keeps the least regularised one whose oscillation index is below a target.
* **sSVD** (Østergaard et al. 1996): the lower-triangular convolution matrix truncated
  at a fixed 20 % of the largest singular value. Kept as the delay-sensitive baseline.

Both discretise the convolution integral with the residue held constant over each
sample interval ``[j dt, (j+1) dt)`` and the arterial curve varying linearly between
samples, giving the weights ``dt * (a[m-1] + a[m]) / 2``. A residue starts with a jump
(R(0) = 1), which this basis represents exactly when the bolus arrives on a sample; the
Simpson-like "linear" weights of Østergaard 1996 spread the jump over the preceding
interval, which on ``benchmarks/accuracy.py`` delayed Tmax by a further ~0.5 s.
Sample ``j`` of a residue therefore stands for the interval starting at ``j dt``.

All voxels of a chunk are solved together with float32 matrix products: one product
projects the curves on the singular vectors; each rung of the ladder then adds its
newly kept singular components to the residues and to their second differences with
thin products (the whole ladder costs about two full products), and a last product
builds every voxel's residue at the rank of the rung it kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Relative singular-value thresholds tried by the oSVD, most regularised first. Chosen
#: on ``benchmarks/accuracy.py``: the top rung damps pure-noise voxels, the bottom rung
#: resolves short transit times (MTT 2 s at 1 s sampling) on noise-free curves.
OSVD_THRESHOLDS: tuple[float, ...] = (0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01)

#: Fixed relative threshold of the standard SVD (Østergaard 1996).
SSVD_THRESHOLD = 0.2

#: Voxels per block of the threshold ladder: ~2 MB residue arrays for 60 frames.
_CACHE_BLOCK_VOXELS = 4096


@dataclass(frozen=True)
class Deconvolver:
    """Truncated-SVD inverse of one arterial input, ready to apply to many voxels.

    Attributes
    ----------
    u_t : numpy.ndarray
        ``(L, N)`` float32: transposed left singular vectors, restricted to the first
        ``N`` rows of the (zero-padded) curve; the padding rows would multiply zeros.
    v : numpy.ndarray
        ``(L, L)`` float32 right singular vectors as columns, by decreasing singular value.
    inv_s : numpy.ndarray
        ``(L,)`` float32 inverse singular values.
    ranks : tuple of int
        Number of singular components kept by each rung of the threshold ladder, most
        regularised (fewest components) first.
    thresholds : tuple of float
        Relative singular-value thresholds of the rungs, in the same order.
    oscillation_index : float or None
        Target oscillation index; None for a fixed threshold (a single rung).
    circulant : bool
        True for the block-circulant (delay-insensitive) formulation, whose residues
        have ``L = 2N`` samples and whose samples ``N..2N-1`` are negative lags.
    v_and_d2v : numpy.ndarray
        ``(L + m, L)`` float32: ``v`` stacked on the ``m`` second differences of its
        columns at ``oscillation_stride`` (``second_differences``), so that the residues
        and the oscillation index of every rung cost one thin product rather than passes
        over the residues.
    oscillation_stride : float
        Spacing, in grid samples, of the residue samples whose second differences make the
        oscillation index (1: neighbouring samples).
    """

    u_t: np.ndarray
    v: np.ndarray
    inv_s: np.ndarray
    ranks: tuple[int, ...]
    thresholds: tuple[float, ...]
    oscillation_index: float | None
    circulant: bool
    v_and_d2v: np.ndarray
    oscillation_stride: float = 1.0

    @property
    def n_frames(self) -> int:
        """Number of time points ``N`` of the curves this deconvolver accepts."""
        return int(self.u_t.shape[1])

    @property
    def n_lags(self) -> int:
        """Number of samples ``L`` of the residues it returns."""
        return int(self.v.shape[0])

    def residues(self, concentration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Deconvolve a chunk of tissue curves.

        Parameters
        ----------
        concentration : numpy.ndarray
            ``(N, nvox)`` tissue enhancement, in the units of the arterial input.

        Returns
        -------
        residues : numpy.ndarray
            ``(L, nvox)`` float32 flow-scaled residues ``k = F * R`` in 1/s.
        rung : numpy.ndarray
            ``(nvox,)`` int index into ``thresholds`` of the rung each voxel kept.

        Raises
        ------
        ValueError
            If the curves do not have ``N`` time points.
        """
        conc = np.asarray(concentration, dtype=np.float32)
        if conc.ndim != 2 or conc.shape[0] != self.n_frames:
            raise ValueError(
                f"concentration must be (t, nvox) with t = {self.n_frames} frames like the "
                f"arterial input; got shape {conc.shape}"
            )
        # Coefficients of every voxel on the singular vectors, scaled by 1/s: the residue
        # truncated at rank r is v[:, :r] @ w[:r].
        w = self.u_t @ conc
        w *= self.inv_s[:, None]
        rung = np.zeros(conc.shape[1], dtype=np.intp)
        if self.oscillation_index is not None:
            # The ladder makes many passes over the residues: blocks that stay in the
            # CPU cache make it ~2x faster than one pass over the whole chunk. (The cores
            # are shared out one level up: compute_maps runs whole chunks in threads.)
            target = self.oscillation_index
            for start in range(0, conc.shape[1], _CACHE_BLOCK_VOXELS):
                block = slice(start, start + _CACHE_BLOCK_VOXELS)
                rung[block] = self._choose_rungs(np.ascontiguousarray(w[:, block]), target)
        r_max = max(self.ranks)
        # Drop, voxel by voxel, the components beyond the rank of its rung, and build
        # all residues with one product.
        w = w[:r_max]
        ranks = np.asarray(self.ranks)[rung]
        w *= np.arange(r_max)[:, None] < ranks[None, :]
        return self.v[:, :r_max] @ w, rung

    def _choose_rungs(self, w: np.ndarray, target: float) -> np.ndarray:
        """Per voxel, the least regularised rung whose oscillation index is below target."""
        nvox = w.shape[1]
        # Residues (first L rows) and their second differences (last L - 2 rows) grow
        # together by the newly kept components: one thin product per rung.
        both = np.zeros((self.v_and_d2v.shape[0], nvox), dtype=np.float32)
        k, d2 = both[: self.n_lags], both[self.n_lags :]
        scratch = np.empty_like(d2)
        rung = np.zeros(nvox, dtype=np.intp)
        prev = 0
        for i, r in enumerate(self.ranks):
            if r > prev:
                both += self.v_and_d2v[:, prev:r] @ w[prev:r]
                prev = r
            if i == 0:
                # Most regularised rung: the fallback, whatever its oscillation.
                continue
            np.abs(d2, out=scratch)
            roughness = scratch.sum(axis=0)
            peak = k.max(axis=0)
            # O < target  <=>  roughness < target * L * peak, which needs peak > 0.
            ok = (peak > 0) & (roughness < target * self.n_lags * peak)
            # The ladder runs from most to least regularised: a later rung that still
            # oscillates little enough replaces the earlier choice.
            rung[ok] = i
        return rung


def oscillation_index(residues: np.ndarray, stride: float = 1.0) -> np.ndarray:
    """Oscillation index of residue functions (Wu et al. 2003).

    ``O = sum_j |k[j] - 2 k[j-s] + k[j-2s]| / (L * max_j k)`` with ``L`` the number of
    samples and ``s`` the stride: the mean absolute second difference relative to the
    peak (``second_differences``; ``s = 1`` is Wu's index on the grid itself).

    Parameters
    ----------
    residues : numpy.ndarray
        ``(L, nvox)`` residue functions.
    stride : float
        Spacing (grid samples, >= 1) of the samples each second difference takes.

    Returns
    -------
    numpy.ndarray
        ``(nvox,)`` float32 index; ``inf`` where the residue has no positive peak.
    """
    k = np.asarray(residues, dtype=np.float32)
    d2 = np.abs(second_differences(k, stride)).sum(axis=0)
    peak = k.max(axis=0) * np.float32(k.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        oi = np.where(peak > 0, d2 / peak, np.inf)
    return oi.astype(np.float32)


def second_differences(values: np.ndarray, stride: float = 1.0) -> np.ndarray:
    """Second differences along the first axis at a stride of ``stride`` samples.

    ``d[j] = x[j] - 2 x(j - s) + x(j - 2 s)`` for every ``j >= ceil(2 s)``, ``x`` read
    between samples by linear interpolation (exact samples for an integer stride). It is
    linear in ``values``, so it applies to singular vectors as to residues.

    Parameters
    ----------
    values : numpy.ndarray
        ``(L, ...)`` samples on the grid.
    stride : float
        Spacing in samples, >= 1; 1 gives ``x[j] - 2 x[j-1] + x[j-2]``.

    Returns
    -------
    numpy.ndarray
        ``(L - ceil(2 s), ...)`` second differences, in the dtype of ``values``.

    Raises
    ------
    ValueError
        If the stride is below 1, not finite, or leaves no second difference.
    """
    x = np.asarray(values)
    if not 1.0 <= stride < float("inf"):
        raise ValueError(f"stride must be a finite number of samples >= 1; got {stride}")
    n = x.shape[0]
    start = int(np.ceil(2.0 * stride - 1e-9))
    if start >= n:
        raise ValueError(f"a stride of {stride:g} samples leaves no second difference of {n}")
    if stride == 1.0:
        return x[2:] - 2 * x[1:-1] + x[:-2]
    j = np.arange(start, n)

    def lagged(lag: float) -> np.ndarray:
        pos = j - lag
        lo = np.floor(pos + 1e-9).astype(np.intp)
        hi = np.minimum(lo + 1, n - 1)
        frac = (pos - lo).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - frac) * x[lo] + frac * x[hi]

    return x[j] - 2 * lagged(stride) + lagged(2.0 * stride)


def aif_matrix(aif: np.ndarray, step_s: float, *, circulant: bool) -> np.ndarray:
    """Discrete convolution matrix of an arterial input.

    Parameters
    ----------
    aif : numpy.ndarray
        ``(N,)`` arterial enhancement on the uniform grid.
    step_s : float
        Grid step in seconds.
    circulant : bool
        True: ``(2N, 2N)`` block-circulant matrix of the zero-padded input (Wu 2003).
        False: ``(N, N)`` lower-triangular matrix (Østergaard 1996).

    Returns
    -------
    numpy.ndarray
        float64 matrix ``A`` such that ``A @ k`` approximates the convolution of the
        input with a residue ``k`` sampled on the grid.
    """
    a = np.asarray(aif, dtype=np.float64)
    n = a.size
    size = 2 * n if circulant else n
    padded = np.zeros(size + 1)
    padded[1 : n + 1] = a
    # Weight of residue interval [j dt, (j+1) dt) at lag m = i - j: the trapezoid-rule
    # integral of the arterial curve between samples m-1 and m (sample -1 is taken as 0,
    # the pre-bolus baseline).
    weighted = step_s * (padded[:-1] + padded[1:]) / 2.0
    lag = np.arange(size)[:, None] - np.arange(size)[None, :]
    if circulant:
        return weighted[lag % size]
    return np.where(lag >= 0, weighted[np.clip(lag, 0, None)], 0.0)


def osvd_deconvolver(
    aif: np.ndarray,
    step_s: float,
    *,
    oscillation_index: float = 0.095,
    thresholds: tuple[float, ...] = OSVD_THRESHOLDS,
    oscillation_stride: float = 1.0,
) -> Deconvolver:
    """Block-circulant SVD with a per-voxel oscillation-index threshold (oSVD).

    Parameters
    ----------
    aif : numpy.ndarray
        ``(N,)`` arterial enhancement on the uniform grid.
    step_s : float
        Grid step in seconds.
    oscillation_index : float
        Target: each voxel keeps the least regularised rung below it.
    thresholds : tuple of float
        Relative singular-value thresholds of the ladder, in (0, 1).
    oscillation_stride : float
        Grid samples between the residue samples the oscillation index compares (>= 1):
        the acquisition's frame interval over the grid step reads the index of the
        residue at the rate the curves were sampled, not at the finer grid they were
        interpolated to (``analysis.ctp``: the delay-aligned flow).

    Returns
    -------
    Deconvolver

    Raises
    ------
    ValueError
        If the arterial input has no positive enhancement, the ladder is empty or the
        stride is below 1.
    """
    if not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
        raise ValueError(f"thresholds must be a non-empty ladder in (0, 1); got {thresholds}")
    if not oscillation_index > 0:
        raise ValueError(f"oscillation_index must be positive; got {oscillation_index}")
    if not 1.0 <= oscillation_stride < float("inf"):
        raise ValueError(f"oscillation_stride must be >= 1 sample; got {oscillation_stride}")
    ladder = tuple(sorted(thresholds, reverse=True))
    return _build(aif, step_s, ladder, oscillation_index, circulant=True, stride=oscillation_stride)


def ssvd_deconvolver(
    aif: np.ndarray, step_s: float, *, threshold: float = SSVD_THRESHOLD
) -> Deconvolver:
    """Standard truncated SVD of the lower-triangular matrix (sSVD, Østergaard 1996).

    Parameters
    ----------
    aif : numpy.ndarray
        ``(N,)`` arterial enhancement on the uniform grid.
    step_s : float
        Grid step in seconds.
    threshold : float
        Relative singular-value threshold, in (0, 1).

    Returns
    -------
    Deconvolver

    Raises
    ------
    ValueError
        If the arterial input has no positive enhancement or the threshold is invalid.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1); got {threshold}")
    return _build(aif, step_s, (threshold,), None, circulant=False)


def _build(
    aif: np.ndarray,
    step_s: float,
    ladder: tuple[float, ...],
    target: float | None,
    *,
    circulant: bool,
    stride: float = 1.0,
) -> Deconvolver:
    a = np.asarray(aif, dtype=np.float64)
    if a.ndim != 1 or a.size < 3:
        raise ValueError(f"aif must be a 1D curve of at least 3 samples; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("arterial input curve contains non-finite values")
    if not step_s > 0:
        raise ValueError(f"step_s must be positive; got {step_s}")
    if a.max() <= 0:
        raise ValueError(
            "arterial input shows no enhancement (maximum <= 0 above baseline); "
            "check the arterial voxel selection and the baseline subtraction"
        )
    n = a.size
    u, s, vt = np.linalg.svd(aif_matrix(a, step_s, circulant=circulant))
    ranks = tuple(int(np.count_nonzero(s >= t * s[0])) for t in ladder)
    inv_s = np.zeros_like(s)
    kept = s >= ladder[-1] * s[0]
    inv_s[kept] = 1.0 / s[kept]
    v = vt.T
    return Deconvolver(
        u_t=np.ascontiguousarray(u[:n].T, dtype=np.float32),
        v=np.ascontiguousarray(v, dtype=np.float32),
        inv_s=inv_s.astype(np.float32),
        ranks=ranks,
        thresholds=ladder,
        oscillation_index=target,
        circulant=circulant,
        v_and_d2v=np.ascontiguousarray(
            np.vstack([v, second_differences(v, stride)]), dtype=np.float32
        ),
        oscillation_stride=stride,
    )
