"""``explain``: one row per support sample, the influence on each target, checked against LOO."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.influence._estimators import InfluenceScores, estimate, loo_influence
from matmeta.influence._request import SIGN_CONVENTION, InfluenceRequest, cast_tree
from matmeta.models._protocol import FunctionalModel, Params, Samples

__all__ = ["explain", "explain_request", "agreement", "find_duplicates", "DuplicateSampleWarning",
           "PoorFitWarning", "NOISE_RTOL", "MIN_DISTINCT", "POOR_FIT_R2"]

# Influence below this fraction of a target's scale (the loss of predicting the support mean for
# the query loss, the target's own value for the others) is noise: no sample moves the target.
NOISE_RTOL = 1e-6
# A rank or linear correlation over fewer distinct values says nothing: with two (one sample
# apart from K - 1 tied ones) any two vectors correlate +-1 by construction.
MIN_DISTINCT = 3
# The adapted model fits its own support worse than this R^2 (1 - MSE / variance of the
# support targets): its influence explains the misfit, not the data.
POOR_FIT_R2 = 0.5


class DuplicateSampleWarning(UserWarning):
    """Two support samples are identical (same inputs as the model sees them, same label)."""


class PoorFitWarning(UserWarning):
    """The adaptation being explained does not fit its own support set."""


def _groups(values: np.ndarray, floor: float) -> np.ndarray:
    """Group label of each value: sorted neighbours closer than ``floor`` plus
    :data:`NOISE_RTOL` x their size are one value (float noise in tied scores)."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    gap = np.diff(v) > floor + NOISE_RTOL * np.maximum(np.abs(v[1:]), np.abs(v[:-1]))
    labels = np.empty(values.size, dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(gap)])
    return labels


def _undefined(values: np.ndarray, what: str, floor: float) -> str | None:
    """Why a correlation over ``values`` means nothing (None: it means something)."""
    n = values.size
    if n < MIN_DISTINCT:
        return f"{n} sample(s); a correlation needs at least {MIN_DISTINCT}"
    if not np.isfinite(values).all():
        return f"non-finite {what}"
    big = float(np.abs(values).max())
    if big <= floor:
        return (f"the {what} are at noise level (largest |value| {big:.2g}, noise floor "
                f"{floor:.2g})")
    counts = np.bincount(_groups(values, floor))
    if counts.size < MIN_DISTINCT:
        return (f"the {what} take only {counts.size} distinct value(s) ({int(counts.max())} of "
                f"{n} tied)")
    return None


def agreement(estimated: np.ndarray, loo: np.ndarray, *, noise_floor: float = 0.0
              ) -> dict[str, Any]:
    """Spearman and Pearson correlation (scipy.stats) of estimated vs exact LOO scores.

    Undefined (NaN, with the ``reason``) when either side has fewer than :data:`MIN_DISTINCT`
    distinct values or is all at noise level: values closer than ``noise_floor`` (plus
    :data:`NOISE_RTOL` of their size) count as tied and are correlated as ties, so float noise
    among tied scores cannot make a ranking.

    Example:
        >>> agreement(np.array([1.0, 2.0, 3.0]), np.array([1.1, 1.9, 3.2]))["spearman"]
        1.0
        >>> agreement(np.array([-5.0, 1, 1, 1]), np.array([-9.0, 2, 2, 2]))["reason"]
        'the estimates take only 2 distinct value(s) (3 of 4 tied)'

    Args:
        estimated, loo: one score per support sample.
        noise_floor: scores this small in absolute value, or this close together, are noise.

    Returns:
        ``{"spearman", "pearson", "reason"}``; ``reason`` is None when the figures are defined.
    """
    from scipy import stats

    a, b = np.asarray(estimated, dtype=float), np.asarray(loo, dtype=float)
    floor = max(float(noise_floor), 0.0)
    reason = _undefined(a, "estimates", floor) or _undefined(b, "leave-one-out values", floor)
    if reason is not None:
        return {"spearman": math.nan, "pearson": math.nan, "reason": reason}
    # tied values (within the floor) take their group's mean: ties rank as ties
    snapped = []
    for v in (a, b):
        labels = _groups(v, floor)
        snapped.append((np.bincount(labels, v) / np.bincount(labels))[labels])
    return {"spearman": float(stats.spearmanr(*snapped).statistic),
            "pearson": float(stats.pearsonr(*snapped).statistic), "reason": None}


