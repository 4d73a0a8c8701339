"""Meta-learning through closed-form heads (``bayes_linear``, ``gp``) against references we did not
write: finite differences of the meta-objective (float64), the textbook posterior of Bayesian
linear regression, a resumed run equal to an uninterrupted one, and the command line."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from matmeta.bayes._meta import (
    adapt_head,
    fit_feature_head,
    head_as_params,
    head_query_loss,
)
from matmeta.errors import InputError
from matmeta.meta import (
    EpisodeSampler,
    Family,
    MetaSettings,
    MetaTrainSettings,
    adapt_and_predict,
    adapt_params,
    init_meta_params,
    load_meta,
    meta_gradient,
    meta_train,
    query_losses,
)
from matmeta.models import Samples

F64 = torch.float64


class TanhFeatures:
    """A one-hidden-layer network with ``features`` and ``head_names``: the smallest model the
    head algorithms accept."""

    name = "tanh_features"

    def __init__(self, d: int = 2, hidden: int = 6) -> None:
        self.d, self.hidden = d, hidden

    def config(self) -> dict:
        return {"d": self.d, "hidden": self.hidden}

    def head_names(self) -> list[str]:
        return ["head.weight", "head.bias"]

    def init_params(self, generator: torch.Generator | None = None) -> dict:
        g = generator or torch.Generator().manual_seed(0)
        return {"W": torch.randn(self.hidden, self.d, generator=g, dtype=F64),
                "b": torch.randn(self.hidden, generator=g, dtype=F64),
                "head.weight": 0.3 * torch.randn(1, self.hidden, generator=g, dtype=F64),
                "head.bias": torch.zeros(1, dtype=F64)}

    def features(self, p: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ p["W"].T + p["b"])

    def forward(self, p: dict, x: torch.Tensor) -> torch.Tensor:
        return (self.features(p, x) @ p["head.weight"].T + p["head.bias"]).squeeze(-1)


def sine_families(n: int = 8, size: int = 20, d: int = 2, seed: int = 1) -> list[Family]:
    """y = sin(x . a_f) + noise: a family is a random direction; the features must be learned."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(size, d, generator=g, dtype=F64)
        a = torch.randn(d, generator=g, dtype=F64)
        y = torch.sin(x @ a) + 0.1 * torch.randn(size, generator=g, dtype=F64)
        out.append(Family(f"f{i}", x, y))
    return out


def _directional_fd(model, meta, tasks, alg, loss, d, eps=1e-4):
    # eps well above the fit's stopping tolerance (1e-9 in the log-hyperparameters), whose
    # noise a smaller step would amplify; the O(eps^2) error is then ~1e-8
    def objective(e):
        p = {k: meta[k] + e * d[k] for k in meta}
        vals = [float(head_query_loss(model, p, t.support, t.query, alg, steps=40, loss=loss,
                                      differentiate="none")) for t in tasks]
        return sum(vals) / len(vals)

    return (objective(eps) - objective(-eps)) / (2 * eps)


@pytest.mark.parametrize("alg,loss", [("bayes_linear", "nlpd"), ("bayes_linear", "mse"),
                                      ("gp", "nlpd"), ("gp", "mse")])
def test_meta_gradient_matches_finite_differences_of_the_meta_objective(alg, loss):
    model = TanhFeatures()
    tasks = EpisodeSampler(sine_families(), 5, 8, 2, seed=0).sample()
    s = MetaSettings(alg, inner_steps=40, head_loss=loss)
    meta = init_meta_params(model, model.init_params(), s)
    meta["head_hyper::shift"] = 0.1 * torch.arange(meta["head_hyper::shift"].numel(), dtype=F64)
    grads, losses = meta_gradient(model, meta, tasks, s)
    assert set(grads) == set(meta)
    gen = torch.Generator().manual_seed(3)
    d = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in meta.items()}
    analytic = sum(float((grads[k] * d[k]).sum()) for k in meta)
    fd = _directional_fd(model, meta, tasks, alg, loss, d)
    assert analytic == pytest.approx(fd, rel=2e-4, abs=1e-6)
    # the gradient reaches the feature extractor, the prior mean and the hyperparameter start
    for k in ("W", "head.weight", "head_hyper::shift"):
        assert float(grads[k].abs().max()) > 0
    torch.testing.assert_close(losses, query_losses(model, meta, tasks, s), rtol=1e-6, atol=0)


