"""MAML and its relatives as pure functions of a parameter dict and a meta-batch.

Every algorithm is a per-task function ``(meta_params, support, query) -> (meta-gradient, query
loss)`` built on the one inner loop (:func:`matmeta.meta.inner_loop`); :func:`meta_gradient`
averages it over a meta-batch, either with ``torch.func.vmap`` over stacked tasks (tensor-input
models: parametric laws, MLPs) or with a loop (graph models, whose tasks have different sizes).

Algorithms (``MetaSettings.algorithm``):

- ``maml``: exact second-order MAML (differentiates through every inner step).
- ``fomaml``: first-order MAML (inner gradients detached: the query gradient at the adapted
  parameters).
- ``reptile``: the meta-gradient is ``params - adapted`` (adapted on the support set; the query
  set only measures the loss); SGD with rate eps on it is Reptile's
  ``params += eps * (adapted - params)``.
- ``metasgd``: second-order MAML that also learns one positive inner rate per parameter entry,
  stored as ``"inner_lr::<name>"`` = log(rate) in the meta-parameters.
- ``anil``: second-order MAML adapting only ``trainable`` (the head of a network, or chosen physical
  parameters of a parametric law); the rest is meta-learned but not adapted.
- ``imaml``: implicit MAML: the inner problem is the support loss plus
  ``proximal / 2 * ||phi - params||^2``; the meta-gradient ``(I + H / proximal)^-1 g_query`` is
  solved by conjugate gradients on Hessian-vector products (``torch.func.jvp`` of ``grad``).
- ``bayes_linear`` / ``gp``: adaptation fits a Bayesian linear or GP head in closed form on the
  model's features (hyperparameters per task by marginal likelihood, ``inner_steps`` Newton
  steps); the task loss is the query NLPD (``head_loss="mse"``: query MSE), differentiated
  through the fit (:mod:`matmeta.bayes._meta`).

Example:
    >>> settings = MetaSettings(algorithm="maml", inner_steps=5, inner_lr=0.01)
    >>> meta = init_meta_params(model, model.init_params(gen), settings)
    >>> grads, losses = meta_gradient(model, meta, tasks, settings)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from matmeta.config import settings_from_dict
from matmeta.errors import InputError
from matmeta.meta._inner import inner_loop
from matmeta.meta._tasks import Task, stack_tasks
from matmeta.models._protocol import FunctionalModel, Params, Samples, sample_loss

__all__ = [
    "ALGORITHMS",
    "LR_PREFIX",
    "MetaSettings",
    "init_meta_params",
    "model_params",
    "inner_rates",
    "adapt_params",
    "adapt_and_predict",
    "task_meta_gradient",
    "meta_gradient",
    "query_losses",
]

ALGORITHMS = ("anil", "bayes_linear", "fomaml", "gp", "imaml", "maml", "metasgd", "reptile")
# adaptation = a closed-form head fitted on the model's features (matmeta.bayes._meta)
HEAD_ALGORITHMS = ("bayes_linear", "gp")
LR_PREFIX = "inner_lr::"
HEAD_PREFIX = "head_hyper::"


@dataclass
class MetaSettings:
    """How a meta-learner adapts and how its meta-gradient is computed.

    Example:
        >>> MetaSettings(algorithm="anil", trainable=model.head_names(), inner_steps=3)

    Attributes:
        algorithm: one of ``maml``, ``fomaml``, ``reptile``, ``metasgd``, ``anil``, ``imaml``.
        inner_steps: gradient steps on the support set during meta-training.
        inner_lr: inner learning rate (Meta-SGD: the initial value of every learned rate).
        eval_inner_steps: steps used when adapting at evaluation/prediction time (None: the same
            as ``inner_steps``).
        trainable: parameter names the inner loop adapts (None: all; ANIL defaults to the model's
            ``head_names()``).
        proximal: implicit MAML's regulariser strength lambda (1/length^2 of the parameters).
        cg_steps: conjugate-gradient iterations for implicit MAML.
        batching: ``"auto"`` (vmap for equally sized tensor-input tasks, loop otherwise;
            always the loop for the head algorithms), ``"vmap"`` (refused for the head
            algorithms) or ``"loop"``. (Hand-batched per-task parameters, bmm without vmap, were
            measured no faster than vmap for the MLP: benchmarks/meta.md.)
        head_loss: head algorithms: the query loss, ``"nlpd"`` (nats) or ``"mse"``.
        kernel: ``gp``: ``"rbf"`` or ``"matern52"`` (plus a linear part).
    """

    algorithm: str = "maml"
    inner_steps: int = 5
    inner_lr: float = 0.01
    eval_inner_steps: int | None = None
    trainable: list[str] | None = None
    proximal: float = 1.0
    cg_steps: int = 10
    batching: str = "auto"
    head_loss: str = "nlpd"
    kernel: str = "rbf"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise InputError(f"unknown algorithm {self.algorithm!r}: expected one of "
                             f"{', '.join(ALGORITHMS)}")
        if int(self.inner_steps) < 0:
            raise InputError(f"inner_steps {self.inner_steps}: expected >= 0")
        if self.eval_inner_steps is not None and int(self.eval_inner_steps) < 0:
            raise InputError(f"eval_inner_steps {self.eval_inner_steps}: expected >= 0")
        if not float(self.inner_lr) > 0:
            raise InputError(f"inner_lr {self.inner_lr}: expected a positive learning rate")
        if self.algorithm == "imaml" and not float(self.proximal) > 0:
            raise InputError(f"proximal {self.proximal}: implicit MAML needs a positive value")
        if self.batching not in ("auto", "vmap", "loop"):
            raise InputError(f"batching {self.batching!r}: expected auto, vmap or loop")
        if self.batching == "vmap" and self.algorithm in HEAD_ALGORITHMS:
            raise InputError(f"batching 'vmap' with algorithm {self.algorithm!r}: the head's "
                             "evidence fit stops its Newton steps per task, so head algorithms "
                             "loop over tasks; use batching 'auto' or 'loop'")
        if self.trainable is not None:
            self.trainable = list(self.trainable)
        if self.head_loss not in ("nlpd", "mse"):
            raise InputError(f"head_loss {self.head_loss!r}: expected nlpd or mse")
        if self.kernel not in ("rbf", "matern52"):
            raise InputError(f"kernel {self.kernel!r}: expected rbf or matern52")

    @property
    def steps_at_eval(self) -> int:
        return int(self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaSettings:
        d = dict(d)
        if d.get("algorithm") in HEAD_ALGORITHMS and d.get("batching") == "vmap":
            # written before 'vmap' was refused for the head algorithms, which looped anyway
            d["batching"] = "loop"
        return settings_from_dict(cls, d, "meta-learning settings")

    def resolve(self, model: FunctionalModel) -> MetaSettings:
        """A copy with ANIL's default trainable names filled in from the model."""
        out = dataclasses.replace(self)
        if out.algorithm == "anil" and out.trainable is None:
            heads = getattr(model, "head_names", None)
            if heads is None:
                raise InputError(f"ANIL needs the names of the parameters to adapt: model "
                                 f"{model.name!r} has no head_names(); pass trainable=[...]")
            out.trainable = list(heads())
        return out