def find_duplicates(request: InfluenceRequest, rtol: float = 1e-9) -> list[tuple[str, str]]:
    """Pairs of support ids whose label, prediction and loss gradient at the start all agree.

    The model's inputs can be any pytree (times, a graph batch), so identity is judged by what the
    model sees: two samples with the same label, the same output and the same per-sample
    gradient are indistinguishable to every estimator.
    """
    model, params, sup = request.model, request.params, request.support
    with torch.no_grad():
        pred = model.forward(params, sup.inputs).detach()
    y = sup.y.detach()
    k = int(y.shape[-1])
    scale = float(torch.cat([pred.abs(), y.abs()]).max()) or 1.0
    cand = [(i, j) for i in range(k) for j in range(i + 1, k)
            if abs(float(y[i] - y[j])) <= rtol * scale
            and abs(float(pred[i] - pred[j])) <= rtol * scale]
    if not cand:
        return []
    keys = request.trainable_keys
    fast = {kk: params[kk].detach() for kk in keys}

    def residuals(f: Params) -> torch.Tensor:
        return model.forward({**params, **f}, sup.inputs) - y

    jac = torch.func.jacrev(residuals)(fast)
    flat = torch.cat([jac[kk].reshape(k, -1) for kk in keys], dim=1)
    gscale = float(flat.abs().max()) or 1.0
    ids = request.ids
    return [(ids[i], ids[j]) for i, j in cand
            if float((flat[i] - flat[j]).abs().max()) <= 1e-7 * gscale]


def explain_request(request: InfluenceRequest, estimator: str | Callable[..., InfluenceScores]
                    = "unrolled", *, check_loo: bool = False, loo_mode: str = "auto",
                    progress: bool | None = None, **options: Any) -> pd.DataFrame:
    """Score every support sample of ``request`` with ``estimator``; see :func:`explain`."""
    for a, b in find_duplicates(request):
        warnings.warn(f"support samples {a!r} and {b!r} are identical (same label and same "
                      "model inputs); deleting either leaves its twin, so each shows little "
                      "leave-one-out influence", DuplicateSampleWarning, stacklevel=3)
    name = estimator if isinstance(estimator, str) else getattr(estimator, "__name__", "custom")
    if name == "loo":
        options.setdefault("mode", loo_mode)
    if name in ("loo", "unrolled", "tracin"):
        options.setdefault("progress", progress)
    result = estimate(request, estimator, **options)
    cols = result.names
    scores = result.scores.detach().cpu().double().numpy()
    state = _adaptation_state(request)
    floors = _noise_floors(request, state, cols)
    # a custom estimator may explain another adaptation than the request's inner loop (a MAP
    # fit, say): only the named estimators' adaptation is judged
    fit = _support_fit(request, state) if isinstance(estimator, str) else None
    if fit is not None and fit["r2"] < POOR_FIT_R2:
        warnings.warn(_poor_fit_message(request, fit), PoorFitWarning, stacklevel=3)
    frame = pd.DataFrame({"sample": request.ids})
    for j, c in enumerate(cols):
        frame[c] = scores[:, j]
    if "query_loss" in cols:
        s = frame["query_loss"].to_numpy()
        floor = floors["query_loss"]
        frame["effect"] = np.where(s > floor, "helpful", np.where(s < -floor, "harmful",
                                                                  "neutral"))
        frame["harm_rank"] = pd.Series(-s).rank(method="first", ascending=False).astype(int)
    info: dict[str, Any] = {"estimator": result.estimator, **result.info}
    agree: dict[str, dict[str, Any]] = {}
    if check_loo:
        if result.estimator == "loo":
            loo = result
        else:
            loo = loo_influence(request, mode=loo_mode, progress=progress)
        loo_np = loo.scores.detach().cpu().double().numpy()
        for j, c in enumerate(cols):
            frame[f"loo:{c}"] = loo_np[:, j]
            agree[c] = agreement(scores[:, j], loo_np[:, j], noise_floor=floors[c])
        info["loo_mode"] = loo.info.get("loo_mode")
    frame.attrs["estimator"] = result.estimator
    frame.attrs["targets"] = cols
    frame.attrs["sign_convention"] = SIGN_CONVENTION
    frame.attrs["info"] = info
    frame.attrs["agreement"] = agree
    frame.attrs["noise_floor"] = floors
    frame.attrs["fit"] = fit
    frame.attrs["summary"] = summarize(frame)
    return frame


