"""Result folders publish whole or not at all; reports render tables and figures."""

import pandas as pd
import pytest

from matmeta.errors import InputError
from matmeta.workflows._report import MARKER, Report, check_result_folder, result_folder


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
    with result_folder(tmp_path / "d") as tmp:
        (tmp / "a.csv").write_text("x")
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        with result_folder(tmp_path / "d", overwrite=False):
            pass
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [MARKER, "a.csv"]


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


def _names(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_users_file_in_an_earlier_result_is_never_deleted(tmp_path):
    out = tmp_path / "adapted"
    with result_folder(out) as tmp:
        (tmp / "adapted.pt").write_text("model")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.csv").write_text("x")
    # the marker lists what matmeta wrote, so a later run can replace exactly that
    listed = (out / MARKER).read_text().splitlines()
    assert listed[listed.index("files:") + 1:] == ["adapted.pt", "sub/a.csv"]
    before = _names(out)
    (out / "my_notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="holds my_notes.txt, which matmeta did not write"):
            with result_folder(out, overwrite=overwrite) as tmp:
                (tmp / "adapted.pt").write_text("new model")
    assert _names(out) == sorted([*before, "my_notes.txt"])
    assert (out / "adapted.pt").read_text() == "model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]   # no staging left
    (out / "my_notes.txt").unlink()
    (out / "sub" / "mine").mkdir()                       # an empty folder of the user's too
    with pytest.raises(InputError, match="sub/mine"):
        check_result_folder(out, overwrite=True)
    (out / "sub" / "mine").rmdir()
    # nothing but matmeta's files: replaced whole with overwrite, the new listing its own
    with result_folder(out, overwrite=True) as tmp:
        (tmp / "adapted.pt").write_text("new model")
    assert _names(out) == [MARKER, "adapted.pt"]
    assert (out / "adapted.pt").read_text() == "new model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]


def test_a_file_added_while_computing_stops_the_publish(tmp_path):
    out = tmp_path / "res"
    with result_folder(out) as tmp:
        (tmp / "a.csv").write_text("old")
    with pytest.raises(InputError, match="late.txt"):
        with result_folder(out, overwrite=True) as tmp:
            (tmp / "a.csv").write_text("new")
            (out / "late.txt").write_text("the user's, written meanwhile")
    assert (out / "a.csv").read_text() == "old" and (out / "late.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_a_marker_that_lists_no_files_is_not_trusted(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    # the marker of earlier versions did not list the files it wrote
    (out / MARKER).write_text("written by matmeta: the folder may be replaced by a new run\n")
    (out / "notes.txt").write_text("mine?")
    with pytest.raises(InputError, match="does not list the files it wrote"):
        check_result_folder(out, overwrite=True)
    assert (out / "notes.txt").is_file()


def test_an_empty_folder_matmeta_wrote_is_its_own_and_dot_is_no_result_name(tmp_path,
                                                                             monkeypatch):
    out = tmp_path / "res"
    with result_folder(out) as tmp:
        (tmp / "figures").mkdir()                # nothing drawn, the folder still written
    assert "figures/" in (out / MARKER).read_text().splitlines()
    assert check_result_folder(out, overwrite=True) == out
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="a name of its own"):
        check_result_folder(".", overwrite=True)
