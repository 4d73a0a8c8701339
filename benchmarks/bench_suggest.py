"""Does `suggest` help? Sequential measurements on held-out MPEA alloy systems (yield strength).

Protocol: the element systems with at least ``--min-rows`` yield-strength rows in
../shared/datasets/alloys/mpea_alloys.csv are the test systems; they are split into ``--folds``
folds. Per fold, a CompositionModel is pretrained on every row of the other systems (minus
``--val`` validation systems that choose the pretraining step, as in bench_composition.py); its
features and output layer are frozen. On each test system (repeated ``--repeats`` times from
different random starts of ``--start`` rows), measurements are added one at a time from the
system's remaining rows (the pool), chosen by each strategy; after each addition the Bayesian
linear head (prior mean = the pretrained output layer, hyperparameters by evidence) is refitted
and the MAE (MPa) of its predictions is recorded on all the system's rows (a fixed set; the head
does not interpolate its support, so measured rows still count), on the rows not yet measured
(which rows remain depends on the strategy: measuring the strongest alloys removes the largest
errors in MPa), and on the system's true top-20% rows (the region a user maximising strength
cares about; a fixed set).

Strategies, all on the same starts:
  random           a uniformly random pool row
  maxstd           the pool row with the largest predictive std
  disagreement     the largest variance among 16 heads refitted to bootstrap resamples of the
                   support (no ensemble: the ensemble contract's members need a meta-trained
                   ensemble per fold)
  variance         the largest expected reduction of the summed predictive variance over all
                   pool rows (closed form, matmeta.suggest)
  variance top20   the same over the pool rows predicted in the top 20% (goal max)

Intervals resample systems (per-system errors averaged over repeats), 2000 draws.

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_suggest.py                # ~5-10 min, 1 thread
    OMP_NUM_THREADS=1 python benchmarks/bench_suggest.py --head validation
    OMP_NUM_THREADS=1 python benchmarks/bench_suggest.py --dataset mp --steps 10

With ``--dataset mp`` the same sequence runs on MP binary compounds (log10 bulk modulus, MAE in
log10 GPa): a CGCNN (hidden 32, 2 convolutions) pretrained on the anion families with >= 60
compounds except the held-out (--mp-test) and validation (--mp-val) ones, --per-family compounds
of each; the pool is a held-out family's compounds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_composition import DATA, PROCESS, TARGET, pretrain  # noqa: E402

from matmeta.bayes import fit_bayes_linear, linear_log_evidence  # noqa: E402
from matmeta.io.alloys import MPEA_COLUMNS, read_alloy_table  # noqa: E402
from matmeta.models._composition import (  # noqa: E402
    CompositionModel,
    UnknownElementWarning,
    encode_compositions,
)
from matmeta.models._transforms import TargetTransform  # noqa: E402
from matmeta.suggest import (  # noqa: E402
    bootstrap_head_predictions,
    linear_readout,
    suggest_from_posterior,
)

STRATEGIES = {  # name -> (strategy, region)
    "random": ("random", "all"),
    "maxstd": ("maxstd", "all"),
    "disagreement": ("disagreement", "all"),
    "variance": ("variance", "all"),
    "variance top20": ("variance", "top:0.2"),
}


def validation_hyperparameters(systems: list[tuple[torch.Tensor, torch.Tensor]],
                               readout: list[torch.Tensor]) -> dict[str, float]:
    """Head hyperparameters (alpha, beta, intercept variance) maximising the summed log
    evidence of the validation systems (empirical Bayes across families), on a grid."""
    grid_a = torch.linspace(-4.0, 8.0, 25)
    grid_b = torch.linspace(-2.0, 8.0, 21)
    grid_v = torch.linspace(-6.0, 2.0, 9)
    best, arg = -math.inf, None
    for la in grid_a:
        for lb in grid_b:
            for lv in grid_v:
                total = 0.0
                for (phi, y), m0 in zip(systems, readout, strict=True):
                    total += float(linear_log_evidence(phi, y, la.exp(), lb.exp(),
                                                       bias_var=lv.exp(), prior_mean=m0))
                if total > best:
                    best, arg = total, (float(la.exp()), float(lb.exp()), float(lv.exp()))
    return {"alpha": arg[0], "beta": arg[1], "bias_var": arg[2]}


def run_sequence(phi, y, report, y_report, readout, start, steps, strategy, region, region_rows,
                 seed, hyper=None, to_units=None):
    """Errors (steps + 1,) on the unmeasured rows and on the region, one strategy, one start.

    ``report`` maps the head's space to the units errors are reported in (``y_report``)."""
    measured = list(start)
    n = phi.shape[0]
    errs, all_errs, region_errs = [], [], []
    for t in range(steps + 1):
        post = fit_bayes_linear(phi[measured], y[measured], prior_mean=readout,
                                differentiate="none", **(hyper or {}))
        pred = report(post.predict(phi)[0])
        rest = np.setdiff1d(np.arange(n), measured)
        errs.append(float((pred[rest] - y_report[rest]).abs().mean()))
        all_errs.append(float((pred - y_report).abs().mean()))
        region_errs.append(float((pred[region_rows] - y_report[region_rows]).abs().mean()))
        if t == steps:
            break
        members = None
        if strategy == "disagreement":
            members = bootstrap_head_predictions(phi[measured], y[measured], phi[rest], post,
                                                 heads=16, seed=seed * 1000 + t)
        s = suggest_from_posterior(post, phi[rest], strategy=strategy, goal="max",
                                   region=region, batch=1, member_predictions=members,
                                   to_units=to_units, seed=seed * 1000 + t)
        measured.append(int(rest[s.chosen[0]]))
    return errs, all_errs, region_errs


