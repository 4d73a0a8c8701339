"""``matmeta evaluate``: leave-families-out k-shot evaluation of meta-learning vs baselines."""

from __future__ import annotations

import argparse

from matmeta.cli.common import add_runtime_options, comma_list

EPILOG = """\
methods (all that apply by default; --methods picks some):
  meta         meta-learned initialisation adapted on the support set (steps and inner-rate
               scale chosen on meta-validation families)
  meta_init    meta-learned initialisation, no adaptation
  pretrained   same architecture trained on all meta-train families pooled, no adaptation
  finetune     pretrained, then SGD on the support set (steps, rate chosen on validation)
  offset       pretrained plus the mean support residual shrunk toward zero (shrinkage chosen
               on validation)
  scratch      fresh initialisation trained on the support set only
  independent  kinetics: a Levenberg-Marquardt fit of each task's support points (k >= 2)
  map          kinetics: MAP fit, prior mean = meta-learned parameters, prior spread = that of
               independent fits to the meta-train families; Laplace predictive std
  bayes_linear cgcnn, composition: features meta-trained through a Bayesian linear head
               fitted in closed form on the support (prior and noise precision per task by
               marginal likelihood)
  gp           cgcnn, composition: the same with a Gaussian-process head (--kernel)
  pretrained_bayes_linear, pretrained_gp
               the same heads on the pretrained model's features (no meta-training)
  ensemble     opt-in: --ensemble-members meta-learned initialisations trained together, each
               adapted like meta; its extra noise calibrated on validation families per k

Methods with a predictive std (the heads, ensemble, map) are also scored by CRPS (target or
log10 units), NLPD (nats) and the coverage of their central 50% and 90% intervals (a calibrated
90% interval covers ~0.9 of held-out values); point methods show NaN there. A coverage plot is
written beside the table when any method has a std.

Nothing is chosen or fitted on test families: the target transform (log10 + standardisation for
cgcnn, standardisation for mlp) is fitted per fold on its meta-train families only. Errors: MAE
(RMSE for kinetics fractions; log10 units for log-transformed targets), averaged per family
group, then over groups; the interval (90% by default) resamples groups. Families too small for
a k are reported, not silently skipped.

examples:
  matmeta evaluate --data tungsten_recrystallization.csv --model jmak --shots 2,3 \\
      --fraction-tolerance 0.15 --allow-negative-time --out w_eval.csv
  matmeta evaluate --data mpea_alloys.csv --model composition --target "PROPERTY: YS (MPa)" \\
      --composition-column FORMULA --shots 5,10 \\
      --methods finetune,offset,meta,pretrained_gp --out mpea_eval.csv
  matmeta evaluate --data mp_binary_elasticity.json.gz --model cgcnn \\
      --target bulk_modulus_vrh --test-families N,Co,I --shots 5,10 --hidden 32 \\
      --min-family-size 30 --out mp_eval.csv --json
"""

