"""Meta-learning through closed-form heads: features meta-learned for a Bayesian linear or GP head.

For any model with ``features(params, inputs)`` (the composition model, the CGCNN), a task is
adapted by fitting a head in closed form on the support features, its hyperparameters chosen per
task by marginal likelihood (a few damped Newton steps, differentiated implicitly); the task loss
is the query negative log predictive density (or the query MSE of the predictive mean). The
meta-gradient flows through that fit into the feature extractor, the prior mean and the start of
the hyperparameters.

The prior mean of a task's head is the model itself: for ``bayes_linear`` the output layer's
weight and bias are the prior mean of ``[w, b]``; for ``gp`` the model's prediction is the GP's
mean function and the kernel acts on the features. So the meta-learned parameters without
adaptation predict the prior mean, and ``meta_init`` keeps its meaning.

Meta-parameters: the model's parameters plus ``head_hyper::shift``, a (log-space) shift of every
task's data-driven hyperparameter start (and hyperprior centre), learned with the rest.

Example:
    >>> settings = MetaSettings(algorithm="bayes_linear", inner_steps=8)   # 8 Newton steps
    >>> res = meta_train(model, train_fams, val_fams, settings=settings, train=...)
    >>> post = adapt_head(model, res.meta_params, support, res.settings)
    >>> mean, std = post.predict(query.inputs)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from matmeta.bayes._gp import GPPosterior, fit_gp
from matmeta.bayes._linear import LinearPosterior, fit_bayes_linear
from matmeta.bayes._metrics import gaussian_nlpd
from matmeta.errors import InputError
from matmeta.models._protocol import FunctionalModel, Params, Samples, weighted_mse

__all__ = [
    "BAYES_ALGORITHMS",
    "HEAD_LOSSES",
    "HEAD_PREFIX",
    "HeadPosterior",
    "adapt_head",
    "fit_feature_head",
    "head_hyper_size",
    "head_meta_task",
    "head_predict",
    "head_query_loss",
    "init_head_hyper",
    "output_layer",
    "refit_head",
]

BAYES_ALGORITHMS = ("bayes_linear", "gp")
HEAD_LOSSES = ("nlpd", "mse")
HEAD_PREFIX = "head_hyper::"
_SHIFT = HEAD_PREFIX + "shift"


def _check_model(model: FunctionalModel, algorithm: str) -> None:
    if not callable(getattr(model, "features", None)) or not callable(
            getattr(model, "head_names", None)):
        raise InputError(f"algorithm {algorithm!r} fits a head on the model's features; model "
                         f"{model.name!r} has no features(params, inputs) (use the composition "
                         "or cgcnn model, or a gradient-based algorithm)")


def output_layer(model: FunctionalModel) -> tuple[str, str]:
    """Names of the output layer's weight and bias (the last two of ``model.head_names()``).

    Example:
        >>> output_layer(CompositionModel(["Fe", "Ni"]))
        ('head.weight', 'head.bias')
    """
    names = list(model.head_names())
    if len(names) < 2:
        raise InputError(f"model {model.name!r}: head_names() {names} does not name an output "
                         "layer's weight and bias")
    return names[-2], names[-1]


def head_hyper_size(algorithm: str, kernel: str = "rbf") -> int:
    """Entries of ``head_hyper::shift``: (log alpha, log beta) or the GP's four log values."""
    del kernel
    return 2 if algorithm == "bayes_linear" else 4


def init_head_hyper(params: Params, algorithm: str, kernel: str = "rbf") -> Params:
    """The extra meta-parameters of a head algorithm: a zero shift (the data-driven start)."""
    like = next(iter(params.values()))
    return {_SHIFT: torch.zeros(head_hyper_size(algorithm, kernel), dtype=like.dtype,
                                device=like.device)}


def _split(meta: Params) -> tuple[Params, Tensor | None]:
    params = {k: v for k, v in meta.items() if not k.startswith(HEAD_PREFIX)
              and not k.startswith("inner_lr::")}
    return params, meta.get(_SHIFT)