def test_bayes_linear_adaptation_is_the_textbook_posterior_on_the_features():
    model = TanhFeatures()
    params = model.init_params()
    fam = sine_families(1, size=12)[0]
    support, query = fam.samples(range(7)), fam.samples(range(7, 12))
    s = MetaSettings("bayes_linear", inner_steps=20)
    meta = init_meta_params(model, params, s)
    post = adapt_head(model, meta, support, s)
    alpha, beta = float(post.posterior.alpha), float(post.posterior.beta)
    bias_var = float(post.posterior.bias_var)
    # weight-space posterior, numpy: S = (S0^-1 + beta Phi'Phi)^-1, m = S (S0^-1 m0 + beta Phi'y)
    phi = np.hstack([model.features(params, support.inputs).numpy(), np.ones((7, 1))])
    m0 = np.concatenate([params["head.weight"].numpy().ravel(), params["head.bias"].numpy()])
    s0_inv = np.diag(np.r_[np.full(model.hidden, alpha), 1.0 / bias_var])
    cov = np.linalg.inv(s0_inv + beta * phi.T @ phi)
    mean_w = cov @ (s0_inv @ m0 + beta * phi.T @ support.y.numpy())
    phi_q = np.hstack([model.features(params, query.inputs).numpy(), np.ones((5, 1))])
    mean_ref = phi_q @ mean_w
    std_ref = np.sqrt(np.einsum("qi,ij,qj->q", phi_q, cov, phi_q) + 1.0 / beta)
    mean, std = post.predict(query.inputs)
    np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-9)
    np.testing.assert_allclose(std.numpy(), std_ref, rtol=1e-9)
    # the parameter-dict form predicts the same mean; adapt_and_predict too
    adapted = adapt_params(model, meta, support, s)
    np.testing.assert_allclose(model.forward(adapted, query.inputs).numpy(), mean_ref, rtol=1e-9)
    np.testing.assert_allclose(adapt_and_predict(model, meta, support, query.inputs, s).numpy(),
                               mean_ref, rtol=1e-9)
    assert "head_hyper::shift" not in adapted
    # with no support information (alpha -> inf) the head is the model: the prior mean
    far = head_as_params(model, post)
    assert set(far) == set(params)


def test_gp_mean_function_is_the_model_and_its_loo_is_exact():
    model = TanhFeatures()
    params = model.init_params()
    fam = sine_families(1, size=10)[0]
    support = fam.samples(range(6))
    post = fit_feature_head(model, params, support, "gp", steps=15)
    loo_mean, loo_std = post.loo()
    hyper = {k: v.detach() for k, v in post.posterior.hyperparameters.items()}
    from matmeta.bayes import fit_gp

    for i in range(6):
        keep = [j for j in range(6) if j != i]
        sub = Samples(support.inputs[keep], support.y[keep])
        phi = model.features(params, sub.inputs)
        base = model.forward(params, sub.inputs)
        # refit with the same hyperparameters on the residuals about the model (brute force)
        ref = fit_gp(phi, sub.y - base, init=hyper, noise_var=hyper["noise_var"], steps=0,
                     bias_var=post.posterior.bias_var, differentiate="none")
        x_i = support.inputs[i:i + 1]
        m, sd = ref.predict(model.features(params, x_i))
        assert float(loo_mean[i]) == pytest.approx(float(m + model.forward(params, x_i)),
                                                   rel=1e-7)
        assert float(loo_std[i]) == pytest.approx(float(sd), rel=1e-7)


