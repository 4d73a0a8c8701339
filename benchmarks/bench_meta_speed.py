"""Meta-training throughput (tasks/s): matmeta's torch.func engine against the `higher` library.

Both do the same exact second-order MAML (same model, same initial weights, same tasks, same inner
steps and rates) in the same process with the same thread count; the script checks that their
meta-gradients agree before timing them. Models: a small MLP (sinusoid regression), JMAK
(ln k, ln n on isotherms) and the CGCNN-class GNN.

The GNN has two `higher` baselines: the module a user would write, CGCNN from PyG ``CGConv``
layers (benchmarks/_pyg_cgcnn.py, loaded with matmeta's weights), and the stricter one, matmeta's
own functional forward wrapped in an ``nn.Module`` (same arithmetic on both sides, so it measures
the engine alone). GNN data: Materials Project binaries of 4-16 atoms from ../shared/datasets
when present, else rock-salt cells built with ASE. The GNN methods are timed in interleaved
rounds, the order rotating (ratio per round and median); peak RSS of one meta-gradient is
measured for each in a fresh subprocess.

    OMP_NUM_THREADS=1 python benchmarks/bench_meta_speed.py [--threads 1] [--quick]
    OMP_NUM_THREADS=1 python benchmarks/bench_meta_speed.py --only-gnn --rounds 5
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from matmeta.meta import EpisodeSampler, Family, MetaSettings, meta_gradient
from matmeta.models._mlp import MLP


def _timeit(fn, min_time: float, max_reps: int = 1000) -> float:
    fn()  # warm-up
    reps, start = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or reps >= max_reps:
            return elapsed / reps


class _FunctionalModule(nn.Module):
    """An nn.Module view of a functional model so that `higher` can patch its parameters."""

    def __init__(self, model, params):
        super().__init__()
        self.model = model
        self.names = list(params)
        for i, k in enumerate(self.names):
            self.register_parameter(f"p{i}", nn.Parameter(params[k].clone()))

    def forward(self, inputs):
        params = {k: getattr(self, f"p{i}") for i, k in enumerate(self.names)}
        return self.model.forward(params, inputs)


def higher_meta_gradient(module: nn.Module, tasks, steps: int, lr: float) -> list[torch.Tensor]:
    import higher

    inner_opt = torch.optim.SGD(module.parameters(), lr=lr)
    module.zero_grad()
    for t in tasks:
        with higher.innerloop_ctx(module, inner_opt, copy_initial_weights=False) as (fmod, diffopt):
            for _ in range(steps):
                loss = ((fmod(t.support.inputs) - t.support.y) ** 2).mean()
                diffopt.step(loss)
            q = ((fmod(t.query.inputs) - t.query.y) ** 2).mean() / len(tasks)
            q.backward()
    return [p.grad.clone() for p in module.parameters()]


def compare(label: str, model, params, families, k: int, q: int, meta_batch: int, steps: int,
            lr: float, min_time: float, batching: str = "auto") -> dict:
    from matmeta.meta._algorithms import _batching

    tasks = EpisodeSampler(families, k, q, meta_batch, seed=0).sample()
    s = MetaSettings("maml", inner_steps=steps, inner_lr=lr, batching=batching)
    ours_g, _ = meta_gradient(model, params, tasks, s)
    module = _FunctionalModule(model, params)
    ref = higher_meta_gradient(module, tasks, steps, lr)
    diff = sum(float(((ours_g[name] - r) ** 2).sum()) for name, r in zip(params, ref, strict=True))
    norm = sum(float((r**2).sum()) for r in ref)
    err = math.sqrt(diff / norm)
    t_ours = _timeit(lambda: meta_gradient(model, params, tasks, s), min_time)
    t_higher = _timeit(lambda: higher_meta_gradient(module, tasks, steps, lr), min_time)
    row = {"model": label, "meta_batch": meta_batch, "inner_steps": steps,
           "path": _batching(tasks, s),
           "ours_tasks_per_s": meta_batch / t_ours, "higher_tasks_per_s": meta_batch / t_higher,
           "speedup": t_higher / t_ours, "max_rel_grad_diff": err}
    print(f"{label:<8} batch {meta_batch:>3} steps {steps} [{row['path']}]: "
          f"matmeta {row['ours_tasks_per_s']:8.1f} tasks/s, higher {row['higher_tasks_per_s']:7.1f}"
          f" tasks/s, ratio {row['speedup']:5.2f}x (relative meta-gradient difference {err:.1e})",
          flush=True)
    return row


def sinusoids(n: int, size: int = 30) -> list[Family]:
    gen = torch.Generator().manual_seed(0)
    fams = []
    for i in range(n):
        a = 0.5 + 1.5 * torch.rand(()).item()
        b = math.pi * torch.rand(()).item()
        x = 10 * torch.rand(size, 1, generator=gen) - 5
        fams.append(Family(f"sin{i}", x, a * torch.sin(x[:, 0] + b)))
    return fams


def jmak_curves(n: int) -> list[Family]:
    from matmeta.models.parametric import jmak_curve

    gen = torch.Generator().manual_seed(0)
    fams = []
    for i in range(n):
        lnk = math.log(1e-2) + 0.3 * torch.randn((), generator=gen)
        t = torch.logspace(1, 3, 20)
        fams.append(Family(f"c{i}", t, jmak_curve(t, lnk, torch.tensor(2.0))))
    return fams


def salts(n_fam: int, per_fam: int, settings) -> list[Family]:
    from ase.build import bulk

    from matmeta.graphs import structure_to_graph

    pairs = [("Na", "Cl"), ("K", "Br"), ("Mg", "O"), ("Li", "F"), ("Ca", "S"), ("Rb", "I")]
    fams = []
    for fi in range(n_fam):
        a_el, b_el = pairs[fi % len(pairs)]
        graphs, ys = [], []
        for j in range(per_fam):
            a = 4.0 + 0.05 * j + 0.2 * fi
            atoms = bulk(a_el + b_el, "rocksalt", a=a, cubic=True)  # 8 atoms
            graphs.append(structure_to_graph(atoms, settings=settings))
            ys.append(100.0 / a**3)
        fams.append(Family(f"{b_el}{fi}", graphs, torch.tensor(ys), featurizer=settings))
    return fams


def mp_binaries(settings, n_fam: int = 8, per_fam: int = 24) -> list[Family] | None:
    """Real Materials Project binaries of 4-16 atoms (target log10 K_VRH in GPa), None if absent.

    The ``n_fam`` largest families (most electronegative element) and the first ``per_fam``
    qualifying compounds of each, in file order.
    """
    import gzip
    import json
    from pathlib import Path

    from matmeta.graphs import structure_to_graph

    path = (Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "structures"
            / "mp_binary_elasticity.json.gz")
    if not path.exists():
        return None
    by_family: dict[str, list] = {}
    with gzip.open(path, "rt") as fh:
        for e in json.load(fh):
            if 4 <= len(e["structure"]["sites"]) <= 16 and float(e["bulk_modulus_vrh"]) > 0:
                by_family.setdefault(e["family"], []).append(e)
    largest = sorted(by_family, key=lambda f: -len(by_family[f]))[:n_fam]
    fams = []
    for f in largest:
        rows = by_family[f][:per_fam]
        graphs = [structure_to_graph(e["structure"], settings=settings) for e in rows]
        y = torch.tensor([math.log10(float(e["bulk_modulus_vrh"])) for e in rows])
        fams.append(Family(f, graphs, y, featurizer=settings))
    return fams


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rel_diff(a: dict, b: dict) -> float:
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in b)
    return math.sqrt(diff / sum(float((v**2).sum()) for v in b.values()))


def gnn_setup(args):
    """Model, weights, families and one fixed meta-batch of the CGCNN comparison."""
    from matmeta.graphs import FeaturizerSettings
    from matmeta.models._gnn import CGCNN

    fs = FeaturizerSettings(cutoff=6.0, max_neighbors=12, n_basis=40)
    g = CGCNN(hidden=64, n_conv=3, n_basis=40)
    gp = g.init_params(torch.Generator().manual_seed(0))
    fams = None if args.synthetic else mp_binaries(fs)
    data = "MP binaries, 4-16 atoms, log10 K_VRH"
    if fams is None:
        fams, data = salts(6, 24, fs), "rock-salt cells of 8 atoms (ASE)"
    tasks = EpisodeSampler(fams, 10, 10, args.meta_batch, seed=0).sample()
    return g, gp, fams, tasks, data


def gnn_methods(g, gp, tasks, steps: int, lr: float) -> dict:
    """name -> zero-argument function computing one meta-gradient of ``tasks``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _pyg_cgcnn import PygCGCNN

    s = MetaSettings("maml", inner_steps=steps, inner_lr=lr, batching="loop")
    pyg = PygCGCNN.from_params(g, gp)
    ours_module = _FunctionalModule(g, gp)
    def with_pyg():
        higher_meta_gradient(pyg, tasks, steps, lr)
        return pyg.grads_as_params(g)

    def with_our_forward():
        return dict(zip(gp, higher_meta_gradient(ours_module, tasks, steps, lr), strict=True))

    return {"matmeta": lambda: meta_gradient(g, gp, tasks, s)[0],
            "higher+PyG CGConv": with_pyg, "higher+our forward": with_our_forward}


