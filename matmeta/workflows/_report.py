"""Result folders that appear whole or not at all, and the short Markdown report inside them.

A workflow writes its CSV, plots and ``report.md`` into a staging folder beside the destination;
only when everything is written is the staging folder renamed into place. A failure (bad input
found late, a killed process) leaves the destination as it was: nothing half-written.

Nothing matmeta did not write is ever deleted: the published folder holds a ``.matmeta-result``
marker listing the files the run wrote, and an existing destination is replaced only when it is
empty, or is such a result holding nothing but those files (and the caller allows overwriting;
the commands ask for ``--overwrite``). Any other folder is refused with a one-line error naming
what it holds, before the work starts (:func:`check_result_folder`) and again before publishing.

Example:
    >>> with result_folder("adapted/") as tmp:          # tmp: a staging Path
    ...     table.to_csv(tmp / "predictions.csv", index=False)
    ...     report = Report("Adapted model for Co-Cr-Ni")
    ...     report.table("Predictions", table.head(), note="MPa")
    ...     report.write(tmp / "report.md")
    >>> # adapted/ now holds predictions.csv and report.md
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from matmeta.checkpoint import atomic_write_text
from matmeta.errors import InputError

__all__ = ["MARKER", "Report", "check_result_folder", "result_folder"]

# Marks a folder as matmeta's own result and lists the files it wrote there: only such a folder
# (or an empty one) is ever replaced, and only when it holds nothing else.
MARKER = ".matmeta-result"
_MARKER_HEAD = "written by matmeta: the folder may be replaced by a new run"
_FILES_LINE = "files:"


def _written_files(folder: Path) -> set[str] | None:
    """The files (and, ending in ``/``, empty folders) a matmeta result folder records as its own
    (None: no marker, or one from before markers listed their files)."""
    try:
        lines = (folder / MARKER).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if _FILES_LINE not in lines:
        return None
    return {line for line in lines[lines.index(_FILES_LINE) + 1:] if line}


def _contents(folder: Path) -> tuple[set[str], set[str]]:
    """(files and links, folders) under ``folder``, as POSIX paths relative to it."""
    files, dirs = set(), set()
    for root, dirnames, filenames in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for d in dirnames:
            # a link to a folder is the user's: os.walk lists it here and does not follow it
            (files if Path(root, d).is_symlink() else dirs).add((rel / d).as_posix())
        files.update((rel / f).as_posix() for f in filenames)
    return files, dirs


def _foreign(folder: Path) -> list[str] | None:
    """What in an existing ``folder`` matmeta did not write (sorted), or None when it holds no
    record of what matmeta wrote."""
    written = _written_files(folder)
    if written is None:
        return None
    files, dirs = _contents(folder)
    ours = {w.rstrip("/") for w in written} | {
        p.as_posix() for w in written for p in Path(w).parents if p != Path(".")}
    return sorted((files - written - {MARKER}) | (dirs - ours))


def check_result_folder(out: str | os.PathLike, overwrite: bool = False,
                        flag: str = "--out") -> Path:
    """Refuse a destination :func:`result_folder` would not replace; call it before long work.

    Example:
        >>> check_result_folder("adapted/", overwrite=args.overwrite)   # fails fast, writes nothing

    A destination may be: missing; an empty folder; or, with ``overwrite``, a folder an earlier
    matmeta run wrote that holds only the files that run wrote (its ``.matmeta-result`` marker
    lists them). Anything else is refused, so a file matmeta did not write is never deleted.

    ``flag``: the option the messages name (``--out``, ``--report``).

    Raises:
        InputError: ``out`` is a file; a folder holding files matmeta did not write (the message
            names them); an earlier result without ``overwrite``.
    """
    dest = Path(out)
    if dest.name in ("", ".", ".."):
        raise InputError(f"{flag} {out}: give the result folder a name of its own (e.g. "
                         f"{dest / 'result'})")
    if dest.is_symlink():
        raise InputError(f"{dest}: is a link; give the folder itself, or choose another {flag}")
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest}: exists and is not a folder; choose another {flag}")
    if not dest.exists() or not any(dest.iterdir()):
        return dest
    if not (dest / MARKER).is_file():
        raise InputError(f"{dest}: exists and was not written by matmeta; choose another {flag} "
                         "(or remove the folder yourself)")
    foreign = _foreign(dest)
    if foreign is None:
        raise InputError(f"{dest}: an earlier matmeta result that does not list the files it "
                         f"wrote, so yours cannot be told apart; choose another {flag} (or remove "
                         "the folder yourself)")
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        it = "it" if len(foreign) == 1 else "them"
        raise InputError(f"{dest}: holds {shown}, which matmeta did not write; nothing was "
                         f"replaced: move {it} out, or choose another {flag}")
    if not overwrite:
        raise InputError(f"{dest}: already exists (an earlier matmeta result); pass --overwrite "
                         f"to replace it, or choose another {flag}")
    return dest


@contextlib.contextmanager
def result_folder(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Stage a result folder and publish it atomically when the block ends without error.

    Example:
        >>> with result_folder("screen/", overwrite=True) as tmp:
        ...     (tmp / "ranked.csv").write_text("...")

    Args:
        out: the destination folder. An existing folder is replaced, only once the new one is
            complete, when it is empty, or (with ``overwrite``) an earlier matmeta result that
            holds only the files it wrote; any other folder or a file is an error
            (:func:`check_result_folder`, checked again before publishing).
        overwrite: replace an earlier matmeta result (else an error naming it).

    Yields:
        The staging folder (on the same file system as ``out``, so the final rename is atomic).

    Raises:
        InputError: see :func:`check_result_folder`.
    """
    dest = check_result_folder(out, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        files, dirs = _contents(tmp)
        empty = {d + "/" for d in dirs if not any((tmp / d).iterdir())}
        # the marker lists what this run wrote: a later run replaces exactly that, nothing more
        (tmp / MARKER).write_text("\n".join([_MARKER_HEAD, _FILES_LINE, *sorted(files | empty)])
                                  + "\n", encoding="utf-8")
        # the user may have added a file while the result was computed
        check_result_folder(dest, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    if not dest.exists():
        os.replace(tmp, dest)
        return
    # Swap in two renames so a reader never sees a folder with half the files; the earlier
    # folder moves into a fresh folder of its own (no name there to clash), then is removed.
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    old = aside / dest.name
    os.replace(dest, old)
    os.replace(tmp, dest)
    left = _foreign(old) if any(old.iterdir()) else []
    if left is None or left:
        # a file arrived between the last check and the swap: keep it, and say where
        what = ", ".join(left[:3]) if left else "files its marker no longer lists"
        warnings.warn(f"{dest}: kept the earlier folder as {old}: it holds {what}, not written "
                      "by matmeta", UserWarning, stacklevel=3)
        return
    shutil.rmtree(aside, ignore_errors=True)


def _markdown_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(format(v, floatfmt))
            else:
                cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class Report:
    """A short Markdown report: a title, paragraphs, tables and figures, in the order added.

    Example:
        >>> r = Report("JMAK fit from 3 points")
        >>> r.text("Prior learned from 5 tungsten grades.")
        >>> r.table("Parameters", df)
        >>> r.figure("Fit", "fit.png")             # a path relative to the report
        >>> r.write(folder / "report.md")
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []

    def text(self, paragraph: str) -> Report:
        self._parts.append(paragraph.strip())
        return self

    def heading(self, title: str) -> Report:
        self._parts.append(f"## {title}")
        return self

    def bullets(self, items: list[str]) -> Report:
        self._parts.append("\n".join(f"- {item}" for item in items))
        return self

    def table(self, title: str | None, df: pd.DataFrame, note: str | None = None,
              max_rows: int = 30) -> Report:
        if title:
            self.heading(title)
        shown = df.head(max_rows)
        self._parts.append(_markdown_table(shown))
        if len(df) > max_rows:
            self._parts.append(f"({len(df) - max_rows} more rows in the CSV.)")
        if note:
            self._parts.append(note)
        return self

    def figure(self, caption: str, path: str | os.PathLike) -> Report:
        self._parts.append(f"![{caption}]({Path(path).as_posix()})")
        return self

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n\n".join(self._parts) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.markdown())
