"""Parametric laws against analytic answers, finite differences, published conversions and ASE."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from matmeta.errors import InputError
from matmeta.models import build_model, load_model, save_model
from matmeta.models.parametric import (
    JMAK,
    Arrhenius,
    ArrheniusJMAK,
    BirchMurnaghan,
    K_to_k_per_s,
    Prior,
    jmak_curve,
    k_per_s_to_K,
    time_from_seconds,
    time_to_seconds,
)
from tests.helpers import DATA, assert_tree_close

F64 = torch.float64


def test_t_half_and_t_x_match_the_analytic_formulas():
    model = JMAK(fit_t0=True)
    k, n, t0 = 3e-4, 2.7, 120.0
    params = model.from_physical(k_per_s=k, n=n, t0_s=t0)
    assert math.isclose(float(model.t_half_s(params)), t0 + math.log(2) ** (1 / n) / k,
                        rel_tol=1e-12)
    for x in (0.05, 0.5, 0.9):
        t_x = t0 + (-math.log(1 - x)) ** (1 / n) / k
        assert math.isclose(float(model.t_x_s(params, x)), t_x, rel_tol=1e-12)
        # and the curve passes through x there
        assert math.isclose(float(model.forward(params, torch.tensor([t_x], dtype=F64))[0]), x,
                            rel_tol=1e-10)
    with pytest.raises(InputError):
        model.t_x_s(params, 1.0)


def test_f_max_scales_the_curve_and_t_half_is_half_of_f_max():
    model = JMAK(fit_fmax=True)
    params = model.from_physical(k_per_s=1e-2, n=1.5, f_max=0.7)
    th = model.t_half_s(params)
    assert math.isclose(float(model.forward(params, th.reshape(1))[0]), 0.35, rel_tol=1e-10)
    assert math.isclose(float(model.forward(params, torch.tensor([1e9], dtype=F64))[0]), 0.7)


def test_K_t_n_and_k_t_n_conventions_are_the_same_curve():
    # f = 1 - exp(-K t_min^n)  ==  f = 1 - exp(-(k t_s)^n) with k = K^(1/n) / 60
    K, n = 13.2388, 1.68
    k = K_to_k_per_s(K, n, time_unit="min")
    t_min = np.array([0.5, 3.0, 9.0, 40.0])
    f_K = 1 - np.exp(-K * t_min**n)
    f_k = 1 - np.exp(-(k * time_to_seconds(t_min, "min")) ** n)
    np.testing.assert_allclose(f_K, f_k, rtol=1e-12)
    assert math.isclose(k_per_s_to_K(k, n, "min"), K, rel_tol=1e-12)
    assert math.isclose(K_to_k_per_s(k_per_s_to_K(2e-3, 3.0, "h"), 3.0, "h"), 2e-3, rel_tol=1e-12)
    assert time_from_seconds(7200.0, "h") == 2.0
    with pytest.raises(InputError, match="time unit"):
        time_to_seconds(1.0, "day")


def test_conversion_reproduces_the_published_parameter_table():
    # the table's k_per_s column was converted by its collector as K^(1/n)/60 from K in min^-n
    path = DATA / "kinetics" / "avrami_published_parameters.csv"
    rows = [r for r in csv.DictReader(path.open()) if r["k_units"].startswith("K [min^-n]")]
    assert len(rows) >= 20
    for r in rows:
        k = K_to_k_per_s(float(r["k_reported"]), float(r["n"]), "min")
        assert math.isclose(k, float(r["k_per_s"]), rel_tol=2e-4), r["material"]


def test_curve_is_finite_with_finite_gradients_before_t0_and_for_huge_kt():
    model = JMAK(fit_t0=True, fit_fmax=True)
    params = model.from_physical(k_per_s=1e3, n=8.0, t0_s=10.0, f_max=0.8)
    t = torch.tensor([0.0, 5.0, 10.0, 10.0 + 1e-12, 11.0, 1e12], dtype=F64)
    f = model.forward(params, t)
    assert torch.isfinite(f).all()
    assert f[0] == 0 and f[2] == 0 and math.isclose(float(f[-1]), 0.8)
    grads = torch.func.grad(lambda p: model.forward(p, t).sum())(params)
    assert all(torch.isfinite(g).all() for g in grads.values())
    hess = torch.func.hessian(lambda p: model.forward(p, t).sum())(params)
    assert all(torch.isfinite(v).all() for row in hess.values() for v in row.values())


def test_closed_form_jacobian_matches_finite_differences():
    for model in (JMAK(), JMAK(fit_t0=True), JMAK(fit_fmax=True), JMAK(fit_t0=True, fit_fmax=True)):
        phys = {"k_per_s": 2e-3, "n": 1.7, "t0_s": 40.0, "f_max": 0.8}
        params = model.from_physical(**{s.physical_name: phys[s.physical_name]
                                        for s in model.specs})
        theta = model.flatten(params)[None]
        t = torch.tensor([[1.0, 30.0, 60.0, 200.0, 500.0, 1000.0, 3000.0]], dtype=F64)
        _, jac = model.value_and_jacobian(theta, t)
        eps = 1e-6
        for j in range(theta.shape[1]):
            d = torch.zeros_like(theta)
            d[0, j] = eps
            fd = (model.forward(model.unflatten((theta + d)[0]), t[0])
                  - model.forward(model.unflatten((theta - d)[0]), t[0])) / (2 * eps)
            torch.testing.assert_close(jac[0, :, j], fd, atol=1e-8, rtol=1e-6)
        # the fitter's ln-t fast path agrees with the general one
        f1, jt = model.fit_value_and_jacobian(theta, model.fit_inputs(t))
        torch.testing.assert_close(jt.transpose(1, 2), jac, atol=1e-14, rtol=1e-12)


def test_forward_works_under_vmap_over_tasks():
    model = JMAK(fit_fmax=True)
    ps = [model.from_physical(k_per_s=k, n=n, f_max=0.9) for k, n in ((1e-3, 1.0), (1e-2, 3.0))]
    batched = {k: torch.stack([p[k] for p in ps]) for k in ps[0]}
    t = torch.tensor([[10.0, 100.0, 1000.0], [1.0, 50.0, 90.0]], dtype=F64)
    out = torch.func.vmap(model.forward)(batched, t)
    for i, p in enumerate(ps):
        torch.testing.assert_close(out[i], model.forward(p, t[i]))


def test_arrhenius_jmak_per_temperature_n_and_vmap():
    model = ArrheniusJMAK(temperatures_K=[1400.0, 1500.0], shared_n=False)
    params = model.from_physical(k0_per_s=1e8, Q_kJ_per_mol=300.0, n=torch.tensor([1.0, 3.0]))
    x = torch.tensor([[1e3, 1400.0], [1e3, 1500.0]], dtype=F64)
    f = model.forward(params, x)
    for i, (temp, n) in enumerate(((1400.0, 1.0), (1500.0, 3.0))):
        ln_k = math.log(1e8) - 300e3 / (8.314462618 * temp)
        assert math.isclose(float(f[i]), 1 - math.exp(-((math.exp(ln_k) * 1e3) ** n)),
                            rel_tol=1e-12)
    out = torch.func.vmap(model.forward, in_dims=(None, 0))(params, x[None].expand(3, 2, 2))
    assert out.shape == (3, 2)


def test_arrhenius_law_and_negative_Q_allowed():
    model = Arrhenius()
    params = model.from_physical(k0_per_s=1e-20, Q_kJ_per_mol=-150.0)
    temps = torch.tensor([300.0, 350.0], dtype=F64)
    ln_k = model.forward(params, temps)
    expect = math.log(1e-20) + 150e3 / (8.314462618 * temps)
    torch.testing.assert_close(ln_k, expect)
    assert float(ln_k[0]) > float(ln_k[1])  # rate falls with temperature when Q < 0


def test_physical_round_trip_and_domain_errors():
    model = JMAK(fit_t0=True, fit_fmax=True)
    phys = {"k_per_s": 5e-4, "n": 2.2, "t0_s": 3.0, "f_max": 0.66}
    back = model.to_physical(model.from_physical(**phys))
    for k, v in phys.items():
        assert math.isclose(float(back[k]), v, rel_tol=1e-12)
    with pytest.raises(InputError, match="n"):
        model.from_physical(k_per_s=1e-3, n=-1.0, t0_s=1.0, f_max=0.5)
    with pytest.raises(InputError, match="f_max"):
        model.from_physical(k_per_s=1e-3, n=1.0, t0_s=1.0, f_max=1.0)
    with pytest.raises(InputError, match="exactly"):
        model.from_physical(k_per_s=1e-3, n=1.0)


def test_registry_round_trip_with_a_prior(tmp_path):
    prior = Prior.from_std("jmak", ["ln_k", "ln_n"], [-7.0, 0.5], [2.0, 0.3], noise_std=0.04)
    model = build_model("jmak", {"prior": prior.to_dict()})
    params = model.init_params(torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.flatten(params), prior.mean)
    save_model(tmp_path / "m.pt", model, params)
    model2, params2, _ = load_model(tmp_path / "m.pt")
    assert isinstance(model2, JMAK) and model2.prior.noise_std == 0.04
    assert_tree_close(params, params2)
    for name in ("arrhenius_jmak", "arrhenius", "birch_murnaghan"):
        m = build_model(name)
        assert m.name == name and set(m.init_params()) == set(m.param_names)


def test_prior_files_json_and_torch_and_refusals(tmp_path):
    model = JMAK()
    prior = Prior.from_std("jmak", model.flat_names, [-9.0, 0.7], [3.0, 0.5])
    prior.save(tmp_path / "p.json")
    loaded = Prior.load(tmp_path / "p.json", model=model)
    torch.testing.assert_close(loaded.cov, prior.cov)
    torch.save({"model": "jmak", "names": ["ln_k", "ln_n"], "mean": torch.tensor([-9.0, 0.7]),
                "std": torch.tensor([3.0, 0.5])}, tmp_path / "p.pt")
    torch.testing.assert_close(Prior.load(tmp_path / "p.pt", model=model).std, prior.std)
    with pytest.raises(InputError, match="prior is for model 'jmak', not 'arrhenius_jmak'"):
        Prior.load(tmp_path / "p.json", model=ArrheniusJMAK())
    with pytest.raises(InputError, match="do not match"):
        Prior.load(tmp_path / "p.json", model=JMAK(fit_fmax=True))
    bad = prior.to_dict() | {"cov": [[1.0, 2.0], [2.0, 1.0]]}
    with pytest.raises(InputError, match="positive definite"):
        Prior.from_dict(bad)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold an object"):
        Prior.load(tmp_path / "junk.json")


def test_jmak_curve_helper_matches_closed_form():
    t = torch.tensor([0.0, 10.0, 100.0], dtype=F64)
    f = jmak_curve(t, torch.tensor(math.log(0.01), dtype=F64), torch.tensor(2.0, dtype=F64))
    expect = 1 - torch.exp(-((0.01 * t) ** 2))
    torch.testing.assert_close(f, expect)


# -- Birch-Murnaghan against ASE's own EOS fit on EMT energies ------------------------------------
def _emt_curve(symbol: str, a0: float):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    vols, energies = [], []
    for s in np.linspace(0.94, 1.06, 9):
        atoms = bulk(symbol, "fcc", a=a0 * s)
        atoms.calc = EMT()
        vols.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    return np.array(vols), np.array(energies)


@pytest.mark.parametrize("symbol,a0", [("Cu", 3.6), ("Al", 4.05), ("Ni", 3.52)])
def test_birch_murnaghan_fit_matches_ase_eos(symbol, a0):
    from ase.eos import EquationOfState
    from ase.units import GPa

    from matmeta.fitting import fit_curves

    v, e = _emt_curve(symbol, a0)
    eos = EquationOfState(v, e, eos="birchmurnaghan")
    v0, e0, b0 = eos.fit()
    res = fit_curves(BirchMurnaghan(), [v], [e])
    phys = res.physical()
    assert bool(res.converged[0])
    assert math.isclose(phys["V0_A3"][0], v0, rel_tol=1e-6)
    assert math.isclose(phys["E0_eV"][0], e0, rel_tol=1e-6, abs_tol=1e-7)
    assert math.isclose(phys["B0_GPa"][0], b0 / GPa, rel_tol=1e-5)
    assert math.isclose(phys["B0_prime"][0], eos.eos_parameters[2], rel_tol=1e-4)
    # and the model's curve is ASE's at the fitted parameters
    params = BirchMurnaghan().from_physical(E0_eV=e0, V0_A3=v0, B0_GPa=b0 / GPa,
                                            B0_prime=eos.eos_parameters[2])
    ours = BirchMurnaghan().forward(params, torch.as_tensor(v, dtype=F64)).numpy()
    np.testing.assert_allclose(ours, eos.func(v, *eos.eos_parameters), atol=1e-9)


def test_jmak_goes_through_the_one_inner_loop_with_second_order_gradients():
    from matmeta.meta import inner_loop
    from matmeta.models import Samples, sample_loss

    model = JMAK(fit_fmax=True)
    t = torch.tensor([100.0, 300.0, 1000.0, 3000.0], dtype=F64)
    truth = model.from_physical(k_per_s=1e-3, n=1.5, f_max=0.8)
    support = Samples(t, model.forward(truth, t))
    start = {k: v.clone().requires_grad_() for k, v in
             model.from_physical(k_per_s=2e-3, n=1.0, f_max=0.7).items()}
    adapted = inner_loop(model, start, support, steps=3, lr=0.5)
    loss = sample_loss(model, adapted, support)
    grads = torch.autograd.grad(loss, list(start.values()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert float(loss) < float(sample_loss(model, start, support))
    # meta-batch of tasks through vmap, as the meta-learners do
    batched = {k: v.detach().expand(5).clone() for k, v in start.items()}
    losses = torch.func.vmap(lambda p: sample_loss(model, p, support))(batched)
    assert losses.shape == (5,) and torch.allclose(losses, losses[0].expand(5))


@pytest.mark.parametrize("shared_n,fit_fmax", [(True, False), (False, True)])
def test_arrhenius_jmak_closed_form_jacobian_matches_autodiff(shared_n, fit_fmax):
    from matmeta.models.parametric import ParametricModel

    model = ArrheniusJMAK(temperatures_K=[1400.0, 1500.0], shared_n=shared_n, fit_fmax=fit_fmax)
    phys = {"k0_per_s": 1e10, "Q_kJ_per_mol": 350.0,
            "n": 2.0 if shared_n else torch.tensor([1.5, 2.5]), "f_max": 0.8}
    params = model.from_physical(**{s.physical_name: phys[s.physical_name] for s in model.specs})
    theta = model.flatten(params)[None]
    t = torch.tensor([0.0, 10.0, 1e2, 1e3, 1e4, 1e5], dtype=F64)
    x = torch.stack([t.repeat(2), torch.tensor([1400.0] * 6 + [1500.0] * 6, dtype=F64)], -1)[None]
    f1, j1 = model.value_and_jacobian(theta, x)
    f2, j2 = ParametricModel.value_and_jacobian(model, theta, x)
    torch.testing.assert_close(f1, f2)
    torch.testing.assert_close(j1, j2, atol=1e-12, rtol=1e-9)


def test_birch_murnaghan_initial_guess_stays_on_the_input_device():
    """B0' = 4 start is made on the energies' device and dtype (not a CPU float64 constant)."""
    from matmeta.models.parametric import BirchMurnaghan

    v = torch.linspace(14.0, 18.0, 7, dtype=torch.float32)[None]
    e = 0.05 * (v - 16.0) ** 2 - 3.0
    guess = BirchMurnaghan().initial_guesses(v, e)
    assert guess.dtype == torch.float32
    assert float(guess[0, 0, 3]) == 4.0
    assert float(guess[0, 0, 1].exp()) == pytest.approx(16.0, rel=1e-5)  # parabola vertex
    if torch.cuda.is_available():
        g = BirchMurnaghan().initial_guesses(v.cuda(), e.cuda())
        assert g.device.type == "cuda"


def test_arrhenius_jmak_derived_outputs_follow_the_parameters_device():
    """Constants made inside derived()/t_half_s() live on the parameters' device: checked with
    torch's 'meta' device, which refuses to mix with CPU tensors just as CUDA does."""
    from matmeta.models.parametric import ArrheniusJMAK

    model = ArrheniusJMAK(temperatures_K=[900.0, 950.0])
    params = {k: v.to("meta") for k, v in model.init_params().items()}
    assert {v.device.type for v in model.derived(params).values()} == {"meta"}
    assert model.t_half_s(params, [900.0]).device.type == "meta"
