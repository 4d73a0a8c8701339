"""``matmeta jmak fit``: fit JMAK/Avrami kinetics to every curve of a measurements table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from matmeta.cli.common import add_runtime_options, check_outputs, setup_runtime

FIT_DESCRIPTION = """\
Fit f(t) = f_max * (1 - exp(-(k * max(t - t0, 0))^n)) to each curve of MEASUREMENTS.csv with a
batched multi-start Levenberg-Marquardt fit (k in 1/s, t in s; the (k t)^n convention: convert a
K of f = 1 - exp(-K t^n) with matmeta.models.parametric.K_to_k_per_s).

Input columns: a time column (time_s, time_min, time_h, or time with --time-unit), fraction
(0..1), optional temperature_K, fraction_std (weights 1/std^2) and group columns (dataset_id,
sample, family, material, grade, group, or --group-by). One curve per group and temperature;
with --arrhenius, one fit per group over all its temperatures, ln k(T) = ln k0 - Q/(R T).

Output (one row per curve; per group and temperature with --arrhenius): the group columns,
k_per_s, n, t0_s, f_max, each with a *_se standard error (0 when the parameter is fixed),
t_half_s, t_half_s_se, rmse, n_points, converged, nk_correlation (of ln k and ln n),
poorly_determined; with --arrhenius also temperature_K, ln_k0, ln_k0_se, Q_kJ_per_mol,
Q_kJ_per_mol_se. --json prints the same rows as a JSON list of objects.

With a meta-learned --prior (from `matmeta meta-train ... --prior FILE` or matmeta.learn_prior;
for 'jmak', or 'arrhenius_jmak' with --arrhenius) each fit is the MAP fit under the prior with its
Laplace posterior: 2-3 points per curve give a usable fit, and the band widens where there are no
points. --report DIR adds a folder with the prior, the data, the adapted curve with its band,
k, n, t_half with uncertainties, and the influence of each point.

Bad input (fraction outside [0, 1], NaN, negative time, T <= 0 K, missing column, unknown time
unit, too few points without a prior, all fractions equal, a prior for another model) stops
with a one-line error naming file, row and column, before anything is written.

