"""The demo: a short tour of matmeta on data shipped in ``data/`` (no network, no ../shared).

Each stage runs a real ``matmeta`` command in-process, exactly as a user would type it, writes
into its own folder under the output folder, and the demo ends with ``report.md`` linking every
table and figure. The commands are printed so they can be copied.

Stages:
    1. kinetics   fit JMAK to 36 published-parameter curves (``matmeta jmak fit``)
    2. meta-jmak  meta-learn JMAK across polymer series, hold one out, and compare adapting from
                  2-3 points with independent fits (``matmeta meta-train``, ``matmeta evaluate``)
    3. explain    which of a held-out isotherm's points drove the adaptation, checked against
                  exact leave-one-out (``matmeta explain``)
    4. gnn        train a CGCNN on the EMT binary alloys and predict elemental crystals
                  (``matmeta train``, ``matmeta predict``)
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from matmeta.checkpoint import atomic_write_text
from matmeta.errors import InputError
from matmeta.io import builtin_path

__all__ = ["run_demo", "DEMO_STAGES"]

DEMO_STAGES = ("kinetics", "meta-jmak", "explain", "gnn")
KINETICS = "avrami_reconstructed_curves"
HELD_OUT = "PBA homopolymer (BA/BI=10/0)"


@dataclass
class _Log:
    out: Path
    quiet: bool
    commands: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)

    def run(self, argv: list[str], capture: bool = False) -> str:
        from matmeta.cli.main import main

        line = "matmeta " + " ".join(shlex.quote(a) for a in argv)
        self.commands.append(line)
        if not self.quiet:
            print(f"\n$ {line}", flush=True)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf) if capture else contextlib.nullcontext():
            code = main(argv)
        if code != 0:
            raise InputError(f"demo step failed (exit {code}): {line}")
        return buf.getvalue()


def _kinetics_csv() -> Path:
    path = builtin_path("dcdft_elements").parents[1] / "kinetics" / f"{KINETICS}.csv"
    if not path.is_file():
        raise InputError(f"demo data {path} not found: run the demo from a matmeta checkout")
    return path


def _stage_kinetics(log: _Log, device: str) -> None:
    d = log.out / "kinetics"
    log.run(["jmak", "fit", str(_kinetics_csv()), "--group-by", "material",
             "--out", str(d / "fits.csv"), "--plot", str(d / "fits.png"), "--device", device])
    fits = pd.read_csv(d / "fits.csv")
    src = pd.read_csv(_kinetics_csv())
    pub = src.groupby(["material", "temperature_K"])[["n_published", "t_half_s_published"]].first()
    merged = fits.merge(pub.reset_index(), on=["material", "temperature_K"])
    n_err = (merged["n"] - merged["n_published"]).abs().max()
    t_err = ((merged["t_half_s"] / merged["t_half_s_published"]) - 1).abs().max()
    log.sections.append(
        "## 1. JMAK fits (`matmeta jmak fit`)\n\n"
        f"{len(fits)} isotherms of 4 polymer series, reconstructed from published n and t_half, "
        f"fitted in one batched call; {int(fits['converged'].sum())} converged. Largest "
        f"difference from the published values: n {n_err:.2g}, t_half {100 * t_err:.2g} %.\n\n"
        "Table: [kinetics/fits.csv](kinetics/fits.csv). Figures: "
        "![fits](kinetics/fits.png)\n![Avrami plot](kinetics/fits_avrami.png)\n"
    )


def _stage_meta_jmak(log: _Log, device: str, quick: bool) -> None:
    d = log.out / "meta_jmak"
    steps = "60" if quick else "300"
    log.run(["meta-train", "--data", str(_kinetics_csv()), "--model", "jmak",
             "--family", "material", "--test-families", HELD_OUT, "--algorithm", "maml",
             "--k-shot", "3", "--q-query", "4", "--meta-batch", "8", "--steps", steps,
             "--inner-steps", "5", "--inner-lr", "0.1", "--outer-lr", "0.03",
             "--val-every", "20", "--checkpoint-every", "50", "--no-progress",
             "--out", str(d / "meta.pt"), "--plot", str(d / "meta_history.png"),
             "--prior", str(d / "prior.json"), "--device", device])
    evaluate = log.run(["evaluate", "--data", str(_kinetics_csv()), "--model", "jmak",
                        "--family", "material", "--test-families", HELD_OUT,
                        "--shots", "2,3", "--steps", steps, "--repeats", "2" if quick else "5",
                        "--out", str(d / "evaluate.csv"), "--plot", str(d / "evaluate.png"),
                        "--no-progress", "--json", "--device", device], capture=True)
    table = pd.DataFrame(json.loads(evaluate)["table"])
    table = table[["k", "method", "error", "median_task", "n_tasks", "metric"]]
    log.sections.append(
        "## 2. Meta-learning JMAK across material families (`matmeta meta-train`, "
        "`matmeta evaluate`)\n\n"
        f"Families are the polymer series; `{HELD_OUT}` is held out. MAML learns an initial "
        "(ln k, ln n) from which a few gradient steps adapt to a new isotherm; the evaluation "
        "gives every method the same 2 or 3 points of each held-out isotherm and scores it on "
        "the rest (RMSE in fraction). These curves are noise-free reconstructions, so an "
        "independent fit through 2-3 exact points is already near-perfect; gradient-step MAML "
        "is weak on JMAK (a few steps cannot move ln k far), while the MAP fit with the "
        "meta-learned prior (`map`) is the robust few-point method on noisy data (see "
        "benchmarks/README.md for real tungsten isotherms).\n\n" + _markdown_table(table) + "\n\n"
        "Checkpoint: `meta_jmak/meta.pt`; prior for `matmeta jmak fit --prior`: "
        "`meta_jmak/prior.json`.\n\n![learning curve](meta_jmak/evaluate.png)\n"
    )


def _stage_explain(log: _Log, device: str) -> None:
    d = log.out / "explain"
    d.mkdir(parents=True, exist_ok=True)
    src = pd.read_csv(_kinetics_csv())
    curve = src[src["material"] == HELD_OUT].sort_values(["temperature_K", "time_s"])
    curve = curve[curve["temperature_K"] == curve["temperature_K"].iloc[0]].reset_index(drop=True)
    support = curve.iloc[::2].copy()
    support.loc[support.index[1], "fraction"] = min(1.0, support["fraction"].iloc[1] + 0.35)
    support["id"] = [f"t={t:g}s" + (" (corrupted)" if i == 1 else "")
                     for i, t in enumerate(support["time_s"])]
    query = curve.iloc[1::2]
    support.to_csv(d / "support.csv", index=False)
    query.to_csv(d / "query.csv", index=False)
    out = log.run(["explain", "--model", str(log.out / "meta_jmak" / "meta.pt"),
                   "--support", str(d / "support.csv"), "--query", str(d / "query.csv"),
                   "--inner-steps", "300", "--inner-lr", "2.0",
                   "--estimator", "unrolled", "--check-loo", "--out", str(d / "influence.csv"),
                   "--plot", str(d / "influence.png"), "--curve-plot", str(d / "curve.png"),
                   "--json", "--no-progress", "--device", device], capture=True)
    scores = pd.read_csv(d / "influence.csv")
    agreement = ""
    try:
        first = json.loads(out)[0]
        if "spearman:query_loss" in first:
            agreement = (f" Agreement with exact leave-one-out: Spearman "
                         f"{first['spearman:query_loss']:.2f}, Pearson "
                         f"{first['pearson:query_loss']:.2f}.")
    except (json.JSONDecodeError, IndexError, KeyError, TypeError):
        pass
    log.sections.append(
        "## 3. Which measurements drove the adaptation (`matmeta explain`)\n\n"
        f"A held-out isotherm of `{HELD_OUT}` with {len(support)} support points, one of them "
        "deliberately corrupted (+0.35 in fraction). The meta-learned JMAK start is adapted "
        "with 300 inner steps (`--inner-steps 300 --inner-lr 2`, overriding the checkpoint's 5) "
        "so that the curve follows its support points. Influence on the query loss (positive: "
        "the point helped; negative: it hurt), by the unrolled estimator, beside exact "
        f"leave-one-out (`loo:` column).{agreement}\n\n"
        + _markdown_table(scores.head(10)) + "\n\n![influence](explain/influence.png)\n"
        "![curve](explain/curve.png)\n"
    )


def _stage_gnn(log: _Log, device: str, quick: bool) -> None:
    d = log.out / "gnn"
    epochs = "15" if quick else "150"
    log.run(["train", "--builtin", "emt_binary_alloys", "--target", "bulk_modulus_GPa",
             "--log-target", "--epochs", epochs, "--time-limit", "1.0" if quick else "2.0",
             "--hidden", "32", "--out", str(d / "model.pt"), "--plot", str(d / "parity.png"),
             "--metrics", str(d / "metrics.json"), "--quiet", "--device", device])
    metrics = json.loads((d / "metrics.json").read_text())["metrics"]
    test, test_log = metrics["test"], metrics["test_transformed"]
    metals = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
    rows = json.loads(builtin_path("dcdft_elements").read_text())["data"]
    rows = [r for r in rows if r["name"] in metals]
    table = d / "candidates.json"
    atomic_write_text(table, json.dumps(rows))
    metals = pd.DataFrame(rows)
    log.run(["predict", "--model", str(d / "model.pt"), "--table", str(table),
             "--id-column", "name", "--out", str(d / "predictions.csv"), "--quiet",
             "--device", device])
    preds = pd.read_csv(d / "predictions.csv").merge(
        metals[["name", "bulk_modulus_GPa"]].rename(columns={"bulk_modulus_GPa": "dft_GPa"}),
        on="name").drop(columns=["structure"], errors="ignore")
    log.sections.append(
        "## 4. Crystal graphs and a CGCNN property model (`matmeta train`, `matmeta predict`)\n\n"
        "A CGCNN trained on the 154 EMT-generated binary alloys (log10 bulk modulus, random "
        f"80/10/10 split): test MAE {test['mae']:.3g} GPa, R^2 {test['r2']:.3f}; in log10 "
        f"units MAE {test_log['mae']:.3g} (n = {test['n']}).\n\n"
        "Predictions for the fcc metals of the Delta-codes set (all-electron PBE bulk moduli "
        "for comparison; EMT and PBE differ, so agreement is only rough):\n\n"
        + _markdown_table(preds) + "\n\n![parity](gnn/parity.png)\n"
    )


def _markdown_table(df: pd.DataFrame) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def run_demo(out: str | Path = "demo_output", *, device: str = "cpu", quick: bool = False,
             stages: tuple[str, ...] = DEMO_STAGES, quiet: bool = False) -> Path:
    """Run the demo stages into ``out`` and return the path of ``report.md``.

    Example:
        >>> report = run_demo("demo_output", quick=True)
        >>> print(report.read_text()[:200])

    Args:
        out: output folder (created; existing files from an earlier demo are replaced).
        device: ``cpu``, ``cuda`` or ``auto``.
        quick: fewer meta-steps and epochs (CI and examples use it).
        stages: which stages to run, in order (``explain`` needs ``meta-jmak``).
        quiet: do not echo the commands.
    """
    unknown = set(stages) - set(DEMO_STAGES)
    if unknown:
        raise InputError(f"unknown demo stage(s) {sorted(unknown)}: expected {DEMO_STAGES}")
    if "explain" in stages and "meta-jmak" not in stages:
        raise InputError("demo stage 'explain' needs 'meta-jmak' (it explains that model)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out=out, quiet=quiet)
    start = time.perf_counter()
    runners = {
        "kinetics": lambda: _stage_kinetics(log, device),
        "meta-jmak": lambda: _stage_meta_jmak(log, device, quick),
        "explain": lambda: _stage_explain(log, device),
        "gnn": lambda: _stage_gnn(log, device, quick),
    }
    for stage in stages:
        runners[stage]()
    elapsed = time.perf_counter() - start
    report = (
        "# matmeta demo\n\n"
        f"Ran in {elapsed:.0f} s on {device}{' (quick mode)' if quick else ''}, on data shipped "
        "in `data/` (see data/README.md for sources and units).\n\n"
        + "\n".join(log.sections)
        + "\n## Commands run\n\n```bash\n" + "\n".join(log.commands) + "\n```\n"
    )
    path = atomic_write_text(out / "report.md", report)
    if not quiet:
        print(f"\nDemo finished in {elapsed:.0f} s. Report: {path.resolve()}", file=sys.stdout)
    return path