@dataclass
class HeadPosterior:
    """A head fitted to one support set, on top of the model: predicts from raw model inputs.

    Attributes:
        model: the feature model; ``params`` its (meta-learned) parameters.
        algorithm: ``"bayes_linear"`` or ``"gp"``.
        posterior: the head's :class:`LinearPosterior` or :class:`GPPosterior` on the features
            (for ``gp``, on the residuals about the model's prediction).

    Example:
        >>> post = adapt_head(model, meta_params, support, settings)
        >>> mean, std = post.predict(query.inputs)        # std includes the fitted noise
        >>> loo_mean, loo_std = post.loo()                # exact, no refitting
    """

    model: FunctionalModel
    params: Params
    algorithm: str
    posterior: LinearPosterior | GPPosterior
    dtype: torch.dtype = torch.float64

    def features(self, inputs: Any) -> Tensor:
        """The model's features at raw inputs, in float64 (the head's precision)."""
        return self.model.features(self.params, inputs).double()

    def _mean_fn(self, inputs: Any) -> Tensor:
        if self.algorithm == "gp":
            return self.model.forward(self.params, inputs).double()
        return torch.zeros((), dtype=torch.float64)

    def predict(self, inputs: Any, noise: bool = True) -> tuple[Tensor, Tensor]:
        """Predictive mean and std (model target units, the model's dtype) at raw inputs."""
        mean, std = self.posterior.predict(self.features(inputs), noise)
        return (mean + self._mean_fn(inputs)).to(self.dtype), std.to(self.dtype)

    def loo(self) -> tuple[Tensor, Tensor]:
        """Exact leave-one-out predictive mean and std of every support target (hyperparameters
        held fixed)."""
        mean, std = self.posterior.loo()
        if self.algorithm == "gp":
            # the GP was fitted on residuals; its LOO mean is of the residual
            offset = self.posterior.support_offset
            mean = mean + offset
        return mean.to(self.dtype), std.to(self.dtype)

    def loo_query_change(self, inputs: Any) -> tuple[Tensor, Tensor]:
        """(K, Q) exact change of each query's predictive mean and variance when support point
        i is removed (hyperparameters held fixed)."""
        d_mean, d_var = self.posterior.loo_query_change(self.features(inputs))
        return d_mean.to(self.dtype), d_var.to(self.dtype)

    @property
    def hyperparameters(self) -> dict[str, float]:
        """The fitted hyperparameters as floats (prior/noise precisions, or kernel values)."""
        p = self.posterior
        if isinstance(p, LinearPosterior):
            return {"alpha": float(p.alpha), "beta": float(p.beta),
                    "noise_std": float(p.noise_var.sqrt()), "jitter": p.jitter}
        out = {k: float(v) for k, v in p.hyperparameters.items()}
        out["jitter"] = p.jitter
        return out


