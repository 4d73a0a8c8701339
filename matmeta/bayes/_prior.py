"""Meta-learned Gaussian priors for parametric laws, and adaptation as MAP plus Laplace.

Learning (empirical Bayes over families, Laplace-EM). Each family ``f`` has its own transformed
parameters ``theta_f ~ N(mu, Sigma)`` and measurements ``y_fi ~ N(model(theta_f, x_fi), s^2)``.
:func:`learn_prior` alternates

* E-step: the MAP fit of every family under the current prior (the batched Levenberg-Marquardt of
  :func:`matmeta.fitting.fit_curves`) and its Laplace covariance
  ``S_f = (J_f' J_f / s^2 + Sigma^-1)^-1`` (Gauss-Newton curvature);
* M-step: ``mu = mean_f theta_f``, ``Sigma = mean_f [(theta_f - mu)(theta_f - mu)' + S_f]`` and,
  when asked, ``s^2 = sum_f [RSS_f + tr(J_f S_f J_f')] / N``.

For a model linear in its parameters the E-step is exact and this is the EM algorithm for the
Gaussian hierarchical model: every iteration increases the marginal likelihood
``sum_f log N(y_f; X_f mu, X_f Sigma X_f' + s^2 I)`` and the fixed point maximises it. For a
nonlinear law (JMAK) it is the Laplace approximation of the same objective; the value tracked in
``history`` is ``sum_f log p(y_f | theta_f) + log N(theta_f; mu, Sigma) + P/2 log 2 pi +
1/2 log det S_f``.

Adaptation (:func:`adapt_parametric`): the MAP fit of the new family's few points under the
learned prior, with its Laplace posterior: standard errors and correlations of the transformed
and physical parameters, and predictive mean and std (delta method) at new inputs.

Example:
    >>> fit = learn_prior(JMAK(), times_per_family, fractions_per_family, noise_std=0.03)
    >>> post = adapt_parametric(JMAK(), fit.prior, t_new_s, f_new)
    >>> post.physical()            # {'k_per_s': ..., 'k_per_s_se': ..., 'n': ..., 'n_se': ...}
    >>> mean, std = post.predict(t_query_s)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.models._protocol import Samples

__all__ = [
    "ParametricPosterior",
    "ParametricPriorHead",
    "PriorFit",
    "adapt_parametric",
    "learn_prior",
]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class PriorFit:
    """What :func:`learn_prior` returns.

    Attributes:
        prior: the learned :class:`~matmeta.models.parametric.Prior` (mean, full covariance,
            noise_std), ready to save and to pass to :func:`adapt_parametric` or ``fit_jmak``.
        theta: (F, P) per-family MAP parameters at the last E-step.
        cov: (F, P, P) their Laplace covariances.
        history: the Laplace log marginal likelihood (nats, summed over families) per iteration.
        iterations: EM iterations run; converged: whether the tolerance was met.
    """

    prior: Any
    theta: Tensor
    cov: Tensor
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False


def _e_step(model, inputs, ys, prior, noise_std, weights):
    from matmeta.fitting import fit_curves, pad_curves

    res = fit_curves(model, inputs, ys, prior=prior, noise_std=noise_std, weight=weights)
    x_pad, y_pad, w_pad, _ = pad_curves(inputs, ys, weights)
    f, jac = model.value_and_jacobian(res.theta, x_pad)
    return res, f, jac, y_pad, w_pad


def _laplace_objective(theta, cov, f, y, w, mean, prior_cov, noise_var) -> float:
    n = w.sum()
    p = theta.shape[-1]
    loglik = -0.5 * (w * (f - y) ** 2).sum() / noise_var - 0.5 * n * (
        _LOG_2PI + math.log(noise_var)
    )
    L = torch.linalg.cholesky(prior_cov)
    z = torch.linalg.solve_triangular(L, (theta - mean).unsqueeze(-1), upper=False)
    logprior = -0.5 * (z * z).sum() - theta.shape[0] * (
        torch.log(torch.diagonal(L)).sum() + 0.5 * p * _LOG_2PI
    )
    logdet = torch.linalg.slogdet(cov)[1].sum()
    return float(loglik + logprior + 0.5 * p * theta.shape[0] * _LOG_2PI + 0.5 * logdet)


def learn_prior(
    model: Any,
    inputs: Sequence[Any],
    ys: Sequence[Any],
    *,
    noise_std: float | None = None,
    learn_noise: bool | None = None,
    init: Any | None = None,
    weights: Sequence[Any] | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    min_std: float = 1e-4,
) -> PriorFit:
    """Learn a Gaussian prior over a parametric law's transformed parameters from families.

    Example:
        >>> fit = learn_prior(JMAK(), [t_a_s, t_b_s, t_c_s], [f_a, f_b, f_c], noise_std=0.03)
        >>> fit.prior.mean, fit.prior.cov          # over (ln_k, ln_n)
        >>> fit.prior.save("jmak_prior.json")

    Args:
        model: a :class:`~matmeta.models.parametric.ParametricModel`.
        inputs: one array of inputs per family (times in s for JMAK).
        ys: one array of targets per family.
        noise_std: std of one measurement (target units). With ``learn_noise`` it is the start.
        learn_noise: estimate a noise std shared by all families in the M-step; default: True
            when ``noise_std`` is None.
        init: a starting :class:`Prior`; default: the mean of independent least-squares fits of
            the families with more points than parameters, with twice their spread as a diagonal
            covariance (the model's defaults with std 3, or 3 |default| for an untransformed
            parameter, without two such fits); noise 0.05 when not given.
        weights: optional per-point weights per family (0 drops a point).
        max_iter: EM iterations at most.
        tol: stop when the largest change of ``mu``, ``sqrt(diag Sigma)`` and ``s`` is below this.
        min_std: floor of the prior's standard deviations (transformed units): a parameter that
            does not vary across families keeps a positive-definite covariance.

    Returns:
        A :class:`PriorFit`.

    Raises:
        InputError: fewer than 2 families, or a family the fitter refuses (named by index).
    """
    from matmeta.models.parametric import Prior

    inputs, ys = list(inputs), list(ys)
    if len(inputs) != len(ys):
        raise InputError(f"learn_prior: {len(inputs)} input arrays but {len(ys)} target arrays")
    if len(ys) < 2:
        raise InputError(f"learn_prior: {len(ys)} family; at least 2 are needed to learn a prior")
    if learn_noise is None:
        learn_noise = noise_std is None
    s = float(
        noise_std
        if noise_std is not None
        else (init.noise_std if init is not None and init.noise_std else 0.05)
    )
    names = model.flat_names
    if init is None:
        init = _initial_prior(model, inputs, ys, weights, s)
    else:
        init.check(model)
    mean, cov = init.mean.clone(), init.cov.clone()
    history: list[float] = []
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        prior = Prior(model.name, names, mean, cov, s, _config(model))
        res, f, jac, y_pad, w_pad = _e_step(model, inputs, ys, prior, s, weights)
        theta, s_f = res.theta, res.cov
        if not bool(torch.isfinite(s_f).all()):
            bad = int((~torch.isfinite(s_f)).flatten(1).any(-1).nonzero()[0, 0])
            raise InputError(f"learn_prior: family {bad}: its Laplace covariance is singular")
        history.append(_laplace_objective(theta, s_f, f, y_pad, w_pad, mean, cov, s * s))
        new_mean = theta.mean(0)
        dev = theta - new_mean
        new_cov = (dev.unsqueeze(-1) * dev.unsqueeze(-2) + s_f).mean(0)
        new_cov = 0.5 * (new_cov + new_cov.T)
        new_cov = new_cov + torch.diag((min_std**2 - torch.diagonal(new_cov)).clamp_min(0.0))
        new_s = s
        if learn_noise:
            # E[|y - f(theta)|^2] under the Laplace posterior: RSS + tr(J S J')
            spread = torch.einsum("bnp,bpq,bnq,bn->", jac, s_f, jac, w_pad)
            rss = (w_pad * (f - y_pad) ** 2).sum()
            new_s = float(torch.sqrt((rss + spread) / w_pad.sum()))
        change = max(
            float((new_mean - mean).abs().max()),
            float((torch.diagonal(new_cov).sqrt() - torch.diagonal(cov).sqrt()).abs().max()),
            abs(new_s - s),
        )
        mean, cov, s = new_mean, new_cov, new_s
        if change < tol:
            converged = True
            break
    prior = Prior(model.name, names, mean, cov, s, _config(model))
    return PriorFit(prior, theta, s_f, history, it, converged)


def _initial_prior(model: Any, inputs: list, ys: list, weights: Any, noise_std: float) -> Any:
    """Where Laplace-EM starts: the spread of independent fits of the families.

    A fixed broad start (std 3 in every transformed unit) is far too narrow for a parameter on a
    physical scale (Q in kJ/mol spans hundreds): EM then settles on a collapsed prior with a huge
    noise std (measured on tungsten Arrhenius-JMAK: n pinned at 1.0 +- 0.08, noise 0.19, held-out
    errors 0.29). Independent least-squares fits of the families that can be fitted alone give a
    start on the right scales; without two such families, the model's defaults with a std of 3,
    or 3 times the default's magnitude for an untransformed parameter, are used.
    """
    from matmeta.fitting import fit_curves
    from matmeta.models.parametric import Prior

    names = model.flat_names
    p = len(names)
    start = model.flatten(model.init_params()).to(torch.float64)
    scale = torch.tensor([3.0 if spec.transform != "none" else max(3.0, 3.0 * abs(spec.default))
                          for _, spec, _ in model.flat_specs()], dtype=torch.float64)
    cov = torch.diag(scale**2)
    enough = [i for i, y in enumerate(ys) if len(y) >= p + 1]
    if len(enough) >= 2:
        try:
            res = fit_curves(model, [inputs[i] for i in enough], [ys[i] for i in enough],
                             weight=None if weights is None else [weights[i] for i in enough])
            ok = torch.isfinite(res.theta).all(-1) & res.converged
            theta = res.theta[ok]
        except InputError:
            theta = torch.empty(0, p, dtype=torch.float64)
        if theta.shape[0] >= 2:
            start = theta.mean(0)
            # twice the spread of the fits, so EM starts broad and shrinks toward the data
            var = (2.0 * theta.std(0)) ** 2
            cov = torch.diag(torch.maximum(var, torch.full_like(var, 0.25)))
    return Prior(model.name, names, start, cov, noise_std, _config(model))


def _config(model: Any) -> dict[str, Any]:
    cfg = dict(model.config())
    cfg.pop("prior", None)
    return cfg


@dataclass
class ParametricPosterior:
    """Laplace posterior of a parametric law on one family's few points.

    Attributes:
        model: the law; ``prior``: the prior used.
        theta: (P,) MAP parameters (transformed space, ``model.flat_names`` order).
        cov: (P, P) Laplace covariance of ``theta``.
        noise_std: std of one measurement (target units), added in :meth:`predict`.
        default_samples: posterior draws :meth:`predict` uses when not told (None: delta method).
        log_evidence: Laplace approximation of ``log p(y | prior)`` (nats), exact for a law
            linear in its parameters: the held-out marginal likelihood of this family under the
            prior, for comparing priors on families they were not learned from.
    """

    model: Any
    prior: Any
    theta: Tensor
    cov: Tensor
    noise_std: float
    default_samples: int | None = None
    log_evidence: float | None = None

    @property
    def names(self) -> list[str]:
        return list(self.model.flat_names)

    @property
    def stderr(self) -> Tensor:
        """(P,) posterior standard errors in transformed space."""
        return torch.diagonal(self.cov).clamp_min(0).sqrt()

    @property
    def correlation(self) -> Tensor:
        """(P, P) posterior correlation matrix of the transformed parameters."""
        se = self.stderr
        return self.cov / (se.unsqueeze(-1) * se.unsqueeze(-2))

    def physical(self) -> dict[str, float]:
        """Physical values and standard errors (delta method): ``k_per_s``, ``k_per_s_se``, ...

        Example:
            >>> post.physical()["n_se"]
        """
        phys = self.model.physical_flat(self.theta)
        se = self.model.physical_jacobian_diag(self.theta).abs() * self.stderr
        out: dict[str, float] = {}
        for j, (_, spec, idx) in enumerate(self.model.flat_specs()):
            key = spec.physical_name if idx is None else f"{spec.physical_name}[{idx}]"
            out[key] = float(phys[j])
            out[f"{key}_se"] = float(se[j])
        return out

    def physical_correlation(self) -> Tensor:
        """(P, P) correlation of the physical parameters (delta method; each physical value is a
        monotone function of one transformed value, so it equals :attr:`correlation`)."""
        return self.correlation

    def sample_predictions(
        self, query: Any, samples: int = 1000, noise: bool = True, seed: int = 0
    ) -> Tensor:
        """Draws (S, N) of the prediction at ``query``: ``theta`` from the Laplace posterior pushed
        through the law (its nonlinearity kept), plus measurement noise unless ``noise=False``.

        Example:
            >>> draws = post.sample_predictions(t_query_s, samples=2000)
            >>> sample_crps(draws, f_query)
        """
        gen = torch.Generator(device=self.theta.device).manual_seed(seed)
        p = self.theta.shape[-1]
        L = torch.linalg.cholesky(self.cov + 1e-12 * torch.diag(torch.diagonal(self.cov)))
        z = torch.randn(samples, p, generator=gen, dtype=self.theta.dtype, device=L.device)
        theta = self.theta + z @ L.T
        q = torch.as_tensor(query, dtype=self.theta.dtype, device=self.theta.device)
        f, _ = self.model.value_and_jacobian(theta, q.unsqueeze(0).expand(samples, *q.shape))
        if noise:
            f = f + self.noise_std * torch.randn(
                f.shape, generator=gen, dtype=f.dtype, device=f.device
            )
        return f

    def predict(
        self, query: Any, noise: bool = True, samples: int | None = None, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Predictive mean and std at ``query`` inputs.

        ``samples=None`` (and no ``default_samples``): the delta method, ``J cov J' + noise^2``
        (deterministic, exact for a law linear in its parameters). ``samples=S``: the mean and
        std of ``S`` draws from
        :meth:`sample_predictions`, which keep the law's nonlinearity; for saturating laws (JMAK
        near f = 0 or 1) they are the better calibrated (see benchmarks/bayes.md).

        Example:
            >>> mean, std = post.predict(torch.tensor([60.0, 600.0, 6000.0]))   # times in s
            >>> mean, std = post.predict(t_query_s, samples=2000)
        """
        q = torch.as_tensor(query, dtype=self.theta.dtype)
        samples = self.default_samples if samples is None else samples
        if samples is not None:
            f = self.sample_predictions(q, samples, noise=False, seed=seed)
            var = f.var(0)
            if noise:
                var = var + self.noise_std**2
            return f.mean(0), var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
        f, jac = self.model.value_and_jacobian(self.theta.unsqueeze(0), q.unsqueeze(0))
        f, jac = f[0], jac[0]
        var = torch.einsum("np,pq,nq->n", jac, self.cov, jac)
        if noise:
            var = var + self.noise_std**2
        return f, var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()


