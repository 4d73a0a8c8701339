"""``matmeta meta-train``: meta-learn an initialisation (and inner rates) from known families."""

from __future__ import annotations

import argparse

from matmeta.cli.common import add_runtime_options, comma_list

ALGORITHM_HELP = """\
algorithms:
  maml     second-order MAML (exact meta-gradient through every inner step)
  fomaml   first-order MAML (cheaper; memory does not grow with inner steps)
  reptile  Reptile (move the initialisation toward the adapted weights)
  metasgd  MAML that also learns a positive inner learning rate per parameter
  anil     adapt only the head (--trainable for other subsets, e.g. ln_n of a JMAK law)
  imaml    implicit MAML (proximal inner problem, conjugate-gradient meta-gradient;
           memory independent of inner steps)
  bayes_linear  composition/cgcnn: adaptation fits a Bayesian linear head on the last hidden
           layer in closed form (prior and noise precision per task by marginal likelihood,
           --inner-steps Newton steps); meta-trained on the query log predictive density
           (--head-loss mse: query MSE); predictions come with a std
  gp       the same with a Gaussian-process head (--kernel rbf or matern52, plus a linear part)

data:
  jmak            kinetics table (dataset_id, temperature_K, time_s, fraction): one family per
                  isotherm, split by grade
  arrhenius_jmak  the same table, one family per grade (inputs time_s and temperature_K)
  mlp             a table of numeric --features and a --target, families from --family
  composition     an alloy table: --composition-column (e.g. Al0.5CoCrFeNi), --target, optional
                  --process-columns (test temperature, test type...); families = element systems
  cgcnn | gnn     a structure table (CIF text / pymatgen dicts) with a --target

A TOML file (--config) may set any option below by its long name with '_' for '-'
(e.g. inner_lr = 0.05), plus [model] (constructor arguments) and [featurizer] tables;
flags given on the command line override the file. Every setting is recorded in the
checkpoint.

With --prior FILE (jmak, arrhenius_jmak) a Gaussian prior over the law's transformed
parameters (ln k, ln n; ln k0, Q, ln n) is learned across the meta-training families by
Laplace-EM (matmeta.learn_prior; each family one curve: the spread of their MAP fits, plus a
shared noise std) and written for `matmeta jmak fit --prior` and `matmeta suggest kinetics
--prior`. The meta-learned initialisation is not used for it: gradient steps barely move ln k,
so a prior around it would be narrow and misplaced. It needs at least 2 meta-training families
the fitter can take (an Arrhenius-JMAK grade needs isotherms at two temperatures); families it
cannot take are named in a warning and left out.

With --members N (N >= 2) an ensemble of N meta-learned initialisations is trained together
(vmapped over members); `matmeta adapt` then gives every prediction a spread and a 90% interval.

examples:
  matmeta meta-train --data tungsten_recrystallization.csv --model jmak --algorithm maml \\
      --k-shot 3 --q-query 3 --steps 500 --out meta.pt --prior prior.json
  matmeta meta-train --model composition --data mpea_alloys.csv --target "PROPERTY: YS (MPa)" \\
      --composition-column FORMULA --process-columns "PROPERTY: Test temperature ($^\\circ$C)" \\
      --members 5 --out meta.pt
"""