def fit_feature_head(model: FunctionalModel, params: Params, support: Samples, algorithm: str,
                     *, shift: Tensor | None = None, steps: int = 10, kernel: str = "rbf",
                     differentiate: str = "implicit") -> HeadPosterior:
    """Fit a ``bayes_linear`` or ``gp`` head on ``model.features(params, support.inputs)``.

    The prior mean is the model: the output layer's ``[w, b]`` for ``bayes_linear``, the model's
    prediction (as the GP's mean function) for ``gp``. Also the non-meta baseline: pass
    pretrained parameters and no shift.

    Example:
        >>> post = fit_feature_head(model, pretrained_params, support, "gp")
        >>> mean, std = post.predict(query.inputs)

    Args:
        model: a model with ``features`` and ``head_names``.
        params: its parameters (differentiable: the fit is).
        support: support samples in the model's target space (no per-sample weights).
        algorithm: ``"bayes_linear"`` or ``"gp"``.
        shift: log-space shift of the hyperparameter start (``head_hyper::shift``).
        steps: Newton steps of the hyperparameter fit.
        kernel: ``"rbf"`` or ``"matern52"`` (GP).
        differentiate: ``"implicit"``, ``"unrolled"`` or ``"none"``.

    Raises:
        InputError: a model without features, fewer than 2 support points, weighted supports.
    """
    if algorithm not in BAYES_ALGORITHMS:
        raise InputError(f"head algorithm {algorithm!r}: expected one of "
                         f"{', '.join(BAYES_ALGORITHMS)}")
    _check_model(model, algorithm)
    y = support.y
    what = "Bayesian linear head" if algorithm == "bayes_linear" else "GP head"
    if y.shape[-1] < 2:
        raise InputError(f"{what}: {y.shape[-1]} support point cannot fit the head (its noise "
                         "and prior scale are estimated per task): at least 2 are needed")
    if support.weight is not None and bool((support.weight != 1).any()):
        raise InputError(f"{what}: per-sample support weights are not used by closed-form "
                         "heads; drop them (leave-one-out is exact through loo())")
    # The head works in float64 whatever the model's precision: K x K kernels of nearly equal
    # features (repeated alloy rows) overflowed float32 Newton steps into NaN meta-gradients.
    dtype = y.dtype
    phi = model.features(params, support.inputs).double()
    y = y.double()
    shift = None if shift is None else shift.double()
    if algorithm == "bayes_linear":
        wname, bname = output_layer(model)
        prior_mean = torch.cat([params[wname].reshape(-1), params[bname].reshape(-1)]).double()
        if prior_mean.shape[0] != phi.shape[-1] + 1:
            raise InputError(f"model {model.name!r}: output layer {wname} has "
                             f"{prior_mean.shape[0] - 1} weights for {phi.shape[-1]} features")
        post = fit_bayes_linear(phi, y, prior_mean=prior_mean, init_shift=shift, steps=steps,
                                differentiate=differentiate)
        return HeadPosterior(model, params, algorithm, post, dtype)
    base = model.forward(params, support.inputs).double()
    post = fit_gp(phi, y - base, kernel=kernel, init_shift=shift, steps=steps,
                  differentiate=differentiate)
    post.support_offset = base  # type: ignore[attr-defined]
    return HeadPosterior(model, params, algorithm, post, dtype)


def head_query_loss(model: FunctionalModel, meta: Params, support: Samples, query: Samples,
                    algorithm: str, *, steps: int = 10, loss: str = "nlpd",
                    kernel: str = "rbf", differentiate: str = "implicit") -> Tensor:
    """The meta-objective of one task: query NLPD (nats, mean) or MSE of the fitted head.

    Example:
        >>> head_query_loss(model, meta, task.support, task.query, "bayes_linear")
    """
    if loss not in HEAD_LOSSES:
        raise InputError(f"head loss {loss!r}: expected one of {', '.join(HEAD_LOSSES)}")
    params, shift = _split(meta)
    post = fit_feature_head(model, params, support, algorithm, shift=shift, steps=steps,
                            kernel=kernel, differentiate=differentiate)
    mean, std = post.predict(query.inputs)
    mean, std = mean.double(), std.double()
    if loss == "mse":
        return weighted_mse(mean, query.y.double(), query.weight).to(query.y.dtype)
    y = query.y.double()
    nlpd = gaussian_nlpd(mean, std, y)
    out = nlpd.mean() if query.weight is None else (
        (query.weight * nlpd).sum() / query.weight.sum())
    return out.to(query.y.dtype)


def head_meta_task(model: FunctionalModel, settings: Any
                   ) -> Callable[[Params, Samples, Samples], tuple[Params, Tensor]]:
    """The per-task ``(meta_params, support, query) -> (meta-gradient, query loss)`` of a head
    algorithm (``settings.algorithm`` in :data:`BAYES_ALGORITHMS`), for the engine."""
    _check_model(model, settings.algorithm)

    def loss_fn(meta: Params, support: Samples, query: Samples) -> Tensor:
        return head_query_loss(model, meta, support, query, settings.algorithm,
                               steps=int(settings.inner_steps), loss=settings.head_loss,
                               kernel=settings.kernel)

    def task(meta: Params, support: Samples, query: Samples) -> tuple[Params, Tensor]:
        leaves = {k: v.detach().requires_grad_(True) for k, v in meta.items()}
        with torch.enable_grad():
            value = loss_fn(leaves, support, query)
            grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        out = {k: torch.zeros_like(v) if g is None else g
               for (k, v), g in zip(leaves.items(), grads, strict=True)}
        return out, value.detach()

    return task


