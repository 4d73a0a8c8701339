"""Leave-families-out k-shot evaluation of a meta-learner against the baselines that matter.

For every split (one or more held-out test families, a meta-validation share of the rest) and
every support size k, the same tasks (k support samples of a test family, the family's remaining
samples as query) are given to each method:

- ``meta``: the meta-learned initialisation adapted with the algorithm's inner loop; steps and a
  scale of the inner learning rate chosen on meta-validation families;
- ``meta_init``: the meta-learned initialisation without adaptation;
- ``pretrained``: the same architecture trained on all meta-train families pooled (zero-shot);
- ``finetune``: the pretrained model fine-tuned on the support set (steps and rate chosen on
  meta-validation families; 0 steps is allowed, so it can decline to adapt);
- ``offset``: the pretrained model plus the support residuals' mean shrunk toward zero,
  ``sum(r) / (k + lambda)`` with ``lambda`` chosen on meta-validation families;
- ``scratch``: a fresh initialisation trained on the support set alone (Adam; steps chosen on
  meta-validation families);
- parametric laws only: ``independent`` (a Levenberg-Marquardt fit of each task's support,
  :func:`matmeta.fitting.fit_curves`) and ``map`` (a MAP fit whose prior mean is the meta-learned
  initialisation and whose spread is that of independent fits to the meta-train families; the
  measurement noise that weighs data against the prior is chosen on meta-validation families;
  its predictive std is the Laplace one, ``J cov J^T`` plus that noise);
- models with ``features`` only: ``bayes_linear`` and ``gp`` (features meta-trained through a
  closed-form Bayesian linear or GP head, :mod:`matmeta.bayes._meta`; adaptation fits the head,
  hyperparameters per task by marginal likelihood) and ``pretrained_bayes_linear`` /
  ``pretrained_gp`` (the same heads on the pretrained model's features, no meta-training);
- ``ensemble``: deep ensemble of meta-learned initialisations (:mod:`matmeta.meta._ensemble`),
  adapted member by member, its extra noise calibrated on meta-validation families per k.

Methods with a predictive std (the heads, ``ensemble``, ``map``) are also scored by CRPS, NLPD
and the coverage of their central 50% and 90% intervals; point methods get NaN there.

Nothing is chosen or fitted on test families: a target transform (``target_transform``, a kind)
is fitted per fold on that fold's meta-train families only. Errors (MAE, or RMSE for kinetics
fractions) are averaged per group (the family's ``group``: a tungsten grade, an anion family),
then over groups; the 90% interval resamples groups, not tasks, because tasks of one family are
not independent.

Example:
    >>> res = evaluate(JMAK(), isotherm_families, test="leave-one-out", shots=(2, 3))
    >>> res.table[["k", "method", "error", "ci_low", "ci_high"]]
    >>> res.to_csv("evaluate.csv")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.meta._algorithms import MetaSettings, inner_rates, model_params
from matmeta.meta._inner import inner_loop
from matmeta.meta._tasks import Family, split_families
from matmeta.meta._train import (
    MetaTrainSettings,
    meta_train,
    outer_init,
    outer_update,
)
from matmeta.models._protocol import FunctionalModel, Params, Samples, sample_loss

__all__ = [
    "DEFAULT_SHOTS",
    "EVAL_METHODS",
    "EvaluationResult",
    "EvaluationSettings",
    "bootstrap_interval",
    "evaluate",
    "family_folds",
    "paired_comparison",
    "pretrain",
]

DEFAULT_SHOTS = (1, 2, 5, 10, 20)
EVAL_METHODS = ("meta", "meta_init", "pretrained", "finetune", "offset", "scratch",
                "independent", "map", "bayes_linear", "gp", "pretrained_bayes_linear",
                "pretrained_gp", "ensemble")
PARAMETRIC_ONLY = ("independent", "map")
FEATURE_ONLY = ("bayes_linear", "gp", "pretrained_bayes_linear", "pretrained_gp")
# not in the default set: it trains `ensemble_members` meta-learners per fold
OPT_IN = ("ensemble",)
UNCERTAINTY_COLUMNS = ("crps", "nlpd", "coverage_50", "coverage_90")


@dataclass
class EvaluationSettings:
    """What to evaluate and the hyperparameter grids chosen on meta-validation families.

    Example:
        >>> EvaluationSettings(shots=(5, 10), methods=("meta", "finetune", "offset"), repeats=3)

    Attributes:
        shots: support sizes k; None: 1, 2, 5, 10, 20 where some test family allows (the others
            are reported). Given explicitly, a k no test family can host is an input error.
        methods: methods to compare (default: every one that applies to the model).
        metric: ``"mae"``, ``"rmse"`` or ``"auto"`` (RMSE for parametric laws, else MAE).
        repeats: random support draws per test family and k.
        val_repeats: random support draws per validation family and k.
        q_query: query samples per task (None: every sample not in the support).
        meta_steps: inner-step counts tried for ``meta``.
        meta_lr_scales: factors on the meta-learned inner rate tried for ``meta``.
        finetune_steps: step counts tried for ``finetune`` (0 keeps the pretrained model).
        finetune_lrs: SGD rates tried for ``finetune`` (None: by model kind).
        shrinkage: ``lambda`` values tried for ``offset`` (``inf``: no offset).
        scratch_steps: Adam step counts tried for ``scratch``.
        scratch_lr: Adam rate for ``scratch`` (None: by model kind).
        pretrain_steps: Adam steps of pretraining on the pooled meta-train families.
        pretrain_lr: its rate (None: by model kind).
        pretrain_batch: samples per pretraining mini-batch.
        noise_stds: measurement std (target units) tried for ``map``.
        head_steps: Newton steps of the heads' hyperparameter fit (meta-training and
            adaptation of ``bayes_linear``/``gp`` and their pretrained variants).
        head_loss: the heads' meta-training query loss, ``"nlpd"`` or ``"mse"``.
        kernel: the GP head's kernel, ``"rbf"`` or ``"matern52"``.
        ensemble_members: members of ``ensemble``.
        head_init: where ``bayes_linear``/``gp`` meta-training starts: ``"fresh"`` (a new
            initialisation, as the gradient meta-learners) or ``"pretrained"`` (the fold's
            pretrained parameters).
        error_space: ``"auto"`` (errors in log10 units for a log target transform, else in the
            target's units) or ``"target"`` (errors back in the target's units, e.g. MPa, also
            under a log transform). Uncertainty scores stay in the ``"auto"`` space, where the
            predictive distribution is Gaussian (coverage is the same in either space).
        bootstrap: bootstrap resamples of groups.
        level: coverage of the interval (0.9).
        seed: seeds the splits, task draws, pretraining and the bootstrap.
    """

    shots: tuple[int, ...] | None = None
    methods: tuple[str, ...] | None = None
    metric: str = "auto"
    repeats: int = 5
    val_repeats: int = 3
    q_query: int | None = None
    meta_steps: tuple[int, ...] = (0, 1, 2, 5, 10, 20)
    meta_lr_scales: tuple[float, ...] = (0.3, 1.0, 3.0)
    finetune_steps: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50)
    finetune_lrs: tuple[float, ...] | None = None
    shrinkage: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, math.inf)
    scratch_steps: tuple[int, ...] = (10, 30, 100, 300)
    scratch_lr: float | None = None
    pretrain_steps: int = 300
    pretrain_lr: float | None = None
    pretrain_batch: int = 64
    noise_stds: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    head_steps: int = 10
    head_loss: str = "nlpd"
    kernel: str = "rbf"
    ensemble_members: int = 5
    head_init: str = "fresh"
    error_space: str = "auto"
    bootstrap: int = 2000
    level: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shots is not None:
            self.shots = tuple(int(k) for k in self.shots)
            if not self.shots or min(self.shots) < 1:
                raise InputError(f"shots {list(self.shots)}: expected support sizes >= 1")
        if self.methods is not None:
            self.methods = tuple(self.methods)
            unknown = [m for m in self.methods if m not in EVAL_METHODS]
            if unknown:
                raise InputError(f"unknown evaluation method {unknown[0]!r}: expected some of "
                                 f"{', '.join(EVAL_METHODS)}")
            if not self.methods:
                raise InputError("no evaluation methods given")
        if self.metric not in ("auto", "mae", "rmse"):
            raise InputError(f"metric {self.metric!r}: expected mae, rmse or auto")
        if self.head_loss not in ("nlpd", "mse"):
            raise InputError(f"head_loss {self.head_loss!r}: expected nlpd or mse")
        if self.kernel not in ("rbf", "matern52"):
            raise InputError(f"kernel {self.kernel!r}: expected rbf or matern52")
        if self.head_init not in ("fresh", "pretrained"):
            raise InputError(f"head_init {self.head_init!r}: expected fresh or pretrained")
        if self.error_space not in ("auto", "target"):
            raise InputError(f"error_space {self.error_space!r}: expected auto or target")
        if int(self.ensemble_members) < 2:
            raise InputError(f"ensemble_members {self.ensemble_members}: an ensemble needs at "
                             "least 2 members")
        for name in ("repeats", "val_repeats", "pretrain_steps", "pretrain_batch", "bootstrap",
                     "head_steps"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} {getattr(self, name)}: expected a positive integer")
        if self.q_query is not None and int(self.q_query) < 1:
            raise InputError(f"q_query {self.q_query}: expected at least 1")
        if not 0 < float(self.level) < 1:
            raise InputError(f"level {self.level}: expected a coverage in (0, 1)")
        for name in ("meta_steps", "finetune_steps", "scratch_steps"):
            grid = tuple(int(s) for s in getattr(self, name))
            if not grid or min(grid) < 0:
                raise InputError(f"{name} {list(grid)}: expected step counts >= 0")
            setattr(self, name, grid)
        if not self.shrinkage or min(self.shrinkage) < 0:
            raise InputError(f"shrinkage {list(self.shrinkage)}: expected values >= 0")
        if not self.noise_stds or min(self.noise_stds) <= 0:
            raise InputError(f"noise_stds {list(self.noise_stds)}: expected positive values")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shrinkage"] = [None if math.isinf(v) else v for v in self.shrinkage]
        return d


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns.

    Attributes:
        table: one row per (k, method): ``error`` (mean over groups of the per-group mean task
            error), ``ci_low``/``ci_high`` (bootstrap over groups), ``median_task`` (median over
            tasks), ``n_groups``, ``n_tasks``, ``chosen`` (hyperparameters chosen on
            meta-validation families, the distinct choices over folds joined by ``;``: meta
            ``[steps, inner-rate scale]``, finetune ``[steps, rate]``, offset ``lambda``,
            scratch ``steps``, map ``noise std``), ``metric`` and ``units``; for methods with a
            predictive std also ``crps`` (report units; ``crps_ci_low``/``crps_ci_high``),
            ``nlpd`` (nats), ``coverage_50`` and ``coverage_90`` (fraction of query values in
            the central interval; each the mean over groups of per-group task means), NaN for
            point methods.
        tasks: one row per (fold, family, k, repeat, method) with the task's error and the
            uncertainty scores.
        too_small: test families with too few samples for a k (``n_samples`` <= k).
        folds: per fold, the group names of meta-train, meta-validation and test families,
            and the target transform fitted on its meta-train families (``target_transform``).
        settings: the :class:`EvaluationSettings` used.
        notes: one line per thing worth knowing: fits the fitter refused and the fallback
            they got (counts), k values left out, families too small for a k.
    """

    table: pd.DataFrame
    tasks: pd.DataFrame
    too_small: pd.DataFrame
    folds: list[dict[str, Any]]
    settings: EvaluationSettings
    notes: list[str] = field(default_factory=list)

    def compare(self, method: str, baseline: str) -> pd.DataFrame:
        """Paired comparison per k: ratio of mean errors ``method / baseline`` over the groups
        both were scored on, its bootstrap interval (the same resampled groups for both), and
        in how many groups ``method`` has the lower mean error.

        Example:
            >>> res.compare("map", "independent")      # k, ratio, ci_low, ci_high, wins, n_groups
        """
        return paired_comparison(self.tasks, method, baseline, self.settings.bootstrap,
                                 self.settings.level, self.settings.seed)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :attr:`table` as CSV, atomically."""
        from matmeta.checkpoint import atomic_write_text

        return atomic_write_text(path, self.table.to_csv(index=False))

    def to_json(self) -> str:
        """The table, folds, too-small families and notes as one JSON document."""
        from matmeta.checkpoint import dumps_json

        table = json.loads(self.table.to_json(orient="records"))
        return dumps_json({"table": table, "folds": self.folds,
                           "too_small": json.loads(self.too_small.to_json(orient="records")),
                           "notes": self.notes, "settings": self.settings.to_dict()})


# ---------------------------------------------------------------------------------- splits


def family_folds(families: Sequence[Family], test: str | float | Sequence[str] = "leave-one-out",
                 val: float | Sequence[str] = 0.2, seed: int = 0
                 ) -> list[tuple[list[Family], list[Family], list[Family]]]:
    """Splits by group: each fold's test groups never appear in its meta-train or validation.

    Example:
        >>> folds = family_folds(fams, test="leave-one-out", val=0.2)    # one fold per group
        >>> folds = family_folds(fams, test=["N", "Co"], val=0.2)         # one fold

    Args:
        test: ``"leave-one-out"`` (each group once), a fraction of the groups, or group names.
        val: meta-validation share of the remaining groups (at least one group), or names.

    Raises:
        InputError: fewer than three groups for leave-one-out, unknown names, an empty split.
    """
    groups = sorted({f.group for f in families})
    if isinstance(test, str) and test in ("leave-one-out", "loo"):
        if len(groups) < 3:
            raise InputError(f"leave-one-out needs at least 3 family groups (train, validation, "
                             f"test); got {len(groups)}: {', '.join(groups)}")
        folds = []
        for i, g in enumerate(groups):
            rest = [f for f in families if f.group != g]
            train, val_f, _ = split_families(rest, val=_val_spec(val, rest), seed=seed + i)
            folds.append((train, val_f, [f for f in families if f.group == g]))
    else:
        spec = test
        if isinstance(test, str):
            spec = [s.strip() for s in test.split(",") if s.strip()]
        train, val_f, test_f = split_families(families, val=0.0, test=spec, seed=seed)
        rest = train
        train, val_f, _ = split_families(rest, val=_val_spec(val, rest), seed=seed)
        folds = [(train, val_f, test_f)]
    for train, val_f, test_f in folds:
        _check_no_leak(train, val_f, test_f)
        if not test_f:
            raise InputError("the split leaves no test families; name some or raise the share")
        if not val_f:
            raise InputError("the split leaves no meta-validation families (hyperparameters are "
                             "chosen on them, never on test families); raise --val-families")
    return folds


def _val_spec(val: float | Sequence[str], rest: Sequence[Family]) -> float | list[str]:
    if isinstance(val, (int, float)):
        return float(val)
    present = {f.group for f in rest}
    return [v for v in val if v in present]


def _check_no_leak(train: Sequence[Family], val: Sequence[Family],
                   test: Sequence[Family]) -> None:
    tr, va, te = ({f.group for f in s} for s in (train, val, test))
    both = (tr & te) | (va & te) | (tr & va)
    if both:
        raise RuntimeError(f"family split leaks groups {sorted(both)} between splits")


# ---------------------------------------------------------------------------------- tasks


def _seed_of(*parts: Any) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


def _draw(family: Family, k: int, repeat: int, seed: int, q_query: int | None
          ) -> tuple[Samples, Samples]:
    gen = torch.Generator().manual_seed(_seed_of(seed, family.name, k, repeat))
    perm = torch.randperm(len(family), generator=gen)
    sup, qry = perm[:k], perm[k:]
    if q_query is not None:
        qry = qry[:q_query]
    return family.samples(sup), family.samples(qry)


def _to(s: Samples, device: torch.device) -> Samples:
    return Samples(s.inputs.to(device), s.y.to(device),
                   None if s.weight is None else s.weight.to(device))


# ---------------------------------------------------------------------------------- training


def _init_params(model: FunctionalModel, seed: int, dtype: torch.dtype) -> Params:
    params = model.init_params(torch.Generator().manual_seed(int(seed)))
    return {k: v.to(dtype) for k, v in params.items()}


def _pooled(families: Sequence[Family]) -> Family:
    first = families[0]
    if first.is_graph:
        inputs: Any = [g for f in families for g in f.inputs]
    else:
        inputs = torch.cat([f.inputs for f in families])
    weight = None
    if any(f.weight is not None for f in families):
        weight = torch.cat([f.weight if f.weight is not None else torch.ones_like(f.y)
                            for f in families])
    return Family("pooled", inputs, torch.cat([f.y for f in families]), weight,
                  featurizer=first.featurizer)


def pretrain(model: FunctionalModel, train_families: Sequence[Family],
             val_families: Sequence[Family] = (), *, steps: int = 300, lr: float = 3e-3,
             batch_size: int = 64, seed: int = 0, init: Params | None = None,
             device: str | torch.device = "cpu", eval_every: int = 25) -> Params:
    """Train ``model`` on all meta-train families pooled (the baseline that transfer must beat).

    Adam on mini-batches of the pooled samples; the parameters with the lowest loss on the
    meta-validation families (checked every ``eval_every`` steps) are kept.

    Example:
        >>> params = pretrain(model, train_fams, val_fams, steps=500, lr=3e-3)
    """
    device = torch.device(device)
    pool = _pooled(train_families)
    dtype = pool.y.dtype
    params = dict(init) if init is not None else _init_params(model, seed, dtype)
    params = {k: v.detach().to(device) for k, v in params.items()}
    opts = MetaTrainSettings(steps=max(int(steps), 1), outer_lr=float(lr), clip=10.0)
    state = outer_init(params)
    gen = torch.Generator().manual_seed(int(seed) + 7)
    val = [_to(f.samples(), device) for f in val_families if len(f)]
    grad_fn = torch.func.grad(lambda p, s: sample_loss(model, p, s))

    def val_loss(p: Params) -> float:
        if not val:
            return 0.0
        return float(sum(float(sample_loss(model, p, s)) for s in val) / len(val))

    best, best_loss = dict(params), val_loss(params)
    n = len(pool)
    order = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(int(steps)):
        if pos + min(batch_size, n) > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += len(idx)
        grads = grad_fn(params, _to(pool.samples(idx), device))
        params, state = outer_update(params, grads, state, opts)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            loss = val_loss(params)
            if not math.isfinite(loss):
                break
            if not val or loss < best_loss:
                best, best_loss = dict(params), loss
    return {k: v.detach() for k, v in best.items()}


Batch = list[tuple[Samples, Samples]]


def _stackable(batch: Batch) -> bool:
    """Tasks whose supports are tensors of one shape go through ``vmap`` together."""
    sup = [s for s, _ in batch]
    return (all(isinstance(s.inputs, Tensor) for s in sup)
            and len({(tuple(s.inputs.shape), s.weight is None) for s in sup}) == 1)


def _stack(samples: list[Samples]) -> tuple[Samples, Samples]:
    w = None if samples[0].weight is None else torch.stack([s.weight for s in samples])
    st = Samples(torch.stack([s.inputs for s in samples]), torch.stack([s.y for s in samples]), w)
    dims = Samples(0, 0, None if w is None else 0)
    return st, dims


def _sgd_paths(model: FunctionalModel, params: Params, batch: Batch, steps: Sequence[int],
               lr: float, per_param_lr: Params | None = None,
               trainable: Sequence[str] | None = None, proximal: float = 0.0
               ) -> list[dict[int, Tensor]]:
    """Per task, query predictions after each step count in ``steps`` of one inner-loop run
    (tasks with equal tensor supports run together under ``vmap``)."""
    top = max(steps)

    def run(support: Samples) -> tuple[Params, list[Params]]:
        return inner_loop(model, params, support, steps=top, lr=lr, per_param_lr=per_param_lr,
                          trainable=trainable, proximal=proximal, return_trajectory=True)

    if _stackable(batch) and len(batch) > 1:
        sup, dims = _stack([s for s, _ in batch])
        adapted, path = torch.func.vmap(run, in_dims=(dims,))(sup)
        path = [*path, adapted]
        return [{s: model.forward({k: v[j] for k, v in path[s].items()}, q.inputs).detach()
                 for s in steps} for j, (_, q) in enumerate(batch)]
    out = []
    for s_, q in batch:
        adapted, path = run(s_)
        path = [*path, adapted]
        out.append({s: model.forward(path[s], q.inputs).detach() for s in steps})
    return out


def _adam_paths(model: FunctionalModel, params: Params, batch: Batch, steps: Sequence[int],
                lr: float) -> list[dict[int, Tensor]]:
    """Per task, query predictions after each step count of Adam on its support loss, every
    task from the same ``params`` (no gradient clipping, so tasks never couple)."""
    opts = MetaTrainSettings(steps=max(max(steps), 1), outer_lr=float(lr))
    want = set(steps)
    grad_fn = torch.func.grad(lambda p, s: sample_loss(model, p, s))
    if _stackable(batch) and len(batch) > 1:
        sup, dims = _stack([s for s, _ in batch])
        n = len(batch)
        p = {k: v.unsqueeze(0).expand(n, *v.shape).clone() for k, v in params.items()}
        step_fn = torch.func.vmap(grad_fn, in_dims=(0, dims))
    else:
        sup, p, step_fn = None, None, None
    if step_fn is not None:
        state = outer_init(p)
        out: list[dict[int, Tensor]] = [{} for _ in batch]
        for s in range(max(steps) + 1):
            if s in want:
                for j, (_, q) in enumerate(batch):
                    out[j][s] = model.forward({k: v[j] for k, v in p.items()}, q.inputs).detach()
            if s == max(steps):
                break
            p, state = outer_update(p, step_fn(p, sup), state, opts)
        return out
    out = []
    for s_, q in batch:
        p, state, res = dict(params), outer_init(params), {}
        for s in range(max(steps) + 1):
            if s in want:
                res[s] = model.forward(p, q.inputs).detach()
            if s == max(steps):
                break
            p, state = outer_update(p, grad_fn(p, s_), state, opts)
        out.append(res)
    return out


# ---------------------------------------------------------------------------------- methods


class _Context:
    """Everything one fold's methods need: trained parameters, priors, chosen settings.

    Each ``<method>_options(batch, only)`` returns, per task of ``batch``, a dict from option
    (a hyperparameter choice; ``only`` restricts them) to the query predictions.
    """

    def __init__(self, model: FunctionalModel, settings: EvaluationSettings,
                 meta: MetaSettings, device: torch.device) -> None:
        self.model, self.settings, self.meta, self.device = model, settings, meta, device
        self.meta_params: Params | None = None
        self.pretrained: Params | None = None
        self.prior_mean: Tensor | None = None
        self.prior_std: Tensor | None = None
        self.scratch_seed = settings.seed
        self.finetune_lrs: tuple[float, ...] = (0.01,)
        self.scratch_lr = 0.01
        self.fallbacks: dict[str, int] = {}
        self.head_meta: dict[str, Params] = {}
        self.ensemble: Any = None
        self.jitter: dict[str, list[float]] = {}

    def meta_options(self, batch: Batch, only: list | None = None) -> list[dict[Any, Tensor]]:
        meta = self.meta
        params = model_params(self.meta_params)
        rates = inner_rates(self.meta_params)
        proximal = float(meta.proximal) if meta.algorithm == "imaml" else 0.0
        grid = only or [(st, sc) for sc in self.settings.meta_lr_scales
                        for st in self.settings.meta_steps]
        out: list[dict[Any, Tensor]] = [{} for _ in batch]
        for scale in dict.fromkeys(sc for _, sc in grid):
            pr = None if rates is None else {k: v * scale for k, v in rates.items()}
            steps = [st for st, sc in grid if sc == scale]
            preds = _sgd_paths(self.model, params, batch, steps, float(meta.inner_lr) * scale,
                               pr, meta.trainable, proximal)
            for o, p in zip(out, preds, strict=True):
                o.update({(st, scale): v for st, v in p.items()})
        return out

    def meta_init_options(self, batch: Batch, only: list | None = None
                          ) -> list[dict[Any, Tensor]]:
        params = model_params(self.meta_params)
        return [{None: self.model.forward(params, q.inputs).detach()} for _, q in batch]

    def pretrained_options(self, batch: Batch, only: list | None = None
                           ) -> list[dict[Any, Tensor]]:
        return [{None: self.model.forward(self.pretrained, q.inputs).detach()} for _, q in batch]

    def finetune_options(self, batch: Batch, only: list | None = None
                         ) -> list[dict[Any, Tensor]]:
        grid = only or [(st, lr) for lr in self.finetune_lrs
                        for st in self.settings.finetune_steps]
        out: list[dict[Any, Tensor]] = [{} for _ in batch]
        for lr in dict.fromkeys(lr for _, lr in grid):
            steps = [st for st, r in grid if r == lr]
            preds = _sgd_paths(self.model, self.pretrained, batch, steps, lr)
            for o, p in zip(out, preds, strict=True):
                o.update({(st, lr): v for st, v in p.items()})
        return out

    def offset_options(self, batch: Batch, only: list | None = None
                       ) -> list[dict[Any, Tensor]]:
        out = []
        for s, q in batch:
            base = self.model.forward(self.pretrained, q.inputs).detach()
            resid = s.y - self.model.forward(self.pretrained, s.inputs).detach()
            w = torch.ones_like(resid) if s.weight is None else s.weight
            opts = {}
            for lam in only or self.settings.shrinkage:
                shift = 0.0 if math.isinf(lam) else float((w * resid).sum() / (w.sum() + lam))
                opts[lam] = base + shift
            out.append(opts)
        return out

    def scratch_options(self, batch: Batch, only: list | None = None
                        ) -> list[dict[Any, Tensor]]:
        init = _init_params(self.model, self.scratch_seed, batch[0][0].y.dtype)
        init = {k: v.to(self.device) for k, v in init.items()}
        return _adam_paths(self.model, init, batch, only or self.settings.scratch_steps,
                           self.scratch_lr)

    def independent_options(self, batch: Batch, only: list | None = None
                            ) -> list[dict[Any, Tensor]]:
        return [{None: p} for p in self._fit(batch, prior=None)]

    def map_options(self, batch: Batch, only: list | None = None) -> list[dict[Any, Tensor]]:
        out: list[dict[Any, Tensor]] = [{} for _ in batch]
        for noise in only or self.settings.noise_stds:
            for o, p in zip(out, self._fit(batch, prior=noise), strict=True):
                o[noise] = p
        return out

    # -- methods with a predictive std ---------------------------------------------------------
    def _head(self, batch: Batch, algorithm: str, params: Params, name: str
              ) -> list[dict[Any, tuple[Tensor, Tensor]]]:
        import warnings

        from matmeta.bayes._core import JitterWarning
        from matmeta.bayes._meta import fit_feature_head
        from matmeta.errors import ConvergenceError

        base, shift = {}, None
        for key, v in params.items():
            if key.startswith("head_hyper::"):
                shift = v
            elif not key.startswith("inner_lr::"):
                base[key] = v
        out = []
        for s, q in batch:
            with warnings.catch_warnings(record=True) as caught, torch.no_grad():
                warnings.simplefilter("always", JitterWarning)
                try:
                    post = fit_feature_head(self.model, base, s, algorithm, shift=shift,
                                            steps=self.settings.head_steps,
                                            kernel=self.settings.kernel, differentiate="none")
                    mean, std = post.predict(q.inputs)
                    jit = post.posterior.jitter
                except ConvergenceError:
                    # a support the head cannot factorise even with jitter: the prior mean,
                    # with no uncertainty to score, counted in the notes
                    self.fallbacks[name] = self.fallbacks.get(name, 0) + 1
                    out.append({None: self.model.forward(base, q.inputs).detach()})
                    continue
            for w in caught:
                if not issubclass(w.category, JitterWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if jit > 0:
                self.jitter.setdefault(name, []).append(float(jit))
            out.append({None: (mean.detach(), std.detach())})
        return out

    def bayes_linear_options(self, batch: Batch, only: list | None = None) -> list[dict]:
        return self._head(batch, "bayes_linear", self.head_meta["bayes_linear"], "bayes_linear")

    def gp_options(self, batch: Batch, only: list | None = None) -> list[dict]:
        return self._head(batch, "gp", self.head_meta["gp"], "gp")

    def pretrained_bayes_linear_options(self, batch: Batch, only: list | None = None
                                        ) -> list[dict]:
        return self._head(batch, "bayes_linear", self.pretrained, "pretrained_bayes_linear")

    def pretrained_gp_options(self, batch: Batch, only: list | None = None) -> list[dict]:
        return self._head(batch, "gp", self.pretrained, "pretrained_gp")

    def ensemble_options(self, batch: Batch, only: list | None = None) -> list[dict]:
        from matmeta.meta._ensemble import ensemble_predict

        out = []
        for s, q in batch:
            mean, std = ensemble_predict(self.ensemble, s, q.inputs)
            out.append({None: (mean.detach(), std.detach())})
        return out

    def _fit(self, batch: Batch, prior: float | None) -> list[Tensor]:
        """Batched Levenberg-Marquardt fits of every task's support (MAP with a prior)."""
        from matmeta.fitting import fit_curves
        from matmeta.models.parametric import Prior

        model = self.model
        name = "independent" if prior is None else "map"
        pr = None
        if prior is not None:
            pr = Prior.from_std(model.name, model.flat_names, self.prior_mean.tolist(),
                                self.prior_std.tolist(), noise_std=float(prior),
                                model_config=model.config())
        need = 1 if pr is not None else model.num_params
        # the fitter refuses supports whose values are all equal, or with too few points: those
        # tasks get the stated fallback, counted in the notes
        ok = [j for j, (s, _) in enumerate(batch)
              if len(s.y) >= need and (len(s.y) == 1 or float(s.y.max()) > float(s.y.min()))]
        thetas: dict[int, Tensor] = {}
        covs: dict[int, Tensor] = {}

        def fit(idx: list[int]) -> None:
            sup = [batch[j][0] for j in idx]
            res = fit_curves(model, [s.inputs.detach().double().cpu() for s in sup],
                             [s.y.detach().double().cpu() for s in sup], prior=pr,
                             weight=None if sup[0].weight is None
                             else [s.weight.double().cpu() for s in sup])
            for j, th, cov in zip(idx, res.theta, res.cov, strict=True):
                if bool(torch.isfinite(th).all()):
                    thetas[j] = th
                    if bool(torch.isfinite(cov).all()):
                        covs[j] = cov

        if ok:
            try:
                fit(ok)
            except InputError:
                # one task the fitter refuses (an Arrhenius support at a single temperature)
                # must not cost the others their fits
                for j in ok:
                    try:
                        fit([j])
                    except InputError:
                        pass
        out = []
        for j, (s, q) in enumerate(batch):
            if j in thetas:
                theta = thetas[j]
            else:
                self.fallbacks[name] = self.fallbacks.get(name, 0) + 1
                if prior is None:
                    out.append(torch.full_like(q.y, float(s.y.mean())))
                    continue
                theta = self.prior_mean
            theta = theta.to(device=q.y.device, dtype=q.y.dtype)
            pred = model.forward(model.unflatten(theta), q.inputs).detach()
            if prior is None or j not in thetas or j not in covs:
                out.append(pred)
                continue
            # Laplace predictive std: the posterior covariance of theta pushed through the
            # law's Jacobian at the query inputs, plus the measurement noise MAP assumed
            jac = torch.func.jacrev(
                lambda th, x=q.inputs: model.forward(model.unflatten(th), x))(theta)
            cov = covs[j].to(jac)
            var = ((jac @ cov) * jac).sum(-1) + float(prior) ** 2
            out.append((pred, var.clamp_min(0).sqrt().detach()))
        return out


