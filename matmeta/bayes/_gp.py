"""Gaussian-process head: exact GP regression on features, hyperparameters per task by marginal
likelihood.

Kernel on features ``x`` (the last hidden layer of a meta-learned network, or raw descriptors)::

    k(x, x') = sf2 * rho(|x - x'| / ell) + sl2 * x . x' + bias_var     (+ noise_var on the diagonal)

with ``rho`` the RBF ``exp(-u^2 / 2)`` or the Matern 5/2 ``(1 + s + s^2/3) exp(-s)``,
``s = sqrt(5) u``. ``ell``, ``sf2``, ``sl2`` and ``noise_var`` are fitted per support set in log
space by damped Newton steps on the log marginal likelihood (closed-form gradient and Hessian), from
a data-driven start (the median pairwise distance as lengthscale); ``bias_var`` is held fixed.

Example:
    >>> post = fit_gp(phi_support, y_support, kernel="matern52")
    >>> mean, std = post.predict(phi_query)
    >>> post.hyperparameters        # {'lengthscale': ..., 'signal_var': ..., ...}
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

__all__ = [
    "GaussianProcessHead",
    "GPPosterior",
    "KERNELS",
    "fit_gp",
    "gp_kernel",
    "gp_log_marginal_likelihood",
]

KERNELS = ("rbf", "matern52")
_SQRT5 = math.sqrt(5.0)
HYPER_NAMES = ("lengthscale", "signal_var", "linear_var", "noise_var")


def _sqdist(a: Tensor, b: Tensor) -> Tensor:
    d2 = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * a @ b.T
    return d2.clamp_min(0.0)


def _stationary(d2: Tensor, log_ell: Tensor, kernel: str, order: int = 0) -> Tensor:
    """``rho`` and its first or second derivative with respect to ``log ell``."""
    u2 = d2 * torch.exp(-2.0 * log_ell)
    if kernel == "rbf":
        k = torch.exp(-0.5 * u2)
        if order == 0:
            return k
        return k * u2 if order == 1 else k * (u2 * u2 - 2.0 * u2)
    if kernel == "matern52":
        # the floor keeps the sqrt's derivative finite on the diagonal (d2 = 0)
        s = _SQRT5 * torch.sqrt(u2.clamp_min(1e-300))
        e = torch.exp(-s)
        if order == 0:
            return (1.0 + s + s * s / 3.0) * e
        if order == 1:
            return s * s * (1.0 + s) / 3.0 * e
        return (s**4 - 2.0 * s**3 - 2.0 * s * s) / 3.0 * e
    raise InputError(f"kernel {kernel!r}: expected one of {', '.join(KERNELS)}")


def gp_kernel(
    a: Tensor,
    b: Tensor,
    hyper: dict[str, Tensor],
    kernel: str = "rbf",
    linear: bool = True,
    bias_var: Tensor | float = 0.0,
) -> Tensor:
    """The head's prior covariance between feature rows ``a`` (n, d) and ``b`` (m, d), no noise.

    Example:
        >>> K = gp_kernel(x, x, {"lengthscale": 1.0, "signal_var": 1.0, "linear_var": 0.1})
    """
    ell = torch.as_tensor(hyper["lengthscale"], dtype=a.dtype, device=a.device)
    K = hyper["signal_var"] * _stationary(_sqdist(a, b), torch.log(ell), kernel)
    if linear:
        K = K + hyper["linear_var"] * (a @ b.T)
    return K + bias_var


def gp_log_marginal_likelihood(
    features: Tensor,
    y: Tensor,
    hyper: dict[str, Tensor],
    kernel: str = "rbf",
    linear: bool = True,
    bias_var: Tensor | float = 0.0,
    jitter: float = 0.0,
) -> Tensor:
    """``log N(y; 0, K + (noise_var + jitter) I)`` in nats, differentiable.

    Example:
        >>> gp_log_marginal_likelihood(x, y, post.hyperparameters, bias_var=post.bias_var)
    """
    K = gp_kernel(features, features, hyper, kernel, linear, bias_var)
    eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    L = torch.linalg.cholesky_ex(K + (hyper["noise_var"] + jitter) * eye)[0]
    return gaussian_log_density(y, L)


@dataclass
class GPPosterior(GaussianPosterior):
    """Posterior of the GP head on one support set.

    Attributes:
        support: (K, d) support features; ``y``: (K,) targets.
        hyperparameters: ``lengthscale`` (feature units), ``signal_var``, ``linear_var`` (target
            units squared per feature unit squared), ``noise_var`` (target units squared).
        kernel: ``"rbf"`` or ``"matern52"``; ``linear``: whether the linear part is on.
        bias_var: prior variance of the constant part (target units squared).
        log_marginal_likelihood: at the fitted hyperparameters, jitter included (nats).
        jitter: variance added to the diagonal to factorise (0 unless warned about).
    """

    support: Tensor
    y: Tensor
    hyperparameters: dict[str, Tensor]
    kernel: str
    linear: bool
    bias_var: Tensor
    log_marginal_likelihood: Tensor
    jitter: float

    @property
    def noise_var(self) -> Tensor:  # type: ignore[override]
        return self.hyperparameters["noise_var"] + self.jitter

    def _prior_mean(self, features: Tensor) -> Tensor:
        return features.new_zeros(features.shape[0])

    def _cross(self, query: Tensor) -> Tensor:
        return gp_kernel(
            query, self.support, self.hyperparameters, self.kernel, self.linear, self.bias_var
        )

    def _prior_var(self, query: Tensor) -> Tensor:
        h = self.hyperparameters
        v = h["signal_var"] + self.bias_var + query.new_zeros(query.shape[0])
        if self.linear:
            v = v + h["linear_var"] * (query * query).sum(-1)
        return v

    @property
    def support_cov(self) -> Tensor:
        K = gp_kernel(
            self.support,
            self.support,
            self.hyperparameters,
            self.kernel,
            self.linear,
            self.bias_var,
        )
        return K + self.noise_var * torch.eye(K.shape[0], dtype=K.dtype, device=K.device)

    def predict(self, query: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        """Predictive mean and std at query features (Q, d); ``noise=False``: latent std.

        Example:
            >>> mean, std = post.predict(phi_query)
        """
        if query.dim() != 2 or query.shape[-1] != self.support.shape[-1]:
            raise InputError(
                f"query features must be (Q, {self.support.shape[-1]}), got {tuple(query.shape)}"
            )
        return self._gp_predict(query, noise)


def fit_gp(
    features: Tensor,
    y: Tensor,
    *,
    kernel: str = "rbf",
    linear: bool = True,
    bias_var: Tensor | float | None = None,
    noise_var: Tensor | float | None = None,
    init: dict[str, Tensor | float] | None = None,
    init_shift: Tensor | None = None,
    hyper_std: float | None = 3.0,
    steps: int = 15,
    differentiate: str = "implicit",
) -> GPPosterior:
    """Exact GP regression on one support set, hyperparameters by marginal likelihood.

    The free log-hyperparameters maximise the log marginal likelihood plus, when ``hyper_std``
    is set, a weak Gaussian hyperprior centred at the start (std ``hyper_std`` in natural-log
    units), which keeps lengthscale and noise finite on tiny support sets. The start: lengthscale
    the median pairwise distance of the support features (the lower middle value of an even
    count), signal variance 1/2, linear part 1/4
    (per mean squared feature norm) and noise 1/4 of the targets' mean square. A kernel matrix that
    is numerically singular (duplicated inputs with a fixed zero noise) gets the smallest
    power-of-ten jitter that factorises it; the value is warned about and kept in
    ``posterior.jitter``.

    Example:
        >>> post = fit_gp(phi, y, kernel="matern52", steps=15)
        >>> mean, std = post.predict(phi_query)

    Args:
        features: (K, d) support features; y: (K,) targets (centred, or keep ``bias_var``).
        kernel: ``"rbf"`` or ``"matern52"``.
        linear: add the linear part ``sl2 x . x'``.
        bias_var: fixed prior variance of a constant offset (target units squared); None: the
            targets' mean square.
        noise_var: fix the noise variance (target units squared) instead of fitting it.
        init: starting values (physical) of any of ``lengthscale``, ``signal_var``,
            ``linear_var``, ``noise_var``; also the hyperprior centre (meta-learnable tensors).
        init_shift: added to the log of the start of the free hyperparameters, in the order
            lengthscale, signal_var, linear_var (when ``linear``), noise_var (when fitted): what
            a meta-learner learns on top of the data-driven start.
        hyper_std: std of the hyperprior on the log hyperparameters; None switches it off.
        steps: Newton steps at most (fewer once converged, outside ``vmap``).
        differentiate: ``"implicit"``, ``"unrolled"`` or ``"none"``.

    Returns:
        A :class:`GPPosterior`.

    Raises:
        InputError: an empty support set, 1 point while the noise is fitted, bad shapes or NaN.
    """
    what = "GP head"
    check_support(features, y, None, what)
    if kernel not in KERNELS:
        raise InputError(f"{what}: kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    k, d = features.shape
    if k < 1:
        raise InputError(f"{what}: the support set is empty; at least 1 point is needed")
    if noise_var is None and k < 2:
        raise InputError(
            f"{what}: {k} support point cannot estimate the noise; at least 2 are needed "
            "(or fix it with noise_var=)"
        )
    dtype, dev = features.dtype, features.device
    tiny = torch.finfo(dtype).eps
    ms = (y * y).mean() + tiny
    # the default stays attached: it moves with the targets, and the gradient follows
    bias_var_t = ms if bias_var is None else torch.as_tensor(bias_var, dtype=dtype, device=dev)
    d2 = _sqdist(features, features)
    start = _data_start(d2, features, ms, k)
    for name, v in (init or {}).items():
        if name not in HYPER_NAMES:
            raise InputError(f"{what}: init has {name!r}; expected some of {HYPER_NAMES}")
        start[name] = torch.as_tensor(v, dtype=dtype, device=dev)
    names = ["lengthscale", "signal_var"] + (["linear_var"] if linear else [])
    if noise_var is None:
        names.append("noise_var")
    else:
        start["noise_var"] = torch.as_tensor(noise_var, dtype=dtype, device=dev)
    centre = torch.log(torch.stack([start[n] for n in names]))
    if init_shift is not None:
        if init_shift.numel() != len(names):
            raise InputError(f"{what}: init_shift has {init_shift.numel()} entries; expected "
                             f"{len(names)} ({', '.join(names)})")
        centre = centre + init_shift.to(dtype=dtype, device=dev).reshape(-1)
    fixed_noise = None if noise_var is None else start["noise_var"]

    def unpack(theta: Tensor) -> dict[str, Tensor]:
        h = {n: torch.exp(theta[i]) for i, n in enumerate(names)}
        if fixed_noise is not None:
            h["noise_var"] = fixed_noise
        if not linear:
            h["linear_var"] = theta.new_zeros(())
        return h

    h0 = unpack(centre)
    K0 = gp_kernel(features, features, h0, kernel, linear, bias_var_t)
    eye = torch.eye(k, dtype=dtype, device=dev)
    jitter = cholesky_with_jitter((K0 + h0["noise_var"] * eye).detach(), "GP kernel matrix")[1]

    def hyperprior(theta, centre_):
        if hyper_std is None:
            return theta.new_zeros(())
        return -0.5 * (((theta - centre_) / hyper_std) ** 2).sum()

    def value_fn(theta, features_, y_, centre_, bv_):
        return gp_log_marginal_likelihood(
            features_, y_, unpack(theta), kernel, linear, bv_, jitter
        ) + hyperprior(theta, centre_)

    def derivs_fn(theta, features_, y_, centre_, bv_):
        h = unpack(theta)
        d2_ = _sqdist(features_, features_)
        log_ell = theta[0]
        Kr = h["signal_var"] * _stationary(d2_, log_ell, kernel)
        dKr = h["signal_var"] * _stationary(d2_, log_ell, kernel, 1)
        C = Kr + bv_ + (h["noise_var"] + jitter) * eye
        D = [dKr, Kr]
        DD = {
            (0, 0): h["signal_var"] * _stationary(d2_, log_ell, kernel, 2),
            (0, 1): dKr,
            (1, 1): Kr,
        }
        if linear:
            lin = h["linear_var"] * (features_ @ features_.T)
            C = C + lin
            DD[(len(D), len(D))] = lin
            D.append(lin)
        if fixed_noise is None:
            DD[(len(D), len(D))] = h["noise_var"] * eye
            D.append(h["noise_var"] * eye)
        val, g, hess = lml_derivatives(y_, C, D, DD)
        if hyper_std is not None:
            val = val + hyperprior(theta, centre_)
            g = g - (theta - centre_) / hyper_std**2
            hess = hess - torch.eye(len(names), dtype=dtype, device=dev) / hyper_std**2
        return val, g, hess

    theta = maximise(
        value_fn,
        derivs_fn,
        centre,
        (features, y, centre, bias_var_t),
        steps=steps,
        differentiate=differentiate,
    )
    hyper = unpack(theta)
    C = (
        gp_kernel(features, features, hyper, kernel, linear, bias_var_t)
        + (hyper["noise_var"] + jitter) * eye
    )
    extra = cholesky_with_jitter(C.detach(), "GP kernel matrix")[1]
    jitter += extra
    lml = gp_log_marginal_likelihood(features, y, hyper, kernel, linear, bias_var_t, jitter)
    return GPPosterior(features, y, hyper, kernel, linear, bias_var_t, lml, float(jitter))


def _data_start(d2: Tensor, features: Tensor, ms: Tensor, k: int) -> dict[str, Tensor]:
    # Kept differentiable (the median picks one pair) so that the hyperprior centre, which moves
    # with the features, is part of the implicit gradient; no boolean masks, so vmap works.
    iu = torch.triu_indices(k, k, offset=1, device=d2.device)
    med = d2[iu[0], iu[1]].median() if k > 1 else d2.new_zeros(())
    ell = torch.where(
        med > 0, med.clamp_min(torch.finfo(d2.dtype).tiny).sqrt(), torch.ones_like(med)
    )
    fsq = (features * features).sum(-1).mean() + torch.finfo(d2.dtype).eps
    return {
        "lengthscale": ell,
        "signal_var": 0.5 * ms,
        "linear_var": 0.25 * ms / fsq,
        "noise_var": 0.25 * ms,
    }


class GaussianProcessHead:
    """The GP head as an object: settings held, :meth:`fit` per support set.

    Example:
        >>> head = GaussianProcessHead(kernel="matern52")
        >>> mean, std = head.fit(Samples(phi_support, y_support)).predict(phi_query)
    """

    def __init__(self, **settings) -> None:
        self.settings = settings

    def fit(self, support: Samples) -> GPPosterior:
        """Fit to ``support`` (``inputs``: (K, d) features, ``y``: (K,) targets)."""
        check_support(support.inputs, support.y, support.weight, "GP head")
        return fit_gp(support.inputs, support.y, **self.settings)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.settings.items()))
        return f"GaussianProcessHead({args})"