MODELS = ("arrhenius_jmak", "cgcnn", "composition", "gnn", "jmak", "mlp")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="k-shot evaluation on held-out families against baselines",
        description="Hold out families, give each method the same k support samples of a held-"
                    "out family, score it on the family's other samples; write a CSV table and "
                    "a learning-curve plot.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="kinetics CSV, structure table (.json/.csv, .gz allowed) or alloy/"
                        "feature table")
    p.add_argument("--model", required=True, choices=MODELS, help="model kind")
    p.add_argument("--out", required=True, help="CSV of the results table to write")
    p.add_argument("--plot", default=None, help="learning-curve PNG [default: --out with .png]")
    p.add_argument("--coverage-plot", default=None,
                   help="calibration PNG: observed vs nominal interval coverage per method "
                        "[default: --out with _coverage.png, when a method has a std]")
    p.add_argument("--tasks-out", default=None, help="also write every task's error (CSV)")
    p.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    g = p.add_argument_group("data and families")
    g.add_argument("--family", default=None,
                   help="family column, or anion | anion_set | element_system [default: "
                        "dataset_id for kinetics, family otherwise]")
    g.add_argument("--target", default=None, help="target column, units in its name")
    g.add_argument("--features", default=None, help="comma-separated MLP feature columns")
    g.add_argument("--composition-column", default=None,
                   help="alloy tables (composition, or mlp on element fractions): composition "
                        "column; the element system is the default family")
    g.add_argument("--process-columns", default=None,
                   help="composition model: comma-separated process inputs (e.g. the test "
                        "temperature; numbers standardised, anything else one-hot)")
    g.add_argument("--formula-column", default="formula", help="formula column [formula]")
    g.add_argument("--structure-column", default=None, help="structure column (graph models)")
    g.add_argument("--min-family-size", type=int, default=1,
                   help="use only families with at least this many samples [1]")
    g.add_argument("--fraction-tolerance", type=float, default=0.0,
                   help="kinetics: accept fractions in [-tol, 1 + tol], kept as measured [0]")
    g.add_argument("--allow-negative-time", action="store_true",
                   help="kinetics: keep negative times (digitisation noise near t = 0) as "
                        "measured; JMAK predicts 0 there for any parameters")
    g = p.add_argument_group("splits and tasks")
    g.add_argument("--test-families", default="leave-one-out",
                   help="leave-one-out (each family group in turn), a fraction of groups, or "
                        "comma-separated names [leave-one-out]")
    g.add_argument("--val-families", default="0.2",
                   help="meta-validation share of the other groups, or names [0.2]")
    g.add_argument("--shots", default=None,
                   help="comma-separated support sizes k [1,2,5,10,20 where families allow]")
    g.add_argument("--methods", default=None, help="comma-separated methods [all that apply]")
    g.add_argument("--metric", default="auto", choices=("auto", "mae", "rmse"),
                   help="auto: RMSE for kinetics, MAE otherwise")
    g.add_argument("--repeats", type=int, default=5, help="support draws per test family [5]")
    g.add_argument("--val-repeats", type=int, default=3,
                   help="support draws per validation family [3]")
    g.add_argument("--q-query", type=int, default=None,
                   help="query samples per task [all samples not in the support]")
    g.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples [2000]")
    g.add_argument("--level", type=float, default=0.9, help="interval coverage [0.9]")
    g = p.add_argument_group("meta-learner (trained per fold on its meta-train families)")
    g.add_argument("--algorithm", default="maml",
                   help="maml, fomaml, reptile, metasgd, anil or imaml [maml]")
    g.add_argument("--steps", type=int, default=200, help="meta-steps [200]")
    g.add_argument("--meta-batch", type=int, default=8, help="tasks per meta-step [8]")
    g.add_argument("--k-shot", type=int, default=5, help="meta-training support size [5]")
    g.add_argument("--q-query-train", type=int, default=10, help="meta-training query size [10]")
    g.add_argument("--inner-steps", type=int, default=5, help="inner steps while training [5]")
    g.add_argument("--inner-lr", type=float, default=None,
                   help="inner learning rate [0.1 kinetics, 0.01 otherwise]")
    g.add_argument("--outer-lr", type=float, default=1e-3, help="outer Adam rate [1e-3]")
    g.add_argument("--trainable", default=None,
                   help="comma-separated parameters the inner loop adapts (anil: the head)")
    g = p.add_argument_group("closed-form heads and ensembles")
    g.add_argument("--head-steps", type=int, default=10,
                   help="Newton steps of the heads' hyperparameter fit per task [10]")
    g.add_argument("--head-loss", default="nlpd", choices=("nlpd", "mse"),
                   help="query loss the heads' features are meta-trained on [nlpd]")
    g.add_argument("--kernel", default="rbf", choices=("rbf", "matern52"),
                   help="GP head kernel on the learned features (plus a linear part) [rbf]")
    g.add_argument("--head-init", default="fresh", choices=("fresh", "pretrained"),
                   help="where bayes_linear/gp meta-training starts: a fresh initialisation or "
                        "the fold's pretrained model [fresh]")
    g.add_argument("--ensemble-members", type=int, default=5,
                   help="members of the ensemble method [5]")
    g = p.add_argument_group("baselines and model")
    g.add_argument("--pretrain-steps", type=int, default=300,
                   help="Adam steps of pooled pretraining [300]")
    g.add_argument("--pretrain-lr", type=float, default=None,
                   help="pretraining rate [0.05 kinetics, 3e-3 otherwise]")
    g.add_argument("--hidden", default=None,
                   help="hidden widths (mlp: 40,40; cgcnn: one width, e.g. 32)")
    g.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="tensor precision [float64 kinetics, float32 otherwise]")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    from matmeta.errors import InputError

    names = comma_list(text)
    if names is None:
        return None
    try:
        return tuple(int(v) for v in names)
    except ValueError:
        raise InputError(f"--{what} {text!r}: expected comma-separated whole numbers") from None


def _split(text: str):
    text = str(text).strip()
    if text in ("leave-one-out", "loo"):
        return "leave-one-out"
    try:
        return float(text)
    except ValueError:
        return comma_list(text)


