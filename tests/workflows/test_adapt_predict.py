"""`adapt` / `predict` / `screen` against the engine's own pieces and constructed answers.

Adaptation must equal `adapt_params` (and `adapt_ensemble`) on the same support; predictions must
equal the model's forward mapped through the target transform; leave-one-out must equal
adapting on the support with the row removed; ranking and nearest family are checked on
constructed cases whose answer is known by hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.errors import CheckpointError, InputError
from matmeta.meta import MetaSettings, MetaTrainSettings, adapt_params, meta_train
from matmeta.meta._data import load_families, transform_families
from matmeta.models._composition import CompositionModel, UnknownElementWarning
from matmeta.models._protocol import Samples
from matmeta.models._transforms import TargetTransform
from matmeta.workflows._adapt import adapt, load_adapted
from matmeta.workflows._screen import (
    build_family_index,
    nearest_family,
    parse_goal,
    rank_for_goal,
    screen,
)
from tests.helpers import assert_tree_close

ELEMENTS = ["Al", "Co", "Cr", "Fe", "Ni", "Ti"]
# a smooth made-up property (MPa): element contributions, a test-temperature slope, a family
# offset; what matters here is only that it is a well-defined target per row
CONTRIB = {"Al": 300.0, "Co": 500.0, "Cr": 650.0, "Fe": 420.0, "Ni": 380.0, "Ti": 720.0}


def write_alloys(path, rows_per_family: int = 8, seed: int = 0):
    """A synthetic alloy table: 20 ternary element systems, a test temperature, a strength."""
    rng = np.random.default_rng(seed)
    rows = []
    for fam in itertools.combinations(ELEMENTS, 3):
        offset = rng.normal(0, 40)
        for _ in range(rows_per_family):
            x = rng.dirichlet(np.ones(3) * 3)
            temp = float(rng.choice([25.0, 400.0, 800.0]))
            y = sum(CONTRIB[e] * xi for e, xi in zip(fam, x, strict=True)) - 0.2 * temp + offset
            formula = "".join(f"{e}{xi:.3f}" for e, xi in zip(fam, x, strict=True))
            rows.append({"formula": formula, "T_C": temp, "strength_MPa": y})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _meta(data, tmp_path, members: int = 1, algorithm: str = "maml", steps: int = 3):
    """A short meta-training on the synthetic table, through the same pieces the CLI uses."""
    from matmeta.workflows._screen import build_family_index as index

    train_f = data.families[:16]
    tt = TargetTransform.fit(torch.cat([f.y for f in train_f]), "standardize")
    train_f = transform_families(train_f, tt)
    elements = sorted({e for fr in data.table["fractions"] for e in fr} - {"Ti"})
    model = CompositionModel(elements=elements, process=data.spec["process"], hidden=12,
                             depth=1, dtype="float64")
    extra = {"target_transform": tt.to_dict(), "data_spec": data.spec,
             "families": {"train": [f.name for f in train_f]},
             "family_index": index(data.table, data.spec, [f.name for f in train_f])}
    settings = MetaSettings(algorithm=algorithm, inner_steps=2, inner_lr=0.05)
    train = MetaTrainSettings(steps=steps, meta_batch=4, k_shot=3, q_query=3, val_every=10,
                              checkpoint_every=100)
    init = {k: v.double() for k, v in model.init_params(torch.Generator().manual_seed(0)).items()}
    out = tmp_path / ("ens.pt" if members > 1 else f"meta_{algorithm}.pt")
    if members > 1:
        from matmeta.meta._ensemble import meta_train_ensemble

        meta_train_ensemble(model, train_f, members=members, settings=settings, train=train,
                            out=out, progress=False, extra=extra)
    else:
        meta_train(model, train_f, settings=settings, train=train, out=out, progress=False,
                   extra=extra, init_params=init)
    return out


@pytest.fixture(scope="module")
def alloys(tmp_path_factory):
    path = write_alloys(tmp_path_factory.mktemp("alloys") / "alloys.csv")
    data = load_families(path, "composition", target="strength_MPa",
                         composition_column="formula", process_columns=["T_C"],
                         dtype=torch.float64)
    return path, data


@pytest.fixture(scope="module")
def meta_pt(alloys, tmp_path_factory):
    return _meta(alloys[1], tmp_path_factory.mktemp("meta"))


@pytest.fixture(scope="module")
def ensemble_pt(alloys, tmp_path_factory):
    return _meta(alloys[1], tmp_path_factory.mktemp("ens"), members=3)


@pytest.fixture(scope="module")
def support_csv(alloys, tmp_path_factory):
    """Five rows of a held-out system (Co-Ni-Ti) as a lab would write them."""
    path, _ = alloys
    df = pd.read_csv(path)
    rows = df[df["formula"].str.startswith("Co") & df["formula"].str.contains("Ni")
              & df["formula"].str.contains("Ti")].head(5)
    out = tmp_path_factory.mktemp("lab") / "lab.csv"
    rows.to_csv(out, index=False)
    return out


def _support_samples(ck_extra, model, support_csv):
    from matmeta.meta._data import encode_rows, read_rows

    spec = ck_extra["data_spec"]
    df = read_rows(support_csv, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        x, y = encode_rows(df, spec, model, dtype=torch.float64)
    tt = TargetTransform.from_dict(ck_extra["target_transform"])
    return Samples(x, tt.forward(y), None), tt


# ------------------------------------------------------------------------------- families


def test_composition_families_are_element_systems_with_file_rows(alloys):
    path, data = alloys
    assert len(data.families) == 20
    fam = next(f for f in data.families if f.name == "Al-Co-Cr")
    assert len(fam) == 8 and fam.rows[:2] == [2, 3]     # file lines: header is line 1
    df = pd.read_csv(path)
    torch.testing.assert_close(fam.y, torch.as_tensor(np.array(df["strength_MPa"])[:8]))


def test_packed_inputs_give_the_unpacked_forward(alloys):
    from matmeta.models._composition import encode_compositions

    _, data = alloys
    model = CompositionModel(elements=ELEMENTS, process=data.spec["process"], hidden=8,
                             dtype="float64")
    params = model.init_params(torch.Generator().manual_seed(1))
    enc = encode_compositions(data.table, model, dtype=torch.float64)
    packed = torch.cat([f.inputs for f in data.families])
    order = np.concatenate([np.flatnonzero(data.table["family"].to_numpy() == f.name)
                            for f in data.families])
    torch.testing.assert_close(model.forward(params, packed),
                               model.forward(params, enc)[torch.as_tensor(order)])


def test_vmap_over_composition_tasks_equals_the_loop(alloys):
    from matmeta.meta import EpisodeSampler, meta_gradient

    _, data = alloys
    model = CompositionModel(elements=ELEMENTS, process=data.spec["process"], hidden=8,
                             dtype="float64")
    meta = model.init_params(torch.Generator().manual_seed(2))
    tasks = EpisodeSampler(data.families, 3, 3, 4, seed=0).sample()
    fams = [f for f in data.families]
    tt = TargetTransform.fit(torch.cat([f.y for f in fams]))
    tasks = [type(t)(Samples(t.support.inputs, tt.forward(t.support.y)),
                     Samples(t.query.inputs, tt.forward(t.query.y)), t.family) for t in tasks]
    g_v, l_v = meta_gradient(model, meta, tasks, MetaSettings(inner_steps=2, batching="vmap"))
    g_l, l_l = meta_gradient(model, meta, tasks, MetaSettings(inner_steps=2, batching="loop"))
    torch.testing.assert_close(l_v, l_l)
    assert_tree_close(g_v, g_l, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ adaptation


def test_adapt_equals_adapt_params_and_predictions_equal_forward(meta_pt, support_csv):
    from matmeta.meta import load_meta

    ck = load_meta(meta_pt)
    with pytest.warns(UnknownElementWarning, match="Ti"):
        adapted = adapt(meta_pt, support_csv)
    samples, tt = _support_samples(ck.extra, ck.model, support_csv)
    expected = adapt_params(ck.model, ck.meta_params, samples, ck.settings)
    assert_tree_close(adapted.params, expected, rtol=1e-10, atol=1e-12)
    cands = ["Co0.3Ni0.3Ti0.4", "Al0.5Fe0.5"]
    with pytest.raises(InputError, match="T_C"):
        adapted.predict(cands)      # the process column the model was trained with is missing
    table = pd.DataFrame({"formula": cands, "T_C": [25.0, 800.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        out = adapted.predict(table)
        x, _ = adapted.encode(adapted.read(table))
    want = tt.inverse(ck.model.forward(expected, x)).numpy()
    np.testing.assert_allclose(out["strength_MPa"], want, rtol=1e-12)
    init = tt.inverse(ck.model.forward(ck.params, x)).numpy()
    np.testing.assert_allclose(out["strength_MPa_meta_init"], init, rtol=1e-12)
    assert "strength_MPa_std" not in out.columns


def test_leave_one_out_equals_adapting_without_the_row(meta_pt, support_csv):
    from matmeta.meta import load_meta

    ck = load_meta(meta_pt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(meta_pt, support_csv, shrinkage=1.5)
    samples, tt = _support_samples(ck.extra, ck.model, support_csv)
    k = len(samples.y)
    for i in (0, k - 1):
        keep = torch.as_tensor([j for j in range(k) if j != i])
        p = adapt_params(ck.model, ck.meta_params,
                         Samples(samples.inputs[keep], samples.y[keep]), ck.settings)
        want = float(tt.inverse(ck.model.forward(p, samples.inputs[i:i + 1]))[0])
        assert adapted.fit["strength_MPa_loo"].iloc[i] == pytest.approx(want, rel=1e-9)
    # the baselines, recomputed by hand from the support table
    y = pd.read_csv(support_csv)["strength_MPa"].to_numpy(dtype=float)
    np.testing.assert_array_equal(adapted.fit["strength_MPa"].to_numpy(dtype=float), y)
    mean_others = (y.sum() - y) / (k - 1)
    base = adapted.baselines.set_index("method").iloc[:, 0]
    assert base["mean of the other support rows"] == pytest.approx(np.abs(mean_others - y).mean())
    init = np.array(adapted.fit["strength_MPa_meta_init"], dtype=float)
    r = (tt.forward(torch.as_tensor(y)) - tt.forward(torch.as_tensor(init))).numpy()
    shift = (r.sum() - r) / (k - 1 + 1.5)
    offset = tt.inverse(tt.forward(torch.as_tensor(init)) + torch.as_tensor(shift)).numpy()
    assert base["initial model + shrunk per-family offset (lambda 1.5)"] == pytest.approx(
        np.abs(offset - y).mean())


@pytest.mark.parametrize("by_k", [None, {1: 0.9, 3: 0.6, 5: 0.4, 10: 0.3}])
def test_ensemble_adaptation_matches_the_ensemble_engine(ensemble_pt, support_csv, by_k,
                                                         tmp_path):
    """adapt/predict equal the ensemble engine, intervals included: with a noise term
    calibrated per support size (by_k), the 5-row adaptation takes the noise for 5 rows and
    each leave-one-out adaptation the noise for 4."""
    from matmeta.meta._ensemble import (
        adapt_ensemble,
        ensemble_predict,
        load_ensemble,
        save_ensemble,
    )

    ens = load_ensemble(ensemble_pt)
    if by_k is not None:
        ens.noise_std, ens.noise_std_by_k = by_k[5], by_k
        ensemble_pt = save_ensemble(ens, tmp_path / "calibrated.pt")
        ens = load_ensemble(ensemble_pt)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        adapted = adapt(ensemble_pt, support_csv)
    if by_k is not None:
        assert adapted.noise_std == by_k[5]
        assert not [w for w in seen if "calibrated" in str(w.message)]
        # the saved adapted model keeps its noise term and the table
        adapted.save(tmp_path / "adapted")
        back = load_adapted(tmp_path / "adapted")
        assert back.noise_std == by_k[5] and back.extra["noise_std_by_k"] == by_k
        # fewer rows than the smallest calibrated size: that size's (too small) term, warned
        fewer = save_ensemble(dataclasses.replace(ens, noise_std_by_k={10: by_k[10]}),
                              tmp_path / "from10.pt")
        with pytest.warns(UserWarning, match=r"calibrated for 10 or more support rows; this "
                                             r"support has 5, .* \(too narrow\)"):
            assert adapt(fewer, support_csv).noise_std == by_k[10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        samples, tt = _support_samples(ens.extra, ens.model, support_csv)
        table = pd.DataFrame({"formula": ["Co0.3Ni0.3Ti0.4", "Al0.5Fe0.5", "CoCrFe"],
                              "T_C": [25.0, 800.0, 400.0]})
        out = adapted.predict(table)
        x, _ = adapted.encode(adapted.read(table))
    assert adapted.members == 3
    assert_tree_close(adapted.params, adapt_ensemble(ens.model, ens.meta_params,
                                                     samples.__class__(samples.inputs, samples.y),
                                                     ens.settings), rtol=1e-6, atol=1e-9)
    mean, std = ensemble_predict(ens, samples, x)
    np.testing.assert_allclose(out["strength_MPa"], tt.inverse(mean.double()).numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(out["strength_MPa_std"], (std.double() * tt.std).numpy(),
                               rtol=1e-5)
    z = 1.6448536269514722
    np.testing.assert_allclose(out["strength_MPa_low90"],
                               tt.inverse(mean.double() - z * std.double()).numpy(), rtol=1e-5)
    assert (out["strength_MPa_high90"] > out["strength_MPa"]).all()
    # leave-one-out of the ensemble: every member adapted without the row, then averaged
    keep = torch.arange(1, len(samples.y))
    mean0, std0 = ensemble_predict(ens, samples.__class__(samples.inputs[keep], samples.y[keep]),
                                   samples.inputs[:1])
    fit = adapted.fit.iloc[0]
    assert fit["strength_MPa_loo"] == pytest.approx(float(tt.inverse(mean0.double())[0]),
                                                    rel=1e-5)
    assert fit["strength_MPa_loo_high90"] == pytest.approx(
        float(tt.inverse(mean0.double() + z * std0.double())[0]), rel=1e-5)


def test_bayes_linear_head_adapts_in_closed_form(alloys, support_csv, tmp_path):
    from matmeta.bayes._meta import adapt_head, head_predict
    from matmeta.meta import load_meta

    meta = _meta(alloys[1], tmp_path, algorithm="bayes_linear", steps=2)
    ck = load_meta(meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(meta, support_csv)
        samples, tt = _support_samples(ck.extra, ck.model, support_csv)
        table = pd.DataFrame({"formula": ["Co0.3Ni0.3Ti0.4", "CoCrFe"], "T_C": [25.0, 400.0]})
        out = adapted.predict(table)
        x, _ = adapted.encode(adapted.read(table))
        ranked = screen(adapted, table, goal="min", uncertainty=True)
    mean, std = head_predict(ck.model, ck.meta_params, samples, x, ck.settings)
    np.testing.assert_allclose(out["strength_MPa"], tt.inverse(mean.double()).numpy(),
                               rtol=1e-9)
    np.testing.assert_allclose(out["strength_MPa_std"], (std.double() * tt.std).numpy(),
                               rtol=1e-9)
    assert ranked["strength_MPa"].is_monotonic_increasing
    # leave-one-out is the posterior's closed form (tested against refits in tests/bayes)
    loo = adapt_head(ck.model, ck.meta_params, samples, ck.settings).loo()[0]
    np.testing.assert_allclose(adapted.fit["strength_MPa_loo"],
                               tt.inverse(loo.detach().double()).numpy(), rtol=1e-9)


# --------------------------------------------------------------------------- save and load


def test_saved_folder_round_trips_and_loads_weights_only(meta_pt, support_csv, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(meta_pt, support_csv)
        adapted.save(tmp_path / "adapted")
        again = load_adapted(tmp_path / "adapted")
        table = pd.DataFrame({"formula": ["Co0.3Ni0.3Ti0.4", "Fe2Cr"], "T_C": [25.0, 25.0]})
        pd.testing.assert_frame_equal(adapted.predict(table), again.predict(table))
    raw = torch.load(tmp_path / "adapted" / "adapted.pt", weights_only=True)
    assert raw["matmeta_kind"] == "adapted"
    names = {p.name for p in (tmp_path / "adapted").iterdir()}
    assert {"adapted.pt", "support.csv", "support_fit.csv", "baselines.csv", "report.md",
            "support_parity.png", "adapted_vs_initial.png"} <= names
    report = (tmp_path / "adapted" / "report.md").read_text()
    assert "Leave-one-out error" in report and "mean of the other support rows" in report


def test_load_adapted_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="adapted.pt"):
        load_adapted(tmp_path)


# -------------------------------------------------------------------------------- ranking


@pytest.mark.parametrize("goal, expected", [
    ("max", [3, 1, 2, 4]), ("min", [2, 4, 3, 1]), (4.2, [3, 2, 1, 4]), ("0", [2, 4, 3, 1]),
])
def test_rank_for_each_goal(goal, expected):
    assert rank_for_goal([3.0, 5.0, 4.0, -1.0], goal).tolist() == expected


def test_rank_ties_keep_input_order_and_bad_goal_is_refused():
    assert rank_for_goal([1.0, 1.0, 2.0], "max").tolist() == [2, 3, 1]
    with pytest.raises(InputError, match="--goal 'best'"):
        parse_goal("best")
    with pytest.raises(InputError, match="finite"):
        parse_goal("nan")


def test_screen_sorts_by_rank_for_the_goal(meta_pt, support_csv, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(meta_pt, support_csv, loo=False)
        table = pd.DataFrame({"formula": ["Ti", "Al", "Cr0.5Ti0.5", "Al0.5Ni0.5"],
                              "T_C": [25.0] * 4})
        for goal in ("max", "min", 500.0):
            ranked = screen(adapted, table, goal=goal)
            values = ranked["strength_MPa"].to_numpy()
            key = {"max": -values, "min": values}.get(goal, np.abs(values - 500.0)
                                                      if not isinstance(goal, str) else None)
            assert (np.diff(key) >= 0).all()
            assert ranked["rank"].tolist() == [1, 2, 3, 4]
        with pytest.raises(InputError, match="uncertainty needs an ensemble"):
            screen(adapted, table, tmp_path / "screen", uncertainty=True)
    assert not (tmp_path / "screen").exists()


def test_candidates_keep_their_own_columns_and_plot_labels(meta_pt, support_csv, tmp_path):
    """A candidate table's other columns (here a phase that the composition model cannot see)
    follow their rows into the ranking, so two rows of one composition stay apart; the ranked
    plot labels each row with its process setting."""
    from matmeta.plots._workflows import plot_candidates

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(meta_pt, support_csv, loo=False)
        table = pd.DataFrame({"formula": ["Al0.5Ni0.5", "Al0.5Ni0.5", "Cr0.5Ni0.5"],
                              "phase": ["B2", "L1_2", "fcc"], "T_C": [25.0, 25.0, 600.0]})
        # columns named like the predictions' (a ranked.csv fed back in) keep their values
        table["rank"], table["strength_MPa"] = [7, 8, 9], [1.0, 2.0, 3.0]
        table.to_csv(tmp_path / "c.csv", index=False)
        for cands in (table, tmp_path / "c.csv"):
            out = adapted.predict(cands)
            assert out["phase"].tolist() == ["B2", "L1_2", "fcc"]
            assert out["input:rank"].tolist() == [7, 8, 9]
            assert out["input:strength_MPa"].tolist() == [1.0, 2.0, 3.0]
            assert sorted(out["rank"]) == [1, 2, 3]
            assert out["id"].tolist() == table["formula"].tolist()
            assert "formula" not in out.columns and "T_C" in out.columns
    fig = plot_candidates(out.assign(rank=[1, 2, 3]), "strength_MPa", label_columns=["T_C"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["1. Al0.5Ni0.5 (25)", "2. Al0.5Ni0.5 (25)", "3. Cr0.5Ni0.5 (600)"]


# ----------------------------------------------------------------------------- nearest family


def test_nearest_family_by_composition_on_a_constructed_case():
    table = pd.DataFrame({
        "fractions": [{"Al": 0.5, "Ni": 0.5}, {"Al": 0.3, "Ni": 0.7}, {"Co": 1 / 3, "Cr": 1 / 3,
                                                                       "Fe": 1 / 3}],
        "family": ["Al-Ni", "Al-Ni", "Co-Cr-Fe"]})
    spec = {"kind": "composition"}
    index = build_family_index(table, spec, ["Al-Ni", "Co-Cr-Fe"])
    assert index["names"] == ["Al-Ni", "Co-Cr-Fe"]
    np.testing.assert_allclose(index["centroids"][0], [0.4, 0, 0, 0, 0.6])  # Al Co Cr Fe Ni
    cands = pd.DataFrame({"fractions": [{"Al": 0.4, "Ni": 0.6}, {"Al": 0.6, "Ni": 0.4},
                                        {"Co": 0.5, "Cr": 0.5}, {"Ti": 0.5, "Ni": 0.5}]})
    names, dist = nearest_family(index, cands)
    assert names == ["Al-Ni", "Al-Ni", "Co-Cr-Fe", "Al-Ni"]
    # total variation: 0; |0.6-0.4| = 0.2; 0.5 * (1/6 + 1/6 + 1/3) = 1/3; Ti is outside: 0.5 *
    # (|0 - 0.4| + |0.5 - 0.6| + 0.5) = 0.5
    np.testing.assert_allclose(dist, [0.0, 0.2, 1 / 3, 0.5])


def test_nearest_family_without_an_index_is_unknown():
    names, dist = nearest_family(None, pd.DataFrame({"fractions": [{"Al": 1.0}]}))
    assert names == ["unknown"] and math.isnan(dist[0])


# ------------------------------------------------------------------------------- bad input


def test_support_composition_that_does_not_parse_names_file_row_column(meta_pt, tmp_path):
    bad = tmp_path / "lab.csv"
    bad.write_text("formula,T_C,strength_MPa\nCo0.5Ni0.5,25,500\nCo0.5Xx0.5,25,510\n")
    with pytest.raises(InputError, match=r"lab\.csv, row 3, column 'formula'.*Xx"):
        adapt(meta_pt, bad)


def test_support_without_the_target_column_is_refused(meta_pt, tmp_path):
    bad = tmp_path / "lab.csv"
    bad.write_text("formula,T_C,yield\nCo0.5Ni0.5,25,500\nCoNi2,25,510\n")
    with pytest.raises(InputError, match="no column 'strength_MPa'"):
        adapt(meta_pt, bad)


def test_unseen_element_warns_and_still_predicts(meta_pt, support_csv):
    with pytest.warns(UnknownElementWarning, match="Ti.*never seen"):
        adapted = adapt(meta_pt, support_csv, loo=False)
    with pytest.warns(UnknownElementWarning, match="Ti"):
        out = adapted.predict(pd.DataFrame({"formula": ["Ti"], "T_C": [25.0]}))
    assert np.isfinite(out["strength_MPa"]).all()


def test_candidate_file_with_no_usable_rows(meta_pt, support_csv, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(meta_pt, support_csv, loo=False)
    empty = tmp_path / "cands.csv"
    empty.write_text("formula,T_C\n")
    with pytest.raises(InputError, match="no data rows"):
        screen(adapted, empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cands.csv"]


def test_missing_checkpoint_or_one_without_a_data_spec_is_refused(alloys, tmp_path,
                                                                   support_csv):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        adapt(tmp_path / "missing.pt", support_csv)
    _, data = alloys
    model = CompositionModel(elements=ELEMENTS, process=data.spec["process"], hidden=4)
    fams = [type(f)(f.name, f.inputs.float(), ((f.y - 500) / 100).float())
            for f in data.families[:4]]
    meta_train(model, fams, train=MetaTrainSettings(steps=1, meta_batch=2, k_shot=2, q_query=2),
               out=tmp_path / "bare.pt", progress=False)
    with pytest.raises(CheckpointError, match="records no data spec"):
        adapt(tmp_path / "bare.pt", support_csv)


def test_evaluation_table_is_quoted_and_its_offset_shrinkage_used(meta_pt, support_csv,
                                                                   tmp_path):
    ev = tmp_path / "eval.csv"
    pd.DataFrame({"k": [5, 5, 10], "method": ["meta", "offset", "offset"],
                  "error": [210.0, 230.0, 220.0], "ci_low": [190.0, 200.0, 200.0],
                  "ci_high": [230.0, 260.0, 240.0], "chosen": ["[5, 1.0]", "1.5", "3.0"],
                  "metric": ["mae"] * 3, "units": ["strength_MPa"] * 3}).to_csv(ev, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownElementWarning)
        adapted = adapt(meta_pt, support_csv, evaluation=ev)     # 5 support rows: k = 5's 1.5
        assert "initial model + shrunk per-family offset (lambda 1.5)" in set(
            adapted.baselines["method"])
        adapted.save(tmp_path / "adapted", plots=False)
    report = (tmp_path / "adapted" / "report.md").read_text()
    assert "Held-out families (from `matmeta evaluate`)" in report and "| offset | 230 |" in report
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="expected the CSV written by `matmeta evaluate`"):
        adapt(meta_pt, support_csv, evaluation=bad)