def gnn_memory(args) -> None:
    """(Subprocess) peak resident-set growth of one meta-gradient of one method, as JSON."""
    import json

    g, gp, _, tasks, _ = gnn_setup(args)
    fn = gnn_methods(g, gp, tasks, args.gnn_steps, 0.01)[args.memory_of]
    base = _rss_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets the peak (VmHWM) to the current resident set
    fn()
    print(json.dumps({"peak_MiB": _rss_mib("VmHWM"), "extra_MiB": _rss_mib("VmHWM") - base}))


def gnn_benchmark(args) -> None:
    """matmeta's loop path against `higher` on a CGConv module and on our own forward."""
    import json
    import statistics
    import subprocess

    g, gp, fams, tasks, data = gnn_setup(args)
    mb, steps, lr = args.meta_batch, args.gnn_steps, 0.01
    n_atoms = [int(t.support.inputs.z.shape[0]) / 10 for t in tasks]
    n_edges = [int(t.support.inputs.edge_index.shape[1]) / 10 for t in tasks]
    print(f"cgcnn: 3 conv, 64 hidden, 12 neighbours; data: {data}; {len(fams)} families; "
          f"meta-batch {mb} of 10+10 structures ({statistics.mean(n_atoms):.1f} atoms, "
          f"{statistics.mean(n_edges):.0f} edges per structure on average); second-order MAML, "
          f"{steps} inner SGD steps, inner lr {lr}", flush=True)
    methods = gnn_methods(g, gp, tasks, steps, lr)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _pyg_cgcnn import PygCGCNN

    pyg = PygCGCNN.from_params(g, gp)
    b = tasks[0].query.inputs
    with torch.no_grad():
        fwd = float((pyg(b) - g.forward(gp, b)).abs().max() / g.forward(gp, b).abs().max())
    grads = {name: fn() for name, fn in methods.items()}  # also the warm-up
    diffs = {name: _rel_diff(grads["matmeta"], v) for name, v in grads.items() if name != "matmeta"}
    print(f"check: forward relative difference PyG vs matmeta {fwd:.1e}; meta-gradient "
          "relative difference to matmeta's: "
          + ", ".join(f"{name} {d:.1e}" for name, d in diffs.items()), flush=True)
    if fwd > 1e-5 or max(diffs.values()) > 1e-4:
        raise SystemExit("the baselines do not compute the same meta-gradient: not timing them")
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(args.rounds):
        # the order rotates from round to round, so no method always runs first or after another
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t)
        ours = times["matmeta"][-1]
        print(f"round {r + 1}: " + ", ".join(
            f"{name} {mb / ts[-1]:5.2f} tasks/s" for name, ts in times.items())
            + "; matmeta / " + ", ".join(
            f"{name} {ts[-1] / ours:4.2f}x" for name, ts in times.items() if name != "matmeta"),
            flush=True)
    for name, ts in times.items():
        if name == "matmeta":
            continue
        ratios = [b / a for a, b in zip(times["matmeta"], ts, strict=True)]
        ours = mb / statistics.median(times["matmeta"])
        print(f"median over {args.rounds} rounds: matmeta {ours:.2f} tasks/s, "
              f"{name} {mb / statistics.median(ts):.2f} tasks/s; ratio per round "
              f"{', '.join(f'{x:.2f}' for x in ratios)}, median {statistics.median(ratios):.2f}x",
              flush=True)
    if args.skip_memory:
        return
    for name in methods:
        cmd = [sys.executable, __file__, "--memory-of", name, "--threads", str(args.threads),
               "--meta-batch", str(mb), "--gnn-steps", str(steps)] + (
            ["--synthetic"] if args.synthetic else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        print(f"memory, one meta-gradient in a fresh process: {name}: peak RSS "
              f"{m['peak_MiB']:.0f} MiB, {m['extra_MiB']:.0f} MiB above the resident set after "
              "setup", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="shorter timings")
    ap.add_argument("--skip-gnn", action="store_true")
    ap.add_argument("--only-gnn", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved GNN timing rounds")
    ap.add_argument("--meta-batch", type=int, default=16, help="GNN meta-batch")
    ap.add_argument("--gnn-steps", type=int, default=2, help="GNN inner steps")
    ap.add_argument("--synthetic", action="store_true",
                    help="GNN on ASE rock-salt cells even when ../shared/datasets is present")
    ap.add_argument("--skip-memory", action="store_true", help="no GNN peak-RSS subprocesses")
    ap.add_argument("--relatives", action="store_true", help="also time GNN ANIL and FOMAML")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        gnn_memory(args)
        return
    min_time = 0.5 if args.quick else 2.0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, "
          "second-order MAML, plain-SGD inner loop")
    gen = torch.Generator().manual_seed(0)
    if not args.only_gnn:
        mlp = MLP(1, (40, 40))
        p = mlp.init_params(gen)
        fams = sinusoids(50)
        for mb in (16, 64):
            compare("mlp", mlp, p, fams, 10, 10, mb, 5, 0.01, min_time)
        from matmeta.models.parametric import JMAK

        jm = JMAK()
        jp = {k: v.float() for k, v in jm.init_params().items()}
        jfams = jmak_curves(40)
        for mb in (16, 64):
            compare("jmak", jm, jp, jfams, 5, 10, mb, 5, 0.1, min_time)
    if not args.skip_gnn:
        gnn_benchmark(args)
        if args.relatives:
            # the cheaper relatives, against the same second-order `higher` baseline
            g, gp, _, tasks, _ = gnn_setup(args)
            module = _FunctionalModule(g, gp)
            steps = args.gnn_steps
            t_higher = _timeit(lambda: higher_meta_gradient(module, tasks, steps, 0.01), min_time)
            for alg in ("anil", "fomaml"):
                s = MetaSettings(alg, inner_steps=steps, inner_lr=0.01)
                t = _timeit(lambda s=s: meta_gradient(g, gp, tasks, s), min_time)
                print(f"cgcnn    batch {len(tasks):>3} steps {steps} [loop]: matmeta {alg} "
                      f"{len(tasks) / t:6.1f} tasks/s = {t_higher / t:5.2f}x higher+our forward's "
                      "second-order MAML", flush=True)


if __name__ == "__main__":
    main()