def model_params(meta_params: Params) -> Params:
    """The model's parameters inside a meta-parameter dict (drops Meta-SGD's rates and the
    heads' ``head_hyper::`` hyperparameter shift)."""
    return {k: v for k, v in meta_params.items()
            if not k.startswith(LR_PREFIX) and not k.startswith(HEAD_PREFIX)}


def inner_rates(meta_params: Params) -> Params | None:
    """Meta-SGD's positive per-parameter inner rates ``exp(log_rate)``, or None."""
    rates = {k[len(LR_PREFIX):]: torch.exp(v) for k, v in meta_params.items()
             if k.startswith(LR_PREFIX)}
    return rates or None


def init_meta_params(model: FunctionalModel, params: Params, settings: MetaSettings) -> Params:
    """The meta-parameters: the model's parameters, plus Meta-SGD's log rates."""
    settings = settings.resolve(model)
    out = {k: v.detach().clone() for k, v in params.items()}
    if settings.trainable is not None:
        missing = sorted(set(settings.trainable) - set(params))
        if missing:
            raise InputError(f"trainable names {missing} are not parameters of model "
                             f"{model.name!r} ({', '.join(params)})")
    if settings.algorithm == "metasgd":
        names = settings.trainable if settings.trainable is not None else list(params)
        for k in names:
            out[LR_PREFIX + k] = torch.full_like(params[k], math.log(settings.inner_lr))
    if settings.algorithm in HEAD_ALGORITHMS:
        from matmeta.bayes._meta import _check_model, init_head_hyper

        _check_model(model, settings.algorithm)
        out.update(init_head_hyper(out, settings.algorithm, settings.kernel))
    return out