def adapt_parametric(
    model: Any,
    prior: Any,
    inputs: Any,
    y: Any,
    *,
    noise_std: float | None = None,
    weight: Any | None = None,
    source: str = "prior",
) -> ParametricPosterior:
    """MAP fit of one new family's points under ``prior``, with its Laplace posterior.

    Example:
        >>> post = adapt_parametric(JMAK(), Prior.load("jmak_prior.json"), t_s, f)
        >>> post.physical(), post.correlation
        >>> mean, std = post.predict(t_query_s)

    Args:
        model: the parametric law; ``prior``: a :class:`~matmeta.models.parametric.Prior` made
            for it (another model's prior is a one-line :class:`InputError` naming ``source``).
        inputs, y: the family's inputs and targets (one curve).
        noise_std: std of one measurement; default the prior's ``noise_std``.
        weight: optional per-point weights.

    Returns:
        A :class:`ParametricPosterior`.
    """
    from matmeta.fitting import DEFAULT_NOISE_STD, fit_curves

    prior.check(model, source=source)
    s = float(noise_std or prior.noise_std or DEFAULT_NOISE_STD)
    res = fit_curves(
        model, [inputs], [y], prior=prior, noise_std=s, weight=None if weight is None else [weight]
    )
    from matmeta.fitting import pad_curves

    x_pad, y_pad, w_pad, _ = pad_curves([inputs], [y], None if weight is None else [weight])
    f, _ = model.value_and_jacobian(res.theta, x_pad)
    evidence = _laplace_objective(
        res.theta,
        res.cov,
        f,
        y_pad,
        w_pad,
        prior.mean.to(res.theta),
        prior.cov.to(res.theta),
        s * s,
    )
    return ParametricPosterior(model, prior, res.theta[0], res.cov[0], s, log_evidence=evidence)


