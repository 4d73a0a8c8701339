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


def _arrhenius_grades(n=5, seed=2):
    """Noise-free grades: ln k0 ~ N(20, 1) ln(1/s), Q = 200 kJ/mol, n = 2, isotherms at 900,
    950 and 1000 K. Returns the families and the drawn ln k0."""
    from matmeta.models.parametric import jmak_curve

    gen = torch.Generator().manual_seed(seed)
    r = 8.314462618e-3
    fams, ln_k0s = [], []
    for g in range(n):
        ln_k0 = 20.0 + torch.randn((), generator=gen, dtype=F64)
        ln_k0s.append(float(ln_k0))
        rows = []
        for temp in (900.0, 950.0, 1000.0):
            t = torch.logspace(1, 4, 6, dtype=F64)
            lnk = ln_k0 - 200.0 / (r * temp)
            f = jmak_curve(t, lnk, torch.tensor(2.0, dtype=F64))
            rows.append(torch.stack([t, torch.full_like(t, temp), f], 1))
        data = torch.cat(rows)
        fams.append(Family(f"grade{g}", data[:, :2], data[:, 2]))
    return fams, torch.tensor(ln_k0s, dtype=F64)


def _untrained(model, params=None):
    """A MetaResult at ``params`` (default: the model's defaults), as write_prior receives."""
    from matmeta.meta import MetaResult

    params = {k: v.double() for k, v in (params or model.init_params()).items()}
    s = MetaSettings("maml", 2, 0.1).resolve(model)
    return MetaResult(model, init_meta_params(model, params, s), s, MetaTrainSettings())


def _learn_prior_on(model, fams):
    from matmeta.bayes import learn_prior

    return learn_prior(model, [f.inputs for f in fams], [f.y for f in fams]).prior


def test_arrhenius_jmak_meta_trains_a_few_steps_and_writes_a_prior(tmp_path):
    from matmeta.meta import write_prior
    from matmeta.models.parametric import ArrheniusJMAK, Prior

    fams, ln_k0s = _arrhenius_grades()
    model = ArrheniusJMAK()
    start = model.from_physical(k0_per_s=math.exp(20.0), Q_kJ_per_mol=200.0, n=1.5)
    s = MetaSettings("fomaml", 2, 0.05, trainable=["ln_k0", "ln_n"])
    res = meta_train(model, fams, settings=s, init_params=start, progress=False,
                     train=MetaTrainSettings(steps=5, meta_batch=3, k_shot=4, q_query=6,
                                             outer_lr=0.05))
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    # exact curves: the learned noise (~6e-8) is floored at 1e-3, said in the warning
    with pytest.warns(UserWarning, match=r"learned noise std .* is below 0.001"):
        path = write_prior(res, fams, tmp_path / "prior.json")
    prior = Prior.load(path, model=model)
    # the prior is Laplace-EM across the grades, not the meta-learned initialisation
    direct = _learn_prior_on(model, fams)
    torch.testing.assert_close(prior.mean, direct.mean, rtol=1e-10, atol=1e-10)
    # exact data make Q's and n's variances the floor (1e-8) and their covariances rounding
    # noise (1e-13..1e-11, not reproducible to the last bit across thread schedules)
    torch.testing.assert_close(prior.cov, direct.cov, rtol=1e-9, atol=1e-10)
    assert direct.noise_std < 1e-4 and prior.noise_std == 1e-3
    floor_off = Prior.load(write_prior(res, fams, tmp_path / "p2.json", min_noise_std=0.0))
    assert math.isclose(floor_off.noise_std, direct.noise_std, rel_tol=1e-6)
    assert prior.model_config == model.config()
    # exact curves: every grade's MAP fit is its truth, so the prior is the grades' population:
    # mean and (ddof 0) spread of the drawn ln k0, Q = 200 kJ/mol and n = 2 shared (std floored)
    assert abs(prior.mean[0].item() - ln_k0s.mean().item()) < 1e-3
    assert abs(prior.std[0].item() - ln_k0s.std(unbiased=False).item()) < 1e-3
    assert abs(prior.mean[1].item() - 200.0) < 1e-3 and abs(prior.mean[2].item()
                                                             - math.log(2.0)) < 1e-6
    assert prior.std[1].item() < 1e-3


def test_write_prior_learns_the_population_of_k_and_n_not_the_meta_initialisation(tmp_path):
    from matmeta.meta import write_prior
    from matmeta.models.parametric import JMAK, Prior

    model = JMAK()
    fams = _jmak_families(40)  # ln k ~ N(ln 1e-2, 0.3^2) 1/s, ln n ~ N(ln 2, 0.05^2), noise 0.01
    res = _untrained(model)  # initialisation at k = 1e-3 1/s: 2.3 in ln k from the population
    prior = Prior.load(write_prior(res, fams, tmp_path / "prior.json"), model=model)
    direct = _learn_prior_on(model, fams)
    torch.testing.assert_close(prior.mean, direct.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior.cov, direct.cov, rtol=1e-12, atol=1e-14)
    # the population the curves were drawn from, within sampling error of 40 families
    assert abs(prior.mean[0].item() - LN_K_MEAN) < 0.15
    assert 0.2 < prior.std[0].item() < 0.45
    assert abs(prior.mean[1].item() - LN_N_MEAN) < 0.03 and prior.std[1].item() < 0.1
    assert 0.008 < prior.noise_std < 0.013
    assert abs(res.params["ln_k"].item() - LN_K_MEAN) > 2.0