def adapt_params(model: FunctionalModel, meta_params: Params, support: Samples,
                 settings: MetaSettings, steps: int | None = None,
                 first_order: bool = False) -> Params:
    """Adapt the meta-learned parameters to a support set (the inner loop the algorithm uses).

    Example:
        >>> adapted = adapt_params(model, meta, support, settings)   # eval_inner_steps steps
        >>> model.forward(adapted, query.inputs)

    Args:
        steps: inner steps (default: ``settings.steps_at_eval``).
        first_order: detach inner gradients.

    Returns:
        The model's adapted parameter dict (no Meta-SGD rates).
    """
    settings = settings.resolve(model)
    if settings.algorithm in HEAD_ALGORITHMS:
        # a Bayesian linear head's posterior mean is an output layer; a GP head has no such form
        from matmeta.bayes._meta import adapt_head, head_as_params

        return head_as_params(model, adapt_head(model, meta_params, support, settings, steps))
    steps = settings.steps_at_eval if steps is None else int(steps)
    proximal = float(settings.proximal) if settings.algorithm == "imaml" else 0.0
    return inner_loop(model, model_params(meta_params), support, steps=steps,
                      lr=float(settings.inner_lr), per_param_lr=inner_rates(meta_params),
                      trainable=settings.trainable, first_order=first_order, proximal=proximal)


def adapt_and_predict(model: FunctionalModel, meta_params: Params, support: Samples,
                      query_inputs: Any, settings: MetaSettings,
                      steps: int | None = None) -> Tensor:
    """Adapt to ``support`` and predict ``query_inputs`` (in the model's target space).

    Example:
        >>> pred = adapt_and_predict(model, meta, task.support, task.query.inputs, settings)
    """
    if settings.algorithm in HEAD_ALGORITHMS:
        from matmeta.bayes._meta import head_predict

        return head_predict(model, meta_params, support, query_inputs, settings)[0]
    adapted = adapt_params(model, {k: v.detach() for k, v in meta_params.items()}, support,
                           settings, steps=steps)
    return model.forward(adapted, query_inputs).detach()


def _maml_query_loss(model: FunctionalModel, settings: MetaSettings, first_order: bool):
    def query_loss(meta: Params, support: Samples, query: Samples) -> Tensor:
        adapted = inner_loop(model, model_params(meta), support, steps=settings.inner_steps,
                             lr=float(settings.inner_lr), per_param_lr=inner_rates(meta),
                             trainable=settings.trainable, first_order=first_order)
        return sample_loss(model, adapted, query)

    return query_loss


def _maml_task(model: FunctionalModel, settings: MetaSettings, first_order: bool):
    query_loss = _maml_query_loss(model, settings, first_order)

    def task(meta: Params, support: Samples, query: Samples) -> tuple[Params, Tensor]:
        return torch.func.grad_and_value(query_loss)(meta, support, query)

    return task


