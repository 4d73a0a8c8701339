"""Does "what to measure next" help? Sequential measurement of held-out tungsten isotherms chosen by
``suggest_jmak_measurement`` (expected posterior sd of ln t_half) against random and evenly spaced
(in log time) choice, in the same run.

Data: ``../shared/datasets/kinetics/tungsten_recrystallization.csv``. For every isotherm with at
least ``--min-points`` points: a JMAK prior over (ln k, ln n) learned (``learn_prior``) on the other
grades' isotherms (leave one grade out); the pool is the isotherm's measured points; every run
starts from the same 2 random points (``--repeats`` seeds) and adds one pool point at a time:

- ``suggest``: the pool point with the smallest expected posterior sd of ln t_half after measuring
  it (closed-form rank-1 update of the Laplace posterior of the MAP fit under the prior);
- ``random``: a random pool point;
- ``even``: the pool point farthest in ln t from the points already measured (a sequential
  evenly spaced design in log time).

After each measurement the MAP fit under the prior is scored against the "truth", the least-squares
fit of all the isotherm's points: the error of ln t_half (|ln t_half - ln t_half_all|, 0.1 = 10%)
and the RMSE of the fitted curve against all measured fractions.

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_suggest_kinetics.py [--repeats 5] [--plot out.png]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from matmeta.bayes import adapt_parametric, learn_prior
from matmeta.fitting import fit_curves
from matmeta.models.parametric import JMAK
from matmeta.suggest._kinetics import kinetics_target, suggest_jmak_measurement

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kinetics"
F64 = torch.float64
STRATEGIES = ("suggest", "random", "even")


def load() -> list[dict]:
    df = pd.read_csv(DATA / "tungsten_recrystallization.csv")
    out = []
    for (grade, temp), d in df.groupby(["dataset_id", "temperature_K"]):
        d = d.sort_values("time_s")
        out.append({"grade": grade, "T": float(temp), "t": d.time_s.to_numpy(float),
                    "f": d.fraction.to_numpy(float)})
    return out


def choose(strategy: str, post, d: dict, chosen: list[int], pool: list[int],
           rng: np.random.Generator) -> int:
    if strategy == "random":
        return int(rng.choice(pool))
    if strategy == "even":
        lt = np.log(np.clip(d["t"], 1e-3, None))
        gaps = [min(abs(lt[i] - lt[j]) for j in chosen) for i in pool]
        return pool[int(np.argmax(gaps))]
    # suggest: candidates are the pool's times (times <= 0 carry no information: f = 0 there)
    times = np.clip(d["t"][pool], 1e-3, None)
    ranked = suggest_jmak_measurement(post, times, target="t_half")
    best_t = float(ranked.iloc[0]["time_s"])
    return pool[int(np.argmin(np.abs(times - best_t)))]


def run(args) -> pd.DataFrame:
    iso = [d for d in load()]
    model = JMAK()
    priors: dict[str, object] = {}
    rows = []
    for d in iso:
        if len(d["t"]) < args.min_points:
            continue
        if d["grade"] not in priors:
            train = [e for e in iso if e["grade"] != d["grade"]]
            priors[d["grade"]] = learn_prior(model, [e["t"] for e in train],
                                             [e["f"] for e in train], max_iter=100).prior
        prior = priors[d["grade"]]
        truth = fit_curves(model, [d["t"]], [d["f"]])
        ln_th_true = float(kinetics_target(model, truth.theta[0], "t_half"))
        f_all = torch.as_tensor(d["f"], dtype=F64)
        x_all = torch.as_tensor(d["t"], dtype=F64)
        budget = min(args.max_points, len(d["t"]) - 1)
        for rep in range(args.repeats):
            rng0 = np.random.default_rng([args.seed, rep, int(d["T"]), len(d["t"])])
            start = sorted(rng0.choice(len(d["t"]), size=2, replace=False).tolist())
            for strategy in STRATEGIES:
                rng = np.random.default_rng([args.seed, rep, 7])
                chosen = list(start)
                while True:
                    post = adapt_parametric(model, prior, d["t"][chosen], d["f"][chosen])
                    ln_th = float(kinetics_target(model, post.theta, "t_half"))
                    f_fit, _ = model.value_and_jacobian(post.theta[None], x_all[None])
                    rmse = float(((f_fit[0] - f_all) ** 2).mean().sqrt())
                    rows.append({"grade": d["grade"], "T": d["T"], "rep": rep,
                                 "strategy": strategy, "n": len(chosen),
                                 "t_half_error": abs(ln_th - ln_th_true), "rmse": rmse})
                    pool = [i for i in range(len(d["t"])) if i not in chosen]
                    if len(chosen) >= budget or not pool:
                        break
                    chosen.append(choose(strategy, post, d, chosen, pool, rng))
    return pd.DataFrame(rows)


def needed(df: pd.DataFrame, col: str, threshold: float) -> pd.Series:
    """Per strategy: median over runs of the first n at which the run's error is below the
    threshold (runs that never reach it count as budget + 1)."""
    out = {}
    for strategy, part in df.groupby("strategy"):
        firsts, reached = [], []
        for _, run_df in part.groupby(["grade", "T", "rep"]):
            ok = run_df[run_df[col] <= threshold]
            reached.append(len(ok) > 0)
            firsts.append(int(ok["n"].min()) if len(ok) else int(run_df["n"].max()) + 1)
        out[strategy] = (float(np.median(firsts)), float(np.mean(firsts)),
                         float(np.mean(reached)))
    return pd.Series(out)


def plot(df: pd.DataFrame, path: str) -> None:
    from matplotlib.figure import Figure

    from matmeta.plots._common import save_figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, col, label in ((axes[0], "t_half_error", "|ln t_half - ln t_half(all points)|"),
                           (axes[1], "rmse", "RMSE of the fit vs all points (fraction)")):
        for c, strategy in enumerate(STRATEGIES):
            g = df[df.strategy == strategy].groupby("n")[col]
            ax.plot(g.mean().index, g.mean().to_numpy(), "o-", color=f"C{c}", label=strategy)
        ax.set_xlabel("measurements")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle("tungsten isotherms, held-out grade prior: error vs measurements", fontsize=9)
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-points", type=int, default=8)
    ap.add_argument("--max-points", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not (DATA / "tungsten_recrystallization.csv").exists():
        print(f"skipped: {DATA} not found")
        return
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, float64, CPU; "
          f"repeats = {args.repeats}, isotherms with >= {args.min_points} points, up to "
          f"{args.max_points} measurements")
    t0 = time.perf_counter()
    df = run(args)
    if args.out:
        df.to_csv(args.out, index=False)
    runs = df.groupby(["grade", "T", "rep"]).ngroups
    print(f"{df.groupby(['grade', 'T']).ngroups} isotherms, {runs} runs per strategy")
    for col in ("t_half_error", "rmse"):
        table = df.groupby(["n", "strategy"])[col].mean().unstack()[list(STRATEGIES)]
        print(f"\nmean {col} by number of measurements")
        print(table.round(3).to_string())
        med = df.groupby(["n", "strategy"])[col].median().unstack()[list(STRATEGIES)]
        print(f"median {col}")
        print(med.round(3).to_string())
    for col, thr in (("t_half_error", math.log(1.2)), ("t_half_error", math.log(1.1)),
                     ("rmse", 0.08), ("rmse", 0.06)):
        s = needed(df, col, thr)
        print(f"\nmeasurements to reach {col} <= {thr:.3f}: (median, mean, share reached)")
        for k in STRATEGIES:
            print(f"  {k:<8} median {s[k][0]:.1f}  mean {s[k][1]:.2f}  reached {s[k][2]:.2f}")
    if args.plot:
        plot(df, args.plot)
        print(f"\nplot: {args.plot}")
    print(f"\nwall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