def test_write_prior_leaves_out_families_it_cannot_fit_in_one_warning(tmp_path):
    from matmeta.errors import InputError
    from matmeta.meta import write_prior
    from matmeta.models.parametric import JMAK, ArrheniusJMAK, Prior

    model = JMAK()
    res = _untrained(model)
    good = _jmak_families(6)
    bad = Family("unmeasured", good[0].inputs, torch.full_like(good[0].y, float("nan")))
    with pytest.warns(UserWarning) as caught:
        with_bad = Prior.load(write_prior(res, [*good, bad], tmp_path / "a.json"), model=model)
    msg = str(caught[0].message)
    assert len(caught) == 1 and "\n" not in msg
    assert "1 of 7 families cannot be fitted" in msg and "unmeasured (a non-finite" in msg
    # the left-out family changes nothing: the prior is the one of the other six
    clean = Prior.load(write_prior(res, good, tmp_path / "b.json"), model=model)
    torch.testing.assert_close(with_bad.mean, clean.mean, rtol=0, atol=0)
    torch.testing.assert_close(with_bad.cov, clean.cov, rtol=0, atol=0)
    # one family left: no prior across families; a one-line error and no file
    with pytest.raises(InputError, match=r"c\.json: 1 usable family of 2; .*at least 2; "
                                         r"left out: unmeasured \(") as err:
        write_prior(res, [good[0], bad], tmp_path / "c.json")
    assert "\n" not in str(err.value) and not (tmp_path / "c.json").exists()
    # an Arrhenius-JMAK grade measured at one temperature cannot be fitted: named, left out
    grades, _ = _arrhenius_grades(3)
    one_t = Family("one_temperature", grades[0].inputs[:6], grades[0].y[:6])
    amodel = ArrheniusJMAK()
    with pytest.warns(UserWarning, match=r"one_temperature \(ArrheniusJMAK: an Arrhenius fit "
                                         r"needs isotherms at two or more temperatures"):
        write_prior(_untrained(amodel), [*grades, one_t], tmp_path / "d.json")
    with pytest.raises(InputError, match="a prior file needs a parametric model"):
        from matmeta.models._mlp import MLP

        write_prior(_untrained(MLP(1)), good, tmp_path / "e.json")


def _t_half_band(prior, samples=100_000):
    """The prior's 95% band on ln t_half_s, t_half = ln(2)^(1/n) / k, by sampling (ln k, ln n)."""
    gen = torch.Generator().manual_seed(0)
    L = torch.linalg.cholesky(prior.cov)
    theta = prior.mean + torch.randn(samples, 2, generator=gen, dtype=F64) @ L.T
    ln_t_half = math.log(math.log(2.0)) / theta[:, 1].exp() - theta[:, 0]
    return torch.quantile(ln_t_half, torch.tensor([0.025, 0.975], dtype=F64))


@pytest.mark.shared_data
def test_write_prior_on_tungsten_describes_the_training_isotherms(tmp_path):
    from matmeta.fitting import fit_curves
    from matmeta.meta import split_families, write_prior
    from matmeta.meta._data import load_families
    from matmeta.models.parametric import JMAK, Prior
    from tests.helpers import shared_dataset

    data = load_families(shared_dataset("kinetics/tungsten_recrystallization.csv"), "jmak",
                         fraction_tolerance=0.15, allow_negative_time=True)
    train, _, _ = split_families(data.families, val=0.2, seed=0)  # as `meta-train` splits
    assert len(train) >= 15
    model = JMAK()
    # a MAML-like initialisation (ln k = -7.05, where 500 MAML steps leave it): not the prior
    res = _untrained(model, {"ln_k": torch.tensor(-7.05), "ln_n": torch.tensor(0.285)})
    prior = Prior.load(write_prior(res, train, tmp_path / "w.json"), model=model)
    direct = _learn_prior_on(model, train)
    torch.testing.assert_close(prior.mean, direct.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior.cov, direct.cov, rtol=1e-12, atol=1e-14)
    # the isotherms' own least-squares fits (no prior) mostly fall inside its 95% t_half band
    fits = fit_curves(model, [f.inputs for f in train], [f.y for f in train])
    assert bool(fits.converged.all())
    ln_t_half = math.log(math.log(2.0)) / fits.theta[:, 1].exp() - fits.theta[:, 0]
    lo, hi = _t_half_band(prior)
    assert ((ln_t_half >= lo) & (ln_t_half <= hi)).double().mean() >= 0.8
    # and its ln k spread is the fits' spread (half times from 2e2 s to 1e9 s), not MAML's 0.81
    assert 0.6 < prior.std[0].item() / fits.theta[:, 0].std().item() < 1.3  # 2.88 / 3.76
    # the band of a prior around the initialisation with MAML's spread (the old file) holds few
    old = Prior.from_std("jmak", model.flat_names, [-7.05, 0.285], [0.813, 0.415])
    lo, hi = _t_half_band(old)
    assert ((ln_t_half >= lo) & (ln_t_half <= hi)).double().mean() < 0.3


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