def load_families(args: argparse.Namespace, kind: str, dtype):
    """Read ``--data`` for ``kind`` exactly as ``matmeta meta-train`` does
    (:func:`matmeta.meta.load_families`)."""
    from matmeta.graphs import FeaturizerSettings
    from matmeta.meta._data import load_families as load

    return load(args.data, kind, target=args.target, family=args.family,
                composition_column=args.composition_column,
                process_columns=comma_list(args.process_columns),
                structure_column=args.structure_column, features=comma_list(args.features),
                formula_column=args.formula_column,
                featurizer=FeaturizerSettings() if kind == "cgcnn" else None, dtype=dtype,
                fraction_tolerance=args.fraction_tolerance,
                allow_negative_time=args.allow_negative_time,
                min_family_size=args.min_family_size)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import torch

    from matmeta.cli.common import check_outputs, setup_runtime
    from matmeta.errors import InputError
    from matmeta.meta import MetaSettings, MetaTrainSettings
    from matmeta.meta._evaluate import EvaluationSettings, evaluate
    from matmeta.models._registry import build_model

    kind = "cgcnn" if args.model == "gnn" else args.model
    parametric = kind in ("jmak", "arrhenius_jmak")
    # settings first: a bad method, k or algorithm fails before any data is read
    settings = EvaluationSettings(
        shots=_ints(args.shots, "shots"), methods=comma_list(args.methods), metric=args.metric,
        repeats=args.repeats, val_repeats=args.val_repeats, q_query=args.q_query,
        bootstrap=args.bootstrap, level=args.level, seed=args.seed,
        pretrain_steps=args.pretrain_steps, pretrain_lr=args.pretrain_lr,
        head_steps=args.head_steps, head_loss=args.head_loss, kernel=args.kernel,
        ensemble_members=args.ensemble_members, head_init=args.head_init)
    meta = MetaSettings(algorithm=args.algorithm, inner_steps=args.inner_steps,
                        inner_lr=args.inner_lr or (0.1 if parametric else 0.01),
                        trainable=comma_list(args.trainable))
    mts = MetaTrainSettings(steps=args.steps, meta_batch=args.meta_batch, k_shot=args.k_shot,
                            q_query=args.q_query_train, outer_lr=args.outer_lr,
                            val_every=max(args.steps // 4, 1), val_tasks=16,
                            checkpoint_every=args.steps, seed=args.seed)
    device = setup_runtime(args)
    out_path = Path(args.out)
    check_outputs([out_path, args.tasks_out],
                  [Path(args.plot) if args.plot else out_path.with_suffix(".png"),
                   args.coverage_plot])
    dtype = getattr(torch, args.dtype or ("float64" if parametric else "float32"))
    data = load_families(args, kind, dtype)
    families, notes = data.families, data.notes
    units = ("log10 " + data.units) if kind == "cgcnn" else data.units

    test, val = _split(args.test_families), _split(args.val_families)
    # a kind, not a fitted transform: evaluate fits it per fold on that fold's meta-train
    # families, so no held-out target shapes the space a fold learns in
    tkind = None
    if not parametric:
        tkind = "log10_standardize" if kind == "cgcnn" else "standardize"

    hidden = comma_list(args.hidden)
    cfg: dict = {}
    if kind == "mlp":
        cfg = {"in_dim": int(families[0].inputs.shape[1]), "dtype": str(dtype).split(".")[-1]}
        if hidden:
            cfg["hidden"] = [int(h) for h in hidden]
    elif kind == "cgcnn":
        cfg = {"n_basis": families[0].featurizer.n_basis}
        if hidden:
            cfg["hidden"] = int(hidden[0])
    elif kind == "composition":
        # the element vocabulary is every element of the table (inputs, never targets): an
        # element only a held-out family has keeps an embedding no fold trains, and its
        # descriptors describe it
        cfg = {"elements": sorted({e for fr in data.table["fractions"] for e in fr}),
               "process": data.spec["process"], "dtype": str(dtype).split(".")[-1]}
        if hidden:
            cfg["hidden"] = int(hidden[0])
    elif kind == "arrhenius_jmak":
        cfg = {}
    model = build_model(kind, cfg)
    log = None if args.json else (lambda line: print(line, file=sys.stderr))
    result = evaluate(model, families, test=test, val=val, settings=settings,
                      meta_settings=meta, meta_train_settings=mts, target_transform=tkind,
                      units=units, device=device, progress=not args.no_progress and None,
                      log=log)
    result.notes[:0] = notes
    # nothing is written for a run that evaluated no task
    if not len(result.table):
        raise InputError("no task could be evaluated: every test family is too small for "
                         "every k")
    out = Path(args.out)
    result.to_csv(out)
    from matmeta.plots._evaluate import plot_learning_curves

    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot_learning_curves(result.table, plot,
                         title=f"{meta.algorithm} on {model.name}: {Path(args.data).name}")
    wrote = [str(out), str(plot)]
    if result.table[["coverage_50", "coverage_90"]].notna().any().any():
        from matmeta.plots._evaluate import plot_coverage

        cov_plot = (Path(args.coverage_plot) if args.coverage_plot
                    else out.with_name(out.stem + "_coverage.png"))
        plot_coverage(result.table, cov_plot, title=f"Calibration on {Path(args.data).name}")
        wrote.append(str(cov_plot))
    if args.tasks_out:
        from matmeta.checkpoint import atomic_write_text

        atomic_write_text(args.tasks_out, result.tasks.to_csv(index=False))
        wrote.append(str(args.tasks_out))
    if args.json:
        print(result.to_json())
        return 0
    import pandas as pd

    with pd.option_context("display.width", 120, "display.max_columns", 20):
        shown = result.table.drop(columns=["chosen", "units", "crps_ci_low", "crps_ci_high"])
        if shown[["crps", "nlpd", "coverage_50", "coverage_90"]].isna().all().all():
            shown = shown.drop(columns=["crps", "nlpd", "coverage_50", "coverage_90"])
        print(shown.to_string(
            index=False, float_format=lambda v: f"{v:.4g}"))
    for line in result.notes:
        print(f"note: {line}")
    print(f"wrote {', '.join(wrote)}")
    return 0
