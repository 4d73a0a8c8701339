"""``matmeta demo``: a short tour on data shipped in data/."""

from __future__ import annotations

import argparse

from matmeta.cli.common import add_runtime_options, setup_runtime

DESCRIPTION = """\
Run a short tour of matmeta on data shipped in data/ (no network, no ../shared), writing every
table, figure and checkpoint under --out and a report.md that links them:

  1. kinetics   JMAK fits of 36 isotherms rebuilt from published Avrami parameters
  2. meta-jmak  MAML across polymer series; adapt to a held-out series from 2-3 points and
                compare with independent fits and fine-tuning
  3. explain    influence of each support point on the adapted curve (one point corrupted on
                purpose), checked against exact leave-one-out
  4. gnn        a CGCNN trained on EMT-generated binary alloys (log10 bulk modulus, GPa),
                predicting the fcc elemental metals
  5. alloys     a composition model meta-trained across alloy systems, adapted to a new one
                (Au-Cu) from a few measurements; candidates ranked with intervals, and what
                to measure next
  6. jmak-prior a held-out series from three points under the prior learned in stage 2: MAP
                fit with its report, and which time to measure next

The --out folder is the demo's own: a re-run replaces the files it wrote there, and a folder
that is not an earlier demo's is refused.

Every step is a real `matmeta` command, printed so you can copy and change it.

Example:
  matmeta demo --out demo_output
  matmeta demo --quick --stages kinetics,gnn
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="a short tour on data shipped with matmeta",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output",
                   help="output folder for tables, figures and report.md [default: demo_output]")
    p.add_argument("--quick", action="store_true",
                   help="fewer meta-steps and epochs (about a minute; used by CI)")
    p.add_argument("--stages", default=None,
                   help="comma-separated subset of kinetics, meta-jmak, explain, gnn, alloys, "
                        "jmak-prior [default: all]")
    p.add_argument("--quiet", action="store_true", help="do not echo the commands")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = setup_runtime(args)
    from matmeta.workflows._demo import DEMO_STAGES, run_demo

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else DEMO_STAGES
    run_demo(args.out, device=str(device), quick=args.quick, stages=stages, quiet=args.quiet)
    return 0
