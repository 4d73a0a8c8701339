"""The influence request: what to explain, as data (model, adaptation, query, targets).

An :class:`InfluenceRequest` says *what* to measure; the estimators in
:mod:`matmeta.influence._estimators` say *how*. Every estimator returns scores in one convention:

    score_i = target(adapted without sample i) - target(adapted with every sample)

the change that deleting support sample ``i`` would cause. For ``query_loss`` a positive score
means the sample *helped* (the query loss would rise without it); a negative score means it
*hurt*. For predictions, parameters and physical quantities the sign says which way the sample
pulled: a positive score for ``n`` means the sample held ``n`` lower than it would be without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from matmeta.errors import InputError
from matmeta.meta._inner import inner_loop
from matmeta.models._protocol import FunctionalModel, Params, Samples, sample_loss

__all__ = ["InfluenceRequest", "SIGN_CONVENTION", "BUILTIN_TARGETS", "cast_tree"]

SIGN_CONVENTION = (
    "score = target(adapted without sample i) - target(adapted with all samples); "
    "for query_loss positive = helpful (the query loss rises without the sample), "
    "negative = harmful"
)
BUILTIN_TARGETS = ("query_loss", "prediction", "params")

# Keys of an inner-loop settings dict that influence understands, and the names the meta
# checkpoints may use for them.
_INNER_ALIASES = {
    "steps": "steps", "inner_steps": "steps",
    "lr": "lr", "inner_lr": "lr",
    "per_param_lr": "per_param_lr", "per_param_lrs": "per_param_lr", "lrs": "per_param_lr",
    "trainable": "trainable", "trainable_names": "trainable",
    "proximal": "proximal",
}
# Settings that do not change the adapted parameters (how a meta-gradient flows, or what a meta
# checkpoint's inner record says about training), so the record of `MetaResult.inner()` and of
# a meta checkpoint can be passed as it is.
_INNER_IGNORED = {"first_order", "algorithm", "train_steps", "kernel", "head_loss"}
# Adaptations that fit a closed-form head on the model's features (matmeta.bayes._meta): the
# request then describes the head fit, not an inner loop.
HEAD_ALGORITHMS = ("bayes_linear", "gp")
HEAD_TARGETS = ("query_loss", "prediction")
# "params" expands to one column per parameter element; beyond this, name them one by one.
MAX_PARAM_COLUMNS = 256


def cast_tree(tree: Any, dtype: torch.dtype | None, device: torch.device | str | None) -> Any:
    """Move every tensor in ``tree`` to ``device`` and floating tensors to ``dtype``."""
    def cast(x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        return x.to(device) if device is not None else x

    return tree_map(cast, tree)


def normalize_inner(inner: Mapping[str, Any]) -> dict[str, Any]:
    """Inner-loop settings as :func:`inner_loop` keywords (steps, lr, per_param_lr, ...)."""
    out: dict[str, Any] = {}
    for key, value in dict(inner).items():
        if key in _INNER_IGNORED:
            continue
        if key not in _INNER_ALIASES:
            raise InputError(f"inner-loop setting {key!r} is not understood: expected "
                             f"{', '.join(sorted(set(_INNER_ALIASES)))}")
        out[_INNER_ALIASES[key]] = value
    if "steps" not in out or int(out["steps"]) < 1:
        raise InputError("inner-loop settings need steps >= 1 (the adaptation to explain)")
    out["steps"] = int(out["steps"])
    if "lr" not in out and not out.get("per_param_lr"):
        raise InputError("inner-loop settings need a learning rate 'lr' (or per_param_lr)")
    out.setdefault("lr", 0.0)
    out.setdefault("proximal", 0.0)
    if out.get("trainable") is not None:
        out["trainable"] = list(out["trainable"])
    return out


@dataclass
class InfluenceRequest:
    """What to explain: one adaptation (initial params + support + inner loop) and its targets.

    Example:
        >>> req = InfluenceRequest(model, init_params, support, {"steps": 200, "lr": 0.1},
        ...                        query=query, targets=("query_loss", "n"))
        >>> req.target_names()
        ['query_loss', 'n']

    Args:
        model: any :class:`~matmeta.models.FunctionalModel`.
        params: the (meta-learned) initial parameters the inner loop starts from.
        support: the support samples; their ``weight`` (or ones) is the weighting explained.
        inner: inner-loop settings: ``steps``, ``lr``, optionally ``per_param_lr``, ``trainable``,
            ``proximal`` (``inner_steps``/``inner_lr`` also accepted; ``first_order`` ignored, it
            does not change the adapted parameters). With ``algorithm`` ``"bayes_linear"`` or
            ``"gp"`` (a head checkpoint's inner record) the adaptation is that closed-form head
            fitted on the model's features (``steps``: its Newton steps; ``kernel`` for the GP);
            only ``query_loss`` and ``prediction`` targets apply, and the estimators are
            ``exact_closed_form`` and ``loo`` (brute-force refits).
        query: query samples (labels needed only for ``query_loss``).
        targets: any of ``"query_loss"``, ``"prediction"`` (one column per query sample),
            ``"params"`` (one column per trainable parameter element), ``"param:NAME"`` (one
            parameter tensor), or a physical quantity offered by ``model.to_physical`` (``"n"``,
            ``"k"`` for ``k_per_s``, ``"t_half"`` for ``t_half_s``, or the full key).
        ids: identifiers of the support samples (default ``"0"``, ``"1"``, ...).
        query_ids: identifiers of the query samples (prediction column names).
    """

    model: FunctionalModel
    params: Params
    support: Samples
    inner: Mapping[str, Any]
    query: Samples | None = None
    targets: Sequence[str] = ("query_loss",)
    ids: Sequence[str] | None = None
    query_ids: Sequence[str] | None = None
    _names: list[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.head: dict[str, Any] | None = _head_settings(self.inner)
        if self.head is not None:
            self.inner = {"steps": self.head["steps"], "lr": 0.0, "proximal": 0.0}
            bad = [t for t in ([self.targets] if isinstance(self.targets, str) else self.targets)
                   if t not in HEAD_TARGETS]
            if bad:
                raise InputError(f"target {bad[0]!r}: a {self.head['algorithm']} head's "
                                 f"influence is on {' or '.join(HEAD_TARGETS)}")
        else:
            self.inner = normalize_inner(self.inner)
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets:
            raise InputError("no influence target requested: expected query_loss, prediction, "
                             "params or a physical quantity name")
        k = int(self.support.y.shape[-1]) if self.support.y is not None else 0
        if k == 0:
            raise InputError("the support set is empty: influence needs at least one support "
                             "sample")
        if self.ids is None:
            self.ids = [str(i) for i in range(k)]
        self.ids = [str(i) for i in self.ids]
        if len(self.ids) != k:
            raise InputError(f"{len(self.ids)} support identifiers for {k} support samples")
        if self.query is not None and not isinstance(self.query, Samples):
            raise InputError("query must be a matmeta.models.Samples (inputs, y, weight); use "
                             "y = NaN where labels are unknown")
        missing = set(self.inner.get("trainable") or ()) - set(self.params)
        if missing:
            raise InputError(f"trainable names not among the model's parameters: "
                             f"{sorted(missing)}")
        self._names = self._expand_targets()

    # -- the adaptation ---------------------------------------------------------------------
    @property
    def num_support(self) -> int:
        return int(self.support.y.shape[-1])

    @property
    def weight(self) -> Tensor:
        """The support weights being explained (ones when the support carries none)."""
        if self.support.weight is not None:
            return self.support.weight
        return torch.ones_like(self.support.y)

    @property
    def trainable_keys(self) -> list[str]:
        t = self.inner.get("trainable")
        return list(self.params) if t is None else [k for k in self.params if k in set(t)]

    def with_weight(self, weight: Tensor) -> Samples:
        return Samples(self.support.inputs, self.support.y, weight)

    def fit_head(self, keep: Sequence[int] | None = None, fixed: Any = None) -> Any:
        """Fit the request's closed-form head on the support (or on the rows ``keep``); with
        ``fixed`` (a fitted :class:`~matmeta.bayes._meta.HeadPosterior`) its hyperparameters are
        held instead of refitted."""
        from matmeta.bayes._meta import refit_head

        return refit_head(self.model, self.params, self.support, self.head, keep, fixed)

    def adapt(self, weight: Tensor | None = None, return_trajectory: bool = False):
        """Run the inner loop as the request describes, with support weights ``weight``."""
        if self.head is not None:
            raise InputError(f"a {self.head['algorithm']} head is fitted in closed form, not by "
                             "an inner loop: use the estimator 'exact_closed_form' (or 'loo')")
        w = self.weight if weight is None else weight
        return inner_loop(self.model, self.params, self.with_weight(w),
                          return_trajectory=return_trajectory, **self.inner)

    def check_finite(self, adapted: Params) -> None:
        """Refuse an adaptation that diverged: influence of a NaN fit means nothing."""
        bad = [k for k, v in adapted.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise InputError(f"the inner loop diverged (non-finite {bad[0]!r} after "
                             f"{self.inner['steps']} steps at lr {self.inner['lr']}): lower the "
                             "inner learning rate")

    def objective(self, fast: Params, weight: Tensor) -> Tensor:
        """The inner loop's objective: weighted support loss (+ proximal term) at ``fast``."""
        full = {**self.params, **fast}
        loss = sample_loss(self.model, full, self.with_weight(weight))
        prox = float(self.inner.get("proximal") or 0.0)
        if prox:
            loss = loss + 0.5 * prox * sum(((fast[k] - self.params[k]) ** 2).sum() for k in fast)
        return loss

    def lr_tree(self) -> Params:
        """The step size of every trainable parameter element (Meta-SGD rates where given)."""
        per = self.inner.get("per_param_lr") or {}
        lr = self.inner["lr"]
        out = {}
        for k in self.trainable_keys:
            rate = per[k] if k in per else lr
            out[k] = torch.as_tensor(rate, dtype=self.params[k].dtype,
                                     device=self.params[k].device).expand_as(self.params[k])
        return out

    # -- the targets ------------------------------------------------------------------------
    def target_names(self) -> list[str]:
        """Column names of the scores, one per scalar target."""
        return list(self._names or [])

    def _physical(self, params: Params) -> dict[str, Tensor]:
        fn = getattr(self.model, "to_physical", None)
        if fn is None:
            return {}
        values = dict(fn(params))
        derived = getattr(self.model, "derived", None)
        if derived is not None:
            values.update(derived(params))  # t_half_s and other derived quantities
        out = {}
        for key, value in values.items():
            if isinstance(value, tuple):  # (value, uncertainty) pairs
                value = value[0]
            if isinstance(value, Tensor) or isinstance(value, float):
                out[key] = torch.as_tensor(value)
        return out

    def _physical_key(self, name: str, keys: Iterable[str]) -> str | None:
        keys = list(keys)
        if name in keys:
            return name
        # "k" -> "k_per_s", "t_half" -> "t_half_s": the name without its unit suffix.
        units = ("per_s", "s", "K", "GPa", "kJ_per_mol", "eV", "A3", "per_K")
        hits = [k for k in keys if k.startswith(name + "_") and k[len(name) + 1:] in units]
        return hits[0] if len(hits) == 1 else None

    def _expand_targets(self) -> list[str]:
        names: list[str] = []
        needs_query = {"query_loss", "prediction"} & set(self.targets)
        if needs_query and self.query is None:
            raise InputError(f"target {sorted(needs_query)[0]!r} needs a query set; pass query= "
                             "(or ask for 'params' / a physical quantity instead)")
        if self.query is not None:
            try:
                with torch.no_grad():
                    pred = self.model.forward(self.params, self.query.inputs)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - a model fails in many ways on bad inputs
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise InputError(f"query: the {self.model.name!r} model cannot evaluate these "
                                 f"inputs ({first})") from exc
            if pred.shape[-1] != self.query.y.shape[-1]:
                raise InputError(f"query: {pred.shape[-1]} predictions for "
                                 f"{self.query.y.shape[-1]} query labels")
            if self.query_ids is None:
                self.query_ids = [str(i) for i in range(int(pred.shape[-1]))]
        trainable = self.trainable_keys
        phys_keys = list(self._physical(self.params)) if hasattr(self.model, "to_physical") else []
        for t in self.targets:
            if t == "query_loss":
                if torch.isnan(self.query.y).any():
                    raise InputError("target 'query_loss' needs query labels, and some are "
                                     "missing (NaN); use target 'prediction' for unlabelled "
                                     "queries")
                names.append("query_loss")
            elif t == "prediction":
                names += [f"prediction:{q}" for q in self.query_ids]
            elif t == "params":
                size = sum(self.params[k].numel() for k in trainable)
                if size > MAX_PARAM_COLUMNS:
                    raise InputError(f"target 'params' would give {size} columns (one per "
                                     f"trainable parameter element); name tensors with "
                                     f"'param:NAME' (e.g. param:{trainable[0]})")
                names += _param_columns(self.params, trainable)
            elif t.startswith("param:"):
                key = t.split(":", 1)[1]
                if key not in self.params:
                    raise InputError(f"target {t!r}: no parameter {key!r}; the model has "
                                     f"{', '.join(list(self.params)[:12])}")
                names += _param_columns(self.params, [key])
            else:
                key = self._physical_key(t, phys_keys)
                if key is None:
                    offered = ", ".join([*BUILTIN_TARGETS, *phys_keys])
                    raise InputError(f"unknown influence target {t!r}: expected one of "
                                     f"{offered}")
                names.append(t)
        return names

    def evaluate(self, params: Params) -> Tensor:
        """All requested targets at ``params``, as one (m,) vector in :meth:`target_names` order."""
        parts: list[Tensor] = []
        phys: dict[str, Tensor] | None = None
        for t in self.targets:
            if t == "query_loss":
                parts.append(sample_loss(self.model, params, self.query).reshape(1))
            elif t == "prediction":
                parts.append(self.model.forward(params, self.query.inputs).reshape(-1))
            elif t == "params":
                parts += [params[k].reshape(-1) for k in self.trainable_keys]
            elif t.startswith("param:"):
                parts.append(params[t.split(":", 1)[1]].reshape(-1))
            else:
                if phys is None:
                    phys = self._physical(params)
                key = self._physical_key(t, phys)
                parts.append(phys[key].reshape(-1)[:1].to(self.support.y.dtype))
        return torch.cat([p.to(self.support.y.dtype) for p in parts])


def _head_settings(inner: Mapping[str, Any]) -> dict[str, Any] | None:
    alg = dict(inner).get("algorithm")
    if alg not in HEAD_ALGORITHMS:
        return None
    steps = dict(inner).get("steps", dict(inner).get("inner_steps", 10))
    return {"algorithm": alg, "steps": max(int(steps), 1),
            "kernel": str(dict(inner).get("kernel", "rbf"))}


def _param_columns(params: Params, keys: Sequence[str]) -> list[str]:
    cols = []
    for k in keys:
        shape = tuple(params[k].shape)
        if len(shape) == 0:
            cols.append(f"param:{k}")
            continue
        for idx in torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(
                -1, len(shape)).tolist():
            cols.append(f"param:{k}[{','.join(str(i) for i in idx)}]")
    return cols
