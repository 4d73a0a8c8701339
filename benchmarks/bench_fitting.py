"""Batched JMAK fitting against a Python loop of scipy.optimize.curve_fit, in the same process.

1,000 noisy synthetic JMAK curves of 5 to 20 points (k over four decades, n from 0.7 to 4,
times log-spaced around each curve's half time, Gaussian noise of std 0.02). Both fitters work
in (ln k, ln n) with the same overflow-safe curve and start from the same kind of sensible guess
(an Avrami-plot regression); matmeta additionally tries two more starts per curve, inside its
timing. Accuracy: RMSE of each fitted curve against the noise-free truth on a dense grid, and
the data RMSE of the two fits on each curve.

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_fitting.py [--curves 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

from matmeta.fitting import fit_curves
from matmeta.models.parametric import JMAK

LN_LN2 = np.log(np.log(2.0))


def make_curves(n_curves: int, seed: int = 0, noise: float = 0.02):
    rng = np.random.default_rng(seed)
    ln_k = rng.uniform(np.log(1e-6), np.log(1e-2), n_curves)
    n = rng.uniform(0.7, 4.0, n_curves)
    t_half = np.exp(LN_LN2 / n - ln_k)
    times, fracs, truth = [], [], []
    for i in range(n_curves):
        m = int(rng.integers(5, 21))
        t = np.sort(t_half[i] * np.exp(rng.uniform(-2.0, 2.0, m)))
        f = -np.expm1(-np.exp(n[i] * (ln_k[i] + np.log(t))))
        times.append(t)
        fracs.append(f + rng.normal(0.0, noise, m))
        truth.append((ln_k[i], np.log(n[i])))
    return times, fracs, np.array(truth)


def curve_np(t, ln_k, ln_n):
    n = np.exp(ln_n)
    z = np.minimum(n * (ln_k + np.log(np.where(t > 0, t, 1.0))), 4.0)
    return np.where(t > 0, -np.expm1(-np.exp(z)), 0.0)


def avrami_guess(t, f):
    """The textbook start: a straight line through ln(-ln(1-f)) against ln t."""
    sel = (f > 0.02) & (f < 0.98) & (t > 0)
    if sel.sum() >= 2:
        slope, icpt = np.polyfit(np.log(t[sel]), np.log(-np.log1p(-f[sel])), 1)
        if slope > 0.05:
            n = float(np.clip(slope, 0.2, 12))
            return [icpt / n, np.log(n)]
    t_half = float(np.median(t))
    return [LN_LN2 / 2.0 - np.log(t_half), np.log(2.0)]


def scipy_loop(times, fracs):
    from scipy.optimize import curve_fit

    out, fails = [], 0
    for t, f in zip(times, fracs, strict=False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = curve_fit(curve_np, t, f, p0=avrami_guess(t, f), maxfev=2000)
        except Exception:  # noqa: BLE001 - count every failure
            p, fails = np.array([np.nan, np.nan]), fails + 1
        out.append(p)
    return np.array(out), fails


def truth_rmse(theta, truth):
    grid_u = np.linspace(-2.5, 2.5, 200)
    errs = []
    for (lk, ln), (tk, tn) in zip(theta, truth, strict=False):
        if not np.all(np.isfinite([lk, ln])):
            errs.append(np.inf)
            continue
        t = np.exp(LN_LN2 / np.exp(tn) - tk + grid_u)
        errs.append(np.sqrt(np.mean((curve_np(t, lk, ln) - curve_np(t, tk, tn)) ** 2)))
    return np.array(errs)


def data_rmse(theta, times, fracs):
    return np.array([np.sqrt(np.mean((curve_np(t, *p) - f) ** 2)) if np.all(np.isfinite(p))
                     else np.inf for p, t, f in zip(theta, times, fracs, strict=False)])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--multistart", choices=["all", "adaptive"], default="all")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    times, fracs, truth = make_curves(args.curves)
    dtype = getattr(torch, args.dtype)
    model = JMAK()

    def ours():
        res = fit_curves(model, times, fracs, device=args.device, dtype=dtype,
                         multistart=args.multistart)
        if res.theta.is_cuda:
            torch.cuda.synchronize()
        return res

    # interleave the two so that a change in machine load hits both alike; report the best
    # time of each and the median of the per-round ratios
    t_o, t_s, ratios = [], [], []
    ours()  # warm-up (allocator, kernels)
    for _ in range(args.repeats):
        a, res = timed(ours)
        b, (theta_sp, fails) = timed(lambda: scipy_loop(times, fracs))
        t_o.append(a)
        t_s.append(b)
        ratios.append(b / a)
    t_ours, t_scipy = min(t_o), min(t_s)
    res.theta = res.theta.double()
    theta_ours = res.theta.cpu().numpy()
    tr_o, tr_s = truth_rmse(theta_ours, truth), truth_rmse(theta_sp, truth)
    dr_o, dr_s = data_rmse(theta_ours, times, fracs), data_rmse(theta_sp, times, fracs)
    print(f"threads={torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
          f" device={args.device} dtype={args.dtype} curves={args.curves} points/curve=5-20 "
          f"starts/curve=3 multistart={args.multistart} LM iterations={res.iterations}")
    print(f"matmeta batched LM : {t_ours * 1e3:8.1f} ms  median truth-RMSE {np.median(tr_o):.4f}  "
          f"not converged {int((~res.converged).sum())}")
    print(f"scipy curve_fit loop: {t_scipy * 1e3:8.1f} ms  "
          f"median truth-RMSE {np.median(tr_s):.4f}  "
          f"failures {fails}")
    print(f"speed-up {t_scipy / t_ours:.1f}x (best times); per-round ratios "
          f"{', '.join(f'{r:.1f}' for r in ratios)}; median {np.median(ratios):.1f}x")
    worse = dr_o > dr_s + 1e-6
    print(f"data RMSE: matmeta <= scipy + 1e-6 on {int((~worse).sum())}/{len(dr_o)} curves; "
          f"median ratio {np.median(dr_o / dr_s):.4f}; worst excess {np.max(dr_o - dr_s):.2e}")


if __name__ == "__main__":
    main()