def _reptile_task(model: FunctionalModel, settings: MetaSettings):
    def task(meta: Params, support: Samples, query: Samples) -> tuple[Params, Tensor]:
        params = {k: v.detach() for k, v in meta.items()}
        adapted = inner_loop(model, params, support, steps=settings.inner_steps,
                             lr=float(settings.inner_lr), trainable=settings.trainable)
        grads = {k: params[k] - adapted[k] for k in params}
        return grads, sample_loss(model, adapted, query)

    return task


def _cg(matvec, b: Params, iters: int) -> Params:
    """Conjugate gradients for ``A x = b`` (A symmetric positive definite) over parameter dicts.

    A fixed iteration count and no data-dependent branches, so it runs under ``vmap``.
    """
    def dot(a: Params, c: Params) -> Tensor:
        return sum((a[k] * c[k]).sum() for k in a)

    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    p = dict(b)
    rs = dot(r, r)
    tiny = torch.finfo(rs.dtype).tiny
    for _ in range(iters):
        ap = matvec(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > tiny, rs / pap.clamp_min(tiny), torch.zeros_like(rs))
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rs_new = dot(r, r)
        beta = torch.where(rs > tiny, rs_new / rs.clamp_min(tiny), torch.zeros_like(rs))
        p = {k: r[k] + beta * p[k] for k in p}
        rs = rs_new
    return x


def _imaml_task(model: FunctionalModel, settings: MetaSettings):
    lam = float(settings.proximal)

    def task(meta: Params, support: Samples, query: Samples) -> tuple[Params, Tensor]:
        params = {k: v.detach() for k, v in meta.items()}
        adapted = inner_loop(model, params, support, steps=settings.inner_steps,
                             lr=float(settings.inner_lr), trainable=settings.trainable,
                             proximal=lam)
        adapted = {k: v.detach() for k, v in adapted.items()}
        keys = list(params) if settings.trainable is None else list(settings.trainable)
        frozen = {k: v for k, v in adapted.items() if k not in keys}
        fast = {k: adapted[k] for k in keys}

        def support_loss(f: Params) -> Tensor:
            return sample_loss(model, {**frozen, **f}, support)

        g_query, loss = torch.func.grad_and_value(
            lambda p: sample_loss(model, p, query))(adapted)
        grad_support = torch.func.grad(support_loss)

        def matvec(v: Params) -> Params:
            hv = torch.func.jvp(grad_support, (fast,), (v,))[1]
            return {k: v[k] + hv[k] / lam for k in v}

        sol = _cg(matvec, {k: g_query[k] for k in keys}, int(settings.cg_steps))
        # Frozen parameters (ANIL with iMAML) take the direct query gradient: the implicit
        # correction through the adapted head is left out.
        grads = {k: sol[k] if k in sol else g_query[k] for k in params}
        return grads, loss

    return task


def task_meta_gradient(model: FunctionalModel, settings: MetaSettings):
    """The per-task function ``(meta_params, support, query) -> (meta-gradient, query loss)``.

    Pure and free of data-dependent Python control flow, so ``torch.func.vmap`` maps it over
    stacked tasks.
    """
    settings = settings.resolve(model)
    alg = settings.algorithm
    if alg in HEAD_ALGORITHMS:
        from matmeta.bayes._meta import head_meta_task

        return head_meta_task(model, settings)
    if alg in ("maml", "anil", "metasgd"):
        return _maml_task(model, settings, first_order=False)
    if alg == "fomaml":
        return _maml_task(model, settings, first_order=True)
    if alg == "reptile":
        return _reptile_task(model, settings)
    return _imaml_task(model, settings)


def _batching(tasks: Sequence[Task], settings: MetaSettings) -> str:
    if settings.algorithm in HEAD_ALGORITHMS:
        return "loop"  # the head's fit stops its Newton steps early per task
    tensors = all(isinstance(t.support.inputs, Tensor) and isinstance(t.query.inputs, Tensor)
                  for t in tasks)
    same = tensors and len({(tuple(t.support.inputs.shape), tuple(t.query.inputs.shape))
                            for t in tasks}) == 1
    if settings.batching == "vmap":
        if not same:
            raise InputError("batching='vmap' needs equally sized tensor-input tasks; graph "
                             "tasks use the loop")
        return "vmap"
    if settings.batching == "loop":
        return "loop"
    return "vmap" if same else "loop"


