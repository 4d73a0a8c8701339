"""``matmeta suggest``: what to measure next (candidate compositions/structures; JMAK kinetics)."""

from __future__ import annotations

import argparse
import sys

from matmeta.cli.common import add_runtime_options, check_outputs, setup_runtime

HELP = "rank what to measure next: candidate compositions/structures, or JMAK time points"

DESCRIPTION = """\
Rank the next measurement by how much it would reduce the uncertainty you care about.

  matmeta suggest candidates   composition or structure models (meta.pt, an ensemble, a model)
  matmeta suggest kinetics     JMAK kinetics: the next time point (and temperature)

Run `matmeta suggest WHAT --help` for each."""

CANDIDATES_HELP = "rank candidate compositions/structures for the next measurement"

CANDIDATES_DESCRIPTION = """\
Rank candidate compositions (or structures) for the next measurement.

The model's features stay as meta-learned; a Bayesian linear head whose prior mean is the
model's own output layer is fitted to your measurements (--support) in closed form, one head per
ensemble member. Measuring a candidate shrinks the head's posterior by a rank-1 update that does
not depend on the value you will measure, so the expected reduction of the predictive variance
over the target region is exact, and a batch of --batch suggestions is chosen greedily without
measuring in between.

Strategies (--strategy):
  variance      expected reduction of the summed predictive variance over the target region
                [default]
  maxstd        the candidate whose own prediction is least certain
  disagreement  the variance of an ensemble's adapted members (an ensemble checkpoint), or of
                --bootstrap-heads N heads refitted to resamples of your measurements
  random        a random order (seeded by --seed)

Target region (--target-region): all candidates [default]; top:F, the fraction F of candidates
best for --goal by current prediction (max: highest, min: lowest, a number: closest to it, in the
target's units); or a CSV of other compositions/structures you care about.

Output (--out, CSV written atomically): one row per candidate, the batch first (rank 1..q), with
the candidates' columns, in_batch, the strategy's score (variances in the target's units, or log10
units for a target learned in log space, squared: the column name says which),
share_of_region_variance (the fraction of the region's current predictive variance one
measurement removes), predicted_<target>, std_<target>, lower90_/upper90_<target> (a 90%
interval) in the target's units, and in_target_region.

The std and interval here are those of the Bayesian linear heads suggest fits on the members'
features (what the variance reduction is computed from); they are not the calibrated intervals
of `matmeta predict --model adapted/`, which add an ensemble's validation-calibrated noise term.
Rank with suggest; quote predict's intervals.

Example:
  matmeta suggest candidates --model meta.pt --support lab.csv --candidates cands.csv \\
      --target yield_strength_MPa --goal max --target-region top:0.2 --batch 3 --out next.csv"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("suggest", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="suggest_what", metavar="WHAT")
    c = sub.add_parser("candidates", help=CANDIDATES_HELP, description=CANDIDATES_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--model", required=True, metavar="MODEL.pt",
                   help="a meta checkpoint (`matmeta meta-train`), an ensemble checkpoint, or a "
                        "saved model of a composition or structure model")
    c.add_argument("--support", required=True, metavar="LAB.csv",
                   help="your measurements so far: compositions (or structures), the model's "
                        "process columns and the target column (at least 2 rows)")
    c.add_argument("--candidates", required=True, metavar="CANDS.csv",
                   help="candidates to rank: compositions (or structures) and process columns")
    c.add_argument("--out", required=True, metavar="NEXT.csv", help="ranked CSV to write")
    c.add_argument("--target", default=None, metavar="COLUMN",
                   help="measured column of --support, units in its name [default: the target "
                        "the model was trained on]")
    c.add_argument("--composition-column", default=None, metavar="COLUMN",
                   help="composition column [default: the checkpoint's, else 'formula']")
    c.add_argument("--structure-column", default=None, metavar="COLUMN",
                   help="structure column for structure models [default: structure, cif, ...]")
    c.add_argument("--goal", default="max", metavar="max|min|VALUE",
                   help="what you are after: the highest, the lowest, or a value in the target's "
                        "units; chooses the top:F region [default: max]")
    c.add_argument("--target-region", default="all", metavar="all|top:F|FILE.csv",
                   help="candidates whose uncertainty matters [default: all]")
    c.add_argument("--batch", type=int, default=1, metavar="Q",
                   help="suggestions chosen together, greedily [default: 1]")
    c.add_argument("--strategy", default="variance",
                   choices=["variance", "maxstd", "disagreement", "random"],
                   help="how to score candidates [default: variance]")
    c.add_argument("--bootstrap-heads", type=int, default=0, metavar="N",
                   help="disagreement from a single model: N heads refitted to bootstrap "
                        "resamples of the support [default: 0, refuse]")
    c.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help="also draw the ranked candidates [default file: --out with .png]")
    c.add_argument("--top", type=int, default=10, help="rows to print [default: 10]")
    add_runtime_options(c)
    c.set_defaults(func=run_candidates)
    # `suggest kinetics` (JMAK time points and temperatures) is defined beside its library code
    from matmeta.suggest._kinetics import add_kinetics_parser

    add_kinetics_parser(sub)
    p.set_defaults(func=lambda args: _no_what(p))


def _no_what(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 0


def run_candidates(args: argparse.Namespace) -> int:
    from pathlib import Path

    from matmeta.checkpoint import atomic_write_text
    from matmeta.errors import InputError
    from matmeta.suggest import load_suggest_model, parse_region, read_pool_table, suggest_next

    device = setup_runtime(args)
    check_outputs([args.out], [None if args.plot is None else
                               (args.plot or Path(args.out).with_suffix(".png"))])
    sm = load_suggest_model(args.model, map_location=device)
    target = args.target or sm.option("target", "target_column")
    if target is None:
        raise InputError(f"{args.model}: the checkpoint does not record its target column; name "
                         "the measured column with --target")
    region, targets_df = args.target_region, None
    if region.strip().lower() != "all" and not region.strip().lower().startswith("top:"):
        if not Path(region).is_file():
            parse_region(region)  # the one-line message for a malformed region
        targets_df = read_pool_table(sm, region, composition_column=args.composition_column,
                                     structure_column=args.structure_column,
                                     what="target region")
        region = "all"
    support = read_pool_table(sm, args.support, target=target,
                              composition_column=args.composition_column,
                              structure_column=args.structure_column, what="support")
    cands = read_pool_table(sm, args.candidates, composition_column=args.composition_column,
                            structure_column=args.structure_column, what="candidates")
    s, table = suggest_next(sm, support, cands, target, strategy=args.strategy, goal=args.goal,
                            region=region, targets=targets_df, batch=args.batch,
                            bootstrap_heads=args.bootstrap_heads, seed=args.seed, device=device)
    out = Path(args.out)
    fig = None
    if args.plot is not None:
        from matmeta.plots._suggest import plot_suggestions

        fig = plot_suggestions(table, target, title=f"Next measurements ({args.strategy}, goal "
                               f"{args.goal}, region {args.target_region}) from {len(support)} "
                               "measurements")
    # everything is computed before anything is written
    atomic_write_text(out, table.to_csv(index=False))
    written = [str(out)]
    if fig is not None:
        from matmeta.plots import save_figure

        plot = Path(args.plot) if args.plot else out.with_suffix(".png")
        save_figure(fig, plot)
        written.append(str(plot))
    shown = [c for c in table.columns if c in ("rank", "id", "name", "composition")
             or c.startswith(("predicted_", "std_", "expected_", "share_"))]
    units = ("log10 units" if sm.transform is not None and sm.transform.log else "target units")
    print(f"{len(table)} candidates ranked by {args.strategy} from {len(support)} measurements "
          f"({sm.kind} checkpoint, {max(sm.members, 1)} head(s)); batch of {s.batch}; "
          f"variances in {units} squared, predictions in the units of {target!r}")
    print(table[shown].head(max(args.top, s.batch)).to_string(
        index=False, float_format=lambda v: f"{v:.4g}"), file=sys.stdout)
    print("wrote " + ", ".join(written))
    return 0
