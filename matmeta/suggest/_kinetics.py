"""What to measure next for JMAK kinetics: the time (and, for Arrhenius-JMAK, the temperature) whose
measurement most reduces the posterior uncertainty of t_half, k, n or Q.

From the Laplace posterior ``theta ~ N(theta_map, S)`` (transformed parameters; MAP under a
meta-learned prior, :func:`matmeta.bayes.adapt_parametric`), one more measurement ``y`` at input
``x`` with noise std ``s`` adds ``J' J / s^2`` to the precision, ``J = d f(x) / d theta`` at the MAP
(the law linearised there). For a target ``g(theta)`` with gradient ``a``, the posterior variance
after the measurement is, in closed form (a rank-1 update of the precision):

    var_after(x) = a' S a - (a' S J')^2 / (s^2 + J S J')

It does not depend on the value ``y`` that will be measured: under the linearised law it is the
expected posterior variance. A brute-force check (refit with a simulated measurement at the
predicted value: the MAP stays put, the Laplace covariance is the updated one) is in the tests.

Targets, each on the scale its uncertainty is naturally relative on: ``t_half`` (ln t_half_s),
``k`` (ln k_per_s), ``n`` (ln n), ``Q`` (Q_kJ_per_mol, Arrhenius-JMAK only). For Arrhenius-JMAK,
``t_half`` and ``k`` are taken at ``target_temperature_K``.

Example:
    >>> post = adapt_parametric(JMAK(), prior, t_s, f)
    >>> table = suggest_jmak_measurement(post, np.geomspace(10, 1e5, 40), target="t_half")
    >>> table.iloc[0]["time_s"]                        # the best next time, in s
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matmeta.errors import InputError

# numpy, pandas and torch are imported inside the functions: `matmeta --help` builds this
# module's parser and must stay fast
if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from torch import Tensor

__all__ = [
    "KINETICS_TARGETS",
    "add_kinetics_parser",
    "expected_target_variance",
    "kinetics_target",
    "suggest_jmak_measurement",
]

# target name -> (column label, description)
KINETICS_TARGETS = {
    "t_half": ("ln_t_half_s", "half time t_half_s (its logarithm)"),
    "k": ("ln_k_per_s", "rate constant k_per_s (its logarithm)"),
    "n": ("ln_n", "Avrami exponent n (its logarithm)"),
    "Q": ("Q_kJ_per_mol", "activation energy Q_kJ_per_mol"),
}


def _check_target(model: Any, target: str, temperature_K: float | None) -> None:
    if target not in KINETICS_TARGETS:
        raise InputError(f"target {target!r}: expected one of {', '.join(KINETICS_TARGETS)}")
    if model.name not in ("jmak", "arrhenius_jmak"):
        raise InputError(f"suggest for kinetics needs a 'jmak' or 'arrhenius_jmak' model, not "
                         f"{model.name!r}")
    if target == "Q" and model.name != "arrhenius_jmak":
        raise InputError("target 'Q' needs an Arrhenius-JMAK model (a prior for "
                         "'arrhenius_jmak'): one isotherm carries no activation energy")
    if model.name == "arrhenius_jmak" and target in ("t_half", "k") and temperature_K is None:
        raise InputError(f"target {target!r} of an Arrhenius-JMAK model needs a temperature "
                         "(target_temperature_K)")
    if model.name == "arrhenius_jmak" and not model.shared_n and target == "n":
        raise InputError("target 'n' needs a shared Avrami exponent (shared_n=True)")


def kinetics_target(model: Any, theta: Tensor, target: str = "t_half",
                    temperature_K: float | None = None) -> Tensor:
    """The target's value at transformed parameters ``theta`` (P,), on its natural scale.

    Example:
        >>> model = JMAK()
        >>> kinetics_target(model, model.flatten(model.from_physical(k_per_s=1e-3, n=2.0)))
        tensor(6.7245, dtype=torch.float64)                  # ln(t_half_s), t_half = 833 s

    Args:
        model: ``JMAK`` or ``ArrheniusJMAK``.
        theta: (P,) transformed parameters in ``model.flat_names`` order.
        target: ``"t_half"`` (ln t_half_s), ``"k"`` (ln k_per_s), ``"n"`` (ln n) or ``"Q"``
            (kJ/mol).
        temperature_K: where ``t_half`` and ``k`` of an Arrhenius-JMAK model are taken.

    Returns:
        A scalar tensor, differentiable in ``theta``.
    """
    import torch

    _check_target(model, target, temperature_K)
    p = model.unflatten(theta)
    if target == "Q":
        return p["Q_kJ_per_mol"]
    if model.name == "jmak":
        if target == "t_half":
            return torch.log(model.t_half_s(p)).reshape(())
        return (p["ln_k"] if target == "k" else p["ln_n"]).reshape(())
    temp = theta.new_tensor([float(temperature_K if temperature_K is not None else 1.0)])
    if target == "t_half":
        return torch.log(model.t_half_s(p, temp))[0]
    if target == "k":
        return model.ln_k(p, temp)[0]
    return p["ln_n"].reshape(()) if model.shared_n else torch.log(model._n(p, temp))[0]


def expected_target_variance(model: Any, theta: Tensor, cov: Tensor, candidates: Any,
                             noise_std: float | Tensor, target: str = "t_half",
                             temperature_K: float | None = None) -> tuple[Tensor, Tensor]:
    """Posterior variance of the target now, and expected after one measurement per candidate.

    Example:
        >>> now, after = expected_target_variance(JMAK(), post.theta, post.cov,
        ...                                       torch.tensor([100.0, 1000.0]), 0.05)

    Args:
        model, theta, cov: the law and its Laplace posterior (transformed space).
        candidates: (C,) times in s (JMAK) or (C, 2) ``[time_s, temperature_K]``.
        noise_std: std of the new measurement (fraction units), a float or (C,).
        target, temperature_K: as in :func:`kinetics_target`.

    Returns:
        ``(var_now, var_after)``: a scalar and a (C,) tensor, on the target's scale (squared).
    """
    import numpy as np
    import torch

    theta = torch.as_tensor(theta, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    x = torch.as_tensor(np.asarray(candidates, dtype=np.float64), dtype=torch.float64)
    a = torch.func.grad(lambda th: kinetics_target(model, th, target, temperature_K))(theta)
    _, jac = model.value_and_jacobian(theta.unsqueeze(0), x.unsqueeze(0))
    jac = jac[0]  # (C, P)
    s2 = torch.as_tensor(noise_std, dtype=torch.float64) ** 2
    sa = cov @ a
    var_now = a @ sa
    var_after = var_now - (jac @ sa) ** 2 / (s2 + torch.einsum("cp,pq,cq->c", jac, cov, jac))
    return var_now, var_after.clamp_min(0.0)


def suggest_jmak_measurement(posterior: Any, candidate_times_s: Sequence[float] | np.ndarray, *,
                             temperatures_K: Sequence[float] | None = None,
                             target: str = "t_half",
                             target_temperature_K: float | None = None,
                             noise_std: float | None = None) -> pd.DataFrame:
    """Rank candidate measurements by the expected posterior uncertainty of ``target`` after them.

    Example:
        >>> post = adapt_parametric(JMAK(), prior, [600.0, 1800.0], [0.08, 0.3])
        >>> suggest_jmak_measurement(post, np.geomspace(60, 1e5, 50)).head(3)
        >>> # Arrhenius-JMAK: times x temperatures, t_half at 1373 K
        >>> suggest_jmak_measurement(post_a, times, temperatures_K=[1373, 1473],
        ...                          target="t_half", target_temperature_K=1373.15)

    Args:
        posterior: a :class:`~matmeta.bayes.ParametricPosterior` of ``JMAK`` or ``ArrheniusJMAK``.
        candidate_times_s: candidate times in s.
        temperatures_K: candidate temperatures (Arrhenius-JMAK: every time at every temperature).
        target: ``"t_half"``, ``"k"``, ``"n"`` or ``"Q"``.
        target_temperature_K: where ``t_half`` / ``k`` of an Arrhenius-JMAK model are wanted.
        noise_std: std of the new measurement; default: the posterior's.

    Returns:
        One row per candidate, best first: ``time_s`` (``temperature_K``), ``predicted_fraction``
        and ``predicted_fraction_std`` (with noise), ``target``, ``target_scale``
        (``ln_t_half_s``...), ``target_sd_now``, ``target_sd_after``, ``sd_reduction_percent``,
        ``rank`` (1 = best). Ties (within 1e-12 relative) keep the earlier candidate first.
    """
    import numpy as np
    import pandas as pd
    import torch

    model = posterior.model
    _check_target(model, target, target_temperature_K)
    times = np.asarray(candidate_times_s, dtype=np.float64).reshape(-1)
    if times.size == 0 or not np.isfinite(times).all() or (times <= 0).any():
        raise InputError("candidate times: expected one or more finite times > 0 s")
    arrhenius = model.name == "arrhenius_jmak"
    if arrhenius:
        if not temperatures_K:
            raise InputError("an Arrhenius-JMAK suggestion needs candidate temperatures_K")
        temps = np.asarray(temperatures_K, dtype=np.float64).reshape(-1)
        if not np.isfinite(temps).all() or (temps <= 0).any():
            raise InputError("candidate temperatures: expected finite values > 0 K")
        tt, TT = np.meshgrid(times, temps, indexing="xy")
        cand = np.stack([tt.reshape(-1), TT.reshape(-1)], -1)
    else:
        cand = times
    s = float(noise_std if noise_std is not None else posterior.noise_std)
    if not s > 0:
        raise InputError(f"noise_std {s}: expected a positive std of one measurement")
    var_now, var_after = expected_target_variance(model, posterior.theta, posterior.cov, cand, s,
                                                  target, target_temperature_K)
    x = torch.as_tensor(cand, dtype=torch.float64)
    f, jac = model.value_and_jacobian(posterior.theta.unsqueeze(0), x.unsqueeze(0))
    pred_var = torch.einsum("cp,pq,cq->c", jac[0], posterior.cov, jac[0]) + s * s
    sd_now = math.sqrt(max(float(var_now), 0.0))
    sd_after = var_after.sqrt().numpy()
    frame = pd.DataFrame({"time_s": cand[:, 0] if arrhenius else cand})
    if arrhenius:
        frame["temperature_K"] = cand[:, 1]
    frame["predicted_fraction"] = f[0].numpy()
    frame["predicted_fraction_std"] = pred_var.sqrt().numpy()
    frame["target"] = target
    frame["target_scale"] = KINETICS_TARGETS[target][0]
    if arrhenius and target in ("t_half", "k"):
        frame["target_temperature_K"] = float(target_temperature_K)
    frame["target_sd_now"] = sd_now
    frame["target_sd_after"] = sd_after
    frame["sd_reduction_percent"] = (100.0 * (1.0 - sd_after / sd_now) if sd_now > 0
                                     else np.zeros_like(sd_after))
    frame = frame.sort_values("target_sd_after", kind="stable").reset_index(drop=True)
    frame["rank"] = np.arange(1, len(frame) + 1)
    return frame


# -- CLI: `matmeta suggest kinetics` (registered by matmeta/cli/suggest.py) --------------------
KINETICS_DESCRIPTION = """\
Rank the next measurement of a JMAK kinetics experiment: the time (and, with an Arrhenius-JMAK
prior, the temperature) whose measurement most reduces the posterior uncertainty of the target.