def meta_gradient(model: FunctionalModel, meta_params: Params, tasks: Sequence[Task],
                  settings: MetaSettings, reduction: str = "mean") -> tuple[Params, Tensor]:
    """The meta-gradient of a meta-batch and each task's query loss after adaptation.

    Example:
        >>> grads, losses = meta_gradient(model, meta, sampler.sample(), settings)

    Args:
        reduction: ``"mean"`` over tasks, or ``"sum"`` (distributed ranks sum, then divide by
            the global task count).

    Returns:
        (gradient dict with the keys of ``meta_params``, (n_tasks,) query losses, detached).

    Raises:
        InputError: an empty meta-batch.
    """
    if len(tasks) == 0:
        raise InputError("empty meta-batch: there are no tasks to meta-train on")
    settings = settings.resolve(model)
    fn = task_meta_gradient(model, settings)
    meta = {k: v.detach() for k, v in meta_params.items()}
    if _batching(tasks, settings) == "vmap":
        support, query = stack_tasks(tasks)
        dims = tuple(Samples(0, 0, None if s.weight is None else 0) for s in (support, query))
        grads, losses = torch.func.vmap(fn, in_dims=(None, *dims))(meta, support, query)
        total = {k: g.sum(0) for k, g in grads.items()}
    elif settings.algorithm in ("maml", "anil", "metasgd", "fomaml"):
        # Loop path of the MAML family: the inner loop stays torch.func, the outer derivative is
        # taken by autograd, measured 1.26x faster than an outer torch.func.grad on the CGCNN.
        query_loss = _maml_query_loss(model, settings, settings.algorithm == "fomaml")
        leaves = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
        total = {k: torch.zeros_like(v) for k, v in meta.items()}
        loss_list = []
        with torch.enable_grad():
            for t in tasks:
                loss = query_loss(leaves, t.support, t.query)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                for k, g in zip(leaves, grads, strict=True):
                    if g is not None:
                        total[k] = total[k] + g
                loss_list.append(loss.detach())
        losses = torch.stack(loss_list)
    else:
        total = {k: torch.zeros_like(v) for k, v in meta.items()}
        loss_list = []
        for t in tasks:
            g, loss = fn(meta, t.support, t.query)
            for k in total:
                total[k] = total[k] + g[k]
            loss_list.append(loss)
        losses = torch.stack(loss_list)
    if reduction == "mean":
        total = {k: g / len(tasks) for k, g in total.items()}
    elif reduction != "sum":
        raise ValueError(f"reduction {reduction!r}: expected 'mean' or 'sum'")
    return total, losses.detach()


def query_losses(model: FunctionalModel, meta_params: Params, tasks: Sequence[Task],
                 settings: MetaSettings, steps: int | None = None) -> Tensor:
    """Each task's query loss after adapting with ``steps`` (default: evaluation) inner steps."""
    settings = settings.resolve(model)
    meta = {k: v.detach() for k, v in meta_params.items()}
    head = settings.algorithm in HEAD_ALGORITHMS
    if head:
        # the task loss the head algorithm meta-trains on (query NLPD or MSE)
        from matmeta.bayes._meta import head_query_loss
    out = []
    for t in tasks:
        if head:
            with torch.no_grad():
                loss = head_query_loss(model, meta, t.support, t.query, settings.algorithm,
                                       steps=settings.steps_at_eval if steps is None else steps,
                                       loss=settings.head_loss, kernel=settings.kernel,
                                       differentiate="none")
            out.append(loss)
            continue
        adapted = adapt_params(model, meta, t.support, settings, steps=steps)
        out.append(sample_loss(model, adapted, t.query).detach())
    if not out:
        raise InputError("no tasks to evaluate")
    return torch.stack(out)