def family_records(phi, y, y_report, readout, args, report, to_units, hyper, seed_key,
                   **labels) -> list[dict]:
    """Every strategy from the same ``--repeats`` random starts on one held-out family."""
    n = phi.shape[0]
    region_rows = np.argsort(-y_report.numpy(), kind="stable")[:max(1, math.ceil(0.2 * n))]
    steps = min(args.steps, n - args.start - 1)
    srng = np.random.default_rng(seed_key)
    out = []
    for r in range(args.repeats):
        start = [int(i) for i in srng.choice(n, args.start, replace=False)]
        for name, (strategy, region) in STRATEGIES.items():
            errs = run_sequence(phi, y, report, y_report, readout, start, steps, strategy,
                                region, region_rows, seed=r, hyper=hyper, to_units=to_units)
            for t, (e, ea, re) in enumerate(zip(*errs, strict=True)):
                out.append({**labels, "rows": n, "repeat": r, "strategy": name, "added": t,
                            "measurements": args.start + t, "mae": e, "mae_all": ea,
                            "region_mae": re})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--val", type=int, default=4, help="validation systems per fold")
    ap.add_argument("--min-rows", type=int, default=None,
                    help="rows a test family needs [default: 12 for mpea, 60 for mp]")
    ap.add_argument("--start", type=int, default=3, help="random measurements to start from")
    ap.add_argument("--steps", type=int, default=6, help="measurements added one at a time")
    ap.add_argument("--repeats", type=int, default=10, help="random starts per system")
    ap.add_argument("--pretrain-steps", type=int, default=800)
    ap.add_argument("--hidden", type=int, default=None,
                    help="hidden width [default: 64 for mpea, 32 for mp]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--head", default="evidence", choices=["evidence", "validation"],
                    help="head hyperparameters: by each support set's evidence, or fixed per fold "
                         "by the summed evidence of the validation systems (empirical Bayes)")
    ap.add_argument("--plot", default=None, help="write the error curves here (PNG)")
    ap.add_argument("--csv", default=None, help="write the per-system curves here")
    ap.add_argument("--from-csv", default=None,
                    help="summarise the curves a previous run wrote with --csv (no training)")
    ap.add_argument("--dataset", default="mpea", choices=["mpea", "mp"],
                    help="mpea: alloy yield strength (MPa); mp: MP binary bulk modulus with a "
                         "CGCNN (log10 GPa), held-out anion families")
    ap.add_argument("--mp-test", default="N,I,H,Te,Se,P,Br,As",
                    help="mp: held-out anion families (pool: --per-family of each)")
    ap.add_argument("--mp-val", default="Sn,Cd", help="mp: validation families (pretraining)")
    ap.add_argument("--per-family", type=int, default=40, help="mp: compounds per family")
    args = ap.parse_args()
    mp = args.dataset == "mp"
    args.min_rows = args.min_rows or (60 if mp else 12)
    args.hidden = args.hidden or (32 if mp else 64)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.from_csv:
        records = pd.read_csv(args.from_csv).to_dict("records")
        units = "log10 GPa" if mp else "MPa"
        args.start = int(records[0]["measurements"] - records[0]["added"])
        args.csv = None
    elif mp:
        records, units = mp_records(args, t0), "log10 GPa"
    else:
        records, units = mpea_records(args, t0), "MPa"
    summarise(records, args, units, t0)


