"""The entry point: every subcommand has --help, errors are one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from matmeta.cli.main import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_python_dash_m_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "matmeta", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for name in _subcommands():
        assert name in out


@pytest.mark.parametrize("name", _subcommands())
def test_each_subcommand_help_explains(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) > 3


def test_errors_are_one_line_and_nonzero(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "matmeta", "demo", "--out", str(tmp_path / "x"),
                           "--device", "nonsense-device"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "nonsense-device" in proc.stderr
