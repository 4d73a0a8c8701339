"""Batched Levenberg-Marquardt: many small independent least-squares problems in one loop.

Every problem (a row of the batch) has its own parameters, damping and convergence flag; one
Python-level iteration advances them all with a handful of array operations, so thousands of
curves cost little more than one. Normal equations with Marquardt's diagonal scaling,
``(J^T J + lam diag(J^T J)) step = -J^T r``, are solved in closed form for 2 parameters and
by batched Cholesky otherwise. One residual-and-Jacobian evaluation per iteration: what the
loop carries of a problem is its parameters and the Gram matrix of ``[J | r]`` (``J^T J``,
``J^T r`` and ``r^T r`` in one (P+1, P+1) block), packed into one state column, so accepting a
step is a single ``where``. Finished problems leave the working set in bulk, and the loop
stops as soon as every one has converged.

Where the time goes: once the fast problems have converged, a few slow ones keep the loop
running, and each iteration then costs what its ~60 array operations cost to dispatch, not
their arithmetic. A torch operation on a CPU costs several microseconds to dispatch, a numpy
operation under one, so on the CPU the loop runs on numpy views of the same memory (no
copies); on any other device it runs on torch tensors. The loop is written once against
either namespace (``CPU_LOOP`` selects the CPU one; the tests run both and compare).

Example:
    >>> def fn(theta, x, y):             # r_i = a x_i + b - y_i for each row
    ...     r = theta[:, :1] * x + theta[:, 1:] - y
    ...     return normal_equations(r, torch.stack([x, torch.ones_like(r)], 1))  # J^T (B, P, M)
    >>> res = levenberg_marquardt(fn, torch.zeros(len(y), 2, dtype=torch.float64), (x, y))
    >>> res.converged.all()
    tensor(True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["LMResult", "levenberg_marquardt", "normal_equations", "solve_spd"]

NormalEqFn = Callable[..., tuple[Tensor, Tensor, Tensor]]
# gram_fn(theta (P, B), *data (..., B)) -> Gram of [J | r], flattened row-major, ((P+1)^2, B)
GramFn = Callable[..., Any]
# valley = (direction(theta (P, R), step (P, R)) -> (R,) +1/-1/0 or None,
#           jump(theta (P, R), direction (R,), *data (..., R)) -> (P, R) far points)
Valley = tuple[Callable[..., Any], Callable[..., Any]]

# "numpy": the loop's bookkeeping on CPU runs on numpy views of the tensors (several times less
# dispatch overhead per operation); "torch": torch everywhere (what every other device uses).
CPU_LOOP = "numpy"

# a valley jump is tried only by a problem whose last two steps were accepted, lightly damped
# and each lowered its cost by less than this fraction (a creep; a problem converging normally
# takes one such step before its convergence test ends it), from this iteration on (before
# it, most problems are still on their way down, and a jump could carry them into another
# basin)
CREEP_RTOL = 1e-2
JUMP_FIRST_ITER = 4
# ... and on every JUMP_EVERY-th iteration (a jump costs an extra evaluation of the creeping
# problems; every other iteration halves that at no cost in iterations on the benchmark)
JUMP_EVERY = 2

# starts of one curve ("siblings": several rows of one group) that meet on their way down end in
# the same minimum: where two siblings are within ``merge_tol`` (default MERGE_TOL) of each
# other in every parameter, the one with the higher cost leaves the loop, marked merged and
# unconverged (the fitter never keeps a merged start while another is left); tested on
# iterations MERGE_FIRST_ITER..MERGE_LAST_ITER and every MERGE_EVERY-th after (the test costs a
# few array operations; most siblings meet by the fourth iteration)
MERGE_TOL = 1e-2
MERGE_FIRST_ITER = 2
MERGE_LAST_ITER = 6
MERGE_EVERY = 4

# finished problems leave the working set in bulk once this fraction of it is done: compaction
# costs a gather per state and data array, about what an iteration on them costs
COMPACT_FRACTION = 0.5


class LMResult(NamedTuple):
    """Result of :func:`levenberg_marquardt` (one entry per batch row).

    Attributes:
        theta: (B, P) parameters at the end.
        cost: (B,) sum of squared residuals at ``theta``.
        jtj: (B, P, P) ``J^T J`` at ``theta`` (Gauss-Newton curvature, for covariances).
        converged: (B,) True where a convergence test passed with a finite cost.
        iterations: number of loop iterations run (the slowest row's count).
        lam: (B,) damping at the end (to resume).
        merged: (B,) True where a row stopped early, unconverged, because another start of
            its curve met it with a lower cost (see ``groups`` of the loop); None without
            groups, or where every group has one row.
    """

    theta: Tensor
    cost: Tensor
    jtj: Tensor
    converged: Tensor
    iterations: int
    lam: Tensor
    merged: Tensor | None = None


def normal_equations(r: Tensor, jt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sum(r^2), J^T J, J^T r)`` from residuals (B, M) and the transposed Jacobian (B, P, M)."""
    a = (jt.unsqueeze(2) * jt.unsqueeze(1)).sum(-1)
    g = (jt * r.unsqueeze(1)).sum(-1)
    return (r * r).sum(-1), a, g


def solve_spd(a: Tensor, b: Tensor) -> Tensor:
    """Solve batched symmetric positive definite systems ``a x = b``; a (B, P, P), b (B, P).

    Closed forms for P <= 2 (the JMAK case) avoid a LAPACK call per batch; larger P uses
    Cholesky. Singular rows give non-finite entries, which the caller rejects.
    """
    p = a.shape[-1]
    if p == 1:
        return b / a[:, 0]
    if p == 2:
        a00, a01, a11 = a[:, 0, 0], a[:, 0, 1], a[:, 1, 1]
        det = a00 * a11 - a01 * a01
        x0 = (a11 * b[:, 0] - a01 * b[:, 1]) / det
        x1 = (a00 * b[:, 1] - a01 * b[:, 0]) / det
        return torch.stack([x0, x1], dim=-1)
    chol, info = torch.linalg.cholesky_ex(a)
    x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
    return torch.where((info == 0).unsqueeze(-1), x, torch.full_like(x, float("nan")))


# -- array namespaces ---------------------------------------------------------------------------
def loop_namespace(device: torch.device | str) -> ModuleType:
    """The array namespace the loop runs in for tensors on ``device``: numpy on the CPU (unless
    ``CPU_LOOP`` says "torch"), torch elsewhere."""
    cpu = torch.device(device).type == "cpu"
    return np if cpu and CPU_LOOP == "numpy" else torch


def to_namespace(t: Tensor, xp: ModuleType) -> Any:
    """A tensor as an array of ``xp`` (a view sharing memory on the CPU)."""
    return t.detach().numpy() if xp is np else t


def from_namespace(a: Any) -> Tensor:
    """An array of either namespace as a tensor (a view sharing memory for numpy)."""
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def _solve_spd_xp(a: Any, b: Any, xp: ModuleType) -> Any:
    """``a x = b`` for batch-last a (P, P, B), b (P, B), through torch's batched Cholesky."""
    at = from_namespace(a).permute(2, 0, 1)
    x = solve_spd(at, from_namespace(b).T)
    return to_namespace(x.T.contiguous(), xp)


# -- the loop ------------------------------------------------------------------------------------
def _lm_loop(gram_fn: GramFn, theta0: Any, data: tuple[Any, ...], *, xp: ModuleType,
             max_iter: int = 200, ftol: float = 1.5e-8, xtol: float = 1.5e-8,
             gtol: float = 1e-12, stall_tol: float = 1e-4, stall_window: int = 5,
             lam0: float | Any = 1e-3, valley: Valley | None = None,
             groups: Any | None = None, merge_tol: float = MERGE_TOL) -> LMResult:
    """The one loop behind every fit. Batch-last throughout: ``theta0`` (P, B) and each data
    array (..., B) in namespace ``xp``; ``gram_fn(theta, *data)`` returns the flattened Gram
    matrix ((P+1)^2, B). Tests and arguments as in :func:`levenberg_marquardt`.

    ``valley``: optional jumps along flat valleys, as a model's
    :meth:`~matmeta.models.parametric.ParametricModel.fit_valley_direction` and
    :meth:`~matmeta.models.parametric.ParametricModel.fit_valley_jump` define them. A jump is
    tried by a creeping problem only (see ``CREEP_RTOL``) and replaces its point only where it
    lowers the cost, so each problem's cost still falls monotonically and every convergence
    test applies as without jumps. (Which minimum a problem ends in can differ from a run
    without jumps; on the benchmark and the tests' step-like curves it is never a worse one.)

    ``groups``: optional (B,) array of non-negative integers, the curve of each row, with the
    rows of one curve consecutive (several starts of one curve; rows of one group that are not
    next to each other are merged less, never wrongly). Siblings within ``merge_tol`` of each
    other in every parameter are merged: the one later in the strict order (cost, then row)
    stops where it is, unconverged and flagged in ``LMResult.merged``, and the other carries on
    to the minimum both were heading for. The order is strict, so the cheapest row of a group
    is never stopped; a row that failed (a non-finite start) or was merged stops no other."""
    p, b = theta0.shape
    k = p + 1
    width = p + k * k  # a state column: theta (P), then the Gram matrix row-major
    ic = width - 1  # r^T r, the cost
    is_np = xp is np
    dtype = theta0.dtype
    finfo = np.finfo(dtype) if is_np else torch.finfo(dtype)
    tiny, eps = float(finfo.tiny), float(finfo.eps)
    ftol2, xtol2 = 1.0 - ftol, xtol * xtol

    def full(n: int, value: float, like: Any) -> Any:
        return (np.full(n, value, dtype=like.dtype) if is_np
                else torch.full((n,), value, dtype=like.dtype, device=like.device))

    def clamp_min(x: Any, value: float) -> Any:
        return np.maximum(x, value) if is_np else x.clamp_min(value)

    def amax0(x: Any) -> Any:
        return x.max(0) if is_np else x.amax(0)

    def flip(x: Any) -> Any:  # rows in reverse (a view in numpy)
        return x[::-1] if is_np else x.flip(0)

    def nonzero(mask: Any) -> Any:
        return mask.nonzero()[0] if is_np else mask.nonzero()[:, 0]

    rows = np.arange(b) if is_np else torch.arange(b, device=theta0.device)
    aux = tuple(data)
    s = xp.concatenate([theta0, gram_fn(theta0, *aux)], 0)
    out = s.copy() if is_np else s.clone()
    conv_out = xp.zeros_like(rows, dtype=bool) if is_np else torch.zeros_like(rows,
                                                                              dtype=torch.bool)
    if isinstance(lam0, (int, float)):
        lam = full(b, float(lam0), s)
    else:
        lam = lam0.copy() if is_np else lam0.clone()
    lam_out = lam.copy() if is_np else lam.clone()
    nu = full(b, 2.0, s)
    # problems that start at a non-finite point cannot move; they leave at once, unconverged
    done = ~xp.isfinite(s).all(0)
    failed = done.copy() if is_np else done.clone()
    crept = xp.zeros_like(done)
    merged_out = xp.zeros_like(conv_out)
    ref_cost = s[ic]
    grp = groups
    # how far apart (in rows) two siblings can be: the largest group's size - 1
    shifts = 0
    if grp is not None and b > 1:
        shifts = int((grp.bincount() if isinstance(grp, Tensor) else np.bincount(grp)).max()) - 1

    it = 0
    # numpy warns where torch stays silent (a singular system, exp overflow): both give inf/NaN,
    # which the tests below reject
    with np.errstate(all="ignore") if is_np else contextlib.nullcontext():
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
            n_done = int(done.sum())
            if n_done and (n_done == len(rows) or n_done >= COMPACT_FRACTION * len(rows)):
                # retire finished problems in bulk, once half are done: compaction costs a
                # gather per state and data array, about what an iteration on them costs
                idx = rows[done]
                out[:, idx], conv_out[idx], lam_out[idx] = s[:, done], ~failed[done], lam[done]
                if n_done == len(rows):
                    break
                keep = ~done
                rows, s, lam, nu, ref_cost, failed, crept = (
                    rows[keep], s[:, keep], lam[keep], nu[keep], ref_cost[keep], failed[keep],
                    crept[keep])
                if shifts:
                    grp = grp[keep]
                aux = tuple(t[..., keep] for t in aux)
                done = xp.zeros_like(failed)
            cost = s[ic]
            if p == 2:
                # closed-form damped 2x2 solve on views of the state (no copies): the flattened
                # Gram matrix [[a00, a01, g0], [a01, a11, g1], [g0, g1, cost]] holds the
                # diagonal (a00, a11) at a stride of 4 and J^T r = (g0, g1) side by side in its
                # last row, so each line below does both parameters in one operation
                diag, g, a01 = s[2:7:4], s[8:10], s[3]
                # Marquardt's scaling: damp each parameter by its own curvature (floored, so
                # that a parameter without effect still gets a finite step)
                fl = xp.maximum(s[2], s[6]) * eps + tiny
                lam_s = lam * xp.maximum(diag, fl)
                m = diag + lam_s
                det = m[0] * m[1] - a01 * a01
                # (s0, s1) = ((a01 g1 - m11 g0), (a01 g0 - m00 g1)) / det
                step = (a01 * flip(g) - flip(m) * g) / det
                # (pairs summed as two rows: a reduction call costs more than an addition)
                pred = step * (lam_s * step - g)
                pred = pred[0] + pred[1]
                step2 = step * step
                step2 = step2[0] + step2[1]
                norm = xp.hypot(s[0], s[1])
                gmax = xp.maximum(xp.abs(s[8]), xp.abs(s[9]))
            else:
                blk = s[p:].reshape(k, k, -1)
                a, g = blk[:p, :p], blk[:p, p]
                diag = xp.stack([a[i, i] for i in range(p)])
                floor = amax0(diag) * eps + tiny
                lam_s = lam * xp.maximum(diag, floor)
                damped = a.copy() if is_np else a.clone()
                for i in range(p):
                    damped[i, i] = damped[i, i] + lam_s[i]
                step = _solve_spd_xp(damped, -g, xp)
                pred = (step * (lam_s * step - g)).sum(0)
                step2 = (step * step).sum(0)
                norm = ((s[:p] * s[:p]).sum(0)) ** 0.5
                gmax = amax0(xp.abs(g))
            trial = s[:p] + step
            new = xp.concatenate([trial, gram_fn(trial, *aux)], 0)
            cost_new = new[ic]
            # NaN compares False: a non-finite trial is simply rejected; finished ones stay put
            ok = (cost_new <= cost) > done
            # Nielsen's damping update: shrink by the gain ratio on success, grow geometrically
            # on repeated failure (fewer iterations in curved valleys than fixed factors)
            rho = (cost - cost_new) / clamp_min(pred, tiny)
            cube = 2.0 * rho - 1.0
            shrink = clamp_min(1.0 - cube * cube * cube, 1.0 / 3.0)
            light = lam <= 1.0
            # converged: an accepted, lightly damped step lowered the cost by less than
            # ftol*cost, or an accepted step shorter than xtol*(|theta| + xtol), or a vanishing
            # gradient
            small = ok & (((cost_new >= ftol2 * cost - tiny) & light)
                          | (step2 <= xtol2 * (norm + xtol) ** 2))
            small = small | (gmax <= gtol * (cost + gtol))
            s = xp.where(ok, new, s)
            lam = xp.where(ok, clamp_min(lam * shrink, 1e-15), xp.where(done, lam, lam * nu))
            nu = xp.where(ok, 2.0, nu * 2.0)
            # a problem whose damping has exploded cannot lower its cost any further: it sits
            # in a minimum to working precision
            done = done | small | (lam > 1e12)
            if valley is not None:
                creep = (ok & light & (cost_new > (1.0 - CREEP_RTOL) * cost)) > done
                creep, crept = creep & crept, creep
                if it >= JUMP_FIRST_ITER and it % JUMP_EVERY == 0 and bool(creep.any()):
                    sel = nonzero(creep)
                    direction = valley[0](s[:p, sel], step[:, sel])
                    if direction is None:  # the model has no valleys
                        valley = None
                    else:
                        along = direction != 0
                        if bool(along.any()):
                            sel, direction = sel[along], direction[along]
                            old = s[:, sel]
                            aux_sel = tuple(t[..., sel] for t in aux)
                            far = valley[1](old[:p], direction, *aux_sel)
                            cand = xp.concatenate([far, gram_fn(far, *aux_sel)], 0)
                            s[:, sel] = xp.where(cand[ic] < old[ic], cand, old)
            if shifts and (MERGE_FIRST_ITER <= it <= MERGE_LAST_ITER or it % MERGE_EVERY == 0):
                # siblings that have met: the higher-cost one stops (as failed: unconverged)
                th, c = s[:p], s[ic]
                for d in range(1, min(shifts, len(grp) - 1) + 1):
                    near = ((grp[d:] == grp[:-d]) & ~failed[d:] & ~failed[:-d]
                            & (amax0(xp.abs(th[:, d:] - th[:, :-d])) < merge_tol))
                    if not bool(near.any()):
                        continue
                    # a strict order, (cost, row): equal costs stop the later row
                    later_worse = c[d:] >= c[:-d]
                    stop_later = near & later_worse & ~done[d:]
                    stop_earlier = near & ~later_worse & ~done[:-d]
                    failed[d:] |= stop_later
                    failed[:-d] |= stop_earlier
                    merged_out[rows[d:][stop_later]] = True
                    merged_out[rows[:-d][stop_earlier]] = True
                    done[d:] |= stop_later
                    done[:-d] |= stop_earlier
            if it % stall_window == 0:
                done = done | ((s[ic] >= (1.0 - stall_tol) * ref_cost) & (lam <= 1.0))
                ref_cost = s[ic]
        else:
            # iteration cap: what is still running is not converged
            out[:, rows], conv_out[rows], lam_out[rows] = s, done & ~failed, lam
    out_t = from_namespace(out)
    cost_out = out_t[ic]
    # a problem that started non-finite keeps its start and an infinite cost
    cost_out = torch.where(torch.isfinite(cost_out), cost_out,
                           torch.full_like(cost_out, float("inf")))
    conv_t = from_namespace(conv_out) & torch.isfinite(cost_out)
    blk = out_t[p:].reshape(k, k, -1)[:p, :p].permute(2, 0, 1)
    return LMResult(out_t[:p].T.contiguous(), cost_out.contiguous(), blk.contiguous(), conv_t,
                    it, from_namespace(lam_out), from_namespace(merged_out) if shifts else None)


def levenberg_marquardt(
    fn: NormalEqFn,
    theta0: Tensor,
    data: tuple[Tensor, ...] = (),
    *,
    max_iter: int = 200,
    ftol: float = 1.5e-8,
    xtol: float = 1.5e-8,
    gtol: float = 1e-12,
    stall_tol: float = 1e-4,
    stall_window: int = 5,
    lam0: float | Tensor = 1e-3,
) -> LMResult:
    """Minimise ``sum(r(theta)^2)`` independently for every row of ``theta0``.

    Rows that have converged leave the working set, so late iterations cost only what the
    remaining rows need; the loop ends when none is left.

    Example:
        >>> res = levenberg_marquardt(fn, theta0, (x, y))   # fn(theta, x, y) -> (r, J)
        >>> res.theta, res.converged

    Args:
        fn: the batched normal equations at ``theta``:
            ``fn(theta (B, P), *data) -> (cost (B,), J^T J (B, P, P), J^T r (B, P))`` with
            ``cost = sum(r^2)``. Use :func:`normal_equations` to build them from residuals
            and a transposed Jacobian.
        theta0: (B, P) starting points.
        data: tensors with a leading batch dimension B handed to ``fn`` (row-aligned with
            ``theta``; the working set is taken from them).
        max_iter: iteration cap (rows not converged by then are flagged).
        ftol: a row has converged when an accepted, lightly damped step (``lam <= 1``) lowers
            its cost by less than ``ftol * cost`` (MINPACK's default tolerance).
        xtol: ... or when its accepted step is shorter than ``xtol * (|theta| + xtol)``.
        gtol: ... or when ``max |J^T r|`` falls below ``gtol * (cost + gtol)``.
        stall_tol: ... or when ``stall_window`` iterations together lowered its cost by less
            than ``stall_tol * cost`` while lightly damped (``lam <= 1``): a flat valley (e.g. a
            step-like curve driving n to infinity) where the objective has converged but a
            parameter is undetermined; the standard errors then show it.
        stall_window: iterations per stall test.
        lam0: initial damping (a float or a (B,) tensor, e.g. carried over from a screening
            run).

    Returns:
        An :class:`LMResult`.
    """
    xp = loop_namespace(theta0.device)
    p = theta0.shape[1]

    def gram_fn(theta: Any, *aux: Any) -> Any:
        # batch-last arrays in, batch-first tensors to ``fn`` (views, no copies)
        th = from_namespace(theta).T
        cost, a, g = fn(th, *(from_namespace(t).movedim(-1, 0) for t in aux))
        top = torch.cat([a, g.unsqueeze(-1)], dim=-1)
        bottom = torch.cat([g, cost.unsqueeze(-1)], dim=-1).unsqueeze(1)
        full = torch.cat([top, bottom], dim=1).reshape(len(th), (p + 1) ** 2)
        return to_namespace(full.T.contiguous(), xp)

    lam = lam0 if isinstance(lam0, (int, float)) else to_namespace(
        torch.as_tensor(lam0, dtype=theta0.dtype, device=theta0.device), xp)
    return _lm_loop(gram_fn, to_namespace(theta0.T.contiguous(), xp),
                    tuple(to_namespace(t.movedim(0, -1), xp) for t in data), xp=xp,
                    max_iter=max_iter, ftol=ftol, xtol=xtol, gtol=gtol, stall_tol=stall_tol,
                    stall_window=stall_window, lam0=lam)
