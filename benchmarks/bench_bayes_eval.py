"""Bayesian heads on meta-learned features against the baselines, with uncertainty, on real data.

Every method sees the same tasks and splits (``matmeta.meta._evaluate.evaluate``: support draws
are seeded by family, k and repeat, so separate runs with the same seed draw the same tasks):

- ``bayes_linear`` / ``gp``: features meta-trained through a closed-form Bayesian linear / GP
  head (query NLPD), adaptation = the head's fit (hyperparameters per task by evidence);
- ``pretrained_bayes_linear`` / ``pretrained_gp``: the same heads on the pretrained features;
- ``finetune``, ``offset`` (shrunk), ``pretrained``: the baselines;
- ``maml`` and ``anil``: the ``meta`` method of two runs with those algorithms;
- ``ensemble`` when ``matmeta.meta._ensemble`` exists (else it is said and left out).

Figures:
- ``mpea``: MPEA yield strength (``../shared/datasets/alloys/mpea_alloys.csv``), families =
  element systems, CompositionModel (composition + test temperature, test type, processing),
  target log10-standardised, MAE in MPa (uncertainty scores in log10 units). Test systems: the
  systems with >= 11 rows, in ``--folds`` folds; 4 other such systems validate each fold.
- ``mp``: MP binary elasticity, log10 bulk modulus, held-out anion families (as
  ``bench_evaluate.py mp``), CGCNN.

Usage (1 thread; benchmarks/bayes.md has the commands and figures):
    OMP_NUM_THREADS=1 python benchmarks/bench_bayes_eval.py mpea --out /tmp/bayes_mpea
    OMP_NUM_THREADS=1 python benchmarks/bench_bayes_eval.py mp --out /tmp/bayes_mp
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
HEADS = ("bayes_linear", "gp", "pretrained_bayes_linear", "pretrained_gp")
BASELINES = ("pretrained", "finetune", "offset")


def _ensemble_available() -> bool:
    try:
        from matmeta.meta import _ensemble  # noqa: F401
    except ImportError:
        return False
    return True


def _run(model_fn, fams, test, val, args, common: dict, meta_kw: dict, log) -> pd.DataFrame:
    """One split: the heads and baselines in one evaluate, MAML and ANIL in their own runs
    (their ``meta`` rows renamed); returns the tasks table."""
    from matmeta.meta import MetaSettings, MetaTrainSettings
    from matmeta.meta._evaluate import EvaluationSettings, evaluate

    mts = MetaTrainSettings(**args.mts)
    parts = []
    methods = HEADS + BASELINES
    if args.methods:
        methods = tuple(m for m in args.methods.split(",") if m)
    if args.ensemble:
        methods = methods + ("ensemble",)
    runs = [("heads", methods, "maml")] + [(alg, ("meta",), alg) for alg in args.algorithms]
    for label, ms, alg in runs:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate(model_fn(), fams, test=test, val=val,
                           settings=EvaluationSettings(methods=ms, **common),
                           meta_settings=MetaSettings(alg, **meta_kw),
                           meta_train_settings=mts, progress=False, **args.eval_kw)
        tasks = res.tasks.copy()
        if label != "heads":
            tasks["method"] = alg
        parts.append(tasks)
        # partial results survive a time limit
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pd.concat(parts, ignore_index=True).to_csv(out / f"partial_{label}_{args.part}.csv",
                                                   index=False)
        for n in res.notes:
            if "not drawn" not in n:  # the long list of small meta-train families
                log(f"  note ({label}): {n}")
        log(f"  {label}: {time.perf_counter() - t0:.0f} s")
    return pd.concat(parts, ignore_index=True)


def summary(tasks: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per k and method: MAE, CRPS, NLPD, coverages (mean over groups of per-group means) and
    the MAE interval (groups resampled)."""
    from matmeta.meta._evaluate import bootstrap_interval

    rows = []
    for (k, m), sel in tasks.groupby(["k", "method"]):
        g = sel.groupby("group")[["error", "crps", "nlpd", "coverage_50", "coverage_90"]].mean()
        mean, lo, hi = bootstrap_interval(g["error"].to_numpy(), n_boot, 0.9, seed)
        row = {"k": k, "method": m, "mae": mean, "ci_low": lo, "ci_high": hi,
               "n_groups": len(g)}
        for c in ("crps", "nlpd", "coverage_50", "coverage_90"):
            v = g[c].dropna()
            row[c] = float(v.mean()) if len(v) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def ratios(tasks: pd.DataFrame, methods, baselines, n_boot: int = 2000) -> pd.DataFrame:
    """Paired ratio of MAE to the best baseline at each k (best = lowest mean over groups),
    groups resampled together."""
    from matmeta.meta._evaluate import paired_comparison

    out = []
    for k in sorted(set(tasks.k)):
        sel = tasks[tasks.k == k]
        means = sel[sel.method.isin(baselines)].groupby(["method", "group"]).error.mean()
        best = means.groupby(level=0).mean().idxmin()
        for m in methods:
            if m not in set(sel.method):
                continue
            c = paired_comparison(sel, m, best, n_boot)
            c["best_baseline"] = best
            out.append(c)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def report(tasks: pd.DataFrame, args: argparse.Namespace, seconds: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks.to_csv(out / "tasks.csv", index=False)
    table = summary(tasks)
    table.to_csv(out / "summary.csv", index=False)
    base = [b for b in ("finetune", "offset", "pretrained", *args.algorithms)
            if b in set(tasks.method)]
    rat = ratios(tasks, [m for m in HEADS + ("ensemble",) if m in set(tasks.method)], base)
    rat.to_csv(out / "ratios.csv", index=False)
    from matmeta.plots._evaluate import plot_coverage

    plot_coverage(tasks, out / "coverage.png")
    print(f"threads: {torch.get_num_threads()}, wall time {seconds:.0f} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("paired MAE ratio to the best baseline (finetune, offset, pretrained, MAML, ANIL):")
    print(rat.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def mpea(args: argparse.Namespace) -> None:
    from matmeta.io.alloys import MPEA_COLUMNS
    from matmeta.meta._data import load_families
    from matmeta.models._composition import CompositionModel

    t0 = time.perf_counter()
    process = [MPEA_COLUMNS["test_temperature_C"], MPEA_COLUMNS["test_type"],
               MPEA_COLUMNS["processing"]]
    data = load_families(DATA / "alloys" / "mpea_alloys.csv", "composition",
                         target=MPEA_COLUMNS["yield_strength_MPa"],
                         composition_column=MPEA_COLUMNS["composition"], process_columns=process)
    fams = data.families
    eligible = sorted(f.name for f in fams if len(f) > max(args.shots))
    rng = np.random.default_rng(args.seed)
    order = [str(s) for s in rng.permutation(eligible)]
    folds = [order[i::args.folds] for i in range(args.folds)][:args.max_folds]
    print(f"MPEA: {len(fams)} systems, {sum(map(len, fams))} rows, {len(eligible)} test-eligible "
          f"(> {max(args.shots)} rows), {len(folds)} folds; graphs none, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    df = data.table
    parts = []
    for fi, test in enumerate(folds):
        rest = [s for s in order if s not in test]
        val = [str(s) for s in rng.choice(rest, size=4, replace=False)]
        if args.fold is not None and fi != args.fold:
            continue  # after drawing its validation systems, so every fold draws the same
        train_rows = df[~df["family"].isin(set(test) | set(val))]
        elements = sorted({e for fr in train_rows["fractions"] for e in fr})

        def model_fn(elements=elements):
            return CompositionModel(elements=elements, process=data.spec["process"],
                                    hidden=args.hidden, embedding_dim=16)

        print(f"fold {fi}: test {test}, val {val}", flush=True)
        args.part = f"fold{fi}"
        tasks = _run(model_fn, fams, test, val, args, args.common, args.meta_kw,
                     lambda s: print(s, flush=True))
        tasks["fold"] = fi
        parts.append(tasks)
    report(pd.concat(parts, ignore_index=True), args, time.perf_counter() - t0)


def mp(args: argparse.Namespace) -> None:
    from matmeta.graphs import FeaturizerSettings, build_graphs
    from matmeta.io import read_structure_table
    from matmeta.meta import Family
    from matmeta.models._gnn import CGCNN

    t0 = time.perf_counter()
    df = read_structure_table(DATA / "structures" / "mp_binary_elasticity.json.gz",
                              target_column="bulk_modulus_vrh", family_column="family")
    df = df[df["bulk_modulus_vrh"] > 0]
    counts = df["family"].value_counts()
    keep = counts[counts >= args.min_size].index
    df = df[df["family"].isin(keep)]
    rng = np.random.default_rng(args.seed)
    picks = [rng.permutation(np.flatnonzero(df["family"].to_numpy() == f))[:args.per_family]
             for f in sorted(keep)]
    df = df.iloc[np.sort(np.concatenate(picks))]
    feat = FeaturizerSettings(cutoff=5.0, max_neighbors=8, n_basis=24)
    graphs = build_graphs(list(df["structure"]), feat, workers=1, progress=False,
                          cache_dir=args.cache)
    y = torch.tensor(df["bulk_modulus_vrh"].to_numpy(dtype=float), dtype=torch.float32)
    fam_col = df["family"].to_numpy()
    fams = []
    for name in sorted(set(fam_col)):
        idx = [i for i, f in enumerate(fam_col) if f == name]
        fams.append(Family(name, [graphs[i] for i in idx], y[idx], featurizer=feat))
    print(f"MP: {len(fams)} families, {sum(map(len, fams))} compounds, graphs in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    def model_fn():
        return CGCNN(hidden=args.hidden, n_conv=2, n_basis=feat.n_basis)

    args.part = "all"
    tasks = _run(model_fn, fams, args.test.split(","), args.val.split(","), args, args.common,
                 args.meta_kw, lambda s: print(s, flush=True))
    report(tasks, args, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="which", required=True)
    a = sub.add_parser("mpea")
    a.add_argument("--folds", type=int, default=2)
    a.add_argument("--max-folds", type=int, default=2, help="run only the first folds")
    a.add_argument("--fold", type=int, default=None, help="run only this fold (0-based)")
    a.add_argument("--hidden", type=int, default=64)
    a.add_argument("--pretrain-steps", type=int, default=400)
    a.add_argument("--meta-steps", type=int, default=150)
    a.add_argument("--repeats", type=int, default=3)
    m = sub.add_parser("mp")
    m.add_argument("--min-size", type=int, default=60)
    m.add_argument("--per-family", type=int, default=40)
    m.add_argument("--test", default="N,I,H,Te")
    m.add_argument("--val", default="Sn,Cd")
    m.add_argument("--hidden", type=int, default=32)
    m.add_argument("--pretrain-steps", type=int, default=800)
    m.add_argument("--meta-steps", type=int, default=250)
    m.add_argument("--repeats", type=int, default=2)
    m.add_argument("--cache", default=None)
    for q in (a, m):
        q.add_argument("--out", required=True)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--shots", default="5,10")
        q.add_argument("--algorithms", default="maml,anil",
                       help="gradient meta-learners run as extra baselines")
        q.add_argument("--head-steps", type=int, default=10)
        q.add_argument("--no-ensemble", action="store_true")
        q.add_argument("--members", type=int, default=3, help="ensemble members")
        q.add_argument("--outer-lr", type=float, default=3e-3, help="meta-learners' Adam rate")
        q.add_argument("--head-init", default="fresh", choices=("fresh", "pretrained"),
                       help="where the heads' meta-training starts")
        q.add_argument("--methods", default=None,
                       help="comma-separated subset of the heads/baselines run (default all)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.shots = tuple(int(k) for k in args.shots.split(","))
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    args.ensemble = not args.no_ensemble and _ensemble_available()
    if not args.no_ensemble and not args.ensemble:
        print("ensemble: matmeta.meta._ensemble has not landed; left out", flush=True)
    if args.which == "mpea":
        args.common = dict(shots=args.shots, repeats=args.repeats, val_repeats=2,
                           bootstrap=2000, meta_steps=(0, 1, 2, 5), meta_lr_scales=(0.3, 1.0),
                           finetune_steps=(0, 5, 20, 50), finetune_lrs=(0.001, 0.003, 0.01),
                           shrinkage=(0.0, 1.0, 2.0, 5.0, 10.0, 20.0, float("inf")),
                           pretrain_steps=args.pretrain_steps, pretrain_batch=128,
                           head_steps=args.head_steps, error_space="target", seed=args.seed,
                           ensemble_members=args.members, head_init=args.head_init)
        args.meta_kw = dict(inner_steps=2, inner_lr=0.03)
        args.mts = dict(steps=args.meta_steps, meta_batch=8, k_shot=5, q_query=5,
                        outer_lr=args.outer_lr, clip=10.0)
        args.eval_kw = dict(target_transform="log10_standardize", units="MPa")
        mpea(args)
    else:
        args.common = dict(shots=args.shots, repeats=args.repeats, val_repeats=2,
                           bootstrap=2000, meta_steps=(0, 1, 2, 5), meta_lr_scales=(0.3, 1.0),
                           finetune_steps=(0, 1, 3, 10), finetune_lrs=(0.003, 0.01, 0.03),
                           pretrain_steps=args.pretrain_steps, pretrain_batch=32,
                           head_steps=args.head_steps, seed=args.seed,
                           ensemble_members=args.members, head_init=args.head_init)
        args.meta_kw = dict(inner_steps=2, inner_lr=0.03)
        args.mts = dict(steps=args.meta_steps, meta_batch=4, k_shot=5, q_query=10,
                        outer_lr=args.outer_lr, clip=10.0)
        args.eval_kw = dict(target_transform="log10_standardize", units="log10 GPa")
        mp(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
