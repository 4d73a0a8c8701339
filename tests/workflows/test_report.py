"""Result folders publish whole or not at all; reports render tables and figures."""

import pandas as pd
import pytest

from matmeta.errors import InputError
from matmeta.workflows._report import MARKER, Report, result_folder


def test_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / "res"
    with pytest.raises(RuntimeError):
        with result_folder(out) as tmp:
            (tmp / "a.csv").write_text("x\n1\n")
            raise RuntimeError("late failure")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []          # no staging folder left behind


def test_existing_folder_replaced_only_on_success(tmp_path):
    out = tmp_path / "res"
    with result_folder(out) as tmp:
        (tmp / "old.csv").write_text("old")
    with pytest.raises(ValueError):
        with result_folder(out) as tmp:
            (tmp / "new.csv").write_text("new")
            raise ValueError
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "old.csv"]
    with result_folder(out) as tmp:
        (tmp / "new.csv").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "new.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_file_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "res").write_text("")
    with pytest.raises(InputError, match="not a folder"):
        with result_folder(tmp_path / "res"):
            pass
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="already exists"):
        with result_folder(tmp_path / "d", overwrite=False):
            pass


def test_report_markdown(tmp_path):
    df = pd.DataFrame({"formula": ["CoCrNi", "A|B"], "pred_MPa": [412.345678, 3.0]})
    r = Report("Title").text("Hello.").table("Preds", df, note="MPa").figure("Parity", "p.png")
    path = r.write(tmp_path / "report.md")
    text = path.read_text()
    assert text.startswith("# Title\n")
    assert "| formula | pred_MPa |" in text and "| CoCrNi | 412.3 |" in text
    assert "A\\|B" in text and "![Parity](p.png)" in text


def test_a_users_folder_is_never_replaced(tmp_path):
    mine = tmp_path / "mywork"
    mine.mkdir()
    (mine / "notes.txt").write_text("important")
    with pytest.raises(InputError, match="not written by matmeta"):
        with result_folder(mine) as tmp:
            (tmp / "a.csv").write_text("x")
    assert (mine / "notes.txt").read_text() == "important"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mywork"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with result_folder(empty) as tmp:
        (tmp / "a.csv").write_text("x")
    assert (empty / "a.csv").is_file()
