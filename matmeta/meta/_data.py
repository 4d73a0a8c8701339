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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from matmeta.errors import InputError, where
from matmeta.io._csv import csv_row_numbers
from matmeta.meta._tasks import Family, anion_set, element_system, most_electronegative_element

__all__ = ["families_from_table", "family_keys", "transform_families", "GROUPINGS",
           "LoadedData", "load_families", "read_rows", "encode_rows", "MODEL_KINDS"]

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
    """The row number of each row as messages report it: the file's row (header = row 1).

    A table read by :func:`load_families` carries its rows as a spreadsheet numbers them
    (blank lines counted) as its index, reported as is, like any other index (the ``row``
    numbers the io readers attach, or a user's own labels); a CSV read by plain pandas (a
    default RangeIndex 0, 1, ...) is numbered index + 2, and a table built in memory by its
    index.
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


# ---------------------------------------------------------------------------------------------
# One loader for "a table file -> families + model kind + how the table was read"
# ---------------------------------------------------------------------------------------------

MODEL_KINDS = ("arrhenius_jmak", "cgcnn", "composition", "jmak", "mlp")


@dataclass
class LoadedData:
    """A table read for one model kind: its families, and how to read more rows the same way.

    Attributes:
        families: one :class:`Family` per family, sorted by name (targets in their units; fit a
            target transform on the meta-train families and map them with
            :func:`transform_families`).
        model: the registry name of the model kind (``"composition"``, ``"cgcnn"``, ...).
        table: the validated table (one row per sample, in the order of the file).
        spec: plain data saying how the table was read (kind, target, composition and process
            columns with their encoding, structure column, features, family grouping,
            featurizer). A checkpoint stores it, so a support or candidate file is later read and
            encoded exactly like the training data (:func:`read_rows`, :func:`encode_rows`).
        units: the target's name as shown in reports (units in it).
        notes: what was dropped or assumed while reading, one line each.
    """

    families: list[Family]
    model: str
    table: pd.DataFrame
    spec: dict[str, Any]
    units: str
    notes: list[str] = field(default_factory=list)


def load_families(path: str | os.PathLike, model: str, *, target: str | None = None,
                  family: str | None = None, composition_column: str | None = None,
                  process_columns: Sequence[str] | None = None,
                  structure_column: str | None = None, features: Sequence[str] | None = None,
                  formula_column: str = "formula", featurizer: Any = None,
                  dtype: torch.dtype = torch.float32, fraction_tolerance: float = 0.0,
                  allow_negative_time: bool = False, min_family_size: int = 1,
                  drop_missing_target: bool = True) -> LoadedData:
    """Read a table file into families for the model kind ``model``.

    ``matmeta meta-train`` and ``matmeta evaluate`` read their ``--data`` through this one
    function, so a family means the same rows in both, and the returned ``spec`` lets
    ``matmeta adapt`` read a support file the same way.

    Example:
        >>> data = load_families("mpea_alloys.csv", "composition",
        ...                      target="PROPERTY: YS (MPa)", composition_column="FORMULA",
        ...                      process_columns=["PROPERTY: Test temperature ($^\\\\circ$C)"])
        >>> len(data.families), data.spec["process"]      # element systems, process encoding
        >>> data = load_families("tungsten.csv", "jmak")   # one family per isotherm

    Args:
        path: a CSV file (``.json`` for structure tables and MLP tables; ``.gz`` allowed).
        model: ``composition`` (alloy compositions + process columns), ``cgcnn`` (or ``gnn``:
            structures), ``mlp`` (numeric feature columns; with ``composition_column``, the atomic
            fractions become the features), ``jmak`` or ``arrhenius_jmak`` (kinetics tables).
        target: the target column (units in its name); kinetics use ``fraction``.
        family: family column, or ``anion`` / ``anion_set`` / ``element_system``; default: the
            element system for compositions, ``dataset_id`` for kinetics, ``family`` otherwise.
        composition_column: the column of compositions (``composition``; ``mlp`` optional).
        process_columns: extra inputs of the composition model (numbers are standardised,
            anything else one-hot), e.g. a test temperature.
        structure_column: the structure column of graph tables (default: found by name).
        features: MLP feature columns (default: every numeric column but target and family).
        formula_column: formula column for the groupings of structure tables.
        featurizer: :class:`~matmeta.graphs.FeaturizerSettings` for graph models (default one).
        dtype: float dtype of the tensors.
        fraction_tolerance, allow_negative_time: kinetics reading options.
        min_family_size: drop families with fewer rows (said in ``notes``).
        drop_missing_target: alloy tables: drop rows with an empty target (counted in
            ``notes``; the MPEA table measures each property on part of its rows); otherwise
            they are an error naming the row, as they always are in structure tables.

    Returns:
        A :class:`LoadedData`.

    Raises:
        InputError: a missing file or column, a composition that does not parse, a non-numeric
            target, an unknown model kind; one line naming file, row and column.
    """
    kind = "cgcnn" if model == "gnn" else model
    if kind not in MODEL_KINDS:
        raise InputError(f"model kind {model!r}: expected one of {', '.join(MODEL_KINDS)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    source = str(path)
    notes: list[str] = []
    spec: dict[str, Any] = {"kind": kind, "target": target, "family": family,
                            "formula_column": formula_column}
    if kind in PARAMETRIC:
        from matmeta.io.kinetics import read_kinetics_table

        table = read_kinetics_table(path, fraction_tolerance=float(fraction_tolerance),
                                    allow_negative_time=bool(allow_negative_time),
                                    require_temperature=True)
        df = table.data.set_index("row")
        family = family or (table.group_columns[0] if table.group_columns else "dataset_id")
        spec.update(family=family, target="fraction")
        df = _drop_small(df, family, formula_column, source, min_family_size, notes)
        fams = families_from_table(df, kind, family=family, dtype=dtype, source=source,
                                   allow_negative_time=bool(allow_negative_time))
        return LoadedData(fams, kind, df, spec, "fraction", notes)
    if target is None:
        raise InputError(f"model {model!r} needs a target column (--target, units in its name)")
    if kind == "composition" or (kind == "mlp" and composition_column):
        from matmeta.io.alloys import read_alloy_table

        composition_column = composition_column or "composition"
        family = family or "element_system"
        # read_alloy_table's `family` is the element system, or a column of the file it names
        column = None if family in GROUPINGS else family
        df = read_alloy_table(path, composition_column, target, family_column=column,
                              process_columns=list(process_columns or ()),
                              drop_missing_target=drop_missing_target)
        report = df.attrs.get("report", {})
        dropped = int(report.get("dropped_missing_target", 0) or 0)
        if dropped:
            notes.append(f"{source}: {dropped} row(s) with an empty {target!r} dropped")
        if family in GROUPINGS and family != "element_system":
            df["family"] = family_keys(df, family, "composition", source).to_numpy()
        df = df.set_index("row", drop=False)
        df.index.name = None
        df = _drop_small(df, "family", formula_column, source, min_family_size, notes)
        spec.update(family=family, composition_column=composition_column,
                    process_columns=list(process_columns or ()))
        if kind == "composition":
            from matmeta.models._composition import fit_process_encoding

            # Fitted on every row read: process inputs only (never targets), so nothing about a
            # held-out family's property leaks into the encoding.
            spec["process"] = fit_process_encoding(df)
            inputs, y = encode_rows(df, spec, dtype=dtype)
            fams = _families(df, df["family"], inputs, y, None, dtype)
            return LoadedData(fams, kind, df, spec, target, notes)
        elements = sorted({e for fr in df["fractions"] for e in fr})
        features = list(features or [f"x_{e}" for e in elements])
        spec.update(features=features, fraction_features=True)
        inputs, y = encode_rows(df, spec, dtype=dtype)
        fams = _families(df, df["family"], inputs, y, None, dtype)
        return LoadedData(fams, kind, df, spec, target, notes)
    family = family or "family"
    spec["family"] = family
    if kind == "cgcnn":
        from matmeta.graphs import FeaturizerSettings
        from matmeta.io import read_structure_table

        featurizer = featurizer or FeaturizerSettings()
        # a structure row with a bad target is an error naming the row, as everywhere else
        df = read_structure_table(path, structure_column=structure_column, target_column=target)
        spec.update(structure_column=structure_column, featurizer=featurizer.to_dict())
        df = _drop_small(df, family, formula_column, source, min_family_size, notes)
        fams = families_from_table(df, "cgcnn", family=family, target=target,
                                   formula_column=formula_column, featurizer=featurizer,
                                   dtype=dtype, source=source)
        return LoadedData(fams, kind, df, spec, target, notes)
    df = _read_plain_table(path)
    df = _drop_small(df, family, formula_column, source, min_family_size, notes)
    if features is None:
        skip = {target, family, formula_column}
        features = [c for c in df.columns if c not in skip
                    and pd.api.types.is_numeric_dtype(df[c])]
    spec["features"] = list(features)
    fams = families_from_table(df, "mlp", family=family, target=target, features=features,
                               formula_column=formula_column, dtype=dtype, source=source)
    return LoadedData(fams, kind, df, spec, target, notes)


def _read_plain_table(path: Path) -> pd.DataFrame:
    name = path.name.lower().removesuffix(".gz")
    try:
        df = pd.read_json(path) if name.endswith(".json") else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types on bad files
        raise InputError(f"{path}: cannot read the table ({' '.join(str(exc).split())[:120]})"
                         ) from exc
    if not name.endswith(".json"):
        # rows as a spreadsheet numbers them (blank lines, which pandas skips, counted)
        df.index = pd.Index(csv_row_numbers(path, len(df)))
    df.attrs["source"] = str(path)
    return df


def _drop_small(df: pd.DataFrame, family: str, formula_column: str, source: str,
                min_size: int, notes: list[str]) -> pd.DataFrame:
    if min_size <= 1:
        return df
    keys = family_keys(df, family, formula_column, source)
    counts = keys.value_counts()
    keep = (keys.map(counts) >= min_size).to_numpy()
    if not keep.any():
        raise InputError(f"min_family_size {min_size}: no family is that large (largest "
                         f"{counts.index[0]!r} with {int(counts.iloc[0])} rows)")
    notes.append(f"min_family_size {min_size}: kept {int((counts >= min_size).sum())} of "
                 f"{len(counts)} families ({int(keep.sum())} of {len(df)} rows)")
    return df[keep]


def _families(df: pd.DataFrame, keys: Any, inputs: torch.Tensor, y: torch.Tensor,
              weight: torch.Tensor | None, dtype: torch.dtype) -> list[Family]:
    rows = list(df.index)
    key_arr = np.asarray(list(keys), dtype=object)
    out = []
    for name in sorted(set(key_arr.tolist())):
        idx = np.flatnonzero(key_arr == name)
        sel = torch.as_tensor(idx, dtype=torch.long)
        out.append(Family(str(name), inputs[sel], y[sel].to(dtype),
                          None if weight is None else weight[sel], rows=[
                              r.item() if isinstance(r, np.generic) else r
                              for r in (rows[i] for i in idx)]))
    return out


def _insert_ids(df: pd.DataFrame, default: Any) -> None:
    """An ``id`` column first: the table's own ``id`` column where it has one (as text), else
    ``default`` (the composition as written, the structure's source)."""
    df.insert(0, "id", df.pop("id").astype(str) if "id" in df.columns else default)


def read_rows(source: str | os.PathLike | pd.DataFrame, spec: dict[str, Any], *,
              with_target: bool = True, what: str = "table") -> pd.DataFrame:
    """Read a support or candidate file the way the training table was read (``spec``).

    Example:
        >>> ck = load_meta("meta.pt")
        >>> support = read_rows("lab.csv", ck.extra["data_spec"])            # with the target
        >>> cands = read_rows("candidates.csv", spec, with_target=False)     # compositions only

    Args:
        source: a CSV/JSON file, a folder of structure files or a list of files (graph models,
            candidates only), or a DataFrame.
        spec: ``LoadedData.spec`` as stored in a checkpoint.
        with_target: require the target column (support sets); candidates need none.
        what: how the file is called in messages (``"--support"``).

    Returns:
        The validated table, with an ``id`` column naming each row (the composition as written,
        the structure's file, or the id column of the file); ``attrs["table_columns"]`` names
        the table's other columns (labels, phases, notes), kept row for row.

    Raises:
        InputError: a missing target or input column, an unparsable composition or structure,
            no usable rows; one line naming file, row and column.
    """
    kind = spec["kind"]
    target = spec.get("target") if with_target else None
    label = source if isinstance(source, pd.DataFrame) else Path(source)
    name = "<DataFrame>" if isinstance(source, pd.DataFrame) else str(source)
    if not isinstance(source, pd.DataFrame) and not Path(source).exists():
        raise InputError(f"{what} {name}: no such file or folder")
    if kind in PARAMETRIC:
        raise InputError(f"{kind} models adapt to kinetics data with `matmeta jmak fit --prior`, "
                         "not through candidate tables")
    if with_target and not target:
        raise InputError(f"{what} {name}: the model records no target column")
    if kind == "composition" or spec.get("fraction_features"):
        from matmeta.io.alloys import read_alloy_table

        col = spec.get("composition_column") or "composition"
        table = label if isinstance(label, pd.DataFrame) else _plain_or_error(label, what)
        _need_columns(table, [col] + ([target] if target else [])
                      + list(spec.get("process_columns") or []), name, what)
        process = ({s["column"]: s["kind"] for s in spec.get("process") or []}
                   or list(spec.get("process_columns") or []))
        df = read_alloy_table(label, col, target, process_columns=process)
        _insert_ids(df, df["composition"].astype(str))
        # the table's other columns (a label, a phase) ride along, row for row: the alloy
        # reader keeps every row in order
        other = [c for c in table.columns if c not in {col, target, *process, *df.columns}]
        if len(table) == len(df):
            for c in other:
                df[c] = table[c].to_numpy()
            df.attrs["table_columns"] = other
        return df
    if kind == "cgcnn":
        from matmeta.io import read_structure_table, read_structures

        path = None if isinstance(label, pd.DataFrame) else Path(label)
        if path is not None and (path.is_dir() or path.suffix.lower() not in (
                ".csv", ".json", ".gz")):
            if with_target:
                raise InputError(f"{what} {name}: a support set needs targets; give a table "
                                 f"with a structure column and a {spec.get('target')!r} column")
            crystals = read_structures(path)
            df = pd.DataFrame({"id": [c.source for c in crystals], "structure": crystals})
            df.attrs["source"] = name
            return df
        if path is not None:
            _need_columns(_plain_or_error(path, what), [target] if target else [], name, what)
        df = read_structure_table(label, structure_column=spec.get("structure_column"),
                                  target_column=target)
        other = [c for c in df.columns if c not in {"id", "structure", target,
                                                     spec.get("structure_column")}]
        _insert_ids(df, [getattr(c, "source", str(i)) for i, c in enumerate(df["structure"])])
        df.attrs["table_columns"] = other
        return df
    df = label.copy() if isinstance(label, pd.DataFrame) else _read_plain_table(label)
    _need_columns(df, list(spec.get("features") or []) + ([target] if target else []), name,
                  what)
    if len(df) == 0:
        raise InputError(f"{what} {name}: no rows")
    # a file's rows keep their numbers (the index _read_plain_table set); a DataFrame's rows are
    # numbered by position
    rows = _row_numbers(df.reset_index(drop=True) if isinstance(label, pd.DataFrame) else df,
                        name)
    other = [c for c in df.columns if c not in {"id", "row", target,
                                                 *(spec.get("features") or [])}]
    df.insert(0, "id", [str(r) for r in rows] if "id" not in df.columns
              else df.pop("id").astype(str))
    if "row" not in df.columns:
        df.insert(1, "row", rows)
    df.attrs["table_columns"] = other
    return df


def _plain_or_error(path: Path, what: str) -> pd.DataFrame:
    try:
        return _read_plain_table(path)
    except InputError as exc:
        raise InputError(f"{what} {exc}") from exc


def _need_columns(df: pd.DataFrame, columns: Sequence[str], name: str, what: str) -> None:
    for col in columns:
        if col not in df.columns:
            raise InputError(f"{what} {name}: no column {col!r}, which the model was trained "
                             f"with; columns are {', '.join(map(str, df.columns))}")


def encode_rows(df: pd.DataFrame, spec: dict[str, Any], model: Any = None, *,
                with_target: bool = True, dtype: torch.dtype = torch.float32,
                workers: int = 1, cache_dir: str | os.PathLike | None = None,
                progress: bool = False) -> tuple[Any, torch.Tensor | None]:
    """Model inputs and targets (in their units) for rows read by :func:`read_rows`.

    Example:
        >>> inputs, y = encode_rows(support_df, spec, model)
        >>> model.forward(params, inputs)

    Args:
        df: the table.
        spec: how the training table was read.
        model: the model; for composition models its element vocabulary makes an element never
            seen in training warn (its learned embedding is zero; the element descriptors still
            describe it).
        with_target: also return the target column as a float64 tensor (else None).
        dtype: float dtype of the inputs.
        workers, cache_dir, progress: graph models: processes building the graphs, a graph
            cache folder, a progress bar (see :func:`~matmeta.graphs.build_graphs`).

    Returns:
        ``(inputs, y)``: a tensor (composition models: packed, see
        :func:`~matmeta.models._composition.pack_composition_inputs`; MLP: features) or a
        :class:`~matmeta.graphs.GraphBatch`, and the targets.
    """
    kind = spec["kind"]
    target = spec.get("target")
    y = None
    if with_target:
        # np.array copies: pandas may hand out read-only views, which torch warns about
        y = torch.as_tensor(np.array(pd.to_numeric(df[target]), dtype=float),
                            dtype=torch.float64)
    if kind == "composition":
        from matmeta.models._composition import encode_compositions, pack_composition_inputs

        elements = getattr(model, "elements", None)
        enc = encode_compositions(df, process=spec.get("process") or [], elements=elements,
                                  dtype=dtype)
        return pack_composition_inputs(enc), y
    if spec.get("fraction_features"):
        known = {c[2:] for c in spec["features"]}
        unseen = sorted({el for fr in df["fractions"] for el in fr} - known)
        if unseen:
            import warnings

            # the MLP has no input for them: say so rather than drop their fraction silently
            warnings.warn(f"{df.attrs.get('report', {}).get('source', '<table>')}: element(s) "
                          f"{', '.join(unseen)} have no fraction feature in this model (never "
                          "seen in training); their atomic fraction is left out of its inputs",
                          UserWarning, stacklevel=2)
        cols = [[float(fr.get(c[2:], 0.0)) for fr in df["fractions"]] for c in spec["features"]]
        return torch.as_tensor(np.array(cols, dtype=float).T, dtype=dtype), y
    if kind == "cgcnn":
        from matmeta.graphs import FeaturizerSettings, build_graphs, collate

        settings = FeaturizerSettings.from_dict(spec["featurizer"])
        graphs = build_graphs(list(df["structure"]), settings, workers=workers,
                              cache_dir=cache_dir, progress=progress)
        return collate(graphs, settings, dtype=dtype), y
    source = str(df.attrs.get("source", "<table>"))
    cols = [_numeric(df, c, source) for c in spec["features"]]
    return torch.as_tensor(np.stack(cols, axis=1), dtype=dtype), y
