"""Validated reading of kinetics tables (transformed fraction against time).

A kinetics table is a CSV (or a DataFrame) in long format, one measurement per row:

- a time column whose unit is known: ``time_s``, ``time_min``, ``time_h`` (also ``time (s)``,
  ``time [min]``, ``t_h``), or a plain ``time`` with ``time_unit`` given;
- ``fraction``: the transformed fraction in [0, 1];
- optional ``temperature_K`` (> 0), ``fraction_std`` (> 0, used as weights ``1/std^2``);
- optional group columns (``dataset_id``, ``sample``, ``family``, ``material``, ``grade``,
  ``group``, or any named with ``group_by``).

Everything that is wrong raises :class:`~matmeta.errors.InputError` with one line naming the file,
the row (its line number in the file, header = line 1) and the column, before anything is fitted
or written. Nothing is clipped or dropped silently: fractions slightly outside [0, 1] and
negative times from digitisation need an explicit tolerance (``fraction_tolerance``,
``allow_negative_time``) and are kept as measured; empty or tiny ``fraction_std`` entries are
filled or floored by a stated rule and reported in ``KineticsTable.notes``. Rows keep the
file's order in ``KineticsTable.data``; :meth:`KineticsTable.curves` returns each curve sorted
by time, and a curve that was not in time order in the file is named in one
:class:`UnsortedTimesWarning` line (sorting changes no value, only the order).

Example:
    >>> table = read_kinetics_table("isotherms.csv", time_unit="min")
    >>> for key, curve in table.curves():
    ...     print(key, curve["time_s"].to_numpy(), curve["fraction"].to_numpy())
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from matmeta.errors import InputError, where
from matmeta.io._csv import csv_row_numbers
from matmeta.models.parametric._units import TIME_UNITS

__all__ = ["KineticsTable", "UnsortedTimesWarning", "read_kinetics_table", "validate_kinetics",
           "DEFAULT_GROUP_COLUMNS", "DEFAULT_STD_FLOOR"]

DEFAULT_GROUP_COLUMNS = ("dataset_id", "sample", "family", "material", "grade", "group")
# fraction_std below this is raised to it: a zero std (a fully (un)transformed reference point)
# would otherwise get infinite weight.
DEFAULT_STD_FLOOR = 0.01

_UNIT_WORDS = {"s": "s", "sec": "s", "second": "s", "seconds": "s",
               "min": "min", "minute": "min", "minutes": "min",
               "h": "h", "hr": "h", "hour": "h", "hours": "h"}
_TIME_RE = re.compile(r"^\s*(time|t)\s*(?:[_\s]\s*|[\(\[]\s*)?([a-z]*)\s*[\)\]]?\s*$", re.I)


class UnsortedTimesWarning(UserWarning):
    """A curve's times were not in increasing order in the file; it was sorted by time."""


