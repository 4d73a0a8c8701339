"""Validated tables -> families: where rows become tensors or graphs for meta-learning.

Meta-training, evaluation and the influence tools all call :func:`families_from_table`, so a
family means the same rows everywhere. Each model kind reads its own columns:

- ``jmak``: one family per isotherm (``dataset_id`` and ``temperature_K``), inputs ``time_s``,
  target ``fraction``; the isotherm's grade is its ``group`` so splits keep a grade together.
- ``arrhenius_jmak``: one family per grade, inputs ``(time_s, temperature_K)``, target ``fraction``.
- ``mlp``: feature columns -> target column, one family per value of the family column.
- ``cgcnn``: a ``structure`` column (:class:`matmeta.io.Crystal`) -> crystal graphs, target column.

Example:
    >>> df = pd.read_csv("tungsten_recrystallization.csv")
    >>> fams = families_from_table(df, "arrhenius_jmak", family="dataset_id")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from matmeta.errors import InputError, where
from matmeta.meta._tasks import Family, anion_set, element_system, most_electronegative_element

__all__ = ["families_from_table", "family_keys", "transform_families", "GROUPINGS"]

# grouping name -> function of a formula string
GROUPINGS = {
    "anion": most_electronegative_element,
    "anion_set": anion_set,
    "element_system": element_system,
}

PARAMETRIC = ("jmak", "arrhenius_jmak")


def family_keys(df: pd.DataFrame, by: str, formula_column: str = "formula",
                source: str = "<table>") -> pd.Series:
    """The family of each row: a grouping of the formula column, or a column's values.

    Example:
        >>> family_keys(df, "element_system")     # "Al-Co-Cr-Fe-Ni", ... from df["formula"]
        >>> family_keys(df, "dataset_id")         # a user column as is

    Args:
        by: ``"anion"`` (most electronegative element), ``"anion_set"``, ``"element_system"``,
            or the name of a column.
        formula_column: the column holding formulas for the three groupings.
    """
    if by in GROUPINGS:
        if formula_column not in df.columns:
            raise InputError(f"{source}: grouping {by!r} needs a {formula_column!r} column; "
                             f"columns are {', '.join(map(str, df.columns))}")
        fn = GROUPINGS[by]
        out = []
        for row, formula in zip(_row_numbers(df, source), df[formula_column], strict=True):
            try:
                out.append(fn(formula))
            except InputError as exc:
                raise InputError(f"{where(source, row, formula_column)}{exc}") from exc
        return pd.Series(out, index=df.index, name="family")
    if by not in df.columns:
        raise InputError(f"{source}: no family column {by!r}; expected one of "
                         f"{', '.join(map(str, df.columns))} or {', '.join(GROUPINGS)}")
    keys = df[by]
    if keys.isna().any():
        row = _row_numbers(df, source)[int(np.flatnonzero(keys.isna().to_numpy())[0])]
        raise InputError(f"{where(source, row, by)}empty family name")
    return keys.astype(str).rename("family")


def _row_numbers(df: pd.DataFrame, source: str) -> list:
    """The row number of each row as messages report it: the file line (header = line 1).

    pandas numbers the rows of a CSV file it read 0, 1, ... (a default RangeIndex), so the line
    is index + 2; any other index (the ``row`` line numbers the io readers attach, set as the
    index, or a user's own labels) is reported as is, and so is a table built in memory.
    """
    index = df.index
    from_csv = str(source).lower().removesuffix(".gz").endswith((".csv", ".tsv", ".txt"))
    if (from_csv and isinstance(index, pd.RangeIndex) and index.start == 0
            and index.step == 1):
        return [int(i) + 2 for i in index]
    return [i.item() if isinstance(i, np.generic) else i for i in index]


def _shown(value: Any) -> str:
    """A cell value for a message: ``nan``, ``-3``, ``'abc'`` (not ``np.float64(nan)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _numeric(df: pd.DataFrame, column: str, source: str, positive: bool = False) -> np.ndarray:
    if column not in df.columns:
        raise InputError(f"{source}: no column {column!r}; columns are "
                         f"{', '.join(map(str, df.columns))}")
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, copy=True)
    bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        expected = "a positive finite number" if positive else "a finite number"
        raise InputError(f"{where(source, _row_numbers(df, source)[i], column)}"
                         f"{_shown(df[column].iloc[i])}: expected {expected}")
    return values


def families_from_table(df: pd.DataFrame, model: str, *, family: str | None = None,
                        target: str | None = None, features: Sequence[str] | None = None,
                        formula_column: str = "formula", structure_column: str = "structure",
                        time_column: str = "time_s", temperature_column: str = "temperature_K",
                        fraction_column: str = "fraction", weight_column: str | None = None,
                        featurizer: Any = None, target_transform: Any = None,
                        dtype: torch.dtype = torch.float32, source: str | None = None,
                        allow_negative_time: bool = False) -> list[Family]:
    """Turn a validated table into :class:`Family` objects for ``model``.

    Example:
        >>> fams = families_from_table(df, "jmak", family="dataset_id")        # isotherms
        >>> fams = families_from_table(df, "cgcnn", family="family", target="bulk_modulus_GPa",
        ...                            featurizer=FeaturizerSettings(), target_transform=tt)

    Args:
        df: the table (one row per sample).
        model: registry name of the model kind (``jmak``, ``arrhenius_jmak``, ``mlp``,
            ``cgcnn``; other graph models take the ``cgcnn`` path).
        family: family column or grouping (see :func:`family_keys`); default ``dataset_id``
            for kinetics, ``family`` otherwise.
        target: target column (units in its name); kinetics use ``fraction_column``.
        features: MLP feature columns (default: every numeric column except target/family).
        weight_column: optional per-sample weights (non-negative).
        featurizer: :class:`~matmeta.graphs.FeaturizerSettings` for graph models.
        target_transform: a :class:`~matmeta.models._transforms.TargetTransform` applied to the
            target (graph and MLP models); None keeps the target as is.
        dtype: float dtype of the tensors.
        source: the file name used in error messages.
        allow_negative_time: kinetics: keep negative times (digitisation noise) as measured
            instead of refusing them.

    Returns:
        Families sorted by name, each with its rows' numbers as messages report them (file
        lines for a CSV read by pandas, see :func:`_row_numbers`).

    Raises:
        InputError: missing columns, non-numeric or non-finite values, an empty table.
    """
    source = source or str(df.attrs.get("source", "<table>"))
    if len(df) == 0:
        raise InputError(f"{source}: the table has no rows")
    if family is None:
        family = "dataset_id" if model in PARAMETRIC else "family"
    keys = family_keys(df, family, formula_column, source)
    weight = None
    if weight_column is not None:
        weight = _numeric(df, weight_column, source)
        if (weight < 0).any():
            i = int(np.flatnonzero(weight < 0)[0])
            raise InputError(f"{where(source, _row_numbers(df, source)[i], weight_column)}"
                             f"{weight[i]:g}: expected a weight >= 0")
    if model in PARAMETRIC:
        t = _numeric(df, time_column, source)
        if (t < 0).any() and not allow_negative_time:
            i = int(np.flatnonzero(t < 0)[0])
            raise InputError(f"{where(source, _row_numbers(df, source)[i], time_column)}"
                             f"{t[i]:g}: expected a time >= 0 in seconds")
        y = _numeric(df, target or fraction_column, source)
        if model == "jmak":
            temp = _numeric(df, temperature_column, source, positive=True)
            group_of = {}
            names = []
            for k, tk in zip(keys, temp, strict=True):
                name = f"{k}@{tk:g}K"
                group_of[name] = k
                names.append(name)
            keys = pd.Series(names, index=df.index)
            inputs = torch.as_tensor(t, dtype=dtype)
        else:
            temp = _numeric(df, temperature_column, source, positive=True)
            group_of = None
            inputs = torch.as_tensor(np.stack([t, temp], axis=1), dtype=dtype)
        y_t = torch.as_tensor(y, dtype=dtype)
        graphs = None
    else:
        group_of = None
        if target is None:
            raise InputError(f"{source}: model {model!r} needs a target column (--target)")
        y = _numeric(df, target, source, positive=bool(target_transform is not None
                                                       and getattr(target_transform, "log", 0)))
        y_t = torch.as_tensor(y, dtype=torch.float64)
        if target_transform is not None:
            y_t = target_transform.forward(y_t)
        y_t = y_t.to(dtype)
        if model == "mlp":
            if features is None:
                skip = {target, family, formula_column, structure_column}
                features = [c for c in df.columns if c not in skip
                            and pd.api.types.is_numeric_dtype(df[c])]
                if not features:
                    raise InputError(f"{source}: no numeric feature columns for the MLP; "
                                     "name them with --features")
            cols = [_numeric(df, c, source) for c in features]
            inputs = torch.as_tensor(np.stack(cols, axis=1), dtype=dtype)
            graphs = None
        else:
            if featurizer is None:
                from matmeta.graphs import FeaturizerSettings

                featurizer = FeaturizerSettings()
            graphs = _graphs(df, structure_column, featurizer, source)
            inputs = None
    weight_t = None if weight is None else torch.as_tensor(weight, dtype=dtype)
    out = []
    rows = np.arange(len(df))
    numbers = _row_numbers(df, source)
    key_arr = np.asarray(keys, dtype=object)
    for name in sorted(set(key_arr.tolist())):
        idx = rows[key_arr == name]
        sel = torch.as_tensor(idx, dtype=torch.long)
        fam_inputs = [graphs[i] for i in idx] if graphs is not None else inputs[sel]
        out.append(Family(
            name=str(name), inputs=fam_inputs, y=y_t[sel],
            weight=None if weight_t is None else weight_t[sel],
            group=None if group_of is None else str(group_of[name]),
            featurizer=featurizer, rows=[numbers[i] for i in idx],
        ))
    return out


def _graphs(df: pd.DataFrame, column: str, featurizer: Any, source: str) -> list:
    if column not in df.columns:
        raise InputError(f"{source}: graph models need a {column!r} column of structures")
    import matmeta.graphs as graphs_mod

    build = getattr(graphs_mod, "build_graphs", None)
    if build is not None:
        return list(build(list(df[column]), featurizer, workers=1, progress=False))
    return [graphs_mod.structure_to_graph(s, settings=featurizer) for s in df[column]]


def transform_families(families: list[Family], transform: Any) -> list[Family]:
    """Families with targets mapped by ``transform.forward`` (a fitted TargetTransform).

    Fit the transform on the meta-train families only, then map every split with it.

    Raises:
        InputError: a target the transform cannot map (a non-positive value under log10).
    """
    out = []
    for f in families:
        y = transform.forward(f.y.double())
        if not bool(torch.isfinite(y).all()):
            i = int(torch.nonzero(~torch.isfinite(y))[0])
            row = f.rows[i] if f.rows else i
            raise InputError(f"family {f.name!r}, row {row}: target {f.y[i].item():g} cannot be "
                             f"mapped by the {transform.kind} target transform")
        out.append(Family(f.name, f.inputs, y.to(f.y.dtype), f.weight, f.group, f.featurizer,
                          f.rows))
    return out
