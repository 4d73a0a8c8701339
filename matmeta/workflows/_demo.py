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
    5. alloys     a new alloy family from 3 measurements: meta-train an ensemble of composition
                  models, adapt it to the held-out Au-Cu system, rank its other compositions
                  with 90% intervals, and suggest what to measure next (``matmeta meta-train
                  --members``, ``matmeta adapt``, ``matmeta predict``, ``matmeta suggest``)
    6. jmak-prior JMAK from 3 points of a held-out isotherm under the prior meta-learned in stage
                  2, with the influence of each point, and the next time to measure
                  (``matmeta jmak fit --prior --report``, ``matmeta suggest kinetics``)
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

import numpy as np
import pandas as pd

from matmeta.checkpoint import atomic_write_text
from matmeta.errors import InputError
from matmeta.io import builtin_path

__all__ = ["run_demo", "DEMO_STAGES"]

DEMO_STAGES = ("kinetics", "meta-jmak", "explain", "gnn", "alloys", "jmak-prior")
# marks a demo's own --out folder: a later demo may write there again
DEMO_MARKER = ".matmeta-demo"
KINETICS = "avrami_reconstructed_curves"
ALLOYS = "emt_binary_alloys"
NEW_SYSTEM = "Au-Cu"
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
             "--prior", str(d / "prior.json"), "--overwrite", "--device", device])
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
             "--metrics", str(d / "metrics.json"), "--quiet", "--overwrite", "--device", device])
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


def _stage_alloys(log: _Log, device: str, quick: bool) -> None:
    from matmeta.io.alloys import element_system

    d = log.out / "alloys"
    d.mkdir(parents=True, exist_ok=True)
    src = builtin_path(ALLOYS).with_suffix(".csv")
    table = pd.read_csv(src)
    new = table[[element_system(f) == NEW_SYSTEM for f in table["formula"]]]
    lab = new.sample(3, random_state=0)
    rest = new.drop(index=lab.index)
    lab[["formula", "bulk_modulus_GPa"]].to_csv(d / "lab.csv", index=False)
    # two structures (prototypes) share each composition: the composition model cannot tell
    # them apart, so the tables carry the prototype beside the formula
    rest[["formula", "prototype"]].to_csv(d / "candidates.csv", index=False)
    log.run(["meta-train", "--model", "composition", "--data", str(src),
             "--target", "bulk_modulus_GPa", "--composition-column", "formula",
             "--test-families", NEW_SYSTEM, "--members", "4", "--k-shot", "3", "--q-query", "3",
             "--steps", "40" if quick else "300", "--hidden", "16", "--val-every", "20",
             "--no-progress", "--overwrite", "--out", str(d / "meta.pt"), "--device", device])
    log.run(["adapt", "--model", str(d / "meta.pt"), "--support", str(d / "lab.csv"),
             "--out", str(d / "adapted"), "--overwrite", "--device", device])
    log.run(["predict", "--model", str(d / "adapted"), "--candidates", str(d / "candidates.csv"),
             "--goal", "max", "--out", str(d / "screen"), "--overwrite", "--device", device])
    ranked = pd.read_csv(d / "screen" / "ranked.csv")          # best first
    t = "bulk_modulus_GPa"
    source = rest.iloc[ranked["row"].to_numpy() - 2]          # 'row': file row, header = 1
    truth = source[t].to_numpy()
    pred = ranked[t].to_numpy()
    low, high = ranked[f"{t}_low90"].to_numpy(), ranked[f"{t}_high90"].to_numpy()
    inside = int(((truth >= low) & (truth <= high)).sum())
    shown = ranked[["id", t, f"{t}_low90", f"{t}_high90", "rank", "nearest_family"]].copy()
    shown.insert(1, "prototype", source["prototype"].to_numpy())
    shown.insert(3, "EMT value", truth)
    log.run(["suggest", "candidates", "--model", str(d / "meta.pt"), "--support",
             str(d / "lab.csv"), "--candidates", str(d / "candidates.csv"),
             "--out", str(d / "next.csv"), "--device", device])
    nxt = pd.read_csv(d / "next.csv")
    nxt = nxt[[c for c in nxt.columns if c in (
        "rank", "composition", "prototype", "share_of_region_variance",
        f"expected_variance_reduction_{t}_sq")]]
    suggest = ("\n\nWhat to measure next (`matmeta suggest candidates`): the candidates "
               "ranked by how much measuring them would shrink the predictive uncertainty "
               "over the candidates (the share of their summed predictive variance one "
               "measurement removes, from a Bayesian head on each member's features):\n\n"
               + _markdown_table(nxt.head(4)) + "\n")
    log.sections.append(
        "## 5. A new alloy family from 3 measurements (`matmeta meta-train --members`, "
        "`matmeta adapt`, `matmeta predict`)\n\n"
        f"An ensemble of 4 composition models is meta-trained together on 20 binary systems of "
        f"the EMT alloy table (bulk modulus, GPa; generated with ASE's EMT potential, not "
        f"measured); `{NEW_SYSTEM}` is never seen. Three of its compositions play the lab's "
        f"measurements; the model adapts to them and ranks the other {len(rest)} for the "
        f"highest bulk modulus. MAE {np.abs(pred - truth).mean():.3g} GPa (meta-learned model "
        f"without adaptation {np.abs(ranked[f'{t}_meta_init'].to_numpy() - truth).mean():.3g}, "
        f"mean of the 3 measurements {np.abs(lab[t].mean() - truth).mean():.3g}); "
        f"{inside} of {len(truth)} EMT values inside the 90% intervals. A demo this small "
        "cannot measure calibration; benchmarks/README.md does, on held-out real families.\n\n"
        + _markdown_table(shown) + "\n\nReports: [adaptation](alloys/adapted/report.md), "
        "[screening](alloys/screen/report.md)." + suggest + "\n"
    )



