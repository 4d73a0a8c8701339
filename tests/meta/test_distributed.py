"""torch.distributed: two CPU processes (gloo, file rendezvous) reach the one-process parameters."""

import pytest
import torch

from matmeta.meta import Family, MetaSettings, MetaTrainSettings, meta_train
from matmeta.models._mlp import MLP
from tests.helpers import assert_tree_close

pytestmark = pytest.mark.distributed


def _setup():
    gen = torch.Generator().manual_seed(0)
    fams = []
    for i in range(5):
        x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
        fams.append(Family(f"f{i}", x, torch.sin(x[:, 0]) * (i + 1) + x[:, 1]))
    model = MLP(2, (6,), dtype="float64")
    # an odd meta-batch: ranks get 3 and 2 tasks, so the average needs the global count
    train = MetaTrainSettings(steps=4, meta_batch=5, k_shot=3, q_query=4, outer_lr=0.05)
    return model, fams, train


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a file rendezvous: no port to pick, so no race with other processes for one
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, fams, train = _setup()
        res = meta_train(model, fams, settings=MetaSettings("maml", 2, 0.1), train=train,
                         out=out, progress=False)
        torch.save({k: v for k, v in res.meta_params.items()}, f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    model, fams, train = _setup()
    single = meta_train(model, fams, settings=MetaSettings("maml", 2, 0.1), train=train,
                        progress=False)
    for rank in (0, 1):
        got = torch.load(f"{out}.rank{rank}", weights_only=True)
        assert_tree_close(got, single.meta_params, rtol=1e-12, atol=1e-13)
    # only rank 0 writes the checkpoint
    ck = torch.load(out, weights_only=True)
    assert ck["step"] == 4 and ck["extra"] == {}
    assert_tree_close(ck["meta_params"], single.meta_params, rtol=1e-12, atol=1e-13)
