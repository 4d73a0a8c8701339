"""Model registry and model checkpoints.

A model is rebuilt from its registry name and its constructor arguments (``model.config()``),
so a checkpoint round-trips without the caller remembering settings. Checkpoints hold only
tensors and plain data and load with ``weights_only=True``.

Example:
    >>> save_model("model.pt", model, params, extra={"target_transform": tt.to_dict()})
    >>> model, params, extra = load_model("model.pt")
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch

from matmeta.checkpoint import load_checkpoint, save_checkpoint
from matmeta.errors import CheckpointError, InputError
from matmeta.models._protocol import FunctionalModel, Params

__all__ = ["MODEL_CLASSES", "build_model", "save_model", "load_model", "model_names"]

# registry name -> "module:Class"; imported on first use so unused models cost nothing.
MODEL_CLASSES: dict[str, str] = {
    "cgcnn": "matmeta.models._gnn:CGCNN",
    "mlp": "matmeta.models._mlp:MLP",
    "composition": "matmeta.models._composition:CompositionModel",
    "jmak": "matmeta.models.parametric._jmak:JMAK",
    "arrhenius_jmak": "matmeta.models.parametric._jmak:ArrheniusJMAK",
    "arrhenius": "matmeta.models.parametric._arrhenius:Arrhenius",
    "birch_murnaghan": "matmeta.models.parametric._eos:BirchMurnaghan",
}


def model_names() -> list[str]:
    return sorted(MODEL_CLASSES)


def build_model(name: str, config: dict[str, Any] | None = None) -> FunctionalModel:
    """Instantiate the registered model ``name`` with constructor arguments ``config``."""
    if name not in MODEL_CLASSES:
        raise InputError(f"unknown model {name!r}: expected one of {', '.join(model_names())}")
    module, cls = MODEL_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**(config or {}))


def save_model(path: str | os.PathLike, model: FunctionalModel, params: Params,
               extra: dict[str, Any] | None = None, kind: str = "model") -> Path:
    """Save a model (registry name, constructor arguments, parameters, extras) atomically."""
    payload = {
        "model_name": model.name,
        "model_config": model.config(),
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "extra": extra or {},
    }
    return save_checkpoint(path, payload, kind=kind)


def load_model(path: str | os.PathLike, kind: str | tuple[str, ...] = "model",
               map_location: str | torch.device = "cpu"
               ) -> tuple[FunctionalModel, Params, dict[str, Any]]:
    """Load a model saved by :func:`save_model`; refuses files of another kind."""
    ckpt = load_checkpoint(path, kind=kind, map_location=map_location)
    try:
        model = build_model(ckpt["model_name"], ckpt["model_config"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: checkpoint lacks {exc}") from exc
    expected = set(model.init_params(torch.Generator().manual_seed(0)))
    if set(ckpt["params"]) != expected:
        raise CheckpointError(
            f"{path}: parameters do not match a {ckpt['model_name']!r} model with these settings "
            f"(differ in {sorted(set(ckpt['params']) ^ expected)[:5]})"
        )
    return model, dict(ckpt["params"]), dict(ckpt.get("extra", {}))
