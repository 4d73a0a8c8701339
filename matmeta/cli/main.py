"""``matmeta`` entry point: discovers subcommand modules in this package.

Each module ``matmeta/cli/<name>.py`` that defines ``add_parser(subparsers)`` becomes a
subcommand; ``add_parser`` registers its parser and sets ``func`` (``func(args) -> int``).
Subcommand modules import the heavy library lazily inside ``func`` so ``--help`` stays fast.

Errors raised on purpose (:class:`matmeta.errors.MatmetaError`) print one line and exit 2;
anything else prints one line with its type and exits 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

import matmeta.cli as _cli_pkg
from matmeta._version import __version__

DESCRIPTION = """\
matmeta: learn how to adapt from known chemical families, then adapt to a new one from a
handful of measurements. Crystal graphs + a CGCNN-class GNN, physics laws (JMAK/Avrami kinetics,
Arrhenius, Birch-Murnaghan), MAML-family meta-learning, and influence of each support sample.

Run `matmeta demo` for a short tour on data shipped with the package, and
`matmeta COMMAND --help` for each command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matmeta", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"matmeta {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(_cli_pkg.__path__), key=lambda m: m.name):
        if info.name in ("main", "common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"matmeta.cli.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            # One line per warning (too-small families, unsorted times, jitter added...),
            # without Python's echo of the source line; --debug keeps Python's format.
            if not args.debug:
                warnings.showwarning = lambda msg, *a, **k: print(
                    f"matmeta {args.command}: warning: {str(msg).strip().splitlines()[0]}",
                    file=sys.stderr)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("matmeta: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        if args.debug:
            raise
        from matmeta.errors import MatmetaError

        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if isinstance(exc, MatmetaError):
            print(f"matmeta {args.command}: error: {msg}", file=sys.stderr)
            return 2
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            print(f"matmeta {args.command}: error: {exc}", file=sys.stderr)
            return 2
        print(f"matmeta {args.command}: unexpected {type(exc).__name__}: {msg} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
