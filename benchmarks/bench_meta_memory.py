"""Peak memory of one meta-gradient: second-order MAML vs inner steps, against first-order and
implicit MAML, on the same MLP and tasks.

Each configuration runs in a fresh subprocess; the figure is the growth of the peak resident set
(VmHWM, reset through /proc/self/clear_refs just before the meta-gradient) above the resident set
after setup, so imports and data do not count. On CUDA (``--device cuda``) it is
``torch.cuda.max_memory_allocated`` instead.

    OMP_NUM_THREADS=1 python benchmarks/bench_meta_memory.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
from matmeta.meta import EpisodeSampler, Family, MetaSettings, meta_gradient, init_meta_params
from matmeta.models._mlp import MLP
alg, steps, threads, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
gen = torch.Generator().manual_seed(0)
fams = []
for i in range(16):
    x = torch.randn(600, 8, generator=gen)
    fams.append(Family(f"f{i}", x, torch.sin(x.sum(1)) * (1 + i / 16)))
model = MLP(8, (256, 256))
params = {k: v.to(device) for k, v in model.init_params(gen).items()}
tasks = EpisodeSampler(fams, 300, 300, 16, seed=0).sample()
tasks = [type(t)(type(t.support)(t.support.inputs.to(device), t.support.y.to(device)),
                 type(t.query)(t.query.inputs.to(device), t.query.y.to(device)), t.family)
         for t in tasks]
s = MetaSettings(alg, inner_steps=steps, inner_lr=0.01, proximal=1.0, cg_steps=10)
meta = init_meta_params(model, params, s)

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20
else:
    base = rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
t = time.perf_counter()
g, _ = meta_gradient(model, meta, tasks, s)
if device == "cuda":
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = rss("VmHWM")
print(json.dumps({"peak_extra_MiB": peak - base, "seconds": time.perf_counter() - t}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    configs = [("maml", 1), ("maml", 2), ("maml", 5), ("maml", 10), ("fomaml", 10),
               ("imaml", 10), ("reptile", 10)]
    print(f"MLP 8-256-256-1, meta-batch 16 (vmap), 300 support + 300 query points per task, "
          f"float32, threads {args.threads}, device {args.device}")
    for alg, steps in configs:
        out = subprocess.run([sys.executable, "-c", CHILD, alg, str(steps), str(args.threads),
                              args.device], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{alg:<8} inner steps {steps:>2}: peak +{row['peak_extra_MiB']:8.1f} MiB, "
              f"{row['seconds']:.2f} s per meta-gradient", flush=True)


if __name__ == "__main__":
    main()
