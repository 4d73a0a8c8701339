"""``matmeta predict``: predictions of a trained property model for candidate structures, or of
an adapted model (``matmeta adapt``) for candidate compositions or structures, ranked for a goal."""

from __future__ import annotations

import argparse
import sys

from matmeta.cli.common import add_runtime_options, setup_runtime

HELP = "predict and rank candidates with an adapted model, or structures with a trained model"

DESCRIPTION = """\
Predict a property for candidate structures with a checkpoint written by `matmeta train`.
Graphs are built with the featurizer settings stored in the checkpoint (cutoff, neighbour cap,
distance basis), and predictions are written in the target's units, in a column named after the
target the model was trained on (e.g. bulk_modulus_GPa).

Structures are files (CIF, POSCAR/CONTCAR/.vasp, .xyz/.extxyz, pymatgen .json; optionally .gz)
or folders of them, or the rows of a table (--table).

With an adapted folder (`matmeta adapt --out adapted/`) as --model, the candidates are a CSV of
compositions (the composition column the model was trained with, plus its process columns), or
for graph models a folder of CIF/POSCAR files or a CSV with a structure column. The output has,
per candidate: id, row (the file line) and process columns for alloy tables, the prediction in
the target's units (a column named after the target), for an ensemble or a Bayesian head the
std and a central 90% interval (<target>_low90, <target>_high90), the meta-learned initial
model's prediction, rank for --goal, and the nearest training family with its distance
(total-variation distance between atomic fractions, 0 = same composition, 1 = no element in
common). Ranking uses the predicted mean; the interval is shown beside it. --out FOLDER writes
ranked.csv, ranked.png and report.md (published whole); --out FILE.csv writes the CSV only. An
earlier result folder is replaced only with --overwrite, and never when it holds files matmeta
did not write there.

Elements absent from the model's training data (for an adapted model: from its meta-training
families) get one warning naming them and counting the candidates that hold them: their
predictions are extrapolations.

Examples:
  matmeta predict --model model.pt candidates/ extra.cif --out preds.csv
  matmeta predict --model model.pt --table candidates.csv --structure-column cif --json \\
      --out preds.json
  matmeta predict --model adapted/ --candidates candidates.csv --goal max --out screen/
  matmeta predict --model adapted/ --candidates candidates.csv --goal 850 --out ranked.csv"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("structures", nargs="*", metavar="STRUCTURE",
                   help="structure files or folders of them (models from `matmeta train`)")
    p.add_argument("--model", required=True, metavar="MODEL.pt|ADAPTED/",
                   help="checkpoint written by `matmeta train`, or a folder written by "
                        "`matmeta adapt`")
    p.add_argument("--candidates", metavar="CSV|FOLDER", default=None,
                   help="adapted models: candidate compositions (CSV) or structures (a folder "
                        "of CIF/POSCAR files, or a CSV with a structure column)")
    p.add_argument("--goal", default="max",
                   help="adapted models: rank for max, min, or a target VALUE in the target's "
                        "units (closest first) [default: max]")
    p.add_argument("--uncertainty", action="store_true",
                   help="adapted models: require intervals (an error for a single model)")
    p.add_argument("--top", type=int, default=30,
                   help="adapted models: candidates shown in the plot and report [30]")
    p.add_argument("--table", metavar="TABLE", default=None,
                   help="a .csv/.json table whose rows hold structures (instead of files)")
    p.add_argument("--structure-column", metavar="COLUMN", default=None,
                   help="structure column of --table [default: structure, cif, ...]")
    p.add_argument("--id-column", metavar="COLUMN", default=None,
                   help="column of --table naming each row; copied to the output")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write predictions here (CSV, or JSON with --json) [default: stdout]")
    p.add_argument("--json", action="store_true", help="write JSON records instead of CSV")
    p.add_argument("--overwrite", action="store_true",
                   help="adapted models: replace an earlier result folder at --out FOLDER")
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
    from pathlib import Path

    if Path(args.model).is_dir():
        return _run_adapted(args, device)
    if args.candidates is not None:
        raise InputError(f"--candidates is for adapted models (a folder from `matmeta adapt`); "
                         f"{args.model} is a file: give structures or --table")
    if args.table and args.structures:
        raise InputError("give structure files/folders or --table, not both")
    if not args.table and not args.structures:
        raise InputError("no structures: give structure files or folders, or --table TABLE")
    if args.out:
        _refuse_input_as_output(args.out, [args.model, args.table, *args.structures])
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


def _run_adapted(args: argparse.Namespace, device) -> int:
    from pathlib import Path

    from matmeta.errors import InputError
    from matmeta.workflows._adapt import load_adapted
    from matmeta.workflows._screen import parse_goal, screen

    goal = parse_goal(args.goal)
    if args.table:
        raise InputError("--table is for models from `matmeta train`; give an adapted model's "
                         "candidates with --candidates")
    candidates = args.candidates
    if candidates is None:
        if len(args.structures) != 1:
            raise InputError("no candidates: give --candidates CSV (or one folder of "
                             "structures)")
        candidates = args.structures[0]
    elif args.structures:
        raise InputError("give the candidates once: --candidates or a structure folder")
    out = Path(args.out) if args.out else None
    folder = out if out is not None and out.suffix.lower() not in (".csv", ".json") else None
    if folder is not None and args.json:
        raise InputError(f"--json with the folder --out {out}: give --out NAME.json (or .csv) "
                         "for one file, or drop --json for a result folder")
    if folder is not None and Path(args.model).is_dir() \
            and folder.resolve() == Path(args.model).resolve():
        raise InputError(f"--out {out} is the adapted model's own folder: writing there would "
                         "replace the model; choose another --out")
    if folder is not None:
        from matmeta.workflows._report import check_result_folder

        check_result_folder(folder, overwrite=args.overwrite)
    elif out is not None:
        _refuse_input_as_output(out, [candidates])
    adapted = load_adapted(args.model, map_location=device)
    ranked = screen(adapted, candidates, folder, goal=goal, uncertainty=args.uncertainty,
                    top=args.top, workers=args.workers, cache_dir=args.cache_dir,
                    progress=not args.quiet, overwrite=args.overwrite)
    if args.json:
        from matmeta.checkpoint import dumps_json

        text = dumps_json({"model": str(args.model), "target": adapted.target, "goal": goal,
                           "predictions": ranked.to_dict(orient="records")}) + "\n"
    else:
        text = ranked.to_csv(index=False)
    if out is not None and folder is None:
        from matmeta.checkpoint import atomic_write_text

        atomic_write_text(out, text)
    elif out is None:
        sys.stdout.write(text)
    if out is not None:
        best = ranked.iloc[0]
        print(f"ranked {len(ranked)} candidate(s) for {adapted.target} (goal {goal}); best "
              f"{best['id']} at {best[adapted.target]:.4g}; wrote {out}", file=sys.stderr)
    return 0


def _refuse_input_as_output(out, inputs) -> None:
    """--out naming one of the command's own input files would replace it with predictions."""
    from pathlib import Path

    from matmeta.errors import InputError

    dest = Path(out)
    if not dest.is_file():
        return
    for given in inputs:
        if given is not None and Path(given).is_file() and dest.samefile(given):
            raise InputError(f"--out {out} is an input of this command ({given}): writing "
                             "there would replace it; choose another --out")
