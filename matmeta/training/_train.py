"""Supervised training of a property model on crystal graphs.

Graphs are built once (outside this module); training shuffles them, collates mini-batches and
minimises the loss in the target transform's space with AdamW under a warm-up + cosine schedule,
keeping the parameters with the best validation MAE (early stopping).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import ConvergenceError, InputError
from matmeta.graphs._batch import collate
from matmeta.graphs._settings import FeaturizerSettings
from matmeta.models._protocol import FunctionalModel
from matmeta.models._transforms import TargetTransform
from matmeta.training._metrics import regression_metrics
from matmeta.training._predictor import (
    PropertyPredictor,
    check_graphs,
    graph_elements,
    predict_graphs_batched,
)
from matmeta.training._split import split_indices

__all__ = ["TrainSettings", "TrainResult", "describe_metrics", "train_property_model"]

_LOSSES = ("mse", "l1", "huber")


@dataclass
class TrainSettings:
    """How to train (all plain data; stored in the checkpoint).

    Attributes:
        epochs: maximum number of passes over the training set.
        batch_size: graphs per mini-batch.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        warmup_epochs: linear warm-up length (epochs, may be fractional); then cosine decay to
            ``lr * final_lr_ratio`` at ``epochs``.
        final_lr_ratio: learning rate at the end of the cosine, as a fraction of ``lr``.
        patience: stop after this many epochs without a better validation MAE (0: never).
        loss: ``"mse"``, ``"l1"`` or ``"huber"`` (delta 1 in the transformed space).
        time_limit_s: training budget in seconds (None: no limit). The run stops when it is
            spent (the best parameters so far are kept), and the warm-up + cosine schedule
            follows whichever is further along, epochs or budget, so a run cut short by the
            budget still anneals its learning rate (a shared machine's load then changes the
            number of epochs, not the shape of the schedule).
        time_clock: ``"wall"`` (default) or ``"cpu"`` (this process's CPU time) for the budget.
        grad_clip: clip the gradient norm to this value (None: off).
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.01
    patience: int = 30
    loss: str = "mse"
    time_limit_s: float | None = None
    time_clock: str = "wall"
    grad_clip: float | None = 10.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs={self.epochs}, batch_size={self.batch_size}: expected >= 1")
        if not self.lr > 0:
            raise InputError(f"lr={self.lr}: expected a positive learning rate")
        if self.time_clock not in ("wall", "cpu"):
            raise InputError(f"time_clock {self.time_clock!r}: expected 'wall' or 'cpu'")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise InputError(f"time limit {self.time_limit_s} s: expected a positive duration")
        if self.loss not in _LOSSES:
            raise InputError(f"loss {self.loss!r}: expected one of {_LOSSES}")


@dataclass
class TrainResult:
    """What training returns.

    Attributes:
        predictor: the trained model with its settings and transform (best validation epoch).
        metrics: split -> {"mae", "rmse", "r2", "n"} in the target's units, and
            ``"<split>_transformed"`` the same in the model's space (log10 space for log targets,
            before standardisation).
        history: per-epoch lists: ``epoch``, ``train_loss``, ``val_loss``, ``val_mae``, ``lr``,
            ``time_s``.
        splits: split -> sample indices into the inputs.
        best_epoch: epoch whose parameters were kept.
        predictions: split -> (y_true, y_pred) numpy arrays in the target's units.
    """

    predictor: PropertyPredictor
    metrics: dict[str, dict[str, float]]
    history: dict[str, list[float]]
    splits: dict[str, np.ndarray]
    best_epoch: int
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _loss_fn(kind: str, pred: Tensor, y: Tensor) -> Tensor:
    if kind == "mse":
        return torch.mean((pred - y) ** 2)
    if kind == "l1":
        return torch.mean(torch.abs(pred - y))
    return torch.nn.functional.huber_loss(pred, y, delta=1.0)


def train_property_model(
    graphs: Sequence,
    targets: Sequence[float] | np.ndarray | Tensor,
    model: FunctionalModel,
    settings: FeaturizerSettings,
    *,
    train: TrainSettings | None = None,
    target_transform: str = "standardize",
    target: str = "target",
    splits: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None,
    split: str = "random",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    families: Sequence | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> TrainResult:
    """Train ``model`` to predict ``targets`` from ``graphs``.

    Example:
        >>> settings = FeaturizerSettings(cutoff=6.0, max_neighbors=12)
        >>> graphs = build_graphs(structures, settings=settings)
        >>> result = train_property_model(graphs, K_GPa, CGCNN(n_basis=settings.n_basis),
        ...                               settings, target_transform="log10_standardize",
        ...                               target="bulk_modulus_GPa")
        >>> result.metrics["test"]["mae"]            # GPa
        >>> result.predictor.save("model.pt")

    Args:
        graphs: ``Data`` graphs built with ``settings``.
        targets: one finite target per graph, in its units.
        model: a functional model taking a :class:`~matmeta.graphs.GraphBatch`.
        settings: the featurizer settings the graphs were built with (saved with the model).
        train: optimisation settings (:class:`TrainSettings` defaults when None).
        target_transform: ``"standardize"``, ``"log10_standardize"`` or ``"identity"``; fitted
            on the training split only.
        target: the target's name (and units), used for the prediction column.
        splits: explicit (train, val, test) index lists; otherwise made by ``split``.
        split: ``"random"`` or ``"family"`` (needs ``families``).
        fractions: (train, val, test) fractions for the split.
        families: family label per graph (for ``split="family"``).
        seed: seeds the split, the initial parameters and the batch order.
        device: where to train.
        progress: show a tqdm bar (None: only when stderr is a terminal).

    Returns:
        A :class:`TrainResult`.

    Raises:
        InputError: mismatched lengths, NaN/infinite targets, too few samples.
        ConvergenceError: the loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    opts = train or TrainSettings()
    y_all = np.array(targets.detach().cpu() if isinstance(targets, Tensor) else targets,
                       dtype=float).ravel()
    n = len(graphs)
    if y_all.shape[0] != n:
        raise InputError(f"{n} graphs but {y_all.shape[0]} targets")
    check_graphs(graphs, settings)
    bad = ~np.isfinite(y_all)
    if bad.any():
        raise InputError(f"{target}: {int(bad.sum())} NaN or infinite value(s), first at sample "
                         f"{int(np.flatnonzero(bad)[0])}; expected finite numbers")
    if splits is None:
        tr, va, te = split_indices(n, fractions, seed=seed, families=families, by=split)
    else:
        tr, va, te = (np.asarray(s, dtype=int) for s in splits)
    if len(tr) == 0:
        raise InputError("the training split is empty")
    if target_transform == "log10_standardize" and (y_all <= 0).any():
        i = int(np.flatnonzero(y_all <= 0)[0])
        raise InputError(f"{target}: value {y_all[i]} at sample {i} cannot be log10-transformed; "
                         "expected positive values")
    transform = TargetTransform.fit(y_all[tr], kind=target_transform, name=target)
    device = torch.device(device)
    dtype = torch.float32
    y_model = transform.forward(torch.as_tensor(y_all, dtype=torch.float64)).to(dtype)

    gen = torch.Generator().manual_seed(seed)
    params = {k: v.to(device)
              for k, v in model.init_params(gen).items()}
    params = {k: v.detach().to(dtype).requires_grad_(True) for k, v in params.items()}
    optimiser = torch.optim.AdamW(params.values(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / opts.batch_size)
    total = opts.epochs * steps_per_epoch
    warm = max(1, int(opts.warmup_epochs * steps_per_epoch))

    clock = time.perf_counter if opts.time_clock == "wall" else time.process_time
    start = clock()

    def progress_at(step: int) -> float:
        done = (step - warm) / max(1, total - warm)
        if opts.time_limit_s is not None:
            done = max(done, (clock() - start) / opts.time_limit_s)
        return min(1.0, done)

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        cos = 0.5 * (1 + math.cos(math.pi * progress_at(step)))
        return opts.final_lr_ratio + (1 - opts.final_lr_ratio) * cos

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    # Validation batches never change: collate them once.
    val_graphs = [graphs[i] for i in va]
    val_y = y_model[va]
    history: dict[str, list[float]] = {k: [] for k in
                                       ("epoch", "train_loss", "val_loss", "val_mae", "lr",
                                        "time_s")}
    best = (math.inf, -1, {k: v.detach().clone() for k, v in params.items()})
    since_best = 0
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(range(1, opts.epochs + 1), desc=f"train {target}", unit="epoch", disable=not show,
               leave=False)
    start = clock()
    order_gen = torch.Generator().manual_seed(seed + 1)
    for epoch in bar:
        perm = tr[torch.randperm(len(tr), generator=order_gen).numpy()]
        total_loss, count = 0.0, 0
        for s in range(0, len(perm), opts.batch_size):
            idx = perm[s:s + opts.batch_size]
            batch = collate([graphs[i] for i in idx], settings, dtype=dtype).to(device)
            pred = model.forward(params, batch)
            loss = _loss_fn(opts.loss, pred, y_model[idx].to(device))
            if not torch.isfinite(loss):
                raise ConvergenceError(f"training loss became {loss.item()} at epoch {epoch}: "
                                       "lower the learning rate (--lr)")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params.values(), opts.grad_clip)
            optimiser.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
            count += len(idx)
        train_loss = total_loss / count
        if len(va):
            vp = predict_graphs_batched(model, params, val_graphs, settings, device=device)
            val_loss = float(_loss_fn(opts.loss, vp, val_y))
            val_mae = float((vp - val_y).abs().mean())
            score = val_mae
        else:  # no validation split: keep the last epoch
            val_loss = val_mae = float("nan")
            score = float(-epoch)
        elapsed = clock() - start
        for k, v in zip(history, (epoch, train_loss, val_loss, val_mae,
                                  scheduler.get_last_lr()[0], elapsed), strict=True):
            history[k].append(float(v))
        if score < best[0]:
            best = (score, epoch, {k: v.detach().clone() for k, v in params.items()})
            since_best = 0
        else:
            since_best += 1
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best_epoch=best[1])
        if opts.patience and since_best >= opts.patience:
            break
        if opts.time_limit_s is not None and elapsed > opts.time_limit_s:
            break
    bar.close()

    best_params = {k: v.detach().cpu() for k, v in best[2].items()}
    metrics: dict[str, dict[str, float]] = {}
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, idx in (("train", tr), ("val", va), ("test", te)):
        if len(idx) == 0:
            continue
        raw = predict_graphs_batched(model, best_params, [graphs[i] for i in idx], settings)
        y_true = y_all[idx]
        y_pred = transform.inverse(raw.double()).numpy()
        metrics[name] = regression_metrics(y_true, y_pred)
        true_t = np.log10(y_true) if transform.log else y_true
        metrics[f"{name}_transformed"] = regression_metrics(
            true_t, transform.to_log_space(raw.double()).numpy())
        predictions[name] = (y_true, y_pred)
    info = {
        "train_settings": asdict(opts),
        "history": history,
        "best_epoch": best[1],
        "seed": seed,
        "split": split if splits is None else "given",
        "n_samples": {"train": len(tr), "val": len(va), "test": len(te)},
    }
    # what the weights were fitted on: predict warns about structures with any other element
    elements = tuple(sorted(set().union(*(graph_elements(graphs[i]) for i in tr))))
    predictor = PropertyPredictor(model=model, params=best_params, settings=settings,
                                  transform=transform, target=target, metrics=metrics, info=info,
                                  elements=elements)
    return TrainResult(predictor=predictor, metrics=metrics, history=history,
                       splits={"train": tr, "val": va, "test": te}, best_epoch=best[1],
                       predictions=predictions)


def describe_metrics(metrics: dict[str, Any], target: str, log: bool = False) -> str:
    """A few lines summarising metrics for the terminal."""
    lines = []
    for name in ("train", "val", "test"):
        if name not in metrics:
            continue
        m = metrics[name]
        line = (f"{name:>5}: n={m['n']:<6d} MAE={m['mae']:.4g}  RMSE={m['rmse']:.4g}  "
                f"R2={m['r2']:.3f}  ({target})")
        if log and f"{name}_transformed" in metrics:
            t = metrics[f"{name}_transformed"]
            line += f"   log10: MAE={t['mae']:.4f} RMSE={t['rmse']:.4f} R2={t['r2']:.3f}"
        lines.append(line)
    return "\n".join(lines)