def mpea_records(args: argparse.Namespace, t0: float) -> list[dict]:
    df = read_alloy_table(DATA, MPEA_COLUMNS["composition"], TARGET, process_columns=PROCESS,
                          drop_missing_target=True)
    counts = df["family"].value_counts()
    eligible = sorted(counts[counts >= args.min_rows].index)
    max_elements = int(df["n_elements"].max())
    print(f"MPEA yield strength: {len(df)} rows, {len(eligible)} test systems with >= "
          f"{args.min_rows} rows; start {args.start} random rows, add {args.steps}, "
          f"{args.repeats} starts per system; head hyperparameters: {args.head}; "
          f"threads={torch.get_num_threads()}", flush=True)

    rng = np.random.default_rng(args.seed)
    order = [str(s) for s in rng.permutation(eligible)]
    folds = [order[i::args.folds] for i in range(args.folds)]
    records = []
    for f, test_systems in enumerate(folds):
        rest = [s for s in order if s not in test_systems]
        val_systems = [str(s) for s in rng.choice(rest, size=args.val, replace=False)]
        held = set(test_systems) | set(val_systems)
        train = df[~df["family"].isin(held)].reset_index(drop=True)
        model = CompositionModel.for_table(train, hidden=args.hidden, embedding_dim=16)
        tt = TargetTransform.fit(train[TARGET].to_numpy(), kind="log10_standardize")
        x_train = encode_compositions(train, model, max_elements=max_elements)
        val_rows = df[df["family"].isin(val_systems)].reset_index(drop=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnknownElementWarning)
            x_val = encode_compositions(val_rows, model, max_elements=max_elements)
        params, best_step = pretrain(
            model, x_train, tt.forward(torch.tensor(train[TARGET].to_numpy(),
                                                    dtype=torch.float32)),
            args.pretrain_steps, args.seed * 100 + f,
            (x_val, torch.tensor(val_rows[TARGET].to_numpy())), tt)
        hyper = None
        if args.head == "validation":
            val_sets, val_readouts = [], []
            for system in val_systems:
                rows = df[df["family"] == system].reset_index(drop=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UnknownElementWarning)
                    x = encode_compositions(rows, model, max_elements=max_elements)
                with torch.no_grad():
                    val_sets.append((model.features(params, x).double(),
                                     tt.forward(torch.tensor(rows[TARGET].to_numpy(),
                                                             dtype=torch.float64))))
                val_readouts.append(linear_readout(model, params, x).double())
            hyper = validation_hyperparameters(val_sets, val_readouts)
            print(f"  fold {f}: head hyperparameters from validation systems {hyper}", flush=True)
        for system in test_systems:
            rows = df[df["family"] == system].reset_index(drop=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnknownElementWarning)
                x = encode_compositions(rows, model, max_elements=max_elements)
            with torch.no_grad():
                phi = model.features(params, x).double()
            readout = linear_readout(model, params, x).double()
            y_mpa = torch.tensor(rows[TARGET].to_numpy(), dtype=torch.float64)
            records += family_records(phi, tt.forward(y_mpa), y_mpa, readout, args,
                                      tt.inverse, tt.inverse, hyper,
                                      [args.seed, f, len(records)], fold=f, system=system)
        print(f"  fold {f}: {len(train)} training rows, pretraining step {best_step}, "
              f"systems {test_systems}  [{time.perf_counter() - t0:.0f} s]", flush=True)

    return records