# option -> built-in default (None: decided later from the model kind)
DEFAULTS = {
    "family": None, "target": None, "features": None, "formula_column": "formula",
    "structure_column": None, "target_transform": None, "k_shot": 5, "q_query": 10,
    "meta_batch": 16, "steps": 1000, "inner_steps": 5, "inner_lr": None,
    "eval_inner_steps": None, "trainable": None, "proximal": 1.0, "cg_steps": 10,
    "batching": "auto", "outer_optimizer": "adam", "outer_lr": 1e-3, "schedule": "constant",
    "clip": None, "val_families": 0.2, "test_families": 0.0, "val_every": 50, "val_tasks": 32,
    "checkpoint_every": 100, "plot": None, "prior": None, "dtype": "float32",
    "hidden": None, "fraction_tolerance": 0.0, "allow_negative_time": None,
    "composition_column": None, "process_columns": None, "members": 1,
    "head_loss": "nlpd", "kernel": "rbf",
}
MODELS = ("arrhenius_jmak", "cgcnn", "composition", "gnn", "jmak", "mlp")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "meta-train", help="meta-learn how to adapt from known families (MAML and relatives)",
        description="Meta-train a model on episodes (k-shot support, q-query) drawn from "
                    "families of a table, save a checkpoint that adapt/explain can use alone.",
        epilog=ALGORITHM_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="input table (.csv or .json, .gz allowed)")
    p.add_argument("--model", required=True, choices=MODELS, help="model kind")
    p.add_argument("--algorithm", default=None,
                   help="maml, fomaml, reptile, metasgd, anil, imaml, bayes_linear or gp "
                        "[default: maml]")
    p.add_argument("--out", required=True, help="meta checkpoint to write (e.g. meta.pt)")
    p.add_argument("--config", default=None, help="TOML file of settings (flags override it)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out with the same settings (only --steps, "
                        "--checkpoint-every and --val-every may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out instead of refusing")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="meta-steps between checkpoints [default: 100]")
    g = p.add_argument_group("data and families")
    g.add_argument("--family", default=None,
                   help="family column, or anion | anion_set | element_system (from the formula "
                        "or composition column) [default: dataset_id for kinetics, "
                        "element_system for alloy tables, family otherwise]")
    g.add_argument("--target", default=None, help="target column, units in its name")
    g.add_argument("--features", default=None, help="comma-separated MLP feature columns")
    g.add_argument("--formula-column", default=None, help="formula column [default: formula]")
    g.add_argument("--structure-column", default=None, help="structure column (graph models)")
    g.add_argument("--composition-column", default=None,
                   help="composition column of an alloy table (composition model; mlp: atomic "
                        "fractions become the features) [default: composition]")
    g.add_argument("--process-columns", default=None,
                   help="composition model: comma-separated process columns used as inputs "
                        "(numbers are standardised, text is one-hot), e.g. a test temperature")
    g.add_argument("--target-transform", default=None,
                   choices=("identity", "standardize", "log10_standardize"),
                   help="target transform fitted on meta-train families [default: "
                        "log10_standardize for graph models, standardize for mlp; kinetics "
                        "fractions are not transformed]")
    g.add_argument("--fraction-tolerance", type=float, default=None,
                   help="kinetics: accept fractions in [-tol, 1 + tol], kept as measured [0]")
    g.add_argument("--allow-negative-time", action="store_true", default=None,
                   help="kinetics: keep negative times (digitisation noise near t = 0) as "
                        "measured; JMAK predicts 0 there [default: refuse them]")
    g.add_argument("--val-families", default=None,
                   help="meta-validation families: a fraction of the groups or comma-separated "
                        "names [default: 0.2]")
    g.add_argument("--test-families", default=None,
                   help="meta-test families held out of training and validation (fraction or "
                        "names) [default: none]")
    g = p.add_argument_group("episodes and inner loop")
    g.add_argument("--k-shot", type=int, default=None, help="support samples per task [5]")
    g.add_argument("--q-query", type=int, default=None, help="query samples per task [10]")
    g.add_argument("--meta-batch", type=int, default=None, help="tasks per meta-step [16]")
    g.add_argument("--steps", type=int, default=None, help="meta-steps [1000]")
    g.add_argument("--inner-steps", type=int, default=None,
                   help="inner gradient steps while meta-training [5]")
    g.add_argument("--inner-lr", type=float, default=None,
                   help="inner learning rate [0.01; 0.1 for kinetics]")
    g.add_argument("--eval-inner-steps", type=int, default=None,
                   help="inner steps when adapting for validation/prediction [= --inner-steps]")
    g.add_argument("--trainable", default=None,
                   help="comma-separated parameter names the inner loop adapts (anil: default "
                        "the head)")
    g.add_argument("--proximal", type=float, default=None,
                   help="implicit MAML regulariser lambda [1.0]")
    g.add_argument("--cg-steps", type=int, default=None,
                   help="conjugate-gradient iterations (imaml) [10]")
    g.add_argument("--head-loss", default=None, choices=("nlpd", "mse"),
                   help="bayes_linear/gp: query loss meta-trained on, log predictive density "
                        "(nats) or squared error [nlpd]")
    g.add_argument("--kernel", default=None, choices=("rbf", "matern52"),
                   help="gp: stationary kernel on the learned features (plus a linear part) "
                        "[rbf]")
    g.add_argument("--batching", default=None, choices=("auto", "vmap", "loop"),
                   help="process tasks with vmap or a loop (auto: vmap for equally sized "
                        "tensor tasks; the head algorithms always loop) [auto]")
    g = p.add_argument_group("outer loop")
    g.add_argument("--outer-optimizer", default=None, choices=("adam", "sgd"), help="[adam]")
    g.add_argument("--outer-lr", type=float, default=None, help="outer learning rate [1e-3]")
    g.add_argument("--schedule", default=None, choices=("constant", "cosine"), help="[constant]")
    g.add_argument("--clip", type=float, default=None, help="max meta-gradient norm [none]")
    g.add_argument("--val-every", type=int, default=None, help="meta-steps between validations")
    g.add_argument("--val-tasks", type=int, default=None, help="fixed validation tasks [32]")
    g = p.add_argument_group("model and outputs")
    g.add_argument("--hidden", default=None,
                   help="hidden widths, comma-separated (mlp: 40,40; cgcnn: its width)")
    g.add_argument("--members", type=int, default=None,
                   help="ensemble members trained together (>= 2 gives predictive intervals) "
                        "[default: 1, a single model]")
    g.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="tensor precision [float32]")
    g.add_argument("--plot", default=None,
                   help="PNG of meta-train/validation losses [default: --out with .png]")
    g.add_argument("--prior", default=None,
                   help="jmak/arrhenius_jmak: also write a Gaussian prior (JSON) over the "
                        "transformed parameters (ln k, ln n, ...) learned across the "
                        "meta-training families by Laplace-EM (matmeta.learn_prior), with its "
                        "measurement noise std, for `matmeta jmak fit --prior` and `matmeta "
                        "suggest kinetics --prior` (not the meta-learned initialisation)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime_options(p)
    # what each option's value must be, to check a --config file's values as the flags are
    p.set_defaults(func=run, _option_types={a.dest: a.type for a in p._actions
                                            if a.type in (int, float)},
                   _option_choices={a.dest: list(a.choices) for a in p._actions
                                    if a.choices is not None})


def _settings(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Merge defaults < TOML file < command line; return (options, model cfg, featurizer cfg)."""
    from matmeta.errors import InputError

    file: dict = {}
    if args.config:
        import tomllib

        try:
            with open(args.config, "rb") as fh:
                file = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise InputError(f"--config {args.config}: no such file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"--config {args.config}: not valid TOML ({exc})") from exc
    model_cfg = dict(file.pop("model", {}) or {})
    feat_cfg = dict(file.pop("featurizer", {}) or {})
    known = set(DEFAULTS) | {"algorithm", "seed", "device", "threads"}
    unknown = sorted(set(file) - known)
    if unknown:
        raise InputError(f"--config {args.config}: unknown settings {unknown}; expected some of "
                         f"{sorted(known)}")
    for key, value in file.items():
        want = getattr(args, "_option_types", {}).get(key)
        ok = (want is None or (want is int and isinstance(value, int)
                               and not isinstance(value, bool))
              or (want is float and isinstance(value, (int, float))
                  and not isinstance(value, bool)))
        if not ok:
            raise InputError(f"--config {args.config}: {key} = {value!r}: expected "
                             f"{'an integer' if want is int else 'a number'}")
        choices = getattr(args, "_option_choices", {}).get(key)
        if choices is not None and value not in choices:
            raise InputError(f"--config {args.config}: {key} = {value!r}: expected one of "
                             f"{', '.join(map(str, choices))}")
    opts = dict(DEFAULTS)
    opts["algorithm"] = "maml"
    opts.update(file)
    for key in [*DEFAULTS, "algorithm"]:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    if args.checkpoint_every is not None:
        opts["checkpoint_every"] = args.checkpoint_every
    for key in ("seed", "device", "threads"):
        if key in file and getattr(args, key) == {"seed": 0, "device": "auto",
                                                  "threads": None}[key]:
            setattr(args, key, file[key])
    return opts, model_cfg, feat_cfg


def _split_spec(value):
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return [s.strip() for s in text.split(",") if s.strip()]


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import torch

    from matmeta.cli.common import check_outputs, check_replacing, setup_runtime
    from matmeta.errors import InputError
    from matmeta.meta import (
        MetaSettings,
        MetaTrainSettings,
        init_distributed,
        meta_train,
        split_families,
        write_prior,
    )
    from matmeta.meta._data import PARAMETRIC, load_families, transform_families

    opts, model_cfg, feat_cfg = _settings(args)
    device = setup_runtime(args)
    out = Path(args.out)
    plot_path = Path(opts["plot"]) if opts["plot"] else out.with_suffix(".png")
    check_outputs([out, opts["prior"]], [plot_path])
    if out.exists() and not (args.resume or args.overwrite):
        raise InputError(f"--out {out} exists; pass --resume to continue it or --overwrite")
    check_replacing([("--out", out), ("--plot", plot_path), ("--prior", opts["prior"])],
                    inputs=[("--data", args.data), ("--config", args.config)],
                    overwrite=args.resume or args.overwrite)
    kind = "cgcnn" if args.model == "gnn" else args.model
    dtype = getattr(torch, opts["dtype"])
    if int(opts["members"] or 1) > 1 and (opts["prior"] or kind in PARAMETRIC):
        raise InputError("--members is for property models (composition, mlp, cgcnn); kinetics "
                         "get their uncertainty from `matmeta jmak fit --prior`")
    if opts["prior"] and kind not in PARAMETRIC:
        # refused before training: not after a long run with its checkpoint already written
        raise InputError(f"--prior is for parametric models (jmak, arrhenius_jmak), not "
                         f"{args.model}")
    if opts["inner_lr"] is None:
        opts["inner_lr"] = 0.1 if kind in PARAMETRIC else 0.01
    # validate settings before reading data: bad names fail fast, nothing is written
    settings = MetaSettings(
        algorithm=str(opts["algorithm"]), inner_steps=int(opts["inner_steps"]),
        inner_lr=float(opts["inner_lr"]),
        eval_inner_steps=(None if opts["eval_inner_steps"] is None
                          else int(opts["eval_inner_steps"])),
        trainable=comma_list(opts["trainable"]), proximal=float(opts["proximal"]),
        cg_steps=int(opts["cg_steps"]), batching=str(opts["batching"]),
        head_loss=str(opts["head_loss"]), kernel=str(opts["kernel"]))
    train = MetaTrainSettings(
        steps=int(opts["steps"]), meta_batch=int(opts["meta_batch"]), k_shot=int(opts["k_shot"]),
        q_query=int(opts["q_query"]), outer_optimizer=str(opts["outer_optimizer"]),
        outer_lr=float(opts["outer_lr"]), schedule=str(opts["schedule"]),
        clip=None if opts["clip"] is None else float(opts["clip"]),
        val_every=int(opts["val_every"]), val_tasks=int(opts["val_tasks"]),
        checkpoint_every=int(opts["checkpoint_every"]), seed=int(args.seed))

    members = int(opts["members"] or 1)
    if members < 1:
        raise InputError(f"--members {members}: expected a positive number of members")
    featurizer = None
    if kind == "cgcnn":
        from matmeta.graphs import FeaturizerSettings

        featurizer = FeaturizerSettings(**feat_cfg)
        if opts["target"] is None:
            raise InputError("graph models need --target (the column to learn, units in its name)")
    data = load_families(
        args.data, kind, target=opts["target"], family=opts["family"],
        composition_column=opts["composition_column"],
        process_columns=comma_list(opts["process_columns"]),
        structure_column=opts["structure_column"], features=comma_list(opts["features"]),
        formula_column=opts["formula_column"], featurizer=featurizer, dtype=dtype,
        fraction_tolerance=float(opts["fraction_tolerance"]),
        allow_negative_time=bool(opts["allow_negative_time"]))
    for note in data.notes:
        print(f"note: {note}", file=sys.stderr)
    families = data.families
    train_f, val_f, test_f = split_families(
        families, val=_split_spec(opts["val_families"]), test=_split_spec(opts["test_families"]),
        seed=int(args.seed))

    tt = None
    if kind not in PARAMETRIC:
        from matmeta.models._transforms import TargetTransform

        tkind = opts["target_transform"] or ("log10_standardize" if kind == "cgcnn"
                                             else "standardize")
        tt = TargetTransform.fit(torch.cat([f.y for f in train_f]), kind=tkind,
                                 name=f"{args.data}, column {opts['target']!r}")
        train_f, val_f, test_f = (transform_families(x, tt) for x in (train_f, val_f, test_f))

    from matmeta.models._registry import build_model

    hidden = comma_list(opts["hidden"])
    if kind == "mlp":
        in_dim = int(train_f[0].inputs.shape[1])
        model_cfg = {"in_dim": in_dim, "dtype": opts["dtype"], **model_cfg}
        if hidden:
            model_cfg["hidden"] = [int(h) for h in hidden]
    elif kind == "cgcnn":
        model_cfg = {"n_basis": featurizer.n_basis, **model_cfg}
        if hidden:
            model_cfg["hidden"] = int(hidden[0])
    elif kind == "composition":
        # The element vocabulary is the meta-train families' elements: an element seen only in
        # a validation or test family keeps a zero embedding and is described by descriptors.
        names = {f.name for f in train_f}
        rows = data.table[data.table["family"].isin(names)]
        model_cfg = {"elements": sorted({e for fr in rows["fractions"] for e in fr}),
                     "process": data.spec["process"], "dtype": opts["dtype"], **model_cfg}
        if hidden:
            model_cfg["hidden"] = int(hidden[0])
    model = build_model(kind, model_cfg)
    if opts["prior"]:
        # refused before training, not after a long run: a prior across families needs two
        # families the fitter can take (the left-out ones are named again when it is written)
        from matmeta.meta._train import prior_families

        usable, left_out = prior_families(model, train_f)
        if len(usable) < 2:
            raise InputError(
                f"--prior {opts['prior']}: {len(usable)} of {len(train_f)} meta-training "
                "families can be fitted; learning a prior across families needs at least 2 "
                "(lower --val-families or --test-families"
                + (f"; left out: {'; '.join(left_out[:5])}" if left_out else "") + ")")

    rank, world = init_distributed(device)
    if device.type == "cuda" and world > 1:
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    init = model.init_params(torch.Generator().manual_seed(int(args.seed)))
    init = {k: v.to(dtype) for k, v in init.items()}
    extra = {
        "featurizer": None if featurizer is None else featurizer.to_dict(),
        "target_transform": None if tt is None else tt.to_dict(),
        "data": {"path": str(args.data), "model_kind": args.model, "options": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()}},
        "families": {"train": [f.name for f in train_f], "val": [f.name for f in val_f],
                     "test": [f.name for f in test_f]},
        "world_size": world,
        "data_spec": data.spec,
        "units": data.units,
    }
    if kind not in PARAMETRIC:
        from matmeta.workflows._screen import build_family_index

        extra["family_index"] = build_family_index(data.table, data.spec,
                                                   [f.name for f in train_f])
    progress = not args.no_progress and None
    if members > 1:
        from matmeta.meta._ensemble import meta_train_ensemble, stack_params

        # member m starts from seed + m (the ensemble's own rule), in the requested precision
        stacked = stack_params([
            {k: v.to(dtype) for k, v in model.init_params(
                torch.Generator().manual_seed(int(args.seed) + m)).items()}
            for m in range(members)])
        result = meta_train_ensemble(model, train_f, val_f, members=members, settings=settings,
                                     train=train, device=device, out=out, resume=args.resume,
                                     progress=progress, extra=extra, init_params=stacked)
    else:
        result = meta_train(model, train_f, val_f, settings=settings, train=train,
                            device=device, out=out, resume=args.resume, progress=progress,
                            extra=extra, init_params=init)
    if rank != 0:
        return 0
    from matmeta.plots._meta import plot_meta_history

    plot = Path(opts["plot"]) if opts["plot"] else out.with_suffix(".png")
    plot_meta_history(result.history, plot,
                      title=f"{settings.algorithm} on {model.name} ({args.data})")
    wrote = [str(out), str(plot)]
    prior_line = ""
    if opts["prior"]:
        from matmeta.models.parametric import Prior

        path = write_prior(result, train_f, opts["prior"])
        wrote.append(str(path))
        prior = Prior.load(path)
        prior_line = (
            f"prior learned across {len(usable)} of {len(train_f)} meta-training families "
            "(Laplace-EM), mean +- std of the transformed parameters: " + ", ".join(
                f"{n} {m:.4g} +- {s:.3g}" for n, m, s in
                zip(prior.names, prior.mean.tolist(), prior.std.tolist(), strict=True))
            + f"; measurement noise std {prior.noise_std:.3g} ({data.units})")
    last = result.history[-1] if result.history else {}
    val = [h["val_loss"] for h in result.history if "val_loss" in h]
    what = f"{members} members of " if members > 1 else ""
    print(f"meta-trained {what}{model.name} with {settings.algorithm}: {train.steps} meta-steps, "
          f"{len(train_f)} train / {len(val_f)} val / {len(test_f)} test families; "
          f"last meta-train loss {last.get('train_loss', float('nan')):.4g}"
          + (f", meta-validation loss {val[-1]:.4g}" if val else "")
          + ((f", calibrated noise std {result.noise_std:.3g} (model space) at {train.k_shot} "
              "support rows ("
              + ", ".join(f"{k}: {v:.3g}" for k, v in result.noise_std_by_k.items())
              + " by support size)"
              if val_f else ", noise NOT calibrated (no validation families): its intervals "
              "are the members' spread only") if members > 1 else "")
          + f"; wrote {', '.join(wrote)}", file=sys.stdout)
    if prior_line:
        print(prior_line, file=sys.stdout)
    return 0