@pytest.mark.slow  # ~35 s on a quiet core: 60 meta-steps per head
def test_meta_training_through_the_head_lowers_held_out_nlpd():
    model = TanhFeatures(hidden=8)
    fams = sine_families(14, size=20, seed=4)
    for alg in ("bayes_linear", "gp"):
        s = MetaSettings(alg, inner_steps=8)
        res = meta_train(model, fams[:10], settings=s, progress=False,
                         init_params=model.init_params(),
                         train=MetaTrainSettings(steps=60, meta_batch=6, k_shot=5, q_query=10,
                                                 outer_lr=0.03))
        held = EpisodeSampler(fams[10:], 5, 10, 16, seed=9).sample()
        start = init_meta_params(model, model.init_params(), s)
        before = float(query_losses(model, start, held, s).mean())
        after = float(query_losses(model, res.meta_params, held, s).mean())
        assert after < before - 0.1, (alg, before, after)


def _composition_families():
    from matmeta.models._composition import (
        CompositionModel,
        encode_compositions,
        pack_composition_inputs,
    )

    model = CompositionModel(elements=["Co", "Cr", "Fe", "Ni", "Mn"], embedding_dim=4,
                             hidden=8, depth=1, dtype="float64")
    g = np.random.default_rng(0)
    fams = []
    for i, system in enumerate([("Co", "Cr", "Fe"), ("Fe", "Ni", "Mn"), ("Co", "Ni", "Cr"),
                                ("Cr", "Mn", "Ni"), ("Co", "Fe", "Mn")]):
        comps = []
        for _ in range(12):
            x = g.dirichlet(np.ones(3))
            comps.append("".join(f"{e}{v:.3f}" for e, v in zip(system, x, strict=True)))
        x = pack_composition_inputs(encode_compositions(comps, model, dtype=F64,
                                                        max_elements=3))
        frac = x[:, 3:6]
        y = torch.sin(3 * frac[:, 0]) + 0.5 * i + 0.05 * torch.from_numpy(g.normal(size=12))
        fams.append(Family("-".join(system), x, y))
    return model, fams


def test_composition_head_meta_training_checkpoints_and_resumes_exactly(tmp_path):
    model, fams = _composition_families()
    s = MetaSettings("gp", inner_steps=5)
    init = model.init_params(torch.Generator().manual_seed(0))

    def train(steps, out, resume=False):
        return meta_train(model, fams[:4], fams[4:], settings=s, out=out, resume=resume,
                          init_params=init, progress=False,
                          train=MetaTrainSettings(steps=steps, meta_batch=3, k_shot=4,
                                                  q_query=6, outer_lr=0.01, val_every=2,
                                                  checkpoint_every=2, val_tasks=4))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = train(4, tmp_path / "whole.pt")
        train(2, tmp_path / "part.pt")
        resumed = train(4, tmp_path / "part.pt", resume=True)
    for k in whole.meta_params:
        torch.testing.assert_close(resumed.meta_params[k], whole.meta_params[k], rtol=0, atol=0)
    assert "head_hyper::shift" in whole.meta_params
    ck = load_meta(tmp_path / "whole.pt")
    assert ck.settings.algorithm == "gp" and ck.settings.kernel == "rbf"
    support, query = fams[4].samples(range(4)), fams[4].samples(range(4, 12))
    mean, std = adapt_head(ck.model, ck.meta_params, support, ck.settings).predict(query.inputs)
    assert mean.shape == std.shape == (8,) and bool((std > 0).all())
    assert math.isfinite(whole.history[-1]["val_loss"])


