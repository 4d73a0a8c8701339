"""Helpers shared by subcommands: common options and output."""

from __future__ import annotations

import argparse


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """--device, --threads and --seed, the same for every command that computes."""
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (CUDA when available) [default: auto]")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, or $MATMETA_THREADS)")
    p.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")


def setup_runtime(args: argparse.Namespace):
    """Apply --threads/--seed and return the resolved device."""
    from matmeta.config import resolve_device, seed_everything, set_threads

    set_threads(getattr(args, "threads", None))
    seed_everything(getattr(args, "seed", 0))
    return resolve_device(getattr(args, "device", "auto"))


def comma_list(value) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; a list or tuple (from a TOML config) passes through
    as strings; None stays None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [s.strip() for s in str(value).split(",") if s.strip()]


def check_outputs(files=(), figures=()) -> None:
    """Before a command computes or writes anything: each output file can be written (not a
    folder, no file where its folder would go) and each figure's suffix is a format matplotlib
    writes; a one-line error otherwise, so that a bad name for the last output does not leave
    the first ones written. None entries are skipped."""
    from matmeta.checkpoint import check_writable

    for path in files:
        if path is not None:
            check_writable(path)
    if any(path is not None for path in figures):
        from matmeta.plots._common import figure_format

        for path in figures:
            if path is not None:
                figure_format(path)
                check_writable(path)


def check_replacing(outputs, inputs=(), overwrite: bool = False) -> None:
    """Before any work: ``outputs`` ((flag, path) pairs, None paths skipped) are distinct
    paths, none is one of ``inputs`` (named, e.g. ``("--data", path)``: never replaced, even
    with ``overwrite``), and none is an existing file unless ``overwrite``; a one-line error
    naming the flag otherwise."""
    from pathlib import Path

    from matmeta.errors import InputError

    given = {Path(p).resolve(): flag for flag, p in inputs if p and Path(p).exists()}
    named: dict = {}
    for flag, path in outputs:
        if path is None:
            continue
        key = Path(path).resolve()
        if key in given:
            raise InputError(f"{flag} {path}: is one of this run's inputs ({given[key]}); "
                             "writing there would replace it: choose another name")
        if key in named:
            raise InputError(f"{flag} {path}: also written as {named[key]}; give each output "
                             "its own file")
        named[key] = flag
        if Path(path).exists() and not overwrite:
            raise InputError(f"{flag} {path} exists; pass --overwrite to replace it, or choose "
                             "another name")
