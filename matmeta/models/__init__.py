"""Models on the functional core: a parameter dict plus a pure forward function.

Model classes (``CGCNN``, ``MLP``, ``CompositionModel``, the parametric laws) are imported from
their modules on first use through the registry, so importing this package stays light.
"""

from matmeta.models._protocol import (
    FunctionalModel,
    Params,
    Samples,
    num_samples,
    sample_loss,
    weighted_mse,
)
from matmeta.models._registry import (
    MODEL_CLASSES,
    build_model,
    load_model,
    model_names,
    save_model,
)

__all__ = [
    "build_model",
    "FunctionalModel",
    "load_model",
    "MODEL_CLASSES",
    "model_names",
    "num_samples",
    "Params",
    "sample_loss",
    "Samples",
    "save_model",
    "weighted_mse",
]
