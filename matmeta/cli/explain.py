"""``matmeta explain``: which support samples drove an adaptation, checked against LOO."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from matmeta.cli.common import add_runtime_options, setup_runtime

HELP = """\
Adapt a meta-learned model to a support set with its inner loop (the steps and learning rate
stored in the meta checkpoint) and score every support sample's influence on the query loss
(query labels known), on the query predictions, on the adapted parameters, or on physical
quantities of a parametric model (n, k [1/s], t_half [s]).

Sign convention, every column: score = value adapted WITHOUT the sample - value adapted with
all samples. For query_loss: positive = the sample helped, negative = it hurt (column effect;
harm_rank 1 = most harmful).

Estimators: unrolled (derivative through the inner loop as run; default), implicit (inverse
Hessian at the adapted optimum; needs a converged inner loop), tracin (gradient products along
the inner-loop trajectory), loo (exact leave-one-out re-adaptation), exact_closed_form (a
bayes_linear or gp head's refit-free leave-one-out; the default for such checkpoints). An
ensemble checkpoint: explain one member's adaptation with --member K.

Checks: a warning when the adapted model does not fit its own support (support RMSE against
the spread of the support targets); scores within 1e-6 of a target's scale are noise, and no
sample is then named most harmful or helpful; the leave-one-out correlation is reported as
undefined (with the reason) when estimates or leave-one-out values have fewer than 3 distinct
values or are all noise.

Tables: kinetics models read a time column (time_s, time_min or time_h; converted to seconds)
and fraction (temperature_K > 0 for Arrhenius models), with the checks of matmeta jmak fit;
composition and MLP models read the columns they were meta-trained with, as matmeta adapt
reads them (composition column, process columns, target; or the feature columns); graph
models a structure column and the target. A query without the target column has unknown
labels (use --target prediction). A sample identifier comes from a column id, sample, mp_id,
material_id or name, else the row number (with the composition, for composition tables). Row
numbers in messages and ids are line numbers in a CSV file (header = line 1), record numbers in
JSON.

Example:
  matmeta explain --model meta.pt --support support.csv --query query.csv --check-loo \\
      --out influence.csv --plot influence.png
"""

ID_COLUMNS = ("id", "sample", "mp_id", "material_id", "name")
HEAD_ALGORITHMS = ("bayes_linear", "gp")  # adapted by a closed-form head fit


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain", help="influence of each support sample on an adaptation",
        description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="meta checkpoint (matmeta meta-train) or a model checkpoint "
                        "(then give --inner-steps and --inner-lr)")
    p.add_argument("--support", required=True, help="support table (.csv/.json, .gz allowed)")
    p.add_argument("--query", default=None, help="query table (needed for query_loss and "
                                                 "prediction targets)")
    p.add_argument("--estimator", default=None,
                   choices=("unrolled", "implicit", "tracin", "loo", "exact_closed_form"),
                   help="how influence is estimated [default: unrolled; exact_closed_form for "
                        "a bayes_linear or gp head]")
    p.add_argument("--member", type=int, default=None, metavar="K",
                   help="ensemble checkpoints: explain member K's adaptation (0 = the first)")
    p.add_argument("--target", action="append", default=None,
                   help="query_loss, prediction, params, param:NAME or a physical quantity "
                        "(n, k, t_half); repeat or comma-separate for several [default: "
                        "query_loss when the query has labels, else prediction]")
    p.add_argument("--check-loo", action="store_true",
                   help="also run exact leave-one-out and report Spearman/Pearson agreement")
    p.add_argument("--out", required=True, help="CSV of scores to write (one row per sample)")
    p.add_argument("--plot", default=None, help="ranked bar chart of influence (.png/.pdf)")
    p.add_argument("--curve-plot", default=None,
                   help="kinetics models: adapted curve with each point marked by influence")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list, one object per support sample (and agreement)")
    g = p.add_argument_group("inner loop (override the checkpoint's settings)")
    g.add_argument("--inner-steps", type=int, default=None, help="gradient steps")
    g.add_argument("--inner-lr", type=float, default=None, help="inner learning rate")
    g.add_argument("--damping", type=float, default=None,
                   help="implicit: added to the Hessian diagonal [default: automatic]")
    g.add_argument("--time-column", default=None,
                   help="kinetics time column; its unit from the name (time_s, time_min, "
                        "time_h), else --time-unit [default: the one time_* column]")
    g.add_argument("--time-unit", default=None, choices=("s", "min", "h"),
                   help="unit of a time column whose name does not say (e.g. time)")
    g.add_argument("--fraction-column", default="fraction", help="kinetics target column")
    g.add_argument("--allow-negative-time", action="store_true",
                   help="kinetics: keep negative times (digitisation noise near t = 0)")
    g.add_argument("--fraction-tolerance", type=float, default=0.0,
                   help="kinetics: accept fractions in [-TOL, 1 + TOL], kept as measured [0]")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _ids(df: Any) -> list[str]:
    for col in ID_COLUMNS:
        if col in df.columns:
            return [str(v) for v in df[col]]
    return [f"row {n}" for n in _lines(df)]


def _lines(df: Any):
    """Row number of each row in its file (CSV: as a spreadsheet shows it, header = row 1,
    blank rows counted); record number in JSON."""
    import numpy as np

    return np.asarray(df.index)  # set by _read_table


def _show(value: Any) -> str:
    """A cell for a message: numbers with :g, text quoted."""
    if isinstance(value, str):
        return repr(value)
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _read_table(path: str) -> Any:
    import pandas as pd

    from matmeta.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    name = p.name.lower().removesuffix(".gz")
    try:
        df = pd.read_json(p) if name.endswith(".json") else pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types
        raise InputError(f"{path}: cannot read the table ({exc})") from exc
    if len(df) == 0:
        raise InputError(f"{path}: the table has no rows (influence needs at least one sample)")
    df.attrs["source"] = str(path)
    # the index holds each row's number for messages (not attrs: pandas copies attrs on every
    # column access): CSV rows as a spreadsheet numbers them, JSON records from 1
    if name.endswith(".json"):
        df.index = pd.RangeIndex(1, len(df) + 1)
    else:
        from matmeta.io._csv import csv_row_numbers

        df.index = pd.Index(csv_row_numbers(p, len(df)))
    return df


def _need(df: Any, cols: list[str], path: str, what: str) -> None:
    from matmeta.errors import InputError

    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column {missing[0]!r}, which the {what} model needs "
                         f"(have {', '.join(map(str, df.columns))})")


def _data_spec(ckpt: dict, kind: str) -> dict[str, Any]:
    """How the checkpoint's training table was read (``extra["data_spec"]``, written by
    ``matmeta meta-train``); older checkpoints: rebuilt from their recorded options."""
    from matmeta.errors import CheckpointError

    extra = ckpt.get("extra") or {}
    if extra.get("data_spec"):
        return dict(extra["data_spec"])
    if kind == "composition":  # its process encoding lives only in the data spec
        raise CheckpointError("the composition checkpoint records no data spec (how its table "
                              "was read); meta-train it again with `matmeta meta-train`")
    opts = (extra.get("data") or {}).get("options", {}) or {}
    feats = opts.get("features")
    if isinstance(feats, str):
        feats = [f for f in feats.split(",") if f]
    return {"kind": kind, "target": opts.get("target"), "features": feats,
            "structure_column": opts.get("structure_column"),
            "featurizer": extra.get("featurizer")}


def _samples(df: Any, path: str, kind: str, ckpt: dict, args: argparse.Namespace,
             labelled: bool, model: Any = None, what: str = "--support"):
    """Table -> Samples in the model's input and target space; y NaN where labels are absent.

    Composition and MLP tables are read as ``matmeta adapt`` reads them (the checkpoint's data
    spec, :func:`matmeta.meta._data.read_rows` and ``encode_rows``); one sample per row of
    ``df`` (the same file, read plainly for row numbers and identifiers)."""
    import torch

    from matmeta.errors import InputError
    from matmeta.models import Samples

    if kind in ("jmak", "arrhenius_jmak"):
        inputs, y = _kinetics(df, path, kind, args, labelled)
        return Samples(inputs, y)
    spec = _data_spec(ckpt, kind)
    tcol = spec.get("target")
    if spec.get("kind") == "composition" or kind == "mlp":
        from matmeta.meta._data import encode_rows, read_rows

        if kind == "mlp" and not spec.get("features"):
            raise InputError(f"{args.model}: the checkpoint does not record the MLP's feature "
                             "columns (meta-train it again with this version)")
        table = read_rows(path, spec, with_target=labelled, what=what)
        if len(table) != len(df):  # the readers keep every row or refuse the table
            raise InputError(f"{path}: read {len(table)} of {len(df)} rows")
        inputs, y = encode_rows(table, spec, model, with_target=labelled,
                                dtype=torch.float64)
    else:
        from matmeta.graphs import FeaturizerSettings, collate, structure_to_graph
        from matmeta.io._tables import read_structure_table

        scol = spec.get("structure_column") or "structure"
        if scol not in df.columns:
            scol = next((c for c in ("structure", "cif", "atoms") if c in df.columns), scol)
        _need(df, [scol], path, kind)
        feat = FeaturizerSettings.from_dict(spec.get("featurizer")
                                            or ckpt.get("extra", {}).get("featurizer") or {})
        # (indexed by row number by _read_table: its messages name the file's rows)
        table = read_structure_table(df, structure_column=scol)
        graphs = [structure_to_graph(s, settings=feat) for s in table["structure"]]
        inputs = collate(graphs, feat, dtype=torch.float64)
        y = None
        if labelled and tcol is not None and tcol in df.columns:
            y = torch.as_tensor(pd_numeric(df, tcol, path), dtype=torch.float64)
        elif labelled:
            raise InputError(f"{path}: missing target column {tcol!r} (the support set needs "
                             "labels)")
    if y is not None:
        tt = ckpt.get("extra", {}).get("target_transform")
        if tt:
            from matmeta.models._transforms import TargetTransform

            y = TargetTransform.from_dict(tt).forward(y).double()
    else:
        y = torch.full((len(df),), float("nan"), dtype=torch.float64)
    return Samples(inputs, y)


def _target_column(ckpt: dict, kind: str, args: argparse.Namespace) -> str | None:
    if kind in ("jmak", "arrhenius_jmak"):
        return args.fraction_column
    return _data_spec(ckpt, kind).get("target")


def _sample_ids(df: Any, ckpt: dict, kind: str) -> list[str]:
    """Sample names: an id column of the file, else the row number with the composition."""
    ids = _ids(df)
    if kind in ("jmak", "arrhenius_jmak"):
        return ids
    col = _data_spec(ckpt, kind).get("composition_column") or "composition"
    if any(c in df.columns for c in ID_COLUMNS) or col not in df.columns:
        return ids
    return [f"{i} ({str(c).strip()})" for i, c in zip(ids, df[col], strict=True)]


def _kinetics(df: Any, path: str, kind: str, args: argparse.Namespace, labelled: bool):
    """Kinetics inputs (time_s, or [time_s, temperature_K]) and fractions through the checks of
    :func:`matmeta.io.kinetics.read_kinetics_table`: time units, fraction range, t >= 0, T > 0."""
    import pandas as pd
    import torch

    from matmeta.errors import InputError
    from matmeta.io.kinetics import _time_column, read_kinetics_table

    tcol, _ = _time_column([str(c) for c in df.columns], args.time_unit, path, args.time_column)
    sub = pd.DataFrame({tcol: df[tcol].to_numpy()})
    fcol = args.fraction_column
    has_y = labelled and fcol in df.columns
    if labelled and not has_y:
        raise InputError(f"{path}: missing target column {fcol!r} (the support set needs labels)")
    # unlabelled queries: a placeholder passes the fraction checks; y is NaN below
    sub["fraction"] = df[fcol].to_numpy() if has_y else 0.0
    if kind == "arrhenius_jmak":
        _need(df, ["temperature_K"], path, kind)
        sub["temperature_K"] = df["temperature_K"].to_numpy()
    try:
        data = read_kinetics_table(
            sub, time_unit=args.time_unit, time_column=tcol, group_by=[],
            fraction_tolerance=args.fraction_tolerance,
            allow_negative_time=args.allow_negative_time,
            require_temperature=kind == "arrhenius_jmak", source=path, rows=_lines(df)).data
    except InputError as exc:
        if fcol == "fraction":
            raise
        # the reader knows the column as 'fraction': name it as the user's table does
        raise InputError(str(exc).replace("column 'fraction'", f"column {fcol!r}")) from None
    t = torch.tensor(data["time_s"].to_numpy(), dtype=torch.float64)
    inputs = t if kind == "jmak" else torch.stack(
        [t, torch.tensor(data["temperature_K"].to_numpy(), dtype=torch.float64)], 1)
    y = (torch.tensor(data["fraction"].to_numpy(), dtype=torch.float64) if has_y
         else torch.full((len(df),), float("nan"), dtype=torch.float64))
    return inputs, y


def pd_numeric(df: Any, col: str, path: str):
    import numpy as np
    import pandas as pd

    from matmeta.errors import InputError, where

    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float).copy()
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where(path, int(_lines(df)[i]), col)}{_show(df[col].iloc[i])}: "
                         "expected a finite number")
    return values


def load_adaptation(path: str, args: argparse.Namespace):
    """Model, initial params, inner settings and the raw checkpoint from a meta/model file (or
    one member of an ensemble checkpoint, ``--member``)."""
    from matmeta.checkpoint import load_checkpoint
    from matmeta.errors import CheckpointError, InputError
    from matmeta.models._registry import build_model

    member = getattr(args, "member", None)
    ckpt = load_checkpoint(path, kind=("meta", "model", "ensemble"))
    try:
        model = build_model(ckpt["model_name"], ckpt["model_config"])
        params = dict(ckpt["params"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: checkpoint lacks {exc}") from exc
    if ckpt["matmeta_kind"] == "ensemble":
        params, rec = _ensemble_member(path, ckpt, model, member)
    elif member is not None:
        raise InputError(f"--member {member}: {path} is a single {ckpt['matmeta_kind']} "
                         "checkpoint, not an ensemble; leave --member out")
    else:
        rec = dict(ckpt.get("inner") or {})
    if ckpt["matmeta_kind"] in ("meta", "ensemble"):
        inner = {k: rec.get(k) for k in ("steps", "lr", "per_param_lr", "trainable", "proximal",
                                         "algorithm", "kernel")
                 if rec.get(k) is not None}
        if inner.get("algorithm") in HEAD_ALGORITHMS:
            # a closed-form head is fitted from the meta-parameters, its hyperparameters included
            params = dict(ckpt.get("meta_params") or params)
            if ckpt["matmeta_kind"] == "ensemble":
                raise InputError(f"{path}: an ensemble of closed-form {inner['algorithm']} heads "
                                 "is not supported (as in matmeta adapt)")
        else:
            inner.pop("algorithm", None)
            inner.pop("kernel", None)
    else:
        inner = {}
        if args.inner_steps is None or args.inner_lr is None:
            raise InputError(f"{path}: a model checkpoint records no inner loop; give "
                             "--inner-steps and --inner-lr (or use a meta checkpoint)")
    if args.inner_steps is not None:
        inner["steps"] = args.inner_steps
    if args.inner_lr is not None:
        inner["lr"] = args.inner_lr
    kind = (ckpt.get("extra", {}).get("data") or {}).get("model_kind") or model.name
    return model, params, inner, ckpt, kind


def _ensemble_member(path: str, ckpt: dict, model: Any, member: int | None):
    """Member ``member``'s initial parameters and inner-loop record, as ``matmeta adapt``
    adapts each member (the ensemble's settings, the member's own Meta-SGD rates)."""
    from matmeta.errors import CheckpointError, InputError
    from matmeta.meta._algorithms import MetaSettings, model_params
    from matmeta.meta._train import inner_record

    try:
        stacked = dict(ckpt["meta_params"])
        settings = MetaSettings.from_dict(ckpt["meta_settings"]).resolve(model)
    except KeyError as exc:
        raise CheckpointError(f"{path}: ensemble checkpoint lacks {exc}") from exc
    size = int(next(iter(stacked.values())).shape[0])
    if member is None:
        raise InputError(f"{path}: an ensemble of {size} meta-learned models; influence explains "
                         f"one adaptation: pick a member with --member K (0 to {size - 1})")
    if not 0 <= member < size:
        raise InputError(f"--member {member}: {path} has members 0 to {size - 1}")
    meta = {k: v[member] for k, v in stacked.items()}
    return model_params(meta), inner_record(settings, meta)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from matmeta.checkpoint import atomic_write_text, dumps_json
    from matmeta.errors import InputError
    from matmeta.influence import explain

    device = setup_runtime(args)
    model, params, inner, ckpt, kind = load_adaptation(args.model, args)
    sup_df = _read_table(args.support)
    support = _samples(sup_df, args.support, kind, ckpt, args, labelled=True, model=model,
                       what="--support")
    query, query_ids, labelled_query = None, None, False
    if args.query:
        q_df = _read_table(args.query)
        tcol = _target_column(ckpt, kind, args)
        labelled_query = tcol is not None and tcol in q_df.columns
        query = _samples(q_df, args.query, kind, ckpt, args, labelled=labelled_query,
                         model=model, what="--query")
        query_ids = _sample_ids(q_df, ckpt, kind)
    targets = [t.strip() for item in (args.target or []) for t in item.split(",") if t.strip()]
    if not targets:
        if query is None:
            raise InputError("no --query given: name a target that needs none (--target params "
                             "or a physical quantity such as n)")
        targets = ["query_loss"] if labelled_query else ["prediction"]
    estimator = args.estimator or ("exact_closed_form" if inner.get("algorithm")
                                   in HEAD_ALGORITHMS else "unrolled")
    options: dict[str, Any] = {}
    if estimator == "implicit" and args.damping is not None:
        options["damping"] = args.damping
    df = explain(model, params, support, query, inner=inner, targets=targets,
                 estimator=estimator, check_loo=args.check_loo,
                 ids=_sample_ids(sup_df, ckpt, kind),
                 query_ids=query_ids, device=device,
                 progress=False if args.no_progress else None, **options)
    if estimator == "exact_closed_form" and args.check_loo:
        print("matmeta explain: note: exact_closed_form leaves each row out with the head's "
              "hyperparameters (noise, kernel) as fitted on all rows; --check-loo refits them "
              "without the row, so the two can differ where a row moves the hyperparameters",
              file=sys.stderr)
    import io

    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(args.out, buf.getvalue())
    if args.plot:
        from matmeta.plots._influence import plot_influence_bars

        plot_influence_bars(df, path=args.plot)
    if args.curve_plot:
        if kind != "jmak":
            raise InputError("--curve-plot is for kinetics (jmak) models")
        from matmeta.meta._inner import inner_loop
        from matmeta.plots._influence import plot_influence_curve

        p64 = {k: v.double() for k, v in params.items()}
        inner64 = dict(inner)
        adapted = inner_loop(model, p64, support, **inner64)
        t = support.inputs.numpy()
        pos = t[t > 0]
        lo = pos.min() / 3 if pos.size else 1.0
        hi = t.max() * 3 if t.max() > 0 else 10.0
        grid = torch.logspace(np.log10(lo), np.log10(hi), 200, dtype=torch.float64)
        curve = model.forward(adapted, grid).detach().numpy()
        qt = query.inputs.numpy() if query is not None else None
        qy = query.y.numpy() if query is not None and labelled_query else None
        plot_influence_curve(df, t, support.y.numpy(), grid.numpy(), curve,
                             query_time_s=qt, query_fraction=qy, path=args.curve_plot)
    if args.json:
        # a list, one object per sample; the agreement figures (one per target, shared by
        # all samples; NaN -> null with the reason in agreement_note) ride along in every
        # object so the output stays a plain list
        rows = df.to_dict(orient="records")
        for row in rows:
            row["estimator"] = df.attrs["estimator"]
            for target, figs in df.attrs["agreement"].items():
                row[f"spearman:{target}"] = figs["spearman"]
                row[f"pearson:{target}"] = figs["pearson"]
                row[f"agreement_note:{target}"] = figs.get("reason")
        print(dumps_json(rows))
    else:
        print(df.attrs["summary"])
        print(f"wrote {args.out}" + (f", {args.plot}" if args.plot else "")
              + (f", {args.curve_plot}" if args.curve_plot else ""), file=sys.stderr)
    return 0
