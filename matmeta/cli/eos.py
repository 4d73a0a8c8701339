"""``matmeta eos fit``: Birch-Murnaghan equation of state for every E(V) curve of a table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from matmeta.cli.common import add_runtime_options, check_outputs, setup_runtime

FIT_DESCRIPTION = """\
Fit the third-order Birch-Murnaghan equation of state
E(V) = E0 + 9 V0 B0/16 [ (eta^2 - 1)^3 B0' + (eta^2 - 1)^2 (6 - 4 eta^2) ], eta = (V0/V)^(1/3),
to each E(V) curve of CURVES.csv with the batched Levenberg-Marquardt fitter.

Input columns: volume_A3 (A^3 per cell, > 0), energy_eV (eV per cell), optional group columns
(material, structure, formula, family, group, or --group-by). Output per curve: E0_eV, V0_A3,
B0_GPa, B0_prime, each with a *_se standard error, rmse_eV, n_points, converged, and
V0_bracketed (False, with a warning, where V0 lies outside the curve's sampled volumes: an
extrapolation of the law). --json prints the same rows as a JSON list of objects.

Example:
  matmeta eos fit ev.csv --out eos.csv --json"""

GROUP_COLUMNS = ("material", "structure", "formula", "family", "group")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eos", help="equation of state: fit E(V) curves (see `eos fit`)",
                              description="Equations of state.")
    sub = p.add_subparsers(dest="eos_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    f = sub.add_parser("fit", help="fit Birch-Murnaghan to every E(V) curve of a table",
                       description=FIT_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("curves", metavar="CURVES.csv", help="table with volume_A3 and energy_eV")
    f.add_argument("--out", required=True, metavar="EOS.csv",
                   help="where to write one row per curve (written atomically)")
    f.add_argument("--group-by", default=None, metavar="COLS",
                   help="comma-separated columns that identify a curve [default: those of "
                        "material, structure, formula, family, group present]")
    f.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    add_runtime_options(f)
    f.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from matmeta.checkpoint import atomic_write_text, dumps_json
    from matmeta.errors import InputError, where
    from matmeta.fitting import fit_curves
    from matmeta.models.parametric import BirchMurnaghan

    device = setup_runtime(args)
    check_outputs([args.out])
    src = args.curves
    try:
        df = pd.read_csv(src)
    except FileNotFoundError:
        raise InputError(f"{src}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{src}: is a folder; expected a CSV file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{src}: not a readable CSV table ({str(exc).splitlines()[0]})") \
            from None
    for col in ("volume_A3", "energy_eV"):
        if col not in df.columns:
            raise InputError(f"{src}: missing required column {col!r} "
                             f"(columns found: {', '.join(map(str, df.columns))})")
    from matmeta.io._csv import csv_row_numbers

    lines = csv_row_numbers(src, len(df))
    vals = {}
    for col in ("volume_A3", "energy_eV"):
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.argmax(bad))
            raw = df[col].iloc[i]
            got = f"{raw:g}" if isinstance(raw, (int, float, np.floating)) else repr(raw)
            raise InputError(f"{where(src, int(lines[i]), col)}expected a finite number, "
                             f"got {got}")
        vals[col] = v
    if (vals["volume_A3"] <= 0).any():
        i = int(np.argmax(vals["volume_A3"] <= 0))
        raise InputError(f"{where(src, int(lines[i]), 'volume_A3')}volume "
                         f"{vals['volume_A3'][i]:g}; expected > 0 A^3")
    groups = ([c.strip() for c in args.group_by.split(",") if c.strip()] if args.group_by
              else [c for c in GROUP_COLUMNS if c in df.columns])
    for g in groups:
        if g not in df.columns:
            raise InputError(f"{src}: --group-by column {g!r} not in the table")
        # groupby drops NaN keys: a row without its label would vanish from the fit
        na = df[g].isna().to_numpy() | (df[g].astype(str).str.strip() == "").to_numpy()
        if na.any():
            i = int(np.argmax(na))
            raise InputError(f"{where(src, int(lines[i]), g)}missing group label; every row "
                             "needs one (or drop the column from --group-by)")
    df = df.assign(volume_A3=vals["volume_A3"], energy_eV=vals["energy_eV"], row=lines)
    curves = list(df.groupby(groups, sort=True)) if groups else [((), df)]
    model = BirchMurnaghan()
    def label(key: Any) -> str:
        lab = ", ".join(f"{g}={k}" for g, k in zip(groups, key if isinstance(key, tuple)
                                                    else (key,), strict=True))
        return lab or "all rows"

    for key, cur in curves:
        at = f"{src}, curve {label(key)} (rows {cur['row'].min()}-{cur['row'].max()})"
        if len(cur) < model.num_params + 1:
            raise InputError(f"{at}, column 'energy_eV': {len(cur)} points for "
                             f"{model.num_params} parameters; a Birch-Murnaghan fit needs at "
                             f"least {model.num_params + 1}")
        distinct = np.unique(cur["volume_A3"].to_numpy())
        if len(distinct) < model.num_params:
            raise InputError(f"{at}, column 'volume_A3': {len(distinct)} distinct volume"
                             f"{'s' if len(distinct) != 1 else ''} "
                             f"({', '.join(f'{v:g}' for v in distinct[:5])} A^3); a "
                             f"Birch-Murnaghan fit needs at least {model.num_params}")
    res = fit_curves(model, [c["volume_A3"].to_numpy() for _, c in curves],
                     [c["energy_eV"].to_numpy() for _, c in curves], device=device)
    phys = res.physical()
    rows = []
    for i, (key, _) in enumerate(curves):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(groups, (k.item() if hasattr(k, "item") else k for k in key),
                       strict=True))
        for name in ("E0_eV", "V0_A3", "B0_GPa", "B0_prime"):
            row[name], row[f"{name}_se"] = float(phys[name][i]), float(phys[f"{name}_se"][i])
        row["rmse_eV"] = float(res.rmse[i])
        row["n_points"] = int(res.n_points[i])
        row["converged"] = bool(res.converged[i])
        # the equilibrium volume of a fit whose minimum lies outside the sampled volumes is an
        # extrapolation of the law, not a measurement: say so
        vol = curves[i][1]["volume_A3"]
        row["V0_bracketed"] = bool(vol.min() <= row["V0_A3"] <= vol.max())
        if not row["V0_bracketed"]:
            print(f"matmeta eos fit: warning: {src}, curve {label(curves[i][0])}: V0 = "
                  f"{row['V0_A3']:.4g} A^3 lies outside the sampled volumes "
                  f"({vol.min():g}-{vol.max():g} A^3): an extrapolation, not a minimum the "
                  "data bracket; sample volumes on both sides of the minimum", file=sys.stderr)
        rows.append(row)
    atomic_write_text(args.out, pd.DataFrame(rows).to_csv(index=False))
    print(f"matmeta eos fit: {len(rows)} curves ({sum(r['converged'] for r in rows)} converged);"
          f" wrote {args.out}", file=sys.stderr)
    if args.json:
        print(dumps_json(rows))
    return 0
