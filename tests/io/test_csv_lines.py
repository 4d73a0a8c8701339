"""Error messages name the row a spreadsheet shows (the line a text editor shows, unless a
quoted cell spans lines), also after blank lines, which pandas skips."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from matmeta.cli.main import main
from matmeta.errors import InputError
from matmeta.io._csv import csv_row_numbers
from matmeta.io.alloys import read_alloy_table
from matmeta.io.kinetics import read_kinetics_table


def numbered(lines):
    """The file text of ``lines`` and the 1-based position of each entry marked ``>`` (a data
    row): its line, and its spreadsheet row where no quoted cell spans lines before it."""
    text = "\n".join(line.removeprefix(">") for line in lines) + "\n"
    rows = [i + 1 for i, line in enumerate(lines) if line.startswith(">")]
    return text, rows


LINES = [
    "",                      # a blank line before the header
    "name,value,note",
    ">a,1,plain",
    "",
    "   ",                   # whitespace only: pandas skips it too
    ">b,2,plain",
    ">,,",                   # empty cells: a row (of missing values), not a blank line
    '>c,3,"two',             # a quoted cell over two lines: one spreadsheet row
    'lines"',
    ">d,4,last",             # line 10, spreadsheet row 9
]


@pytest.mark.parametrize("gz", [False, True])
def test_row_lines_follow_the_file(tmp_path, gz):
    text, rows = numbered(LINES)
    path = tmp_path / ("t.csv.gz" if gz else "t.csv")
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    df = pd.read_csv(path)
    assert len(df) == len(rows) == 5
    assert rows == [3, 6, 7, 8, 10]
    assert csv_row_numbers(path, len(df)).tolist() == [3, 6, 7, 8, 9]
    assert df["note"].tolist()[3] == "two\nlines"
    # a count that does not match (another parser's rules) falls back to plain numbering
    assert csv_row_numbers(path, 3).tolist() == [2, 3, 4]
    assert csv_row_numbers(tmp_path / "missing.csv", 2).tolist() == [2, 3]


def test_byte_order_mark_large_cells_and_initial_spaces(tmp_path):
    """A BOM (Excel's UTF-8 CSV) before a blank first line, a 300 kB cell (a big CIF) and a
    quoted cell after ', ' (read with skipinitialspace) still give the right rows."""
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeff\nname,value\na,1\n\nb,2\n".encode())
    assert len(pd.read_csv(bom)) == 2
    assert csv_row_numbers(bom, 2).tolist() == [3, 5]
    big = tmp_path / "big.csv"
    big.write_text('name,cif\na,"' + "x" * 300_000 + '"\n\nb,small\n')
    assert csv_row_numbers(big, len(pd.read_csv(big))).tolist() == [2, 4]
    spaced = tmp_path / "spaced.csv"
    spaced.write_text('name, note\na, "two\nlines"\n\nb, plain\n')
    n = len(pd.read_csv(spaced, skipinitialspace=True))
    assert csv_row_numbers(spaced, n, skipinitialspace=True).tolist() == [2, 4]


def test_alloy_table_names_the_line_after_blank_lines(tmp_path):
    text, rows = numbered(["formula,ys_MPa", ">CoCrNi,400", "", "", ">CoCrNiQ,500"])
    path = tmp_path / "lab.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"lab.csv, row {rows[1]}, column 'formula'"):
        read_alloy_table(path, "formula", "ys_MPa")
    assert rows[1] == 5


def test_kinetics_table_names_the_line_after_blank_lines(tmp_path):
    text, rows = numbered(["sample,temperature_K,time_s,fraction", ">A,700,10,0.1", "",
                           ">A,700,20,0.5", "  ", ">A,700,40,1.7"])
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=rf"m.csv, row {rows[2]}, column 'fraction'"):
        read_kinetics_table(path)
    good = read_kinetics_table(path, fraction_tolerance=1.0)
    assert good.data["row"].tolist() == rows == [2, 4, 6]


def test_structure_table_labels_rows_by_line(tmp_path):
    from matmeta.io import read_structure_table

    poscar = "Cu\\n3.6\\n1 0 0\\n0 1 0\\n0 0 1\\nCu\\n1\\nDirect\\n0 0 0\\n"
    text, _ = numbered(["poscar,B_GPa", f'>"{poscar}",140', "", f'>"{poscar}",abc'])
    path = tmp_path / "s.csv"
    path.write_text(text.replace("\\n", "\n"))
    # each quoted POSCAR holds 9 line breaks: in a text editor the first row fills lines 2-11,
    # line 12 is blank and the second row starts on line 13; a spreadsheet shows the header,
    # the first row, the blank row, then the second row as row 4
    assert path.read_text().splitlines()[11] == ""
    with pytest.raises(InputError, match=r"s.csv, row 4, column 'B_GPa': target 'abc'"):
        read_structure_table(path, target_column="B_GPa", structure_column="poscar")


def test_eos_cli_names_the_line_after_a_blank_line(tmp_path, capsys):
    src = tmp_path / "bad.csv"
    src.write_text("volume_A3,energy_eV\n10,-1\n\n11,-1.1\n-12,-1.05\n13,-1\n14,-0.9\n")
    out = tmp_path / "o.csv"
    assert main(["eos", "fit", str(src), "--out", str(out)]) == 2
    assert "row 5, column 'volume_A3'" in capsys.readouterr().err
    assert not out.exists()


def test_plain_files_keep_the_plain_numbering(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(50)))
    assert np.array_equal(csv_row_numbers(path, 50), np.arange(2, 52))
