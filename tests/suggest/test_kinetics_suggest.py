"""What to measure next for JMAK: the closed-form expected posterior variance against brute-force
refits with a simulated measurement, the targets against finite differences and the laws' own
formulas, and the `suggest kinetics` command with its bad input."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest
import torch

from matmeta.bayes import adapt_parametric
from matmeta.errors import InputError
from matmeta.models.parametric import JMAK, ArrheniusJMAK, Prior
from matmeta.suggest._kinetics import (
    add_kinetics_parser,
    expected_target_variance,
    kinetics_target,
    suggest_jmak_measurement,
)

F64 = torch.float64
JMAK_PRIOR = Prior.from_std("jmak", ["ln_k", "ln_n"], [-7.0, 0.7], [1.5, 0.3], noise_std=0.03)
ARR_PRIOR = Prior("arrhenius_jmak", ["ln_k0", "Q_kJ_per_mol", "ln_n"],
                  [25.0, 400.0, 0.7],
                  [[9.0, 140.0, 0.0], [140.0, 2500.0, 0.0], [0.0, 0.0, 0.09]], 0.04)


def _jmak_post():
    return adapt_parametric(JMAK(), JMAK_PRIOR, np.array([300.0, 600.0]), np.array([0.1, 0.3]))


def _arr_data():
    model = ArrheniusJMAK()
    params = model.from_physical(k0_per_s=math.exp(25.0), Q_kJ_per_mol=380.0, n=2.2)
    x = np.array([[3e3, 1400.0], [2e4, 1400.0], [300.0, 1500.0], [1500.0, 1500.0]])
    f = model.forward(params, torch.as_tensor(x)).numpy() + np.array([0.02, -0.03, 0.01, 0.02])
    return x, np.clip(f, 0.0, 1.0)


def _brute_force_variance(model, prior, x, y, x_new, noise, target, temp):
    """Refit with one more measurement at the value the posterior predicts there."""
    post = adapt_parametric(model, prior, x, y, noise_std=noise)
    x_new = np.asarray(x_new, dtype=np.float64).reshape(1, *x.shape[1:])
    f_new, _ = model.value_and_jacobian(post.theta[None], torch.as_tensor(x_new)[None])
    x2 = np.concatenate([x, x_new], axis=0)
    y2 = np.concatenate([y, f_new[0].numpy()[:1]])
    post2 = adapt_parametric(model, prior, x2, y2, noise_std=noise)
    a = torch.func.grad(lambda th: kinetics_target(model, th, target, temp))(post2.theta)
    return post, post2, float(a @ post2.cov @ a)


@pytest.mark.parametrize("target", ["t_half", "k", "n"])
def test_jmak_expected_variance_equals_a_refit_with_a_simulated_measurement(target):
    x, y = np.array([300.0, 600.0]), np.array([0.1, 0.3])
    post = adapt_parametric(JMAK(), JMAK_PRIOR, x, y)
    cands = np.array([100.0, 450.0, 900.0, 2000.0, 8000.0])
    _, after = expected_target_variance(JMAK(), post.theta, post.cov, cands, 0.03, target)
    for c, v in zip(cands, after.tolist(), strict=True):
        p1, p2, brute = _brute_force_variance(JMAK(), JMAK_PRIOR, x, y, np.array(c), 0.03,
                                              target, None)
        # the simulated point sits on the curve: the MAP stays where it was
        torch.testing.assert_close(p2.theta, p1.theta, rtol=0, atol=1e-6)
        assert v == pytest.approx(brute, rel=1e-5)


@pytest.mark.parametrize("target,temp", [("Q", None), ("t_half", 1350.0), ("k", 1450.0),
                                         ("n", None)])
def test_arrhenius_expected_variance_equals_a_refit(target, temp):
    model = ArrheniusJMAK()
    x, y = _arr_data()
    post = adapt_parametric(model, ARR_PRIOR, x, y)
    cands = np.array([[1e3, 1400.0], [5e4, 1350.0], [600.0, 1500.0], [1e5, 1450.0]])
    _, after = expected_target_variance(model, post.theta, post.cov, cands, 0.04, target, temp)
    for c, v in zip(cands, after.tolist(), strict=True):
        _, _, brute = _brute_force_variance(model, ARR_PRIOR, x, y, c, 0.04, target, temp)
        assert v == pytest.approx(brute, rel=1e-5)


def test_targets_match_the_laws_formulas_and_finite_differences():
    jm = JMAK()
    theta = jm.flatten(jm.from_physical(k_per_s=2e-3, n=1.7))
    t_half = float(jm.t_half_s(jm.unflatten(theta)))
    assert math.exp(float(kinetics_target(jm, theta, "t_half"))) == pytest.approx(t_half)
    assert math.exp(float(kinetics_target(jm, theta, "k"))) == pytest.approx(2e-3)
    arr = ArrheniusJMAK()
    th = arr.flatten(arr.from_physical(k0_per_s=1e12, Q_kJ_per_mol=350.0, n=2.0))
    ref = float(arr.t_half_s(arr.unflatten(th), torch.tensor([1400.0], dtype=F64))[0])
    assert math.exp(float(kinetics_target(arr, th, "t_half", 1400.0))) == pytest.approx(ref)
    assert float(kinetics_target(arr, th, "Q")) == pytest.approx(350.0)
    # gradients (which the variances use) against central finite differences
    for model, theta0, target, temp in ((jm, theta, "t_half", None), (arr, th, "t_half", 1400.0),
                                        (arr, th, "k", 1500.0)):
        g = torch.func.grad(lambda v, m=model, tg=target, T=temp: kinetics_target(m, v, tg, T))(
            theta0)
        for j in range(theta0.numel()):
            e = torch.zeros_like(theta0)
            e[j] = 1e-6
            fd = (kinetics_target(model, theta0 + e, target, temp)
                  - kinetics_target(model, theta0 - e, target, temp)) / 2e-6
            assert float(g[j]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_ranking_table_and_limits():
    post = _jmak_post()
    table = suggest_jmak_measurement(post, np.geomspace(30, 1e5, 25))
    assert table["rank"].tolist() == list(range(1, 26))
    assert (np.diff(table["target_sd_after"]) >= 0).all()
    assert (table["target_sd_after"] <= table["target_sd_now"] + 1e-15).all()
    # a measurement far past completion (f = 1 for every plausible curve) tells nothing
    far = suggest_jmak_measurement(post, [1e9])
    assert far["sd_reduction_percent"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    # an infinitely noisy measurement tells nothing either
    noisy = suggest_jmak_measurement(post, [900.0], noise_std=1e6)
    assert noisy["sd_reduction_percent"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    # predicted std: the delta method of the posterior plus the noise
    row = table.iloc[0]
    f, jac = JMAK().value_and_jacobian(post.theta[None], torch.tensor([[row["time_s"]]]))
    var = float(jac[0] @ post.cov @ jac[0].T) + 0.03**2
    assert row["predicted_fraction_std"] == pytest.approx(math.sqrt(var))


def test_bad_requests_are_one_line_errors():
    post = _jmak_post()
    for kwargs, text in (({"target": "Q"}, "Arrhenius"), ({"target": "x"}, "expected one of"),
                         ({"candidate_times_s": [-1.0]}, "times > 0")):
        kw = {"candidate_times_s": [100.0], **kwargs}
        with pytest.raises(InputError, match=text) as err:
            suggest_jmak_measurement(post, kw.pop("candidate_times_s"), **kw)
        assert "\n" not in str(err.value)
    x, y = _arr_data()
    post_a = adapt_parametric(ArrheniusJMAK(), ARR_PRIOR, x, y)
    with pytest.raises(InputError, match="temperature"):
        suggest_jmak_measurement(post_a, [100.0], temperatures_K=[1400.0], target="t_half")


def _cli(argv):
    parser = argparse.ArgumentParser(prog="matmeta suggest")
    add_kinetics_parser(parser.add_subparsers(dest="what"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_ranks_times_and_temperatures(tmp_path):
    JMAK_PRIOR.save(tmp_path / "jmak.json")
    ARR_PRIOR.save(tmp_path / "arr.json")
    pd.DataFrame({"sample": ["a", "a", "b", "b", "b"], "time_s": [300, 600, 100, 400, 1600],
                  "fraction": [0.1, 0.3, 0.05, 0.3, 0.85]}).to_csv(tmp_path / "m.csv",
                                                                   index=False)
    out = tmp_path / "next.csv"
    assert _cli(["kinetics", str(tmp_path / "m.csv"), "--prior", str(tmp_path / "jmak.json"),
                 "--out", str(out), "--plot", str(tmp_path / "next.png"), "--top", "5"]) == 0
    table = pd.read_csv(out)
    assert set(table["sample"]) == {"a", "b"} and len(table) == 10
    first_a = table[table["sample"] == "a"].iloc[0]
    # the command's answer is the library's: the same posterior, the same best time
    lib = suggest_jmak_measurement(_jmak_post(), np.geomspace(30, 1e5, 25))
    assert first_a["target_sd_now"] == pytest.approx(lib["target_sd_now"].iloc[0], rel=1e-6)
    assert (tmp_path / "next.png").read_bytes()[:4] == b"\x89PNG"

    x, y = _arr_data()
    pd.DataFrame({"time_s": x[:, 0], "temperature_K": x[:, 1], "fraction": y}).sort_values(
        "time_s").to_csv(tmp_path / "a.csv", index=False)
    assert _cli(["kinetics", str(tmp_path / "a.csv"), "--prior", str(tmp_path / "arr.json"),
                 "--target", "Q", "--temperatures", "1350,1400,1500", "--candidates-times",
                 "100,1000,10000", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 9 and set(table["temperature_K"]) == {1350.0, 1400.0, 1500.0}


def test_cli_refuses_another_models_prior_in_one_line(tmp_path):
    Prior.from_std("birch_murnaghan", ["ln_V0"], [3.0], [0.1]).save(tmp_path / "eos.json")
    pd.DataFrame({"time_s": [300, 600], "fraction": [0.1, 0.3]}).to_csv(tmp_path / "m.csv",
                                                                       index=False)
    with pytest.raises(InputError, match="birch_murnaghan") as err:
        _cli(["kinetics", str(tmp_path / "m.csv"), "--prior", str(tmp_path / "eos.json"),
              "--out", str(tmp_path / "n.csv")])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "n.csv").exists()
    JMAK_PRIOR.save(tmp_path / "jmak.json")
    with pytest.raises(InputError, match="Arrhenius"):
        _cli(["kinetics", str(tmp_path / "m.csv"), "--prior", str(tmp_path / "jmak.json"),
              "--target", "Q", "--out", str(tmp_path / "n.csv")])


def test_cli_tolerances_reach_the_fit(tmp_path):
    """--fraction-tolerance and --allow-negative-time apply to the fit as to the reading (the
    fit once refused the fraction -0.02 and the time -5 s the reader had accepted), and the
    posterior equals the library's MAP fit of the same points kept as measured."""
    from matmeta.workflows._kinetics import fit_jmak_with_prior

    JMAK_PRIOR.save(tmp_path / "jmak.json")
    t = np.array([-5.0, 300.0, 600.0, 1200.0])
    f = np.array([-0.02, 0.1, 0.3, 0.7])
    pd.DataFrame({"time_s": t, "fraction": f}).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "next.csv"
    argv = ["kinetics", str(tmp_path / "m.csv"), "--prior", str(tmp_path / "jmak.json"),
            "--out", str(out)]
    with pytest.raises(InputError):
        _cli(argv)
    assert _cli([*argv, "--fraction-tolerance", "0.05", "--allow-negative-time"]) == 0
    lib = fit_jmak_with_prior(t, f, JMAK_PRIOR, fraction_tolerance=0.05,
                              allow_negative_time=True)
    want = suggest_jmak_measurement(lib.posterior, np.geomspace(30, 1e5, 25))
    table = pd.read_csv(out)
    assert len(table) > 0
    assert table["target_sd_now"].to_numpy() == pytest.approx(
        float(want["target_sd_now"].iloc[0]), rel=1e-6)