def test_cgcnn_head_meta_gradient_is_finite_and_matches_finite_differences():
    from pymatgen.core import Lattice, Structure

    from matmeta.graphs import FeaturizerSettings, collate, structure_to_graph
    from matmeta.models._gnn import CGCNN

    feat = FeaturizerSettings(cutoff=4.0, max_neighbors=6, n_basis=8)
    graphs, ys = [], []
    for i, a in enumerate(np.linspace(3.6, 4.4, 8)):
        st = Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        graphs.append(structure_to_graph(st, settings=feat))
        ys.append(2.0 - 0.5 * a + 0.01 * i)
    y = torch.tensor(ys, dtype=F64)
    support = Samples(collate(graphs[:4], feat, dtype=F64), y[:4])
    query = Samples(collate(graphs[4:], feat, dtype=F64), y[4:])
    model = CGCNN(hidden=6, n_conv=1, n_basis=feat.n_basis, readout_hidden=(5,))
    params = {k: v.double() for k, v in model.init_params(torch.Generator().manual_seed(0)
                                                          ).items()}
    s = MetaSettings("bayes_linear", inner_steps=30)
    meta = init_meta_params(model, params, s)
    from matmeta.meta import Task

    tasks = [Task(support, query, "NaCl")]
    grads, _ = meta_gradient(model, meta, tasks, s)
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    d = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
         for k, v in meta.items()}
    analytic = sum(float((grads[k] * d[k]).sum()) for k in meta)
    assert analytic == pytest.approx(_directional_fd(model, meta, tasks, "bayes_linear", "nlpd",
                                                     d), rel=1e-3, abs=1e-6)


def test_head_algorithms_refuse_models_without_features_and_tiny_supports():
    from matmeta.models._mlp import MLP

    with pytest.raises(InputError, match="no features"):
        init_meta_params(MLP(1), MLP(1).init_params(), MetaSettings("gp"))
    model = TanhFeatures()
    fam = sine_families(1)[0]
    s = MetaSettings("bayes_linear")
    meta = init_meta_params(model, model.init_params(), s)
    with pytest.raises(InputError, match="at least 2 are needed") as exc:
        adapt_head(model, meta, fam.samples([0]), s)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="head_loss"):
        MetaSettings("gp", head_loss="crps")
    with pytest.raises(InputError, match="kernel"):
        MetaSettings("gp", kernel="cosine")


def test_duplicate_support_points_through_the_feature_head_stay_finite():
    model = TanhFeatures()
    fam = sine_families(1)[0]
    idx = [0, 0, 1, 1, 2, 2]
    support = fam.samples(idx)
    for alg in ("bayes_linear", "gp"):
        s = MetaSettings(alg, inner_steps=15)
        meta = init_meta_params(model, model.init_params(), s)
        post = adapt_head(model, meta, support, s)
        mean, std = post.predict(fam.samples(range(5, 10)).inputs)
        assert bool(torch.isfinite(mean).all()) and bool((std > 0).all())
        grads, losses = meta_gradient(model, meta, [_task(support, fam)], s)
        assert all(bool(torch.isfinite(g).all()) for g in grads.values())


def _task(support, fam):
    from matmeta.meta import Task

    return Task(support, fam.samples(range(5, 12)), fam.name)


def test_meta_train_command_runs_the_head_algorithms(tmp_path):
    from matmeta.cli.main import main
    from tests.helpers import shared_dataset

    data = shared_dataset("alloys/mpea_alloys.csv")
    out = tmp_path / "meta.pt"
    rc = main(["meta-train", "--data", str(data), "--model", "composition",
               "--target", "PROPERTY: YS (MPa)", "--composition-column", "FORMULA",
               "--algorithm", "bayes_linear", "--head-loss", "mse", "--steps", "3",
               "--meta-batch", "2", "--k-shot", "3", "--q-query", "3", "--hidden", "8",
               "--val-tasks", "2", "--out", str(out), "--threads", "1"])
    assert rc == 0
    ck = load_meta(out)
    assert ck.settings.algorithm == "bayes_linear" and ck.settings.head_loss == "mse"
    assert ck.step == 3 and "head_hyper::shift" in ck.meta_params
