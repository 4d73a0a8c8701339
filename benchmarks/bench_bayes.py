"""Closed-form Bayesian heads: exact leave-one-out against brute-force refits, and the implicit
meta-gradient against differentiating through every optimiser step, in the same process.

1. Leave-one-out (K support points, Q = 20 queries, d = 16 features): the closed-form estimator
   (``posterior.loo()`` and ``posterior.loo_query_change(query)``: one K x K inverse) against
   (a) K refits with the hyperparameters held fixed (the same quantity, computed by brute force) and
   (b) K full refits that re-optimise the hyperparameters (what a user without the closed form
   would run). Agreement with (a) is printed as the largest absolute difference.
2. Meta-gradient of the query NLPD with respect to the support and query features: implicit
   (one extra Newton step at the optimum) against unrolled (backpropagation through all steps),
   timed forward plus backward, with the relative difference of the two gradients.

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_bayes.py [--repeats 3]
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


def loo_refit(fit, X, y, Q):
    k = X.shape[0]
    out = []
    for i in range(k):
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
            t_full = best_of(lambda fit=fit, X=X, y=y, Q=Q: loo_refit(fit, X, y, Q), 1)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads = {torch.get_num_threads()}, float64, CPU")
    bench_loo(args.repeats)
    bench_gradient(args.repeats)


if __name__ == "__main__":
    main()
