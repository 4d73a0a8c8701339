"""matmeta: meta-learning for materials.

Learn how to adapt from known chemical families (crystal-graph GNNs, physics-parametric laws),
then adapt to a new family from a handful of measurements and explain which measurements drove
the adaptation.

The public surface is the sorted ``__all__`` below; names are imported lazily so that
``import matmeta`` (and ``matmeta --help``) stays fast.

Example:
    >>> import matmeta
    >>> graph = matmeta.structure_to_graph(structure, cutoff=6.0, max_neighbors=12)
"""

from __future__ import annotations

import importlib
from typing import Any

from matmeta._version import __version__ as __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "adapt": "matmeta.workflows",
    "adapt_and_predict": "matmeta.meta",
    "adapt_ensemble": "matmeta.meta",
    "adapt_head": "matmeta.bayes",
    "adapt_parametric": "matmeta.bayes",
    "adapt_params": "matmeta.meta",
    "AdaptedModel": "matmeta.workflows",
    "Arrhenius": "matmeta.models.parametric",
    "ArrheniusJMAK": "matmeta.models.parametric",
    "BayesianLinearHead": "matmeta.bayes",
    "BirchMurnaghan": "matmeta.models.parametric",
    "build_graphs": "matmeta.graphs",
    "build_model": "matmeta.models",
    "calibrate_noise": "matmeta.meta",
    "CGCNN": "matmeta.models._gnn",
    "CheckpointError": "matmeta.errors",
    "closed_form_influence": "matmeta.influence",
    "collate": "matmeta.graphs",
    "CompositionModel": "matmeta.models._composition",
    "ConvergenceError": "matmeta.errors",
    "Crystal": "matmeta.io",
    "encode_compositions": "matmeta.models._composition",
    "Ensemble": "matmeta.meta",
    "ensemble_predict": "matmeta.meta",
    "EpisodeSampler": "matmeta.meta",
    "evaluate": "matmeta.meta",
    "EvaluationSettings": "matmeta.meta",
    "explain": "matmeta.influence",
    "families_from_table": "matmeta.meta",
    "Family": "matmeta.meta",
    "FeaturizerSettings": "matmeta.graphs",
    "fit_bayes_linear": "matmeta.bayes",
    "fit_curves": "matmeta.fitting",
    "fit_feature_head": "matmeta.bayes",
    "fit_gp": "matmeta.bayes",
    "fit_jmak": "matmeta.fitting",
    "fit_jmak_with_prior": "matmeta.workflows._kinetics",
    "FitResult": "matmeta.fitting",
    "FunctionalModel": "matmeta.models",
    "gaussian_crps": "matmeta.bayes",
    "GaussianProcessHead": "matmeta.bayes",
    "GraphBatch": "matmeta.graphs",
    "GraphCache": "matmeta.graphs",
    "head_loo_influence": "matmeta.influence",
    "head_predict": "matmeta.bayes",
    "HeadPosterior": "matmeta.bayes",
    "InfluenceRequest": "matmeta.influence",
    "inner_loop": "matmeta.meta",
    "InputError": "matmeta.errors",
    "interval_coverage": "matmeta.bayes",
    "JMAK": "matmeta.models.parametric",
    "JMAKPriorFit": "matmeta.workflows._kinetics",
    "learn_prior": "matmeta.bayes",
    "load_adapted": "matmeta.workflows",
    "load_builtin": "matmeta.io",
    "load_ensemble": "matmeta.meta",
    "load_families": "matmeta.meta",
    "load_meta": "matmeta.meta",
    "load_model": "matmeta.models",
    "load_predictor": "matmeta.training",
    "load_suggest_model": "matmeta.suggest",
    "MatmetaError": "matmeta.errors",
    "meta_train": "matmeta.meta",
    "meta_train_ensemble": "matmeta.meta",
    "MetaSettings": "matmeta.meta",
    "MetaTrainSettings": "matmeta.meta",
    "MLP": "matmeta.models._mlp",
    "pack_composition_inputs": "matmeta.models._composition",
    "ParametricModel": "matmeta.models.parametric",
    "ParametricPriorHead": "matmeta.bayes",
    "parse_composition": "matmeta.io",
    "plot_coverage": "matmeta.plots",
    "predict_members": "matmeta.meta",
    "predict_structures": "matmeta.training",
    "Prior": "matmeta.models.parametric",
    "read_alloy_table": "matmeta.io",
    "read_kinetics_table": "matmeta.io",
    "read_pool_table": "matmeta.suggest",
    "read_structure": "matmeta.io",
    "read_structure_table": "matmeta.io",
    "read_structures": "matmeta.io",
    "resolve_device": "matmeta.config",
    "sample_loss": "matmeta.models",
    "Samples": "matmeta.models",
    "save_ensemble": "matmeta.meta",
    "save_model": "matmeta.models",
    "score_predictions": "matmeta.bayes",
    "screen": "matmeta.workflows",
    "seed_everything": "matmeta.config",
    "set_threads": "matmeta.config",
    "split_families": "matmeta.meta",
    "structure_to_graph": "matmeta.graphs",
    "suggest_from_posterior": "matmeta.suggest",
    "suggest_jmak_measurement": "matmeta.suggest._kinetics",
    "suggest_next": "matmeta.suggest",
    "Suggestions": "matmeta.suggest",
    "Task": "matmeta.meta",
    "train_property_model": "matmeta.training",
    "TrainSettings": "matmeta.training",
    "variance_reduction": "matmeta.suggest",
    "weighted_mse": "matmeta.models",
    "write_jmak_report": "matmeta.workflows._kinetics",
    "write_prior": "matmeta.meta",
}

__all__ = sorted([*_EXPORTS, "__version__"])  # noqa: PLE0605


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'matmeta' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
