"""Deep ensembles of meta-learned initial parameters, trained together, with calibrated spread.

An :class:`Ensemble` is M meta-learned initialisations of one model, held as one stacked parameter
dict (every tensor has a leading member axis, as ``torch.func.stack_module_state`` lays out a list
of modules). :func:`meta_train_ensemble` trains the members together: each meta-step computes every
member's meta-gradient with ``torch.func.vmap`` over the member axis (the same per-task functions
as :func:`matmeta.meta.meta_gradient`) and applies the outer optimiser of
:func:`matmeta.meta.meta_train` to the stacked tensors. Member ``m`` starts from the model's
initialisation with seed ``seed + m`` and, by default for tensor inputs, draws its own episodes
(sampler seed ``seed + m``), so it is exactly the run ``meta_train(..., seed=seed + m)`` would
make alone; the tests check that to 1e-6 in float64.

At prediction time every member adapts to the support set (vmapped) and predicts; the spread of
the members plus a noise term calibrated on validation families (:func:`calibrate_noise`) is the
predictive standard deviation, so the 90% interval covers about 90% of held-out values there.

Example:
    >>> ens = meta_train_ensemble(model, train_fams, val_fams, members=5,
    ...                           settings=MetaSettings("maml", inner_steps=5, inner_lr=0.01),
    ...                           train=MetaTrainSettings(steps=500), out="ensemble.pt")
    >>> mean, std = ensemble_predict(ens, support, query_inputs)   # model (target) units
    >>> ens = load_ensemble("ensemble.pt")
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor

from matmeta.checkpoint import load_checkpoint, save_checkpoint
from matmeta.errors import CheckpointError, ConvergenceError, InputError
from matmeta.meta._algorithms import (
    MetaSettings,
    _batching,
    adapt_params,
    init_meta_params,
    meta_gradient,
    model_params,
    task_meta_gradient,
)
from matmeta.meta._tasks import EpisodeSampler, Family, Task, stack_tasks, task_to
from matmeta.meta._train import (
    MetaTrainSettings,
    _check_finite_members,
    _check_resume,
    _dist,
    _test_kill_step,
    inner_record,
    outer_init,
    outer_update,
)
from matmeta.models._protocol import FunctionalModel, Params, Samples, weighted_mse

__all__ = [
    "ENSEMBLE_ALGORITHMS",
    "EPISODES",
    "MEMBER_BATCHING",
    "Ensemble",
    "adapt_ensemble",
    "calibrate_noise",
    "calibrate_noise_by_k",
    "ensemble_predict",
    "load_ensemble",
    "meta_train_ensemble",
    "noise_for_k",
    "predict_members",
    "save_ensemble",
    "stack_params",
    "unstack_params",
]

KIND = "ensemble"
# gradient-step learners: their adaptation is the same fixed-length loop for every member, so
# it maps over members (the Bayesian-head algorithms give their own predictive spread)
ENSEMBLE_ALGORITHMS = ("anil", "fomaml", "imaml", "maml", "metasgd", "reptile")
EPISODES = ("auto", "own", "shared")
MEMBER_BATCHING = ("auto", "vmap", "loop")


@dataclass
class Ensemble:
    """M meta-learned initialisations of one model, stacked, and how to adapt and widen them.

    Example:
        >>> ens.members                      # M
        >>> ens.member(0)                    # member 0's meta-parameters (a plain dict)
        >>> mean, std = ensemble_predict(ens, support, query_inputs)

    Attributes:
        model: the model (one architecture for every member).
        meta_params: stacked meta-parameters: every tensor has a leading member axis M (model
            parameters plus Meta-SGD's log rates).
        settings: the inner loop every member adapts with.
        train: the outer-loop settings it was trained with.
        noise_std: extra predictive noise in model (target) units, calibrated on validation
            families so that the 90% interval covers about 90% there at the training support
            size ``train.k_shot``; 0.0 if not calibrated.
        noise_std_by_k: the same calibrated for several support sizes k (``train.k_shot`` and
            those of 1, 2, 3, 5, 10, 20 that at least half the validation families, and two,
            have rows for): adaptation from k rows takes its noise from here
            (:meth:`noise_for`). Empty if not calibrated.
        history: one dict per meta-step: ``step``, ``train_loss`` (mean over members) and, when
            measured, ``val_loss`` (mean member loss) and ``val_loss_ensemble`` (loss of the
            members' mean prediction).
        extra: what the checkpoint stores besides (featurizer, target transform, families...).
    """

    model: FunctionalModel
    meta_params: Params
    settings: MetaSettings
    train: MetaTrainSettings
    noise_std: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    noise_std_by_k: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _members_of(self.meta_params)
        if not (math.isfinite(float(self.noise_std)) and float(self.noise_std) >= 0):
            raise InputError(f"noise_std {self.noise_std}: expected a finite value >= 0 "
                             "(model units)")
        self.noise_std = float(self.noise_std)
        table = {int(k): float(v) for k, v in dict(self.noise_std_by_k).items()}
        if any(k < 1 or not (math.isfinite(v) and v >= 0) for k, v in table.items()):
            raise InputError(f"noise_std_by_k {table}: expected support sizes >= 1 with finite "
                             "values >= 0 (model units)")
        self.noise_std_by_k = dict(sorted(table.items()))

    def noise_for(self, k: int | None) -> float:
        """The calibrated noise std for adaptation from ``k`` support rows (None: no
        adaptation, the training size's): see :func:`noise_for_k`."""
        return noise_for_k(self.noise_std_by_k, k, self.noise_std)

    @property
    def members(self) -> int:
        """Number of members M."""
        return _members_of(self.meta_params)

    @property
    def params(self) -> Params:
        """The stacked meta-learned initial model parameters (no Meta-SGD rates)."""
        return model_params(self.meta_params)

    def member(self, i: int) -> Params:
        """Member ``i``'s meta-parameters as a plain (unstacked) dict."""
        if not -self.members <= int(i) < self.members:
            raise InputError(f"member {i}: this ensemble has {self.members} members")
        return {k: v[int(i)] for k, v in self.meta_params.items()}


def stack_params(dicts: Sequence[Params]) -> Params:
    """Stack parameter dicts along a new leading member axis (``stack_module_state``'s layout).

    Example:
        >>> stacked = stack_params([model.init_params(torch.Generator().manual_seed(s))
        ...                         for s in range(5)])        # every tensor (5, ...)
    """
    if not dicts:
        raise InputError("no parameter dicts to stack: an ensemble needs at least one member")
    keys = list(dicts[0])
    for i, d in enumerate(dicts):
        if list(d) != keys:
            raise InputError(f"member {i}'s parameter names differ from member 0's: "
                             f"{sorted(set(d) ^ set(keys))[:5]}")
    return {k: torch.stack([d[k] for d in dicts]) for k in keys}


def unstack_params(stacked: Params) -> list[Params]:
    """The inverse of :func:`stack_params`: one plain dict per member."""
    return [{k: v[i] for k, v in stacked.items()} for i in range(_members_of(stacked))]


def _members_of(stacked: Params) -> int:
    if not stacked:
        raise InputError("empty parameter dict: an ensemble needs parameters")
    sizes = {k: (int(v.shape[0]) if v.dim() > 0 else None) for k, v in stacked.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise InputError("stacked ensemble parameters need one leading member axis of the same "
                         f"size on every tensor; leading sizes are {sizes}")
    return next(iter(sizes.values()))


def _check_algorithm(settings: MetaSettings) -> None:
    if settings.algorithm not in ENSEMBLE_ALGORITHMS:
        raise InputError(f"algorithm {settings.algorithm!r} has no ensemble form: ensembles "
                         f"meta-train {', '.join(ENSEMBLE_ALGORITHMS)} (a Bayesian head gives "
                         "its own predictive std)")


def _need_two(members: int, what: str) -> None:
    if members < 2:
        raise InputError(f"uncertainty needs >= 2 members; this ensemble has {members} "
                         f"({what}): train it with members >= 2, or use its point prediction")


# ------------------------------------------------------------------ adaptation and prediction
def adapt_ensemble(model: FunctionalModel, meta_params: Params, support: Samples,
                   settings: MetaSettings, *, steps: int | None = None) -> Params:
    """Adapt every member to one support set, vmapped over the member axis.

    Member ``m`` of the result equals ``adapt_params(model, member_m, support, settings)``.

    Example:
        >>> adapted = adapt_ensemble(ens.model, ens.meta_params, support, ens.settings)
        >>> predict_members(ens.model, adapted, query_inputs)      # (M, n)

    Args:
        model: the model.
        meta_params: stacked meta-parameters (leading member axis).
        support: the support samples, shared by every member.
        settings: the inner loop (its evaluation steps unless ``steps`` is given).
        steps: inner steps to take instead.

    Returns:
        The stacked adapted model parameters (no Meta-SGD rates), detached.
    """
    _members_of(meta_params)
    _check_algorithm(settings)
    settings = settings.resolve(model)
    meta = {k: v.detach() for k, v in meta_params.items()}

    def one(p: Params) -> Params:
        return adapt_params(model, p, support, settings, steps=steps)

    with torch.enable_grad():  # the inner loop differentiates even when the caller does not
        adapted = torch.func.vmap(one)(meta)
    return {k: v.detach() for k, v in adapted.items()}


def predict_members(model: FunctionalModel, params: Params, inputs: Any) -> Tensor:
    """Every member's prediction for ``inputs``: shape (M, n), in model (target) units.

    Example:
        >>> predict_members(model, adapted, query_inputs).mean(0)   # the ensemble mean
    """
    _members_of(params)
    with torch.no_grad():
        return torch.func.vmap(model.forward, in_dims=(0, None))(params, inputs)


def _moments(preds: Tensor) -> tuple[Tensor, Tensor]:
    # the unbiased spread: with 5 members the biased one is 20% narrower in variance
    return preds.mean(0), preds.var(0, unbiased=True)


def noise_for_k(table: dict[int, float], k: int | None, default: float) -> float:
    """The noise std for ``k`` support rows from a calibration table {k: std}: exact at a
    calibrated k, linear in ln k between two, the nearest end outside them: beyond the largest
    k the noise of fewer rows (wider intervals than needed), below the smallest the noise of
    more rows (narrower than they should be; :func:`matmeta.adapt` warns). ``default`` where
    the table is empty or ``k`` is None.

    Example:
        >>> noise_for_k({1: 0.6, 5: 0.4}, 3, 0.4)      # 0.6 - 0.2 * ln 3 / ln 5
        0.4634...
    """
    if not table or k is None:
        return float(default)
    ks = sorted(table)
    k = min(max(int(k), ks[0]), ks[-1])
    if k in table:
        return float(table[k])
    hi = ks[bisect.bisect(ks, k)]
    lo = ks[bisect.bisect(ks, k) - 1]
    w = (math.log(k) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return float((1.0 - w) * table[lo] + w * table[hi])


def ensemble_predict(ens: Ensemble, support: Samples | None, query_inputs: Any, *,
                     steps: int | None = None) -> tuple[Tensor, Tensor]:
    """Adapt every member to ``support`` and predict: the mean and std over members.

    ``std = sqrt(member variance + noise**2)``: the members' unbiased variance plus the noise
    term :func:`calibrate_noise` measured on validation families for this support size
    (:meth:`Ensemble.noise_for`). In the units the ensemble
    was trained in (apply the target transform's inverse to the mean and the interval ends).

    Example:
        >>> mean, std = ensemble_predict(ens, support, query.inputs)
        >>> lo, hi = mean - 1.645 * std, mean + 1.645 * std          # the 90% interval

    Args:
        ens: the ensemble.
        support: support samples (None: no adaptation, the meta-learned initialisations).
        query_inputs: inputs of the n samples to predict.
        steps: inner steps instead of the settings' evaluation steps.

    Returns:
        (mean (n,), std (n,)).

    Raises:
        InputError: an ensemble of one member (no spread to measure).
    """
    _need_two(ens.members, "ensemble_predict")
    if support is None:
        params = model_params({k: v.detach() for k, v in ens.meta_params.items()})
    else:
        params = adapt_ensemble(ens.model, ens.meta_params, support, ens.settings, steps=steps)
    mean, var = _moments(predict_members(ens.model, params, query_inputs))
    # the support's size: its rows with weight (a weight-0 row is no measurement)
    k = None if support is None else int(
        support.y.shape[0] if support.weight is None else (support.weight > 0).sum())
    noise = ens.noise_for(k)
    return mean, torch.sqrt(var + noise ** 2)


# ------------------------------------------------------------------ calibration
def _z(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise InputError(f"interval level {level}: expected a fraction strictly between 0 and 1")
    return math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(float(level),
                                                                    dtype=torch.float64)))


# support sizes the noise term is calibrated for at the end of meta-training (besides the
# training k), as far as the validation families have rows for them
CALIBRATION_KS = (1, 2, 3, 5, 10, 20)


def calibrate_noise_by_k(ens: Ensemble, val_families: Sequence[Family], k_train: int,
                         ks: Sequence[int] = CALIBRATION_KS, tasks: int = 32, seed: int = 0,
                         *, level: float = 0.9) -> dict[int, float]:
    """:func:`calibrate_noise` for the training support size ``k_train`` and for each size in
    ``ks`` that at least half the validation families, and two, can serve (k rows and one more
    to predict): one family alone gives a noise term as odd as that family. Each on its own
    draw of ``tasks`` tasks with the same ``seed``: {k: noise std}, what
    :attr:`Ensemble.noise_std_by_k` holds.

    Example:
        >>> ens.noise_std_by_k = calibrate_noise_by_k(ens, val_fams, k_train=5)
        >>> ens.noise_for(4)                                    # between k = 3 and 5

    Raises:
        InputError: no validation family can serve ``k_train`` (see :func:`calibrate_noise`).
    """
    enough = max(2, (len(val_families) + 1) // 2)
    sizes = {int(k_train), *(int(j) for j in ks
                             if j >= 1 and sum(len(f) > j for f in val_families) >= enough)}
    return {j: calibrate_noise(ens, val_families, j, tasks=tasks, seed=seed, level=level)
            for j in sorted(sizes)}


def calibrate_noise(ens: Ensemble, val_families: Sequence[Family], k_shot: int,
                    tasks: int = 32, seed: int = 0, *, level: float = 0.9,
                    q_query: int | None = None) -> float:
    """The noise std that makes the central ``level`` interval cover ``level`` of validation data.

    On ``tasks`` tasks drawn from ``val_families`` (families taken in turn, so each weighs about
    equally; ``k_shot`` support rows, the family's other rows as the query unless ``q_query`` is
    given) every member adapts and predicts. A query value ``y`` with member mean ``mu`` and
    member variance ``v`` falls inside the interval once ``s**2 >= ((y - mu) / z)**2 - v``
    (``z`` the normal quantile), so the smallest ``s`` reaching the coverage is a quantile of those
    thresholds, found exactly, without a search. Each task weighs the same, so a large family does
    not decide alone. Zero when the members' spread already covers enough.

    Example:
        >>> ens.noise_std = calibrate_noise(ens, val_fams, k_shot=5)
        >>> mean, std = ensemble_predict(ens, support, query_inputs)  # std includes it

    Args:
        ens: the ensemble (>= 2 members).
        val_families: validation families (never test families).
        k_shot: support rows per task (the shots the ensemble will be used with).
        tasks: number of tasks.
        seed: seed of the task draw.
        level: the central interval's coverage to reach.
        q_query: query rows per task (None: all rows not in the support).

    Returns:
        The noise std in model (target) units.

    Raises:
        InputError: one member, no family with more than ``k_shot`` rows, bad counts.
    """
    _need_two(ens.members, "calibrate_noise")
    z = _z(level)
    if int(k_shot) < 1 or int(tasks) < 1 or (q_query is not None and int(q_query) < 1):
        raise InputError(f"calibrate_noise: k_shot={k_shot}, tasks={tasks}, q_query={q_query}: "
                         "expected positive counts")
    need = int(k_shot) + (1 if q_query is None else int(q_query))
    usable = [f for f in val_families if len(f) >= need]
    if not usable:
        listed = ", ".join(f"{f.name} ({len(f)})" for f in val_families) or "none given"
        raise InputError(f"calibrate_noise: no validation family has the {need} rows that "
                         f"k_shot={k_shot} and a query need; families (rows): {listed}")
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(usable), generator=gen).tolist()
    device = next(iter(ens.meta_params.values())).device
    thresholds, weights = [], []
    for j in range(int(tasks)):
        fam = usable[order[j % len(usable)]]
        perm = torch.randperm(len(fam), generator=gen)
        end = None if q_query is None else int(k_shot) + int(q_query)
        task = task_to(Task(fam.samples(perm[:k_shot]), fam.samples(perm[k_shot:end]),
                            fam.name), device)
        adapted = adapt_ensemble(ens.model, ens.meta_params, task.support, ens.settings)
        mean, var = _moments(predict_members(ens.model, adapted, task.query.inputs))
        r = (task.query.y - mean).double()
        thresholds.append(((r / z) ** 2 - var.double()).clamp_min(0.0))
        weights.append(torch.full_like(r, 1.0 / r.numel()))
    s2 = torch.cat(thresholds)
    if not bool(torch.isfinite(s2).all()):
        raise ConvergenceError("calibrate_noise: an adapted member predicted a non-finite value "
                               "on a validation family; lower the inner learning rate")
    w = torch.cat(weights)
    order_s = torch.argsort(s2)
    cum = torch.cumsum(w[order_s], 0) / w.sum()
    # the first threshold at which the covered weight reaches the level (1e-12: rounding of cum)
    i = int(torch.searchsorted(cum, torch.tensor(float(level) - 1e-12, dtype=cum.dtype,
                                                 device=cum.device)))
    return float(s2[order_s[min(i, s2.numel() - 1)]].sqrt())


# ------------------------------------------------------------------ meta-gradients of members
def _stack_trees(trees: Sequence[Any]) -> Any | None:
    """Stack equally shaped pytrees (Samples, graph batches) on a new axis; None if they differ."""
    flat = [pytree.tree_flatten(t) for t in trees]
    spec = flat[0][1]
    if any(s != spec for _, s in flat):
        return None
    leaves = []
    for parts in zip(*(f[0] for f in flat), strict=True):
        if all(p is None for p in parts):
            leaves.append(None)
        elif all(isinstance(p, Tensor) for p in parts) and len({p.shape for p in parts}) == 1:
            leaves.append(torch.stack(parts))
        else:
            return None
    return pytree.tree_unflatten(leaves, spec)


def _dims(s: Samples) -> Samples:
    return Samples(0, 0, None if s.weight is None else 0)


def _member_gradients(model: FunctionalModel, stacked: Params, member_tasks: list[list[Task]],
                      settings: MetaSettings, shared: bool, batching: str
                      ) -> tuple[Params, Tensor]:
    """Summed meta-gradients (M, ...) and query losses (M, T) of every member's tasks.

    ``batching="vmap"``: one ``vmap`` over members of the per-task function (nested in a vmap
    over tasks for equally sized tensor tasks, else in a loop over tasks); ``"loop"``: members
    one after another through :func:`meta_gradient`.
    """
    members = _members_of(stacked)
    if batching == "loop":
        outs = [meta_gradient(model, {k: v[m] for k, v in stacked.items()}, member_tasks[m],
                              settings, reduction="sum") for m in range(members)]
        return stack_params([g for g, _ in outs]), torch.stack([loss for _, loss in outs])
    fn = task_meta_gradient(model, settings)
    meta = {k: v.detach() for k, v in stacked.items()}
    task_mode = "vmap" if all(_batching(ts, settings) == "vmap" for ts in member_tasks) \
        else "loop"

    def across(items: list[Any]) -> tuple[Any, Any]:
        # what the member axis maps over: one shared value, or the members' values stacked
        if shared:
            return items[0], None
        out = _stack_trees(items)
        if out is None:
            raise InputError("vmap over members with their own episodes needs equally shaped "
                             "tasks; graph tasks differ in size: use episodes='shared' or "
                             "member_batching='loop'")
        return out, 0

    if task_mode == "vmap":
        per_member = [stack_tasks(ts) for ts in member_tasks]
        support, s_dim = across([s for s, _ in per_member])
        query, q_dim = across([q for _, q in per_member])
        inner_dims = (None, _dims(per_member[0][0]), _dims(per_member[0][1]))

        def member_fn(p: Params, sup: Samples, qry: Samples) -> tuple[Params, Tensor]:
            g, loss = torch.func.vmap(fn, in_dims=inner_dims)(p, sup, qry)
            return {k: v.sum(0) for k, v in g.items()}, loss

        s_dims = None if s_dim is None else _dims(per_member[0][0])
        q_dims = None if q_dim is None else _dims(per_member[0][1])
        return torch.func.vmap(member_fn, in_dims=(0, s_dims, q_dims))(meta, support, query)
    total = {k: torch.zeros_like(v) for k, v in meta.items()}
    losses = []
    for t in range(len(member_tasks[0])):
        support, s_dim = across([ts[t].support for ts in member_tasks])
        query, q_dim = across([ts[t].query for ts in member_tasks])
        s_dims = None if s_dim is None else _dims(member_tasks[0][t].support)
        q_dims = None if q_dim is None else _dims(member_tasks[0][t].query)
        g, loss = torch.func.vmap(fn, in_dims=(0, s_dims, q_dims))(meta, support, query)
        total = {k: total[k] + g[k] for k in total}
        losses.append(loss)
    return total, torch.stack(losses, 1)


def _clip_members(grads: Params, clip: float | None) -> Params:
    """Clip each member's meta-gradient to global norm ``clip``, as ``outer_update`` does."""
    if clip is None:
        return grads
    sq = sum((g.double() ** 2).reshape(g.shape[0], -1).sum(1) for g in grads.values())
    scale = (float(clip) / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    return {k: g * scale.to(g.dtype).reshape((-1,) + (1,) * (g.dim() - 1))
            for k, g in grads.items()}


# ------------------------------------------------------------------ training
def _initial(model: FunctionalModel, members: int, seed: int, init_params: Params | None,
             shared: bool) -> list[Params]:
    if init_params is None:
        return [model.init_params(torch.Generator().manual_seed(int(seed) + m))
                for m in range(members)]
    ref = model.init_params(torch.Generator().manual_seed(int(seed)))
    if set(init_params) != set(ref):
        raise InputError(f"init_params: names differ from the model's parameters: "
                         f"{sorted(set(init_params) ^ set(ref))[:5]}")
    if all(tuple(init_params[k].shape) == tuple(ref[k].shape) for k in ref):
        if shared and members > 1:
            raise InputError("init_params is one parameter dict and every member sees the "
                                 "same episodes: the members would be identical; pass stacked "
                                 "init_params (a leading member axis) or episodes='own'")
        return [dict(init_params) for _ in range(members)]
    if all(tuple(init_params[k].shape) == (members, *ref[k].shape) for k in ref):
        return unstack_params(init_params)
    shapes = {k: tuple(v.shape) for k, v in list(init_params.items())[:3]}
    raise InputError(f"init_params: expected the model's shapes or a leading member axis of "
                     f"{members}; got {shapes} ...")


def meta_train_ensemble(model: FunctionalModel, train_families: Sequence[Family],
                        val_families: Sequence[Family] = (), *, members: int = 5,
                        settings: MetaSettings | None = None,
                        train: MetaTrainSettings | None = None,
                        device: str | torch.device = "cpu",
                        out: str | os.PathLike | None = None, resume: bool = False,
                        progress: bool | None = None, extra: dict[str, Any] | None = None,
                        init_params: Params | None = None, episodes: str = "auto",
                        member_batching: str = "auto", calibrate: bool = True) -> Ensemble:
    """Meta-train ``members`` initialisations of ``model`` together.

    Member ``m`` starts from ``model.init_params`` with seed ``train.seed + m``; with its own
    episodes (sampler seed ``train.seed + m``) it follows exactly the run of
    :func:`~matmeta.meta.meta_train` with ``seed = train.seed + m``; with shared episodes every
    member sees the meta-batches of seed ``train.seed``. Each meta-step vmaps the per-task
    meta-gradient over the member axis and takes one outer step (Adam or SGD, schedule, and
    clipping per member) on the stacked parameters. Every algorithm of ``meta_train`` works.

    Example:
        >>> ens = meta_train_ensemble(MLP(4), fams[:20], fams[20:], members=5,
        ...                           settings=MetaSettings("fomaml", inner_steps=3),
        ...                           train=MetaTrainSettings(steps=300), out="ens.pt")
        >>> ens.noise_std                    # calibrated on fams[20:]

    Args:
        model: any :class:`~matmeta.models.FunctionalModel`.
        train_families: meta-training families.
        val_families: meta-validation families: a fixed set of validation tasks (losses in the
            history) and, with ``calibrate``, the noise calibration at the end.
        members: ensemble size M (1 trains a single model in the ensemble format).
        settings: algorithm and inner loop (shared by the members).
        train: outer loop (shared by the members).
        device: where tasks and parameters live.
        out: checkpoint path (kind ``"ensemble"``, atomic, every ``checkpoint_every`` steps and
            at the end; rank 0 only).
        resume: continue from ``out`` (parameters, optimiser, samplers, step): bit-identical to
            a run that was never interrupted.
        progress: show a progress bar (default: when stderr is a terminal).
        extra: stored in the checkpoint (featurizer, target_transform, families...).
        init_params: initial model parameters: stacked (a leading member axis of M), or one dict
            every member starts from (then members differ only by their own episodes).
        episodes: ``"own"`` (a sampler per member), ``"shared"`` (one sampler; graph tasks are
            collated once for all members) or ``"auto"`` (own for tensor inputs, shared for
            graphs).
        member_batching: ``"vmap"`` (members vmapped), ``"loop"`` (one member after another per
            meta-step) or ``"auto"`` (vmap unless graph families with their own episodes).
        calibrate: calibrate the noise term on ``val_families`` at the end (M >= 2): for the
            training ``k_shot`` (``noise_std``) and for the support sizes of
            ``CALIBRATION_KS`` that half the families (and two) can serve
            (``noise_std_by_k``); each size costs one calibration (``train.val_tasks``
            adaptations of every member), up to 7 in all.

    Returns:
        An :class:`Ensemble`.

    Raises:
        InputError: bad counts or options, families too small for ``k_shot + q_query``.
        ConvergenceError: a non-finite loss or meta-gradient (the message names the member,
            step, task and family; the last checkpoint stays as it was).
        CheckpointError: resuming from a checkpoint of another model, member count, episode
            mode or settings (only ``steps``, ``checkpoint_every`` and ``val_every`` may change).
    """
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise InputError(f"members {members!r}: expected a positive whole number of ensemble "
                         "members")
    if episodes not in EPISODES:
        raise InputError(f"episodes {episodes!r}: expected one of {', '.join(EPISODES)}")
    if member_batching not in MEMBER_BATCHING:
        raise InputError(f"member_batching {member_batching!r}: expected one of "
                         f"{', '.join(MEMBER_BATCHING)}")
    settings = (settings or MetaSettings()).resolve(model)
    _check_algorithm(settings)
    train = train or MetaTrainSettings()
    device = torch.device(device)
    extra = dict(extra or {})
    rank, world = _dist()
    out_path = Path(out) if out is not None else None
    graphs = any(f.is_graph for f in train_families)
    if episodes == "auto":
        episodes = "shared" if graphs else "own"
    shared = episodes == "shared"
    if member_batching == "auto":
        member_batching = "loop" if graphs and not shared else "vmap"
    if member_batching == "vmap" and graphs and not shared:
        raise InputError("member_batching='vmap' with graph families needs episodes='shared' "
                         "(graph tasks of different members differ in size)")

    samplers = []
    for m in range(1 if shared else members):
        with warnings.catch_warnings():
            if m > 0:  # the too-small families were reported once already
                warnings.simplefilter("ignore")
            samplers.append(EpisodeSampler(train_families, train.k_shot, train.q_query,
                                           train.meta_batch, seed=train.seed + m))
    val_tasks: list[Task] = []
    if val_families:
        val_sampler = EpisodeSampler(val_families, train.k_shot, train.q_query, train.val_tasks,
                                     seed=train.seed + 1, what="meta-validation")
        val_tasks = [task_to(t, device) for t in val_sampler.sample()]

    inits = _initial(model, members, train.seed, init_params, shared)
    stacked = stack_params([init_meta_params(model, p, settings) for p in inits])
    keys = list(stacked)
    current = {k: stacked[k].to(device).clone() for k in keys}
    opt_state = outer_init(current)
    start, history = 0, []
    # clipping is per member, before the shared (elementwise) outer step
    step_train = dataclasses.replace(train, clip=None)

    if resume:
        if out_path is None or not out_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {out_path} to resume from")
        ckpt = load_checkpoint(out_path, kind=KIND, map_location=device)
        _check_resume(ckpt, model, settings, train, extra, out_path)
        if "optimizer" not in ckpt or "sampler_states" not in ckpt:
            raise CheckpointError(f"{out_path}: cannot resume: it holds no optimiser state "
                                  "(written by save_ensemble, not by training)")
        for key, now in (("members", members), ("episodes", episodes)):
            if ckpt.get(key) != now:
                raise CheckpointError(f"{out_path}: cannot resume: it was trained with {key} = "
                                      f"{ckpt.get(key)!r}, this run asks for {key} = {now!r}")
        if set(ckpt["meta_params"]) != set(keys):
            raise CheckpointError(f"{out_path}: cannot resume: its parameters differ from this "
                                  f"model's ({sorted(set(ckpt['meta_params']) ^ set(keys))[:5]})")
        current = {k: ckpt["meta_params"][k].to(device) for k in keys}
        opt_state = {k: v.to(device) for k, v in ckpt["optimizer"].items()}
        for sampler, state in zip(samplers, ckpt["sampler_states"], strict=True):
            sampler.restore(state)
        start, history = int(ckpt["step"]), list(ckpt["history"])
    noise_std, noise_by_k = 0.0, {}

    def save(step: int) -> None:
        if out_path is None or rank != 0:
            return
        cpu = {k: v.detach().cpu() for k, v in current.items()}
        payload = {
            "model_name": model.name, "model_config": model.config(),
            "members": members, "episodes": episodes,
            "params": model_params(cpu), "meta_params": cpu,
            "optimizer": {k: v.cpu() for k, v in opt_state.items()},
            "sampler_states": [s.state() for s in samplers], "step": step, "history": history,
            "meta_settings": settings.to_dict(), "train_settings": train.to_dict(),
            "inner": inner_record(settings, cpu), "noise_std": noise_std,
            "noise_std_by_k": noise_by_k, "extra": extra,
        }
        save_checkpoint(out_path, payload, kind=KIND)

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    bar = tqdm(range(start, train.steps), initial=start, total=train.steps,
               desc=f"meta-train x{members}", disable=not progress or rank != 0, leave=False)
    val_loss = history[-1].get("val_loss", float("nan")) if history else float("nan")
    last_saved = start if resume else None
    running = history[-1]["train_loss"] if history else None
    kill_at = _test_kill_step()
    for step in bar:
        if kill_at is not None and step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        drawn = [s.sample_indices() for s in samplers]
        names = [[s.families[ix[0]].name for ix in d] for s, d in zip(samplers, drawn,
                                                                       strict=True)]
        mine = [[task_to(s.materialise(ix), device) for ix in d[rank::world]]
                for s, d in zip(samplers, drawn, strict=True)]
        if shared:
            mine, names = mine * members, names * members
        if mine[0]:
            grads, losses = _member_gradients(model, current, mine, settings, shared,
                                              member_batching)
        else:
            grads = {k: torch.zeros_like(v) for k, v in current.items()}
            losses = torch.zeros(members, 0, device=device)
        _check_finite_members(losses, grads, names, rank, world, step + 1, out_path,
                              last_saved)
        loss_sum = losses.sum(1).to(current[keys[0]].dtype)
        if world > 1:
            import torch.distributed as dist

            flat = torch.cat([*(grads[k].reshape(-1) for k in keys), loss_sum])
            dist.all_reduce(flat)
            sizes = [grads[k].numel() for k in keys]
            parts = torch.split(flat[:-members], sizes)
            grads = {k: p.reshape(grads[k].shape) for k, p in zip(keys, parts, strict=True)}
            loss_sum = flat[-members:]
        n = train.meta_batch
        mean_grads = _clip_members({k: g / n for k, g in grads.items()}, train.clip)
        current, opt_state = outer_update(current, mean_grads, opt_state, step_train)
        record = {"step": step + 1, "train_loss": float(loss_sum.sum()) / (n * members)}
        if val_tasks and ((step + 1) % train.val_every == 0 or step + 1 == train.steps):
            val_loss, record["val_loss_ensemble"] = _validation(model, current, val_tasks,
                                                                settings)
            record["val_loss"] = val_loss
        history.append(record)
        running = record["train_loss"] if running is None else (
            0.9 * running + 0.1 * record["train_loss"])
        bar.set_postfix(train=f"{running:.4g}", val=f"{val_loss:.4g}")
        if (step + 1) % train.checkpoint_every == 0 or step + 1 == train.steps:
            save(step + 1)
            last_saved = step + 1
    bar.close()
    ens = Ensemble(model, dict(current), settings, train, 0.0, history, extra)
    if calibrate and val_families and members >= 2:
        # the training size (an error if no validation family can serve it) and the other sizes
        # enough validation families can serve
        noise_by_k = calibrate_noise_by_k(ens, val_families, train.k_shot,
                                          tasks=train.val_tasks, seed=train.seed + 2)
        noise_std = noise_by_k[int(train.k_shot)]
        ens.noise_std, ens.noise_std_by_k = noise_std, noise_by_k
        save(int(history[-1]["step"]))
    return ens


def _validation(model: FunctionalModel, stacked: Params, tasks: Sequence[Task],
                settings: MetaSettings) -> tuple[float, float]:
    """Mean member query loss and the query loss of the members' mean prediction."""
    member_losses, mean_losses = [], []
    for t in tasks:
        adapted = adapt_ensemble(model, stacked, t.support, settings)
        preds = predict_members(model, adapted, t.query.inputs)
        member_losses.append(weighted_mse(preds, t.query.y, t.query.weight).mean())
        mean_losses.append(weighted_mse(preds.mean(0), t.query.y, t.query.weight))
    return float(torch.stack(member_losses).mean()), float(torch.stack(mean_losses).mean())


# ------------------------------------------------------------------ checkpoints
def save_ensemble(ens: Ensemble, path: str | os.PathLike) -> Path:
    """Write an ensemble (e.g. after :func:`calibrate_noise`) as an ``"ensemble"`` checkpoint.

    Atomic; :func:`load_ensemble` reads it. It holds no optimiser state, so training cannot
    resume from it.

    Example:
        >>> ens.noise_std = calibrate_noise(ens, val_fams, k_shot=5)
        >>> save_ensemble(ens, "ensemble.pt")
    """
    cpu = {k: v.detach().cpu() for k, v in ens.meta_params.items()}
    step = int(ens.history[-1]["step"]) if ens.history else 0
    payload = {
        "model_name": ens.model.name, "model_config": ens.model.config(),
        "members": ens.members, "params": model_params(cpu), "meta_params": cpu, "step": step,
        "history": ens.history, "meta_settings": ens.settings.to_dict(),
        "train_settings": ens.train.to_dict(), "inner": inner_record(ens.settings, cpu),
        "noise_std": float(ens.noise_std), "noise_std_by_k": dict(ens.noise_std_by_k),
        "extra": ens.extra,
    }
    return save_checkpoint(path, payload, kind=KIND)


def load_ensemble(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                  ) -> Ensemble:
    """Read an ``"ensemble"`` checkpoint (``weights_only``) back into an :class:`Ensemble`.

    Example:
        >>> ens = load_ensemble("ensemble.pt")
        >>> mean, std = ensemble_predict(ens, support, query_inputs)
    """
    from matmeta.models._registry import build_model

    ckpt = load_checkpoint(path, kind=KIND, map_location=map_location)
    try:
        model = build_model(ckpt["model_name"], ckpt["model_config"])
        return Ensemble(model, dict(ckpt["meta_params"]),
                        MetaSettings.from_dict(ckpt["meta_settings"]),
                        MetaTrainSettings.from_dict(ckpt["train_settings"]),
                        float(ckpt["noise_std"]), list(ckpt["history"]), dict(ckpt["extra"]),
                        dict(ckpt.get("noise_std_by_k") or {}))
    except KeyError as exc:
        raise CheckpointError(f"{path}: ensemble checkpoint lacks {exc}") from exc
