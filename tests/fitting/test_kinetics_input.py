"""Kinetics tables: every kind of bad input gives one line naming file, row and column."""

from __future__ import annotations

import numpy as np
import pytest

from matmeta.errors import InputError
from matmeta.io.kinetics import UnsortedTimesWarning, read_kinetics_table, validate_kinetics
from tests.helpers import shared_dataset

GOOD = """sample,temperature_K,time_min,fraction,fraction_std
A,700,1,0.05,0.02
A,700,2,0.30,0.02
A,700,4,0.80,0.02
A,700,8,0.99,0.02
"""


def write(tmp_path, text, name="m.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_table_is_read_in_seconds(tmp_path):
    table = read_kinetics_table(write(tmp_path, GOOD))
    np.testing.assert_allclose(table.data["time_s"], [60, 120, 240, 480])
    assert table.group_columns == ["sample"]
    assert table.data["row"].tolist() == [2, 3, 4, 5]
    [(key, rows)] = table.curves()
    assert key == {"sample": "A", "temperature_K": 700.0} and len(rows) == 4


@pytest.mark.parametrize("text,match", [
    (GOOD.replace("0.30", "1.30"), r"m\.csv, row 3, column 'fraction': fraction 1\.3 outside "
                                   r"\[0, 1\]; pass --fraction-tolerance"),
    (GOOD.replace("0.30", "-0.2"), r"row 3, column 'fraction': fraction -0\.2 outside"),
    (GOOD.replace("0.30", "nan"), r"row 3, column 'fraction': missing value \(NaN\)"),
    (GOOD.replace("0.30", ""), r"row 3, column 'fraction': missing value"),
    (GOOD.replace("0.30", "inf"), r"row 3, column 'fraction': infinite value"),
    (GOOD.replace("A,700,4", "A,700,inf"), r"row 4, column 'time_min': infinite value"),
    (GOOD.replace("0.30", "abc"), r"row 3, column 'fraction': expected a number, got 'abc'"),
    (GOOD.replace("A,700,2,", "A,700,-2,"), r"row 3, column 'time_min': negative time -2"),
    (GOOD.replace("A,700,4", "A,0,4"), r"row 4, column 'temperature_K': temperature 0 K; "
                                       r"expected a temperature > 0 K"),
    (GOOD.replace("A,700,8", "A,-5,8"), r"row 5, column 'temperature_K': temperature -5 K"),
    (GOOD.replace("fraction,", "frac,"), r"m\.csv: missing required column 'fraction'"),
    (GOOD.replace("time_min", "time"), r"m\.csv, column 'time': the time unit cannot be "
                                       r"determined"),
    (GOOD.replace("time_min", "duration"), r"missing required time column"),
    (GOOD.replace("0.02\nA,700,4", "-0.1\nA,700,4"), r"row 3, column 'fraction_std': negative"),
])
def test_bad_tables_name_file_row_and_column(tmp_path, text, match):
    with pytest.raises(InputError, match=match) as exc:
        read_kinetics_table(write(tmp_path, text))
    assert "\n" not in str(exc.value)


def test_time_unit_flag_and_conflicts(tmp_path):
    plain = write(tmp_path, GOOD.replace("time_min", "time"))
    table = read_kinetics_table(plain, time_unit="h")
    assert table.data["time_s"].iloc[0] == 3600.0
    with pytest.raises(InputError, match="says min but --time-unit says h"):
        read_kinetics_table(write(tmp_path, GOOD), time_unit="h")
    with pytest.raises(InputError, match="expected one of s, min, h"):
        read_kinetics_table(plain, time_unit="days")


def test_tolerances_keep_values_as_measured(tmp_path):
    text = GOOD.replace("0.99", "1.03").replace("A,700,1,", "A,700,-0.1,")
    table = read_kinetics_table(write(tmp_path, text), fraction_tolerance=0.05,
                                allow_negative_time=True)
    assert table.data["fraction"].max() == 1.03  # not clipped
    assert table.data["time_s"].min() == -6.0
    assert any("negative times kept" in n for n in table.notes)


def test_curve_checks_too_few_points_and_all_equal(tmp_path):
    table = read_kinetics_table(write(tmp_path, GOOD))
    with pytest.raises(InputError, match=r"curve sample=A, temperature_K=700.0 \(rows 2-5\), "
                                         r"column 'fraction': 4 points for 5 free parameters"):
        table.check_curves(5, has_prior=False)
    table.check_curves(5, has_prior=True)
    flat = GOOD.replace("0.05", "0.5").replace("0.30", "0.5").replace("0.80", "0.5") \
        .replace("0.99", "0.5")
    with pytest.raises(InputError, match="all 4 fractions equal 0.5"):
        read_kinetics_table(write(tmp_path, flat)).check_curves(2, has_prior=False)


def test_std_handling_fill_and_floor(tmp_path):
    text = GOOD.replace("A,700,2,0.30,0.02", "A,700,2,0.30,").replace("A,700,4,0.80,0.02",
                                                                       "A,700,4,0.80,0.0")
    table = read_kinetics_table(write(tmp_path, text))
    assert table.data["fraction_std"].tolist() == [0.02, 0.02, 0.01, 0.02]
    assert len(table.notes) == 2


def test_group_by_missing_column(tmp_path):
    with pytest.raises(InputError, match="--group-by column 'grade' not in the table"):
        read_kinetics_table(write(tmp_path, GOOD), group_by=["grade"])


@pytest.mark.shared_data
def test_real_tungsten_table_needs_explicit_tolerances():
    path = shared_dataset("kinetics/tungsten_recrystallization.csv")
    with pytest.raises(InputError, match="negative time"):
        read_kinetics_table(path)
    with pytest.raises(InputError, match="outside"):
        read_kinetics_table(path, allow_negative_time=True)
    table = read_kinetics_table(path, allow_negative_time=True, fraction_tolerance=0.15)
    # one digitised curve is listed out of time order in the file: sorted, and said so
    with pytest.warns(UnsortedTimesWarning, match=r"curve dataset_id=W_Richou2020_A, "
                      r"temperature_K=1823.15 \(rows \d+-\d+\): times are not in increasing"):
        curves = table.curves()
    assert len(curves) == 25
    assert all((np.diff(rows["time_s"].to_numpy()) >= 0).all() for _, rows in curves)


def test_unsorted_curve_is_sorted_with_one_warning_naming_it(tmp_path):
    text = ("sample,time_s,fraction\nA,10,0.1\nA,30,0.6\nA,20,0.3\n"
            "B,10,0.2\nB,20,0.5\nB,30,0.9\n")
    table = read_kinetics_table(write(tmp_path, text))
    with pytest.warns(UnsortedTimesWarning) as rec:
        curves = table.curves()
    assert [str(w.message) for w in rec] == [
        f"{tmp_path / 'm.csv'}, curve sample=A (rows 2-4): times are not in increasing order; "
        "sorted by time"]
    assert curves[0][1]["time_s"].tolist() == [10.0, 20.0, 30.0]
    assert curves[0][1]["fraction"].tolist() == [0.1, 0.3, 0.6]  # values travel with their time
    assert curves[0][1]["row"].tolist() == [2, 4, 3]
    # the table itself keeps the file's order
    assert table.data["time_s"].tolist()[:3] == [10.0, 30.0, 20.0]


def test_validate_kinetics_is_the_rule_of_the_reader(tmp_path):
    """The reader and validate_kinetics refuse the same points with the same words."""
    bad = GOOD.replace("A,700,4,0.80", "A,700,4,1.20")
    with pytest.raises(InputError) as from_file:
        read_kinetics_table(write(tmp_path, bad))
    with pytest.raises(InputError) as direct:
        validate_kinetics([60, 120, 240, 480], [0.05, 0.3, 1.2, 0.99], source=str(
            tmp_path / "m.csv"), rows=[2, 3, 4, 5], time_column="time_min")
    assert str(from_file.value) == str(direct.value)
    assert "row 4, column 'fraction': fraction 1.2 outside [0, 1]" in str(direct.value)
    # without a file: curve and 0-based point index
    with pytest.raises(InputError, match=r"^curve 3, point 1: negative time -1 s"):
        validate_kinetics([0.0, -1.0], [0.0, 0.5], curve=3)
    neg = validate_kinetics([0.0, -1.0], [-0.01, 1.01], allow_negative_time=True,
                            fraction_tolerance=0.01)
    assert neg.tolist() == [False, True]
    with pytest.raises(InputError, match="2 times but 3 fractions"):
        validate_kinetics([0.0, 1.0], [0.1, 0.2, 0.3])


def test_rows_option_names_the_callers_line_numbers(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"time_s": [1.0, 2.0, -3.0], "fraction": [0.1, 0.5, 0.9]})
    with pytest.raises(InputError, match=r"^q.json, row 3, column 'time_s': negative time"):
        read_kinetics_table(df, source="q.json", rows=[1, 2, 3])
