"""Row numbers of CSV rows as a spreadsheet shows them, for error messages.

``pandas.read_csv`` skips blank (and whitespace-only) lines, so "header = row 1, row i = row
i + 2" names the wrong row after the first blank line. :func:`csv_row_numbers` reads the file
again with the ``csv`` module and numbers its records the way a spreadsheet numbers its rows:
every line is a row, blank ones included, except that a quoted cell spanning several lines
(a CIF or POSCAR in a cell) keeps its record in one row. For the usual file without such cells
this is the line a text editor shows.

Example:
    >>> df = pd.read_csv("lab.csv")
    >>> rows = csv_row_numbers("lab.csv", len(df))   # rows[i]: the row of df.iloc[i]
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["csv_row_numbers"]


def csv_row_numbers(path: str | os.PathLike, n_rows: int, *,
                    skipinitialspace: bool = False) -> np.ndarray:
    """The 1-based spreadsheet row of each data row of a CSV file (int64, length ``n_rows``).

    The header is the first row that is not blank; blank and whitespace-only rows are counted
    but hold no data, as ``pandas.read_csv`` skips them (a row of empty cells such as ``,,`` is
    data). ``skipinitialspace``: as the ``read_csv`` call that read the table. Where the file
    cannot be matched to ``n_rows`` data rows (another parser's rules, an unreadable file), the
    plain numbering ``2, 3, ...`` is returned.
    """
    p = Path(path)
    fallback = np.arange(n_rows, dtype=np.int64) + 2
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    rows: list[int] = []
    limit = csv.field_size_limit()
    try:
        # a cell may hold a whole CIF: no limit on its size here (pandas has none)
        csv.field_size_limit(2**31 - 1)
        with opener(p, "rt", encoding="utf-8-sig", errors="replace", newline="") as fh:
            header = False
            for number, record in enumerate(csv.reader(fh, skipinitialspace=skipinitialspace),
                                            start=1):
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank row
                if header:
                    rows.append(number)
                header = True
    except (OSError, csv.Error):
        return fallback
    finally:
        csv.field_size_limit(limit)
    return np.asarray(rows, dtype=np.int64) if len(rows) == n_rows else fallback