class ParametricPriorHead:
    """A parametric law with a (meta-learned) prior, behind the heads' common interface.

    Its posteriors predict from ``samples`` Laplace-posterior draws (seeded, so repeatable) by
    default: on held-out tungsten isotherms that was better calibrated than the delta method
    (benchmarks/bayes.md); ``samples=None`` selects the delta method.

    Example:
        >>> head = ParametricPriorHead(JMAK(), prior)
        >>> mean, std = head.fit(Samples(t_support_s, f_support)).predict(t_query_s)
    """

    def __init__(
        self, model: Any, prior: Any, noise_std: float | None = None, samples: int | None = 2000
    ) -> None:
        prior.check(model)
        self.model, self.prior, self.noise_std, self.samples = model, prior, noise_std, samples

    def fit(self, support: Samples) -> ParametricPosterior:
        """MAP + Laplace on ``support`` (``inputs`` as the law takes them, ``y`` targets).

        With ``samples`` set, the posterior's :meth:`~ParametricPosterior.predict` uses that many
        posterior draws by default instead of the delta method.
        """
        post = adapt_parametric(
            self.model,
            self.prior,
            support.inputs,
            support.y,
            noise_std=self.noise_std,
            weight=support.weight,
        )
        post.default_samples = self.samples
        return post

    def __repr__(self) -> str:
        return (
            f"ParametricPriorHead({self.model!r}, noise_std={self.noise_std!r}, "
            f"samples={self.samples!r})"
        )
