"""The engine on the project's real models: JMAK, Arrhenius-JMAK and the CGCNN."""

import math

import pytest
import torch

from matmeta.meta import (
    EpisodeSampler,
    Family,
    MetaSettings,
    MetaTrainSettings,
    init_meta_params,
    meta_gradient,
    meta_train,
    query_losses,
)
from matmeta.models import Samples
from tests.helpers import assert_tree_close

F64 = torch.float64
LN_K_MEAN, LN_N_MEAN = math.log(1e-2), math.log(2.0)


def _jmak_families(n, seed=0):
    """Isotherms with ln k ~ N(ln 1e-2, 0.3^2) 1/s and ln n ~ N(ln 2, 0.05^2), 1% noise."""
    from matmeta.models.parametric import jmak_curve

    gen = torch.Generator().manual_seed(seed)
    fams = []
    for i in range(n):
        lnk = LN_K_MEAN + 0.3 * torch.randn((), generator=gen, dtype=F64)
        lnn = LN_N_MEAN + 0.05 * torch.randn((), generator=gen, dtype=F64)
        t = torch.exp(math.log(10) + math.log(100) * torch.rand(12, generator=gen, dtype=F64))
        y = jmak_curve(t, lnk, torch.exp(lnn)) + 0.01 * torch.randn(12, generator=gen, dtype=F64)
        fams.append(Family(f"curve{i}", t, y))
    return fams


def test_jmak_meta_training_recovers_the_population_of_k_and_n():
    from matmeta.models.parametric import JMAK

    model = JMAK()
    start = {k: v.double() for k, v in model.init_params().items()}  # k = 1e-3 1/s, n = 2
    fams = _jmak_families(40)
    s = MetaSettings("maml", inner_steps=3, inner_lr=0.1)
    res = meta_train(model, fams[:30], settings=s, init_params=start, progress=False,
                     train=MetaTrainSettings(steps=60, meta_batch=8, k_shot=3, q_query=6,
                                             outer_lr=0.1))
    # the meta-learned initialisation sits at the centre of the population it was drawn from
    assert abs(res.params["ln_k"].item() - LN_K_MEAN) < 0.4
    assert abs(start["ln_k"].item() - LN_K_MEAN) > 2.0
    assert abs(res.params["ln_n"].item() - LN_N_MEAN) < 0.1
    # adapting it to 3 points of a held-out curve beats the same steps from the default start
    tasks = EpisodeSampler(fams[30:], 3, 9, 10, seed=1).sample()
    meta_err = query_losses(model, res.meta_params, tasks, s).mean()
    scratch_err = query_losses(model, start, tasks, s).mean()
    assert meta_err < 0.2 * scratch_err


def test_jmak_anil_on_a_physical_subset_and_vmap_equals_loop():
    from matmeta.models.parametric import JMAK

    model = JMAK()
    params = {k: v.double() for k, v in model.init_params().items()}
    params["ln_k"] = torch.tensor(LN_K_MEAN, dtype=F64)
    tasks = EpisodeSampler(_jmak_families(6), 3, 5, 4, seed=0).sample()
    for alg in ("anil", "maml", "metasgd", "imaml"):
        kw = dict(trainable=["ln_k"] if alg == "anil" else None, cg_steps=5)
        sv = MetaSettings(alg, 3, 0.1, batching="vmap", **kw)
        sl = MetaSettings(alg, 3, 0.1, batching="loop", **kw)
        meta = init_meta_params(model, params, sv)
        gv, _ = meta_gradient(model, meta, tasks, sv)
        gl, _ = meta_gradient(model, meta, tasks, sl)
        assert_tree_close(gv, gl, rtol=1e-9, atol=1e-12)
        assert all(bool(torch.isfinite(g).all()) for g in gv.values())


def test_arrhenius_jmak_meta_trains_a_few_steps_and_writes_a_prior(tmp_path):
    from matmeta.meta import write_prior
    from matmeta.models.parametric import ArrheniusJMAK, Prior, jmak_curve

    gen = torch.Generator().manual_seed(2)
    r = 8.314462618e-3
    fams = []
    for g in range(5):
        ln_k0 = 20.0 + torch.randn((), generator=gen, dtype=F64)
        rows = []
        for temp in (900.0, 950.0, 1000.0):
            t = torch.logspace(1, 4, 6, dtype=F64)
            lnk = ln_k0 - 200.0 / (r * temp)
            f = jmak_curve(t, lnk, torch.tensor(2.0, dtype=F64))
            rows.append(torch.stack([t, torch.full_like(t, temp), f], 1))
        data = torch.cat(rows)
        fams.append(Family(f"grade{g}", data[:, :2], data[:, 2]))
    model = ArrheniusJMAK()
    start = model.from_physical(k0_per_s=math.exp(20.0), Q_kJ_per_mol=200.0, n=1.5)
    s = MetaSettings("fomaml", 2, 0.05, trainable=["ln_k0", "ln_n"])
    res = meta_train(model, fams, settings=s, init_params=start, progress=False,
                     train=MetaTrainSettings(steps=5, meta_batch=3, k_shot=4, q_query=6,
                                             outer_lr=0.05))
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    path = write_prior(res, fams, tmp_path / "prior.json")
    prior = Prior.load(path, model=model)
    torch.testing.assert_close(prior.mean, model.flatten(res.params).double())
    assert bool((prior.std > 0).all())


