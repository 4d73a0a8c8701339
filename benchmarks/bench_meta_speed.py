"""Meta-training throughput (tasks/s): matmeta's torch.func engine against the `higher` library.

Both do the same exact second-order MAML (same model, same initial weights, same tasks, same inner
steps and rates) in the same process with the same thread count; the script checks that their
meta-gradients agree before timing them. Models: a small MLP (sinusoid regression), JMAK
(ln k, ln n on isotherms) and the CGCNN-class GNN (rock-salt crystals built with ASE).

    OMP_NUM_THREADS=1 python benchmarks/bench_meta_speed.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="shorter timings")
    ap.add_argument("--skip-gnn", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    min_time = 0.5 if args.quick else 2.0
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, "
          "second-order MAML, plain-SGD inner loop")
    gen = torch.Generator().manual_seed(0)
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
        from matmeta.graphs import FeaturizerSettings
        from matmeta.models._gnn import CGCNN

        fs = FeaturizerSettings(cutoff=6.0, max_neighbors=12, n_basis=40)
        g = CGCNN(hidden=64, n_conv=3, n_basis=40)
        gp = g.init_params(gen)
        gfams = salts(6, 24, fs)
        compare("cgcnn", g, gp, gfams, 10, 10, 16, 2, 0.01, min_time)


if __name__ == "__main__":
    main()