def _adaptation_state(request: InfluenceRequest) -> dict[str, Tensor] | None:
    """The explained adaptation's support predictions (adapted and initial) and target values;
    None where it cannot be run (an estimator has already said why)."""
    sup = request.support
    try:
        with torch.no_grad():
            if request.head is not None:
                from matmeta.influence._closed_form import _targets

                post = request.fit_head()
                return {"fitted": post.predict(sup.inputs)[0].detach(), "initial": None,
                        "values": _targets(request, post.predict(request.query.inputs)[0])}
            adapted = request.adapt()
            if not all(bool(torch.isfinite(v).all()) for v in adapted.values()):
                return None
            return {"fitted": request.model.forward(adapted, sup.inputs).detach(),
                    "initial": request.model.forward(request.params, sup.inputs).detach(),
                    "values": request.evaluate(adapted).detach()}
    except InputError:
        return None


def _weighted(request: InfluenceRequest, sq: Tensor) -> float:
    w = request.weight.to(sq)
    return float((w * sq).sum() / w.sum().clamp_min(torch.finfo(sq.dtype).tiny))


def _support_fit(request: InfluenceRequest, state: dict[str, Tensor] | None
                 ) -> dict[str, float] | None:
    """How well the adapted (and the initial) model fits its own support, weighted as the inner
    loop weighs it, in the model's target space: RMSE, the spread (std) of the support targets,
    the part of that spread no model can fit (repeated measurements of identical inputs) and
    R^2 of the rest, ``1 - (MSE - repeat var) / (var - repeat var)``."""
    if state is None or request.num_support < 2:
        return None
    y = request.support.y.detach()
    var = _weighted(request, (y - _weighted(request, y)) ** 2)
    if not var > 0:
        return None  # equal targets: no spread to measure a fit against
    mse = _weighted(request, (state["fitted"].to(y) - y) ** 2)
    repeat = _repeat_variance(request)
    out = {"support_rmse": math.sqrt(mse), "support_std": math.sqrt(var),
           "repeat_std": math.sqrt(repeat), "r2": math.nan}
    if var - repeat > 1e-9 * var:  # else only the repeats vary: nothing to judge a fit by
        out["r2"] = 1 - (mse - repeat) / (var - repeat)
    if state["initial"] is not None:
        out["initial_rmse"] = math.sqrt(_weighted(request, (state["initial"].to(y) - y) ** 2))
    return out


def _repeat_variance(request: InfluenceRequest) -> float:
    """Weighted variance of the support targets within groups of identical inputs (0 when
    every input differs, or the inputs are not one tensor row per sample, e.g. graphs)."""
    x, y, k = request.support.inputs, request.support.y.detach(), request.num_support
    if not isinstance(x, Tensor) or x.dim() == 0 or int(x.shape[0]) != k:
        return 0.0
    _, labels = np.unique(x.detach().reshape(k, -1).cpu().double().numpy(), axis=0,
                          return_inverse=True)
    labels = torch.as_tensor(labels.reshape(-1), device=y.device)
    if int(labels.max()) + 1 == k:
        return 0.0
    w = request.weight.to(y)
    wsum = torch.zeros(k, dtype=y.dtype, device=y.device).index_add_(0, labels, w)
    ysum = torch.zeros(k, dtype=y.dtype, device=y.device).index_add_(0, labels, w * y)
    means = (ysum / wsum.clamp_min(torch.finfo(y.dtype).tiny))[labels]
    return _weighted(request, (y - means) ** 2)


