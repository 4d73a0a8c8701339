"""Bayesian linear regression head: exact posterior over a linear readout of features, with the
prior precision and the noise precision fitted per task by maximising the marginal likelihood.

Model: ``y_i = phi_i . w + b + e_i``, ``w ~ N(m_w, I / alpha)``, ``b ~ N(m_b, bias_var)``,
``e_i ~ N(0, 1 / beta)``. Marginally ``y ~ N(Phi m_w + m_b, Phi Phi^T / alpha + bias_var 11^T +
I / beta)``: the log evidence is computed in the K x K (dual) form when the support set is smaller
than the feature dimension and in the (d+1) x (d+1) (primal, Woodbury) form otherwise.

Example:
    >>> post = fit_bayes_linear(phi_support, y_support)          # alpha, beta by evidence
    >>> mean, std = post.predict(phi_query)
    >>> float(post.alpha), float(post.beta)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from matmeta.bayes._core import (
    GaussianPosterior,
    check_support,
    cholesky_with_jitter,
    gaussian_log_density,
    lml_derivatives,
    maximise,
)
from matmeta.errors import InputError
from matmeta.models._protocol import Samples

__all__ = ["BayesianLinearHead", "LinearPosterior", "fit_bayes_linear", "linear_log_evidence"]

_LOG_2PI = math.log(2.0 * math.pi)


def _augment(features: Tensor, bias: bool) -> Tensor:
    if not bias:
        return features
    ones = torch.ones(features.shape[:-1] + (1,), dtype=features.dtype, device=features.device)
    return torch.cat([features, ones], dim=-1)


def _prior_var(alpha: Tensor, d: int, bias: bool, bias_var: Tensor) -> Tensor:
    """Diagonal prior variances of ``[w, b]``."""
    v = (1.0 / alpha).expand(d)
    return torch.cat([v, bias_var.reshape(1).to(v)]) if bias else v


def _resolve_form(form: str, k: int, d_aug: int) -> str:
    if form == "auto":
        return "dual" if k <= d_aug else "primal"
    if form not in ("dual", "primal"):
        raise InputError(f"form={form!r}: expected auto, dual or primal")
    return form


def linear_log_evidence(
    features: Tensor,
    y: Tensor,
    alpha: Tensor | float,
    beta: Tensor | float,
    *,
    bias: bool = True,
    bias_var: Tensor | float = 1.0,
    prior_mean: Tensor | None = None,
    jitter: float = 0.0,
    form: str = "auto",
) -> Tensor:
    """Log marginal likelihood ``log N(y; Phi_a m0, Phi Phi^T/alpha + bias_var 11^T + I/beta)``.

    Example:
        >>> linear_log_evidence(phi, y, alpha=2.0, beta=25.0)    # nats, differentiable

    Args:
        features: (K, d) support features ``Phi``.
        y: (K,) support targets.
        alpha: prior precision of the weights (1 / target-unit^2 per feature-unit^2).
        beta: noise precision (1 / target-unit^2).
        bias: include an intercept ``b``.
        bias_var: prior variance of the intercept (target units squared).
        prior_mean: (d,) or (d+1,) prior mean of ``[w, b]`` (zeros when None).
        jitter: added to the noise variance ``1 / beta`` (the value a guarded fit reported).
        form: ``"dual"`` (K x K), ``"primal"`` ((d+1) x (d+1)) or ``"auto"`` (the smaller).

    Returns:
        The scalar log evidence in nats.
    """
    dtype, dev = features.dtype, features.device
    alpha = torch.as_tensor(alpha, dtype=dtype, device=dev)
    beta = torch.as_tensor(beta, dtype=dtype, device=dev)
    bias_var = torch.as_tensor(bias_var, dtype=dtype, device=dev)
    k, d = features.shape
    phi = _augment(features, bias)
    m0 = _prior_mean_vector(prior_mean, d, bias, features)
    r = y - phi @ m0
    s0 = _prior_var(alpha, d, bias, bias_var)
    noise = 1.0 / beta + jitter
    if _resolve_form(form, k, phi.shape[-1]) == "dual":
        C = (phi * s0) @ phi.T + noise * torch.eye(k, dtype=dtype, device=dev)
        L = torch.linalg.cholesky_ex(C)[0]
        return gaussian_log_density(r, L)
    # Woodbury: C^-1 = I/n - Phi A^-1 Phi^T / n^2 with A = S0^-1 + Phi^T Phi / n
    A = torch.diag(1.0 / s0) + phi.T @ phi / noise
    LA = torch.linalg.cholesky_ex(A)[0]
    u = torch.linalg.solve_triangular(LA, (phi.T @ r).unsqueeze(-1) / noise, upper=False)
    quad = (r * r).sum() / noise - (u * u).sum()
    logdet = 2.0 * torch.log(torch.diagonal(LA)).sum() + torch.log(s0).sum() + k * torch.log(noise)
    return -0.5 * (quad + logdet + k * _LOG_2PI)


def _prior_mean_vector(prior_mean: Tensor | None, d: int, bias: bool, like: Tensor) -> Tensor:
    d_aug = d + int(bias)
    if prior_mean is None:
        return torch.zeros(d_aug, dtype=like.dtype, device=like.device)
    pm = prior_mean.to(dtype=like.dtype, device=like.device).reshape(-1)
    if pm.shape[0] == d and bias:
        pm = torch.cat([pm, pm.new_zeros(1)])
    if pm.shape[0] != d_aug:
        raise InputError(
            f"prior_mean has {pm.shape[0]} entries; expected {d} (weights) or {d_aug} "
            "(weights and intercept)"
        )
    return pm


@dataclass
class LinearPosterior(GaussianPosterior):
    """Posterior of the Bayesian linear head on one support set.

    Attributes:
        support: (K, d) support features.
        y: (K,) support targets.
        alpha, beta: fitted (or fixed) prior and noise precisions (scalar tensors).
        bias: whether an intercept is included; ``bias_var`` its prior variance.
        prior_mean: (d + bias,) prior mean of ``[w, b]``.
        weight_mean, weight_cov: posterior mean (d + bias,) and covariance of ``[w, b]``.
        log_evidence: log marginal likelihood at the fitted hyperparameters (nats).
        jitter: variance added to ``1 / beta`` to factorise (0 unless reported).
        form: ``"dual"`` or ``"primal"``, the form used for the evidence and the posterior.
    """

    support: Tensor
    y: Tensor
    alpha: Tensor
    beta: Tensor
    bias: bool
    bias_var: Tensor
    prior_mean: Tensor
    weight_mean: Tensor
    weight_cov: Tensor
    log_evidence: Tensor
    jitter: float
    form: str

    @property
    def noise_var(self) -> Tensor:  # type: ignore[override]
        return 1.0 / self.beta + self.jitter

    @property
    def prior_var(self) -> Tensor:
        return _prior_var(self.alpha, self.support.shape[-1], self.bias, self.bias_var)

    def _prior_mean(self, features: Tensor) -> Tensor:
        return _augment(features, self.bias) @ self.prior_mean

    def _cross(self, query: Tensor) -> Tensor:
        return (_augment(query, self.bias) * self.prior_var) @ _augment(self.support, self.bias).T

    def _prior_var(self, query: Tensor) -> Tensor:
        q = _augment(query, self.bias)
        return (q * q * self.prior_var).sum(-1)

    @property
    def support_cov(self) -> Tensor:
        phi = _augment(self.support, self.bias)
        eye = torch.eye(phi.shape[0], dtype=phi.dtype, device=phi.device)
        return (phi * self.prior_var) @ phi.T + self.noise_var * eye

    def predict(self, query: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        """Predictive mean and std at query features (Q, d) from the weight posterior.

        ``mean = phi_a . m``, ``var = phi_a^T S phi_a (+ 1/beta)`` with ``phi_a = [phi, 1]``.

        Example:
            >>> mean, std = post.predict(phi_query)               # std includes the noise
            >>> _, latent_std = post.predict(phi_query, noise=False)
        """
        if query.dim() != 2 or query.shape[-1] != self.support.shape[-1]:
            raise InputError(
                f"query features must be (Q, {self.support.shape[-1]}), got {tuple(query.shape)}"
            )
        q = _augment(query, self.bias)
        mean = q @ self.weight_mean
        var = ((q @ self.weight_cov) * q).sum(-1)
        if noise:
            var = var + self.noise_var
        return mean, var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()


def fit_bayes_linear(
    features: Tensor,
    y: Tensor,
    *,
    bias: bool = True,
    bias_var: Tensor | float | None = None,
    prior_mean: Tensor | None = None,
    alpha: Tensor | float | None = None,
    beta: Tensor | float | None = None,
    init: Tensor | None = None,
    init_shift: Tensor | None = None,
    hyper_std: float | None = 3.0,
    steps: int = 12,
    differentiate: str = "implicit",
    form: str = "auto",
) -> LinearPosterior:
    """Exact Bayesian linear regression on one support set, hyperparameters by evidence.

    ``log alpha`` and ``log beta`` (whichever are not fixed) maximise the log evidence plus, when
    ``hyper_std`` is set, a weak Gaussian hyperprior on them centred at ``init`` (std
    ``hyper_std`` in natural-log units): a type-II MAP that keeps the optimum finite when the
    evidence alone would send the noise to zero (K points interpolated exactly). ``hyper_std=None``
    gives pure type-II maximum likelihood. The optimiser is :func:`~matmeta.bayes._core.maximise`
    (damped Newton, at most ``steps`` steps, fewer once converged outside ``vmap``); with
    ``differentiate="implicit"`` gradients flow to ``features``, ``y``, ``prior_mean`` and
    ``init`` through the implicit function theorem.

    Example:
        >>> post = fit_bayes_linear(phi, y)                       # phi (K, d), y (K,)
        >>> mean, std = post.predict(phi_query)
        >>> loss = -Normal(mean, std).log_prob(y_query).mean()   # meta-objective, differentiable

    Args:
        features: (K, d) support features.
        y: (K,) support targets.
        bias: include an intercept.
        bias_var: prior variance of the intercept (target units squared); None: the mean square
            of the support targets about the prior mean, so the intercept can reach the data's
            level whatever the units.
        prior_mean: (d,) or (d+1,) prior mean of ``[w, b]`` (meta-learnable); zeros when None.
        alpha: fix the prior precision instead of fitting it.
        beta: fix the noise precision instead of fitting it.
        init: (2,) starting ``(log alpha, log beta)`` and hyperprior centre (meta-learnable);
            None: a data-driven start (signal variance 3/4, noise 1/4 of the mean square residual
            about the prior mean).
        init_shift: (2,) added to the start ``(log alpha, log beta)`` (and the hyperprior
            centre): what a meta-learner learns on top of the data-driven start.
        hyper_std: std of the hyperprior on ``log alpha``, ``log beta``; None switches it off.
        steps: Newton steps at most (each one closed-form gradient and Hessian).
        differentiate: ``"implicit"``, ``"unrolled"`` or ``"none"`` (see ``maximise``).
        form: ``"auto"``, ``"dual"`` or ``"primal"``.

    Returns:
        A :class:`LinearPosterior`.

    Raises:
        InputError: fewer than 2 support points while the noise is to be estimated (or none at
            all), shapes that disagree, NaN inputs.
    """
    what = "Bayesian linear head"
    check_support(features, y, None, what)
    k, d = features.shape
    if k < 1:
        raise InputError(f"{what}: the support set is empty; at least 1 point is needed")
    if beta is None and k < 2:
        raise InputError(
            f"{what}: {k} support point cannot estimate the noise; at least 2 are needed "
            "(or fix the noise precision with beta=)"
        )
    dtype, dev = features.dtype, features.device
    phi = _augment(features, bias)
    m0 = _prior_mean_vector(prior_mean, d, bias, features)
    r0 = y - phi @ m0
    tiny = torch.finfo(dtype).eps
    ms = (r0 * r0).mean() + tiny * (1.0 + (y * y).mean())
    if bias_var is None:
        # kept attached: it moves with the data and the prior mean, and the gradient follows
        bias_var_t = ms
    else:
        bias_var_t = torch.as_tensor(bias_var, dtype=dtype, device=dev)
    fsq = (features * features).sum(-1).mean() + tiny
    if init is None:
        init = torch.stack([torch.log(fsq / (0.75 * ms)), torch.log(1.0 / (0.25 * ms))])
    init = init.to(dtype=dtype, device=dev)
    if init_shift is not None:
        init = init + init_shift.to(dtype=dtype, device=dev).reshape(2)
    fixed = [alpha, beta]
    free = [i for i in range(2) if fixed[i] is None]
    fixed_log = [
        None if v is None else torch.log(torch.as_tensor(v, dtype=dtype, device=dev)) for v in fixed
    ]
    form = _resolve_form(form, k, phi.shape[-1])

    def full(theta_free: Tensor) -> Tensor:
        parts = []
        j = 0
        for i in range(2):
            if fixed_log[i] is None:
                parts.append(theta_free[j])
                j += 1
            else:
                parts.append(fixed_log[i])
        return torch.stack(parts)

    # the jitter is decided once, outside the optimiser, so the objective has no branches
    jitter = _initial_jitter(phi, init, fixed_log, bias, bias_var_t, d)

    def hyperprior(theta_free: Tensor, centre: Tensor) -> Tensor:
        if hyper_std is None:
            return theta_free.new_zeros(())
        return -0.5 * (((theta_free - centre[free]) / hyper_std) ** 2).sum()

    def value_fn(theta_free, features_, y_, m0_, centre, bv_):
        la, lb = full(theta_free)
        val = linear_log_evidence(
            features_,
            y_,
            torch.exp(la),
            torch.exp(lb),
            bias=bias,
            bias_var=bv_,
            prior_mean=m0_,
            jitter=jitter,
            form=form,
        )
        return val + hyperprior(theta_free, centre)

    def derivs_fn(theta_free, features_, y_, m0_, centre, bv_):
        la, lb = full(theta_free)
        phi_ = _augment(features_, bias)
        G = features_ @ features_.T
        eye = torch.eye(k, dtype=dtype, device=dev)
        C = torch.exp(-la) * G + (torch.exp(-lb) + jitter) * eye
        if bias:
            C = C + bv_
        D_all = [-torch.exp(-la) * G, -torch.exp(-lb) * eye]
        D = [D_all[i] for i in free]
        DD = {(j, j): -D[j] for j in range(len(free))}
        val, g, h = lml_derivatives(y_ - phi_ @ m0_, C, D, DD)
        if hyper_std is not None:
            val = val + hyperprior(theta_free, centre)
            g = g - (theta_free - centre[free]) / hyper_std**2
            h = h - torch.eye(len(free), dtype=dtype, device=dev) / hyper_std**2
        return val, g, h

    if free:
        theta = maximise(
            value_fn,
            derivs_fn,
            init[free],
            (features, y, m0, init, bias_var_t),
            steps=steps,
            differentiate=differentiate,
        )
    else:
        theta = init[:0]
    la, lb = full(theta)
    return _posterior(features, y, torch.exp(la), torch.exp(lb), bias, bias_var_t, m0, jitter, form)


def _initial_jitter(phi, init, fixed_log, bias, bias_var, d) -> float:
    la = init[0] if fixed_log[0] is None else fixed_log[0]
    lb = init[1] if fixed_log[1] is None else fixed_log[1]
    s0 = _prior_var(torch.exp(la), d, bias, bias_var)
    k = phi.shape[0]
    C = (phi * s0) @ phi.T + torch.exp(-lb) * torch.eye(k, dtype=phi.dtype, device=phi.device)
    return cholesky_with_jitter(C.detach(), "Bayesian linear head's support covariance")[1]


def _posterior(features, y, alpha, beta, bias, bias_var, m0, jitter, form) -> LinearPosterior:
    k, d = features.shape
    phi = _augment(features, bias)
    s0 = _prior_var(alpha, d, bias, bias_var)
    noise = 1.0 / beta + jitter
    r = y - phi @ m0
    if form == "dual":
        eye = torch.eye(k, dtype=phi.dtype, device=phi.device)
        C = (phi * s0) @ phi.T + noise * eye
        L, extra = cholesky_with_jitter(C, "Bayesian linear head's support covariance")
        jitter += extra
        G = torch.cholesky_solve((phi * s0), L)  # C^-1 Phi S0, (K, d_aug)
        mean = m0 + (phi * s0).T @ torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)
        cov = torch.diag(s0) - (phi * s0).T @ G
    else:
        A = torch.diag(1.0 / s0) + phi.T @ phi / noise
        # A is the prior precision plus a Gram matrix: positive definite whenever alpha is finite
        LA, _ = cholesky_with_jitter(A, "Bayesian linear head's posterior precision")
        eye = torch.eye(phi.shape[-1], dtype=phi.dtype, device=phi.device)
        cov = torch.cholesky_solve(eye, LA)
        mean = m0 + cov @ (phi.T @ r) / noise
    cov = 0.5 * (cov + cov.T)
    ev = linear_log_evidence(
        features,
        y,
        alpha,
        beta,
        bias=bias,
        bias_var=bias_var,
        prior_mean=m0,
        jitter=jitter,
        form=form,
    )
    return LinearPosterior(
        features, y, alpha, beta, bias, bias_var, m0, mean, cov, ev, float(jitter), form
    )


class BayesianLinearHead:
    """The Bayesian linear head as an object: settings held, :meth:`fit` per support set.

    The object holds no logic :func:`fit_bayes_linear` lacks.

    Example:
        >>> head = BayesianLinearHead(hyper_std=3.0)
        >>> post = head.fit(Samples(phi_support, y_support))
        >>> mean, std = post.predict(phi_query)
    """

    def __init__(self, **settings) -> None:
        self.settings = settings

    def fit(self, support: Samples) -> LinearPosterior:
        """Fit to ``support`` (``inputs``: (K, d) features, ``y``: (K,) targets)."""
        check_support(support.inputs, support.y, support.weight, "Bayesian linear head")
        return fit_bayes_linear(support.inputs, support.y, **self.settings)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.settings.items()))
        return f"BayesianLinearHead({args})"
