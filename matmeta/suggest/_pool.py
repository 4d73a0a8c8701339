"""What to measure next among candidate compositions or structures (pool-based suggestions).

A Bayesian linear head on a model's features (:func:`matmeta.bayes.fit_bayes_linear`, its prior
mean at the model's own output layer) gives a Gaussian posterior over the readout weights with
covariance ``S`` and noise variance ``s2``. Measuring candidate ``c`` (features ``x_c``, bias
column appended) changes ``S`` by a rank-1 update that does not depend on the value measured::

    S' = S - S x_c x_c^T S / (s2 + x_c^T S x_c)

so the expected reduction of the summed predictive variance over a target region ``T`` is exact
and closed form::

    sum_t (x_t^T S x_c)^2 / (s2 + x_c^T S x_c)

A batch of ``q`` suggestions is chosen greedily: pick the best candidate, apply its rank-1
update, score again (no measurement is needed in between, since the variance ignores ``y``).

Strategies (``STRATEGIES``):

- ``variance``: expected reduction of the target region's predictive variance (above).
- ``maxstd``: the candidate whose own prediction is least certain (greedy with the same updates).
- ``disagreement``: the variance of the members' predictions (an ensemble's adapted members, or
  heads refitted to bootstrap resamples of the support); a batch is the top ``q``.
- ``random``: a seeded random order.

Example:
    >>> post = fit_bayes_linear(phi_support, y_support, prior_mean=readout)
    >>> s = suggest_from_posterior(post, phi_candidates, goal="max", region="top:0.2", batch=3)
    >>> s.order                    # candidate indices, measure them in this order
    >>> s.table(candidates_df)     # ranked DataFrame
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from matmeta.errors import InputError

__all__ = [
    "STRATEGIES",
    "SuggestModel",
    "Suggestions",
    "bootstrap_head_predictions",
    "condition_covariance",
    "fit_feature_heads",
    "greedy_batch",
    "linear_readout",
    "load_suggest_model",
    "member_features",
    "model_inputs",
    "parse_goal",
    "parse_region",
    "read_pool_table",
    "region_mask",
    "suggest_from_posterior",
    "suggest_next",
    "variance_reduction",
]

STRATEGIES = ("variance", "maxstd", "disagreement", "random")
# 90% central interval of a Gaussian
_Z90 = 1.6448536269514722


def _augment(features: Tensor, bias: bool) -> Tensor:
    if not bias:
        return features
    return torch.cat([features, torch.ones_like(features[..., :1])], dim=-1)


# ------------------------------------------------------------------------------ closed form


def variance_reduction(cov: Tensor, candidates: Tensor, targets: Tensor,
                       noise_var: Tensor | float) -> Tensor:
    """Expected reduction of ``sum_t Var[f(x_t)]`` from one measurement at each candidate.

    Exact for a linear-Gaussian head: ``sum_t (x_t^T S x_c)^2 / (noise_var + x_c^T S x_c)``,
    whatever value the measurement returns. Leading dimensions (an ensemble's members, each with
    its own features and posterior) broadcast.

    Example:
        >>> red = variance_reduction(post.weight_cov, phi_c_aug, phi_t_aug, post.noise_var)
        >>> int(red.argmax())           # the single most informative candidate

    Args:
        cov: (..., d, d) posterior covariance of the readout weights (bias included if used).
        candidates: (..., n, d) candidate features (with the bias column if the head has one).
        targets: (..., m, d) features of the target region.
        noise_var: measurement noise variance (target units squared), scalar or (...,).

    Returns:
        (..., n) reductions, in target units squared (the head's target space).
    """
    noise = torch.as_tensor(noise_var, dtype=cov.dtype, device=cov.device)
    s_c = candidates @ cov                                     # (..., n, d)
    var_c = (s_c * candidates).sum(-1)                         # (..., n)
    # sum_t (x_t^T S x_c)^2 = x_c^T S (T^T T) S x_c: O((n + m) d^2), never an (m, n) matrix
    gram = targets.transpose(-1, -2) @ targets                 # (..., d, d)
    return ((s_c @ gram) * s_c).sum(-1) / (noise[..., None] + var_c)


def condition_covariance(cov: Tensor, x: Tensor, noise_var: Tensor | float) -> Tensor:
    """The posterior covariance after one more measurement at features ``x`` (rank-1 update).

    Example:
        >>> cov2 = condition_covariance(post.weight_cov, phi_aug[3], post.noise_var)

    Args:
        cov: (..., d, d) covariance; x: (..., d) features; noise_var: scalar or (...,).
    """
    noise = torch.as_tensor(noise_var, dtype=cov.dtype, device=cov.device)
    sx = (cov @ x.unsqueeze(-1)).squeeze(-1)                   # (..., d)
    denom = noise + (sx * x).sum(-1)
    return cov - sx.unsqueeze(-1) * sx.unsqueeze(-2) / denom[..., None, None]


def greedy_batch(cov: Tensor, candidates: Tensor, targets: Tensor | None,
                 noise_var: Tensor | float, q: int, *, criterion: str = "variance",
                 exclude: Sequence[int] = ()) -> tuple[list[int], list[float]]:
    """Choose ``q`` candidates one after another, each scored after the previous ones' updates.

    Example:
        >>> order, gains = greedy_batch(S, phi_c, phi_t, s2, q=3)

    Args:
        cov, candidates, targets, noise_var: as in :func:`variance_reduction`; with leading
            member dimensions the score is the mean over members.
        q: batch size.
        criterion: ``"variance"`` (reduction over ``targets``) or ``"maxstd"`` (the candidate's
            own predictive variance; ``targets`` unused).
        exclude: candidates not to choose (each pool row is measured at most once).

    Returns:
        (indices in the order chosen, the score of each when chosen).
    """
    n = candidates.shape[-2]
    taken = set(int(i) for i in exclude)
    q = min(int(q), n - len(taken))
    order: list[int] = []
    gains: list[float] = []
    lead = tuple(range(cov.dim() - 2))
    noise = torch.as_tensor(noise_var, dtype=cov.dtype, device=cov.device)
    for _ in range(q):
        if criterion == "variance":
            score = variance_reduction(cov, candidates, targets, noise)
        elif criterion == "maxstd":
            score = ((candidates @ cov) * candidates).sum(-1) + noise[..., None]
        else:
            raise InputError(f"criterion {criterion!r}: expected 'variance' or 'maxstd'")
        if lead:
            score = score.mean(lead)
        score = score.clone()
        if taken:
            score[list(taken)] = -math.inf
        i = int(torch.argmax(score))
        order.append(i)
        gains.append(float(score[i]))
        taken.add(i)
        cov = condition_covariance(cov, candidates[..., i, :], noise)
    return order, gains


# ------------------------------------------------------------------------------ goals, regions


def parse_goal(goal: str | float | None) -> str | float:
    """``"max"``, ``"min"`` or a target value (a number, in the target's units).

    Example:
        >>> parse_goal("max"), parse_goal("1200")
        ('max', 1200.0)
    """
    if goal is None:
        return "max"
    if isinstance(goal, (int, float)) and not isinstance(goal, bool):
        value = float(goal)
    else:
        text = str(goal).strip().lower()
        if text in ("max", "min"):
            return text
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"--goal {goal!r}: expected max, min or a target value (a number in "
                             "the target's units)") from None
    if not math.isfinite(value):
        raise InputError(f"--goal {goal!r}: expected a finite target value")
    return value


def parse_region(region: str | float | None) -> tuple[str, float]:
    """``"all"`` or ``"top:F"`` (the fraction F of candidates best for the goal) -> (kind, F).

    Example:
        >>> parse_region("top:0.2")
        ('top', 0.2)
    """
    if region is None or str(region).strip().lower() == "all":
        return "all", 1.0
    text = str(region).strip().lower()
    if text.startswith("top:"):
        try:
            frac = float(text[4:])
        except ValueError:
            frac = math.nan
        if not 0.0 < frac <= 1.0:
            raise InputError(f"--target-region {region!r}: expected top:F with 0 < F <= 1, "
                             "e.g. top:0.2")
        return "top", frac
    raise InputError(f"--target-region {region!r}: expected all, top:F (e.g. top:0.2) or a CSV "
                     "file of target candidates")


def region_mask(values: Tensor, goal: str | float, region: str | float | None = "all"
                ) -> Tensor:
    """Which candidates form the target region, from predictions in the goal's units.

    ``top:F`` keeps the ``ceil(F n)`` candidates best for the goal: the highest predictions for
    ``max``, the lowest for ``min``, the closest to the value for a number.

    Example:
        >>> region_mask(torch.tensor([1., 5., 3., 4.]), "max", "top:0.5")
        tensor([False,  True, False,  True])
    """
    kind, frac = parse_region(region)
    n = values.shape[-1]
    if kind == "all":
        return torch.ones(n, dtype=torch.bool, device=values.device)
    goal = parse_goal(goal)
    if goal == "max":
        key = -values
    elif goal == "min":
        key = values
    else:
        key = (values - float(goal)).abs()
    k = max(1, math.ceil(frac * n - 1e-9))
    idx = torch.argsort(key, stable=True)[:k]
    mask = torch.zeros(n, dtype=torch.bool, device=values.device)
    mask[idx] = True
    return mask


# ------------------------------------------------------------------------------ heads


def linear_readout(model: Any, params: dict[str, Tensor], inputs: Any,
                   features: Tensor | None = None) -> Tensor | None:
    """The model's own output layer as ``[w, b]`` with ``forward = features @ w + b``, or None.

    Found from the last two names of ``model.head_names()`` and checked on ``inputs``: a model
    whose output is not linear in its features gives None (the head then starts from zero).

    Example:
        >>> readout = linear_readout(model, params, support_inputs)   # (d + 1,)
    """
    names = getattr(model, "head_names", None)
    if names is None or not hasattr(model, "features"):
        return None
    names = list(names())
    if len(names) < 2:
        return None
    w, b = params[names[-2]], params[names[-1]]
    if w.numel() != w.shape[-1] and w.numel() != w.shape[0]:
        return None
    readout = torch.cat([w.reshape(-1), b.reshape(-1)]).detach()
    with torch.no_grad():
        phi = model.features(params, inputs) if features is None else features
        if phi.shape[-1] + 1 != readout.shape[0]:
            return None
        pred = model.forward(params, inputs)
        lin = _augment(phi.to(readout.dtype), True) @ readout
    scale = float(pred.abs().max()) + 1.0
    if not bool(torch.allclose(lin.to(pred.dtype), pred, rtol=1e-4, atol=1e-5 * scale)):
        return None
    return readout


def fit_feature_heads(support_features: Tensor, y: Tensor, *,
                      prior_mean: Tensor | None = None, **settings: Any) -> list[Any]:
    """Fit one Bayesian linear head per member on (M, K, d) or (K, d) features (float64).

    Example:
        >>> posts = fit_feature_heads(phi_support, y, prior_mean=readout)
    """
    from matmeta.bayes import fit_bayes_linear

    phi = support_features.detach().double()
    members = phi if phi.dim() == 3 else phi.unsqueeze(0)
    priors: list[Tensor | None]
    if prior_mean is None:
        priors = [None] * members.shape[0]
    else:
        pm = prior_mean.detach().double()
        priors = list(pm) if pm.dim() == 2 else [pm] * members.shape[0]
    with torch.no_grad():
        return [fit_bayes_linear(f, y.detach().double(), prior_mean=p, differentiate="none",
                                 **settings) for f, p in zip(members, priors, strict=True)]


def bootstrap_head_predictions(support_features: Tensor, y: Tensor, candidate_features: Tensor,
                               posterior: Any, heads: int = 32, seed: int = 0) -> Tensor:
    """Predictions (heads, n) of linear heads refitted to bootstrap resamples of the support.

    The disagreement baseline when there is no ensemble: each head keeps the hyperparameters of
    ``posterior`` (alpha, noise, intercept variance, prior mean) and is refitted to K rows drawn
    with replacement; the spread of their predictions is the disagreement.

    Example:
        >>> preds = bootstrap_head_predictions(phi_s, y_s, phi_c, post, heads=32)
        >>> preds.var(0)                  # disagreement per candidate
    """
    from matmeta.bayes import fit_bayes_linear

    phi = support_features.detach().double()
    y = y.detach().double()
    gen = torch.Generator().manual_seed(int(seed))
    k = phi.shape[0]
    out = []
    with torch.no_grad():
        for _ in range(int(heads)):
            idx = torch.randint(0, k, (k,), generator=gen)
            post = fit_bayes_linear(phi[idx], y[idx], alpha=posterior.alpha, beta=posterior.beta,
                                    bias=posterior.bias, bias_var=posterior.bias_var,
                                    prior_mean=posterior.prior_mean, differentiate="none")
            out.append(post.predict(candidate_features.detach().double(), noise=False)[0])
    return torch.stack(out)


# ------------------------------------------------------------------------------ suggestions


@dataclass
class Suggestions:
    """Ranked candidates for the next measurements.

    Attributes:
        order: candidate indices in the order to measure them (the batch first, then the rest
            by their single-step score).
        batch: how many of ``order`` form the chosen batch.
        gain: (batch,) the score of each batch member when it was chosen (for ``variance``: the
            expected reduction of the region's summed variance given the earlier picks).
        score: (n,) single-step score of every candidate (NaN for ``random``).
        mean, std: (n,) predictive mean and std (noise included) in the head's target space.
        region: (n,) bool, candidates in the target region (all False when the region is a
            separate list of targets).
        region_variance: summed predictive (latent) variance over the target region now.
        strategy, goal: what was asked.
        info: anything else worth reporting (hyperparameters, members, bootstrap heads).
    """

    order: list[int]
    batch: int
    gain: list[float]
    score: Tensor
    mean: Tensor
    std: Tensor
    region: Tensor
    region_variance: float
    strategy: str
    goal: str | float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> list[int]:
        """The batch: indices of the candidates to measure next."""
        return self.order[:self.batch]

    def table(self, candidates: pd.DataFrame | None = None,
              to_units: Callable[[Tensor], Tensor] | None = None,
              target: str = "target") -> pd.DataFrame:
        """A ranked DataFrame, one row per candidate, the batch first.

        Columns: the candidates' own columns, ``rank``, ``in_batch``, ``batch_gain``,
        ``score`` (the strategy's single-step score), ``share_of_region_variance`` (variance
        strategy), ``predicted_<target>``, ``std_<target>`` and the 90% interval
        ``lower90_<target>``, ``upper90_<target>`` in the target's units (``to_units`` maps the
        head's space to them; the std in units is the first-order propagation, the interval
        exact), ``in_target_region``.

        Example:
            >>> s.table(cands, to_units=transform.inverse, target="yield_strength_MPa")
        """
        n = self.mean.shape[0]
        if candidates is None:
            candidates = pd.DataFrame({"candidate": np.arange(n)})
        if len(candidates) != n:
            raise InputError(f"{len(candidates)} candidate rows for {n} suggestions")
        mean, std = self.mean.detach().double().cpu(), self.std.detach().double().cpu()
        conv = to_units or (lambda t: t)
        lo, hi, mid = conv(mean - _Z90 * std), conv(mean + _Z90 * std), conv(mean)
        with torch.enable_grad():
            m = mean.clone().requires_grad_()
            (slope,) = torch.autograd.grad(conv(m).sum(), m)
        std_units = slope.abs() * std
        gain = np.full(n, np.nan)
        gain[self.chosen] = self.gain
        region_var = self.region_variance
        share = (self.score.double().cpu().numpy() / region_var
                 if self.strategy == "variance" and region_var > 0 else np.full(n, np.nan))
        body = pd.DataFrame({
            "in_batch": np.isin(np.arange(n), self.chosen),
            "batch_gain": gain,
            "score": self.score.double().cpu().numpy(),
            "share_of_region_variance": share,
            f"predicted_{target}": mid.numpy(),
            f"std_{target}": std_units.detach().numpy(),
            f"lower90_{target}": torch.minimum(lo, hi).numpy(),
            f"upper90_{target}": torch.maximum(lo, hi).numpy(),
            "in_target_region": self.region.cpu().numpy(),
        })
        out = pd.concat([candidates.reset_index(drop=True), body], axis=1)
        out = out.iloc[self.order].reset_index(drop=True)
        out.insert(0, "rank", np.arange(1, n + 1))
        return out


def _mixture(posts: Sequence[Any], features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, total std (noise included) and latent variance of the members' heads, mixed."""
    means, lat = [], []
    for post, f in zip(posts, features, strict=True):
        m, s = post.predict(f, noise=False)
        means.append(m)
        lat.append(s * s)
    means_t, lat_t = torch.stack(means), torch.stack(lat)
    noise = torch.stack([torch.as_tensor(p.noise_var, dtype=lat_t.dtype) for p in posts])
    mean = means_t.mean(0)
    latent = lat_t.mean(0) + means_t.var(0, unbiased=False)
    return mean, (latent + noise.mean()).sqrt(), latent


def suggest_from_posterior(
    posteriors: Any,
    candidate_features: Tensor,
    *,
    strategy: str = "variance",
    goal: str | float = "max",
    region: str | float | None = "all",
    target_features: Tensor | None = None,
    batch: int = 1,
    member_predictions: Tensor | None = None,
    exclude: Sequence[int] = (),
    to_units: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
) -> Suggestions:
    """Rank candidates for the next measurement from fitted Bayesian linear head(s).

    Example:
        >>> post = fit_bayes_linear(phi_s, y_s, prior_mean=readout)
        >>> s = suggest_from_posterior(post, phi_c, goal="max", region="top:0.2", batch=3)
        >>> s.chosen                         # measure these three, in this order

    Args:
        posteriors: a :class:`~matmeta.bayes.LinearPosterior`, or one per ensemble member.
        candidate_features: (n, d), or (M, n, d) with one posterior per member.
        strategy: one of :data:`STRATEGIES`.
        goal: ``"max"``, ``"min"`` or a value in the target's units (``to_units`` maps
            predictions there); it chooses the ``top:F`` region.
        region: ``"all"`` or ``"top:F"`` over the candidates (ignored with ``target_features``).
        target_features: (m, d) or (M, m, d): a target region given as its own list.
        batch: number of suggestions chosen together (greedy for ``variance`` and ``maxstd``).
        member_predictions: (M', n) predictions of ensemble members or bootstrap heads, in the
            head's space: needed for ``disagreement``.
        exclude: candidate indices not to suggest (already measured).
        to_units: maps the head's target space to the goal's units (a target transform's
            inverse); identity when None.
        seed: for ``random``.

    Returns:
        :class:`Suggestions`.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    goal = parse_goal(goal)
    posts = list(posteriors) if isinstance(posteriors, (list, tuple)) else [posteriors]
    cand = candidate_features.detach().double()
    cand = cand if cand.dim() == 3 else cand.unsqueeze(0).expand(len(posts), *cand.shape)
    if cand.shape[0] != len(posts):
        raise InputError(f"{cand.shape[0]} members' features for {len(posts)} posteriors")
    n = cand.shape[1]
    if n == 0:
        raise InputError("no candidates to rank; expected at least one")
    batch = int(batch)
    if batch < 1:
        raise InputError(f"--batch {batch}: expected a positive number of suggestions")
    free = n - len(set(int(i) for i in exclude))
    if batch > free:
        raise InputError(f"--batch {batch}: only {free} candidate(s) left to choose from")
    bias = posts[0].bias
    cov = torch.stack([p.weight_cov.detach().double() for p in posts])
    noise = torch.stack([torch.as_tensor(p.noise_var, dtype=torch.float64).detach()
                         for p in posts])
    cand_aug = _augment(cand, bias)
    mean, std, latent = _mixture(posts, cand)
    conv = to_units or (lambda t: t)
    if target_features is not None:
        targ = target_features.detach().double()
        targ = targ if targ.dim() == 3 else targ.unsqueeze(0).expand(len(posts), *targ.shape)
        if targ.shape[1] == 0:
            raise InputError("the target region is empty; expected at least one target")
        in_region = torch.zeros(n, dtype=torch.bool)
        region_var = float(_mixture(posts, targ)[2].sum())
        targ_aug = _augment(targ, bias)
    else:
        in_region = region_mask(conv(mean), goal, region)
        region_var = float(latent[in_region].sum())
        targ_aug = cand_aug[:, in_region]

    taken = [int(i) for i in exclude]
    if strategy in ("variance", "maxstd"):
        if strategy == "variance":
            score = variance_reduction(cov, cand_aug, targ_aug, noise).mean(0)
        else:
            score = (((cand_aug @ cov) * cand_aug).sum(-1) + noise[:, None]).mean(0)
        chosen, gains = greedy_batch(cov, cand_aug, targ_aug, noise, batch,
                                     criterion=strategy, exclude=taken)
    elif strategy == "disagreement":
        if member_predictions is None or member_predictions.shape[0] < 2:
            raise InputError("--strategy disagreement needs the predictions of >= 2 ensemble "
                             "members (or bootstrap heads); got "
                             f"{0 if member_predictions is None else member_predictions.shape[0]}")
        if member_predictions.shape[-1] != n:
            raise InputError(f"member predictions for {member_predictions.shape[-1]} candidates, "
                             f"expected {n}")
        score = member_predictions.detach().double().var(0, unbiased=False)
        masked = score.clone()
        masked[taken] = -math.inf
        chosen = [int(i) for i in torch.argsort(masked, descending=True, stable=True)[:batch]]
        gains = [float(score[i]) for i in chosen]
    else:
        gen = torch.Generator().manual_seed(int(seed))
        perm = [int(i) for i in torch.randperm(n, generator=gen) if int(i) not in set(taken)]
        chosen = perm[:batch]
        gains = [math.nan] * batch
        score = torch.full((n,), math.nan, dtype=torch.float64)
        rest = [i for i in perm if i not in set(chosen)] + taken
        order = chosen + rest
    if strategy != "random":
        key = score.clone()
        key[chosen] = math.inf
        key[taken] = -math.inf
        order = [int(i) for i in torch.argsort(key, descending=True, stable=True)]
        order = chosen + [i for i in order if i not in set(chosen)]
    info = {"members": len(posts), "alpha": [float(p.alpha) for p in posts],
            "noise_std": [float(torch.as_tensor(p.noise_var).sqrt()) for p in posts]}
    return Suggestions(order, len(chosen), gains, score, mean, std, in_region, region_var,
                       strategy, goal, info)


# ------------------------------------------------------------------------------ from checkpoints


@dataclass
class SuggestModel:
    """What suggestions need from a checkpoint: the model, its parameters and target transform.

    Attributes:
        model: the :class:`~matmeta.models.FunctionalModel` (composition or structure model).
        params: its parameters; for an ensemble every tensor has a leading member dimension.
        members: ensemble members (0 for a single model).
        transform: the target transform (None: the model predicts in the target's units).
        kind: checkpoint kind (``"meta"``, ``"ensemble"`` or ``"model"``).
        settings: the meta-learning settings (adapting ensemble members needs them).
        extra: the checkpoint's extras (featurizer, data options, families).
        source: the checkpoint's path, for messages.
    """

    model: Any
    params: dict[str, Tensor]
    members: int
    transform: Any
    kind: str
    settings: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "<model>"

    def member_params(self) -> list[dict[str, Tensor]]:
        """One parameter dict per member (a single model: a list of one)."""
        if not self.members:
            return [self.params]
        return [{k: v[m] for k, v in self.params.items()} for m in range(self.members)]

    def option(self, *names: str) -> Any:
        """The first of ``names`` recorded with the checkpoint (its extras, the data spec of
        ``matmeta meta-train``, or its data options), or None."""
        opts = dict((self.extra.get("data") or {}).get("options") or {})
        spec = dict(self.extra.get("data_spec") or {})
        for name in names:
            for where_ in (self.extra, spec, opts):
                if where_.get(name) not in (None, ""):
                    return where_[name]
        return None

    @property
    def is_graph(self) -> bool:
        return self.model.name != "composition"


def load_suggest_model(path: Any, map_location: str | torch.device = "cpu") -> SuggestModel:
    """Read a meta checkpoint (``matmeta meta-train``), an ensemble, or a saved model.

    Example:
        >>> sm = load_suggest_model("meta.pt")
        >>> sm.members                     # 0: a single model

    Raises:
        CheckpointError: a missing file or a checkpoint of another kind.
        InputError: a model without features (a Bayesian head needs them).
    """
    from matmeta.checkpoint import load_checkpoint
    from matmeta.models._transforms import TargetTransform

    ckpt = load_checkpoint(path, kind=("meta", "ensemble", "model"), map_location=map_location)
    kind = ckpt["matmeta_kind"]
    settings = None
    if kind == "meta":
        from matmeta.meta import load_meta, model_params

        ck = load_meta(path, map_location=map_location)
        model, params, extra, members, settings = (ck.model, model_params(ck.meta_params),
                                                   ck.extra, 0, ck.settings)
    elif kind == "ensemble":
        from matmeta.meta._algorithms import model_params
        from matmeta.meta._ensemble import load_ensemble

        ens = load_ensemble(path, map_location=map_location)
        model, params, extra, members, settings = (ens.model, model_params(ens.meta_params),
                                                   ens.extra, ens.members, ens)
    else:
        from matmeta.models._registry import load_model

        model, params, extra = load_model(path, map_location=map_location)
        members = 0
    if not hasattr(model, "features"):
        raise InputError(f"{path}: a {model.name!r} model has no features for a Bayesian head; "
                         "suggest works with composition and structure models")
    tt = extra.get("target_transform")
    transform = TargetTransform.from_dict(tt) if tt else None
    return SuggestModel(model, dict(params), int(members), transform, kind, settings,
                        dict(extra), str(path))


def read_pool_table(sm: SuggestModel, table: Any, *, target: str | None = None,
                    composition_column: str | None = None,
                    structure_column: str | None = None, what: str = "candidates"
                    ) -> pd.DataFrame:
    """Read a support, candidate or target-region table for ``sm``'s model (validated).

    Compositions are read with :func:`~matmeta.io.alloys.read_alloy_table` (the model's process
    columns required), structures with :func:`~matmeta.io.read_structure_table`. ``target``
    names the measured column (support tables); None reads inputs only.

    Example:
        >>> lab = read_pool_table(sm, "lab.csv", target="yield_strength_MPa", what="support")

    Raises:
        InputError: an empty table ("no usable rows"), a missing column, a value that does not
            parse; one line naming file, row and column.
    """
    source = table if isinstance(table, pd.DataFrame) else str(table)
    if not isinstance(table, pd.DataFrame):
        from pathlib import Path

        if not Path(table).is_file():
            raise InputError(f"{table}: no such {what} file")
    if sm.is_graph:
        from matmeta.io import read_structure_table

        df = read_structure_table(table, structure_column=structure_column,
                                  target_column=target)
    else:
        from matmeta.io.alloys import read_alloy_table

        col = composition_column or sm.option("composition_column", "formula_column") or "formula"
        kinds = {s["column"]: s["kind"] for s in sm.model.process}
        raw = table if isinstance(table, pd.DataFrame) else _read_csv(table, what)
        if len(raw) == 0:
            raise InputError(f"{source}: no usable rows (only a header); expected at least one "
                             f"row of {what}")
        # from a file, so messages name the file and its line numbers
        df = read_alloy_table(table, col, target, process_columns=kinds)
        # keep the user's own columns (ids, notes) for the output: read_alloy_table keeps every
        # row, in order (it drops none without drop_missing_target), so they line up by position
        # (its "row" numbers are the file's, blank lines counted, not positions)
        for c in raw.columns:
            if c not in df.columns and c != col:
                df[c] = raw[c].to_numpy()
    if len(df) == 0:
        raise InputError(f"{source}: no usable rows; expected at least one row of {what}")
    if target is not None:
        y = np.asarray(df[target], dtype=float)
        if sm.transform is not None and sm.transform.log and (y <= 0).any():
            i = int(np.flatnonzero(y <= 0)[0])
            row = df["row"].iloc[i] if "row" in df.columns else df.index[i]
            raise InputError(f"{source}, row {row}, column {target!r}: {y[i]:g}; the model "
                             "learned this target in log space, expected a positive value")
    df.attrs["source"] = str(source)
    return df


def _read_csv(path: Any, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file; expected a CSV table of {what} with a header "
                         "row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable CSV table ({first})") from None


def model_inputs(sm: SuggestModel, df: pd.DataFrame, device: str | torch.device = "cpu") -> Any:
    """Encode a table from :func:`read_pool_table` as the model's inputs."""
    if sm.is_graph:
        from matmeta.graphs import FeaturizerSettings, build_graphs, collate

        feat = sm.extra.get("featurizer")
        settings = FeaturizerSettings.from_dict(feat) if feat else FeaturizerSettings()
        graphs = build_graphs(list(df["structure"]), settings, workers=1, progress=False)
        dtype = next(iter(sm.params.values())).dtype
        return collate(graphs, settings, dtype=dtype).to(device)
    from matmeta.models._composition import encode_compositions

    dtype = next(iter(sm.params.values())).dtype
    return encode_compositions(df, sm.model, dtype=dtype, device=device)


def member_features(sm: SuggestModel, inputs: Any) -> Tensor:
    """(M, n, d) features of every member (M = 1 for a single model), float64 on the CPU."""
    with torch.no_grad():
        return torch.stack([sm.model.features(p, inputs).double().cpu()
                            for p in sm.member_params()])


def suggest_next(
    sm: SuggestModel,
    support: pd.DataFrame,
    candidates: pd.DataFrame,
    target: str,
    *,
    strategy: str = "variance",
    goal: str | float = "max",
    region: str | None = "all",
    targets: pd.DataFrame | None = None,
    batch: int = 1,
    bootstrap_heads: int = 0,
    head: dict[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[Suggestions, pd.DataFrame]:
    """Rank candidate compositions/structures for the next measurement (the library call behind
    ``matmeta suggest candidates``).

    The model's features stay as meta-learned (or pretrained); a Bayesian linear head whose prior
    mean is the model's own output layer adapts to the support set by closed-form regression
    (hyperparameters by evidence), one head per ensemble member. Without support data it
    predicts what the model predicts.

    Example:
        >>> sm = load_suggest_model("meta.pt")
        >>> lab = read_pool_table(sm, "lab.csv", target="yield_strength_MPa", what="support")
        >>> cands = read_pool_table(sm, "candidates.csv")
        >>> s, ranked = suggest_next(sm, lab, cands, "yield_strength_MPa", goal="max",
        ...                          region="top:0.2", batch=3)

    Args:
        sm: from :func:`load_suggest_model`.
        support, candidates, targets: tables from :func:`read_pool_table` (``targets``: a target
            region given as its own list; None: ``region`` over the candidates).
        target: the measured column of ``support`` (units in its name).
        strategy: ``variance``, ``maxstd``, ``disagreement`` or ``random``.
        goal, region, batch, seed: see :func:`suggest_from_posterior`.
        bootstrap_heads: for ``disagreement`` with a single model: the number of heads refitted
            to bootstrap resamples of the support (0: refuse; an ensemble uses its members).
        head: settings of :func:`~matmeta.bayes.fit_bayes_linear` (e.g. ``alpha``, ``beta``,
            ``bias_var`` fixed from validation families instead of each support's evidence).
        device: where the model's features are computed.

    Returns:
        The :class:`Suggestions` and the ranked table (candidates' columns first).

    Raises:
        InputError: an unknown strategy, disagreement from a single model without bootstrap
            heads or an ensemble of one member, fewer than 2 support rows.
    """
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if strategy == "disagreement":
        if sm.members == 1 or (not sm.members and bootstrap_heads < 2):
            what = ("an ensemble of 1 member" if sm.members == 1 else
                    f"a single {sm.kind} model")
            raise InputError(f"{sm.source}: --strategy disagreement needs >= 2 ensemble members, "
                             f"and it holds {what}; use an ensemble checkpoint, "
                             "--bootstrap-heads 32, or --strategy variance")
    if len(support) < 2:
        raise InputError(f"{support.attrs.get('source', 'support')}: {len(support)} support "
                         "row(s); the Bayesian head needs at least 2 measurements")
    y_units = torch.tensor(np.array(support[target], dtype=float), dtype=torch.float64)
    y = sm.transform.forward(y_units) if sm.transform is not None else y_units
    x_sup = model_inputs(sm, support, device)
    x_cand = model_inputs(sm, candidates, device)
    phi_sup, phi_cand = member_features(sm, x_sup), member_features(sm, x_cand)
    readouts = [linear_readout(sm.model, p, x_sup, f.to(device))
                for p, f in zip(sm.member_params(), phi_sup, strict=True)]
    prior = (None if any(r is None for r in readouts)
             else torch.stack([r.double().cpu() for r in readouts]))
    posts = fit_feature_heads(phi_sup, y, prior_mean=prior, **(head or {}))
    phi_targ = None
    if targets is not None:
        phi_targ = member_features(sm, model_inputs(sm, targets, device))
    member_preds = None
    if strategy == "disagreement":
        if sm.members:
            member_preds = _ensemble_member_predictions(sm, x_sup, y, x_cand, device)
        else:
            member_preds = bootstrap_head_predictions(phi_sup[0], y, phi_cand[0], posts[0],
                                                      heads=bootstrap_heads, seed=seed)
    to_units = sm.transform.inverse if sm.transform is not None else None
    s = suggest_from_posterior(posts, phi_cand, strategy=strategy, goal=goal, region=region,
                               target_features=phi_targ, batch=batch,
                               member_predictions=member_preds, to_units=to_units, seed=seed)
    s.info.update({"readout_prior": prior is not None, "support_rows": len(support),
                   "kind": sm.kind, "bootstrap_heads": bootstrap_heads if not sm.members else 0})
    table = s.table(_shown_columns(candidates), to_units=to_units, target=target)
    # scores are variances in the head's standardised space: put them back in the target's
    # (log10) units and say so in the column name
    scale = float(sm.transform.std) ** 2 if sm.transform is not None else 1.0
    space = (f"log10_{target}" if sm.transform is not None and sm.transform.log else target)
    name = {"variance": "expected_variance_reduction", "maxstd": "predictive_variance",
            "disagreement": "member_variance", "random": "random_score"}[strategy]
    table["score"] *= scale
    table["batch_gain"] *= scale
    table = table.rename(columns={"score": f"{name}_{space}_sq",
                                  "batch_gain": f"batch_gain_{space}_sq"})
    return s, table


def _ensemble_member_predictions(sm: SuggestModel, x_sup: Any, y: Tensor, x_cand: Any,
                                 device: Any) -> Tensor:
    """The adapted members' predictions (M, n) through the ensemble contract."""
    from matmeta.meta._ensemble import adapt_ensemble, predict_members
    from matmeta.models._protocol import Samples

    dtype = next(iter(sm.params.values())).dtype
    ens = sm.settings
    support = Samples(x_sup, y.to(device=device, dtype=dtype))
    adapted = adapt_ensemble(sm.model, {k: v.to(device) for k, v in ens.meta_params.items()},
                             support, ens.settings)
    with torch.no_grad():
        return predict_members(sm.model, adapted, x_cand).detach().double().cpu()


def _shown_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The candidates' columns worth copying to the output (no parsed dicts or structures)."""
    drop = {"fractions", "structure", "duplicate_group", "n_measurements"}
    cols = [c for c in df.columns if c not in drop]
    out = df[cols].copy()
    if "structure" in df.columns and "id" not in out.columns:
        out.insert(0, "id", [getattr(s, "source", str(i)) for i, s in
                             enumerate(df["structure"])])
    return out.reset_index(drop=True)
