"""Shared numerics of the closed-form heads: a guarded Cholesky, the Gaussian marginal likelihood,
exact leave-one-out, and a damped Newton maximiser with an implicit final step.

Both heads (Bayesian linear and Gaussian process) are Gaussian processes on the support targets,
``y ~ N(m, C)`` with ``C = K + noise I``; everything here works on that form.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from matmeta.errors import ConvergenceError, InputError

__all__ = [
    "JitterWarning",
    "cholesky_with_jitter",
    "gaussian_log_density",
    "lml_derivatives",
    "loo_from_precision",
    "maximise",
]

_LOG_2PI = math.log(2.0 * math.pi)


class JitterWarning(RuntimeWarning):
    """A kernel or covariance matrix needed jitter on its diagonal to be factorised."""


def _data_dependent_ok(t: Tensor) -> bool:
    """Whether ``bool(t)`` is allowed (it is not inside ``torch.func.vmap``)."""
    try:
        bool(t.reshape(-1)[:1].any())
    except RuntimeError:
        return False
    return True


def cholesky_with_jitter(
    C: Tensor, what: str = "kernel matrix", max_tries: int = 10
) -> tuple[Tensor, float]:
    """Cholesky factor of ``C``, adding the smallest power-of-ten jitter that makes it work.

    Starts at ``1e-10 * mean(diag C)``; each failure multiplies by 10, up to ``max_tries`` tries.
    A jitter above zero is returned and warned about (:class:`JitterWarning`), so a near-singular
    matrix (duplicated inputs with no noise) never turns silently into NaN. Inside
    ``torch.func.vmap`` the check cannot be made; the plain factor is returned with jitter 0.

    Example:
        >>> L, jitter = cholesky_with_jitter(K + noise * torch.eye(n))
        >>> jitter       # 0.0 unless the matrix was numerically singular

    Returns:
        ``(L, jitter)``: the lower factor of ``C + jitter I`` and the jitter added.

    Raises:
        ConvergenceError: when even the largest jitter fails or ``C`` holds NaN or inf.
    """
    L, info = torch.linalg.cholesky_ex(C)
    if not _data_dependent_ok(info):
        return L, 0.0
    if not bool(torch.isfinite(C).all()):
        raise ConvergenceError(f"{what} holds NaN or inf values; cannot factorise it")
    if int(info.max()) == 0 and bool(torch.isfinite(L).all()):
        return L, 0.0
    scale = float(torch.diagonal(C, dim1=-2, dim2=-1).abs().mean().clamp_min(1e-300))
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    jitter = 1e-10 * scale
    for _ in range(max_tries):
        L, info = torch.linalg.cholesky_ex(C + jitter * eye)
        if int(info.max()) == 0 and bool(torch.isfinite(L).all()):
            warnings.warn(
                f"{what} was not numerically positive definite; added jitter {jitter:.3g} to its "
                "diagonal (duplicated or nearly identical inputs with little noise)",
                JitterWarning,
                stacklevel=3,
            )
            return L, jitter
        jitter *= 10.0
    raise ConvergenceError(
        f"{what} is not positive definite even with jitter {jitter / 10:.3g} on its diagonal"
    )


def gaussian_log_density(r: Tensor, L: Tensor) -> Tensor:
    """``log N(r; 0, C)`` from the Cholesky factor ``L`` of ``C`` (r: (K,), L: (K, K))."""
    a = torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (a * a).sum(-1) - 0.5 * logdet - 0.5 * r.shape[-1] * _LOG_2PI


def loo_from_precision(r: Tensor, P: Tensor) -> tuple[Tensor, Tensor]:
    """Exact leave-one-out residual mean and predictive variance from ``P = C^-1``.

    For ``r ~ N(0, C)`` the conditional of ``r_i`` given the others is
    ``N(r_i - [P r]_i / P_ii, 1 / P_ii)`` (Sundararajan and Keerthi 2001).

    Returns:
        ``(mean_minus_i, var_minus_i)``, both (K,): the predictive mean of ``r_i`` from the
        other points, and its variance (noise included).
    """
    d = torch.diagonal(P, dim1=-2, dim2=-1)
    return r - (P @ r.unsqueeze(-1)).squeeze(-1) / d, 1.0 / d


def lml_derivatives(
    r: Tensor, C: Tensor, D: list[Tensor], DD: dict[tuple[int, int], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Value, gradient and Hessian of ``log N(r; 0, C(theta))`` in closed form.

    With ``P = C^-1``, ``a = P r``, ``D_i = dC/dtheta_i`` and ``D_ij = d2C/dtheta_i dtheta_j``
    (absent pairs are zero; give each unordered pair once)::

        g_i  = a' D_i a / 2 - tr(P D_i) / 2
        H_ij = a' D_ij a / 2 - a' D_i P D_j a - tr(P D_ij) / 2 + tr(P D_i P D_j) / 2

    (Rasmussen and Williams 2006, eq. 5.9, differentiated once more). Pure tensor code: it runs
    under ``vmap`` and is differentiable in ``r`` and in whatever built ``C`` and the ``D``.

    Returns:
        ``(value, grad (n,), hess (n, n))``.
    """
    L = torch.linalg.cholesky_ex(C)[0]
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    P = torch.cholesky_solve(eye, L)
    a = (P @ r.unsqueeze(-1)).squeeze(-1)
    value = gaussian_log_density(r, L)
    Ds = torch.stack(D)  # (n, K, K), symmetric
    Da = Ds @ a  # (n, K)
    PD = P @ Ds  # (n, K, K)
    g = 0.5 * (Da @ a) - 0.5 * torch.diagonal(PD, dim1=-2, dim2=-1).sum(-1)
    # tr(P D_i P D_j) = sum_kl (P D_i)_kl (P D_j)_lk
    h = -(Da @ P @ Da.T) + 0.5 * torch.einsum("ikl,jlk->ij", PD, PD)
    n = len(D)
    for (i, j), Dij in DD.items():
        unit = torch.zeros(n, n, dtype=h.dtype, device=h.device)
        unit[i, j] = unit[j, i] = 1.0
        h = h + (0.5 * (a * (Dij @ a)).sum() - 0.5 * (P * Dij).sum()) * unit
    return value, g, h