def _poor_fit_message(request: InfluenceRequest, fit: dict[str, float]) -> str:
    rate = ("the meta-learned per-parameter rates" if request.inner.get("per_param_lr")
            else f"lr {float(request.inner['lr']):g}")
    how = (f"the {request.head['algorithm']} head's fit" if request.head is not None else
           f"{request.inner['steps']} inner steps at {rate}")
    notes = [f"R^2 {fit['r2']:.2f}"]
    if fit["repeat_std"] > 0:
        notes.insert(0, f"{fit['repeat_std']:.3g} within repeated measurements of identical "
                        "inputs")
    if "initial_rmse" in fit:
        notes.append(f"RMSE {fit['initial_rmse']:.3g} before adapting")
    notes.append(how)
    tips = ("more support points or another head" if request.head is not None else
            "more inner steps or a larger inner learning rate (explain --inner-steps, "
            "--inner-lr)")
    if hasattr(request.model, "param_specs"):
        tips += ", or a prior (MAP) fit of the parametric model (matmeta jmak fit --prior)"
    return (f"the adapted model does not fit its own support: RMSE {fit['support_rmse']:.3g} "
            f"against a spread (std) of {fit['support_std']:.3g} in the support targets "
            f"({'; '.join(notes)}); its influence scores explain "
            f"that misfit, not the data: try {tips}")


def _noise_floors(request: InfluenceRequest, state: dict[str, Tensor] | None,
                  cols: list[str]) -> dict[str, float]:
    """Per score column, the size below which a score (or a difference of two) is noise:
    :data:`NOISE_RTOL` x the target's scale. Query loss: the larger of its value and the
    support targets' variance (the loss of predicting their mean); predictions: of their value
    and the targets' std; parameters and physical quantities: their value."""
    y = request.support.y.detach()
    var = _weighted(request, (y - _weighted(request, y)) ** 2) if request.num_support > 1 else 0.0
    values = (state["values"].detach().cpu().double().numpy() if state is not None
              else np.zeros(len(cols)))
    floors = {}
    for c, v in zip(cols, np.abs(values), strict=True):
        v = float(v) if np.isfinite(v) else 0.0
        if c == "query_loss":
            scale = max(v, var)
        elif c.startswith("prediction:"):
            scale = max(v, math.sqrt(var))
        else:
            scale = v
        floors[c] = NOISE_RTOL * scale
    return floors


def summarize(frame: pd.DataFrame) -> str:
    """A few lines: estimator, the most harmful and helpful samples (or that none stands out
    from noise), agreement with LOO per target (or why it is undefined)."""
    lines = [f"influence of {len(frame)} support samples, estimator {frame.attrs['estimator']!r}"]
    info = frame.attrs.get("info", {})
    floors = frame.attrs.get("noise_floor", {})
    if "damping" in info:
        lines.append(f"  damping {info['damping']:.3g} ({info.get('solver')} solve)")
    for c in frame.attrs.get("targets", []):
        if c.startswith(("prediction:", "param:")):
            continue
        s = frame[c].to_numpy(dtype=float)
        floor = floors.get(c, 0.0)
        big = float(np.abs(s).max()) if s.size else 0.0
        if big <= floor:
            lines.append(f"  no support sample moves {c} measurably (largest |score| "
                         f"{big:.2g}, within {NOISE_RTOL:g} x its scale {floor / NOISE_RTOL:.2g}"
                         "): the adaptation barely depends on its support; no sample stands "
                         "out")
            continue
        if c != "query_loss":
            continue
        parts = []
        worst, best = int(np.argmin(s)), int(np.argmax(s))
        if s[worst] < -floor:
            parts.append(f"most harmful: {frame['sample'].iloc[worst]} ({s[worst]:+.3g} query "
                         "loss if removed)")
        else:
            parts.append("no sample hurts the query loss")
        if s[best] > floor:
            parts.append(f"most helpful: {frame['sample'].iloc[best]} ({s[best]:+.3g})")
        else:
            parts.append("no sample helps it")
        lines.append("  " + "; ".join(parts))
    for c, a in frame.attrs.get("agreement", {}).items():
        if a.get("reason"):
            line = f"  vs leave-one-out on {c}: correlation undefined: {a['reason']}"
            loo = frame.get(f"loo:{c}")
            if loo is not None and float(np.abs(loo).max()) > floors.get(c, 0.0):
                i = int(np.argmax(np.abs(loo.to_numpy(dtype=float))))
                line += (f"; at {frame['sample'].iloc[i]} (largest |leave-one-out| "
                         f"{loo.iloc[i]:+.3g}) the estimate is {frame[c].iloc[i]:+.3g}")
            lines.append(line)
        else:
            lines.append(f"  vs leave-one-out on {c}: Spearman {a['spearman']:.3f}, "
                         f"Pearson {a['pearson']:.3f}")
    return "\n".join(lines)


