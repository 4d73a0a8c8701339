"""A new alloy family from a handful of lab measurements: meta-train, adapt, predict the rest.

The workflow a materials scientist runs on compositions (no crystal structures needed):

1. meta-train a composition model on many known alloy systems (families = element systems);
2. measure a few alloys of a new system and adapt the model to them (`matmeta adapt`);
3. predict the system's other compositions (`matmeta predict`).

Data: with ../shared/datasets/alloys/mpea_alloys.csv beside the project (experimental yield
strength of multi-principal-element alloys, Borg et al. 2020), the held-out system is the Cantor
alloy family Co-Cr-Fe-Mn-Ni, with the test temperature and test type as process inputs. Without
it, and always with --fast, it runs on the EMT-generated binary alloys shipped in data/ (bulk
modulus in GPa; GENERATED with ASE's EMT potential, not measured), holding out the Cu-Au pair.
The MPEA file is read in place, never copied into the project.

Each step is shown as the command a user types and as the Python call that does the same.

Run:  python examples/adapt_new_alloy_family.py [--fast] [--out alloy_example]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from matmeta.cli.main import main as matmeta
from matmeta.io.alloys import element_system
from matmeta.models._composition import UnknownElementWarning
from matmeta.workflows._adapt import adapt, load_adapted

ROOT = Path(__file__).resolve().parents[1]
MPEA = ROOT.parent / "shared" / "datasets" / "alloys" / "mpea_alloys.csv"
EMT = ROOT / "data" / "structures" / "emt_binary_alloys.csv"


def dataset(fast: bool) -> dict:
    """Which table, columns and held-out system to use (see the module docstring)."""
    if not fast and MPEA.is_file():
        return {"path": MPEA, "composition": "FORMULA", "target": "PROPERTY: YS (MPa)",
                "process": ["PROPERTY: Test temperature ($^\\circ$C)", "PROPERTY: Type of test"],
                "held_out": "Co-Cr-Fe-Mn-Ni", "shots": 5, "steps": 400, "hidden": 64}
    return {"path": EMT, "composition": "formula", "target": "bulk_modulus_GPa", "process": [],
            "held_out": "Au-Cu", "shots": 3, "steps": 20 if fast else 300, "hidden": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="alloy_example", help="output folder")
    parser.add_argument("--fast", action="store_true", help="shipped data, a few steps (CI)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = dataset(args.fast)

    # The lab's measurements: a few rows of the held-out system; the rest are its candidates.
    table = pd.read_csv(d["path"]).dropna(subset=[d["target"]])
    systems = np.array([element_system(f) for f in table[d["composition"]]])
    new = table[systems == d["held_out"]]
    lab = new.sample(d["shots"], random_state=0)
    lab.to_csv(out / "lab.csv", index=False)
    new.drop(index=lab.index).to_csv(out / "truth.csv", index=False)
    new.drop(index=lab.index).drop(columns=[d["target"]]).to_csv(out / "candidates.csv",
                                                                 index=False)

    # 1. Meta-train on the other systems (the held-out one is a test family: never seen).
    #    matmeta meta-train --model composition --data FILE --target COL --composition-column C
    #        [--process-columns ...] --test-families SYSTEM --out meta.pt
    argv = ["meta-train", "--model", "composition", "--data", str(d["path"]),
            "--target", d["target"], "--composition-column", d["composition"],
            "--test-families", d["held_out"], "--k-shot", str(d["shots"]), "--q-query", "4",
            "--steps", str(d["steps"]), "--hidden", str(d["hidden"]), "--val-every", "10",
            "--out", str(out / "meta.pt"), "--overwrite", "--no-progress", "--device", "cpu"]
    if d["process"]:
        argv += ["--process-columns", ",".join(d["process"])]
    assert matmeta(argv) == 0

    # 2. Adapt to the lab's rows.
    #    matmeta adapt --model meta.pt --support lab.csv --out adapted/
    with warnings.catch_warnings():
        # an element no training system has is described by its descriptors alone
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(out / "meta.pt", out / "lab.csv")
        adapted.save(out / "adapted")
        print(adapted.baselines.to_string(index=False))

        # 3. Predict the system's other compositions.
        #    matmeta predict --model adapted/ --candidates candidates.csv --out screen/
        ranked = load_adapted(out / "adapted").predict(out / "candidates.csv", goal="max")
    truth = pd.read_csv(out / "truth.csv")[d["target"]].to_numpy()
    ranked.insert(2, f"measured {d['target']}", truth)
    ranked.to_csv(out / "predictions.csv", index=False)
    t = d["target"]
    mae = np.abs(ranked[t] - truth).mean()
    mae0 = np.abs(ranked[f"{t}_meta_init"] - truth).mean()
    mae_mean = np.abs(lab[t].mean() - truth).mean()
    print(f"{d['held_out']}: {len(truth)} held-out compositions; MAE adapted {mae:.4g}, "
          f"meta-learned initial {mae0:.4g}, mean of the {d['shots']} lab rows {mae_mean:.4g} "
          f"({t}). Wrote {out}/adapted/report.md and {out}/predictions.csv")


if __name__ == "__main__":
    main()