def mp_records(args: argparse.Namespace, t0: float) -> list[dict]:
    """One CGCNN pretrained on the other anion families (features and output layer frozen)."""
    from matmeta.graphs import FeaturizerSettings, build_graphs, collate
    from matmeta.io import read_structure_table
    from matmeta.meta import Family
    from matmeta.meta import pretrain as pretrain_pooled
    from matmeta.models._gnn import CGCNN

    path = DATA.parents[1] / "structures" / "mp_binary_elasticity.json.gz"
    df = read_structure_table(path, target_column="bulk_modulus_vrh", family_column="family")
    df = df[df["bulk_modulus_vrh"] > 0]
    counts = df["family"].value_counts()
    keep = sorted(counts[counts >= args.min_rows].index)
    test = [t for t in args.mp_test.split(",") if t in keep]
    val = [t for t in args.mp_val.split(",") if t in keep]
    rng = np.random.default_rng(args.seed)
    picks = [rng.permutation(np.flatnonzero(df["family"].to_numpy() == f))[:args.per_family]
             for f in keep]
    df = df.iloc[np.sort(np.concatenate(picks))].reset_index(drop=True)
    feat = FeaturizerSettings(cutoff=5.0, max_neighbors=8, n_basis=24)
    graphs = build_graphs(list(df["structure"]), feat, workers=1, progress=False)
    k_gpa = torch.tensor(df["bulk_modulus_vrh"].to_numpy(dtype=float), dtype=torch.float64)
    fam_col = df["family"].to_numpy()
    train_rows = ~np.isin(fam_col, test + val)
    tt = TargetTransform.fit(k_gpa[torch.from_numpy(train_rows)], kind="log10_standardize")
    y_all = tt.forward(k_gpa)

    def family(name: str) -> Family:
        idx = np.flatnonzero(fam_col == name)
        return Family(name, [graphs[i] for i in idx], y_all[idx].float(), featurizer=feat)

    train_f = [family(f) for f in keep if f not in test + val]
    model = CGCNN(hidden=args.hidden, n_conv=2, n_basis=feat.n_basis)
    print(f"MP bulk modulus: {len(df)} compounds in {len(keep)} anion families (<= "
          f"{args.per_family} each), test {test}, val {val}; start {args.start}, add "
          f"{args.steps}, {args.repeats} starts per family; head hyperparameters: {args.head}; "
          f"threads={torch.get_num_threads()}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    params = pretrain_pooled(model, train_f, [family(f) for f in val],
                             steps=args.pretrain_steps, lr=3e-3, batch_size=32, seed=args.seed)
    print(f"  pretrained on {sum(len(f) for f in train_f)} compounds  "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)

    def encode(name: str):
        idx = np.flatnonzero(fam_col == name)
        x = collate([graphs[i] for i in idx], feat)
        with torch.no_grad():
            phi = model.features(params, x).double()
        return phi, linear_readout(model, params, x).double(), k_gpa[idx]

    hyper = None
    if args.head == "validation":
        sets = [encode(f) for f in val]
        hyper = validation_hyperparameters([(p, tt.forward(k)) for p, _, k in sets],
                                           [r for _, r, _ in sets])
        print(f"  head hyperparameters from validation families {hyper}", flush=True)
    records: list[dict] = []
    for name in test:
        phi, readout, k = encode(name)
        records += family_records(phi, tt.forward(k), tt.to_log_space(tt.forward(k)), readout,
                                  args, tt.to_log_space, tt.inverse, hyper,
                                  [args.seed, len(records)], fold=0, system=name)
        print(f"  {name} done  [{time.perf_counter() - t0:.0f} s]", flush=True)
    return records


def _crossing(curve: np.ndarray, level: float, start: int) -> float | None:
    """The (interpolated) number of measurements at which ``curve`` first reaches ``level``."""
    for t in range(len(curve)):
        if curve[t] <= level + 1e-12:
            if t == 0:
                return float(start)
            frac = (curve[t - 1] - level) / (curve[t - 1] - curve[t])
            return start + t - 1 + float(frac)
    return None


