"""Screening candidates: rank predictions for a goal and name each candidate's nearest family.

The ranking rule is deliberately simple and stated in every output: candidates are ranked by
their predicted mean (highest first for ``max``, lowest first for ``min``, closest first for a
target value); the 90% interval is shown beside the mean, not folded into the rank. A scientist
who wants a cautious choice sorts the CSV by the interval's lower bound instead.

The nearest training family is measured by composition for composition and graph models: the
total-variation distance between the candidate's atomic fractions and the family's mean atomic
fractions, ``0.5 * sum_el |x_el - c_el|`` (0 = the same composition, 1 = no element in common;
0.2 means a fifth of the atoms would have to change). For MLP models on numeric features it is
the Euclidean distance in features standardised over the training rows.

Example:
    >>> index = build_family_index(table, spec, train_family_names)   # at meta-training time
    >>> names, dist = nearest_family(index, candidates_df)
    >>> order = rank_for_goal(mean, "max")                            # 1 = best
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from matmeta.errors import InputError
from matmeta.suggest._pool import parse_goal

__all__ = ["build_family_index", "nearest_family", "parse_goal", "rank_for_goal",
           "row_fractions", "screen"]


def row_fractions(df: pd.DataFrame) -> list[dict[str, float]]:
    """Atomic fractions of each row: its ``fractions`` column (alloy tables) or its structure.

    Example:
        >>> row_fractions(read_alloy_table("lab.csv", "formula"))[0]
        {'Al': 0.111, 'Co': 0.222, ...}
    """
    if "fractions" in df.columns:
        return [dict(f) for f in df["fractions"]]
    if "structure" in df.columns:
        from pymatgen.core import Element

        out = []
        for crystal in df["structure"]:
            z, counts = np.unique(np.asarray(crystal.numbers), return_counts=True)
            total = float(counts.sum())
            out.append({Element.from_Z(int(a)).symbol: float(c) / total
                        for a, c in zip(z, counts, strict=True)})
        return out
    raise InputError("rows hold neither compositions ('fractions') nor structures; cannot place "
                     "them among the training families")


def build_family_index(table: pd.DataFrame, spec: dict[str, Any],
                       families: Sequence[str]) -> dict[str, Any]:
    """What :func:`nearest_family` needs about the training families, as plain data.

    Example:
        >>> extra["family_index"] = build_family_index(data.table, data.spec, ["Co-Cr-Ni", ...])

    Args:
        table: the validated training table (from :func:`matmeta.meta.load_families`).
        spec: how it was read (``LoadedData.spec``).
        families: the names of the meta-training families to index.

    Returns:
        ``{"kind": "composition", "names", "elements", "centroids"}`` (mean atomic fractions per
        family) or ``{"kind": "features", "names", "columns", "centroids", "scale"}``.
    """
    from matmeta.meta._data import family_keys

    names = sorted(set(map(str, families)))
    if spec["kind"] in ("composition", "cgcnn") or spec.get("fraction_features"):
        # alloy tables carry their family (element system or chosen grouping) in `family`
        keys = (table["family"].astype(str) if spec["kind"] != "cgcnn"
                else family_keys(table, spec.get("family") or "family",
                                 spec.get("formula_column", "formula")))
        fractions = row_fractions(table)
        elements = sorted({el for f in fractions for el in f})
        col = {el: i for i, el in enumerate(elements)}
        mat = np.zeros((len(fractions), len(elements)))
        for i, f in enumerate(fractions):
            for el, x in f.items():
                mat[i, col[el]] = x
        keys_arr = keys.to_numpy()
        centroids = [mat[keys_arr == n].mean(0).tolist() for n in names if (keys_arr == n).any()]
        names = [n for n in names if (keys_arr == n).any()]
        return {"kind": "composition", "names": names, "elements": elements,
                "centroids": centroids}
    columns = list(spec.get("features") or [])
    keys = family_keys(table, spec.get("family") or "family",
                       spec.get("formula_column", "formula")).to_numpy()
    x = table[columns].to_numpy(dtype=float)
    scale = x.std(0)
    scale[~(scale > 0)] = 1.0
    names = [n for n in names if (keys == n).any()]
    return {"kind": "features", "names": names, "columns": columns,
            "centroids": [x[keys == n].mean(0).tolist() for n in names],
            "scale": scale.tolist()}


def nearest_family(index: dict[str, Any] | None, df: pd.DataFrame
                   ) -> tuple[list[str], np.ndarray]:
    """The nearest training family of each row and its distance (see the module docstring).

    Example:
        >>> names, dist = nearest_family(adapted.extra["family_index"], candidates)

    Returns:
        ``(names, distances)``; without an index (a checkpoint from before indexes were kept)
        every name is ``"unknown"`` and every distance NaN.
    """
    n = len(df)
    if not index or not index.get("names"):
        return ["unknown"] * n, np.full(n, math.nan)
    centroids = np.asarray(index["centroids"], dtype=float)
    if index["kind"] == "composition":
        col = {el: i for i, el in enumerate(index["elements"])}
        x = np.zeros((n, len(col)))
        outside = np.zeros(n)
        for i, f in enumerate(row_fractions(df)):
            for el, v in f.items():
                if el in col:
                    x[i, col[el]] = v
                else:
                    outside[i] += v
        dist = 0.5 * (np.abs(x[:, None, :] - centroids[None]).sum(-1) + outside[:, None])
    else:
        missing = [c for c in index["columns"] if c not in df.columns]
        if missing:
            return ["unknown"] * n, np.full(n, math.nan)
        scale = np.asarray(index["scale"], dtype=float)
        x = df[index["columns"]].to_numpy(dtype=float) / scale
        dist = np.sqrt(((x[:, None, :] - (centroids / scale)[None]) ** 2).sum(-1))
    best = dist.argmin(1)
    return [index["names"][j] for j in best], dist[np.arange(n), best]


def rank_for_goal(mean: Sequence[float] | np.ndarray, goal: str | float) -> np.ndarray:
    """Rank of each candidate for ``goal`` (1 = best), by the predicted mean; ties keep the input
    order.

    Example:
        >>> rank_for_goal([3.0, 5.0, 4.0], "max")
        array([3, 1, 2])
        >>> rank_for_goal([3.0, 5.0, 4.0], 4.2)
        array([3, 2, 1])
    """
    m = np.asarray(mean, dtype=float)
    goal = parse_goal(goal)
    if goal == "max":
        key = -m
    elif goal == "min":
        key = m
    else:
        key = np.abs(m - float(goal))
    order = np.argsort(key, kind="stable")
    rank = np.empty(len(m), dtype=int)
    rank[order] = np.arange(1, len(m) + 1)
    return rank


def screen(adapted: Any, candidates: Any, out: str | Any | None = None, *,
           goal: str | float | None = "max", uncertainty: bool = False,
           top: int = 30, workers: int = 1, cache_dir: str | Any | None = None,
           progress: bool = False, overwrite: bool = True) -> pd.DataFrame:
    """Predict and rank candidates with an adapted model; optionally write a result folder.

    Example:
        >>> ranked = screen(load_adapted("adapted/"), "candidates.csv", "screen/", goal="max")
        >>> ranked.sort_values("rank").head()

    Args:
        adapted: an :class:`~matmeta.workflows._adapt.AdaptedModel` (or its folder).
        candidates: what :meth:`AdaptedModel.predict` accepts.
        out: a folder to write (``ranked.csv``, ``ranked.png``, ``report.md``), published whole;
            None writes nothing. An existing folder is replaced only when it is empty or an
            earlier matmeta result holding only its own files (and ``overwrite``).
        goal: ``"max"``, ``"min"`` or a target value.
        uncertainty: require intervals (an ensemble or a Bayesian head); a single model is
            then an error.
        top: candidates shown in the plot and the report.
        workers, cache_dir, progress: graph models: how the candidates' graphs are built
            (see :meth:`AdaptedModel.predict`).
        overwrite: replace an earlier matmeta result at ``out``.

    Returns:
        The ranked table (input order; sort by ``rank``).

    Raises:
        InputError: uncertainty asked of a single model, no usable candidate rows, an ``out``
            that :func:`~matmeta.workflows._report.check_result_folder` refuses (checked
            before predicting).
    """
    from matmeta.workflows._adapt import AdaptedModel, load_adapted

    if out is not None:
        from matmeta.workflows._report import check_result_folder

        check_result_folder(out, overwrite)
    if not isinstance(adapted, AdaptedModel):
        adapted = load_adapted(adapted)
    if uncertainty and not adapted.has_uncertainty:
        raise InputError("uncertainty needs an ensemble (>= 2 members) or a Bayesian head: this "
                         "adapted model is a single model; meta-train with --members 5 (or "
                         "--algorithm bayes_linear) and adapt again")
    goal = parse_goal(goal)
    ranked = adapted.predict(candidates, goal=goal, workers=workers, cache_dir=cache_dir,
                             progress=progress)
    ranked = ranked.sort_values("rank", kind="stable").reset_index(drop=True)
    ranked.attrs["goal"] = goal
    if out is None:
        return ranked
    from matmeta.plots._workflows import plot_candidates
    from matmeta.workflows._report import Report, result_folder

    t = adapted.target
    with result_folder(out, overwrite=overwrite) as tmp:
        ranked.to_csv(tmp / "ranked.csv", index=False)
        plot_candidates(ranked, t, tmp / "ranked.png", top=top,
                        label_columns=[s["column"] for s in adapted.spec.get("process") or []])
        r = Report(f"Screening {len(ranked)} candidates for {t}")
        rule = {"max": "highest predicted mean first", "min": "lowest predicted mean first"}
        how = rule.get(goal) or f"predicted mean closest to {goal:g} first"
        kind = (f"an ensemble of {adapted.members}" if adapted.is_ensemble
                else f"a {adapted.settings.algorithm} head" if adapted.is_head
                else "a single model, no intervals")
        r.text(f"Goal: {goal} ({how}). Model: {adapted.model.name} adapted to "
               f"{len(adapted.support)} support rows ({kind}).")
        cols = [c for c in ranked.columns if c != f"{t}_meta_init"]
        r.table(f"Top {min(top, len(ranked))} candidates", ranked[cols].head(top))
        r.bullets([
            "Ranking uses the predicted mean; the 90% interval (ensembles) is shown beside it. "
            f"For a cautious choice, sort ranked.csv by {t}_low90 (max) or {t}_high90 (min).",
            "nearest_family: the meta-training family closest by composition (total-variation "
            "distance of atomic fractions, 0 = same composition, 1 = no element in common); "
            "for feature tables, Euclidean distance in standardised features. A large "
            "distance means the candidate lies outside what the model was trained on.",
        ])
        r.figure("Top candidates", "ranked.png")
        r.write(tmp / "report.md")
    return ranked
