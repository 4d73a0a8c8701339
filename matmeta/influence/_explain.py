"""``explain``: one row per support sample, the influence on each target, checked against LOO."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from matmeta.errors import InputError
from matmeta.influence._estimators import InfluenceScores, estimate, loo_influence
from matmeta.influence._request import SIGN_CONVENTION, InfluenceRequest, cast_tree
from matmeta.models._protocol import FunctionalModel, Params, Samples

__all__ = ["explain", "explain_request", "agreement", "find_duplicates", "DuplicateSampleWarning"]


class DuplicateSampleWarning(UserWarning):
    """Two support samples are identical (same inputs as the model sees them, same label)."""


def agreement(estimated: np.ndarray, loo: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation (scipy.stats) of estimated vs exact LOO scores.

    Example:
        >>> agreement(np.array([1.0, 2.0, 3.0]), np.array([1.1, 1.9, 3.2]))["spearman"]
        1.0
    """
    from scipy import stats

    a, b = np.asarray(estimated, dtype=float), np.asarray(loo, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"spearman": math.nan, "pearson": math.nan}
    return {"spearman": float(stats.spearmanr(a, b).statistic),
            "pearson": float(stats.pearsonr(a, b).statistic)}


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
    frame = pd.DataFrame({"sample": request.ids})
    for j, c in enumerate(cols):
        frame[c] = scores[:, j]
    if "query_loss" in cols:
        s = frame["query_loss"].to_numpy()
        frame["effect"] = np.where(s > 0, "helpful", np.where(s < 0, "harmful", "neutral"))
        frame["harm_rank"] = pd.Series(-s).rank(method="first", ascending=False).astype(int)
    info: dict[str, Any] = {"estimator": result.estimator, **result.info}
    agree: dict[str, dict[str, float]] = {}
    if check_loo:
        if result.estimator == "loo":
            loo = result
        else:
            loo = loo_influence(request, mode=loo_mode, progress=progress)
        loo_np = loo.scores.detach().cpu().double().numpy()
        for j, c in enumerate(cols):
            frame[f"loo:{c}"] = loo_np[:, j]
            agree[c] = agreement(scores[:, j], loo_np[:, j])
        info["loo_mode"] = loo.info.get("loo_mode")
    frame.attrs["estimator"] = result.estimator
    frame.attrs["targets"] = cols
    frame.attrs["sign_convention"] = SIGN_CONVENTION
    frame.attrs["info"] = info
    frame.attrs["agreement"] = agree
    frame.attrs["summary"] = summarize(frame)
    return frame


def summarize(frame: pd.DataFrame) -> str:
    """A few lines: estimator, the most harmful sample, agreement with LOO per target."""
    lines = [f"influence of {len(frame)} support samples, estimator {frame.attrs['estimator']!r}"]
    info = frame.attrs.get("info", {})
    if "damping" in info:
        lines.append(f"  damping {info['damping']:.3g} ({info.get('solver')} solve)")
    if "query_loss" in frame.columns:
        worst = frame.loc[frame["query_loss"].idxmin()]
        best = frame.loc[frame["query_loss"].idxmax()]
        lines.append(f"  most harmful: {worst['sample']} ({worst['query_loss']:+.3g} query loss "
                     f"if removed); most helpful: {best['sample']} ({best['query_loss']:+.3g})")
    for c, a in frame.attrs.get("agreement", {}).items():
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
