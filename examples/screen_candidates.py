"""Screen candidate compositions with uncertainty: an ensemble of meta-learned models, adapted
to a few measurements of a new system, ranks candidates with a 90% interval each.

1. meta-train an ensemble of composition models together (`--members 5`: the members'
   parameters are stacked and trained with vmap, not one after another);
2. adapt every member to the new system's measurements;
3. rank candidates for a goal (here: the highest bulk modulus) and show mean, spread, interval
   and the nearest training family of each candidate (by composition).

Data: the EMT-generated binary alloys shipped in data/ (bulk modulus in GPa; GENERATED with
ASE's EMT potential, not measured). The new system is the Ni-Pt pair (never seen in
meta-training); the candidates are Ni(1-x)Pt(x) compositions on a grid of x, plus a few
Ni-Pt-Au ternaries that lie outside every training family.

Run:  python examples/screen_candidates.py [--fast] [--out screen_example]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from matmeta.cli.main import main as matmeta
from matmeta.models._composition import UnknownElementWarning
from matmeta.workflows._adapt import adapt
from matmeta.workflows._screen import screen

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "structures" / "emt_binary_alloys.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="screen_example", help="output folder")
    parser.add_argument("--fast", action="store_true", help="a few meta-steps only (CI)")
    parser.add_argument("--members", type=int, default=5, help="ensemble members [5]")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table = pd.read_csv(DATA)
    pair = table[table["family"] == "Ni-Pt"]
    pair.sample(3, random_state=1)[["formula", "bulk_modulus_GPa"]].to_csv(out / "lab.csv",
                                                                           index=False)
    x = np.round(np.linspace(0.05, 0.95, 19), 2)
    cands = [f"Ni{1 - v:.2f}Pt{v:.2f}" for v in x] + ["Ni0.4Pt0.4Au0.2", "Ni0.2Pt0.6Au0.2"]
    pd.DataFrame({"formula": cands}).to_csv(out / "candidates.csv", index=False)

    # matmeta meta-train --model composition --data emt_binary_alloys.csv \
    #     --target bulk_modulus_GPa --composition-column formula --members 5 --out ensemble.pt
    assert matmeta(["meta-train", "--model", "composition", "--data", str(DATA),
                    "--target", "bulk_modulus_GPa", "--composition-column", "formula",
                    "--test-families", "Ni-Pt", "--members", str(args.members),
                    "--k-shot", "3", "--q-query", "4", "--steps", "15" if args.fast else "300",
                    "--hidden", "16", "--val-every", "5", "--out", str(out / "ensemble.pt"),
                    "--overwrite", "--no-progress", "--device", "cpu"]) == 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        # matmeta adapt --model ensemble.pt --support lab.csv --out adapted/
        adapted = adapt(out / "ensemble.pt", out / "lab.csv")
        adapted.save(out / "adapted")
        # matmeta predict --model adapted/ --candidates candidates.csv --goal max --out screen/
        ranked = screen(adapted, out / "candidates.csv", out / "screen", goal="max",
                        uncertainty=True)
    cols = ["rank", "id", "bulk_modulus_GPa", "bulk_modulus_GPa_low90",
            "bulk_modulus_GPa_high90", "nearest_family", "family_distance"]
    print(ranked[cols].head(8).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    ranked.to_csv(out / "ranked.csv", index=False)
    print(f"wrote {out}/screen/report.md and {out}/ranked.csv")


if __name__ == "__main__":
    main()
