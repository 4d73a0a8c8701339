"""Deep ensembles of meta-learned initialisations: training speed and held-out calibration.

(a) Speed (``--part speed``): M members meta-trained together (``meta_train_ensemble``, members
    vmapped) against the same members trained one after another (M calls of ``meta_train``, each
    with its own seed and episodes: what a user would do without ensembles), same meta-steps, 1
    thread, rounds interleaved (the order rotates each round), median ratio reported. Also the
    ensemble's own member loop (``member_batching="loop"``) and, for graphs, shared vs own
    episodes. Models: an MLP on 16 features (synthetic families), the CompositionModel on MPEA
    yield strength (real families, packed inputs so tasks stack), a small CGCNN on the shipped
    EMT binary alloys (22 element systems, 7 structures each). ``--memory`` runs each variant
    once in its own process and reports its peak RSS above the RSS before training.

(b) Calibration (``--part calibration``): MPEA yield strength, the protocol of
    bench_composition.py (its test systems, folds and validation systems for a seed; its
    baselines run here on the same supports): per fold an ensemble of M CompositionModels is
    meta-trained on the training systems, its noise term calibrated on the validation systems
    (``calibrate_noise``), and each test system is predicted from ``--draws`` random 5-row
    supports. Reported: MAE (MPa) of the ensemble mean, of one member alone, and the baselines;
    CRPS (model units, log10-standardised, closed form; and MPa, from 256 Gaussian draws mapped
    back), NLPD and coverage of the 50% and 90% central intervals, with and without the
    calibrated noise term. Intervals are built in model units and mapped back (the transform is
    monotone, so coverage is the same in MPa). ``--eval-shots``: 90% coverage from other
    support sizes too, with the training k's noise term and with the one calibrated for each
    size (``Ensemble.noise_std_by_k``).

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py --part speed --rounds 3
    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py --part speed --memory
    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py --part calibration   # 4-8 min
    OMP_NUM_THREADS=1 python benchmarks/bench_ensemble.py --part calibration --algorithm maml \
        --steps 400 --inner-lr 0.03
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from matmeta.meta import Family, MetaSettings, MetaTrainSettings, meta_train
from matmeta.meta._ensemble import (
    adapt_ensemble,
    meta_train_ensemble,
    predict_members,
)
from matmeta.models import Samples
from matmeta.models._mlp import MLP

Z90 = 1.6448536269514722  # the central 90% interval is mean +- Z90 std

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# ------------------------------------------------------------------ set-ups
def mlp_setup(steps: int):
    gen = torch.Generator().manual_seed(0)
    fams = []
    for i in range(40):
        x = torch.randn(30, 16, generator=gen)
        w = torch.randn(16, generator=gen) / 4
        fams.append(Family(f"f{i}", x, torch.tanh(x @ w) + 0.1 * i))
    model = MLP(16, (64, 64))
    settings = MetaSettings("maml", inner_steps=5, inner_lr=0.05)
    train = MetaTrainSettings(steps=steps, meta_batch=16, k_shot=5, q_query=10)
    return model, fams, settings, train


def mpea_table():
    from bench_composition import DATA, PROCESS, TARGET

    from matmeta.io.alloys import MPEA_COLUMNS, read_alloy_table

    if not DATA.exists():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_alloy_table(DATA, MPEA_COLUMNS["composition"], TARGET,
                                process_columns=PROCESS, drop_missing_target=True)


def composition_families(df, model, tt, max_elements: int, min_rows: int) -> list[Family]:
    """Element-system families of packed composition inputs (tasks stack, so vmap over tasks)."""
    from bench_composition import TARGET

    from matmeta.models._composition import (
        UnknownElementWarning,
        encode_compositions,
        pack_composition_inputs,
    )

    counts = df["family"].value_counts()
    keep = df[df["family"].isin(counts[counts >= min_rows].index)].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        x = pack_composition_inputs(encode_compositions(keep, model, max_elements=max_elements))
    y = tt.forward(torch.tensor(keep[TARGET].to_numpy(), dtype=torch.float32))
    fams = []
    for name in sorted(keep["family"].unique()):
        idx = torch.as_tensor(np.flatnonzero(keep["family"].to_numpy() == name))
        fams.append(Family(str(name), x[idx], y[idx]))
    return fams


def composition_setup(steps: int):
    from bench_composition import TARGET

    from matmeta.models._composition import CompositionModel
    from matmeta.models._transforms import TargetTransform

    df = mpea_table()
    if df is None:
        return None
    model = CompositionModel.for_table(df, hidden=64, embedding_dim=16)
    tt = TargetTransform.fit(df[TARGET].to_numpy(), kind="log10_standardize")
    fams = composition_families(df, model, tt, int(df["n_elements"].max()), 8)
    settings = MetaSettings("maml", inner_steps=5, inner_lr=0.05)
    train = MetaTrainSettings(steps=steps, meta_batch=8, k_shot=5, q_query=3)
    return model, fams, settings, train


def cgcnn_setup(steps: int):
    from matmeta.graphs import FeaturizerSettings
    from matmeta.io import load_builtin
    from matmeta.meta import families_from_table
    from matmeta.models._gnn import CGCNN

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_builtin("emt_binary_alloys")
    df = df[df["family"] != "pure"].copy()
    df["log10_B"] = np.log10(df["bulk_modulus_GPa"].to_numpy())
    fs = FeaturizerSettings(cutoff=5.0, max_neighbors=12, n_basis=20)
    fams = families_from_table(df, "cgcnn", family="family", target="log10_B", featurizer=fs)
    mean = float(torch.cat([f.y for f in fams]).mean())
    fams = [dataclasses.replace(f, y=(f.y - mean) * 5) for f in fams]
    model = CGCNN(hidden=32, n_conv=2, n_basis=fs.n_basis)
    settings = MetaSettings("maml", inner_steps=3, inner_lr=0.02)
    train = MetaTrainSettings(steps=steps, meta_batch=4, k_shot=3, q_query=4)
    return model, fams, settings, train


SETUPS = {"mlp": mlp_setup, "composition": composition_setup, "cgcnn": cgcnn_setup}


def variants(name: str) -> list[str]:
    if name == "cgcnn":  # graph tasks of different members differ in size: vmap needs shared
        return ["together (vmap, shared)", "together (member loop, shared)",
                "together (member loop)", "one after another"]
    return ["together (vmap)", "together (member loop)", "one after another"]


def run_variant(variant: str, setup, members: int) -> None:
    model, fams, settings, train = setup
    if variant == "one after another":
        for m in range(members):
            meta_train(model, fams, settings=settings, progress=False,
                       train=dataclasses.replace(train, seed=train.seed + m))
        return
    batching = "vmap" if "vmap" in variant else "loop"
    episodes = "shared" if "shared" in variant else "own"
    meta_train_ensemble(model, fams, members=members, settings=settings, train=train,
                        progress=False, episodes=episodes, member_batching=batching)


def speed(args) -> None:
    print(f"(a) speed: M = {args.members} members, {args.speed_steps} meta-steps, "
          f"threads={torch.get_num_threads()}, {args.rounds} interleaved rounds")
    for name in args.models:
        setup = SETUPS[name](args.speed_steps)
        if setup is None:
            print(f"{name}: skipped (../shared/datasets/alloys/mpea_alloys.csv not found)")
            continue
        model, fams, settings, train = setup
        names = variants(name)
        print(f"\n{name}: {model!r}, {settings.algorithm} {settings.inner_steps} inner steps, "
              f"meta-batch {train.meta_batch}, k={train.k_shot}, q={train.q_query}, "
              f"{len(fams)} families")
        if args.rounds > 0:
            run_variant(names[0], setup, args.members)  # warm-up (lazy imports, first vmap)
            times: dict[str, list[float]] = {v: [] for v in names}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for v in order:
                    t0 = time.perf_counter()
                    run_variant(v, setup, args.members)
                    times[v].append(time.perf_counter() - t0)
            base = float(np.median(times["one after another"]))
            print(f"  {'variant':<32} {'median s':>9} {'min s':>7} {'max s':>7}  "
                  "speed-up vs one after another (median ratio, min-max of per-round ratios)")
            for v in names:
                med = float(np.median(times[v]))
                per_round = [b / t for b, t in zip(times["one after another"], times[v],
                                                    strict=True)]
                print(f"  {v:<32} {med:9.2f} {min(times[v]):7.2f} {max(times[v]):7.2f}  "
                      f"{base / med:6.2f}x ({min(per_round):.2f}-{max(per_round):.2f})")
        if args.memory:
            print("  peak RSS above the RSS before training (each variant in its own process):")
            for v in names:
                out = subprocess.run(
                    [sys.executable, __file__, "--probe", name, v, "--members",
                     str(args.members), "--speed-steps", str(args.speed_steps)],
                    capture_output=True, text=True, check=True)
                probe = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"  {v:<32} {probe['peak_mib'] - probe['before_mib']:8.0f} MiB "
                      f"(peak {probe['peak_mib']:.0f} MiB)")


def probe(name: str, variant: str, members: int, steps: int) -> None:
    torch.set_num_threads(1)
    setup = SETUPS[name](steps)
    before = _status_mib("VmRSS")
    # reset the peak RSS to the current RSS (Linux clear_refs "5"), so the peak read after
    # training is the training's own, not that of imports and set-up
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    run_variant(variant, setup, members)
    print(json.dumps({"before_mib": before, "peak_mib": _status_mib("VmHWM")}))


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ calibration
def calibration(args) -> None:
    import bench_composition as bc

    from matmeta.bayes import gaussian_crps, gaussian_nlpd, sample_crps
    from matmeta.models._composition import (
        CompositionModel,
        UnknownElementWarning,
        encode_compositions,
        pack_composition_inputs,
    )
    from matmeta.models._transforms import TargetTransform

    t_start = time.perf_counter()
    df = mpea_table()
    if df is None:
        print("calibration: skipped (../shared/datasets/alloys/mpea_alloys.csv not found)")
        return
    counts = df["family"].value_counts()
    eligible = sorted(counts[counts >= 10].index)
    max_elements = int(df["n_elements"].max())
    settings = MetaSettings(args.algorithm, inner_steps=args.inner_steps,
                            inner_lr=args.inner_lr)
    print(f"(b) calibration, MPEA yield strength: seed {args.seed}, {args.folds} folds of the "
          f"{len(eligible)} systems with >= 10 rows, {args.val} validation systems per fold, "
          f"{args.shots}-shot, {args.draws} draws per system; ensemble of {args.members} "
          f"CompositionModels (hidden 64), {settings.algorithm} {settings.inner_steps} inner "
          f"steps at lr {settings.inner_lr}, {args.steps} meta-steps (clip {args.clip}), "
          f"meta-batch "
          f"{args.meta_batch}, train k={args.shots} q={args.q_query} (systems with >= "
          f"{args.shots + args.q_query} rows), threads={torch.get_num_threads()}")
    rng = np.random.default_rng(args.seed)
    order = [str(s) for s in rng.permutation(eligible)]
    folds = [order[i::args.folds] for i in range(args.folds)][:args.max_folds]
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(256, 1, generator=gen)
    rows: dict[str, dict[str, float]] = {}
    noise_by_fold, noise_tables = [], []
    for f, test_systems in enumerate(folds):
        t_fold = time.perf_counter()
        rest = [s for s in order if s not in test_systems]
        val_systems = [str(s) for s in rng.choice(rest, size=args.val, replace=False)]
        held = set(test_systems) | set(val_systems)
        train_df = df[~df["family"].isin(held)].reset_index(drop=True)
        model = CompositionModel.for_table(train_df, hidden=64, embedding_dim=16)
        tt = TargetTransform.fit(train_df[bc.TARGET].to_numpy(), kind="log10_standardize")
        train_fams = composition_families(train_df, model, tt, max_elements,
                                          args.shots + args.q_query)
        val_df = df[df["family"].isin(val_systems)].reset_index(drop=True)
        val_fams = composition_families(val_df, model, tt, max_elements, 1)
        ens = meta_train_ensemble(
            model, train_fams, val_fams, members=args.members, settings=settings,
            train=MetaTrainSettings(steps=args.steps, meta_batch=args.meta_batch,
                                    k_shot=args.shots, q_query=args.q_query,
                                    outer_lr=args.outer_lr, clip=args.clip,
                                    val_every=max(1, args.steps // 4),
                                    val_tasks=32, seed=args.seed * 100 + f),
            progress=args.progress)
        noise_by_fold.append(ens.noise_std)
        noise_tables.append(dict(ens.noise_std_by_k))
        t_train = time.perf_counter() - t_fold

        # the baselines of bench_composition on the same folds, supports and queries
        baseline_scores = None
        if not args.no_baselines:
            x_train = encode_compositions(train_df, model, max_elements=max_elements)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnknownElementWarning)
                x_val = encode_compositions(val_df, model, max_elements=max_elements)
            params, _ = bc.pretrain(
                model, x_train, tt.forward(torch.tensor(train_df[bc.TARGET].to_numpy(),
                                                        dtype=torch.float32)),
                args.pretrain_steps, args.seed * 100 + f,
                (x_val, torch.tensor(val_df[bc.TARGET].to_numpy())), tt)
        eps_rng = np.random.default_rng(args.seed * 1000 + f)
        # (its own stream, so that --eval-shots leaves the main figures' supports as they were)
        k_rng = np.random.default_rng(args.seed * 1000 + f + 500)
        val_eps = {s: bc.system_episodes(df[df["family"] == s].reset_index(drop=True), model,
                                         tt, max_elements, args.shots, args.draws, eps_rng)
                   for s in val_systems}
        if not args.no_baselines:
            lam = float(bc.SHRINK_GRID[int(np.argmin([
                np.mean([bc.baselines(model, params, tt, ep, lam, None)["offset (shrunk)"]
                         for ep in val_eps.values()]) for lam in bc.SHRINK_GRID]))])
            ft_scores = [np.mean([bc.finetuned_mae(model, params, tt, ep, *cfg).mean()
                                  for ep in val_eps.values()]) for cfg in bc.FINETUNE_GRID]
            ft = bc.FINETUNE_GRID[int(np.argmin(np.nan_to_num(ft_scores, nan=np.inf)))]
            baseline_scores = (params, lam, ft)
        for s in test_systems:
            sys_df = df[df["family"] == s].reset_index(drop=True)
            ep = bc.system_episodes(sys_df, model, tt, max_elements, args.shots, args.draws,
                                    eps_rng)
            x = pack_composition_inputs(ep["x"])
            out: dict[str, list[float]] = {}
            for d in range(args.draws):
                sup = ep["support"][d]
                qry = ep["query"][d]
                support = Samples(x[sup], ep["y_std"][sup])
                adapted = adapt_ensemble(model, ens.meta_params, support, ens.settings)
                preds = predict_members(model, adapted, x)[:, qry]       # (M, q) model units
                y_t, y = ep["y_std"][qry], ep["y"][qry]
                mean, var = preds.mean(0), preds.var(0)
                scores = {"ensemble": mean, "one member": preds[0]}
                for key, pred in scores.items():
                    out.setdefault(f"mae {key}", []).append(
                        float((tt.inverse(pred) - y).abs().mean()))
                for tag, noise in (("", 0.0), (" +noise", ens.noise_std)):
                    std = (var + noise ** 2).sqrt()
                    for level in (0.5, 0.9):
                        half = float(torch.special.ndtri(torch.tensor(0.5 + level / 2)))
                        inside = ((y_t - mean).abs() <= half * std).double().mean()
                        out.setdefault(f"cov{int(level * 100)}{tag}", []).append(float(inside))
                    out.setdefault(f"crps{tag}", []).append(
                        float(gaussian_crps(mean, std, y_t).mean()))
                    out.setdefault(f"nlpd{tag}", []).append(
                        float(gaussian_nlpd(mean, std, y_t).mean()))
                    draws = tt.inverse(mean + std * z)                     # (256, q) MPa
                    out.setdefault(f"crps_MPa{tag}", []).append(
                        float(sample_crps(draws, y).mean()))
            # other support sizes: the training k's noise term against the one calibrated for k
            for k in args.eval_shots:
                if k >= len(sys_df):
                    continue
                ep_k = bc.system_episodes(sys_df, model, tt, max_elements, k, args.draws,
                                          k_rng)
                x_k = pack_composition_inputs(ep_k["x"])
                for d in range(args.draws):
                    sup, qry = ep_k["support"][d], ep_k["query"][d]
                    adapted = adapt_ensemble(model, ens.meta_params,
                                             Samples(x_k[sup], ep_k["y_std"][sup]), ens.settings)
                    preds = predict_members(model, adapted, x_k)[:, qry]
                    mean, var = preds.mean(0), preds.var(0)
                    for tag, noise in (("train-k noise", ens.noise_std),
                                       ("noise for k", ens.noise_for(k))):
                        std = (var + noise ** 2).sqrt()
                        inside = ((ep_k["y_std"][qry] - mean).abs() <= Z90 * std).double()
                        out.setdefault(f"cov90 k={k:02d} {tag}", []).append(
                            float(inside.mean()))
            rows[s] = {k: float(np.mean(v)) for k, v in out.items()}
            if baseline_scores is not None:
                params, lam, ft = baseline_scores
                for k, v in bc.baselines(model, params, tt, ep, lam, ft).items():
                    rows[s][f"mae {k}"] = float(v)
        print(f"  fold {f}: {len(train_fams)} training systems, val {val_systems}, "
              f"noise_std {ens.noise_std:.3f} (model units), val loss "
              f"{ens.history[-1].get('val_loss', float('nan')):.3f} (members) / "
              f"{ens.history[-1].get('val_loss_ensemble', float('nan')):.3f} (mean), "
              f"train {t_train:.0f} s, fold {time.perf_counter() - t_fold:.0f} s", flush=True)

    systems = sorted(rows)
    keys = sorted({k for r in rows.values() for k in r})
    print(f"\nmean over {len(systems)} test systems (per system: mean over {args.draws} draws):")
    for k in keys:
        vals = np.array([rows[s][k] for s in systems if k in rows[s]])
        print(f"  {k:<28} {vals.mean():9.3f}")
    boot = np.random.default_rng(12345).integers(0, len(systems), (2000, len(systems)))
    per_k = sorted(k for k in keys if k.startswith("cov90 k="))
    for k in ("cov90", "cov90 +noise", "cov50", "cov50 +noise", *per_k):
        have = [s for s in systems if k in rows[s]]
        boot = np.random.default_rng(12345).integers(0, len(have), (2000, len(have)))
        vals = np.array([rows[s][k] for s in have])[boot].mean(1)
        lo, hi = np.percentile(vals, [2.5, 97.5])
        print(f"  {k:<34} 95% interval over {len(have)} systems [{lo:.3f}, {hi:.3f}]")
    boot = np.random.default_rng(12345).integers(0, len(systems), (2000, len(systems)))
    if "mae fine-tuned" in keys:
        for ref in ("fine-tuned", "offset (shrunk)", "pretrained"):
            a = np.array([rows[s]["mae ensemble"] for s in systems])
            b = np.array([rows[s][f"mae {ref}"] for s in systems])
            ratios = a[boot].mean(1) / b[boot].mean(1)
            lo, hi = np.percentile(ratios, [2.5, 97.5])
            print(f"  MAE ratio ensemble / {ref:<16} {a.mean() / b.mean():.3f} "
                  f"[{lo:.3f}, {hi:.3f}], ensemble better on {int((a < b).sum())} of "
                  f"{len(systems)} systems")
    print(f"noise_std per fold: {[round(v, 3) for v in noise_by_fold]}")
    print("noise by support size per fold: "
          + "; ".join(", ".join(f"{k}: {v:.3f}" for k, v in t.items()) for t in noise_tables))
    print(f"total time {time.perf_counter() - t_start:.0f} s, threads={torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["speed", "calibration", "all"], default="all")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="mlp,composition,cgcnn")
    ap.add_argument("--speed-steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--probe", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--max-folds", type=int, default=None, help="run only the first N folds")
    ap.add_argument("--val", type=int, default=4)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--q-query", type=int, default=2)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--steps", type=int, default=800, help="meta-steps of the ensemble")
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--algorithm", default="metasgd")
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--inner-lr", type=float, default=0.02,
                    help="inner learning rate (Meta-SGD: the initial value of the learned rates)")
    ap.add_argument("--outer-lr", type=float, default=1e-3)
    ap.add_argument("--clip", type=float, default=1.0, help="meta-gradient norm clip per member")
    ap.add_argument("--pretrain-steps", type=int, default=800)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--eval-shots", default="2,3,8",
                    help="other support sizes at which to compare the training k's noise term "
                         "with the one calibrated for each size (comma list; '' for none)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.models = [m for m in args.models.split(",") if m]
    args.eval_shots = [int(k) for k in args.eval_shots.split(",") if k.strip()]
    if args.probe:
        probe(args.probe[0], args.probe[1], args.members, args.speed_steps)
        return
    if args.part in ("speed", "all"):
        speed(args)
    if args.part in ("calibration", "all"):
        calibration(args)


if __name__ == "__main__":
    main()