def maximise(
    value_fn: Callable[..., Tensor],
    derivs_fn: Callable[..., tuple[Tensor, Tensor, Tensor]],
    theta0: Tensor,
    data: tuple[Tensor, ...],
    *,
    steps: int,
    differentiate: str = "implicit",
    max_step: float = 2.0,
    tol: float = 1e-9,
) -> Tensor:
    """Maximise ``value_fn(theta, *data)`` over a small vector ``theta`` by damped Newton steps.

    ``derivs_fn(theta, *data)`` returns ``(value, grad, hess)``. Each step solves
    ``(-H + lam I) s = g`` with ``lam`` just large enough to make ``-H`` positive definite, caps
    ``|s|`` at ``max_step`` and takes the first of ``theta + s``, ``theta + s/2``,
    ``theta + s/4`` that does not lower the value (none: stop). It stops early once a step moves
    no coordinate by more than ``tol``. Under ``vmap`` it runs all ``steps`` and keeps the best of
    the four candidates, with no data-dependent branch. A NaN value counts as minus infinity.

    With ``differentiate="implicit"`` the steps run on detached data and one more Newton step is
    taken with the data attached: at a stationary point its derivative is exactly the implicit
    function theorem's ``d theta*/d data = -H^-1 d g / d data``, at the cost of one Hessian.
    ``"unrolled"`` differentiates through every step; ``"none"`` returns a detached optimum.

    Example:
        >>> theta = maximise(log_ev, log_ev_derivs, theta0, (X, y), steps=10)
    """
    if differentiate not in ("implicit", "unrolled", "none"):
        raise InputError(f"differentiate={differentiate!r}: expected implicit, unrolled or none")

    def newton_direction(theta: Tensor, args: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        value, g, h = derivs_fn(theta, *args)
        # The few-by-few system is solved in float64 with non-finite entries zeroed: a float32
        # Hessian of an overflowing likelihood made eigvalsh fail to converge (a crash, not a
        # NaN); zeroed, the step falls back to the finite part of the gradient.
        g64 = torch.nan_to_num(g.double(), nan=0.0, posinf=0.0, neginf=0.0)
        h64 = torch.nan_to_num(h.double(), nan=0.0, posinf=0.0, neginf=0.0)
        n = -0.5 * (h64 + h64.transpose(-1, -2))
        ev = torch.linalg.eigvalsh(n)
        lam = (-ev.min()).clamp_min(0.0) + 1e-9 * ev.abs().max() + 1e-12
        eye = torch.eye(theta.shape[-1], dtype=n.dtype, device=theta.device)
        step = torch.linalg.solve(n + lam * eye, g64).to(theta.dtype)
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        return step * (max_step / step.norm().clamp_min(max_step)), value

    def safe(v: Tensor) -> Tensor:
        return torch.where(torch.isfinite(v), v, torch.full_like(v, -torch.inf))

    search_data = data if differentiate == "unrolled" else tuple(d.detach() for d in data)
    theta = theta0 if differentiate == "unrolled" else theta0.detach()
    # Outside vmap, backtrack lazily and stop once the steps are negligible; under vmap every
    # candidate is evaluated and all `steps` run (no data-dependent branches there).
    eager = _data_dependent_ok(theta)
    for _ in range(steps):
        step, v0 = newton_direction(theta, search_data)
        if eager:
            moved = False
            for frac in (1.0, 0.5, 0.25):
                cand = theta + frac * step
                if bool((safe(value_fn(cand, *search_data)) >= safe(v0)).detach()):
                    theta, moved = cand, True
                    break
            if not moved or float((frac * step).detach().abs().max()) < tol:
                break
            continue
        cands = torch.stack([theta, theta + step, theta + 0.5 * step, theta + 0.25 * step])
        vals = torch.stack([safe(v0)] + [safe(value_fn(c, *search_data)) for c in cands[1:]])
        # argmax keeps the first of ties, so a step that makes everything worse stays put
        pick = (torch.arange(4, device=vals.device) == torch.argmax(vals)).to(theta.dtype)
        theta = (pick.unsqueeze(-1) * cands).sum(0)
    if differentiate == "implicit":
        theta = theta.detach()
        theta = theta + newton_direction(theta, data)[0]
    elif differentiate == "none":
        theta = theta.detach()
    return theta


class GaussianPosterior:
    """What every closed-form head's posterior shares: prediction and exact leave-one-out.

    A head's posterior is a Gaussian process on the support targets, ``y ~ N(m(X), Kf + s2 I)``.
    Subclasses give the prior mean ``m``, the prior covariance between query and support
    features (:meth:`_cross`), the prior variance at query features (:meth:`_prior_var`), the
    noise variance ``s2`` (:attr:`noise_var`) and the support matrix ``C`` (:attr:`support_cov`).

    Example:
        >>> post = head.fit(Samples(phi_support, y_support))
        >>> mean, std = post.predict(phi_query)
        >>> loo_mean, loo_std = post.loo()                  # exact, no refitting
        >>> d_mean, d_var = post.loo_query_change(phi_query)   # (K, Q): effect of removing i
    """

    support: Tensor
    y: Tensor
    noise_var: Tensor
    jitter: float

    # -- subclass interface -------------------------------------------------------------------
    def _prior_mean(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def _cross(self, query: Tensor) -> Tensor:
        """(Q, K) prior covariance of latent values at query and support features."""
        raise NotImplementedError

    def _prior_var(self, query: Tensor) -> Tensor:
        """(Q,) prior variance of the latent value at query features."""
        raise NotImplementedError

    @property
    def support_cov(self) -> Tensor:
        """(K, K) marginal covariance of the support targets, noise and jitter included."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def _factor(self) -> tuple[Tensor, Tensor]:
        # recomputed on every call (a K x K Cholesky): a cached factor would tie every later
        # prediction to the first one's autograd graph, which a meta-learner frees on backward
        L = torch.linalg.cholesky(self.support_cov)
        r = self.y - self._prior_mean(self.support)
        return L, torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)

    def _gp_predict(self, query: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        L, a = self._factor()
        kq = self._cross(query)
        mean = self._prior_mean(query) + kq @ a
        v = torch.linalg.solve_triangular(L, kq.T, upper=False)
        var = self._prior_var(query) - (v * v).sum(0)
        if noise:
            var = var + self.noise_var
        # round-off can push a tiny latent variance below zero; the floor keeps std real
        var = var.clamp_min(torch.finfo(var.dtype).tiny)
        return mean, var.sqrt()

    def predict(self, query: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        """Predictive mean and std at query features (Q, d), noise included unless asked not."""
        return self._gp_predict(query, noise)

    def _precision(self) -> Tensor:
        L, _ = self._factor()
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
        return torch.cholesky_solve(eye, L)

    def loo(self) -> tuple[Tensor, Tensor]:
        """Exact leave-one-out predictive mean and std of every support target (K,), each from
        the other K-1 points, hyperparameters held fixed, noise included; no refitting."""
        P = self._precision()
        r = self.y - self._prior_mean(self.support)
        mean_r, var = loo_from_precision(r, P)
        return self.y - r + mean_r, var.sqrt()

    def loo_query_change(self, query: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        """Exact change of each query prediction when support point i is removed.

        With ``P = C^-1``, ``a = P r`` and ``w_q = P k_q``: removing point i moves the predictive
        mean by ``-w_qi a_i / P_ii`` and the predictive variance by ``+w_qi^2 / P_ii``
        (hyperparameters held fixed).

        Returns:
            ``(d_mean, d_var)``, both (K, Q): row i is (prediction without i) - (with all).
            ``noise`` is accepted for symmetry with :meth:`predict`; the noise term cancels.
        """
        del noise
        P = self._precision()
        _, a = self._factor()
        W = P @ self._cross(query).T  # (K, Q)
        d = torch.diagonal(P)
        return -W * (a / d).unsqueeze(-1), W * W / d.unsqueeze(-1)


def check_support(features: Tensor, y: Tensor, weight: Tensor | None, what: str) -> None:
    """One-line errors for support sets a head cannot use."""
    if features.dim() != 2:
        raise InputError(f"{what}: support features must be (K, d), got {tuple(features.shape)}")
    if y.dim() != 1 or y.shape[0] != features.shape[0]:
        raise InputError(
            f"{what}: targets must be (K,) with K = {features.shape[0]} rows of features, "
            f"got {tuple(y.shape)}"
        )
    if weight is not None and _data_dependent_ok(weight) and bool((weight != 1).any()):
        raise InputError(
            f"{what}: per-sample weights are not used by closed-form heads; drop them "
            "(leave-one-out is exact through posterior.loo())"
        )
    if _data_dependent_ok(y):
        if not bool(torch.isfinite(features).all()):
            raise InputError(f"{what}: support features hold NaN or inf")
        if not bool(torch.isfinite(y).all()):
            raise InputError(f"{what}: support targets hold NaN or inf")
