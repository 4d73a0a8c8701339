"""CompositionModel: invariances, derivatives against finite differences, vmap, checkpoints."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pymatgen.core import Composition, Element

from matmeta.errors import InputError
from matmeta.io.alloys import MPEA_COLUMNS, read_alloy_table
from matmeta.meta._inner import inner_loop
from matmeta.models import Samples, build_model, load_model, sample_loss, save_model
from matmeta.models._composition import (
    CompositionInputs,
    CompositionModel,
    UnknownElementWarning,
    element_descriptor_table,
    encode_compositions,
    fit_process_encoding,
)
from matmeta.models._transforms import TargetTransform
from tests.helpers import assert_tree_close, shared_dataset

ALLOYS = ["Al0.5CoCrFeNi", "Hf20Nb20Ta20Ti20Zr20", "CoCrNi", "Al0.3CoCrFeNiTi0.2",
          "MoNbTaW", "Cr", "Al0.75Co1Fe1Ni1", "Co1.5CrFeNi0.5Cu0.1"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("alloys") / "lab.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame({
        "formula": ALLOYS,
        "ys_MPa": rng.uniform(200, 1500, len(ALLOYS)),
        "T_C": [25, 25, 600, 25, 1000, 25, 400, 25],
        "test": ["C", "C", "T", "C", "C", "T", "C", "T"],
        "route": ["CAST", "ANNEAL", "CAST", "WROUGHT", "CAST", "CAST", "ANNEAL", "CAST"],
    }).to_csv(path, index=False)
    return read_alloy_table(path, "formula", "ys_MPa", process_columns=["T_C", "test", "route"])


def model64(table, **kw):
    kw.setdefault("hidden", 12)
    kw.setdefault("embedding_dim", 4)
    return CompositionModel.for_table(table, dtype="float64", **kw)


def setup64(table, seed=0, **kw):
    model = model64(table, **kw)
    params = model.init_params(torch.Generator().manual_seed(seed))
    inputs = encode_compositions(table, model, dtype=torch.float64)
    return model, params, inputs


# ----------------------------------------------------------------------------- encoding

def test_encoding_by_hand(table):
    model = model64(table)
    x = encode_compositions(table, model, dtype=torch.float64)
    assert x.z.dtype == torch.long and x.z.shape == (8, 6)  # widest: Co Cr Cu Fe Ni + pad
    assert x.z[0].tolist() == [13, 27, 24, 26, 28, 0]       # Al Co Cr Fe Ni, sorted by symbol
    torch.testing.assert_close(x.fraction[0], torch.tensor([0.5, 1, 1, 1, 1, 0.0],
                                                           dtype=torch.float64) / 4.5)
    # Temperature standardised with the training mean/std; one-hot test type and route.
    t = np.array([25, 25, 600, 25, 1000, 25, 400, 25], dtype=float)
    np.testing.assert_allclose(x.process[:, 0].numpy(), (t - t.mean()) / t.std())
    assert x.process.shape == (8, 1 + 2 + 3)
    np.testing.assert_array_equal(x.process[:, 1:].sum(1).numpy(), 2.0)
    assert model.process[2]["categories"] == ["ANNEAL", "CAST", "WROUGHT"]


def test_vec_descriptor_is_the_alloy_valence_electron_count():
    table = element_descriptor_table(["valence_electrons", "electronegativity", "mass_u"])
    # VEC values used for high-entropy alloys (Guo et al. 2011).
    for sym, vec in {"Al": 3, "Cr": 6, "Fe": 8, "Co": 9, "Ni": 10, "Cu": 11, "Nb": 5}.items():
        assert table[Element(sym).Z][0] == vec
    assert table[28][1] == pytest.approx(float(Element("Ni").X))
    assert table[28][2] == pytest.approx(float(Element("Ni").atomic_mass))


def test_descriptor_mean_and_spread_by_hand():
    names = ("radius_A", "valence_electrons")
    model = CompositionModel(embedding_dim=0, descriptors=names, hidden=4, depth=0,
                             activation="tanh", dtype="float64")
    params = model.init_params()
    params["input.weight"] = torch.eye(4, dtype=torch.float64)
    params["input.bias"] = torch.zeros(4, dtype=torch.float64)
    alloys = ["Al0.5CoCrFeNi", "Hf20Nb20Ta20Ti20Zr20", "Ni"]
    x = torch.atanh(model.features(params, encode_compositions(alloys, dtype=torch.float64)))
    table = np.array(element_descriptor_table(names), dtype=float)[1:]
    mu, sigma = np.nanmean(table, axis=0), np.nanstd(table, axis=0)
    for i, text in enumerate(alloys):
        comp = {el.symbol: float(f) for el, f in
                Composition(text).fractional_composition.items()}
        f = np.array(list(comp.values()))
        raw = np.array([[Element(el).metallic_radius, Element(el).group if Element(el).group <= 12
                         else Element(el).group - 10] for el in comp], dtype=float)
        mean = f @ raw
        std = np.sqrt(f @ (raw - mean) ** 2)
        np.testing.assert_allclose(x[i, :2].numpy(), (mean - mu) / sigma, rtol=1e-9)
        np.testing.assert_allclose(x[i, 2:].numpy(), std / sigma, rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- invariances

def test_element_order_does_not_matter(table):
    model, params, x = setup64(table)
    perm = torch.tensor([4, 2, 5, 0, 3, 1])
    shuffled = CompositionInputs(x.z[:, perm], x.fraction[:, perm], x.process)
    torch.testing.assert_close(model.forward(params, shuffled), model.forward(params, x),
                               rtol=1e-12, atol=1e-12)
    wider = encode_compositions(table, model, dtype=torch.float64, max_elements=9)
    torch.testing.assert_close(model.forward(params, wider), model.forward(params, x),
                               rtol=1e-12, atol=1e-12)


def test_same_alloy_written_two_ways():
    model = CompositionModel(elements=["Al", "Co", "Cr", "Fe", "Ni"], hidden=8, dtype="float64")
    params = model.init_params(torch.Generator().manual_seed(1))
    x = encode_compositions(["Al0.5CoCrFeNi", "Al10Co20Cr20Fe20Ni20", "NiFeCrCoAl0.5",
                             {"Al": 1, "Co": 2, "Cr": 2, "Fe": 2, "Ni": 2}], model,
                            dtype=torch.float64)
    y = model.forward(params, x)
    torch.testing.assert_close(y, y[:1].expand(4), rtol=1e-12, atol=1e-12)


METALS = ["Al", "Co", "Cr", "Cu", "Fe", "Hf", "Mo", "Nb", "Ni", "Ta", "Ti", "V", "W", "Zr"]
_HYP_MODEL = CompositionModel(elements=METALS[:8], hidden=8, dtype="float64")
_HYP_PARAMS = _HYP_MODEL.init_params(torch.Generator().manual_seed(7))


@settings(max_examples=25, deadline=None)
@given(amounts=st.dictionaries(st.sampled_from(METALS), st.floats(0.05, 50.0), min_size=1,
                               max_size=7),
       scale=st.floats(0.1, 100.0), seed=st.integers(0, 2**16))
def test_prediction_ignores_order_and_total_amount(amounts, scale, seed):
    items = list(amounts.items())
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = {items[i][0]: items[i][1] * scale for i in order}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        x = encode_compositions([amounts, shuffled], _HYP_MODEL, dtype=torch.float64)
        # Shuffle the padded element axis as well.
        perm = torch.as_tensor(np.random.default_rng(seed + 1).permutation(x.z.shape[1]))
        xp = CompositionInputs(x.z[:, perm], x.fraction[:, perm], x.process)
    y = _HYP_MODEL.forward(_HYP_PARAMS, x)
    torch.testing.assert_close(y[1], y[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_HYP_MODEL.forward(_HYP_PARAMS, xp), y, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- derivatives

def loss_fn(model, x, y):
    return lambda p: ((model.forward(p, x) - y) ** 2).mean()


def test_gradient_matches_central_differences(table):
    model, params, x = setup64(table)
    y = torch.linspace(-1, 1, 8, dtype=torch.float64)
    loss = loss_fn(model, x, y)
    grads = torch.func.grad(loss)(params)
    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for k in params:
        v = torch.randn(params[k].shape, generator=gen, dtype=torch.float64)
        plus = loss({**params, k: params[k] + eps * v})
        minus = loss({**params, k: params[k] - eps * v})
        fd = (plus - minus) / (2 * eps)
        assert float((grads[k] * v).sum()) == pytest.approx(float(fd), rel=1e-6, abs=1e-9), k


def test_grad_of_grad_matches_finite_differences(table):
    model, params, x = setup64(table)
    y = torch.linspace(-1, 1, 8, dtype=torch.float64)
    loss = loss_fn(model, x, y)
    gen = torch.Generator().manual_seed(4)
    v = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64) for k, p in params.items()}

    def gv(p):
        g = torch.func.grad(loss)(p)
        return sum((g[k] * v[k]).sum() for k in g)

    hvp = torch.func.grad(gv)(params)
    eps = 1e-5
    g_plus = torch.func.grad(loss)({k: p + eps * v[k] for k, p in params.items()})
    g_minus = torch.func.grad(loss)({k: p - eps * v[k] for k, p in params.items()})
    assert sum(float(h.abs().sum()) for h in hvp.values()) > 1e-3
    for k in params:
        torch.testing.assert_close(hvp[k], (g_plus[k] - g_minus[k]) / (2 * eps),
                                   rtol=1e-5, atol=1e-7)


def test_second_order_maml_through_the_inner_loop(table):
    model, params, x = setup64(table)
    y = torch.linspace(-1, 1, 8, dtype=torch.float64)
    support, query = Samples(x, y), Samples(x, -y)

    def outer(p):
        fast = inner_loop(model, p, support, steps=2, lr=0.1)
        return sample_loss(model, fast, query)

    g_second = torch.func.grad(outer)(params)
    k = "input.weight"
    v = torch.randn(params[k].shape, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    eps = 1e-6
    fd = (outer({**params, k: params[k] + eps * v}) - outer({**params, k: params[k] - eps * v}))
    assert float((g_second[k] * v).sum()) == pytest.approx(float(fd) / (2 * eps), rel=1e-5)


def test_second_order_maml_vmapped_over_tasks_equals_a_loop(table):
    model, params, x = setup64(table)
    y = torch.linspace(-1, 1, 8, dtype=torch.float64)

    def split(t):
        return t.reshape(2, 4, *t.shape[1:])

    tasks = Samples(CompositionInputs(split(x.z), split(x.fraction), split(x.process)), split(y),
                    torch.ones(2, 4, dtype=torch.float64))

    def task_grad(p, task):
        def outer(q):
            fast = inner_loop(model, q, task, steps=2, lr=0.05)
            return sample_loss(model, fast, Samples(task.inputs, -task.y, task.weight))
        return torch.func.grad(outer)(p)

    batched = torch.func.vmap(task_grad, in_dims=(None, 0))(params, tasks)
    for i in range(2):
        one = Samples(CompositionInputs(*(t[i] for t in tasks.inputs)), tasks.y[i],
                      tasks.weight[i])
        assert_tree_close({k: g[i] for k, g in batched.items()}, task_grad(params, one),
                          rtol=1e-9, atol=1e-12)


def test_vmap_over_stacked_params_equals_a_loop(table):
    model, _, x = setup64(table)
    inits = [model.init_params(torch.Generator().manual_seed(s)) for s in range(4)]
    stacked = {k: torch.stack([p[k] for p in inits]) for k in inits[0]}
    batched = torch.func.vmap(model.forward, in_dims=(0, None))(stacked, x)
    looped = torch.stack([model.forward(p, x) for p in inits])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    feats = torch.func.vmap(model.features, in_dims=(0, None))(stacked, x)
    assert feats.shape == (4, 8, model.hidden)
    # Per-member gradients under vmap too (ensembles adapt together).
    y = torch.zeros(8, dtype=torch.float64)
    vg = torch.func.vmap(torch.func.grad(loss_fn(model, x, y)))(stacked)
    for i, p in enumerate(inits):
        assert_tree_close({k: g[i] for k, g in vg.items()},
                          torch.func.grad(loss_fn(model, x, y))(p), rtol=1e-10, atol=1e-12)


def test_vmap_over_tasks_of_inputs(table):
    model, params, x = setup64(table)
    tasks = CompositionInputs(x.z.view(2, 4, -1), x.fraction.view(2, 4, -1),
                              x.process.view(2, 4, -1))
    out = torch.func.vmap(model.forward, in_dims=(None, 0))(params, tasks)
    torch.testing.assert_close(out.reshape(-1), model.forward(params, x), rtol=1e-12, atol=1e-12)


def test_features_and_head(table):
    model, params, x = setup64(table)
    h = model.features(params, x)
    assert h.shape == (8, model.hidden)
    torch.testing.assert_close(model.forward(params, x),
                               h @ params["head.weight"][0] + params["head.bias"][0])
    assert set(model.head_names()) <= set(params)
    # Changing only the head changes predictions linearly in the features.
    new = {**params, "head.weight": params["head.weight"] * 0, "head.bias": params["head.bias"]}
    torch.testing.assert_close(model.forward(new, x), params["head.bias"].expand(8))


# ----------------------------------------------------------------------------- checkpoints

def test_save_load_round_trip(table, tmp_path):
    model, params, x = setup64(table)
    path = save_model(tmp_path / "comp.pt", model, params)
    loaded, lparams, _ = load_model(path)
    assert isinstance(loaded, CompositionModel)
    assert loaded.config() == model.config()
    assert_tree_close(lparams, params, rtol=0, atol=0)
    torch.testing.assert_close(loaded.forward(lparams, encode_compositions(
        table, loaded, dtype=torch.float64)), model.forward(params, x), rtol=0, atol=0)
    assert repr(build_model("composition", model.config())) == repr(model)


# ----------------------------------------------------------------------------- unknown elements

def test_unknown_element_warns_and_has_zero_embedding():
    cfg = {"hidden": 6, "embedding_dim": 3, "dtype": "float64"}
    small = CompositionModel(elements=["Co", "Ni"], **cfg)
    big = CompositionModel(elements=["Co", "Mo", "Ni"], **cfg)
    p = small.init_params(torch.Generator().manual_seed(0))
    emb = p["embedding"]  # rows Co, Ni (ordered by Z)
    p_big = {**p, "embedding": torch.stack([emb[0], torch.zeros(3, dtype=emb.dtype), emb[1]])}
    with pytest.warns(UnknownElementWarning, match=r"row 0: element\(s\) Mo never seen"):
        x = encode_compositions(["CoMoNi"], small, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x_big = encode_compositions(["CoMoNi"], big, dtype=torch.float64)
    # An unseen element behaves exactly as a zero embedding row.
    torch.testing.assert_close(small.forward(p, x), big.forward(p_big, x_big), rtol=0, atol=0)
    # The known elements' rows still learn from such an alloy.
    g = torch.func.grad(lambda q: small.forward(q, x).sum())(p)["embedding"]
    assert (g.abs().sum(1) > 0).all()
    # The descriptors still tell unseen elements apart.
    with pytest.warns(UnknownElementWarning):
        xw = encode_compositions(["CoMoNi", "CoNiW"], small, dtype=torch.float64)
    y = small.forward(p, xw)
    assert abs(float(y[0] - y[1])) > 1e-6
    off = CompositionModel(elements=["Co", "Ni"], descriptors=(), **cfg)
    with pytest.warns(UnknownElementWarning, match="descriptors are off"):
        encode_compositions(["CoMoNi"], off)


def test_unknown_category_warns(table):
    model = model64(table)
    new = table.copy()
    new["route"] = ["POWDER"] + list(new["route"][1:])
    with pytest.warns(UserWarning, match=r"row 2, column 'route': categor\(ies\) \['POWDER'\]"):
        x = encode_compositions(new, model)
    assert x.process[0, 3:].abs().sum() == 0


# ----------------------------------------------------------------------------- bad input

def test_bad_encoding_inputs(table):
    model = model64(table)
    with pytest.raises(InputError, match=r"row 2: 5 elements; expected at most max_elements=3"):
        encode_compositions(table, model, max_elements=3)
    with pytest.raises(InputError, match="no process column 'T_C'"):
        encode_compositions(table.drop(columns=["T_C"]), model)
    nan = table.copy()
    nan.loc[1, "T_C"] = np.nan
    with pytest.raises(InputError, match=r"row 3, column 'T_C': empty or infinite"):
        encode_compositions(nan, model)
    with pytest.raises(InputError, match="process inputs need a table"):
        encode_compositions(["CoCrNi"], model)
    with pytest.raises(InputError, match="no rows to encode"):
        encode_compositions([], CompositionModel(elements=["Co"]))
    with pytest.raises(InputError, match=r"row 1: 'CoQ' holds 'Q', which is not an element"):
        encode_compositions(["CoCr", "CoQ"])
    with pytest.raises(InputError, match="expected a composition string or a"):
        encode_compositions([3.0])
    for bad in ({"Co": 0.5}, {"Qq": 1.0}, {"Co": -0.5, "Ni": 1.5}, "CoNi", {}):
        hand = table.copy()
        hand["fractions"] = [bad] + list(hand["fractions"][1:])
        with pytest.raises(InputError, match=r"row 2, column 'fractions': .*summing to 1"):
            encode_compositions(hand, model)
    text = table.copy()
    text["T_C"] = ["hot"] + list(text["T_C"][1:])
    with pytest.raises(InputError, match=r"column 'T_C': not all numbers"):
        encode_compositions(text, model)
    with pytest.raises(InputError, match="no 'fractions' column"):
        encode_compositions(pd.DataFrame({"formula": ["CoCr"]}))


def test_wrong_process_width_is_an_input_error(table):
    model = model64(table)
    params = model.init_params()
    x = encode_compositions(["CoCrNi"], CompositionModel(elements=["Co", "Cr", "Ni"]),
                            dtype=torch.float64)
    with pytest.raises(InputError, match="encode them with this model"):
        model.forward(params, x)


@pytest.mark.parametrize("kwargs, says", [
    ({"elements": ["Co", "Qq"]}, "'Qq' is not an element symbol"),
    ({"elements": []}, "elements: empty"),
    ({"activation": "relu6"}, "activation 'relu6'"),
    ({"dtype": "float16"}, "dtype 'float16'"),
    ({"hidden": 0}, "hidden >= 1"),
    ({"descriptors": ["colour"]}, "descriptor 'colour'"),
    ({"embedding_dim": 0, "descriptors": ()}, "no inputs"),
    ({"descriptor_table": [[1.0]]}, "descriptor_table: expected 119 rows"),
    ({"process": [{"column": "T", "kind": "ordinal"}]}, "process entry"),
])
def test_bad_model_settings(kwargs, says):
    with pytest.raises(InputError, match=says):
        CompositionModel(**kwargs)


def test_fit_process_encoding_errors(table):
    with pytest.raises(InputError, match="process column 'P' is not in the table"):
        fit_process_encoding(table, ["P"])
    with pytest.raises(InputError, match="kind 'ordinal'"):
        fit_process_encoding(table, {"T_C": "ordinal"})
    bad = table.copy()
    bad.loc[0, "T_C"] = np.nan
    with pytest.raises(InputError, match="empty, infinite or non-numeric values"):
        fit_process_encoding(bad, {"T_C": "numeric"})
    with pytest.raises(InputError, match="empty, infinite or non-numeric values"):
        fit_process_encoding(bad, {"test": "numeric"})


# ----------------------------------------------------------------------------- real data

def test_mpea_fit_beats_the_training_mean():
    path = shared_dataset("alloys/mpea_alloys.csv")
    target = MPEA_COLUMNS["yield_strength_MPa"]
    df = read_alloy_table(path, MPEA_COLUMNS["composition"], target,
                          process_columns=[MPEA_COLUMNS["test_temperature_C"],
                                           MPEA_COLUMNS["test_type"], MPEA_COLUMNS["processing"]],
                          drop_missing_target=True)
    perm = np.random.default_rng(0).permutation(len(df))
    n_train = int(0.8 * len(df))
    train = df.iloc[perm[:n_train]].reset_index(drop=True)
    test = df.iloc[perm[n_train:]].reset_index(drop=True)
    model = CompositionModel.for_table(train, hidden=32, embedding_dim=8)
    tt = TargetTransform.fit(train[target].to_numpy())
    x_train = encode_compositions(train, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        x_test = encode_compositions(test, model)
    y = tt.forward(torch.tensor(train[target].to_numpy(), dtype=torch.float32))
    params = {k: v.requires_grad_() for k, v in
              model.init_params(torch.Generator().manual_seed(0)).items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    for _ in range(120):
        opt.zero_grad()
        loss = ((model.forward(params, x_train) - y) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = tt.inverse(model.forward(params, x_test)).numpy()
    truth = test[target].to_numpy()
    mae_model = np.abs(pred - truth).mean()
    mae_mean = np.abs(train[target].mean() - truth).mean()
    assert mae_model < 0.75 * mae_mean, (mae_model, mae_mean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_predictions_on_cuda(table):
    model, params, x = setup64(table)
    xc = encode_compositions(table, model, dtype=torch.float64, device="cuda")
    pc = {k: v.cuda() for k, v in params.items()}
    torch.testing.assert_close(model.forward(pc, xc).cpu(), model.forward(params, x))