The measured points of each curve (one per group and temperature; with an Arrhenius-JMAK prior,
one per group over all its temperatures) are fitted by MAP under the meta-learned prior (PRIOR
from `matmeta meta-train ... --prior FILE` or matmeta.learn_prior) with a Laplace posterior.
A candidate's score is the expected posterior std of the target after measuring there (closed
form: a rank-1 update of the posterior precision, the law linearised at the MAP fit).

Targets: t_half (ln t_half_s; sd 0.1 = about 10% relative), k (ln k_per_s), n (ln n),
Q (Q_kJ_per_mol; Arrhenius-JMAK only). Times in s.

Output (NEXT.csv, best first per curve): group columns, time_s, temperature_K (Arrhenius),
predicted_fraction, predicted_fraction_std, target, target_scale, target_sd_now,
target_sd_after, sd_reduction_percent, rank.

Example:
  matmeta suggest kinetics my_isotherm.csv --prior w_prior.json --out next.csv --plot next.png
  matmeta suggest kinetics grade.csv --prior w_arrhenius_prior.json --target Q \\
      --temperatures 1373,1423,1473 --out next.csv"""


def add_kinetics_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``kinetics`` on a ``matmeta suggest`` sub-command set.

    Example:
        >>> sub = suggest_parser.add_subparsers(dest="suggest_command")
        >>> add_kinetics_parser(sub)        # matmeta suggest kinetics ...
    """
    from matmeta.cli.common import add_runtime_options

    p = subparsers.add_parser(
        "kinetics", help="JMAK: the next time (and temperature) to measure",
        description=KINETICS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("measurements", metavar="MEASUREMENTS.csv",
                   help="the points measured so far (time_s or time + --time-unit, fraction, "
                        "optional temperature_K, fraction_std, group columns)")
    p.add_argument("--prior", required=True, metavar="PRIOR.json",
                   help="meta-learned prior for 'jmak' (one isotherm) or 'arrhenius_jmak' (a "
                        "group's isotherms)")
    p.add_argument("--target", choices=list(KINETICS_TARGETS), default="t_half",
                   help="what to pin down: t_half, k, n or Q (Arrhenius) [default: t_half]")
    p.add_argument("--candidates-times", default=None, metavar="T1,T2,...",
                   help="candidate times in --time-unit units [default: 60 times log-spaced "
                        "from a tenth of the first measured time (or t_half/30) to ten times the "
                        "last (or 30 t_half)]")
    p.add_argument("--temperatures", default=None, metavar="K1,K2,...",
                   help="candidate temperatures in K (Arrhenius prior) [default: the measured "
                        "ones]")
    p.add_argument("--target-temperature", type=float, default=None, metavar="K",
                   help="where t_half or k is wanted (Arrhenius prior) [default: the lowest "
                        "candidate temperature]")
    p.add_argument("--noise-std", type=float, default=None,
                   help="std of one fraction measurement [default: the prior's, else 0.05]")
    p.add_argument("--time-unit", choices=["s", "min", "h"], default=None,
                   help="unit of a plain 'time' column and of --candidates-times [default: s]")
    p.add_argument("--group-by", default=None, metavar="COLS",
                   help="comma-separated columns that identify a sample [default: those of "
                        "dataset_id, sample, family, material, grade, group present]")
    p.add_argument("--fraction-tolerance", type=float, default=0.0, metavar="TOL",
                   help="accept fractions in [-TOL, 1+TOL] as measured [default: 0]")
    p.add_argument("--allow-negative-time", action="store_true",
                   help="keep negative times (digitisation noise near t = 0) as measured")
    p.add_argument("--top", type=int, default=None, metavar="N",
                   help="write only the N best candidates per curve [default: all]")
    p.add_argument("--out", required=True, metavar="NEXT.csv",
                   help="ranked candidates (written atomically)")
    p.add_argument("--plot", default=None, metavar="NEXT.png",
                   help="draw the posterior curve, the data and the expected target std after "
                        "each candidate")
    add_runtime_options(p)
    p.set_defaults(func=run_kinetics_suggest)
    return p


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise InputError(f"{what}: {part!r} is not a number") from None
    if not out:
        raise InputError(f"{what}: expected a comma-separated list of numbers")
    return out


def default_candidate_times(time_s: np.ndarray, t_half_s: float, n: int = 60) -> np.ndarray:
    """Log-spaced candidate times (s) that cover the data and the posterior's transition."""
    import numpy as np

    pos = time_s[time_s > 0]
    lo = min(pos.min() / 10.0 if len(pos) else t_half_s / 30.0, t_half_s / 30.0)
    hi = max(time_s.max() * 10.0 if len(time_s) else t_half_s * 30.0, t_half_s * 30.0)
    return np.geomspace(lo, hi, n)


def run_kinetics_suggest(args: argparse.Namespace) -> int:
    """The ``matmeta suggest kinetics`` command."""
    import numpy as np
    import pandas as pd

    from matmeta.checkpoint import atomic_write_text
    from matmeta.cli.common import check_outputs, setup_runtime
    from matmeta.io.kinetics import read_kinetics_table
    from matmeta.models.parametric import seconds_per
    from matmeta.workflows._kinetics import fit_jmak_with_prior, load_kinetics_prior

    setup_runtime(args)
    check_outputs([args.out], [args.plot])
    prior, model = load_kinetics_prior(args.prior)
    arrhenius = model.name == "arrhenius_jmak"
    unit_s = seconds_per(args.time_unit or "s")
    cand_times = _floats(args.candidates_times, "--candidates-times")
    if cand_times is not None:
        cand_times = [t * unit_s for t in cand_times]
    temps = _floats(args.temperatures, "--temperatures")
    if args.noise_std is not None and not args.noise_std > 0:
        raise InputError(f"--noise-std {args.noise_std}: expected a positive number")
    if args.top is not None and args.top < 1:
        raise InputError(f"--top {args.top}: expected a positive integer")
    if temps is not None and not arrhenius:
        raise InputError("--temperatures needs an Arrhenius-JMAK prior; a 'jmak' prior ranks "
                         "times of one isotherm")
    group_by = None if args.group_by is None else [c.strip() for c in args.group_by.split(",")
                                                   if c.strip()]
    table = read_kinetics_table(args.measurements, time_unit=args.time_unit, group_by=group_by,
                                fraction_tolerance=args.fraction_tolerance,
                                allow_negative_time=args.allow_negative_time,
                                require_temperature=arrhenius)
    curves = table.curves(by_temperature=not arrhenius)
    frames, panels = [], []
    for key, cur in curves:
        label = table.describe_curve(key)
        fit = fit_jmak_with_prior(
            cur["time_s"].to_numpy(), cur["fraction"].to_numpy(), prior,
            temperature_K=cur["temperature_K"].to_numpy() if arrhenius else None,
            fraction_std=cur["fraction_std"].to_numpy() if table.has_std else None,
            noise_std=args.noise_std, label=label,
            fraction_tolerance=max(args.fraction_tolerance, 0.0),
            allow_negative_time=args.allow_negative_time)
        t_target = None
        cand_temps = None
        if arrhenius:
            cand_temps = temps or sorted(cur["temperature_K"].unique().tolist())
            t_target = (args.target_temperature if args.target_temperature is not None
                        else min(cand_temps))
        times = (np.asarray(cand_times) if cand_times is not None else default_candidate_times(
            cur["time_s"].to_numpy(), fit.t_half_s(t_target)))
        ranked = suggest_jmak_measurement(fit.posterior, times, temperatures_K=cand_temps,
                                          target=args.target, target_temperature_K=t_target,
                                          noise_std=args.noise_std)
        panels.append((fit, ranked))
        ranked = ranked.head(args.top).copy() if args.top is not None else ranked.copy()
        for col, value in reversed(list(key.items())):
            ranked.insert(0, col, value)
        frames.append(ranked)
    out = pd.concat(frames, ignore_index=True)
    figure = None
    if args.plot:
        from matmeta.plots._kinetics import plot_suggestion

        figure = plot_suggestion(panels)
    atomic_write_text(args.out, out.to_csv(index=False))
    if figure is not None:
        from matmeta.plots._common import save_figure

        save_figure(figure, args.plot)
    for (fit, ranked) in panels:
        best = ranked.iloc[0]
        where = f"t = {best['time_s']:.4g} s" + (
            f" at {best['temperature_K']:g} K" if arrhenius else "")
        print(f"matmeta suggest kinetics: {fit.label}: measure next at {where}: sd of "
              f"{best['target_scale']} {best['target_sd_now']:.3g} -> "
              f"{best['target_sd_after']:.3g} ({best['sd_reduction_percent']:.0f}% less)",
              file=sys.stderr)
    print(f"matmeta suggest kinetics: wrote {args.out}"
          + (f", {args.plot}" if args.plot else ""), file=sys.stderr)
    return 0
