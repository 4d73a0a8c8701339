"""Supervised training of property models: splits, training loop, metrics, trained predictors."""

from matmeta.training._metrics import regression_metrics
from matmeta.training._predictor import PropertyPredictor, load_predictor, predict_structures
from matmeta.training._split import split_indices
from matmeta.training._train import (
    TrainResult,
    TrainSettings,
    describe_metrics,
    train_property_model,
)

__all__ = [
    "describe_metrics",
    "load_predictor",
    "predict_structures",
    "PropertyPredictor",
    "regression_metrics",
    "split_indices",
    "train_property_model",
    "TrainResult",
    "TrainSettings",
]