def adapt_head(model: FunctionalModel, meta_params: Params, support: Samples, settings: Any,
               steps: int | None = None) -> HeadPosterior:
    """Adaptation for a head algorithm: fit the head to ``support`` (detached).

    Example:
        >>> post = adapt_head(ck.model, ck.meta_params, support, ck.settings)
        >>> mean, std = post.predict(query_inputs)
    """
    params, shift = _split({k: v.detach() for k, v in meta_params.items()})
    n = int(settings.steps_at_eval if steps is None else steps)
    return fit_feature_head(model, params, support, settings.algorithm, shift=shift,
                            steps=max(n, 1), kernel=settings.kernel, differentiate="none")


def head_predict(model: FunctionalModel, meta_params: Params, support: Samples,
                 query_inputs: Any, settings: Any) -> tuple[Tensor, Tensor]:
    """Adapt the head to ``support`` and return the query's predictive (mean, std), detached."""
    with torch.no_grad():
        mean, std = adapt_head(model, meta_params, support, settings).predict(query_inputs)
    return mean.detach(), std.detach()


def head_as_params(model: FunctionalModel, post: HeadPosterior) -> Params:
    """The model's parameters with the output layer set to the posterior mean of ``[w, b]``
    (``bayes_linear`` only): ``model.forward`` then gives the predictive mean."""
    if post.algorithm != "bayes_linear":
        raise InputError("a GP head has no parameter-dict form: predict with adapt_head(...)"
                         ".predict(inputs) or adapt_and_predict")
    wname, bname = output_layer(model)
    m = post.posterior.weight_mean.detach()
    out = dict(post.params)
    out[wname] = m[:-1].reshape(post.params[wname].shape).to(post.params[wname])
    out[bname] = m[-1:].reshape(post.params[bname].shape).to(post.params[bname])
    return out


def refit_head(model: FunctionalModel, meta_params: Params, support: Samples,
               head: dict[str, Any], keep: Any = None,
               fixed: HeadPosterior | None = None) -> HeadPosterior:
    """Fit a head (``head``: ``algorithm``, ``steps``, ``kernel``) on the support rows ``keep``
    (all when None), detached; with ``fixed`` its hyperparameters (and intercept variance) are
    held, as the closed-form leave-one-out assumes, instead of refitted.

    Example:
        >>> full = refit_head(model, meta, support, {"algorithm": "gp", "steps": 10})
        >>> without_0 = refit_head(model, meta, support, {...}, keep=[1, 2, 3], fixed=full)
    """
    params, shift = _split({k: v.detach() for k, v in meta_params.items()})
    if keep is not None:
        idx = torch.as_tensor(list(keep), dtype=torch.long)
        inputs = support.inputs
        if hasattr(inputs, "index_select") and not hasattr(inputs, "edge_index"):
            inputs = inputs[idx]
        else:
            raise InputError("leave-one-out refits of a head need tensor inputs; for graph "
                             "supports use the estimator 'exact_closed_form'")
        support = Samples(inputs, support.y[idx], None)
    with torch.no_grad():
        if fixed is None:
            return fit_feature_head(model, params, support, head["algorithm"], shift=shift,
                                    steps=int(head["steps"]), kernel=head.get("kernel", "rbf"),
                                    differentiate="none")
        phi = model.features(params, support.inputs).double()
        p = fixed.posterior
        dtype = support.y.dtype
        y64 = support.y.double()
        if head["algorithm"] == "bayes_linear":
            post = fit_bayes_linear(phi, y64, prior_mean=p.prior_mean, alpha=p.alpha,
                                    beta=1.0 / p.noise_var, bias_var=p.bias_var,
                                    differentiate="none")
            return HeadPosterior(model, params, "bayes_linear", post, dtype)
        base = model.forward(params, support.inputs).double()
        hyper = {k: v.detach() for k, v in p.hyperparameters.items()}
        hyper["noise_var"] = p.noise_var.detach()
        post = fit_gp(phi, y64 - base, kernel=p.kernel, linear=p.linear,
                      bias_var=p.bias_var, noise_var=hyper["noise_var"], init=hyper, steps=0,
                      differentiate="none")
        post.support_offset = base  # type: ignore[attr-defined]
        return HeadPosterior(model, params, "gp", post, dtype)
