"""Influence estimators vs K leave-one-out re-adaptations (a loop), same run, same adaptation.

For K = 5, 20, 50 support samples and each model (JMAK on a noisy synthetic isotherm, an MLP on
a noisy sine, and optionally the CGCNN adapted to MP iodides), time:

- the baseline: exact leave-one-out as a loop of K re-adaptations;
- exact leave-one-out vmapped over deletions;
- the unrolled, implicit (where the inner loop converged) and TracIn estimators;

and report each one's speed-up over the loop and its Spearman / Pearson agreement with LOO on the
query loss. The issue's bar: estimators at least K/2 times cheaper than the loop at K = 20.

Run:
    OMP_NUM_THREADS=1 python benchmarks/bench_influence.py [--gnn] [--ks 5,20,50]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matmeta.errors import InputError  # noqa: E402
from matmeta.influence import InfluenceRequest, agreement, estimate, loo_influence  # noqa: E402
from matmeta.models import Samples  # noqa: E402
from matmeta.models._mlp import MLP  # noqa: E402
from matmeta.models.parametric._jmak import JMAK  # noqa: E402

F64 = torch.float64


def jmak_request(k: int, seed: int = 0) -> InfluenceRequest:
    gen = torch.Generator().manual_seed(seed)
    model = JMAK()
    truth = model.from_physical(k_per_s=1e-3, n=2.0)
    t = torch.logspace(1.8, 3.6, k, dtype=F64)
    y = model.forward(truth, t) + 0.03 * torch.randn(k, generator=gen, dtype=F64)
    tq = torch.logspace(1.9, 3.5, 10, dtype=F64)
    start = model.from_physical(k_per_s=5e-4, n=1.5)
    yq = model.forward(truth, tq) + 0.03 * torch.randn(10, generator=gen, dtype=F64)
    return InfluenceRequest(model, start, Samples(t, y), {"steps": 300, "lr": 5.0},
                            query=Samples(tq, yq))


def mlp_request(k: int, seed: int = 0) -> InfluenceRequest:
    # FINDINGS' setting: an MLP adapted with 5 steps (not converged)
    gen = torch.Generator().manual_seed(seed)
    model = MLP(in_dim=1, hidden=(40, 40), dtype="float64")
    params = model.init_params(gen)
    x = 4 * torch.rand(k, 1, generator=gen, dtype=F64) - 2
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(k, generator=gen, dtype=F64)
    xq = torch.linspace(-2, 2, 20, dtype=F64)[:, None]
    yq = torch.sin(2 * xq[:, 0]) + 0.1 * torch.randn(20, generator=gen, dtype=F64)
    return InfluenceRequest(model, params, Samples(x, y), {"steps": 5, "lr": 0.1},
                            query=Samples(xq, yq))


def gnn_request(k: int, setup: tuple) -> InfluenceRequest:
    from matmeta.graphs import GraphBatch  # noqa: F401  (the support is a GraphBatch)

    model, params, support_all, query, ids, _ = setup
    support = _first_graphs(support_all, k)
    return InfluenceRequest(model, params, support, {"steps": 10, "lr": 0.05}, query=query,
                            ids=ids[:k])


def _first_graphs(samples: Samples, k: int) -> Samples:
    from matmeta.graphs import GraphBatch

    b = samples.inputs
    atoms = int(b.num_atoms[:k].sum())
    edge_keep = b.edge_index[1] < atoms
    batch = GraphBatch(b.z[:atoms], b.edge_index[:, edge_keep], b.edge_attr[edge_keep],
                       b.distance[edge_keep], b.graph_index[:atoms], b.num_atoms[:k])
    return Samples(batch, samples.y[:k])


REPEATS = 1


def timed(fn):
    """Run ``fn`` REPEATS times; return its last result and the median wall time (s)."""
    times, out = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def warm_up(req: InfluenceRequest) -> None:
    """Run every path once on a 2-step copy so one-time costs do not land on the first timing."""
    short = InfluenceRequest(req.model, req.params, req.support, {**req.inner, "steps": 2},
                             query=req.query, targets=req.targets)
    loo_influence(short, mode="loop", progress=False)
    loo_influence(short, mode="vmap")
    for est in ("unrolled", "tracin"):
        estimate(short, est, progress=False)


def bench(name: str, req: InfluenceRequest, rows: list[str]) -> None:
    k = req.num_support
    warm_up(req)
    loo_loop, t_loop = timed(lambda: loo_influence(req, mode="loop", progress=False))
    ref = loo_loop.scores[:, 0].numpy()
    results = {}
    if getattr(req.model, "name", "") != "cgcnn" or k <= 20:
        vm, t_vm = timed(lambda: loo_influence(req, mode="vmap"))
        diff = float((vm.scores - loo_loop.scores).abs().max())
        results["loo (vmap)"] = (t_vm, {"spearman": 1.0, "pearson": 1.0}, f"max diff {diff:.1e}")
    for est in ("unrolled", "implicit", "tracin"):
        try:
            out, t = timed(lambda est=est: estimate(req, est, **(
                {"progress": False} if est != "implicit" else {})))
        except InputError as exc:
            results[est] = (math.nan, None, "refused: " + str(exc).split(":")[0])
            continue
        note = ""
        if est == "implicit":
            note = f"damping {out.info['damping']:.2g}, grad ratio {out.info['grad_ratio']:.1e}"
        if out.scores.shape[1] > 1:
            others = [agreement(out.scores[:, j].numpy(), loo_loop.scores[:, j].numpy())
                      for j in range(1, out.scores.shape[1])]
            note += (f"{'; ' if note else ''}params: Spearman "
                     f"{sum(a['spearman'] for a in others) / len(others):.3f}, Pearson "
                     f"{sum(a['pearson'] for a in others) / len(others):.3f} (mean)")
        results[est] = (t, agreement(out.scores[:, 0].numpy(), ref), note)
    for est, (t, agree, note) in results.items():
        ratio = t_loop / t if t == t else math.nan
        sp = f"{agree['spearman']:.3f}" if agree else "-"
        pe = f"{agree['pearson']:.3f}" if agree else "-"
        line = (f"| {name} | {k} | {t_loop:.3f} | {est} | {t:.4f} | {ratio:.1f}x "
                f"(bar {k / 2:.1f}x) | {sp} | {pe} | {note} |")
        rows.append(line)
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="5,20,50", help="support sizes [5,20,50]")
    ap.add_argument("--models", default="jmak,mlp", help="jmak,mlp (add gnn with --gnn)")
    ap.add_argument("--gnn", action="store_true", help="also the CGCNN on MP iodides")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1,
                    help="time each method this many times and report the median [1]")
    args = ap.parse_args(argv)
    global REPEATS
    REPEATS = max(1, args.repeats)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float64, CPU, "
          f"median of {REPEATS} runs")
    print("| model | K | LOO loop (s) | estimator | time (s) | speed-up vs loop | query-loss "
          "Spearman | query-loss Pearson | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows: list[str] = []
    models = args.models.split(",")
    for k in ks:
        if "jmak" in models:
            bench("JMAK (300 steps, lr 5)", jmak_request(k), rows)
        if "mlp" in models:
            bench("MLP 1-40-40-1 (5 steps, lr 0.1)", mlp_request(k), rows)
    if args.gnn:
        from tests.influence._gnn_setup import pretrained_family

        path = ROOT.parent / "shared" / "datasets" / "structures" / "mp_binary_elasticity.json.gz"
        setup = pretrained_family(path, family="I", n_train=80, k_support=max(ks), n_query=8,
                                  train_steps=100)
        for k in ks:
            bench("CGCNN 16x2 (10 steps, lr 0.05)", gnn_request(k, setup), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
