"""Batched Levenberg-Marquardt: many small independent least-squares problems in one loop.

Every problem (a row of the batch) has its own parameters, damping and convergence flag; one
Python-level iteration advances them all with a handful of tensor operations, so thousands of
curves cost little more than one. Normal equations with Marquardt's diagonal scaling,
``(J^T J + lam diag(J^T J)) step = -J^T r``, are solved in closed form for 1-2 parameters and
by batched Cholesky above. One residual-and-Jacobian evaluation per iteration: the trial point's
normal equations are kept when the step is accepted (only (B, P, P) and (B, P) tensors are
carried, never the Jacobian). Finished rows leave the working set in bulk, and the loop stops
as soon as every row has converged.

Example:
    >>> def fn(theta, x, y):             # r_i = a x_i + b - y_i for each row
    ...     r = theta[:, :1] * x + theta[:, 1:] - y
    ...     return normal_equations(r, torch.stack([x, torch.ones_like(r)], 1))  # J^T (B, P, M)
    >>> res = levenberg_marquardt(fn, torch.zeros(len(y), 2, dtype=torch.float64), (x, y))
    >>> res.converged.all()
    tensor(True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LMResult", "levenberg_marquardt", "normal_equations", "solve_spd"]

NormalEqFn = Callable[..., tuple[Tensor, Tensor, Tensor]]


class LMResult(NamedTuple):
    """Result of :func:`levenberg_marquardt` (one entry per batch row).

    Attributes:
        theta: (B, P) parameters at the end.
        cost: (B,) sum of squared residuals at ``theta``.
        jtj: (B, P, P) ``J^T J`` at ``theta`` (Gauss-Newton curvature, for covariances).
        converged: (B,) True where a convergence test passed with a finite cost.
        iterations: number of loop iterations run (the slowest row's count).
        lam: (B,) damping at the end (to resume).
    """

    theta: Tensor
    cost: Tensor
    jtj: Tensor
    converged: Tensor
    iterations: int
    lam: Tensor


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


def _damped_step(a: Tensor, g: Tensor, lam_s: Tensor, eye: Tensor) -> Tensor:
    """``-(a + diag(lam_s))^-1 g``; for two parameters in closed form straight from the entries
    (a third of the tensor operations of building the damped matrix and indexing it)."""
    if a.shape[-1] != 2:
        return solve_spd(a + lam_s.unsqueeze(-1) * eye, -g)
    a00, a01, _, a11 = a.flatten(1).unbind(-1)
    l0, l1 = lam_s.unbind(-1)
    g0, g1 = g.unbind(-1)
    m00, m11 = a00 + l0, a11 + l1
    det = m00 * m11 - a01 * a01
    return torch.stack([a01 * g1 - m11 * g0, a01 * g0 - m00 * g1], dim=-1) / det.unsqueeze(-1)


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
            and a transposed Jacobian; a law with few parameters may fuse them (JMAK does).
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
    b, p = theta0.shape
    dev, dtype = theta0.device, theta0.dtype

    # outputs, filled as rows leave the working set
    theta_out = theta0.clone()
    cost_out = torch.full((b,), float("inf"), dtype=dtype, device=dev)
    a_out = torch.full((b, p, p), float("nan"), dtype=dtype, device=dev)
    conv_out = torch.zeros(b, dtype=torch.bool, device=dev)
    lam_out = torch.zeros_like(cost_out)

    rows = torch.arange(b, device=dev)
    theta, aux = theta0, tuple(data)
    cost, a, g = fn(theta, *aux)
    cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
    lam = torch.as_tensor(lam0, dtype=dtype, device=dev).expand(b).clone()
    nu = torch.full_like(lam, 2.0)
    eye = torch.eye(p, dtype=dtype, device=dev)
    tiny = torch.finfo(dtype).tiny
    eps = torch.finfo(dtype).eps
    ftol2, xtol2 = 1.0 - ftol, xtol * xtol
    # rows that start at a non-finite point cannot move; they leave at once, unconverged
    done = ~torch.isfinite(cost) | ~torch.isfinite(a).flatten(1).all(-1)
    failed = done.clone()
    ref_cost = cost

    # Per-operation overhead, not arithmetic, sets the cost of an iteration once few rows are
    # left (several microseconds per tensor operation on a CPU, a kernel launch each on a GPU),
    # and a few step-like curves keep the loop running for tens of iterations: the loop below
    # keeps its tensor operations few.
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        n_done = int(done.sum())
        if n_done and (n_done == len(rows) or 4 * n_done >= len(rows)):
            # retire finished rows in bulk: compaction costs a gather per state tensor
            idx = rows[done]
            theta_out[idx], cost_out[idx], a_out[idx] = theta[done], cost[done], a[done]
            conv_out[idx], lam_out[idx] = ~failed[done], lam[done]
            if n_done == len(rows):
                break
            keep = ~done
            rows, theta, cost, a, g, lam, nu, ref_cost, failed = (
                rows[keep], theta[keep], cost[keep], a[keep], g[keep], lam[keep], nu[keep],
                ref_cost[keep], failed[keep])
            aux = tuple(t[keep] for t in aux)
            done = torch.zeros_like(keep[keep])
        # Marquardt's scaling: damp each parameter by its own curvature (floored, so that a
        # parameter without effect still gets a finite step)
        diag = a.diagonal(dim1=1, dim2=2)
        lam_s = lam.unsqueeze(-1) * diag.clamp_min(eps * diag.amax(-1, keepdim=True) + tiny)
        step = _damped_step(a, g, lam_s, eye)
        trial = theta + step
        cost_new, a_new, g_new = fn(trial, *aux)
        # NaN compares False: a non-finite trial is simply rejected; finished rows stay put
        ok = (cost_new <= cost) > done
        # Nielsen's damping update: shrink by the gain ratio on success, grow geometrically
        # on repeated failure (fewer iterations in curved valleys than fixed factors)
        pred = (step * (lam_s * step - g)).sum(-1)
        rho = (cost - cost_new) / pred.clamp_min(tiny)
        shrink = (1.0 - (2.0 * rho - 1.0) ** 3).clamp_min(1.0 / 3.0)
        light = lam <= 1.0
        # converged: an accepted, lightly damped step lowered the cost by less than ftol*cost,
        # or an accepted step shorter than xtol*(|theta| + xtol), or a vanishing gradient
        small = ok & (((cost_new >= ftol2 * cost - tiny) & light)
                      | ((step * step).sum(-1) <= xtol2 * (theta.norm(dim=-1) + xtol) ** 2))
        small = small | (g.abs().amax(-1) <= gtol * (cost + gtol))
        okv = ok.unsqueeze(-1)
        theta = torch.where(okv, trial, theta)
        a = torch.where(okv.unsqueeze(-1), a_new, a)
        g = torch.where(okv, g_new, g)
        cost = torch.where(ok, cost_new, cost)
        lam = torch.where(ok, (lam * shrink).clamp_min(1e-15), torch.where(done, lam, lam * nu))
        nu = torch.where(ok, 2.0, nu * 2.0)
        # a row whose damping has exploded cannot lower its cost any further: it sits in a
        # minimum to working precision
        done = done | small | (lam > 1e12)
        if it % stall_window == 0:
            done = done | ((cost >= (1.0 - stall_tol) * ref_cost) & (lam <= 1.0))
            ref_cost = cost
    else:
        # iteration cap: what is still running is not converged
        idx = rows
        theta_out[idx], cost_out[idx], a_out[idx] = theta, cost, a
        conv_out[idx], lam_out[idx] = done & ~failed, lam
    conv_out = conv_out & torch.isfinite(cost_out)
    return LMResult(theta_out, cost_out, a_out, conv_out, it, lam_out)
