"""Closed-form Bayesian heads: exact leave-one-out against brute-force refits, and the implicit
meta-gradient against differentiating through every optimiser step, in the same process.

1. Leave-one-out (K support points, Q = 20 queries, d = 16 features): the closed-form estimator
   (``posterior.loo()`` and ``posterior.loo_query_change(query)``: one K x K inverse) against
   (a) K refits with the hyperparameters held fixed (the same quantity, computed by brute force) and
   (b) K full refits that re-optimise the hyperparameters (what a user without the closed form
   would run; timed on 10 deletions and scaled by K / 10). Agreement with (a) is printed as the
   largest absolute difference over all K deletions.
2. Meta-gradient of the query NLPD with respect to the support and query features: implicit
   (one extra Newton step at the optimum) against unrolled (backpropagation through all steps),
   timed forward plus backward, with the relative difference of the two gradients.

3. (``--kinetics``) A first held-out calibration check on real data, not the issue's final
   evaluation: tungsten recrystallisation (../shared/datasets), one JMAK law per isotherm with a
   Gaussian prior over (ln k, ln n) learned by Laplace-EM on the isotherms of the other grades
   (leave one grade out); each held-out isotherm is adapted (MAP + Laplace) from m = 2 or 3 random
   points (5 draws) and its remaining points are scored: CRPS, NLPD, 50% and 90% coverage, with
   the predictive by the delta method and by 2,000 draws from the Laplace posterior.

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_bayes.py [--repeats 3] [--kinetics]
"""

from __future__ import annotations

import argparse
import time

import torch

from matmeta.bayes import fit_bayes_linear, fit_gp
from matmeta.bayes._gp import GPPosterior

