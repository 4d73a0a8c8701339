"""Build avrami_reconstructed_curves.csv: JMAK curves RECONSTRUCTED from published n and t_half.

Not measurements: for every row of avrami_published_parameters.csv that states both an Avrami
exponent n and a half time t_half_s, the curve f(t) = 1 - exp(-ln(2) (t / t_half)^n) (the
(k t)^n convention with k = ln(2)^(1/n) / t_half) is sampled, without noise, at
t / t_half = 0.25, 0.5, 0.75, 1, 1.5, 2, 3. Fitting these curves must return the published
n and t_half, which makes them a demo and a check, not data.

Run from the project root:
    python data/kinetics/make_avrami_reconstructed_curves.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
RATIOS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def main() -> None:
    src = pd.read_csv(HERE / "avrami_published_parameters.csv")
    n = pd.to_numeric(src["n"], errors="coerce")
    t_half = pd.to_numeric(src["t_half_s"], errors="coerce")
    temp = pd.to_numeric(src["temperature_K"], errors="coerce")
    rows = []
    for i in src.index[n.notna() & t_half.notna() & temp.notna()]:
        for r in RATIOS:
            rows.append({
                "material": src.at[i, "material"],
                "temperature_K": float(temp[i]),
                "time_s": round(r * float(t_half[i]), 6),
                "fraction": round(1.0 - math.exp(-math.log(2.0) * r ** float(n[i])), 10),
                "n_published": float(n[i]),
                "t_half_s_published": float(t_half[i]),
                "published_row": int(i) + 2,
                "kind": "reconstructed from published n and t_half (not measured)",
            })
    out = pd.DataFrame(rows)
    out.to_csv(HERE / "avrami_reconstructed_curves.csv", index=False)
    print(f"wrote {len(out)} rows, {out.groupby(['material', 'temperature_K']).ngroups} curves")


if __name__ == "__main__":
    main()
