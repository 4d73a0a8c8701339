"""``matmeta adapt``: adapt a meta-learned model to a handful of measurements of a new family."""

from __future__ import annotations

import argparse

from matmeta.cli.common import add_runtime_options

HELP = "adapt a meta-learned model to a few measurements of a new family"

DESCRIPTION = """\
Adapt a checkpoint from `matmeta meta-train` (a single model; an ensemble trained with
--members N; or a Bayesian head, --algorithm bayes_linear or gp) to the support measurements of
a new family with the meta-learner's own adaptation (inner gradient steps, or the head's
closed-form fit), and write a result folder (published whole, or not at all):

  adapted.pt              the adapted model (loads with weights_only=True)
  support.csv             the support table as read
  support_fit.csv         per row: measured, fitted, leave-one-out and zero-shot predictions
                          (ensembles and Bayesian heads: 90% intervals, in the target's units)
  baselines.csv           leave-one-out MAE of the adaptation and of the baselines: the
                          meta-learned initial model without adaptation, its per-family offset
                          shrunk toward zero, the mean of the other support rows
  support_parity.png, adapted_vs_initial.png, report.md

The support file has the columns the model was trained with: the composition column, the
process columns (e.g. the test temperature, in the training table's units) and the target
(units in its name); or a structure column and the target for graph models. Elements the model
never saw are allowed (a warning; the element descriptors describe them).

--out is a new or empty folder. An earlier `matmeta adapt` folder is replaced (whole, once the new
one is complete) only with --overwrite, and only if it holds nothing but the files matmeta wrote
there; a folder with any other file is refused and left as it was.

Then rank candidates: matmeta predict --model adapted/ --candidates candidates.csv --out screen/

example:
  matmeta adapt --model meta.pt --support lab.csv --out adapted/
  matmeta adapt --model meta.pt --support lab.csv --out adapted/ --evaluation eval.csv"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("adapt", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="META.pt",
                   help="meta checkpoint from `matmeta meta-train` (single or --members N)")
    p.add_argument("--support", required=True, metavar="CSV",
                   help="the new family's measurements (inputs and target columns)")
    p.add_argument("--out", required=True, metavar="FOLDER", help="result folder to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier `matmeta adapt` folder at --out (never a folder "
                        "holding other files)")
    p.add_argument("--steps", type=int, default=None,
                   help="inner gradient steps [default: the checkpoint's evaluation steps]")
    p.add_argument("--evaluation", default=None, metavar="CSV",
                   help="a CSV from `matmeta evaluate`: its table is quoted in the report and "
                        "its chosen offset shrinkage is used for the offset baseline")
    p.add_argument("--shrinkage", type=float, default=None,
                   help="lambda of the offset baseline, in support rows [default: from "
                        "--evaluation, else 2]")
    p.add_argument("--no-loo", action="store_true",
                   help="skip the leave-one-out errors (k re-adaptations)")
    p.add_argument("--no-plots", action="store_true", help="write no figures")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from matmeta.cli.common import setup_runtime
    from matmeta.workflows._adapt import adapt
    from matmeta.workflows._report import check_result_folder

    device = setup_runtime(args)
    # refuse an --out that would not be replaced before adapting, not after
    check_result_folder(args.out, overwrite=args.overwrite)
    adapted = adapt(args.model, args.support, steps=args.steps, device=device,
                    loo=not args.no_loo, shrinkage=args.shrinkage, evaluation=args.evaluation)
    adapted.save(args.out, plots=not args.no_plots, overwrite=args.overwrite)
    k = len(adapted.support)
    line = f"adapted {adapted.model.name}"
    line += f" (ensemble of {adapted.members})" if adapted.is_ensemble else ""
    line += f" to {k} support row(s)"
    if adapted.baselines is not None:
        b = adapted.baselines
        col = b.columns[1]
        line += "; leave-one-out MAE " + ", ".join(
            f"{m.split(' (')[0].split(',')[0]} {v:.4g}" for m, v in zip(b["method"], b[col],
                                                                        strict=True))
    print(f"{line}; wrote {args.out}", file=sys.stdout)
    return 0
