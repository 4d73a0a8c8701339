"""Models on the functional core: a parameter dict plus a pure forward function."""

from matmeta.models._protocol import (
    FunctionalModel,
    Params,
    Samples,
    num_samples,
    sample_loss,
    weighted_mse,
)

__all__ = sorted(["FunctionalModel", "Params", "Samples", "num_samples", "sample_loss",
                  "weighted_mse"])

from matmeta.models._registry import (  # noqa: E402
    MODEL_CLASSES,
    build_model,
    load_model,
    model_names,
    save_model,
)

__all__ = sorted([*__all__, "MODEL_CLASSES", "build_model", "load_model", "model_names",
                  "save_model"])
