"""``matmeta predict``: predictions of a trained property model for candidate structures."""

from __future__ import annotations

import argparse
import sys

from matmeta.cli.common import add_runtime_options, setup_runtime

HELP = "predict a property for structures with a model from `matmeta train`"

DESCRIPTION = """\
Predict a property for candidate structures with a checkpoint written by `matmeta train`.
Graphs are built with the featurizer settings stored in the checkpoint (cutoff, neighbour cap,
distance basis), and predictions are written in the target's units, in a column named after the
target the model was trained on (e.g. bulk_modulus_GPa).

Structures are files (CIF, POSCAR/CONTCAR/.vasp, .xyz/.extxyz, pymatgen .json; optionally .gz)
or folders of them, or the rows of a table (--table).

Example:
  matmeta predict --model model.pt candidates/ extra.cif --out preds.csv
  matmeta predict --model model.pt --table candidates.csv --structure-column cif --json \\
      --out preds.json"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structures", nargs="*", metavar="STRUCTURE",
                   help="structure files or folders of them")
    p.add_argument("--model", required=True, metavar="MODEL.pt",
                   help="checkpoint written by `matmeta train`")
    p.add_argument("--table", metavar="TABLE", default=None,
                   help="a .csv/.json table whose rows hold structures (instead of files)")
    p.add_argument("--structure-column", metavar="COLUMN", default=None,
                   help="structure column of --table [default: structure, cif, ...]")
    p.add_argument("--id-column", metavar="COLUMN", default=None,
                   help="column of --table naming each row; copied to the output")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write predictions here (CSV, or JSON with --json) [default: stdout]")
    p.add_argument("--json", action="store_true", help="write JSON records instead of CSV")
    p.add_argument("--cutoff", type=float, default=None,
                   help="expected cutoff in angstrom: refuse a model trained with another")
    p.add_argument("--max-neighbors", type=int, default=None,
                   help="expected neighbour cap (0: none): refuse a model trained with another")
    p.add_argument("--batch-size", type=int, default=256,
                   help="structures per forward pass [default: 256]")
    p.add_argument("--workers", type=int, default=2,
                   help="processes building graphs [default: 2]")
    p.add_argument("--cache-dir", default=None, help="graph cache folder [default: none]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import pandas as pd

    from matmeta.errors import InputError
    from matmeta.graphs import build_graphs
    from matmeta.io import read_structure_table, read_structures
    from matmeta.training import predict_structures

    device = setup_runtime(args)
    if args.table and args.structures:
        raise InputError("give structure files/folders or --table, not both")
    if not args.table and not args.structures:
        raise InputError("no structures: give structure files or folders, or --table TABLE")
    from matmeta.training import load_predictor

    predictor = load_predictor(args.model, map_location=device)
    expected = {}
    if args.cutoff is not None:
        expected["cutoff"] = args.cutoff
    if args.max_neighbors is not None:
        expected["max_neighbors"] = args.max_neighbors or None
    if expected:
        predictor.check_settings(dataclasses.replace(predictor.settings, **expected),
                                 what=f"model {args.model}")
    ids = None
    if args.table:
        df = read_structure_table(args.table, structure_column=args.structure_column,
                                  id_column=args.id_column)
        crystals = list(df["structure"])
        if args.id_column:
            ids = df[args.id_column].tolist()
    else:
        crystals = read_structures(args.structures)
    graphs = build_graphs(crystals, predictor.settings, cache_dir=args.cache_dir,
                          workers=args.workers, progress=not args.quiet)
    values = predict_structures(predictor, graphs, batch_size=args.batch_size, device=device)
    table = pd.DataFrame({"structure": [c.source for c in crystals]})
    if ids is not None:
        table.insert(0, args.id_column, ids)
    table[predictor.target] = values
    if args.json:
        from matmeta.checkpoint import dumps_json

        text = dumps_json({"model": str(args.model), "target": predictor.target,
                           "predictions": table.to_dict(orient="records")}) + "\n"
    else:
        text = table.to_csv(index=False)
    if args.out:
        from matmeta.checkpoint import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {len(table)} prediction(s) of {predictor.target} to {args.out}",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