def test_write_prior_names_families_that_diverged_and_the_std_fallback(tmp_path):
    from matmeta.meta import MetaResult, write_prior
    from matmeta.models.parametric import JMAK, Prior

    model = JMAK()
    params = {k: v.double() for k, v in model.init_params().items()}
    s = MetaSettings("maml", 2, 0.1).resolve(model)
    res = MetaResult(model, init_meta_params(model, params, s), s, MetaTrainSettings())
    good = _jmak_families(3)
    bad = Family("diverged", good[0].inputs, torch.full_like(good[0].y, float("nan")))
    with pytest.warns(UserWarning) as caught:
        with_bad = Prior.load(write_prior(res, [*good, bad], tmp_path / "a.json"), model=model)
    msg = str(caught[0].message)
    assert len(caught) == 1 and "\n" not in msg
    assert "diverged on 1 of 4 families" in msg and msg.endswith(": diverged")
    # the diverged family is left out: the spread is the one of the families that adapted
    clean = Prior.load(write_prior(res, good, tmp_path / "b.json"), model=model)
    torch.testing.assert_close(with_bad.std, clean.std, rtol=0, atol=0)
    torch.testing.assert_close(with_bad.mean, model.flatten(params).double())
    # one family left: no spread to measure, every std falls back to 1, said in the same line
    with pytest.warns(UserWarning, match=r"diverged on 1 of 2 families.*only 1 family adapted.*"
                                         r"falls back to 1 "):
        lone = Prior.load(write_prior(res, [good[0], bad], tmp_path / "c.json"), model=model)
    torch.testing.assert_close(lone.std, torch.ones_like(lone.std, dtype=F64))


@pytest.fixture(scope="module")
def salt_families():
    from ase.build import bulk

    from matmeta.graphs import FeaturizerSettings, structure_to_graph

    fs = FeaturizerSettings(cutoff=5.0, max_neighbors=8, n_basis=10)
    fams = []
    for fi, (a_el, b_el) in enumerate([("Na", "Cl"), ("K", "Br"), ("Mg", "O")]):
        graphs, ys = [], []
        for j in range(5):
            a = 4.0 + 0.15 * j + 0.3 * fi
            atoms = bulk(a_el + b_el, "rocksalt", a=a)
            graphs.append(structure_to_graph(atoms, settings=fs))
            ys.append(100.0 * (fi + 1) / a**3)
        fams.append(Family(b_el, graphs, torch.tensor(ys, dtype=F64), featurizer=fs))
    return fs, fams


def test_cgcnn_second_order_meta_gradient_equals_autograd_through_the_loop(salt_families):
    from matmeta.models._gnn import CGCNN

    fs, fams = salt_families
    model = CGCNN(hidden=6, n_conv=1, n_basis=fs.n_basis)
    params = {k: v.double() for k, v in model.init_params(torch.Generator().manual_seed(0)).items()}
    task = EpisodeSampler(fams, 2, 3, 1, seed=0).sample()[0]
    grads, _ = meta_gradient(model, params, [task], MetaSettings("maml", 2, 0.05))
    p = {k: v.clone().requires_grad_() for k, v in params.items()}

    def mse(q, s: Samples):
        return ((model.forward(q, s.inputs) - s.y) ** 2).mean()

    fast = dict(p)
    for _ in range(2):
        g = torch.autograd.grad(mse(fast, task.support), list(fast.values()), create_graph=True,
                                allow_unused=True)
        fast = {k: v - 0.05 * (gk if gk is not None else torch.zeros_like(v))
                for (k, v), gk in zip(fast.items(), g, strict=True)}
    ref = torch.autograd.grad(mse(fast, task.query), list(p.values()), allow_unused=True)
    ref = {k: (r if r is not None else torch.zeros_like(p[k])) for k, r in zip(p, ref, strict=True)}
    assert_tree_close(grads, ref, rtol=1e-8, atol=1e-11)


def test_cgcnn_meta_trains_with_anil_and_fomaml(salt_families):
    from matmeta.models._gnn import CGCNN

    fs, fams = salt_families
    model = CGCNN(hidden=6, n_conv=1, n_basis=fs.n_basis)
    init = {k: v.double() for k, v in model.init_params(torch.Generator().manual_seed(0)).items()}
    for alg in ("anil", "fomaml"):
        res = meta_train(model, fams[:2], fams[2:], settings=MetaSettings(alg, 2, 0.05),
                         init_params=init, progress=False,
                         train=MetaTrainSettings(steps=3, meta_batch=2, k_shot=2, q_query=3,
                                                 val_every=3, val_tasks=2, outer_lr=0.01))
        assert res.settings.trainable == (model.head_names() if alg == "anil" else None)
        assert math.isfinite(res.history[-1]["val_loss"])
        moved = [k for k in init if not torch.equal(init[k], res.params[k])]
        assert "head.0.weight" in moved and "conv.0.filter.weight" in moved or len(moved) > 2
