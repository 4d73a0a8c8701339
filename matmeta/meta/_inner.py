"""The one inner loop: gradient steps on a support set, over parameter dicts.

Every learner (MAML, first-order MAML, Reptile, Meta-SGD, ANIL, implicit MAML), adaptation at
prediction time, and the influence tools call :func:`inner_loop`. It is written with
``torch.func.grad`` so it composes with ``vmap`` over tasks and with an outer gradient (second-order
MAML differentiates straight through it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from matmeta.models._protocol import FunctionalModel, Params, Samples, sample_loss

__all__ = ["inner_loop", "InnerLoopSettings"]

LossFn = Callable[[Params, Samples], Tensor]


class InnerLoopSettings(dict):
    """Plain-dict settings of an inner loop (steps, lr, trainable keys, first_order, proximal).

    A dict so it stores in a checkpoint as-is.
    """


def inner_loop(
    model: FunctionalModel | None,
    params: Params,
    support: Samples,
    *,
    steps: int,
    lr: float | Tensor,
    per_param_lr: Params | None = None,
    trainable: Iterable[str] | None = None,
    first_order: bool = False,
    proximal: float = 0.0,
    loss_fn: LossFn | None = None,
    return_trajectory: bool = False,
) -> Params | tuple[Params, list[Params]]:
    """Run ``steps`` plain gradient steps on the support loss and return the adapted params.

    Example:
        >>> adapted = inner_loop(model, params, support, steps=5, lr=0.01)
        >>> query_loss = sample_loss(model, adapted, query)   # differentiable w.r.t. params

    Args:
        model: the model; its :func:`sample_loss` is the loss unless ``loss_fn`` is given.
        params: initial parameters (may require grad; the result stays differentiable).
        support: the support samples (their ``weight`` enters the loss).
        steps: number of gradient steps (0 returns ``params`` unchanged).
        lr: inner learning rate (a float or a scalar tensor, which may be learned).
        per_param_lr: Meta-SGD rates, one tensor per trainable parameter (same shape); overrides
            ``lr`` for the keys it holds.
        trainable: names of the parameters to adapt (ANIL: the head, or the physical parameters);
            ``None`` adapts all.
        first_order: detach the inner gradients (first-order MAML); the result still depends on
            ``params`` through the identity path.
        proximal: strength of ``proximal / 2 * ||p - params||^2`` added to the support loss
            (implicit MAML's regulariser); 0 switches it off.
        loss_fn: ``loss_fn(params, samples) -> scalar``; defaults to :func:`sample_loss`.
        return_trajectory: also return the list of parameter dicts before each step.

    Returns:
        The adapted parameter dict (same keys as ``params``), and the trajectory when asked.
    """
    if loss_fn is None:
        if model is None:
            raise ValueError("inner_loop needs a model or a loss_fn")
        loss_fn = lambda p, s: sample_loss(model, p, s)  # noqa: E731
    keys = list(params) if trainable is None else [k for k in params if k in set(trainable)]
    missing = set(trainable or ()) - set(params)
    if missing:
        raise ValueError(f"trainable names not among the parameters: {sorted(missing)}")
    frozen = {k: v for k, v in params.items() if k not in keys}
    anchor = {k: params[k] for k in keys}

    def support_loss(fast: Params) -> Tensor:
        loss = loss_fn({**frozen, **fast}, support)
        if proximal:
            loss = loss + 0.5 * proximal * sum(((fast[k] - anchor[k]) ** 2).sum() for k in keys)
        return loss

    grad_fn = torch.func.grad(support_loss)
    fast = dict(anchor)
    trajectory: list[Params] = []
    for _ in range(steps):
        if return_trajectory:
            trajectory.append({**frozen, **fast})
        grads = grad_fn(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        rates = {k: per_param_lr[k] if per_param_lr is not None and k in per_param_lr else lr
                 for k in keys}
        fast = {k: fast[k] - rates[k] * grads[k] for k in keys}
    adapted = {**frozen, **fast}
    adapted = {k: adapted[k] for k in params}  # keep the caller's key order
    if return_trajectory:
        return adapted, trajectory
    return adapted