def summarise(records: list[dict], args: argparse.Namespace, units: str, t0: float) -> None:
    res = pd.DataFrame(records)
    if args.csv:
        res.to_csv(args.csv, index=False)
    per_system = res.groupby(["strategy", "system", "added"], sort=False)[
        ["mae", "mae_all", "region_mae"]].mean().reset_index()
    systems = sorted(res["system"].unique())
    full = per_system.groupby(["strategy", "system"])["added"].max()
    steps = int(full.min())  # every system reaches this many additions
    print(f"\n{len(systems)} systems; curves to {steps} added measurements (all systems)")
    boot = np.random.default_rng(12345).integers(0, len(systems), (2000, len(systems)))

    def table(metric: str) -> pd.DataFrame:
        return (per_system[per_system["added"] <= steps]
                .pivot_table(index=["strategy", "system"], columns="added", values=metric)
                .reindex(columns=range(steps + 1)))

    curves_out = []
    for metric, label in (("mae_all", "MAE on all rows of the family (a fixed set)"),
                          ("mae", "MAE on unmeasured rows"),
                          ("region_mae", "MAE on the true top-20% rows")):
        tab = table(metric)
        print(f"\n{label} ({units}), mean over systems of the mean over starts; "
              "measurements = start + added")
        fmt = "8.1f" if units == "MPa" else "8.4f"
        print(f"{'strategy':<16}" + "".join(f"{args.start + t:>8d}" for t in range(steps + 1))
              + "   mean(+1..)/random [95% interval]   wins")
        rand = np.stack([tab.loc[("random", s)].to_numpy() for s in systems])
        for name in STRATEGIES:
            vals = np.stack([tab.loc[(name, s)].to_numpy() for s in systems])
            mean_curve = vals.mean(0)
            lo, hi = np.percentile(vals[boot].mean(1), [2.5, 97.5], axis=0)
            step_ratio = vals.mean(0) / rand.mean(0)
            rlo_t, rhi_t = np.percentile(vals[boot].mean(1) / rand[boot].mean(1), [2.5, 97.5],
                                         axis=0)
            for t in range(steps + 1):
                curves_out.append({"metric": metric, "strategy": name,
                                   "measurements": args.start + t, "error": mean_curve[t],
                                   "ci_low": lo[t], "ci_high": hi[t], "ratio": step_ratio[t],
                                   "ratio_low": rlo_t[t], "ratio_high": rhi_t[t]})
            area = vals[:, 1:].mean(1)
            area_r = rand[:, 1:].mean(1)
            ratio = area.mean() / area_r.mean()
            ratios = area[boot].mean(1) / area_r[boot].mean(1)
            rlo, rhi = np.percentile(ratios, [2.5, 97.5])
            wins = int((area < area_r - 1e-9).sum())
            print(f"{name:<16}" + "".join(f"{v:{fmt}}" for v in mean_curve)
                  + f"   {ratio:.3f} [{rlo:.3f}, {rhi:.3f}]   {wins}/{len(systems)}")
        # measurements needed: where each strategy's mean curve first falls to the error
        # random's mean curve has at m measurements (linear interpolation between counts)
        counts = [m for m in (args.start + steps // 2, args.start + steps) if m > args.start]
        rand_curve = rand.mean(0)
        print("measurements needed (mean curve, interpolated) to reach random's error at "
              + " / ".join(f"{m}" for m in counts) + " measurements:")
        for name in STRATEGIES:
            curve = np.stack([tab.loc[(name, s)].to_numpy() for s in systems]).mean(0)
            needed = [_crossing(curve, rand_curve[m - args.start], args.start) for m in counts]
            print(f"  {name:<16} " + " / ".join("   n/a" if v is None else f"{v:6.2f}"
                                               for v in needed))
    if args.plot:
        from matmeta.plots._suggest import plot_suggestion_curves

        cur = pd.DataFrame(curves_out)
        what = ("MPEA yield strength" if args.dataset == "mpea" else "MP bulk modulus (CGCNN)")
        plot_suggestion_curves(cur[cur["metric"] == "mae_all"], args.plot, units=units,
                               title=f"{what}, {len(systems)} held-out families: MAE on all "
                                     "rows of the family, and its ratio to random's (95% "
                                     "intervals resample families)")
        cur.to_csv(Path(args.plot).with_name(Path(args.plot).stem + "_curves.csv"), index=False)
    print(f"\ntotal time {time.perf_counter() - t0:.1f} s, threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