@dataclass
class KineticsTable:
    """A validated kinetics table.

    Attributes:
        data: columns ``[*group_columns, temperature_K?, time_s, fraction, fraction_std?]`` and
            ``row`` (line number in the source file); times in seconds.
        group_columns: the columns that identify a material/sample (not temperature).
        source: the file name (or ``"<table>"``).
        notes: what was filled or floored, one line each.
    """

    data: pd.DataFrame
    group_columns: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def has_temperature(self) -> bool:
        return "temperature_K" in self.data.columns

    @property
    def has_std(self) -> bool:
        return "fraction_std" in self.data.columns

    def curve_columns(self, by_temperature: bool = True) -> list[str]:
        """Columns that identify one curve: the group columns, plus temperature if asked."""
        cols = list(self.group_columns)
        if by_temperature and self.has_temperature and "temperature_K" not in cols:
            cols.append("temperature_K")
        return cols

    def curves(self, by_temperature: bool = True, warn: bool = True
               ) -> list[tuple[dict[str, Any], pd.DataFrame]]:
        """``(key, rows)`` per curve, rows sorted by time; the whole table is one curve when
        there is nothing to group by.

        A curve whose rows are not in time order in the file is sorted (stable) and a
        :class:`UnsortedTimesWarning` names it (unless ``warn`` is False); the values are
        unchanged.
        """
        cols = self.curve_columns(by_temperature)
        groups = ([({}, self.data)] if not cols else
                  [(dict(zip(cols, (_plain(k) for k in (key if isinstance(key, tuple)
                                                        else (key,))), strict=False)), rows)
                   for key, rows in self.data.groupby(cols, sort=True, dropna=False)])
        # A group of several isotherms (by_temperature=False) is in order when each isotherm's
        # times increase; isotherms following one another is not a disorder.
        within = ["temperature_K"] if self.has_temperature and "temperature_K" not in cols else []
        out = []
        for key, rows in groups:
            ordered = rows.sort_values([*within, "time_s"], kind="stable")
            unsorted = any((np.diff(part["time_s"].to_numpy()) < 0).any() for _, part in
                           (rows.groupby(within, sort=False) if within else [(None, rows)]))
            if unsorted and warn:
                lines = rows["row"].to_numpy()
                warnings.warn(f"{self.describe_curve(key)} (rows {lines.min()}-{lines.max()}): "
                              "times are not in increasing order; sorted by time",
                              UnsortedTimesWarning, stacklevel=2)
            out.append((key, ordered if (unsorted or within) else rows))
        return out

    def describe_curve(self, key: dict[str, Any]) -> str:
        """``file, curve dataset_id=A, temperature_K=1373.15`` for messages."""
        if not key:
            return f"{self.source}"
        return f"{self.source}, curve " + ", ".join(f"{k}={v}" for k, v in key.items())

    def check_curves(self, n_params: int, has_prior: bool, by_temperature: bool = True) -> None:
        """Refuse curves that cannot be fitted: fewer points than free parameters without a
        prior, or all fractions equal (one line naming file, rows and column)."""
        for key, rows in self.curves(by_temperature, warn=False):  # (the caller's curves warn)
            lines = rows["row"].to_numpy()
            span = f"rows {lines.min()}-{lines.max()}" if len(lines) > 1 else f"row {lines[0]}"
            prefix = f"{self.describe_curve(key)} ({span}), column 'fraction': "
            if not has_prior and len(rows) < n_params:
                raise InputError(
                    f"{prefix}{len(rows)} points for {n_params} free parameters; measure more "
                    "points, fit fewer parameters, or give a prior (--prior)")
            f = rows["fraction"].to_numpy()
            if len(f) > 1 and np.all(f == f[0]):
                raise InputError(f"{prefix}all {len(f)} fractions equal {f[0]:g}; a kinetics "
                                 "curve needs fractions that change with time")


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _time_column(columns: Sequence[str], time_unit: str | None, src: str,
                 column: str | None = None) -> tuple[str, str]:
    """The time column and its unit; ``column`` names it explicitly (its unit from the name,
    else from ``time_unit``)."""
    if column is not None:
        if column not in columns:
            raise InputError(f"{src}: missing time column {column!r} "
                             f"(columns found: {', '.join(map(str, columns))})")
        m = _TIME_RE.match(str(column))
        word = m.group(2).lower() if m else ""
        unit = _UNIT_WORDS.get(word)
        return _time_unit(column, unit, time_unit, src)
    found = []
    for c in columns:
        m = _TIME_RE.match(str(c))
        if m:
            word = m.group(2).lower()
            if word and word not in _UNIT_WORDS:
                continue  # e.g. "time_stamp": not a time with a unit
            found.append((c, _UNIT_WORDS.get(word)))
    if not found:
        found_cols = ", ".join(map(str, columns))
        raise InputError(f"{src}: missing required time column: expected time_s, time_min, "
                         f"time_h or time with --time-unit (columns found: {found_cols})")
    if len(found) > 1:
        raise InputError(f"{src}: several time columns ({', '.join(c for c, _ in found)}); "
                         "keep one")
    return _time_unit(*found[0], time_unit, src)