F64 = torch.float64


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def task(k: int, d: int = 16, q: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(k, d, dtype=F64, generator=gen)
    w = torch.randn(d, dtype=F64, generator=gen) / d**0.5
    y = torch.sin(X @ w) + 0.1 * torch.randn(k, dtype=F64, generator=gen)
    Q = torch.randn(q, d, dtype=F64, generator=gen)
    yq = torch.sin(Q @ w) + 0.1 * torch.randn(q, dtype=F64, generator=gen)
    return X, y, Q, yq


def loo_closed(post, Q):
    return post.loo(), post.loo_query_change(Q)


def loo_fixed_linear(post, X, y, Q):
    k = X.shape[0]
    out = []
    for i in range(k):
        keep = torch.arange(k) != i
        p = fit_bayes_linear(
            X[keep], y[keep], alpha=post.alpha, beta=1.0 / post.noise_var, bias_var=post.bias_var
        )
        out.append((p.predict(X[i : i + 1]), p.predict(Q)))
    return out


def loo_fixed_gp(post, X, y, Q):
    k = X.shape[0]
    out = []
    for i in range(k):
        keep = torch.arange(k) != i
        p = GPPosterior(
            X[keep],
            y[keep],
            post.hyperparameters,
            post.kernel,
            post.linear,
            post.bias_var,
            post.log_marginal_likelihood,
            post.jitter,
        )
        out.append((p.predict(X[i : i + 1]), p.predict(Q)))
    return out


def loo_refit(fit, X, y, Q, subset: int):
    k = X.shape[0]
    out = []
    for i in range(min(k, subset)):
        keep = torch.arange(k) != i
        p = fit(X[keep], y[keep])
        out.append((p.predict(X[i : i + 1]), p.predict(Q)))
    return out


def max_diff(post, brute, Q):
    (lm, ls), (dm, dv) = post.loo(), post.loo_query_change(Q)
    mq, sq = post.predict(Q)
    err = 0.0
    for i, ((mi, si), (mqi, sqi)) in enumerate(brute):
        err = max(
            err,
            float((lm[i] - mi[0]).abs()),
            float((ls[i] - si[0]).abs()),
            float((mq + dm[i] - mqi).abs().max()),
            float((sq**2 + dv[i] - sqi**2).abs().max()),
        )
    return err


def bench_loo(repeats: int) -> None:
    print("\n1. leave-one-out, d = 16, Q = 20 (seconds per task, best of repeats)")
    print(
        f"{'head':<8}{'K':>5}{'closed':>10}{'fixed refits':>14}{'ratio':>8}"
        f"{'full refits':>13}{'ratio':>8}{'max |diff|':>12}"
    )
    for name, fit, fixed in (
        ("linear", fit_bayes_linear, loo_fixed_linear),
        ("gp", fit_gp, loo_fixed_gp),
    ):
        for k in (10, 50, 200):
            X, y, Q, _ = task(k)
            post = fit(X, y)
            t_closed = best_of(lambda post=post, Q=Q: loo_closed(post, Q), repeats)
            t_fixed = best_of(
                lambda post=post, X=X, y=y, Q=Q, fixed=fixed: fixed(post, X, y, Q), repeats
            )
            m = min(k, 10)
            t_full = (
                best_of(lambda fit=fit, X=X, y=y, Q=Q, m=m: loo_refit(fit, X, y, Q, m), 1) * k / m
            )
            err = max_diff(post, fixed(post, X, y, Q), Q)
            print(
                f"{name:<8}{k:>5}{t_closed:>10.4f}{t_fixed:>14.4f}{t_fixed / t_closed:>8.0f}x"
                f"{t_full:>12.3f}{t_full / t_closed:>8.0f}x{err:>12.1e}"
            )


def bench_gradient(repeats: int) -> None:
    print("\n2. meta-gradient of the query NLPD (forward + backward, seconds, best of repeats)")
    print(
        f"{'head':<8}{'K':>5}{'steps':>6}{'implicit':>10}{'unrolled':>10}{'ratio':>8}"
        f"{'rel. diff':>11}"
    )
    for name, fit, steps in (("linear", fit_bayes_linear, 12), ("gp", fit_gp, 15)):
        for k in (10, 50):
            X, y, Q, yq = task(k, seed=1)

            def run(mode, X=X, y=y, Q=Q, yq=yq, fit=fit, steps=steps):
                Xg, Qg = X.clone().requires_grad_(True), Q.clone().requires_grad_(True)
                mean, std = fit(Xg, y, steps=steps, differentiate=mode).predict(Qg)
                loss = -torch.distributions.Normal(mean, std).log_prob(yq).mean()
                return torch.autograd.grad(loss, (Xg, Qg))

            t_imp = best_of(lambda run=run: run("implicit"), repeats)
            t_unr = best_of(lambda run=run: run("unrolled"), repeats)
            gi, gu = run("implicit"), run("unrolled")
            rel = max(float((a - b).norm() / b.norm()) for a, b in zip(gi, gu, strict=True))
            print(
                f"{name:<8}{k:>5}{steps:>6}{t_imp:>10.4f}{t_unr:>10.4f}{t_unr / t_imp:>7.1f}x"
                f"{rel:>11.1e}"
            )


def bench_kinetics(draws: int = 5, samples: int = 2000) -> None:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from matmeta.bayes import adapt_parametric, learn_prior, score_predictions
    from matmeta.models.parametric import JMAK

    path = (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "datasets"
        / "kinetics"
        / "tungsten_recrystallization.csv"
    )
    if not path.exists():
        print(f"\n3. skipped: {path} not found")
        return
    df = pd.read_csv(path)
    iso = [
        (g, d.sort_values("time_s")) for (g, _), d in df.groupby(["dataset_id", "temperature_K"])
    ]
    model = JMAK()
    print(
        f"\n3. tungsten, leave one grade out ({len(iso)} isotherms, "
        f"{df.dataset_id.nunique()} grades), JMAK per isotherm, prior over (ln k, ln n);"
        f"\n   predictive by the delta method and by {samples} Laplace-posterior draws"
    )
    methods = ("delta", "draws")
    for m_pts in (2, 3):
        rng = np.random.default_rng(m_pts)
        print(f"\n   m = {m_pts} points per isotherm, {draws} random draws of them")
        print(
            f"   {'held-out grade':<28}{'crps':>7}{'cov90':>7}   (delta | draws){'crps':>7}"
            f"{'cov90':>7}"
        )
        pooled = {k: ([], [], []) for k in methods}
        for held in sorted(df.dataset_id.unique()):
            train = [d for g, d in iso if g != held]
            prior = learn_prior(
                model,
                [d.time_s.values for d in train],
                [d.fraction.values for d in train],
                max_iter=200,
            ).prior
            parts = {k: ([], [], []) for k in methods}
            for g, d in iso:
                if g != held:
                    continue
                for rep in range(draws):
                    idx = rng.choice(len(d), size=min(m_pts, len(d) - 1), replace=False)
                    rest = np.setdiff1d(np.arange(len(d)), idx)
                    post = adapt_parametric(
                        model, prior, d.time_s.values[idx], d.fraction.values[idx]
                    )
                    q = torch.tensor(d.time_s.values[rest])
                    yq = torch.tensor(d.fraction.values[rest])
                    for k, (mean, std) in (
                        ("delta", post.predict(q)),
                        ("draws", post.predict(q, samples=samples, seed=rep)),
                    ):
                        for lst, v in zip(parts[k], (mean, std, yq), strict=True):
                            lst.append(v)
            row = []
            for k in methods:
                sc = score_predictions(*(torch.cat(p) for p in parts[k]))
                row += [sc["crps"], sc["coverage_90"]]
                for lst, p in zip(pooled[k], parts[k], strict=True):
                    lst.extend(p)
            print(f"   {held:<28}{row[0]:>7.3f}{row[1]:>7.2f}{'':>18}{row[2]:>7.3f}{row[3]:>7.2f}")
        for k in methods:
            sc = score_predictions(*(torch.cat(p) for p in pooled[k]))
            print(f"   pooled, {k:<6}" + "  ".join(f"{n} {v:.3f}" for n, v in sc.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinetics", action="store_true", help="add the tungsten check")
    parser.add_argument("--only-kinetics", action="store_true", help="run only the tungsten check")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, float64, CPU")
    if not args.only_kinetics:
        bench_loo(args.repeats)
        bench_gradient(args.repeats)
    if args.kinetics or args.only_kinetics:
        bench_kinetics()


if __name__ == "__main__":
    main()
