"""Batched JMAK fitting against a Python loop of scipy.optimize.curve_fit, in the same process.

1,000 noisy synthetic JMAK curves of 5 to 20 points (k over four decades, n from 0.7 to 4,
times log-spaced around each curve's half time, Gaussian noise of std 0.02). Both fitters work
in (ln k, ln n) with the same overflow-safe curve and start from the same kind of sensible guess
(an Avrami-plot regression); matmeta additionally tries two more starts per curve, inside its
timing. Accuracy: RMSE of each fitted curve against the noise-free truth on a dense grid, and
the data RMSE of the two fits on each curve.

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_fitting.py [--curves 1000] [--repeats 3] \
        [--multistart all|adaptive|both] [--cpu-loop numpy|torch]

``--cpu-loop torch`` times the fitter's loop on torch tensors on the CPU too (what every other
device runs) instead of numpy views of them (the CPU default; see matmeta/fitting/_lm.py).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

import matmeta.fitting._lm as lm_module
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
    """Wall time and this process's CPU time of ``fn()`` (CPU time is less sensitive to other
    jobs on a shared machine; the wall-time ratio is the one the target refers to)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curves", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--multistart", choices=["all", "adaptive", "both"], default="both")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--cpu-loop", choices=["numpy", "torch"], default=lm_module.CPU_LOOP)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm_module.CPU_LOOP = args.cpu_loop
    times, fracs, truth = make_curves(args.curves)
    dtype = getattr(torch, args.dtype)
    model = JMAK()
    modes = ["all", "adaptive"] if args.multistart == "both" else [args.multistart]

    def ours(mode):
        res = fit_curves(model, times, fracs, device=args.device, dtype=dtype, multistart=mode)
        if res.theta.is_cuda:
            torch.cuda.synchronize()
        return res

    # interleave matmeta and scipy round by round so that a change in machine load hits both
    # alike; report the best time of each and every round's ratio
    wall = {m: [] for m in [*modes, "scipy"]}
    cpu = {m: [] for m in [*modes, "scipy"]}
    res = {}
    for mode in modes:
        ours(mode)  # warm-up (allocator, kernels)
    load0 = os.getloadavg()[0]
    for _ in range(args.repeats):
        for mode in modes:
            w, c, res[mode] = timed(lambda mode=mode: ours(mode))
            wall[mode].append(w)
            cpu[mode].append(c)
        w, c, (theta_sp, fails) = timed(lambda: scipy_loop(times, fracs))
        wall["scipy"].append(w)
        cpu["scipy"].append(c)
    load1 = os.getloadavg()[0]
    print(f"threads={torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
          f" device={args.device} (CPU loop: {args.cpu_loop}) dtype={args.dtype} "
          f"curves={args.curves} points/curve=5-20 "
          f"starts/curve=3 load average {load0:.1f} -> {load1:.1f} "
          f"on {os.cpu_count()} CPUs")
    tr_s, dr_s = truth_rmse(theta_sp, truth), data_rmse(theta_sp, times, fracs)
    print(f"scipy curve_fit loop : {min(wall['scipy']) * 1e3:8.1f} ms best wall, "
          f"{min(cpu['scipy']) * 1e3:8.1f} ms best CPU; median truth-RMSE {np.median(tr_s):.4f};"
          f" failures {fails}")
    dr = {}
    for mode in modes:
        r = res[mode]
        theta = r.theta.double().cpu().numpy()
        tr_o, dr[mode] = truth_rmse(theta, truth), data_rmse(theta, times, fracs)
        ratios = [s / o for s, o in zip(wall["scipy"], wall[mode], strict=True)]
        cratios = [s / o for s, o in zip(cpu["scipy"], cpu[mode], strict=True)]
        worse = dr[mode] > dr_s + 1e-6
        print(f"matmeta {mode:9s}: {min(wall[mode]) * 1e3:8.1f} ms best wall, "
              f"{min(cpu[mode]) * 1e3:8.1f} ms best CPU; median truth-RMSE {np.median(tr_o):.4f};"
              f" not converged {int((~r.converged).sum())}; LM iterations {r.iterations}")
        print(f"  speed-up (wall) {min(wall['scipy']) / min(wall[mode]):.1f}x best times; "
              f"per-round {', '.join(f'{x:.1f}' for x in ratios)}; median "
              f"{np.median(ratios):.1f}x (spread {min(ratios):.1f}-{max(ratios):.1f}) | CPU "
              f"time: best {min(cpu['scipy']) / min(cpu[mode]):.1f}x; per-round "
              f"{', '.join(f'{x:.1f}' for x in cratios)}; median {np.median(cratios):.1f}x "
              f"(spread {min(cratios):.1f}-{max(cratios):.1f})")
        print(f"  data RMSE worse than scipy's by > 1e-6 on {int(worse.sum())}/{len(worse)} "
              f"curves; median ratio {np.median(dr[mode] / dr_s):.4f}; worst excess "
              f"{np.max(dr[mode] - dr_s):.2e}")
    if len(modes) == 2:
        lost = dr["adaptive"] > dr["all"] + 1e-9
        print(f"adaptive vs all: data RMSE worse by > 1e-9 on {int(lost.sum())} curves, "
              f"worst {np.max(dr['adaptive'] - dr['all']):.2e}")


if __name__ == "__main__":
    main()
