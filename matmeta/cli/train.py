"""``matmeta train``: train a CGCNN property model on a table of structures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matmeta.cli.common import add_runtime_options, setup_runtime

HELP = "train a crystal-graph property model (CGCNN) on a table of structures"

DESCRIPTION = """\
Train a CGCNN-class graph network to predict one property of crystals, and write a checkpoint
that carries the featurizer settings, the target transform and the training metrics (load it
with `matmeta predict`).

The data is a table (.csv or .json, optionally .gz) with a structure column (CIF text, pymatgen
dicts or paths to structure files) and a target column, or a dataset shipped with matmeta
(--builtin). Targets are learned standardised; --log-target learns log10 of the target first
(for moduli and other positive quantities spanning orders of magnitude). Metrics (MAE, RMSE,
R^2) are printed in the target's units and, with --log-target, in log10 units.

The checkpoint records the elements of the training split: `matmeta predict` warns about
structures holding any other element (their predictions are extrapolations). An existing
checkpoint, plot or metrics file is replaced only with --overwrite.

Example:
  matmeta train --builtin dcdft_elements --target bulk_modulus_GPa --log-target \\
      --epochs 100 --out dcdft.pt
  matmeta train --data moduli.csv --target K_GPa --family-column family --split family \\
      --log-target --out model.pt --plot parity.png"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    src = data.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="TABLE", help="table of structures and targets")
    src.add_argument("--builtin", choices=["dcdft_elements", "emt_binary_alloys"],
                     help="a dataset shipped with matmeta")
    data.add_argument("--target", metavar="COLUMN",
                      help="target column, with its units in the name (default for --builtin: "
                           "its first target, bulk_modulus_GPa)")
    data.add_argument("--structure-column", metavar="COLUMN", default=None,
                      help="column holding the structures [default: structure, cif, ...]")
    data.add_argument("--family-column", metavar="COLUMN", default=None,
                      help="column naming each row's family (used by --split family) "
                           "[default: 'family' when the table has one]")
    data.add_argument("--id-column", metavar="COLUMN", default=None,
                      help="column naming each row, used in error messages")
    data.add_argument("--drop-invalid", action="store_true",
                      help="drop rows whose target is NaN/infinite (or not positive with "
                           "--log-target) and report how many, instead of refusing the table")
    data.add_argument("--split", choices=["random", "family"], default="random",
                      help="random rows, or whole families (no family in two splits) "
                           "[default: random]")
    data.add_argument("--fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                      default=(0.8, 0.1, 0.1),
                      help="split fractions [default: 0.8 0.1 0.1]")
    data.add_argument("--log-target", action="store_true",
                      help="learn log10 of the (positive) target, standardised")

    feat = p.add_argument_group("graphs")
    feat.add_argument("--cutoff", type=float, default=6.0,
                      help="neighbour search radius in angstrom [default: 6]")
    feat.add_argument("--max-neighbors", type=int, default=12,
                      help="nearest neighbours kept per atom; 0 keeps all within the cutoff "
                           "[default: 12]")
    feat.add_argument("--n-basis", type=int, default=40,
                      help="Gaussians expanding each distance, 0..cutoff [default: 40]")
    feat.add_argument("--cache-dir", default=None,
                      help="folder caching built graphs between runs [default: none]")
    feat.add_argument("--workers", type=int, default=2,
                      help="processes building graphs [default: 2]")

    model = p.add_argument_group("model and optimisation")
    model.add_argument("--hidden", type=int, default=64, help="atom feature width [default: 64]")
    model.add_argument("--n-conv", type=int, default=3,
                       help="gated graph convolutions [default: 3]")
    model.add_argument("--no-layer-norm", action="store_true",
                       help="no LayerNorm after the convolutions")
    model.add_argument("--epochs", type=int, default=200,
                       help="maximum passes over the training set [default: 200]")
    model.add_argument("--batch-size", type=int, default=64,
                       help="structures per mini-batch [default: 64]")
    model.add_argument("--lr", type=float, default=3e-3,
                       help="peak AdamW learning rate (warm-up, then cosine) [default: 3e-3]")
    model.add_argument("--weight-decay", type=float, default=1e-4,
                       help="AdamW weight decay [default: 1e-4]")
    model.add_argument("--loss", choices=["mse", "l1", "huber"], default="mse",
                       help="training loss in the transformed target space [default: mse]")
    model.add_argument("--patience", type=int, default=30,
                       help="stop after this many epochs without a better validation MAE; "
                            "0 never stops early [default: 30]")
    model.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                       help="stop training after this many minutes, keeping the best model")

    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="MODEL.pt", help="checkpoint to write")
    out.add_argument("--plot", metavar="PNG", default=None,
                     help="parity plot [default: MODEL_parity.png beside the checkpoint]")
    out.add_argument("--loss-plot", metavar="PNG", default=None,
                     help="loss curves [default: MODEL_loss.png beside the checkpoint]")
    out.add_argument("--no-plots", action="store_true", help="write no figures")
    out.add_argument("--metrics", metavar="JSON", default=None,
                     help="also write the metrics as JSON")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing checkpoint, plots or metrics file instead of "
                          "refusing")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from matmeta.errors import InputError, where
    from matmeta.graphs import FeaturizerSettings, build_graphs
    from matmeta.io import load_builtin, read_structure_table
    from matmeta.models._gnn import CGCNN
    from matmeta.training import TrainSettings, describe_metrics, train_property_model

    device = setup_runtime(args)
    if args.max_neighbors is not None and args.max_neighbors < 0:
        raise InputError(f"--max-neighbors {args.max_neighbors}: expected 0 (all) or a "
                         "positive count")
    settings = FeaturizerSettings(cutoff=args.cutoff, max_neighbors=args.max_neighbors or None,
                                  n_basis=args.n_basis)
    out = Path(args.out)
    if out.suffix == "":
        raise InputError(f"--out {out}: expected a checkpoint file name such as model.pt")
    _check_outputs(args, out)
    if args.builtin:
        df = load_builtin(args.builtin)
        target = args.target or "bulk_modulus_GPa"
        if target not in df.columns:
            raise InputError(f"--target {target!r}: not a column of {args.builtin}; expected one "
                             f"of {list(df.attrs.get('target_columns', []))}")
        source = args.builtin
    else:
        if not args.target:
            raise InputError("--target: name the target column of the table")
        df = read_structure_table(args.data, structure_column=args.structure_column,
                                  target_column=args.target, family_column=args.family_column,
                                  id_column=args.id_column, drop_bad_targets=args.drop_invalid)
        target = args.target
        source = args.data
        n_dropped = len(df.attrs.get("dropped_rows", []))
        if n_dropped:
            print(f"dropped {n_dropped} row(s) with a non-finite {target}", file=sys.stderr)
    y = df[target].to_numpy(dtype=float)
    if not np.isfinite(y).all():  # --builtin tables are validated on their first target only
        row = df.index[int(np.argmax(~np.isfinite(y)))]
        raise InputError(f"{where(source, row, target)}target is not a finite number")
    if args.log_target and (y <= 0).any():
        bad = y <= 0
        if not args.drop_invalid:
            row = df.index[int(np.argmax(bad))]
            raise InputError(f"{where(source, row, target)}value {y[bad][0]} cannot be "
                             f"log10-transformed ({int(bad.sum())} such row(s)); expected a "
                             "positive value (or pass --drop-invalid)")
        print(f"dropped {int(bad.sum())} row(s) with a non-positive {target} (--log-target)",
              file=sys.stderr)
        df, y = df[~bad], y[~bad]
    families = None
    if "family" in df.columns:
        families = df["family"].astype(str).tolist()
    if args.split == "family" and families is None:
        raise InputError(f"{source}: --split family needs a family column (--family-column)")

    graphs = build_graphs(list(df["structure"]), settings, cache_dir=args.cache_dir,
                          workers=args.workers, progress=not args.quiet)
    model = CGCNN(hidden=args.hidden, n_conv=args.n_conv, n_basis=settings.n_basis,
                  layer_norm=not args.no_layer_norm)
    opts = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, patience=args.patience, loss=args.loss,
                         time_limit_s=None if args.time_limit is None else 60 * args.time_limit)
    result = train_property_model(
        graphs, y, model, settings, train=opts,
        target_transform="log10_standardize" if args.log_target else "standardize",
        target=target, split=args.split, fractions=tuple(args.fractions), families=families,
        seed=args.seed, device=device, progress=None if not args.quiet else False,
    )
    result.predictor.info["data"] = str(source)
    result.predictor.save(out)
    print(f"trained {model!r} on {len(graphs)} structures from {source} "
          f"(best epoch {result.best_epoch} of {len(result.history['epoch'])})")
    print(describe_metrics(result.metrics, target, log=args.log_target))
    print(f"wrote {out}")
    if not args.no_plots:
        from matmeta.plots._training import loss_curves_plot, parity_plot

        parity, curves = _plot_paths(args, out)
        parity_plot(result.predictions, target=target, log=args.log_target,
                    metrics=result.metrics, path=parity)
        loss_curves_plot(result.history, loss=args.loss, best_epoch=result.best_epoch,
                         path=curves)
        print(f"wrote {parity} and {curves}")
    if args.metrics:
        from matmeta.checkpoint import atomic_write_text, dumps_json

        atomic_write_text(args.metrics, dumps_json({"target": target, "metrics": result.metrics,
                                                    "best_epoch": result.best_epoch}))
        print(f"wrote {args.metrics}")
    return 0


def _plot_paths(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    stem = out.with_suffix("")
    return (Path(args.plot) if args.plot else Path(f"{stem}_parity.png"),
            Path(args.loss_plot) if args.loss_plot else Path(f"{stem}_loss.png"))


def _check_outputs(args: argparse.Namespace, out: Path) -> None:
    """Refuse, before any training, outputs that would replace a file: an input always, any
    other existing file unless --overwrite (as `matmeta meta-train` does)."""
    from matmeta.cli.common import check_outputs, check_replacing

    paths = [("--out", out)]
    figures = []
    if not args.no_plots:
        figures = list(_plot_paths(args, out))
        paths += [("--plot", figures[0]), ("--loss-plot", figures[1])]
    if args.metrics:
        paths.append(("--metrics", Path(args.metrics)))
    check_outputs([p for _, p in paths if p not in figures], figures)
    check_replacing(paths, inputs=[("--data, the training table", args.data)],
                    overwrite=args.overwrite)
