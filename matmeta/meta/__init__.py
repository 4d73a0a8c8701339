"""Meta-learning: families and tasks, the one inner loop, MAML and its relatives, meta-training."""

from matmeta.meta._algorithms import (
    ALGORITHMS,
    MetaSettings,
    adapt_and_predict,
    adapt_params,
    init_meta_params,
    inner_rates,
    meta_gradient,
    model_params,
    query_losses,
    task_meta_gradient,
)
from matmeta.meta._data import GROUPINGS, families_from_table, family_keys, transform_families
from matmeta.meta._inner import inner_loop
from matmeta.meta._tasks import (
    EpisodeSampler,
    Family,
    Task,
    anion_set,
    element_system,
    most_electronegative_element,
    split_families,
    stack_tasks,
)
from matmeta.meta._train import (
    MetaCheckpoint,
    MetaResult,
    MetaTrainSettings,
    init_distributed,
    load_meta,
    meta_train,
    write_prior,
)

__all__ = [
    "ALGORITHMS",
    "EpisodeSampler",
    "Family",
    "GROUPINGS",
    "MetaCheckpoint",
    "MetaResult",
    "MetaSettings",
    "MetaTrainSettings",
    "Task",
    "adapt_and_predict",
    "adapt_params",
    "anion_set",
    "element_system",
    "families_from_table",
    "family_keys",
    "init_distributed",
    "init_meta_params",
    "inner_loop",
    "inner_rates",
    "load_meta",
    "meta_gradient",
    "meta_train",
    "model_params",
    "most_electronegative_element",
    "query_losses",
    "split_families",
    "stack_tasks",
    "task_meta_gradient",
    "transform_families",
    "write_prior",
]
