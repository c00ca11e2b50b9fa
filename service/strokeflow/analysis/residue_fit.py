"""Least-squares fit of a residue model to tissue curves, seeded by the SVD.

The lag of the maximum of a truncated-SVD residue is a biased Tmax: regularisation
smooths the jump at the residue's onset into a peak that comes later (more so at coarse
sampling and in noisy voxels), and the maximum of a box-like residue can land anywhere on
its plateau (several seconds late). Here each tissue curve is instead matched to a
dictionary of model tissue curves ``F * (C_a conv R)(t - d)``, with ``R`` the survival
function of a gamma distribution of transit times (shape 1 is the exponential residue;
large shapes approach the box), over a grid of shapes, mean transit times and delays.

For each model curve the flow ``F`` is the linear least-squares solution, so a model's
residual is ``|c|^2 - p^2`` with ``p`` the projection of the tissue curve on the unit-norm
model curve: one matrix product per group of voxels gives every residual. The delays
searched are a window around a seed from the SVD residue (where it rises to half its
peak), which keeps that product small. At each delay the best shape and transit time are
kept (profile likelihood); the delay and flow returned are the likelihood-weighted means
over the delays of the window, with the noise variance estimated from the best fit's
residual, so that near-equal fits are averaged rather than left to whichever noise makes
best.

Model curves are convolved on a grid four times finer than the sampling (the arterial
input linearly interpolated, the midpoint rule), so a residue that starts with a jump
between samples is represented without the discretisation error of the SVD's matrix.

The fitted flow is returned but ``analysis.maps`` does not use it: at transit times short
against the arterial bolus, flow, transit time, shape and delay trade off along a ridge of
near-equal fits (only CBV and the first moment of the curve are determined), so any flow
estimate there depends on the residue shape assumed; see ``docs/deconvolution.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincc

#: Gamma shapes of the transit-time distribution: geometric from the exponential residue
#: (1) to a near-box (large shape, narrow distribution around the MTT).
FIT_SHAPES: tuple[float, ...] = (1.0, 2.5, 6.25, 15.6)
#: Mean transit times of the grid (s): geometric, ratio 1.4, 1 to 40 s.
FIT_MTTS_S: tuple[float, ...] = tuple(float(1.4**i) for i in range(12))
#: Delay grid step (s) and search half-width around the seed (s).
FIT_DELAY_STEP_S = 0.5
FIT_DELAY_HALF_WIDTH_S = 3.0
#: Delays of the table (s): tissue up to 3 s earlier than the arterial input (an input
#: measured downstream of the tissue's supply) to 24 s later.
_MIN_DELAY_S = -3.0
_MAX_DELAY_S = 24.0
#: Two-delay fit: closest pair of delays tried (s), and the drop of the residual sum of
#: squares, in noise variances of the pair's residual, that accepts a pair.
TWO_DELAY_MIN_SEPARATION_S = 1.0
TWO_DELAY_MIN_GAIN = 8.0
#: Two-delay fit: (shape, MTT) models searched for the pair's shared model, the best of
#: the single-delay profile (docs/deconvolution.md, "A cheaper two-delay Tmax").
TWO_DELAY_CANDIDATE_MODELS = 6
_OVERSAMPLE = 4
_BLOCK_VOXELS = 4096


@dataclass(frozen=True)
class ResidueFit:
    """Result of fitting the model table to a group of voxels.

    Attributes
    ----------
    flow_per_s : numpy.ndarray
        ``(nvox,)`` float64 posterior-mean ``F`` (1/s), 0 where no model correlates
        positively.
    delay_s : numpy.ndarray
        ``(nvox,)`` float64 posterior-mean delay (s); the seed where ``F`` is 0.
    window_start : numpy.ndarray
        ``(nvox,)`` int index into ``ResidueFitter.delays_s`` of the first delay of each
        voxel's search window.
    weights : numpy.ndarray
        ``(window, nvox)`` float64 likelihood weights of the window's delays (summing to 1,
        all 0 where ``F`` is 0): the weights of the posterior means above.
    models : numpy.ndarray
        ``(window, nvox)`` int best (shape, MTT) model at each delay of the window, an
        index into the last axis of ``ResidueFitter.atoms``.
    pair : TwoDelayFit or None
        The best pair of delays in the same window (``fit_models(two_delays=True)``).
    """

    flow_per_s: np.ndarray
    delay_s: np.ndarray
    window_start: np.ndarray
    weights: np.ndarray
    models: np.ndarray
    pair: TwoDelayFit | None = None


@dataclass(frozen=True)
class TwoDelayFit:
    """Best fit of two delayed model curves to each voxel (``ResidueFitter.fit_two_delays``).

    A voxel that spatial filtering or partial volume has mixed with a neighbour reached at
    another time holds two delays; one delayed model follows the earlier rise of the two.
    Each component is the best (shape, MTT) model of the single-delay profile at its delay,
    their amplitudes the non-negative least-squares solution of the pair.

    Attributes
    ----------
    early_delay_s, late_delay_s : numpy.ndarray
        ``(nvox,)`` float64 delays (s) of the two components of the best pair; both the
        single-delay fit's best delay where no pair is accepted.
    late_share : numpy.ndarray
        ``(nvox,)`` float64 share of the later component in the pair's blood volume
        (flow times the model's MTT), 0 where no pair is accepted.
    accepted : numpy.ndarray
        ``(nvox,)`` bool: the pair explains the curve better than one delay by more than
        ``min_gain`` times the noise variance of the pair's residual.
    flow_per_s : numpy.ndarray
        ``(nvox,)`` float64 total flow (1/s) of the two components (their amplitudes'
        sum) where a pair is accepted; the single-delay fit's flow elsewhere.
    """

    early_delay_s: np.ndarray
    late_delay_s: np.ndarray
    late_share: np.ndarray
    accepted: np.ndarray
    flow_per_s: np.ndarray

    def dominant_delay_s(self, fallback_s: np.ndarray) -> np.ndarray:
        """Delay of the component holding most of the blood volume; ``fallback_s`` where
        no pair is accepted.

        Parameters
        ----------
        fallback_s : numpy.ndarray
            ``(nvox,)`` delay (s) of voxels without an accepted pair.

        Returns
        -------
        numpy.ndarray
            ``(nvox,)`` float64 delay (s).
        """
        dominant = np.where(self.late_share >= 0.5, self.late_delay_s, self.early_delay_s)
        return np.where(self.accepted, dominant, fallback_s)


@dataclass(frozen=True)
class ResidueFitter:
    """Model tissue curves of one arterial input, ready to fit many voxels.

    Attributes
    ----------
    atoms : numpy.ndarray
        ``(n_delays, N, n_models)`` float32 unit-norm model tissue curves; the model axis
        runs over (shape, MTT) pairs.
    norms : numpy.ndarray
        ``(n_delays, n_models)`` float64 norms of the unit-flow curves before
        normalisation: ``F = projection / norm``.
    delays_s : numpy.ndarray
        ``(n_delays,)`` delays of the table in seconds.
    half_width : int
        Delay grid points searched either side of the seed.
    model_mtt_s : numpy.ndarray
        ``(n_models,)`` mean transit time (s) of each model.
    """

    atoms: np.ndarray
    norms: np.ndarray
    delays_s: np.ndarray
    half_width: int
    model_mtt_s: np.ndarray

    def fit(self, curves: np.ndarray, seed_delay_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flow-scaled residue height and delay of the best model for each voxel.

        Parameters
        ----------
        curves : numpy.ndarray
            ``(N, nvox)`` tissue enhancement, in the units of the arterial input.
        seed_delay_s : numpy.ndarray
            ``(nvox,)`` delay (s) around which the search window is centred.

        Returns
        -------
        flow_per_s : numpy.ndarray
            ``(nvox,)`` float64 ``F`` (1/s), 0 where no model correlates positively.
        delay_s : numpy.ndarray
            ``(nvox,)`` float64 delay of the best model (s); the seed where ``F`` is 0.
        """
        fit = self.fit_models(curves, seed_delay_s)
        return fit.flow_per_s, fit.delay_s

    def fit_models(
        self,
        curves: np.ndarray,
        seed_delay_s: np.ndarray,
        *,
        two_delays: bool | np.ndarray = False,
        min_separation_s: float = TWO_DELAY_MIN_SEPARATION_S,
        min_gain: float = TWO_DELAY_MIN_GAIN,
        candidate_models: int | None = TWO_DELAY_CANDIDATE_MODELS,
    ) -> ResidueFit:
        """Like ``fit``, and also which table entry (delay, model) fits each voxel best.

        Parameters
        ----------
        curves : numpy.ndarray
            ``(N, nvox)`` tissue enhancement, in the units of the arterial input.
        seed_delay_s : numpy.ndarray
            ``(nvox,)`` delay (s) around which the search window is centred.
        two_delays : bool or numpy.ndarray
            Also fit the best pair of delays in the same window (``ResidueFit.pair``,
            see ``fit_two_delays``), from the same projections of the curves; a
            ``(nvox,)`` bool array fits pairs for those voxels only (no pair elsewhere).
        min_separation_s, min_gain, candidate_models
            Of the pair search, as in ``fit_two_delays``.

        Returns
        -------
        ResidueFit
        """
        c, groups = self._groups(curves, seed_delay_s)
        step = float(self.delays_s[1] - self.delays_s[0])
        min_sep = max(1, int(np.ceil(min_separation_s / step - 1e-9)))
        h = self.half_width
        nvox = c.shape[1]
        flow = np.zeros(nvox)
        delay = np.nan_to_num(np.asarray(seed_delay_s, dtype=np.float64), nan=0.0).copy()
        start_idx = np.zeros(nvox, dtype=np.intp)
        weights = np.zeros((2 * h + 1, nvox))
        models = np.zeros((2 * h + 1, nvox), dtype=np.intp)
        early, late, share = np.zeros(nvox), np.zeros(nvox), np.zeros(nvox)
        pair_flow = np.zeros(nvox)
        accepted = np.zeros(nvox, dtype=bool)
        pair_voxels = np.broadcast_to(np.asarray(two_delays, dtype=bool), (nvox,))
        same_model = self._same_model_products() if pair_voxels.any() else None
        for first, atoms, norms, vox in self._blocks(groups):
            cv = c[:, vox]
            proj = (atoms.T @ cv).reshape(norms.shape[0], norms.shape[1], vox.size)
            f, d, w, m = _profile_fit(proj, norms, cv)
            found = f > 0
            flow[vox] = f
            delay[vox[found]] = self.delays_s[first] + d[found] * step
            start_idx[vox] = first
            weights[:, vox] = w
            models[:, vox] = m
            sub = pair_voxels[vox]
            if same_model is not None and sub.any():
                window = slice(first, first + 2 * h + 1)
                i, j, sh, ok, pf = _best_pair(
                    proj[:, :, sub],
                    same_model[window, window],
                    norms,
                    cv[:, sub],
                    min_sep,
                    min_gain,
                    candidate_models,
                )
                t0, at = self.delays_s[first], vox[sub]
                early[at], late[at], share[at] = t0 + i * step, t0 + j * step, sh
                accepted[at] = ok
                pair_flow[at] = pf
        pair = None
        if pair_voxels.any() or two_delays is True:
            pair = TwoDelayFit(
                early_delay_s=np.where(accepted, early, delay),
                late_delay_s=np.where(accepted, late, delay),
                late_share=np.where(accepted, share, 0.0),
                accepted=accepted,
                flow_per_s=np.where(accepted, pair_flow, flow),
            )
        return ResidueFit(flow, delay, start_idx, weights, models, pair)

    def fit_two_delays(
        self,
        curves: np.ndarray,
        seed_delay_s: np.ndarray,
        *,
        min_separation_s: float = TWO_DELAY_MIN_SEPARATION_S,
        min_gain: float = TWO_DELAY_MIN_GAIN,
        candidate_models: int | None = TWO_DELAY_CANDIDATE_MODELS,
    ) -> TwoDelayFit:
        """Best pair of delayed model curves for each voxel (``TwoDelayFit``).

        Parameters
        ----------
        curves : numpy.ndarray
            ``(N, nvox)`` tissue enhancement, in the units of the arterial input.
        seed_delay_s : numpy.ndarray
            ``(nvox,)`` delay (s) around which the window of both delays is centred; for
            a mixed voxel, between the earlier and the later component.
        min_separation_s : float
            Pairs closer than this are not tried (near-collinear model curves).
        min_gain : float
            A pair is accepted where it lowers the residual sum of squares below that of
            the best single delay of the window by more than this many times the noise
            variance of the pair's residual.
        candidate_models : int or None
            The shared (shape, MTT) model of a pair is searched among the models that
            fit the voxel best at any single delay of the window (this many, ranked by
            their best projection); None searches the whole table. The pair search costs
            in proportion to the models searched, and a model that fits neither
            component alone rarely fits their sum.

        Returns
        -------
        TwoDelayFit
        """
        fit = self.fit_models(
            curves,
            seed_delay_s,
            two_delays=True,
            min_separation_s=min_separation_s,
            min_gain=min_gain,
            candidate_models=candidate_models,
        )
        assert fit.pair is not None
        return fit.pair

    def _same_model_products(self) -> np.ndarray:
        """``(n_delays, n_delays, n_models)`` float32 inner products of each model's unit
        curve at two delays: all the pair search needs of the curves' Gram matrix."""
        return np.einsum("anm,bnm->abm", self.atoms, self.atoms, optimize=True)

    def _groups(
        self, curves: np.ndarray, seed_delay_s: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """float32 curves and the voxels of each search window (index of its first delay)."""
        c = np.asarray(curves, dtype=np.float32)
        h = self.half_width
        step = float(self.delays_s[1] - self.delays_s[0])
        seed = np.nan_to_num(np.asarray(seed_delay_s, dtype=np.float64), nan=0.0)
        centre = np.rint((seed - self.delays_s[0]) / step).astype(np.intp)
        centre = np.clip(centre, h, self.delays_s.size - 1 - h)
        return c, [(int(ci) - h, np.flatnonzero(centre == ci)) for ci in np.unique(centre)]

    def _blocks(
        self, groups: list[tuple[int, np.ndarray]]
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Per block of voxels: first delay index, window atoms ``(N, window * models)``,
        window norms and the voxel indices."""
        h = self.half_width
        for first, group in groups:
            window = slice(first, first + 2 * h + 1)
            # (N, window * models): every model at every delay of the window.
            atoms = self.atoms[window].transpose(1, 0, 2).reshape(self.atoms.shape[1], -1)
            norms = self.norms[window]
            for start in range(0, group.size, _BLOCK_VOXELS):
                yield first, atoms, norms, group[start : start + _BLOCK_VOXELS]


def _profile_fit(
    proj: np.ndarray, norms: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Posterior-mean flow and delay index of a block over the delays of the window, the
    normalised weights of those delays and the best model at each, from the
    ``(window, models, nvox)`` projections of the curves ``c`` on the window's unit model
    curves."""
    n_win = norms.shape[0]
    # Profile over the models: the best shape and transit time at each delay.
    best_model = np.argmax(proj, axis=1)
    p_delay = np.take_along_axis(proj, best_model[:, None, :], axis=1)[:, 0]
    flow_delay = p_delay / norms[np.arange(n_win)[:, None], best_model]
    p_best = p_delay.max(axis=0)
    # Residual sum of squares at delay i is |c|^2 - p_i^2; the noise variance is
    # estimated from the best fit's residual (N - 3 degrees of freedom).
    sse_min = np.maximum((c * c).sum(axis=0) - p_best * p_best, 0.0)
    var = np.maximum(sse_min / max(c.shape[0] - 3, 1), 1e-12)
    # Near-equal fits at neighbouring delays (noise; flow, transit time and delay
    # trading off at short transit times) are averaged by their likelihood rather
    # than left to whichever noise makes best.
    positive = p_delay > 0
    log_w = (np.where(positive, p_delay, 0.0) ** 2 - p_best**2) / (2.0 * var)
    w = np.exp(log_w) * positive
    wsum = w.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (w * flow_delay).sum(axis=0) / wsum
        d = (w * np.arange(n_win)[:, None]).sum(axis=0) / wsum
    found = (p_best > 0) & (wsum > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_norm = np.where(found, w / wsum, 0.0)
    return np.where(found, f, 0.0), np.where(found, d, 0.0), w_norm, best_model


def _best_pair(
    proj: np.ndarray,
    same_model: np.ndarray,
    norms: np.ndarray,
    c: np.ndarray,
    min_sep: int,
    min_gain: float,
    candidate_models: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best pair of window delays for each voxel of a block.

    ``proj`` is the ``(window, models, nvox)`` projection on every unit model curve of
    the window, ``same_model`` the ``(window, window, models)`` inner products of each
    model's curves at two delays of the window. Both components share one
    (shape, MTT) model: a model profiled on the whole mixed curve would stretch its
    transit time over both, which biases the shares. With ``candidate_models`` only that
    many models per voxel are searched, those with the largest projection at any delay.
    The pairs are searched on every other delay of the window first, then the best
    pair's delays are moved by up to one step each (the explained energy is smooth in
    the delays: a coarse grid finds its basin at a third of the cost). Returns the delay
    indices of the pair (early, late), the later component's share of the blood volume
    (of the flow, as the model is shared), whether the pair is accepted and the pair's
    total flow (0 where it is not).
    """
    n_win, n_models, nvox = proj.shape
    energy = (c * c).sum(axis=0).astype(np.float64)
    p_best = np.maximum(proj.max(axis=(0, 1)), 0.0).astype(np.float64)
    # The inverse determinant of the pair's 2 x 2 normal equations (NaN: near-collinear).
    diag = np.arange(n_models)
    gram_diag = np.ascontiguousarray(same_model, dtype=np.float32)
    den = 1.0 - gram_diag * gram_diag
    with np.errstate(divide="ignore"):
        inv_den = np.where(den > 1e-4, 1.0 / den, np.nan).astype(np.float32)
    if candidate_models is not None and candidate_models < n_models:
        k = max(1, candidate_models)
        cand = np.argpartition(-proj.max(axis=0), k - 1, axis=0)[:k]  # (k, nvox)
        proj = np.take_along_axis(proj, cand[None], axis=1)
    else:
        cand = np.broadcast_to(diag[:, None], (n_models, nvox))
    proj = np.asarray(proj, dtype=np.float32)
    cols = np.arange(nvox)
    best_e = np.full(nvox, -np.inf, dtype=np.float32)
    best = np.zeros((2, nvox), dtype=np.intp)
    best_m = np.zeros(nvox, dtype=np.intp)
    coarse = np.arange(0, n_win, 2)
    for i in coarse:
        # Every later coarse delay j at once: arrays (j, models, nvox).
        js = coarse[coarse >= i + min_sep]
        if js.size == 0:
            continue
        # Gathered per row: the whole (window, window, k, nvox) gather costs more than
        # the arithmetic.
        e = _pair_energy(
            proj[i][None], proj[js], gram_diag[i, js][:, cand], inv_den[i, js][:, cand]
        )
        top = np.argmax(e.reshape(-1, nvox), axis=0)
        jj, mm = np.divmod(top, e.shape[1])
        e_top = e[jj, mm, cols]
        better = e_top > best_e
        best_e = np.where(better, e_top, best_e)
        best[0] = np.where(better, i, best[0])
        best[1] = np.where(better, js[jj], best[1])
        best_m = np.where(better, mm, best_m)
    # Refine: both delays moved by -1..+1 step, the coarse pair's model kept.
    i0, j0, m0 = best[0].copy(), best[1].copy(), best_m
    model = cand[m0, cols]
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ri, rj = i0 + di, j0 + dj
            valid = (ri >= 0) & (rj < n_win) & (rj - ri >= min_sep) & np.isfinite(best_e)
            ri, rj = np.clip(ri, 0, n_win - 1), np.clip(rj, 0, n_win - 1)
            e = _pair_energy(
                proj[ri, m0, cols],
                proj[rj, m0, cols],
                gram_diag[ri, rj, model],
                inv_den[ri, rj, model],
            )
            better = valid & (e > best_e)
            best_e = np.where(better, e, best_e)
            best[0] = np.where(better, ri, best[0])
            best[1] = np.where(better, rj, best[1])
    bi, bj = best
    pi, pj = proj[bi, m0, cols].astype(np.float64), proj[bj, m0, cols].astype(np.float64)
    g = gram_diag[bi, bj, model].astype(np.float64)
    inv = inv_den[bi, bj, model].astype(np.float64)
    flow_i = (pi - g * pj) * inv / norms[bi, model]
    flow_j = (pj - g * pi) * inv / norms[bj, model]
    best_e64 = best_e.astype(np.float64)
    # Two more parameters than one delay (the second delay and amplitude).
    var = np.maximum(energy - best_e64, 0.0) / max(c.shape[0] - 5, 1)
    gain = best_e64 - p_best**2
    ok = np.isfinite(best_e64) & (gain > min_gain * np.maximum(var, 1e-12))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(ok, flow_j / (flow_i + flow_j), 0.0)
    total = np.where(ok, flow_i + flow_j, 0.0)
    return best[0], best[1], np.nan_to_num(share), ok, np.nan_to_num(total)


def _pair_energy(pi: np.ndarray, pj: np.ndarray, g: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Energy of a curve explained by two unit curves with non-negative amplitudes.

    ``pi``, ``pj`` are the curve's projections on the two, ``g`` their inner product and
    ``inv`` ``1 / (1 - g^2)`` (NaN where near-collinear); the amplitudes are
    ``(pi - g pj) inv`` and ``(pj - g pi) inv``. -inf where an amplitude is not positive.
    """
    u = pi - g * pj
    v = pj - g * pi
    e = (u * pi + v * pj) * inv
    return np.where((u > 0) & (v > 0) & np.isfinite(e), e, -np.inf)


def residue_fitter(
    aif: np.ndarray,
    step_s: float,
    *,
    shapes: tuple[float, ...] = FIT_SHAPES,
    mtts_s: tuple[float, ...] = FIT_MTTS_S,
    delay_step_s: float = FIT_DELAY_STEP_S,
    half_width_s: float = FIT_DELAY_HALF_WIDTH_S,
) -> ResidueFitter:
    """Dictionary of model tissue curves for one arterial input.

    Parameters
    ----------
    aif : numpy.ndarray
        ``(N,)`` arterial enhancement on the uniform grid.
    step_s : float
        Grid step in seconds.
    shapes : tuple of float
        Gamma shapes of the transit-time distribution.
    mtts_s : tuple of float
        Mean transit times of the grid (s).
    delay_step_s, half_width_s : float
        Delay grid step and search half-width around the seed (s).

    Returns
    -------
    ResidueFitter

    Raises
    ------
    ValueError
        If the arterial input is not a finite curve with positive enhancement, or a
        grid is empty or non-positive.
    """
    a = np.asarray(aif, dtype=np.float64)
    if a.ndim != 1 or a.size < 3 or not np.all(np.isfinite(a)) or a.max() <= 0:
        raise ValueError("arterial input must be a finite 1D curve with positive enhancement")
    if not step_s > 0 or not delay_step_s > 0 or not half_width_s >= delay_step_s:
        raise ValueError(
            f"steps must be positive and the half-width at least one step; got step {step_s}, "
            f"delay step {delay_step_s}, half-width {half_width_s}"
        )
    if not shapes or not mtts_s or min(shapes) <= 0 or min(mtts_s) <= 0:
        raise ValueError("shapes and MTTs must be non-empty and positive")
    n = a.size
    t = np.arange(n) * step_s
    fine_dt = step_s / _OVERSAMPLE
    # The table is built beyond the last sample so that negative delays (shifts to the
    # left) still find model values; the input is held at its last value there.
    extra_s = -_MIN_DELAY_S + step_s
    fine = np.arange(0.0, t[-1] + extra_s + fine_dt / 2, fine_dt)
    # Midpoint rule: the residue at (j + 1/2) dt meets the input at t - (j + 1/2) dt, so
    # the input is taken half a fine step early (a residue starting with a jump would
    # otherwise gain half a fine step of area).
    a_fine = np.interp(fine - 0.5 * fine_dt, t, a)
    tau = (np.arange(fine.size) + 0.5) * fine_dt
    models, model_mtt = [], []
    for shape in shapes:
        for mtt in mtts_s:
            models.append(gammaincc(shape, shape * tau / mtt))
            model_mtt.append(mtt)
    r = np.stack(models, axis=1)  # (fine, models)
    spec = np.fft.rfft(a_fine, 2 * fine.size)[:, None] * np.fft.rfft(r, 2 * fine.size, axis=0)
    conv = np.fft.irfft(spec, 2 * fine.size, axis=0)[: fine.size] * fine_dt
    delays = np.arange(_MIN_DELAY_S, _MAX_DELAY_S + delay_step_s / 2, delay_step_s)
    table = np.empty((delays.size, n, r.shape[1]))
    for i, d in enumerate(delays):
        pos = (t - d) / fine_dt
        lo = np.clip(np.floor(pos).astype(np.intp), 0, fine.size - 2)
        w = np.clip(pos - lo, 0.0, 1.0)[:, None]
        shifted = (1.0 - w) * conv[lo] + w * conv[lo + 1]
        shifted[t - d < 0] = 0.0
        table[i] = shifted
    norms = np.linalg.norm(table, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        atoms = np.where(norms[:, None, :] > 0, table / norms[:, None, :], 0.0)
    return ResidueFitter(
        atoms=np.ascontiguousarray(atoms, dtype=np.float32),
        norms=np.where(norms > 0, norms, np.inf),
        delays_s=delays,
        half_width=max(1, round(half_width_s / delay_step_s)),
        model_mtt_s=np.asarray(model_mtt, dtype=np.float64),
    )