def explain(model: FunctionalModel, params: Params, support: Samples,
            query: Samples | None = None, *, inner: Mapping[str, Any],
            targets: str | Sequence[str] = ("query_loss",),
            estimator: str | Callable[..., InfluenceScores] = "unrolled",
            check_loo: bool = False, ids: Sequence[str] | None = None,
            query_ids: Sequence[str] | None = None, dtype: torch.dtype | None = torch.float64,
            device: torch.device | str | None = None, progress: bool | None = None,
            **options: Any) -> pd.DataFrame:
    """Which support samples drove an adaptation, and by how much.

    Example:
        >>> df = explain(model, meta_params, support, query, inner={"steps": 500, "lr": 0.5},
        ...              targets=["query_loss", "n"], estimator="implicit", check_loo=True)
        >>> df.sort_values("query_loss").head(3)       # the three most harmful samples
        >>> df.attrs["agreement"]["query_loss"]        # {'spearman': ..., 'pearson': ...}

    Sign convention (every column): ``score = target(adapted without the sample) -
    target(adapted with all samples)``. For ``query_loss``, positive = helpful, negative =
    harmful (column ``effect``; ``harm_rank`` 1 = most harmful).

    Args:
        model: the model (a :class:`~matmeta.models.FunctionalModel`).
        params: initial (meta-learned) parameters the inner loop starts from.
        support: support samples (model-space targets; ``weight`` optional).
        query: query samples; labels (``y``) are needed only for ``query_loss`` (NaN otherwise).
        inner: inner-loop settings (``steps``, ``lr``, optionally ``per_param_lr``,
            ``trainable``, ``proximal``).
        targets: ``query_loss``, ``prediction``, ``params``, ``param:NAME`` or physical
            quantities the model's ``to_physical`` offers (``n``, ``k``, ``t_half``).
        estimator: ``unrolled`` (default), ``implicit``, ``tracin``, ``loo`` or a callable.
        check_loo: also run exact leave-one-out and report ``loo:<target>`` columns and the
            Spearman / Pearson agreement (``df.attrs["agreement"]``, ``df.attrs["summary"]``).
        ids, query_ids: identifiers of support / query samples.
        dtype: compute in this floating dtype (float64 by default: LOO differences are small).
        device: compute device (default: where the parameters are).
        progress: tqdm bars (default: when stderr is a terminal).
        **options: passed to the estimator (``damping``, ``solver``, ``mode``, ``checkpoints``).

    Returns:
        A DataFrame, one row per support sample: ``sample`` then one column per scalar target,
        ``effect`` and ``harm_rank`` for ``query_loss``, and ``loo:<target>`` with ``check_loo``.
        ``attrs``: ``agreement`` ({target: spearman, pearson, reason}; NaN with the reason
        when either side has under :data:`MIN_DISTINCT` distinct values or is all noise),
        ``noise_floor`` ({target: :data:`NOISE_RTOL` x its scale}; ``effect`` is ``neutral``
        within it and the summary names no sample), ``fit`` (the adapted model's support RMSE,
        the targets' std, the std within repeated identical inputs, R^2), ``summary``.

    Warns:
        PoorFitWarning: the adapted model fits its own support with R^2 below
            :data:`POOR_FIT_R2` (repeated measurements of identical inputs discounted).
        DuplicateSampleWarning: two support samples are identical.

    Raises:
        InputError: empty support, a query the model cannot evaluate, an unknown target, an
            estimator that cannot apply (implicit on an unconverged inner loop).
    """
    if support is None or support.y is None or int(support.y.numel()) == 0:
        raise InputError("the support set is empty: influence needs at least one support sample")
    params, support, query = cast_tree((params, support, query), dtype, device)
    inner = dict(inner)
    if inner.get("per_param_lr"):
        inner["per_param_lr"] = cast_tree(dict(inner["per_param_lr"]), dtype, device)
    if "lr" in inner and isinstance(inner["lr"], torch.Tensor):
        inner["lr"] = cast_tree(inner["lr"], dtype, device)
    request = InfluenceRequest(model, {k: v.detach() for k, v in params.items()}, support, inner,
                               query=query, targets=targets, ids=ids, query_ids=query_ids)
    return explain_request(request, estimator, check_loo=check_loo, progress=progress, **options)
