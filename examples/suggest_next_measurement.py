"""What to measure next in a new alloy system: rank candidates, measure, refit, repeat.

A composition model learns the bulk modulus of binary alloys from the other element systems;
for a new system you have measured 2 alloys, and `matmeta.suggest` ranks the remaining candidates
by how much measuring each would shrink the predictive uncertainty over the candidates you care
about. Then the loop a lab runs: measure the suggested alloy, refit, ask again, and compare with
picking at random.

Data: the EMT binary alloys shipped in data/structures/ (GENERATED with ASE's EMT calculator, not
measured: see data/README.md); a family is an element system such as Cu-Au, with 7 alloys
(L1_2, L1_0, L1_1, B2, D0_3 orderings at 25/50/75 % B); the ordering is a process column, so the
same formula in two structures is two candidates.

The command-line equivalent, with a checkpoint and your own files:
    matmeta suggest candidates --model model.pt --support lab.csv --candidates cands.csv \\
        --target bulk_modulus_GPa --goal max --target-region top:0.4 --batch 2 --out next.csv

Run:  python examples/suggest_next_measurement.py [--fast] [--out suggest_example]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from matmeta.io.alloys import read_alloy_table
from matmeta.models import save_model
from matmeta.models._composition import CompositionModel, encode_compositions
from matmeta.models._transforms import TargetTransform
from matmeta.plots._suggest import plot_suggestion_curves, plot_suggestions
from matmeta.suggest import load_suggest_model, suggest_next

DATA = Path(__file__).resolve().parents[1] / "data" / "structures" / "emt_binary_alloys.csv"
TARGET = "bulk_modulus_GPa"
NEW_SYSTEMS = ["Ni-Pt", "Cu-Au", "Al-Pd", "Pd-Ag", "Ni-Ag"]


def pretrain(model, table, transform, steps: int, seed: int = 0):
    """Plain Adam on every row of the known systems (the model all suggestions start from)."""
    x = encode_compositions(table, model)
    y = transform.forward(torch.tensor(table[TARGET].to_numpy(), dtype=torch.float32))
    params = {k: v.requires_grad_() for k, v in
              model.init_params(torch.Generator().manual_seed(seed)).items()}
    opt = torch.optim.Adam(params.values(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        ((model.forward(params, x) - y) ** 2).mean().backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="suggest_example", help="output folder")
    parser.add_argument("--fast", action="store_true", help="short pretraining, 2 systems (CI)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    table = read_alloy_table(DATA, "formula", TARGET, family_column="family",
                             process_columns={"prototype": "category"})
    systems = NEW_SYSTEMS[:2] if args.fast else NEW_SYSTEMS
    known = table[~table["family"].isin(systems)].reset_index(drop=True)
    model = CompositionModel.for_table(known, hidden=32, embedding_dim=8)
    transform = TargetTransform.fit(known[TARGET].to_numpy(), kind="log10_standardize")
    params = pretrain(model, known, transform, steps=60 if args.fast else 600)
    # a checkpoint as `matmeta suggest candidates --model` reads it
    save_model(out / "model.pt", model, params,
               extra={"target_transform": transform.to_dict(),
                      "data_spec": {"target": TARGET, "composition_column": "formula"}})
    sm = load_suggest_model(out / "model.pt")

    raw = pd.read_csv(DATA)
    curves = []
    for system in systems:
        rows = raw[raw["family"] == system].reset_index(drop=True)
        truth = rows[TARGET].to_numpy()
        for strategy in ("variance", "random"):
            for start_seed in range(3 if args.fast else 10):
                rng = np.random.default_rng(start_seed)
                measured = [int(i) for i in rng.choice(len(rows), 2, replace=False)]
                for step in range(4):
                    rest = [i for i in range(len(rows)) if i not in measured]
                    lab = _read(sm, rows.iloc[measured], with_target=True)
                    cands = _read(sm, rows.iloc[rest], with_target=False)
                    s, ranked = suggest_next(sm, lab, cands, TARGET, strategy=strategy,
                                             goal="max", region="all", seed=start_seed + step)
                    # error of the current predictions on the alloys not yet measured
                    pred = s.table(to_units=transform.inverse, target=TARGET)
                    pred = pred.sort_values("candidate")[f"predicted_{TARGET}"].to_numpy()
                    curves.append({"system": system, "strategy": strategy, "start": start_seed,
                                   "measurements": len(measured),
                                   "mae_GPa": float(np.abs(pred - truth[rest]).mean())})
                    if step == 0 and start_seed == 0 and strategy == "variance":
                        ranked.to_csv(out / f"ranked_{system}.csv", index=False)
                        plot_suggestions(ranked, TARGET, out / f"ranked_{system}.png",
                                         title=f"{system}: next measurement after 2")
                    measured.append(rest[s.chosen[0]])   # "measure" the suggested alloy

    curves = pd.DataFrame(curves)
    curves.to_csv(out / "curves.csv", index=False)
    mean = (curves.groupby(["strategy", "measurements"], sort=False)["mae_GPa"].mean()
            .reset_index().rename(columns={"mae_GPa": "error"}))
    plot_suggestion_curves(mean, out / "curves.png", units="GPa",
                           title=f"EMT bulk modulus, {len(systems)} new systems: MAE on the "
                                 "alloys not yet measured")
    print(mean.pivot(index="measurements", columns="strategy", values="error").round(2))
    print(f"wrote {out / 'curves.csv'}, {out / 'curves.png'} and the ranked candidates of "
          f"{', '.join(systems)} ({out}/ranked_*.csv)")


def _read(sm, rows: pd.DataFrame, with_target: bool) -> pd.DataFrame:
    from matmeta.suggest import read_pool_table

    cols = ["name", "formula", "prototype"] + ([TARGET] if with_target else [])
    return read_pool_table(sm, rows[cols].reset_index(drop=True),
                           target=TARGET if with_target else None,
                           what="support" if with_target else "candidates")


if __name__ == "__main__":
    main()
