"""Alloy tables: compositions parsed with pymatgen, element-system families, validated targets.

Lab data on alloys is a table of compositions (``Al0.5CoCrFeNi``, ``Hf20Nb20Ta20Ti20Zr20``),
process settings (test temperature, test type, processing route) and a measured property. This
module turns such a file into a validated :class:`pandas.DataFrame`; the tensors a model eats are
built from that frame later (:func:`matmeta.models.encode_compositions`), never here.

Example:
    >>> df = read_alloy_table("mpea_alloys.csv", "FORMULA", "PROPERTY: YS (MPa)",
    ...                       process_columns=[MPEA_COLUMNS["test_temperature_C"]],
    ...                       drop_missing_target=True)
    >>> df[["composition", "family", "PROPERTY: YS (MPa)"]].head()
    >>> df.attrs["report"]["dropped_missing_target"]      # how many rows had no target

Row numbers in error messages are rows as a spreadsheet shows them (the header is row 1, blank
lines count), so ``mpea_alloys.csv, row 7`` is the seventh line a text editor shows unless a
quoted cell spans lines. For a DataFrame passed in directly, the row is its index label.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from matmeta.errors import InputError, where
from matmeta.io._csv import csv_row_numbers

__all__ = ["MPEA_COLUMNS", "element_system", "parse_composition", "read_alloy_table"]

# Column names of ../shared/datasets/alloys/mpea_alloys.csv (Borg et al. 2020), by what they hold.
MPEA_COLUMNS: dict[str, str] = {
    "composition": "FORMULA",
    "yield_strength_MPa": "PROPERTY: YS (MPa)",
    "ultimate_strength_MPa": "PROPERTY: UTS (MPa)",
    "hardness_HV": "PROPERTY: HV",
    "test_temperature_C": "PROPERTY: Test temperature ($^\\circ$C)",
    "test_type": "PROPERTY: Type of test",
    "processing": "PROPERTY: Processing method",
    "microstructure": "PROPERTY: BCC/FCC/other",
}

_EXAMPLE = "expected a composition such as Al0.5CoCrFeNi or Hf20Nb20Ta20Ti20Zr20"
# A parenthesised group with an optional amount: "(CoCrFeNi)90".
_GROUP = re.compile(r"\(([^()]*)\)\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?")
_MISSING_CATEGORY = "missing"
_KINDS = ("numeric", "category")
_DUPLICATES = ("keep", "mean", "error")
# Fractions equal to this many decimals count as the same composition (Al0.5CoCrFeNi written as
# Al10Co20Cr20Fe20Ni20 differs in the last bits of its floats).
_FRACTION_DECIMALS = 6


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:120]


def _pymatgen_composition(text: str, prefix: str) -> Any:
    from pymatgen.core import Composition

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Composition(text)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises several types for bad formulas
        reason = _one_line(exc).rstrip(".!")
        raise InputError(f"{prefix}{text!r} does not parse ({reason}); {_EXAMPLE}") from exc


def _expand_alloy_groups(text: str, prefix: str) -> str:
    """Rewrite ``(CoCrFeNi)90Al10`` as ``Co22.5Cr22.5Fe22.5Ni22.5Al10`` (innermost group first)."""
    while True:
        m = _GROUP.search(text)
        if m is None:
            return text
        inner = _pymatgen_composition(m.group(1), prefix) if m.group(1).strip() else None
        if inner is None or inner.num_atoms <= 0:
            raise InputError(f"{prefix}empty group '()' in {text!r}; {_EXAMPLE}")
        amount = float(m.group(2)) if m.group(2) else 1.0
        expanded = "".join(f"{el}{amt * amount:.12g}"
                           for el, amt in inner.fractional_composition.items())
        text = text[:m.start()] + expanded + text[m.end():]


def parse_composition(text: Any, *, groups: str = "alloy", source: object | None = None,
                      row: int | None = None, column: str | None = None) -> dict[str, float]:
    """Parse a composition into atomic fractions that sum to 1, keyed by element symbol (sorted).

    Example:
        >>> parse_composition("Al0.5CoCrFeNi")
        {'Al': 0.111..., 'Co': 0.222..., 'Cr': 0.222..., 'Fe': 0.222..., 'Ni': 0.222...}
        >>> parse_composition("(CoCrFeNi)90Al10")           # alloy convention: 90 at.% CoCrFeNi
        {'Al': 0.1, 'Co': 0.225, 'Cr': 0.225, 'Fe': 0.225, 'Ni': 0.225}

    Args:
        text: the composition as written (pymatgen formula syntax; spaces allowed, so the MPEA
            table's ``Al0.25 Co1 Fe1 Ni1`` parses).
        groups: how to read a parenthesised group with an amount. ``"alloy"`` (default, the
            metallurgists' convention): ``(CoCrFeNi)90Al10`` is 90 parts of equiatomic CoCrFeNi
            and 10 parts Al. ``"chemical"`` (pymatgen's, as in ``Ca3(PO4)2``): the amount
            multiplies every element in the group, so the same text means Co90Cr90Fe90Ni90Al10.
        source, row, column: where the text came from, for the error message.

    Returns:
        ``{symbol: atomic fraction}`` with positive fractions summing to 1, sorted by symbol.

    Raises:
        InputError: one line naming file, row and column, quoting the text: an empty cell, text
            pymatgen cannot parse, an unknown element symbol, or no positive amount.
    """
    prefix = where(source, row, column)
    if groups not in ("alloy", "chemical"):
        raise InputError(f"groups={groups!r}: expected 'alloy' or 'chemical'")
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        raise InputError(f"{prefix}empty cell; {_EXAMPLE}")
    if not isinstance(text, str):
        raise InputError(f"{prefix}{text!r} is a {type(text).__name__}; {_EXAMPLE}")
    raw = text.strip()
    formula = _expand_alloy_groups(raw, prefix) if groups == "alloy" else raw
    comp = _pymatgen_composition(formula, prefix)
    from pymatgen.core import Element

    unknown = [str(sp) for sp in comp.elements if not isinstance(sp, Element)]
    if unknown:
        symbol = re.sub(r"[0-9+-]+$", "", unknown[0])
        raise InputError(f"{prefix}{raw!r} holds {symbol!r}, which is not an element symbol; "
                         f"{_EXAMPLE}")
    amounts = {el.symbol: float(amt) for el, amt in comp.items() if float(amt) > 0}
    total = sum(amounts.values())
    if not amounts or not math.isfinite(total) or total <= 0:
        raise InputError(f"{prefix}{raw!r} has no element with a positive amount; {_EXAMPLE}")
    return {el: amounts[el] / total for el in sorted(amounts)}


def element_system(fractions: Mapping[str, float] | str) -> str:
    """The element system of a composition: its elements sorted and joined by '-'.

    Example:
        >>> element_system("Al0.5CoCrFeNi")
        'Al-Co-Cr-Fe-Ni'
        >>> element_system({"Zr": 0.2, "Hf": 0.8})
        'Hf-Zr'
    """
    if isinstance(fractions, str):
        fractions = parse_composition(fractions)
    return "-".join(sorted(el for el, f in fractions.items() if f > 0))


def _read_frame(path: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, str, np.ndarray]:
    if isinstance(path, pd.DataFrame):
        return path.copy(), "<DataFrame>", np.asarray(list(path.index), dtype=object)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {'is a folder' if p.is_dir() else 'no such file'}; "
                         "expected a CSV table of alloy compositions")
    try:
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{p}: empty file; expected a CSV table with a header row") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not a readable CSV table ({_one_line(exc)})") from exc
    # rows as a spreadsheet numbers them (header row 1; blank rows, which pandas skips, count)
    return df, str(p), csv_row_numbers(p, len(df)).astype(object)


def _require_columns(df: pd.DataFrame, source: str, columns: Iterable[str]) -> None:
    for col in columns:
        if col not in df.columns:
            raise InputError(f"{source}: no column {col!r}; columns are "
                             f"{[str(c) for c in df.columns]}")


def _numeric(df: pd.DataFrame, col: str, source: str, rows: np.ndarray) -> pd.Series:
    """Column as float; text that is not a number is an error naming its row."""
    values = pd.to_numeric(df[col], errors="coerce").astype(float)
    bad = values.isna() & df[col].notna() & (df[col].astype(str).str.strip() != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{where(source, rows[i], col)}{_one_line(df[col].iloc[i])!r} is not a "
                         f"number ({int(bad.sum())} such row(s)); expected a number")
    inf = ~np.isfinite(values.to_numpy()) & values.notna().to_numpy()
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise InputError(f"{where(source, rows[i], col)}{values.iloc[i]} is infinite; expected a "
                         "finite number")
    return values


def _process_kinds(df: pd.DataFrame, process_columns: Iterable[str] | Mapping[str, str] | None,
                   source: str) -> dict[str, str]:
    if process_columns is None:
        return {}
    if isinstance(process_columns, str):
        process_columns = [process_columns]
    if isinstance(process_columns, Mapping):
        kinds = {str(k): str(v) for k, v in process_columns.items()}
    else:
        cols = [str(c) for c in process_columns]
        _require_columns(df, source, cols)
        # Numbers are numeric inputs (temperature); anything else is a category (C/T, CAST...).
        kinds = {c: "numeric" if pd.api.types.is_numeric_dtype(df[c]) else "category"
                 for c in cols}
    _require_columns(df, source, kinds)
    for col, kind in kinds.items():
        if kind not in _KINDS:
            raise InputError(f"process column {col!r}: kind {kind!r}; expected 'numeric' or "
                             "'category'")
    return kinds


def read_alloy_table(
    path: str | os.PathLike | pd.DataFrame,
    composition_column: str = "FORMULA",
    target_column: str | None = None,
    family_column: str | None = None,
    process_columns: Iterable[str] | Mapping[str, str] | None = (),
    *,
    drop_missing_target: bool = False,
    duplicates: str = "keep",
    groups: str = "alloy",
) -> pd.DataFrame:
    """Read and validate a table of alloy compositions, one measured target, and process columns.

    Example:
        >>> df = read_alloy_table("mpea_alloys.csv", "FORMULA", "PROPERTY: YS (MPa)",
        ...                       process_columns=["PROPERTY: Test temperature ($^\\circ$C)",
        ...                                        "PROPERTY: Type of test"],
        ...                       drop_missing_target=True)
        >>> df.attrs["report"]          # rows read, dropped, duplicates, process column kinds

    Args:
        path: a CSV file, or a DataFrame already in memory.
        composition_column: the column of compositions (parsed by :func:`parse_composition`).
        target_column: the measured property (numbers, in the units of the column, e.g. MPa);
            ``None`` reads compositions only (candidates to predict).
        family_column: a column naming each row's family; default: the element system
            (``"Al-Co-Cr-Fe-Ni"``).
        process_columns: extra inputs. A list (numbers become ``"numeric"``, anything else
            ``"category"``) or a mapping ``{column: "numeric" | "category"}``. A missing number
            in a used row is an error; a missing category becomes the category ``"missing"``
            (counted in the report).
        drop_missing_target: drop rows whose target is empty (the count is reported); by default
            such a row is an error naming it.
        duplicates: rows with the same composition (to 6 decimals in each fraction), family and
            process values. ``"keep"`` (default) keeps every row and numbers each group in
            ``duplicate_group``; ``"mean"`` averages the target of each group into one row
            (``n_measurements`` says how many); ``"error"`` refuses them.
        groups: how parenthesised groups read (see :func:`parse_composition`).

    Returns:
        A DataFrame with columns ``row`` (line in the file), ``composition`` (text as written),
        ``fractions`` (dict symbol -> atomic fraction), ``elements`` (element system),
        ``family``, ``n_elements``, the target column (float), the process columns,
        ``n_measurements`` and ``duplicate_group``. ``df.attrs["report"]`` holds ``source``,
        ``rows_read``, ``rows_used``, ``dropped_missing_target``, ``duplicate_rows`` (rows that
        repeat an earlier row's key), ``duplicates`` (the policy), ``missing_category``
        ({column: count}), ``process_kinds`` ({column: kind}), ``target_column``.

    Raises:
        InputError: a missing file or column, a composition that does not parse, a target that
            is not a number or is empty (unless dropped), a missing process number, duplicates
            under ``duplicates="error"``, or no rows left; one line naming file, row and column.
    """
    if duplicates not in _DUPLICATES:
        raise InputError(f"duplicates={duplicates!r}: expected one of {', '.join(_DUPLICATES)}")
    df, source, rows = _read_frame(path)
    _require_columns(df, source, [composition_column]
                     + ([target_column] if target_column is not None else [])
                     + ([family_column] if family_column is not None else []))
    kinds = _process_kinds(df, process_columns, source)
    if len(df) == 0:
        raise InputError(f"{source}: no data rows; expected at least one alloy")
    rows_read = len(df)

    keep = np.ones(len(df), dtype=bool)
    dropped = 0
    if target_column is not None:
        target = _numeric(df, target_column, source, rows)
        missing = target.isna().to_numpy()
        if missing.any() and not drop_missing_target:
            i = int(np.flatnonzero(missing)[0])
            raise InputError(f"{where(source, rows[i], target_column)}empty target "
                             f"({int(missing.sum())} row(s) without one); expected a number, or "
                             "drop_missing_target=True to drop them")
        dropped = int(missing.sum())
        keep &= ~missing
    df, rows = df.loc[keep].reset_index(drop=True), rows[keep]
    if len(df) == 0:
        raise InputError(f"{source}: no rows with a {target_column!r} value; expected at least "
                         "one measured alloy")

    fractions = [parse_composition(text, groups=groups, source=source, row=r,
                                   column=composition_column)
                 for text, r in zip(df[composition_column], rows, strict=True)]
    out = pd.DataFrame({
        "row": rows,
        "composition": [str(t).strip() for t in df[composition_column]],
        "fractions": fractions,
        "elements": [element_system(f) for f in fractions],
    })
    if family_column is not None:
        fam = df[family_column]
        empty = fam.isna().to_numpy() | (fam.astype(str).str.strip() == "").to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise InputError(f"{where(source, rows[i], family_column)}empty family; expected a "
                             "family name")
        out["family"] = fam.astype(str).str.strip().to_numpy()
    else:
        out["family"] = out["elements"]
    out["n_elements"] = [len(f) for f in fractions]
    if target_column is not None:
        out[target_column] = target.loc[keep].to_numpy()

    missing_category: dict[str, int] = {}
    for col, kind in kinds.items():
        if kind == "numeric":
            values = _numeric(df, col, source, rows)
            if values.isna().any():
                i = int(np.flatnonzero(values.isna().to_numpy())[0])
                raise InputError(f"{where(source, rows[i], col)}empty cell "
                                 f"({int(values.isna().sum())} used row(s) without a value); "
                                 "expected a number (fill it in, or leave the column out)")
            out[col] = values.to_numpy()
        else:
            text = df[col].astype(object)
            empty = text.isna().to_numpy() | (text.astype(str).str.strip() == "").to_numpy()
            missing_category[col] = int(empty.sum())
            out[col] = [_MISSING_CATEGORY if e else str(v).strip()
                        for v, e in zip(text, empty, strict=True)]

    # Identify repeated measurements of one alloy under one process.
    key_cols = ["family", *kinds]
    keys = [(tuple((el, round(f, _FRACTION_DECIMALS)) for el, f in fr.items()),
             *(out[c].iloc[i] for c in key_cols))
            for i, fr in enumerate(out["fractions"])]
    group_of: dict[tuple, int] = {}
    out["duplicate_group"] = [group_of.setdefault(k, len(group_of)) for k in keys]
    duplicate_rows = len(out) - len(group_of)
    if duplicate_rows and duplicates == "error":
        seen: dict[int, Any] = {}
        for g, r in zip(out["duplicate_group"], out["row"], strict=True):
            if g in seen:
                raise InputError(f"{where(source, r, composition_column)}repeats the composition "
                                 f"and process of row {seen[g]} ({duplicate_rows} repeated "
                                 "row(s)); expected unique rows, or duplicates='keep' or 'mean'")
            seen[g] = r
    out["n_measurements"] = 1
    if duplicate_rows and duplicates == "mean":
        agg: dict[str, Any] = {c: "first" for c in out.columns if c != "duplicate_group"}
        if target_column is not None:
            agg[target_column] = "mean"
        agg["n_measurements"] = "sum"
        out = out.groupby("duplicate_group", sort=True).agg(agg).reset_index()
        out = out[[c for c in out.columns if c != "duplicate_group"] + ["duplicate_group"]]

    out.attrs["report"] = {
        "source": source,
        "target_column": target_column,
        "composition_column": composition_column,
        "rows_read": rows_read,
        "rows_used": int(len(out)),
        "dropped_missing_target": dropped,
        "duplicate_rows": int(duplicate_rows),
        "duplicates": duplicates,
        "missing_category": missing_category,
        "process_kinds": kinds,
    }
    return out