Example:
  matmeta jmak fit isotherms.csv --time-unit min --out fits.csv --plot fits.png
  matmeta jmak fit tungsten.csv --fraction-tolerance 0.15 --allow-negative-time \\
      --arrhenius --out w.csv --json
  matmeta jmak fit three_points.csv --prior w_prior.json --out fit.csv --report report/"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("jmak", help="JMAK/Avrami kinetics: fit curves (see `jmak fit`)",
                              description="JMAK/Avrami kinetics.")
    sub = p.add_subparsers(dest="jmak_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    f = sub.add_parser("fit", help="fit JMAK to every curve of a measurements table",
                       description=FIT_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("measurements", metavar="MEASUREMENTS.csv", help="the measurements table")
    f.add_argument("--out", required=True, metavar="FITS.csv",
                   help="where to write one row per fitted curve (written atomically)")
    f.add_argument("--group-by", default=None, metavar="COLS",
                   help="comma-separated columns that identify a sample or material "
                        "[default: those of dataset_id, sample, family, material, grade, group "
                        "present]")
    f.add_argument("--time-unit", choices=["s", "min", "h"], default=None,
                   help="unit of a plain 'time' column (a time_s/time_min/time_h column "
                        "names its own)")
    f.add_argument("--arrhenius", action="store_true",
                   help="fit each group's isotherms jointly: ln k(T) = ln k0 - Q/(R T), "
                        "shared n; Q in kJ/mol (any sign)")
    f.add_argument("--fit-t0", action="store_true", help="fit an incubation time t0_s >= 0")
    f.add_argument("--fit-fmax", action="store_true",
                   help="fit a maximum fraction 0 < f_max < 1 (incomplete transformations, "
                        "e.g. bainite)")
    f.add_argument("--prior", metavar="FILE", default=None,
                   help="Gaussian prior over the transformed parameters (JSON; see "
                        "matmeta.models.parametric.Prior): MAP fits from 2-4 points")
    f.add_argument("--noise-std", type=float, default=None,
                   help="std of one fraction measurement for MAP fits without fraction_std "
                        "[default: the prior's, else 0.05]")
    f.add_argument("--plot", metavar="FITS.png", default=None,
                   help="draw the fitted curves with data and 95%% band to this file, the "
                        "Avrami plot to FITS_avrami.png and, with temperatures, the Arrhenius "
                        "plot to FITS_arrhenius.png")
    f.add_argument("--overwrite", action="store_true",
                   help="replace an earlier --report folder (one holding only the files "
                        "matmeta wrote there; a folder holding anything else is never replaced)")
    f.add_argument("--report", metavar="DIR", default=None,
                   help="with --prior: write a report folder (report.md, fit.png with the "
                        "prior's band, the data and the adapted curve with its 95%% band, "
                        "parameters.csv with prior and posterior k, n, t_half and their "
                        "uncertainties, curves.csv, influence.csv: each point's exact "
                        "leave-one-out effect on k, n and t_half); written whole or not at all")
    f.add_argument("--json", action="store_true",
                   help="print the fitted rows as a JSON list of objects on stdout")
    f.add_argument("--fraction-tolerance", type=float, default=0.0, metavar="TOL",
                   help="accept fractions in [-TOL, 1+TOL] as measured (not clipped) "
                        "[default: 0]")
    f.add_argument("--allow-negative-time", action="store_true",
                   help="keep negative times (digitisation noise near t = 0) as measured")
    f.add_argument("--std-floor", type=float, default=0.01,
                   help="raise fraction_std below this to it [default: 0.01]")
    f.add_argument("--unweighted", action="store_true", help="ignore fraction_std")
    f.add_argument("--multistart", choices=["all", "adaptive"], default="all",
                   help="run every start of every curve (all), or extra starts only for "
                        "suspect first fits (adaptive) [default: all]")
    f.add_argument("--max-iter", type=int, default=200,
                   help="Levenberg-Marquardt iteration cap [default: 200]")
    add_runtime_options(f)
    f.set_defaults(func=_fit)


def _rows_jmak(table, curves, res, model) -> list[dict[str, Any]]:
    import numpy as np

    phys, der = res.physical(), res.derived()
    corr = res.nk_correlation.detach().cpu().numpy()
    poor = res.poorly_determined.detach().cpu().numpy()
    rows = []
    for i, (key, _) in enumerate(curves):
        row: dict[str, Any] = dict(key)
        row["k_per_s"], row["k_per_s_se"] = float(phys["k_per_s"][i]), float(phys["k_per_s_se"][i])
        row["n"], row["n_se"] = float(phys["n"][i]), float(phys["n_se"][i])
        row["t0_s"], row["t0_s_se"] = ((float(phys["t0_s"][i]), float(phys["t0_s_se"][i]))
                                       if model.fit_t0 else (0.0, 0.0))
        row["f_max"], row["f_max_se"] = ((float(phys["f_max"][i]), float(phys["f_max_se"][i]))
                                         if model.fit_fmax else (1.0, 0.0))
        row["t_half_s"], row["t_half_s_se"] = (float(der["t_half_s"][i]),
                                               float(der["t_half_s_se"][i]))
        row["rmse"] = float(res.rmse[i])
        row["n_points"] = int(res.n_points[i])
        row["converged"] = bool(res.converged[i])
        row["nk_correlation"] = float(corr[i]) if np.isfinite(corr[i]) else float("nan")
        row["poorly_determined"] = bool(poor[i])
        rows.append(row)
    return rows


def _rows_arrhenius(table, groups, res, model) -> list[dict[str, Any]]:
    import math

    import torch

    def at(temp: float):
        """(ln k, ln n, ln t_half) at ``temp`` as a function of the transformed parameters."""
        def fn(th):
            params, tt = model.unflatten(th), th.new_tensor([temp])
            ln_n = torch.log(model._n(params, tt)).reshape(-1)[0]  # (shared n: 0-d)
            return torch.stack([model.ln_k(params, tt)[0], ln_n,
                                torch.log(model.t_half_s(params, tt))[0]])
        return fn

    rows = []
    for i, (key, cur) in enumerate(groups):
        theta, cov = res.theta[i], res.cov[i]
        params = model.unflatten(theta)
        ln_k0, q = float(params["ln_k0"]), float(params["Q_kJ_per_mol"])
        se = res.stderr[i]
        fmax = float(torch.sigmoid(params["logit_fmax"])) if model.fit_fmax else 1.0
        fmax_se = float(fmax * (1 - fmax) * se[-1]) if model.fit_fmax else 0.0
        i_n = model.flat_names.index("ln_n")
        poor = bool(res.poorly_determined[i]) or bool(se[i_n] > 0.25)
        for temp, iso in cur.groupby("temperature_K", sort=True):
            # the delta method through the model's own ln k(T), n(T) and t_half(T)
            fn = at(float(temp))
            ln_k, ln_n, ln_th = (float(v) for v in fn(theta))
            jac = torch.func.jacrev(fn)(theta)
            var = jac @ cov @ jac.T  # of (ln k, ln n, ln t_half)
            var_lnk, var_lnn = float(var[0, 0]), float(var[1, 1])
            x = torch.stack([torch.tensor(iso["time_s"].to_numpy(), dtype=torch.float64),
                             torch.full((len(iso),), float(temp), dtype=torch.float64)], -1)
            f = model.forward(params, x).detach().numpy()
            w_rmse = float(((f - iso["fraction"].to_numpy()) ** 2).mean() ** 0.5)
            row: dict[str, Any] = dict(key)
            row["temperature_K"] = float(temp)
            row["k_per_s"] = math.exp(ln_k)
            row["k_per_s_se"] = math.exp(ln_k) * math.sqrt(max(var_lnk, 0.0))
            row["n"] = math.exp(ln_n)
            row["n_se"] = math.exp(ln_n) * math.sqrt(max(var_lnn, 0.0))
            row["t0_s"], row["t0_s_se"] = 0.0, 0.0
            row["f_max"], row["f_max_se"] = fmax, fmax_se
            row["t_half_s"] = math.exp(ln_th)
            row["t_half_s_se"] = math.exp(ln_th) * math.sqrt(max(float(var[2, 2]), 0.0))
            row["rmse"] = w_rmse
            row["n_points"] = len(iso)
            row["converged"] = bool(res.converged[i])
            den = math.sqrt(max(var_lnk, 0.0) * max(var_lnn, 0.0))
            row["nk_correlation"] = float(var[0, 1]) / den if den > 0 else float("nan")
            row["poorly_determined"] = poor
            row["ln_k0"], row["ln_k0_se"] = ln_k0, float(se[0])
            row["Q_kJ_per_mol"], row["Q_kJ_per_mol_se"] = q, float(se[1])
            rows.append(row)
    return rows


def _label(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items()) or "all rows"


def _fit(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from matmeta.checkpoint import atomic_write_text, dumps_json
    from matmeta.errors import InputError
    from matmeta.fitting import fit_curves
    from matmeta.io.kinetics import read_kinetics_table
    from matmeta.models.parametric import JMAK, ArrheniusJMAK, Prior
    from matmeta.plots._common import save_figure
    from matmeta.plots._kinetics import (
        KineticsCurve,
        plot_arrhenius,
        plot_avrami,
        plot_jmak_fits,
    )

    device = setup_runtime(args)
    if args.max_iter < 1:
        raise InputError(f"--max-iter {args.max_iter}: expected a positive integer")
    check_outputs([args.out], [args.plot])
    if args.report:
        from matmeta.workflows._report import check_result_folder

        check_result_folder(args.report, args.overwrite, flag="--report")
    if args.arrhenius and args.fit_t0:
        raise InputError("--arrhenius with --fit-t0 is not supported: an incubation time "
                         "differs between isotherms; fit them separately with --fit-t0")
    group_by = None if args.group_by is None else [c.strip() for c in args.group_by.split(",")
                                                   if c.strip()]
    table = read_kinetics_table(
        args.measurements, time_unit=args.time_unit, group_by=group_by,
        fraction_tolerance=args.fraction_tolerance, allow_negative_time=args.allow_negative_time,
        std_floor=args.std_floor, require_temperature=args.arrhenius)
    use_std = table.has_std and not args.unweighted
    for note in table.notes:
        print(f"matmeta jmak fit: note: {note}", file=sys.stderr)

    if args.arrhenius:
        groups = table.curves(by_temperature=False)
        # (under a prior one isotherm will do: Q comes from the prior, k(T) from the points)
        single = [(key, cur) for key, cur in groups if cur["temperature_K"].nunique() < 2]
        if single and not args.prior:
            key, cur = single[0]
            lines = cur["row"].to_numpy()
            more = (f" ({len(single) - 1} more group{'s' if len(single) > 2 else ''} with one "
                    "temperature)" if len(single) > 1 else "")
            raise InputError(
                f"{table.describe_curve(key)} (rows {lines.min()}-{lines.max()}), column "
                f"'temperature_K': an Arrhenius fit needs two or more temperatures, got "
                f"{cur['temperature_K'].unique().tolist()} K{more}; fit such groups without "
                "--arrhenius (leave them out of this table), or give an Arrhenius --prior")
        model = ArrheniusJMAK(fit_fmax=args.fit_fmax)
    else:
        groups = table.curves(by_temperature=True)
        model = JMAK(fit_t0=args.fit_t0, fit_fmax=args.fit_fmax)
    if args.report and not args.prior:
        raise InputError("--report needs --prior: the report shows the meta-learned prior next "
                         "to the adapted fit")
    if args.prior:
        from matmeta.workflows._kinetics import kinetics_model_for

        prior = Prior.load(args.prior)
        kinetics_model_for(prior, source=args.prior)  # another law's prior: a one-line error
        prior.check(model, source=args.prior)
    else:
        prior = None
    table.check_curves(model.num_params, prior is not None, by_temperature=not args.arrhenius)

    if args.arrhenius:
        inputs = [np.stack([cur["time_s"].to_numpy(), cur["temperature_K"].to_numpy()], -1)
                  for _, cur in groups]
    else:
        inputs = [cur["time_s"].to_numpy() for _, cur in groups]
    ys = [cur["fraction"].to_numpy() for _, cur in groups]
    sig = [cur["fraction_std"].to_numpy() for _, cur in groups] if use_std else None
    labels = [table.describe_curve(k) for k, _ in groups]
    res = fit_curves(model, inputs, ys, sigma=sig, prior=prior, noise_std=args.noise_std,
                     max_iter=args.max_iter, device=device, labels=labels,
                     multistart=args.multistart)
    res = _to_cpu(res)
    rows = (_rows_arrhenius(table, groups, res, model) if args.arrhenius
            else _rows_jmak(table, groups, res, model))
    frame = pd.DataFrame(rows)

    figures = []
    if args.plot:
        curves = []
        for i, (key, cur) in enumerate(groups):
            isos = cur.groupby("temperature_K", sort=True) if args.arrhenius else [(None, cur)]
            for temp, iso in isos:
                lab = _label(key) + (f", {temp:g} K" if temp is not None else "")
                std = iso["fraction_std"].to_numpy() if table.has_std else None
                curves.append(KineticsCurve(lab, iso["time_s"].to_numpy(),
                                            iso["fraction"].to_numpy(), std, i,
                                            None if temp is None else float(temp)))
        plot_path = Path(args.plot)
        figures.append((plot_jmak_fits(curves, res), plot_path))
        figures.append((plot_avrami(curves, res),
                        plot_path.with_name(f"{plot_path.stem}_avrami{plot_path.suffix}")))
        if "temperature_K" in frame.columns and frame["temperature_K"].nunique() >= 2:
            gcols = table.group_columns
            gl = [", ".join(str(r[c]) for c in gcols) or "all" for r in rows]
            lines = None
            if args.arrhenius:
                lines = {g: (r["ln_k0"], r["Q_kJ_per_mol"]) for g, r in zip(gl, rows, strict=False)}
            ln_k = np.log(frame["k_per_s"].to_numpy())
            ln_k_se = frame["k_per_s_se"].to_numpy() / frame["k_per_s"].to_numpy()
            figures.append((plot_arrhenius(frame["temperature_K"].to_numpy(), ln_k, ln_k_se,
                                           gl, lines),
                            plot_path.with_name(f"{plot_path.stem}_arrhenius{plot_path.suffix}")))

    report_fits = _prior_fits(args, table, groups, prior, use_std) if args.report else []
    atomic_write_text(args.out, frame.to_csv(index=False))
    for fig, path in figures:
        save_figure(fig, path)
    if report_fits:
        from matmeta.workflows._kinetics import summary_line, write_jmak_report

        write_jmak_report(report_fits, args.report, prior_source=args.prior,
                          overwrite=args.overwrite)
        for fit in report_fits[:10]:
            print(f"matmeta jmak fit: {summary_line(fit)}", file=sys.stderr)
        figures.append((None, Path(args.report)))
    n_conv = int(frame["converged"].sum())
    print(f"matmeta jmak fit: {len(res)} fits, {len(frame)} rows ({n_conv} converged, "
          f"{int(frame['poorly_determined'].sum())} poorly determined); wrote {args.out}"
          + "".join(f", {p}" for _, p in figures), file=sys.stderr)
    if args.json:
        print(dumps_json(rows))
    return 0


def _prior_fits(args, table, groups, prior, use_std) -> list:
    """The report's MAP + Laplace fits, one per curve (per group with --arrhenius)."""
    from matmeta.workflows._kinetics import fit_jmak_with_prior

    fits = []
    for key, cur in groups:
        fits.append(fit_jmak_with_prior(
            cur["time_s"].to_numpy(), cur["fraction"].to_numpy(), prior,
            temperature_K=cur["temperature_K"].to_numpy() if args.arrhenius else None,
            fraction_std=cur["fraction_std"].to_numpy() if use_std else None,
            noise_std=args.noise_std, label=table.describe_curve(key),
            seed=getattr(args, "seed", 0), allow_negative_time=True,
            fraction_tolerance=max(args.fraction_tolerance, 0.0)))
    return fits


def _to_cpu(res):
    import dataclasses

    return dataclasses.replace(
        res, theta=res.theta.cpu(), cov=res.cov.cpu(), rmse=res.rmse.cpu(), cost=res.cost.cpu(),
        converged=res.converged.cpu(), n_points=res.n_points.cpu(),
        start_index=res.start_index.cpu(),
        n_determining=None if res.n_determining is None else res.n_determining.cpu())