def _stage_jmak_prior(log: _Log, device: str) -> None:
    d = log.out / "jmak_prior"
    d.mkdir(parents=True, exist_ok=True)
    prior = log.out / "meta_jmak" / "prior.json"
    src = pd.read_csv(_kinetics_csv())
    curves = src[src["material"] == HELD_OUT].sort_values(["temperature_K", "time_s"])
    temps = sorted(curves["temperature_K"].unique())
    curve = curves[curves["temperature_K"] == temps[len(temps) // 2]].reset_index(drop=True)
    # three of the isotherm's points, the lab's few measurements; the rest check the fit
    pick = [1, 3, 5] if len(curve) > 6 else [0, 1, 2]
    three = curve.iloc[pick]
    cols = ["material", "temperature_K", "time_s", "fraction"]
    three[cols].to_csv(d / "three_points.csv", index=False)
    log.run(["jmak", "fit", str(d / "three_points.csv"), "--group-by", "material",
             "--prior", str(prior), "--noise-std", "0.02", "--out", str(d / "fit.csv"),
             "--report", str(d / "report"), "--overwrite", "--device", device])
    log.run(["suggest", "kinetics", str(d / "three_points.csv"), "--group-by", "material",
             "--prior", str(prior), "--noise-std", "0.02", "--target", "t_half",
             "--out", str(d / "next.csv"), "--plot", str(d / "next.png"), "--device", device])
    fit = pd.read_csv(d / "fit.csv").iloc[0]
    pub_t = float(curve["t_half_s_published"].iloc[0])
    nxt = pd.read_csv(d / "next.csv").head(3)
    keep = [c for c in ("time_s", "predicted_fraction", "target_sd_now", "target_sd_after",
                        "sd_reduction_percent", "rank") if c in nxt.columns]
    log.sections.append(
        "## 6. JMAK from 3 points under the meta-learned prior (`matmeta jmak fit --prior "
        "--report`, `matmeta suggest kinetics`)\n\n"
        f"Three points of the held-out `{HELD_OUT}` isotherm at "
        f"{curve['temperature_K'].iloc[0]:g} K, fitted by MAP under the prior meta-learned in "
        f"stage 2: t_half {fit['t_half_s']:.4g} s (published {pub_t:.4g} s), n "
        f"{fit['n']:.3g} (published {float(curve['n_published'].iloc[0]):.3g}). The report "
        "shows the prior band, the data, the adapted curve with its 95% band and the exact "
        "leave-one-out influence of each point: "
        "[report](jmak_prior/report/report.md).\n\n"
        "Where to measure next to pin t_half down (expected posterior sd of ln t_half after one "
        "more point):\n\n" + _markdown_table(nxt[keep]) + "\n\n![next](jmak_prior/next.png)\n"
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
        out: output folder (created; an earlier demo's files there are replaced; a folder
            that is not an earlier demo's and holds anything is refused).
        device: ``cpu``, ``cuda`` or ``auto``.
        quick: fewer meta-steps and epochs (CI and examples use it).
        stages: which stages to run, in order (``explain`` needs ``meta-jmak``).
        quiet: do not echo the commands.
    """
    unknown = set(stages) - set(DEMO_STAGES)
    if unknown:
        raise InputError(f"unknown demo stage(s) {sorted(unknown)}: expected {DEMO_STAGES}")
    for later in ("explain", "jmak-prior"):
        if later in stages and "meta-jmak" not in stages:
            raise InputError(f"demo stage {later!r} needs 'meta-jmak' (it uses that model)")
    out = Path(out)
    # a demo writes (and on a re-run replaces) its files in --out: never in a folder of the
    # user's, which would lose any file of the same name
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / DEMO_MARKER).is_file())):
        older = (out / "report.md").is_file() and (out / "report.md").read_text(
            encoding="utf-8", errors="replace").startswith("# matmeta demo")
        raise InputError(
            f"{out}: " + ("a demo folder from an earlier matmeta version (it does not list what "
                          "it wrote); remove it, or choose another --out" if older else
                          "exists and is not a matmeta demo folder; choose another --out (the "
                          "demo replaces the files it writes there)"))
    # the result folders the chosen stages replace: checked before any stage runs, so that a
    # refusal cannot leave the demo half new, half old
    from matmeta.workflows._report import check_result_folder

    results = {"alloys": ("alloys/adapted", "alloys/screen"), "jmak-prior": ("jmak_prior/report",)}
    for stage in stages:
        for sub in results.get(stage, ()):
            try:
                check_result_folder(out / sub, overwrite=True)
            except InputError as exc:
                raise InputError(f"{out}: the demo cannot replace {sub} ({exc}); remove "
                                 f"{out / sub}, or choose another --out") from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / DEMO_MARKER, "written by matmeta demo: a new demo may replace the "
                      "files it wrote here\n")
    log = _Log(out=out, quiet=quiet)
    start = time.perf_counter()
    runners = {
        "kinetics": lambda: _stage_kinetics(log, device),
        "meta-jmak": lambda: _stage_meta_jmak(log, device, quick),
        "explain": lambda: _stage_explain(log, device),
        "gnn": lambda: _stage_gnn(log, device, quick),
        "alloys": lambda: _stage_alloys(log, device, quick),
        "jmak-prior": lambda: _stage_jmak_prior(log, device),
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
