"""Tables of structures with targets and families: CSV or JSON in, a validated DataFrame out.

The returned DataFrame is the contract with the graph and model stages:

* ``structure``: one :class:`~matmeta.io.Crystal` per row (whatever the file held: CIF text, a
  pymatgen dict, a path);
* the target column(s), float, finite, with the user's names (which carry the units, e.g.
  ``bulk_modulus_GPa``);
* ``family`` (str) when a family column was named;
* every other column as read.

``df.attrs`` records ``source``, ``target_columns``, ``family_column`` (the original name),
``id_column`` and ``dropped_rows`` (row labels dropped for bad targets, only when asked).
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from matmeta.errors import InputError, where
from matmeta.io._csv import csv_row_numbers
from matmeta.io._readers import Disorder, _check_disorder, _from_dataframe, _structure_column

__all__ = ["read_structure_table", "validate_targets"]


def _load_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}; "
                         "expected a .csv or .json table (optionally .gz)")
    try:
        if stem.endswith(".csv"):
            df = pd.read_csv(path)
            # Row labels are what a spreadsheet shows (header = row 1, blank rows counted),
            # as in the other readers.
            df.index = pd.Index(csv_row_numbers(path, len(df)))
            return df
        if stem.endswith(".json"):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as fh:
                obj = json.load(fh)
            if isinstance(obj, dict) and "data" in obj and isinstance(obj["data"], list):
                obj = obj["data"]
            if isinstance(obj, list):
                if not all(isinstance(r, dict) for r in obj):
                    raise InputError(f"{path}: JSON list items must be objects (one per row)")
                df = pd.DataFrame.from_records(obj)
                df.index = pd.RangeIndex(1, len(df) + 1)        # item 1 = the first object
                return df
            if isinstance(obj, dict):
                return pd.DataFrame(obj)
            raise InputError(f"{path}: JSON holds a {type(obj).__name__}; expected a list of rows")
    except InputError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read table ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    raise InputError(f"{path}: unrecognised table type; expected .csv or .json (optionally .gz)")


def validate_targets(df: pd.DataFrame, target_columns: list[str], source: str = "<table>",
                     drop_bad: bool = False) -> pd.DataFrame:
    """Convert target columns to float and refuse (or drop, when asked) NaN/inf/non-numbers.

    Example:
        >>> df = validate_targets(df, ["bulk_modulus_GPa"], "moduli.csv")

    Raises:
        InputError: a missing column, or a row whose target is not a finite number (naming the
            row and the value) unless ``drop_bad`` is true.
    """
    bad_rows: set = set()
    out = df.copy()
    for col in target_columns:
        if col not in out.columns:
            raise InputError(f"{source}: no target column {col!r}; columns are "
                             f"{list(map(str, out.columns))}")
        values = pd.to_numeric(out[col], errors="coerce").astype(np.float64)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            if not drop_bad:
                row = out.index[int(np.argmax(bad))]
                raw = out[col].loc[row]
                shown = repr(raw) if isinstance(raw, str) else str(raw)
                raise InputError(f"{where(source, row, col)}target {shown} is not a finite "
                                 f"number; expected a finite value ({int(bad.sum())} such "
                                 "row(s); `matmeta train --drop-invalid` or "
                                 "drop_bad_targets=True drops them)")
            bad_rows.update(out.index[bad])
        out[col] = values
    if bad_rows:
        dropped = [r for r in out.index if r in bad_rows]
        warnings.warn(f"{source}: dropped {len(dropped)} row(s) with a non-finite target "
                      f"(rows {dropped[:10]}{' ...' if len(dropped) > 10 else ''})",
                      UserWarning, stacklevel=3)
        out = out.drop(index=dropped)
        out.attrs["dropped_rows"] = dropped
    else:
        out.attrs["dropped_rows"] = []
    if len(out) == 0:
        raise InputError(f"{source}: no rows left; expected at least one row with a target")
    return out


def read_structure_table(source: str | os.PathLike | pd.DataFrame, *,
                         structure_column: str | None = None,
                         target_column: str | list[str] | None = None,
                         family_column: str | None = None,
                         id_column: str | None = None,
                         drop_bad_targets: bool = False,
                         disorder: Disorder = "refuse") -> pd.DataFrame:
    """Read a table of structures (+ targets, families) into a validated DataFrame.

    Example:
        >>> df = read_structure_table("../shared/datasets/structures/mp_binary_elasticity.json.gz",
        ...                           target_column="bulk_modulus_vrh", family_column="family")
        >>> df["structure"].iloc[0]          # a Crystal
        >>> df["bulk_modulus_vrh"].dtype      # float64 (the file stores strings)

    Args:
        source: a ``.csv`` / ``.json`` file (``.gz`` read transparently; JSON is a list of row
            objects) or a DataFrame.
        structure_column: column with CIF text, pymatgen dicts, file paths, ``Structure`` or
            ``Atoms`` objects (default: the first of ``structure``, ``cif``, ``atoms``, ...).
        target_column: column(s) to convert to float and check finite.
        family_column: column naming each row's family; copied to a ``family`` column (str).
        id_column: column naming each row (used in ``Crystal.source`` messages).
        drop_bad_targets: drop rows whose target is NaN/inf/not a number (with a warning giving
            the count, the labels in ``df.attrs['dropped_rows']``) instead of raising.
        disorder: ``"refuse"`` or ``"majority"`` (see :func:`read_structures`).

    Returns:
        The DataFrame described in this module's docstring.

    Raises:
        InputError: one line naming the file, row and column at fault.
    """
    _check_disorder(disorder)
    if isinstance(source, pd.DataFrame):
        name = str(source.attrs.get("source", "<DataFrame>"))
        df = source.copy()
    else:
        name = str(source)
        df = _load_table(Path(source))
    if len(df) == 0:
        raise InputError(f"{name}: empty table; expected at least one row")
    targets = [target_column] if isinstance(target_column, str) else list(target_column or [])
    if targets:
        df = validate_targets(df, targets, name, drop_bad_targets)
    dropped = df.attrs.get("dropped_rows", [])
    col = _structure_column(df, structure_column, name)
    if family_column is not None:
        if family_column not in df.columns:
            raise InputError(f"{name}: no family column {family_column!r}; columns are "
                             f"{list(map(str, df.columns))}")
        fam = df[family_column]
        missing = fam.isna().to_numpy()
        if missing.any():
            row = df.index[int(np.argmax(missing))]
            raise InputError(f"{where(name, row, family_column)}empty family; expected a name")
    if id_column is not None and id_column not in df.columns:
        raise InputError(f"{name}: no id column {id_column!r}; columns are "
                         f"{list(map(str, df.columns))}")
    if not isinstance(source, pd.DataFrame):
        df = _resolve_relative_paths(df, col, Path(source).parent)
    crystals = _from_dataframe(df, col, disorder, name)
    if id_column is not None:
        crystals = [c if _is_file_source(c.source, name) else c.with_source(
            f"{name}, row {row} ({ident})") for c, row, ident in
            zip(crystals, df.index, df[id_column], strict=True)]
    else:
        crystals = [c if _is_file_source(c.source, name) else c.with_source(f"{name}, row {row}")
                    for c, row in zip(crystals, df.index, strict=True)]
    out = df.drop(columns=[col])
    out.insert(0, "structure", pd.Series(crystals, index=df.index, dtype=object))
    if family_column is not None:
        family = df[family_column].astype(str)
        if family_column != "family":
            out = out.drop(columns=["family"], errors="ignore")
        out["family"] = family
    out.attrs = {"source": name, "target_columns": targets, "family_column": family_column,
                 "id_column": id_column, "dropped_rows": list(dropped)}
    return out


def _resolve_relative_paths(df: pd.DataFrame, col: str, folder: Path) -> pd.DataFrame:
    """Structure paths in a table file are relative to that file's folder (as users write them)."""
    def resolve(value):
        if isinstance(value, str) and "\n" not in value and len(value) < 1024 \
                and not Path(value).is_absolute() and not Path(value).exists() \
                and (folder / value).exists():
            return str(folder / value)
        return value

    values = df[col].map(resolve)
    if values.equals(df[col]):
        return df
    out = df.copy()
    out[col] = values
    return out


def _is_file_source(crystal_source: str, table: str) -> bool:
    # A row that pointed at a file keeps the file's name in messages.
    return not crystal_source.startswith(table)