def _time_unit(col: str, unit: str | None, time_unit: str | None, src: str) -> tuple[str, str]:
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise InputError(f"--time-unit {time_unit!r}: expected one of {', '.join(TIME_UNITS)}")
    if unit is None:
        if time_unit is None:
            raise InputError(f"{where(src, None, col)}the time unit cannot be determined: name "
                             "the column time_s, time_min or time_h (matmeta jmak fit also takes "
                             "--time-unit s|min|h)")
        unit = time_unit
    elif time_unit is not None and time_unit != unit:
        raise InputError(f"{where(src, None, col)}the column says {unit} but --time-unit says "
                         f"{time_unit}; drop one")
    return col, unit


def _numeric(df: pd.DataFrame, col: str, src: str, lines: np.ndarray,
             allow_missing: bool = False) -> np.ndarray:
    raw = df[col]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    text = raw.astype(str).str.strip()
    nonnum = np.isnan(vals) & raw.notna().to_numpy() & (text != "").to_numpy() & \
        ~text.str.lower().isin(["nan", "na", "n/a", "null", "none", ""]).to_numpy()
    if nonnum.any():
        i = int(np.argmax(nonnum))
        raise InputError(f"{where(src, int(lines[i]), col)}expected a number, got {raw.iloc[i]!r}")
    if not allow_missing and np.isnan(vals).any():
        i = int(np.argmax(np.isnan(vals)))
        raise InputError(f"{where(src, int(lines[i]), col)}missing value (NaN); every row needs "
                         "one")
    inf = np.isinf(vals)
    if inf.any():
        i = int(np.argmax(inf))
        raise InputError(f"{where(src, int(lines[i]), col)}infinite value {vals[i]}; expected a "
                         "finite number")
    return vals


def _check_tolerance(fraction_tolerance: float) -> None:
    if not (fraction_tolerance >= 0 and math.isfinite(fraction_tolerance)):
        raise InputError(f"--fraction-tolerance {fraction_tolerance}: expected a number >= 0")


def validate_kinetics(
    times_s: Any,
    fractions: Any,
    *,
    fraction_tolerance: float = 0.0,
    allow_negative_time: bool = False,
    source: str | None = None,
    rows: Sequence[int] | None = None,
    curve: Any = None,
    time_column: str = "time_s",
    fraction_column: str = "fraction",
    raw_times: Sequence[Any] | None = None,
) -> np.ndarray:
    """Check one set of kinetics points: finite times >= 0 and fractions in [0, 1].

    The one place these rules live: :func:`read_kinetics_table` and
    :func:`matmeta.fitting.fit_jmak` both call it. Nothing is clipped: out-of-range values
    raise, or are accepted as measured within the stated tolerance.

    Example:
        >>> validate_kinetics([0.0, 60.0, 120.0], [0.0, 0.4, 0.9])
        array([False, False, False])
        >>> validate_kinetics([-5.0, 60.0], [0.1, 1.5])   # doctest: +SKIP
        InputError: point 0: negative time -5 s; expected >= 0 ...

    Args:
        times_s: times in seconds (1-D).
        fractions: transformed fractions, same length.
        fraction_tolerance: accept fractions in ``[-tol, 1 + tol]`` (kept as measured).
        allow_negative_time: accept negative times (digitisation noise near t = 0).
        source: file name for messages; with ``rows`` the message names the file and row.
        rows: line number of each point in ``source`` (header = line 1); without them the
            message names the point index (0-based).
        curve: curve label or index for messages when no file is known.
        time_column: column name used in messages.
        fraction_column: column name used in messages.
        raw_times: the times as written in the file (for messages in the file's unit).

    Returns:
        Boolean mask of negative times (all False unless ``allow_negative_time``).

    Raises:
        InputError: non-finite values, negative times (unless allowed), fractions outside
            ``[-tol, 1 + tol]``, or arrays of different lengths; one line naming the file and
            row, or the curve and point.
    """
    _check_tolerance(fraction_tolerance)
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    f = np.asarray(fractions, dtype=np.float64).reshape(-1)

    def loc(i: int | None, col: str) -> str:
        if rows is not None:
            return where(source, None if i is None else int(rows[i]), col)
        parts = [str(source)] if source is not None else []
        if curve is not None:
            parts.append(f"curve {curve}")
        if i is not None:
            parts.append(f"point {i}")
        if source is not None:
            parts.append(f"column {col!r}")
        return ", ".join(parts) + ": "

    if t.shape != f.shape:
        raise InputError(f"{loc(None, fraction_column)}{len(t)} times but {len(f)} fractions")
    for vals, col in ((t, time_column), (f, fraction_column)):
        bad = ~np.isfinite(vals)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{loc(i, col)}{col} is {vals[i]:g}; expected a finite number")
    neg = t < 0
    if neg.any() and not allow_negative_time:
        i = int(np.argmax(neg))
        shown = f"{raw_times[i]}" if raw_times is not None else f"{t[i]:g} s"
        raise InputError(f"{loc(i, time_column)}negative time {shown}; expected >= 0 (pass "
                         "--allow-negative-time / allow_negative_time=True to keep digitisation "
                         "noise near t = 0 as measured)")
    lo, hi = 0.0 - fraction_tolerance, 1.0 + fraction_tolerance
    outside = (f < lo) | (f > hi)
    if outside.any():
        i = int(np.argmax(outside))
        hint = ("" if fraction_tolerance else
                "; pass --fraction-tolerance TOL / fraction_tolerance=TOL to accept small "
                "measurement overshoot")
        raise InputError(f"{loc(i, fraction_column)}fraction {f[i]:g} outside "
                         f"[{lo + 0.0:g}, {hi:g}]{hint}")
    return neg