def _resolve(model: FunctionalModel, settings: EvaluationSettings
             ) -> tuple[bool, tuple[float, ...], float, float]:
    parametric = hasattr(model, "flat_names") and hasattr(model, "unflatten")
    lrs = settings.finetune_lrs or ((0.03, 0.1, 0.3) if parametric else (0.001, 0.003, 0.01,
                                                                          0.03))
    scratch_lr = settings.scratch_lr or (0.1 if parametric else 0.01)
    pre_lr = settings.pretrain_lr or (0.05 if parametric else 3e-3)
    return parametric, tuple(float(v) for v in lrs), float(scratch_lr), float(pre_lr)


def _mean_std(pred: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    return pred if isinstance(pred, tuple) else (pred, None)


def _uncertainty(pred: Tensor | tuple[Tensor, Tensor], y: Tensor,
                 report: Callable[[Tensor], Tensor]) -> dict[str, float]:
    """CRPS, NLPD and 50%/90% coverage in report units; NaN for point predictions.

    Every report map is affine (standardisation, log10 of a standardised target), so a std maps
    as ``|report(mean + std) - report(mean)|``.
    """
    mean, std = _mean_std(pred)
    if std is None:
        return dict.fromkeys(UNCERTAINTY_COLUMNS, math.nan)
    from matmeta.bayes._metrics import score_predictions

    m = report(mean.double())
    sd = (report(mean.double() + std.double()) - m).abs()
    # an ensemble whose members agree exactly (and no calibrated noise) has std 0: scored with
    # the smallest positive std rather than refused, so NLPD shows how overconfident it is
    sd = sd.clamp_min(torch.finfo(sd.dtype).tiny)
    scores = score_predictions(m, sd, report(y.double()))
    return {c: scores[c] for c in UNCERTAINTY_COLUMNS}


def _error(pred: Tensor | tuple[Tensor, Tensor], y: Tensor, metric: str,
           report: Callable[[Tensor], Tensor]) -> float:
    pred = _mean_std(pred)[0]
    diff = report(pred.double()) - report(y.double())
    if metric == "rmse":
        return float(torch.sqrt((diff**2).mean()))
    return float(diff.abs().mean())


def bootstrap_interval(values_by_group: Sequence[float], n_boot: int = 2000, level: float = 0.9,
                       seed: int = 0) -> tuple[float, float, float]:
    """Mean over groups and its percentile bootstrap interval, resampling groups.

    Example:
        >>> bootstrap_interval([0.10, 0.12, 0.30], n_boot=1000)    # (mean, low, high)

    Returns:
        (mean, low, high); low = high = mean for a single group.
    """
    v = np.asarray(values_by_group, dtype=float)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return (mean, float(min(lo, mean)), float(max(hi, mean)))


def paired_comparison(tasks: pd.DataFrame, method: str, baseline: str, n_boot: int = 2000,
                      level: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """Per k, ``mean error of method / mean error of baseline`` over shared groups, with a
    paired bootstrap interval (groups resampled once for both) and the groups ``method`` wins.

    Example:
        >>> paired_comparison(res.tasks, "meta", "finetune")

    Returns:
        Columns ``k``, ``method``, ``baseline``, ``ratio``, ``ci_low``, ``ci_high``, ``wins``,
        ``n_groups``.
    """
    rows = []
    for k in sorted(set(tasks["k"])):
        sel = tasks[(tasks["k"] == k) & tasks["method"].isin([method, baseline])]
        g = sel.groupby(["group", "method"])["error"].mean().unstack()
        if method not in g or baseline not in g:
            continue
        g = g[[method, baseline]].dropna()
        if g.empty:
            continue
        a, b = g[method].to_numpy(), g[baseline].to_numpy()
        ratio = float(a.mean() / b.mean())
        lo = hi = ratio
        if len(g) > 1:
            rng = np.random.default_rng(_seed_of(seed, k, method, baseline))
            idx = rng.integers(0, len(g), size=(int(n_boot), len(g)))
            boots = a[idx].mean(1) / b[idx].mean(1)
            q = (1 - level) / 2
            lo, hi = (float(v) for v in np.quantile(boots, [q, 1 - q]))
            lo, hi = min(lo, ratio), max(hi, ratio)
        rows.append({"k": int(k), "method": method, "baseline": baseline, "ratio": ratio,
                     "ci_low": lo, "ci_high": hi, "wins": int((a < b).sum()),
                     "n_groups": int(len(g))})
    return pd.DataFrame(rows, columns=["k", "method", "baseline", "ratio", "ci_low", "ci_high",
                                       "wins", "n_groups"])


# ---------------------------------------------------------------------------------- evaluate


def evaluate(model: FunctionalModel, families: Sequence[Family], *,
             test: str | float | Sequence[str] = "leave-one-out",
             val: float | Sequence[str] = 0.2,
             settings: EvaluationSettings | None = None,
             meta_settings: MetaSettings | None = None,
             meta_train_settings: MetaTrainSettings | None = None,
             target_transform: str | None = None, units: str = "",
             device: str | torch.device = "cpu", progress: bool | None = None,
             log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Leave-families-out k-shot evaluation of meta-learning against the baselines.

    Example:
        >>> res = evaluate(JMAK(), fams, test="leave-one-out", val=0.25,
        ...                settings=EvaluationSettings(shots=(2, 3), repeats=10),
        ...                meta_settings=MetaSettings("maml", inner_steps=5, inner_lr=0.1),
        ...                meta_train_settings=MetaTrainSettings(steps=300, k_shot=3, q_query=3))
        >>> print(res.table)

    Args:
        model: any :class:`~matmeta.models.FunctionalModel` (a fresh one: it is meta-trained,
            pretrained and trained from scratch per fold).
        families: all families; each fold holds out groups (``Family.group``).
        test: ``"leave-one-out"`` over groups, a fraction of groups, or group names.
        val: meta-validation share of the other groups, or names; every hyperparameter is
            chosen on these.
        settings: what to evaluate (:class:`EvaluationSettings`).
        meta_settings: algorithm and inner loop of the meta-learner.
        meta_train_settings: its outer loop; ``k_shot``/``q_query`` are capped per fold to what
            the meta-train families allow.
        target_transform: ``"standardize"``, ``"log10_standardize"`` or ``"identity"`` (a
            kind, not a fitted transform): each fold fits it on its own meta-train families'
            targets only (``families`` hold targets in their units) and maps that fold's
            meta-train, validation and test families with it, so no test or validation target
            shapes a fold's transform. Errors are reported in log10 units for log targets, else
            in the target's units. None: targets used as given.
        units: the units of the reported error (for the table).
        device: where tensors live.
        progress: show a progress bar over folds (default: on a terminal).
        log: called with one line per fold (e.g. ``print``).

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        InputError: a k no test family can host (explicit ``shots``), an unknown method, a
            method that does not apply to the model, splits without validation or test groups.
    """
    settings = settings or EvaluationSettings()
    meta = (meta_settings or MetaSettings()).resolve(model)
    mts = meta_train_settings or MetaTrainSettings(steps=200, meta_batch=8)
    device = torch.device(device)
    parametric, ft_lrs, scratch_lr, pre_lr = _resolve(model, settings)
    metric = settings.metric if settings.metric != "auto" else ("rmse" if parametric else "mae")
    has_features = callable(getattr(model, "features", None)) and callable(
        getattr(model, "head_names", None))
    methods = settings.methods or tuple(
        m for m in EVAL_METHODS if m not in OPT_IN and (parametric or m not in PARAMETRIC_ONLY)
        and (has_features or m not in FEATURE_ONLY))
    wrong = [m for m in methods if m in PARAMETRIC_ONLY and not parametric]
    if wrong:
        raise InputError(f"method {wrong[0]!r} fits a parametric law; model {model.name!r} is "
                         "not one")
    wrong = [m for m in methods if m in FEATURE_ONLY and not has_features]
    if wrong:
        raise InputError(f"method {wrong[0]!r} fits a head on the model's features; model "
                         f"{model.name!r} has no features(params, inputs)")
    if "ensemble" in methods:
        try:
            from matmeta.meta import _ensemble  # noqa: F401
        except ImportError as exc:
            raise InputError("method 'ensemble' needs matmeta.meta._ensemble (deep ensembles of "
                             "meta-learned initialisations), which this installation lacks"
                             ) from exc
    if not families:
        raise InputError("no families to evaluate")
    tkind = _transform_kind(target_transform, families)
    folds = family_folds(families, test=test, val=val, seed=settings.seed)
    test_all = [f for _, _, te in folds for f in te]
    largest = max(len(f) for f in test_all)
    if settings.shots is None:
        shots = tuple(k for k in DEFAULT_SHOTS if k < largest)
        dropped = [k for k in DEFAULT_SHOTS if k >= largest]
        if not shots:
            raise InputError(f"no test family has more than 1 sample (largest {largest}): "
                             "nothing to adapt to and predict")
    else:
        shots, dropped = tuple(settings.shots), []
        over = [k for k in shots if k >= largest]
        if over:
            big = max(test_all, key=len)
            raise InputError(f"k={over[0]}: no test family has more than {over[0]} samples "
                             f"(largest: {big.name!r} with {len(big)}); a task needs k support "
                             "samples and at least one query sample")
    notes = []
    if dropped:
        notes.append(f"k = {', '.join(map(str, dropped))} left out: no test family has more "
                     f"than {max(dropped)} samples (largest {largest})")
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    rows: list[dict[str, Any]] = []
    small: list[dict[str, Any]] = []
    fold_info: list[dict[str, Any]] = []
    fallbacks: dict[str, int] = {}
    jitters: dict[str, list[float]] = {}
    for fi, (train_f, val_f, test_f) in enumerate(tqdm(folds, desc="evaluate folds",
                                                        disable=not show, leave=False)):
        _check_no_leak(train_f, val_f, test_f)
        tt = _fold_transform(tkind, train_f, fi)
        if tt is not None:
            from matmeta.meta._data import transform_families

            train_f, val_f, test_f = (transform_families(list(x), tt)
                                      for x in (train_f, val_f, test_f))
        report = _report_fn(tt)
        report_error = (tt.inverse if tt is not None and settings.error_space == "target"
                        else report)
        ctx = _Context(model, settings, meta, device)
        ctx.finetune_lrs, ctx.scratch_lr = ft_lrs, scratch_lr
        ctx.scratch_seed = settings.seed + 1000 * fi
        info: dict[str, Any] = {
            "fold": fi, "train": sorted({f.group for f in train_f}),
            "val": sorted({f.group for f in val_f}), "test": sorted({f.group for f in test_f}),
            "chosen": {}, "target_transform": None if tt is None else tt.to_dict()}
        if {"meta", "meta_init", "map"} & set(methods):
            ctx.meta_params, left = _meta_train_fold(model, train_f, val_f, meta, mts, device,
                                                     settings.seed + fi)
            info["meta_train_left_out"] = left
            notes.extend(f"fold {fi}, meta-training: {line}" for line in left)
        if "ensemble" in methods:
            ctx.ensemble = _ensemble_fold(model, train_f, val_f, meta, mts, device,
                                          settings.seed + fi, settings.ensemble_members)
        from_pretrained = settings.head_init == "pretrained" and {"bayes_linear",
                                                                   "gp"} & set(methods)
        if from_pretrained or {"pretrained", "finetune", "offset", "pretrained_bayes_linear",
                               "pretrained_gp"} & set(methods):
            init = None
            if parametric:
                init = _init_params(model, settings.seed, train_f[0].y.dtype)
            ctx.pretrained = pretrain(model, train_f, val_f, steps=settings.pretrain_steps,
                                      lr=pre_lr, batch_size=settings.pretrain_batch,
                                      seed=settings.seed + fi, init=init, device=device)
        for alg in ("bayes_linear", "gp"):
            if alg in methods:
                head_settings = MetaSettings(alg, inner_steps=settings.head_steps,
                                             head_loss=settings.head_loss,
                                             kernel=settings.kernel)
                ctx.head_meta[alg], left = _meta_train_fold(
                    model, train_f, val_f, head_settings, mts, device, settings.seed + fi,
                    init=ctx.pretrained if settings.head_init == "pretrained" else None)
                notes.extend(f"fold {fi}, {alg} meta-training: {line}" for line in left)
        if "map" in methods:
            ctx.prior_mean, ctx.prior_std = _prior_from_fits(model, ctx.meta_params, train_f)
            info["prior"] = {"names": list(model.flat_names),
                             "mean": ctx.prior_mean.tolist(), "std": ctx.prior_std.tolist()}
        chosen_prev: dict[str, Any] = {}
        for k in shots:
            if ctx.ensemble is not None:
                # calibrated at exactly this k on the validation families that can serve it
                # (what the table of meta_train_ensemble, for sizes that half the families
                # serve, approximates by interpolation for `adapt`)
                from matmeta.meta._ensemble import calibrate_noise

                usable = [f for f in val_f if len(f) > k]
                if usable:
                    ctx.ensemble.noise_std = float(calibrate_noise(
                        ctx.ensemble, usable, k, tasks=32, seed=settings.seed + 99991))
                info.setdefault("ensemble_noise_std", {})[str(k)] = ctx.ensemble.noise_std
            chosen = _choose(ctx, methods, val_f, k, settings, metric, report_error,
                             chosen_prev)
            chosen_prev = chosen
            info["chosen"][str(k)] = {m: _plain(v) for m, v in chosen.items()}
            keys, batch = [], []
            for fam in test_f:
                if len(fam) <= k:
                    small.append({"fold": fi, "family": fam.name, "group": fam.group,
                                  "n_samples": len(fam), "k": k})
                    continue
                for r in range(settings.repeats):
                    s, q = _draw(fam, k, r, settings.seed, settings.q_query)
                    keys.append((fam, r))
                    batch.append((_to(s, device), _to(q, device)))
            if not batch:
                continue
            for m in methods:
                if m == "independent" and k < model.num_params:
                    continue
                if m in FEATURE_ONLY and k < 2:
                    continue
                preds = getattr(ctx, f"{m}_options")(batch, [chosen[m]])
                for (fam, r), (_, q), opts in zip(keys, batch, preds, strict=True):
                    pred = opts[chosen[m]] if chosen[m] in opts else next(iter(opts.values()))
                    rows.append({"fold": fi, "group": fam.group, "family": fam.name, "k": k,
                                 "repeat": r, "method": m,
                                 "error": _error(pred, q.y, metric, report_error),
                                 **_uncertainty(pred, q.y, report)})
        for m, n in ctx.fallbacks.items():
            fallbacks[m] = fallbacks.get(m, 0) + n
        fold_info.append(info)
        if log is not None:
            log(f"fold {fi + 1}/{len(folds)}: test {', '.join(info['test'])} done")
        for m, jit in ctx.jitter.items():
            jitters.setdefault(m, []).extend(jit)
    tasks = pd.DataFrame(rows, columns=["fold", "group", "family", "k", "repeat", "method",
                                        "error", *UNCERTAINTY_COLUMNS])
    if any(m in FEATURE_ONLY for m in methods) and 1 in shots:
        notes.append("closed-form heads need k >= 2 support points (their noise is fitted per "
                     "task); not reported at k = 1")
    for m, jit in jitters.items():
        notes.append(f"{m}: {len(jit)} head fits needed jitter on the kernel diagonal (largest "
                     f"{max(jit):.3g}, target units squared): duplicated or near-identical "
                     "support inputs")
    if "independent" in methods and any(k < model.num_params for k in shots):
        notes.append(f"independent fits need k >= {model.num_params} points "
                     f"({', '.join(model.flat_names)}); not reported below that")
    for m, n in fallbacks.items():
        if m in FEATURE_ONLY:
            notes.append(f"{m}: {n} head fits failed to factorise even with jitter and "
                         "predicted the prior mean (no std)")
            continue
        what = ("predicted the support mean" if m == "independent"
                else "kept the prior mean")
        notes.append(f"{m}: {n} fits (validation and test) refused by the fitter (support values "
                     f"all equal, or too few points) {what}")
    table = _summarise(tasks, methods, shots, settings, metric, units, fold_info)
    small_df = pd.DataFrame(small, columns=["fold", "family", "group", "n_samples", "k"])
    if len(small_df):
        counts = small_df.groupby("k").size()
        notes.append("test families too small for k (reported, not evaluated): "
                     + "; ".join(f"k={k}: {n}" for k, n in counts.items()))
    return EvaluationResult(table, tasks, small_df, fold_info, settings, notes)


def _transform_kind(kind: Any, families: Sequence[Family]) -> str | None:
    """Check the transform kind and that every family's targets can be mapped by it."""
    if kind is None:
        return None
    if not isinstance(kind, str):
        raise TypeError(f"target_transform {kind!r}: pass the kind (e.g. 'log10_standardize'); "
                        "evaluate fits it per fold on that fold's meta-train families")
    from matmeta.meta._data import transform_families
    from matmeta.models._transforms import TargetTransform

    # a test target that log10 cannot map must fail before any fold trains
    transform_families(list(families), TargetTransform(kind, 0.0, 1.0))
    return kind


def _fold_transform(kind: str | None, train_f: Sequence[Family], fold: int) -> Any:
    """The target transform of one fold, fitted on its meta-train families only."""
    if kind is None:
        return None
    from matmeta.models._transforms import TargetTransform

    y = torch.cat([f.y.reshape(-1) for f in train_f]).double()
    return TargetTransform.fit(y, kind=kind, name=f"fold {fold}, meta-train targets")


def _report_fn(transform: Any) -> Callable[[Tensor], Tensor]:
    if transform is None:
        return lambda y: y
    if getattr(transform, "log", False):
        return transform.to_log_space
    return transform.inverse


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return v


def _meta_train_fold(model: FunctionalModel, train_f: Sequence[Family], val_f: Sequence[Family],
                     meta: MetaSettings, mts: MetaTrainSettings, device: torch.device,
                     seed: int, init: Params | None = None) -> tuple[Params, list[str]]:
    """Meta-train on one fold; returns the meta-parameters and what the episodes left out."""
    largest = max(len(f) for f in train_f)
    k = min(mts.k_shot, max(largest - 1, 1))
    q = max(1, min(mts.q_query, largest - k))
    opts = dataclasses.replace(mts, k_shot=k, q_query=q, seed=seed)
    val_ok = [f for f in val_f if len(f) >= k + q]
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        # the sampler warns about families too small for the episodes; they go in the notes
        # (they still serve as validation tasks at smaller k)
        warnings.simplefilter("always")
        dtype = train_f[0].y.dtype
        res = meta_train(model, train_f, val_ok, settings=meta, train=opts, device=device,
                         progress=False,
                         init_params=_init_params(model, seed, dtype) if init is None else init)
    left = [str(w.message) for w in caught if "not drawn" in str(w.message)]
    if len(val_ok) < len(val_f):
        left.append(f"{len(val_f) - len(val_ok)} meta-validation families smaller than "
                    f"k_shot + q_query = {k + q} not used for the running validation loss")
    return {k_: v.detach() for k_, v in res.meta_params.items()}, left


def _ensemble_fold(model: FunctionalModel, train_f: Sequence[Family], val_f: Sequence[Family],
                   meta: MetaSettings, mts: MetaTrainSettings, device: torch.device, seed: int,
                   members: int) -> Any:
    """Meta-train an ensemble of ``members`` initialisations on one fold (same episodes' sizes
    as the single meta-learner)."""
    import warnings

    from matmeta.meta._ensemble import meta_train_ensemble

    largest = max(len(f) for f in train_f)
    k = min(mts.k_shot, max(largest - 1, 1))
    q = max(1, min(mts.q_query, largest - k))
    opts = dataclasses.replace(mts, k_shot=k, q_query=q, seed=seed)
    val_ok = [f for f in val_f if len(f) >= k + q]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # families too small for the episodes: as for `meta`
        # evaluate calibrates the noise per k itself
        return meta_train_ensemble(model, train_f, val_ok, members=members, settings=meta,
                                   train=opts, device=device, progress=False, calibrate=False)


def _prior_from_fits(model: Any, meta_params: Params, train_f: Sequence[Family]
                     ) -> tuple[Tensor, Tensor]:
    """Prior mean = meta-learned initialisation; std = robust spread of independent fits to the
    meta-train families (all their points), floored at 0.05."""
    from matmeta.fitting import fit_curves

    mean = model.flatten(model_params(meta_params)).detach().double().cpu()
    usable = [f for f in train_f if len(f) >= model.num_params
              and float(f.y.max()) > float(f.y.min())]
    std = torch.full_like(mean, 1.0)
    if len(usable) >= 2:
        try:
            res = fit_curves(model, [f.inputs.double().cpu() for f in usable],
                             [f.y.double().cpu() for f in usable])
            theta = res.theta[torch.isfinite(res.theta).all(-1)]
            if theta.shape[0] >= 2:
                med = theta.median(0).values
                mad = (theta - med).abs().median(0).values * 1.4826
                std = torch.where(mad > 0, mad, theta.std(0))
        except InputError:
            pass
    std = torch.where(torch.isfinite(std), std, torch.ones_like(std)).clamp_min(0.05)
    return mean, std


def _choose(ctx: _Context, methods: Sequence[str], val_f: Sequence[Family], k: int,
            settings: EvaluationSettings, metric: str, report: Callable[[Tensor], Tensor],
            previous: dict[str, Any]) -> dict[str, Any]:
    """Per method, the option with the lowest mean error on meta-validation tasks at this k."""
    usable = [f for f in val_f if len(f) > k]
    scores: dict[str, dict[Any, list[float]]] = {m: {} for m in methods}
    batch = []
    for fam in usable:
        for r in range(settings.val_repeats):
            s, q = _draw(fam, k, r, settings.seed + 99991, settings.q_query)
            batch.append((_to(s, ctx.device), _to(q, ctx.device)))
    for m in methods:
        if not batch or m in ("independent", "meta_init", "pretrained", "ensemble",
                              *FEATURE_ONLY):
            continue
        for (_, q), opts in zip(batch, getattr(ctx, f"{m}_options")(batch), strict=True):
            for opt, pred in opts.items():
                scores[m].setdefault(opt, []).append(_error(pred, q.y, metric, report))
    chosen: dict[str, Any] = {}
    for m in methods:
        if not scores[m]:
            chosen[m] = previous.get(m, _default_option(ctx, m))
            continue
        means = {o: float(np.mean(v)) for o, v in scores[m].items()}
        finite = {o: v for o, v in means.items() if math.isfinite(v)}
        chosen[m] = min(finite, key=finite.get) if finite else _default_option(ctx, m)
    return chosen


def _default_option(ctx: _Context, method: str) -> Any:
    s = ctx.settings
    return {
        "meta": (ctx.meta.steps_at_eval if ctx.meta.steps_at_eval in s.meta_steps
                 else s.meta_steps[0], 1.0 if 1.0 in s.meta_lr_scales else s.meta_lr_scales[0]),
        "finetune": (0, ctx.finetune_lrs[0]),
        "offset": math.inf if math.inf in s.shrinkage else max(s.shrinkage),
        "scratch": max(s.scratch_steps),
        "map": 0.05 if 0.05 in s.noise_stds else s.noise_stds[0],
    }.get(method)


def _summarise(tasks: pd.DataFrame, methods: Sequence[str], shots: Sequence[int],
               settings: EvaluationSettings, metric: str, units: str,
               folds: list[dict[str, Any]]) -> pd.DataFrame:
    out = []
    for k in shots:
        for m in methods:
            sel = tasks[(tasks.k == k) & (tasks.method == m)]
            if sel.empty:
                continue
            per_group = sel.groupby("group")["error"].mean()
            mean, lo, hi = bootstrap_interval(per_group.to_numpy(), settings.bootstrap,
                                              settings.level, _seed_of(settings.seed, k, m))
            unc: dict[str, float] = {}
            for col in UNCERTAINTY_COLUMNS:
                g = sel.groupby("group")[col].mean().dropna() if col in sel else pd.Series()
                unc[col] = float(g.mean()) if len(g) else math.nan
                if col == "crps":
                    _, clo, chi = bootstrap_interval(g.to_numpy(), settings.bootstrap,
                                                     settings.level,
                                                     _seed_of(settings.seed, k, m, "crps"))
                    unc["crps_ci_low"], unc["crps_ci_high"] = clo, chi
            chosen = sorted({json.dumps(f["chosen"].get(str(k), {}).get(m)) for f in folds})
            out.append({"k": k, "method": m, "error": mean, "ci_low": lo, "ci_high": hi,
                        "median_task": float(sel["error"].median()),
                        "n_groups": int(per_group.size), "n_tasks": int(len(sel)),
                        "metric": metric, "units": units,
                        "chosen": ";".join(c for c in chosen if c != "null"), **unc})
    cols = ["k", "method", "error", "ci_low", "ci_high", "median_task", "n_groups", "n_tasks",
            "metric", "units", "chosen", "crps", "crps_ci_low", "crps_ci_high", "nlpd",
            "coverage_50", "coverage_90"]
    return pd.DataFrame(out, columns=cols)
