"""Adapt a meta-learned model to a new family's support set, predict candidates, save the result.

:func:`adapt` reads a meta checkpoint (one meta-learned initialisation, or an ensemble of them),
reads the support table the way the training table was read (the checkpoint's ``data_spec``),
runs the meta-learner's own adaptation (:func:`matmeta.meta.adapt_params`; ``adapt_ensemble``
for every member at once; for the ``bayes_linear`` / ``gp`` algorithms, the closed-form head fit
of :mod:`matmeta.bayes._meta`) and returns an :class:`AdaptedModel`:

- ``predict(candidates)``: predictions in the target's units; for an ensemble, the spread and the
  90% interval (``sqrt(unbiased member variance + calibrated noise^2)``, mapped through the
  target transform); for a Bayesian head, its predictive std; a rank for a goal and the nearest
  training family;
- ``save(folder)``: a result folder published whole (``adapted.pt``, ``support.csv``,
  ``support_fit.csv``, ``baselines.csv``, plots, ``report.md``); :func:`load_adapted` reads it.

How good is the adaptation? With k support rows and nothing else, the honest check is
leave-one-out: re-adapt k times, each time with one row's weight set to zero (the inner loop's
weighted loss then ignores it exactly), and predict that row. The report compares that error to
baselines scored the same way: the meta-learned initialisation without adaptation (zero-shot;
it never saw the support), its per-family offset shrunk toward zero
(``sum(r_others) / (k - 1 + lambda)``), and the mean of the other support rows.

Example:
    >>> adapted = adapt("meta.pt", "lab.csv")
    >>> ranked = adapted.predict("candidates.csv", goal="max")
    >>> adapted.save("adapted/")
    >>> again = load_adapted("adapted/")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from matmeta.errors import CheckpointError, InputError
from matmeta.models._protocol import FunctionalModel, Params, Samples

__all__ = ["AdaptedModel", "adapt", "load_adapted", "Z90", "LOO_MAX_ROWS", "DEFAULT_SHRINKAGE"]

Z90 = 1.6448536269514722  # the standard normal's 95% quantile: a central 90% interval
LOO_MAX_ROWS = 50  # leave-one-out re-adapts once per support row: skipped above this
DEFAULT_SHRINKAGE = 2.0  # offset shrinkage lambda when no evaluation chose one
HEAD_ALGORITHMS = ("bayes_linear", "gp")  # adaptation = a closed-form head fit (matmeta.bayes)
CHECKPOINT = "adapted.pt"


@dataclass
class AdaptedModel:
    """A meta-learned model adapted to one family's support set.

    Example:
        >>> adapted = adapt("meta.pt", "lab.csv")
        >>> adapted.predict(["Al0.3CoCrFeNi", "CoCrFeNiTi0.2"])      # DataFrame, target units

    Attributes:
        model: the functional model.
        params: adapted parameters (every tensor with a leading member axis for an ensemble; for
            a Bayesian linear head, the output layer set to its posterior mean).
        meta_params: the meta-learned meta-parameters (the same layout; with Meta-SGD's rates
            or a head's hyperparameters when the algorithm has them).
        members: 1 for a single model, M for an ensemble.
        settings: the meta-learner's inner-loop settings used to adapt.
        spec: how tables are read for this model (target, composition/process/structure columns).
        target_transform: maps targets to the model's space and back (None: identity).
        noise_std: an ensemble's calibrated extra noise for this support size, in the model's
            space (``extra["noise_std_by_k"]``: the ensemble's calibration by support size).
        support: the support table as read (validated), with an ``id`` column.
        fit: per support row: measured, fitted, leave-one-out and zero-shot predictions.
        baselines: leave-one-out MAE of the adaptation and of the baselines (target units).
        extra: the checkpoint's other records (family index, training families, source).
        evaluation: the table of a ``matmeta evaluate`` CSV the report quotes, or None.
        support_samples: the encoded support set (closed-form heads predict from it).
    """

    model: FunctionalModel
    params: Params
    meta_params: Params
    members: int
    settings: Any
    spec: dict[str, Any]
    target_transform: Any
    noise_std: float
    support: pd.DataFrame
    fit: pd.DataFrame | None = None
    baselines: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    evaluation: pd.DataFrame | None = None
    support_samples: Samples | None = None

    @property
    def target(self) -> str:
        return str(self.spec.get("target") or "target")

    @property
    def is_ensemble(self) -> bool:
        return self.members > 1

    @property
    def is_head(self) -> bool:
        """Adapted by a closed-form Bayesian head (``bayes_linear`` or ``gp``)."""
        return self.settings.algorithm in HEAD_ALGORITHMS

    @property
    def has_uncertainty(self) -> bool:
        """Predictions come with a std (an ensemble, or a Bayesian head)."""
        return self.is_ensemble or self.is_head

    # -------------------------------------------------------------------------- predictions

    def _forward(self, params: Params, inputs: Any) -> Tensor:
        if self.is_ensemble:
            from matmeta.meta._ensemble import predict_members

            return predict_members(self.model, params, inputs)
        return self.model.forward(params, inputs)

    def predict_model_space(self, inputs: Any, initial: bool = False
                            ) -> tuple[Tensor, Tensor | None]:
        """(mean, std) in the model's (transformed) space; std is None for a single model.

        Example:
            >>> mean, std = adapted.predict_model_space(inputs)

        Args:
            inputs: encoded inputs (:func:`matmeta.meta.encode_rows`).
            initial: use the meta-learned initial parameters instead of the adapted ones.
        """
        from matmeta.meta._algorithms import model_params

        if self.is_head and not initial:
            from matmeta.bayes._meta import head_predict

            if self.support_samples is None:
                raise CheckpointError("a closed-form head predicts from its support set; this "
                                      "adapted model holds none")
            return head_predict(self.model, self.meta_params, self.support_samples, inputs,
                                self.settings)
        with torch.no_grad():
            out = self._forward(model_params(self.meta_params) if initial else self.params,
                                inputs)
        if not self.is_ensemble:
            return out.detach(), None
        mean = out.mean(0)
        # unbiased member variance plus calibrated noise, as matmeta.meta._ensemble defines it
        var = out.var(0, correction=1) + float(self.noise_std) ** 2
        return mean.detach(), var.sqrt().detach()

    def to_units(self, y: Tensor) -> np.ndarray:
        """Model-space values -> the target's units (numpy, float64)."""
        y = y.detach().double().cpu()
        if self.target_transform is not None:
            y = self.target_transform.inverse(y)
        return y.numpy()

    def encode(self, df: pd.DataFrame, with_target: bool = False, **graph_options: Any
               ) -> tuple[Any, Tensor | None]:
        """Inputs (and targets in model space) for a table read with :meth:`read`;
        ``graph_options`` (``workers``, ``cache_dir``, ``progress``) go to the graph building
        of graph models."""
        from matmeta.meta._data import encode_rows

        first = next(iter(self.params.values()))
        inputs, y = encode_rows(df, self.spec, self.model, with_target=with_target,
                                dtype=first.dtype, **graph_options)
        if y is not None and self.target_transform is not None:
            y = self.target_transform.forward(y)
        # tables are read on the CPU; the model may live on a GPU
        return inputs.to(first.device), None if y is None else y.to(first)

    def read(self, source: Any, with_target: bool = False, what: str = "candidates"
             ) -> pd.DataFrame:
        """Read a table, a folder of structures or a list of compositions for this model."""
        from matmeta.meta._data import read_rows

        if isinstance(source, (list, tuple)) and all(isinstance(s, str) for s in source) \
                and (self.spec["kind"] == "composition" or self.spec.get("fraction_features")):
            col = self.spec.get("composition_column") or "composition"
            source = pd.DataFrame({col: list(source)})
        df = read_rows(source, self.spec, with_target=with_target, what=what)
        if len(df) == 0:
            raise InputError(f"{what}: no usable rows")
        return df

    def training_elements(self) -> set[str] | None:
        """Graph models: the elements of the meta-training families (from the family index the
        checkpoint carries); None for other models (they warn as they encode) or without an
        index (checkpoints from before it was kept)."""
        index = self.extra.get("family_index")
        if self.spec.get("kind") != "cgcnn" or not index or index.get("kind") != "composition" \
                or not index.get("centroids"):
            return None
        # the index spans the whole table's elements; a meta-training family's centroid is
        # nonzero exactly on the elements its structures hold
        held = (np.asarray(index["centroids"], dtype=float) > 0).any(0)
        return {el for el, h in zip(index["elements"], held, strict=True) if h}

    def warn_unseen_elements(self, df: pd.DataFrame, what: str = "candidates") -> list[str]:
        """Graph models: one warning naming the rows' elements no meta-training family holds
        (see :func:`matmeta.training.warn_unseen_elements`); returns them."""
        known = self.training_elements()
        if known is None or "structure" not in df.columns:
            return []
        from matmeta.training._predictor import warn_unseen_elements
        from matmeta.workflows._screen import row_fractions

        names = df["id"].astype(str).tolist() if "id" in df.columns else None
        return warn_unseen_elements([set(f) for f in row_fractions(df)], sorted(known),
                                    names=names, what=f"rows of {what}",
                                    seen_in="the meta-training families")

    def predict(self, candidates: Any, goal: str | float | None = None,
                what: str = "candidates", *, workers: int = 1,
                cache_dir: str | os.PathLike | None = None,
                progress: bool = False) -> pd.DataFrame:
        """Predict candidates in the target's units, ranked for ``goal``.

        Example:
            >>> adapted.predict("candidates.csv", goal="max").head()
            >>> adapted.predict(["Al0.3CoCrFeNi"], goal=850.0)      # closest to 850 MPa first

        Args:
            candidates: a CSV file (compositions, or a structure column for graph models), a
                folder of CIF/POSCAR files (graph models), a DataFrame, or a list of compositions.
            goal: ``"max"`` (default), ``"min"`` or a target value; candidates are ranked by the
                predicted mean (see :mod:`matmeta.workflows._screen`).
            what: how the candidates are called in messages.
            workers, cache_dir, progress: graph models: processes building the candidates'
                graphs, a graph cache folder and a progress bar (as ``matmeta train``).

        Returns:
            One row per candidate in input order: ``id``; ``row`` (the file line, for alloy
            tables) and the process columns as read; the table's other columns (a CSV file or a
            DataFrame: labels, phases, notes); the prediction (named after the target);
            for an ensemble or a Bayesian head ``<target>_std`` (``<target>_std_log10`` for a
            log target) and a central 90% interval ``<target>_low90`` / ``<target>_high90``;
            the meta-learned initial model's prediction (``<target>_meta_init``); ``rank`` for
            the goal; ``nearest_family`` and ``family_distance`` (see
            :func:`~matmeta.workflows._screen.nearest_family`).

        Raises:
            InputError: no usable rows, compositions that do not parse, missing columns.

        Warns:
            UnknownElementWarning: candidates holding elements the model never saw in training
                (graph models: no meta-training family held them), once, naming the elements.
        """
        from matmeta.workflows._screen import nearest_family, parse_goal, rank_for_goal

        goal = parse_goal(goal)
        df = self.read(candidates, with_target=False, what=what)
        self.warn_unseen_elements(df, what)
        inputs, _ = self.encode(df, workers=workers, cache_dir=cache_dir, progress=progress)
        mean, std = self.predict_model_space(inputs)
        init, _ = self.predict_model_space(inputs, initial=True)
        t = self.target
        out = pd.DataFrame({"id": df["id"].astype(str).to_numpy()})
        # the file line and the process settings tell apart rows of one composition
        if "row" in df.columns:
            out["row"] = df["row"].to_numpy()
        for s in self.spec.get("process") or []:
            out[s["column"]] = df[s["column"]].to_numpy()
        read_cols = list(out.columns)
        out[t] = self.to_units(mean)
        if std is not None:
            std = std.to(mean)
            low, high = self.to_units(mean - Z90 * std), self.to_units(mean + Z90 * std)
            tt = self.target_transform
            if tt is not None and tt.log:
                out[f"{t}_std_log10"] = (std.double().cpu() * tt.std).numpy()
            else:
                scale = 1.0 if tt is None else tt.std
                out[f"{t}_std"] = (std.double().cpu() * scale).numpy()
            out[f"{t}_low90"], out[f"{t}_high90"] = low, high
        out[f"{t}_meta_init"] = self.to_units(init)
        out["rank"] = rank_for_goal(out[t].to_numpy(), goal)
        names, dist = nearest_family(self.extra.get("family_index"), df)
        out["nearest_family"] = names
        out["family_distance"] = dist
        # the table's other columns (labels, phases) follow their rows, after the columns
        # read; one named like a prediction's keeps its values as input:NAME
        own = {(f"input:{c}" if c in out.columns else str(c)): df[c].to_numpy()
               for c in df.attrs.get("table_columns", ()) if c not in read_cols}
        if own:
            out = pd.concat([out[read_cols], pd.DataFrame(own),
                             out.drop(columns=read_cols)], axis=1)
        out.attrs["goal"] = goal
        return out

    # ------------------------------------------------------------------------------ saving

    def state(self) -> dict[str, Any]:
        """The checkpoint payload (tensors and plain data only: loads with weights_only)."""
        return {
            "model_name": self.model.name, "model_config": self.model.config(),
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "meta_params": {k: v.detach().cpu() for k, v in self.meta_params.items()},
            "members": int(self.members), "meta_settings": self.settings.to_dict(),
            "data_spec": self.spec, "noise_std": float(self.noise_std),
            "target_transform": (None if self.target_transform is None
                                 else self.target_transform.to_dict()),
            "extra": self.extra,
            "support_samples": None if self.support_samples is None else {
                "inputs": _inputs_state(self.support_samples.inputs),
                "y": self.support_samples.y.detach().cpu()},
        }

    def save(self, folder: str | os.PathLike, *, evaluation: str | os.PathLike | None = None,
             plots: bool = True, overwrite: bool = True) -> Path:
        """Write the result folder atomically (all of it or nothing).

        Example:
            >>> adapted.save("adapted/")       # adapted.pt, support.csv, report.md, plots

        Args:
            folder: the destination: a new or empty folder, or an earlier matmeta result that
                holds only the files matmeta wrote there (replaced whole, with ``overwrite``).
                A folder holding anything else is refused, never emptied
                (:func:`~matmeta.workflows._report.check_result_folder`).
            evaluation: a CSV from ``matmeta evaluate`` whose table the report quotes.
            plots: draw the parity and meta-initial plots.
            overwrite: replace an earlier matmeta result at ``folder`` (``matmeta adapt`` asks
                for ``--overwrite``).

        Raises:
            InputError: ``folder`` is a file, holds files matmeta did not write, or is an
                earlier result without ``overwrite``.
        """
        from matmeta.checkpoint import save_checkpoint
        from matmeta.workflows._report import result_folder

        eval_table = (_read_evaluation(evaluation) if evaluation is not None
                      else self.evaluation)
        with result_folder(folder, overwrite=overwrite) as tmp:
            save_checkpoint(tmp / CHECKPOINT, self.state(), kind="adapted")
            support = self.support.drop(columns=[c for c in ("fractions", "structure")
                                                 if c in self.support.columns])
            support.to_csv(tmp / "support.csv", index=False)
            if self.fit is not None:
                self.fit.to_csv(tmp / "support_fit.csv", index=False)
            if self.baselines is not None:
                self.baselines.to_csv(tmp / "baselines.csv", index=False)
            figures = []
            if plots and self.fit is not None:
                from matmeta.plots._workflows import plot_adaptation, plot_support_parity

                plot_support_parity(self.fit, self.target, tmp / "support_parity.png")
                plot_adaptation(self.fit, self.target, tmp / "adapted_vs_initial.png")
                figures = [("Measured vs predicted on the support set", "support_parity.png"),
                           ("Adapted vs meta-learned initial prediction", "adapted_vs_initial.png")]
            self._report(eval_table, figures).write(tmp / "report.md")
        return Path(folder)

    def _report(self, eval_table: pd.DataFrame | None, figures: list) -> Any:
        from matmeta.workflows._report import Report

        t = self.target
        k = len(self.support)
        what = (f"an ensemble of {self.members} meta-learned {self.model.name} models"
                if self.is_ensemble else f"a meta-learned {self.model.name} model")
        r = Report(f"Adapted {self.model.name} model for {t}")
        r.text(f"Adapted {what} "
               f"({self.settings.algorithm}, {self.settings.steps_at_eval} inner steps at rate "
               f"{self.settings.inner_lr:g}) to {k} support row(s) from "
               f"{self.extra.get('support_source', 'the support table')}; meta checkpoint "
               f"{self.extra.get('source', '?')}.")
        fams = self.extra.get("families", {}).get("train") or []
        if fams:
            shown = ", ".join(fams[:12]) + (f" and {len(fams) - 12} more" if len(fams) > 12
                                            else "")
            r.text(f"Meta-trained on {len(fams)} families: {shown}.")
        if self.baselines is not None:
            how = ("the head's closed-form posterior without the row (hyperparameters "
                   "held fixed)" if self.is_head else
                   "the adaptation is re-run without the row (its weight set to zero)")
            r.table("Leave-one-out error on the support set", self.baselines,
                    note="Each support row is predicted by a model that never saw it: "
                         f"{how}. The zero-shot initial model never sees the support at "
                         "all. Offset: the initial model plus the other rows' mean residual "
                         "shrunk by k - 1 + lambda. Units: those of the target.")
        fit = self.fit
        if fit is not None and f"{t}_loo_low90" in fit.columns:
            inside = int(((fit[f"{t}_loo_low90"] <= fit[t])
                          & (fit[t] <= fit[f"{t}_loo_high90"])).sum())
            r.text(f"Calibration check: {inside} of {k} support values lie inside the 90% "
                   f"interval predicted without them (leave-one-out); about {0.9 * k:.1f} are "
                   f"expected, and with {k} rows this is a coarse check.")
        if self.baselines is None and k > LOO_MAX_ROWS:
            r.text(f"Leave-one-out was skipped: {k} support rows (more than {LOO_MAX_ROWS}).")
        elif self.baselines is None and k < 2:
            r.text("Leave-one-out needs at least 2 support rows: with one, nothing measures "
                   "the adaptation but new measurements.")
        if eval_table is not None:
            r.table("Held-out families (from `matmeta evaluate`)", eval_table,
                    note="Errors on held-out families, averaged over families, with their "
                         "bootstrap interval: how well each method adapts to a family it never "
                         "saw, at each support size k.")
        if self.fit is not None:
            cols = [c for c in self.fit.columns if c != "weight"]
            r.table("Support rows", self.fit[cols])
        for caption, path in figures:
            r.figure(caption, path)
        return r


# --------------------------------------------------------------------------------- adapt


def _load_source(model: Any, map_location: str | torch.device) -> dict[str, Any]:
    """Whatever the caller passed -> {model, meta_params, settings, members, noise, extra}."""
    from matmeta.meta._algorithms import MetaSettings

    source = None
    if isinstance(model, (str, os.PathLike)):
        from matmeta.checkpoint import load_checkpoint

        source = str(model)
        if Path(model).is_dir():
            raise InputError(f"--model {model}: a folder; expected a meta checkpoint from "
                             "`matmeta meta-train` (an adapted folder is used by `matmeta "
                             "predict`, not adapted again)")
        raw = load_checkpoint(model, kind=("meta", "ensemble"), map_location="cpu")
        if raw["matmeta_kind"] == "ensemble":
            from matmeta.meta._ensemble import load_ensemble

            model = load_ensemble(model, map_location=map_location)
        else:
            from matmeta.meta._train import load_meta

            model = load_meta(model, map_location=map_location)
    members = int(getattr(model, "members", 1) or 1)
    ensemble = hasattr(model, "noise_std") and hasattr(model, "members")
    settings = model.settings
    if not isinstance(settings, MetaSettings):
        raise InputError(f"{type(model).__name__}: expected a meta-learning result, checkpoint "
                         "or ensemble")
    return {"model": model.model, "meta_params": dict(model.meta_params),
            "settings": settings, "members": members if ensemble else 1,
            "ensemble": ensemble, "noise_std": float(getattr(model, "noise_std", 0.0) or 0.0),
            "calibration_k": (int(model.train.k_shot) if ensemble and hasattr(model, "train")
                              else None),
            "noise_by_k": dict(getattr(model, "noise_std_by_k", None) or {}) if ensemble else {},
            "extra": dict(model.extra or {}), "source": source or type(model).__name__}


def adapt(model: Any, support: Any, *, steps: int | None = None,
          spec: dict[str, Any] | None = None, device: str | torch.device = "cpu",
          loo: bool = True, shrinkage: float | None = None,
          evaluation: str | os.PathLike | None = None) -> AdaptedModel:
    """Adapt a meta-learned model (or ensemble) to a support set.

    Example:
        >>> adapted = adapt("meta.pt", "lab.csv")                   # a checkpoint and a CSV
        >>> adapted = adapt(result, support_df, steps=20)            # a MetaResult, a DataFrame
        >>> adapted.baselines                                       # leave-one-out MAE table

    Args:
        model: a meta checkpoint path (kind ``meta`` or ``ensemble``), a
            :class:`~matmeta.meta.MetaResult` / :class:`~matmeta.meta.MetaCheckpoint`, or an
            ensemble (``matmeta.meta._ensemble.Ensemble``).
        support: the support measurements: a CSV file or DataFrame with the columns the model
            was trained with (composition, process columns and target; or structures and target).
        steps: inner steps (default: the checkpoint's evaluation steps).
        spec: how to read tables, for results that do not record it (default: the checkpoint's
            ``data_spec``, written by ``matmeta meta-train``).
        device: where to adapt.
        loo: compute the leave-one-out errors (only when the support has at most
            :data:`LOO_MAX_ROWS` rows).
        shrinkage: lambda of the offset baseline (default: the one ``evaluation`` chose on
            validation families, else :data:`DEFAULT_SHRINKAGE`).
        evaluation: a CSV written by ``matmeta evaluate`` on the same kind of data; the report
            quotes its table.

    Returns:
        An :class:`AdaptedModel`.

    Raises:
        InputError: a support file missing the target or an input column, a composition that
            does not parse, no usable rows, a kinetics model (use ``matmeta jmak fit --prior``),
            an ensemble of closed-form heads.
        CheckpointError: a missing or foreign checkpoint.
    """
    from matmeta.meta._algorithms import adapt_params
    from matmeta.models._transforms import TargetTransform

    eval_raw = _read_evaluation(evaluation, raw=True) if evaluation is not None else None
    src = _load_source(model, device)
    settings = src["settings"]
    head = settings.algorithm in HEAD_ALGORITHMS
    if head and src["ensemble"]:
        raise InputError(f"an ensemble of closed-form {settings.algorithm} heads: not supported; "
                         "a single head already gives a predictive std")
    if steps is not None:
        if int(steps) < 0:
            raise InputError(f"--steps {steps}: expected >= 0")
        settings = dataclasses.replace(settings, eval_inner_steps=int(steps))
    extra = src["extra"]
    spec = spec or extra.get("data_spec")
    if not spec:
        raise CheckpointError(f"{src['source']}: records no data spec (how its training table "
                              "was read); meta-train it with `matmeta meta-train`, or pass spec=")
    if spec["kind"] in ("jmak", "arrhenius_jmak"):
        raise InputError(f"{spec['kind']} models adapt to a few time points with `matmeta jmak "
                         "fit --prior`, not with `matmeta adapt`")
    tt = extra.get("target_transform")
    tt = TargetTransform.from_dict(tt) if tt else None
    meta = {k: v.detach().to(device) for k, v in src["meta_params"].items()}
    from matmeta.meta._algorithms import model_params

    shell = AdaptedModel(src["model"], model_params(meta), meta, src["members"], settings, spec,
                         tt, src["noise_std"], pd.DataFrame(), extra={
                             **{k: v for k, v in extra.items() if k in (
                                 "family_index", "families", "units", "data")},
                             "source": src["source"]})
    df = shell.read(support, with_target=True, what="--support")
    shell.warn_unseen_elements(df, "--support")
    shell.extra["support_source"] = str(df.attrs.get("report", {}).get("source")
                                        or df.attrs.get("source") or "<DataFrame>")
    inputs, y = shell.encode(df, with_target=True)
    samples = Samples(inputs, y, None)
    from matmeta.meta._ensemble import noise_for_k

    noise_by_k = src["noise_by_k"]
    # the ensemble's noise term for this many support rows (calibrated per support size)
    noise = noise_for_k(noise_by_k, len(df), src["noise_std"])
    if src["members"] > 1:
        # the ensemble's noise term is what makes its intervals honest (benchmarks/ensemble.md):
        # say when it is missing or was calibrated for other support sizes
        if not noise_by_k and src["noise_std"] == 0.0:
            warnings.warn(f"{src['source']}: the ensemble's noise term was not calibrated (no "
                          "validation families): its 90% intervals are the members' spread "
                          "only and too narrow", UserWarning, stacklevel=2)
        elif noise_by_k and len(df) < min(noise_by_k):
            warnings.warn(f"{src['source']}: 90% intervals calibrated for {min(noise_by_k)} or "
                          f"more support rows; this support has {len(df)}, and takes the noise "
                          f"term of {min(noise_by_k)} (too narrow)", UserWarning, stacklevel=2)
        elif noise_by_k and len(df) > max(noise_by_k):
            warnings.warn(f"{src['source']}: 90% intervals calibrated for up to "
                          f"{max(noise_by_k)} support rows; this support has {len(df)}, and "
                          f"takes the noise term of {max(noise_by_k)} (wider than needed)",
                          UserWarning, stacklevel=2)
        elif not noise_by_k and src["calibration_k"] is not None \
                and src["calibration_k"] != len(df):
            warnings.warn(f"{src['source']}: 90% intervals calibrated for "
                          f"{src['calibration_k']} support rows; this support has {len(df)}",
                          UserWarning, stacklevel=2)

    def adapt_on(s: Samples) -> Params:
        if head and settings.algorithm == "gp":
            return model_params(meta)  # the GP's mean function is the meta-learned model
        if src["ensemble"]:
            from matmeta.meta._ensemble import adapt_ensemble

            return adapt_ensemble(src["model"], meta, s, settings)
        return adapt_params(src["model"], meta, s, settings)

    adapted = {k: v.detach() for k, v in adapt_on(samples).items()}
    result = dataclasses.replace(shell, params=adapted, support=df.reset_index(drop=True),
                                 support_samples=samples, noise_std=noise)
    if noise_by_k:
        result.extra["noise_std_by_k"] = {int(k): float(v) for k, v in noise_by_k.items()}
    if eval_raw is not None:
        result.evaluation = _read_evaluation(evaluation)
        if shrinkage is None:
            shrinkage = evaluation_shrinkage(eval_raw, len(df))
    _score_support(result, samples, adapt_on, loo, shrinkage)
    return result


def _score_support(res: AdaptedModel, samples: Samples, adapt_on, loo: bool,
                   shrinkage: float | None) -> None:
    """Fill ``res.fit`` and ``res.baselines`` (leave-one-out when cheap)."""
    t = res.target
    y_model = samples.y
    k = int(y_model.shape[0])
    # the values as measured (the support table's column), not a round trip through the model's
    # float32 target transform
    measured = res.support[t].to_numpy(dtype=float)
    fitted, std = res.predict_model_space(samples.inputs)
    init, _ = res.predict_model_space(samples.inputs, initial=True)
    fit = pd.DataFrame({"id": res.support["id"].astype(str).to_numpy()})
    # the file line and the process settings tell apart rows of one composition
    if "row" in res.support.columns:
        fit["row"] = res.support["row"].to_numpy()
    for s in res.spec.get("process") or []:
        fit[s["column"]] = res.support[s["column"]].to_numpy()
    fit[t] = measured
    fit[f"{t}_fitted"] = res.to_units(fitted)
    if std is not None:
        std = std.to(fitted)
        fit[f"{t}_fitted_low90"] = res.to_units(fitted - Z90 * std)
        fit[f"{t}_fitted_high90"] = res.to_units(fitted + Z90 * std)
    fit[f"{t}_meta_init"] = res.to_units(init)
    rows = [("meta-learned initial model, no adaptation (zero-shot)",
             float(np.abs(fit[f"{t}_meta_init"] - measured).mean()))]
    loo_pred = loo_std = None
    if loo and res.is_head and k >= 2:
        from matmeta.bayes._meta import adapt_head

        # the closed-form posterior's exact leave-one-out (hyperparameters held fixed)
        with torch.no_grad():
            loo_pred, loo_std = adapt_head(res.model, res.meta_params, samples,
                                           res.settings).loo()
        loo_pred, loo_std = loo_pred.detach(), loo_std.detach()
    elif loo and 2 <= k <= LOO_MAX_ROWS:
        from matmeta.meta._ensemble import noise_for_k

        # each leave-one-out adaptation has k - 1 rows: the noise term for that many
        noise_loo = noise_for_k(res.extra.get("noise_std_by_k") or {}, k - 1, res.noise_std)
        preds, stds = [], []
        for i in range(k):
            w = torch.ones(k, dtype=y_model.dtype, device=y_model.device)
            w[i] = 0.0
            params = {kk: v.detach() for kk, v in adapt_on(
                Samples(samples.inputs, y_model, w)).items()}
            one = _select(samples.inputs, i)
            with torch.no_grad():
                out = res._forward(params, one)
            preds.append((out.mean(0) if res.is_ensemble else out).reshape(-1)[0])
            if res.is_ensemble:
                stds.append((out.var(0, correction=1) + noise_loo ** 2).sqrt().reshape(-1)[0])
        loo_pred = torch.stack(preds)
        loo_std = torch.stack(stds) if stds else None
    if loo_pred is not None:
        fit[f"{t}_loo"] = res.to_units(loo_pred)
        if loo_std is not None:
            loo_std = loo_std.to(loo_pred)
            fit[f"{t}_loo_low90"] = res.to_units(loo_pred - Z90 * loo_std)
            fit[f"{t}_loo_high90"] = res.to_units(loo_pred + Z90 * loo_std)
        lam = DEFAULT_SHRINKAGE if shrinkage is None else float(shrinkage)
        resid = (y_model - init).double()
        others = (resid.sum() - resid) / (k - 1 + lam)
        offset = res.to_units(init.double() + others)
        mean_others = (measured.sum() - measured) / (k - 1)
        rows = [("adapted (this model)", float(np.abs(fit[f"{t}_loo"] - measured).mean())),
                *rows,
                (f"initial model + shrunk per-family offset (lambda {lam:g})",
                 float(np.abs(offset - measured).mean())),
                ("mean of the other support rows", float(np.abs(mean_others - measured).mean()))]
    res.fit = fit
    res.baselines = pd.DataFrame(rows, columns=["method", f"MAE ({t})"]) if len(rows) > 1 \
        else None


def _select(inputs: Any, i: int) -> Any:
    """Row ``i`` of encoded inputs (a tensor, or one graph of a batch)."""
    if isinstance(inputs, Tensor):
        return inputs[i:i + 1]
    from matmeta.graphs._batch import GraphBatch

    b: GraphBatch = inputs
    atoms = torch.nonzero(b.graph_index == i).flatten()
    first = int(atoms[0])
    keep = torch.isin(b.edge_index[1], atoms)
    return GraphBatch(z=b.z[atoms], edge_index=b.edge_index[:, keep] - first,
                      edge_attr=b.edge_attr[keep], distance=b.distance[keep],
                      graph_index=torch.zeros(len(atoms), dtype=torch.long,
                                              device=b.z.device),
                      num_atoms=b.num_atoms[i:i + 1])


def _read_evaluation(path: str | os.PathLike, raw: bool = False) -> pd.DataFrame:
    """The table of a ``matmeta evaluate`` CSV, the columns a reader needs (all with raw)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--evaluation {p}: no such file")
    try:
        df = pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types on bad files
        raise InputError(f"--evaluation {p}: not a readable CSV ({exc})") from exc
    need = ["k", "method", "error"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"--evaluation {p}: no column(s) {missing}; expected the CSV written "
                         "by `matmeta evaluate`")
    if raw:
        return df
    keep = [c for c in ("k", "method", "error", "ci_low", "ci_high", "n_groups", "metric",
                        "units") if c in df.columns]
    return df[keep]


def evaluation_shrinkage(table: pd.DataFrame | None, k: int) -> float | None:
    """The offset lambda ``matmeta evaluate`` chose on validation families at the k nearest to
    ``k``: the median over folds, ``inf`` meaning no offset (None when the table has no offset
    row)."""
    if table is None or "chosen" not in table.columns:
        return None
    rows = table[table["method"] == "offset"]
    if rows.empty:
        return None
    row = rows.iloc[int(np.argmin(np.abs(rows["k"].to_numpy(dtype=float) - k)))]
    values = []
    for item in str(row["chosen"]).split(";"):
        # evaluate writes each fold's choice as JSON: a number, or "inf" (no offset at all)
        try:
            v = json.loads(item)
            values.append(float(v))
        except (ValueError, TypeError):
            raise InputError(f"--evaluation: cannot read the offset lambda {row['chosen']!r} "
                             "(expected numbers or \"inf\", one per fold, joined by ';')"
                             ) from None
    if not values or any(math.isnan(v) or v < 0 for v in values):
        raise InputError(f"--evaluation: offset lambda {row['chosen']!r}: expected values >= 0")
    # several folds chose their own lambda: the median (inf = no offset counts as the largest)
    return float(np.median(values))


# ---------------------------------------------------------------------------------- load


def load_adapted(folder: str | os.PathLike, map_location: str | torch.device = "cpu"
                 ) -> AdaptedModel:
    """Read a folder written by :meth:`AdaptedModel.save` (or ``matmeta adapt``).

    Example:
        >>> adapted = load_adapted("adapted/")
        >>> adapted.predict("candidates.csv", goal="min")

    Raises:
        CheckpointError: no ``adapted.pt`` in the folder, or a foreign checkpoint.
    """
    from matmeta.checkpoint import load_checkpoint
    from matmeta.meta._algorithms import MetaSettings
    from matmeta.models._registry import build_model
    from matmeta.models._transforms import TargetTransform

    folder = Path(folder)
    path = folder / CHECKPOINT if folder.is_dir() else folder
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CHECKPOINT}; expected a folder written by "
                              "`matmeta adapt`")
    ck = load_checkpoint(path, kind="adapted", map_location=map_location)
    try:
        model = build_model(ck["model_name"], ck["model_config"])
        tt = ck["target_transform"]
        support = folder / "support.csv"
        fit = folder / "support_fit.csv"
        base = folder / "baselines.csv"
        return AdaptedModel(
            model, dict(ck["params"]), dict(ck["meta_params"]), int(ck["members"]),
            MetaSettings.from_dict(ck["meta_settings"]), dict(ck["data_spec"]),
            TargetTransform.from_dict(tt) if tt else None, float(ck["noise_std"]),
            pd.read_csv(support) if support.is_file() else pd.DataFrame(),
            pd.read_csv(fit) if fit.is_file() else None,
            pd.read_csv(base) if base.is_file() else None, dict(ck["extra"]),
            support_samples=_samples_from_state(ck.get("support_samples")))
    except KeyError as exc:
        raise CheckpointError(f"{path}: adapted checkpoint lacks {exc}") from exc


def _inputs_state(inputs: Any) -> Any:
    """Encoded inputs as checkpoint data: a tensor, or a graph batch as a dict of tensors."""
    if isinstance(inputs, Tensor):
        return inputs.detach().cpu()
    return {"graph_batch": {k: v.detach().cpu() for k, v in inputs._asdict().items()}}


def _samples_from_state(state: dict[str, Any] | None) -> Samples | None:
    if not state:
        return None
    inputs = state["inputs"]
    if isinstance(inputs, dict):
        from matmeta.graphs._batch import GraphBatch

        inputs = GraphBatch(**inputs["graph_batch"])
    return Samples(inputs, state["y"], None)