def read_kinetics_table(
    path_or_frame: str | os.PathLike | pd.DataFrame,
    *,
    time_unit: str | None = None,
    group_by: Sequence[str] | None = None,
    fraction_tolerance: float = 0.0,
    allow_negative_time: bool = False,
    std_floor: float = DEFAULT_STD_FLOOR,
    require_temperature: bool = False,
    source: str | None = None,
    rows: Sequence[int] | None = None,
    time_column: str | None = None,
) -> KineticsTable:
    """Read and validate a kinetics table.

    Example:
        >>> t = read_kinetics_table("w.csv", fraction_tolerance=0.15, allow_negative_time=True)
        >>> t.data.columns.tolist()
        ['dataset_id', 'temperature_K', 'time_s', 'fraction', 'fraction_std', 'row']

    Args:
        path_or_frame: a CSV file or a DataFrame.
        time_unit: unit of a plain ``time`` column (``s``, ``min``, ``h``); must agree with a
            unit in the column name if both are given.
        group_by: columns identifying a material/sample; default: those of
            ``DEFAULT_GROUP_COLUMNS`` present. ``temperature_K`` may be listed (one curve per
            temperature is the default anyway when the column exists).
        fraction_tolerance: accept fractions in ``[-tol, 1 + tol]`` (kept as measured, not
            clipped); 0 means strictly [0, 1].
        allow_negative_time: keep negative times (digitisation noise near t = 0) as measured;
            JMAK predicts 0 there. Default: refuse them.
        std_floor: ``fraction_std`` below this is raised to it (zero would mean infinite
            weight); empty ``fraction_std`` cells take their curve's median std (the file's if
            the curve has none). Both are reported in ``notes``.
        require_temperature: refuse a table without ``temperature_K`` (Arrhenius fits).
        source: name used in messages for a DataFrame.
        rows: the row number (or record number) of each row of a DataFrame for messages;
            default: for a file, the rows as a spreadsheet numbers them (header = row 1,
            blank lines counted); for a DataFrame, header = 1, first row = 2.
        time_column: the time column by name, for a table with several time-like columns or
            one whose name does not look like a time (its unit from the name, else
            ``time_unit``); default: the one column named like ``time_s``/``time_min``/...

    Returns:
        A :class:`KineticsTable`.
    """
    if isinstance(path_or_frame, pd.DataFrame):
        src = source or "<table>"
        df = path_or_frame.copy()
    else:
        path = Path(path_or_frame)
        src = source or str(path)
        if not path.is_file():
            raise InputError(f"{src}: " + ("is a folder; expected a CSV file" if path.is_dir()
                                           else "no such file"))
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"{src}: not a readable CSV table "
                             f"({str(exc).strip().splitlines()[0]})") from None
        except pd.errors.EmptyDataError:
            raise InputError(f"{src}: empty file") from None
        df = df.replace({"": np.nan})
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise InputError(f"{src}: no data rows")
    _check_tolerance(fraction_tolerance)
    if not std_floor > 0:
        raise InputError(f"--std-floor {std_floor}: expected a positive number")
    if rows is None:
        lines = (np.arange(len(df)) + 2 if isinstance(path_or_frame, pd.DataFrame)
                 else csv_row_numbers(path_or_frame, len(df), skipinitialspace=True))
    else:
        lines = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(lines) != len(df):
            raise ValueError(f"rows: {len(lines)} line numbers for {len(df)} rows")
    tcol, unit = _time_column(list(df.columns), time_unit, src, time_column)
    if "fraction" not in df.columns:
        raise InputError(f"{src}: missing required column 'fraction' "
                         f"(columns found: {', '.join(df.columns)})")
    if require_temperature and "temperature_K" not in df.columns:
        raise InputError(f"{src}: missing required column 'temperature_K' (an Arrhenius fit "
                         "needs the temperature of each isotherm, in kelvin)")
    if group_by is None:
        groups = [c for c in DEFAULT_GROUP_COLUMNS if c in df.columns]
    else:
        missing = [c for c in group_by if c not in df.columns]
        if missing:
            raise InputError(f"{src}: --group-by column {missing[0]!r} not in the table "
                             f"(columns found: {', '.join(df.columns)})")
        groups = [c for c in group_by if c != "temperature_K"]
    for g in groups:
        na = df[g].isna().to_numpy()
        if na.any():
            i = int(np.argmax(na))
            raise InputError(f"{where(src, int(lines[i]), g)}missing group label")

    out = pd.DataFrame({g: df[g].to_numpy() for g in groups})
    t = _numeric(df, tcol, src, lines) * TIME_UNITS[unit]
    f = _numeric(df, "fraction", src, lines)
    if "temperature_K" in df.columns:
        temp = _numeric(df, "temperature_K", src, lines)
        bad = temp <= 0
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"{where(src, int(lines[i]), 'temperature_K')}temperature "
                             f"{temp[i]:g} K; expected a temperature > 0 K")
        out["temperature_K"] = temp
    neg = validate_kinetics(t, f, fraction_tolerance=fraction_tolerance,
                            allow_negative_time=allow_negative_time, source=src, rows=lines,
                            time_column=tcol, raw_times=df[tcol].to_numpy())
    out["time_s"] = t
    out["fraction"] = f
    notes: list[str] = []
    if neg.any():
        notes.append(f"{int(neg.sum())} negative times kept as measured (--allow-negative-time)")
    if "fraction_std" in df.columns:
        std = _numeric(df, "fraction_std", src, lines, allow_missing=True)
        if np.isnan(std).all():
            notes.append("fraction_std is empty in every row: fits are unweighted")
        else:
            bad = std < 0
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(f"{where(src, int(lines[i]), 'fraction_std')}negative std "
                                 f"{std[i]:g}; expected >= 0")
            out["fraction_std"] = std
            if np.isnan(std).any():
                n_fill = int(np.isnan(std).sum())
                by = groups + (["temperature_K"] if "temperature_K" in out.columns else [])
                med = (out.groupby(by, dropna=False)["fraction_std"].transform("median")
                       if by else pd.Series(np.nanmedian(std), index=out.index))
                filled = med.fillna(float(np.nanmedian(std))).to_numpy()
                out["fraction_std"] = np.where(np.isnan(std), filled, std)
                notes.append(f"{n_fill} rows without fraction_std took their curve's median std")
            low = out["fraction_std"].to_numpy() < std_floor
            if low.any():
                notes.append(f"{int(low.sum())} fraction_std values below {std_floor:g} raised "
                             f"to {std_floor:g} (--std-floor)")
                out["fraction_std"] = np.maximum(out["fraction_std"].to_numpy(), std_floor)
    out["row"] = lines
    return KineticsTable(out, groups, src, notes)
