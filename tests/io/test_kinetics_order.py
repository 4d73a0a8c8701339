"""Isotherms that follow one another in a file are in order; disorder within one is reported."""

import warnings

import pytest

from matmeta.io.kinetics import UnsortedTimesWarning, read_kinetics_table

CSV = ("grade,temperature_K,time_s,fraction\n"
       "A,1300,10,0.1\nA,1300,100,0.5\nA,1300,1000,0.9\n"
       "A,1400,5,0.2\nA,1400,50,0.7\nA,1400,500,0.95\n")


def test_grade_of_several_isotherms_is_not_unsorted(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text(CSV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (key, rows), = read_kinetics_table(path).curves(by_temperature=False)
    assert key == {"grade": "A"}
    assert rows[["temperature_K", "time_s"]].values.tolist() == [
        [1300, 10], [1300, 100], [1300, 1000], [1400, 5], [1400, 50], [1400, 500]]


def test_disorder_inside_one_isotherm_is_sorted_with_a_warning(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text(CSV.replace("A,1400,50,0.7\nA,1400,500,0.95", "A,1400,500,0.95\nA,1400,50,0.7"))
    with pytest.warns(UnsortedTimesWarning, match=r"grade=A \(rows 2-7\)"):
        (_, rows), = read_kinetics_table(path).curves(by_temperature=False)
    assert rows["time_s"].tolist() == [10, 100, 1000, 5, 50, 500]
    assert rows["fraction"].tolist() == [0.1, 0.5, 0.9, 0.2, 0.7, 0.95]
