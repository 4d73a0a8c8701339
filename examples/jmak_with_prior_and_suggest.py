"""JMAK from two measured points with a meta-learned prior, then "what to measure next".

A scientist starts a new material: two points of an isotherm are measured. A Gaussian prior over
(ln k, ln n) is meta-learned across known families (here: the other polymer series shipped in
data/kinetics/, 27 isotherms); the two points are fitted by MAP under it, with a Laplace band that
widens where there are no points, and a report folder. Then matmeta ranks the next time to
measure by how much it would shrink the uncertainty of t_half; "measuring" there (the shipped
curves are reconstructions of published n and t_half, so the true value is known; we add noise
of std 0.03) and refitting shows the interval close in on the published half time, against
evenly spaced choice in log time.

Last, the same for a material's isotherms coupled by Arrhenius (Q in kJ/mol; melt
crystallisation has a negative apparent Q): the next time *and temperature* for pinning Q.

Run:  python examples/jmak_with_prior_and_suggest.py [--out jmak_suggest] [--fast]
Copy and change: CURVES (your CSV: time_s, fraction, temperature_K), HELD_OUT, the first points.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from matmeta.bayes import learn_prior
from matmeta.models.parametric import JMAK, ArrheniusJMAK
from matmeta.suggest._kinetics import suggest_jmak_measurement
from matmeta.workflows._kinetics import fit_jmak_with_prior, summary_line, write_jmak_report

ROOT = Path(__file__).resolve().parents[1]
CURVES = ROOT / "data" / "kinetics" / "avrami_reconstructed_curves.csv"
HELD_OUT = "PBABI copolyester BA/BI=9/1"
NOISE = 0.03  # std of one fraction measurement we assume for the lab (the demo curves are exact)


def true_fraction(row: pd.Series, t_s: np.ndarray) -> np.ndarray:
    """The published curve f = 1 - exp(-ln 2 (t / t_half)^n) of a held-out isotherm."""
    n, t_half = row["n_published"], row["t_half_s_published"]
    return 1.0 - np.exp(-math.log(2.0) * (np.asarray(t_s) / t_half) ** n)


def measure(row: pd.Series, t_s: np.ndarray, seed: int) -> np.ndarray:
    """A simulated lab measurement: the published curve plus noise (std NOISE), kept in [0, 1]."""
    rng = np.random.default_rng(seed)
    f = true_fraction(row, t_s) + rng.normal(0.0, NOISE, len(t_s))
    return np.clip(f, 0.0, 1.0)


def sequential(curve: pd.DataFrame, prior, first: list[float], steps: int, how: str) -> list:
    """Measure ``steps`` more points chosen by ``how`` ("suggest" or "even" in log time)."""
    truth = curve.iloc[0]
    t_half = float(truth["t_half_s_published"])
    pool = np.geomspace(t_half / 10, t_half * 10, 41)  # times the lab could choose from
    times = list(first)
    rows = []
    for step in range(steps + 1):
        t = np.array(times)
        # the same noise draw for a time whichever strategy chose it
        f = np.array([measure(truth, np.array([ti]), int(ti * 1000))[0] for ti in t])
        fit = fit_jmak_with_prior(t, f, prior, label=how)
        p = fit.parameters().set_index("quantity").loc["t_half_s"]
        rows.append({"strategy": how, "measurements": len(times), "t_half_s": p["posterior"],
                     "t_half_s_low95": p["posterior_low95"],
                     "t_half_s_high95": p["posterior_high95"], "t_half_s_published": t_half,
                     "abs_ln_error": abs(math.log(p["posterior"] / t_half)),
                     "interval_ratio_95": p["posterior_high95"] / p["posterior_low95"]})
        if step == steps:
            break
        if how == "suggest":
            nxt = float(suggest_jmak_measurement(fit.posterior, pool).iloc[0]["time_s"])
        else:  # the pool time farthest (in log time) from everything measured so far
            gaps = [min(abs(math.log(c / m)) for m in times) for c in pool]
            nxt = float(pool[int(np.argmax(gaps))])
        times.append(nxt)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="jmak_suggest", help="output folder")
    ap.add_argument("--fast", action="store_true", help="fewer steps and draws (for CI)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(CURVES)
    curves = {k: g.sort_values("time_s") for k, g in df.groupby(["material", "temperature_K"])}
    train = [g for (mat, _), g in curves.items() if mat != HELD_OUT]

    # 1. Meta-learn the prior across the known families (empirical Bayes over 27 isotherms).
    fit_prior = learn_prior(JMAK(), [g["time_s"].to_numpy() for g in train],
                            [g["fraction"].to_numpy() for g in train], noise_std=NOISE)
    prior = fit_prior.prior
    prior.save(out / "prior.json")

    # 2. Two points of a held-out isotherm: MAP + Laplace band, and a report folder.
    temps = sorted(t for (mat, t) in curves if mat == HELD_OUT)
    curve = curves[(HELD_OUT, temps[len(temps) // 2])]
    truth = curve.iloc[0]
    first = [float(curve["time_s"].iloc[0]), float(curve["time_s"].iloc[2])]
    f_first = np.array([measure(truth, np.array([t]), int(t * 1000))[0] for t in first])
    fit = fit_jmak_with_prior(first, f_first, prior,
                              label=f"{HELD_OUT}, {truth['temperature_K']:g} K",
                              samples=500 if args.fast else 2000)
    write_jmak_report([fit], out / "report", prior_source="prior.json (27 isotherms)")
    print(summary_line(fit), f"(published t_half {truth['t_half_s_published']:g} s)")

    # 3. What to measure next, and what it buys: suggest against evenly spaced choice.
    ranked = suggest_jmak_measurement(fit.posterior, np.geomspace(1.0, 1000.0, 61))
    ranked.head(10).to_csv(out / "next_measurements.csv", index=False)
    steps = 2 if args.fast else 4
    seq = pd.DataFrame(sequential(curve, prior, first, steps, "suggest")
                       + sequential(curve, prior, first, steps, "even"))
    seq.to_csv(out / "sequence.csv", index=False)
    print("error of ln t_half, and high/low of its 95% interval, by measurements:")
    print(seq.pivot(index="measurements", columns="strategy",
                    values=["abs_ln_error", "interval_ratio_95"]).round(3))

    # 4. Isotherms coupled by Arrhenius: prior across the other series, next (time, T) for Q.
    series = sorted({mat for mat, _ in curves if mat != HELD_OUT})
    xs, ys = [], []
    for mat in series:
        parts = [g for (m, _), g in curves.items() if m == mat]
        xs.append(np.concatenate([np.stack([g["time_s"], g["temperature_K"]], -1)
                                  for g in parts]))
        ys.append(np.concatenate([g["fraction"].to_numpy() for g in parts]))
    arr_prior = learn_prior(ArrheniusJMAK(), xs, ys, noise_std=NOISE).prior
    arr_prior.save(out / "arrhenius_prior.json")
    lo, hi = curves[(HELD_OUT, temps[0])], curves[(HELD_OUT, temps[-1])]
    t_pts = np.array([lo["time_s"].iloc[3], hi["time_s"].iloc[3]])
    T_pts = np.array([temps[0], temps[-1]])
    f_pts = np.array([lo["fraction"].iloc[3], hi["fraction"].iloc[3]])
    arr_fit = fit_jmak_with_prior(t_pts, f_pts, arr_prior, temperature_K=T_pts,
                                  label=f"{HELD_OUT}, Arrhenius", samples=500)
    next_q = suggest_jmak_measurement(arr_fit.posterior, np.geomspace(1.0, 3000.0, 31),
                                      temperatures_K=temps, target="Q")
    next_q.head(10).to_csv(out / "next_measurements_Q.csv", index=False)
    best = next_q.iloc[0]
    print(f"Q = {arr_fit.parameters().set_index('quantity').loc['Q_kJ_per_mol', 'posterior']:.0f}"
          f" kJ/mol from 2 points; measure next at t = {best['time_s']:.3g} s, "
          f"T = {best['temperature_K']:g} K (sd of Q {best['target_sd_now']:.3g} -> "
          f"{best['target_sd_after']:.3g} kJ/mol)")
    print(f"report: {out / 'report' / 'report.md'}")


if __name__ == "__main__":
    main()
