"""Train a crystal-graph property model and predict candidate structures.

Structures become periodic radius graphs (cutoff 6 angstrom, 12 nearest neighbours, Gaussian
distance expansion) feeding a CGCNN-class network; the bulk modulus is learned as log10 and
reported back in GPa. Data: the EMT-generated binary alloys shipped in data/structures/ (swap
in your own table with `matmeta.io.read_structure_table`). Candidates: the fcc elemental metals
of ASE's Delta-codes set.

Run:  python examples/train_property_model.py [--fast] [--out gnn_example]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from matmeta.graphs import FeaturizerSettings, build_graphs
from matmeta.io import load_builtin
from matmeta.models import build_model
from matmeta.training import TrainSettings, predict_structures, train_property_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gnn_example", help="output folder")
    parser.add_argument("--fast", action="store_true", help="a few epochs only (CI)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table = load_builtin("emt_binary_alloys")            # structure, family, bulk_modulus_GPa
    settings = FeaturizerSettings(cutoff=6.0, max_neighbors=12)
    graphs = build_graphs(table["structure"], settings=settings, progress=False)
    model = build_model("cgcnn", {"hidden": 32, "n_conv": 2, "n_basis": settings.n_basis})
    result = train_property_model(
        graphs, table["bulk_modulus_GPa"].to_numpy(), model, settings,
        train=TrainSettings(epochs=5 if args.fast else 150, batch_size=16, lr=3e-3),
        target_transform="log10_standardize", target="bulk_modulus_GPa", seed=0,
    )
    print("test metrics (GPa):", {k: round(v, 3) for k, v in result.metrics["test"].items()})
    path = result.predictor.save(out / "model.pt")

    elements = load_builtin("dcdft_elements")
    metals = elements[elements["name"].isin(["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"])]
    pred = predict_structures(path, metals["structure"].tolist())
    table = pd.DataFrame({"element": metals["name"], "predicted_bulk_modulus_GPa": pred,
                          "pbe_bulk_modulus_GPa": metals["bulk_modulus_GPa"]})
    table.to_csv(out / "predictions.csv", index=False)
    print(table.to_string(index=False))
    print(f"wrote {path} and {out / 'predictions.csv'}")


if __name__ == "__main__":
    main()
