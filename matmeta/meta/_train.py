"""Meta-training: the outer loop, checkpoints and resume, torch.distributed, priors.

:func:`meta_train` runs an algorithm of :mod:`matmeta.meta._algorithms` over seeded meta-batches,
with an outer optimiser (Adam or SGD, constant or cosine schedule), gradient clipping, a running
meta-validation loss, atomic checkpoints every N meta-steps (kind ``"meta"``) and an exact resume:
on CPU with a fixed seed, a run killed and resumed reaches the same parameters as one that was
never interrupted. Under ``torchrun`` each rank takes a slice of every meta-batch; the summed
meta-gradients and task counts are all-reduced, so the step equals the one-process step.
:func:`write_prior` writes a parametric law's prior learned across the training families
(Laplace-EM, :func:`matmeta.bayes.learn_prior`), not from the meta-learned initialisation.

Example:
    >>> result = meta_train(model, train_fams, val_fams,
    ...                     settings=MetaSettings("maml", inner_steps=5, inner_lr=0.01),
    ...                     train=MetaTrainSettings(steps=500, meta_batch=16, k_shot=5),
    ...                     out="meta.pt")
    >>> pred = adapt_and_predict(model, result.meta_params, support, query_x, result.settings)
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta.checkpoint import load_checkpoint, save_checkpoint
from matmeta.config import settings_from_dict
from matmeta.errors import CheckpointError, ConvergenceError, InputError
from matmeta.meta._algorithms import (
    MetaSettings,
    init_meta_params,
    inner_rates,
    meta_gradient,
    model_params,
    query_losses,
)
from matmeta.meta._tasks import EpisodeSampler, Family, Task, task_to
from matmeta.models._protocol import FunctionalModel, Params

__all__ = ["MetaTrainSettings", "MetaResult", "MetaCheckpoint", "meta_train", "load_meta",
           "write_prior", "init_distributed", "outer_init", "outer_update", "outer_lr_at"]


@dataclass
class MetaTrainSettings:
    """The outer loop: episodes, optimiser, schedule, clipping, validation and checkpoints.

    Attributes:
        steps: meta-steps (outer updates).
        meta_batch: tasks per meta-step.
        k_shot: support samples per task.
        q_query: query samples per task.
        outer_optimizer: ``"adam"`` or ``"sgd"``.
        outer_lr: outer learning rate (Reptile with SGD: the interpolation rate epsilon).
        schedule: ``"constant"`` or ``"cosine"`` (to zero at ``steps``).
        clip: maximum global norm of the meta-gradient (None: no clipping).
        val_every: meta-steps between meta-validation losses.
        val_tasks: number of fixed meta-validation tasks.
        checkpoint_every: meta-steps between checkpoints (the last step is always saved).
        seed: seed of the initial parameters, the episode sampler and the validation tasks.
    """

    steps: int = 1000
    meta_batch: int = 16
    k_shot: int = 5
    q_query: int = 10
    outer_optimizer: str = "adam"
    outer_lr: float = 1e-3
    schedule: str = "constant"
    clip: float | None = None
    val_every: int = 50
    val_tasks: int = 32
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.meta_batch) < 1:
            raise InputError(f"meta-batch size {self.meta_batch}: a meta-batch needs at least "
                             "one task")
        for name in ("steps", "k_shot", "q_query", "val_every", "val_tasks",
                     "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} {getattr(self, name)}: expected a positive integer")
        if self.outer_optimizer not in ("adam", "sgd"):
            raise InputError(f"outer optimiser {self.outer_optimizer!r}: expected adam or sgd")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule {self.schedule!r}: expected constant or cosine")
        if not float(self.outer_lr) > 0:
            raise InputError(f"outer_lr {self.outer_lr}: expected a positive learning rate")
        if self.clip is not None and not float(self.clip) > 0:
            raise InputError(f"clip {self.clip}: expected a positive gradient norm")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainSettings:
        return settings_from_dict(cls, d, "meta-training settings")


@dataclass
class MetaResult:
    """What meta-training returns: the model, its meta-learned parameters and how to adapt.

    Attributes:
        model: the model.
        meta_params: meta-parameters (model parameters plus Meta-SGD's log rates).
        settings: the resolved :class:`MetaSettings` (use them to adapt).
        train: the :class:`MetaTrainSettings`.
        history: one dict per meta-step: ``step``, ``train_loss`` and (when measured) ``val_loss``.
        extra: what the checkpoint stores besides (featurizer, target transform, families).
    """

    model: FunctionalModel
    meta_params: Params
    settings: MetaSettings
    train: MetaTrainSettings
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> Params:
        """The meta-learned initial model parameters."""
        return model_params(self.meta_params)

    def inner(self) -> dict[str, Any]:
        """The inner-loop settings adaptation uses (stored in the checkpoint)."""
        return inner_record(self.settings, self.meta_params)


def inner_record(settings: MetaSettings, meta_params: Params) -> dict[str, Any]:
    rates = inner_rates(meta_params)
    return {
        "algorithm": settings.algorithm,
        "steps": settings.steps_at_eval,
        "train_steps": int(settings.inner_steps),
        "lr": float(settings.inner_lr),
        "per_param_lr": None if rates is None else {k: v.detach().cpu() for k, v in rates.items()},
        "trainable": settings.trainable,
        "proximal": float(settings.proximal) if settings.algorithm == "imaml" else 0.0,
        # the closed-form heads' kernel and loss: adaptation and influence must use the same
        "kernel": settings.kernel,
        "head_loss": settings.head_loss,
    }


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (gloo on CPU, NCCL on CUDA).

    Returns (rank, world size); (0, 1) without ``torchrun`` (no ``WORLD_SIZE`` > 1).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def outer_lr_at(train: MetaTrainSettings, step: int) -> float:
    """The outer learning rate of meta-step ``step`` (0-based) under the schedule."""
    if train.schedule == "cosine":
        return float(train.outer_lr) * 0.5 * (1.0 + math.cos(math.pi * step / int(train.steps)))
    return float(train.outer_lr)


def outer_init(params: Params) -> dict[str, Tensor]:
    """Empty optimiser state (Adam moments; SGD ignores them): plain tensors, checkpointable."""
    state = {"step": torch.zeros((), dtype=torch.long)}
    for k, v in params.items():
        state["m::" + k] = torch.zeros_like(v)
        state["v::" + k] = torch.zeros_like(v)
    return state


def outer_update(params: Params, grads: Params, state: dict[str, Tensor],
                 train: MetaTrainSettings) -> tuple[Params, dict[str, Tensor]]:
    """One outer step (Adam with betas 0.9/0.999 and eps 1e-8, or plain SGD), after clipping.

    A pure function over dicts: no ``torch.optim`` (whose import pulls in the compiler stack,
    seconds of start-up for a command that may run a few hundred meta-steps).

    Example:
        >>> state = outer_init(params)
        >>> params, state = outer_update(params, grads, state, MetaTrainSettings(outer_lr=1e-3))
    """
    step = int(state["step"])
    lr = outer_lr_at(train, step)
    if train.clip is not None:
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
        scale = min(1.0, float(train.clip) / (float(norm) + 1e-6))
        grads = {k: g * scale for k, g in grads.items()}
    new_state = {"step": state["step"] + 1}
    if train.outer_optimizer == "sgd":
        new = {k: params[k] - lr * grads[k] for k in params}
        new_state.update({k: v for k, v in state.items() if k != "step"})
        return new, new_state
    b1, b2, eps = 0.9, 0.999, 1e-8
    t = step + 1
    new = {}
    for k in params:
        m = b1 * state["m::" + k] + (1 - b1) * grads[k]
        v = b2 * state["v::" + k] + (1 - b2) * grads[k] * grads[k]
        denom = v.sqrt() / math.sqrt(1 - b2**t) + eps
        new[k] = params[k] - (lr / (1 - b1**t)) * m / denom
        new_state["m::" + k], new_state["v::" + k] = m, v
    return new, new_state


# settings a resumed run may change: a longer run is the point of resuming, and how often it
# checkpoints or validates changes neither the parameters nor the episodes
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "val_every")


def _plain(value: Any) -> Any:
    """Tuples as lists, so a setting compares equal however it was spelled or stored."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_resume(ckpt: dict[str, Any], model: FunctionalModel, settings: MetaSettings,
                  train: MetaTrainSettings, extra: dict[str, Any], path: Path) -> None:
    if ckpt.get("model_name") != model.name or ckpt.get("model_config") != model.config():
        raise CheckpointError(
            f"{path}: cannot resume: it holds a {ckpt.get('model_name')!r} model with settings "
            f"{ckpt.get('model_config')}, this run builds {model.name!r} with {model.config()}")
    old = ckpt.get("meta_settings", {})
    if old.get("algorithm") != settings.algorithm:
        raise CheckpointError(f"{path}: cannot resume: it was meta-trained with "
                              f"{old.get('algorithm')!r}, this run asks for {settings.algorithm!r}")
    old_extra = ckpt.get("extra", {})
    for key in ("featurizer", "target_transform"):
        if old_extra.get(key) != extra.get(key):
            raise CheckpointError(f"{path}: cannot resume: its {key} {old_extra.get(key)} "
                                  f"differs from this run's {extra.get(key)}")
    # anything else that shapes the episodes or the updates must match too, or the resumed run
    # would silently continue under other settings (and the checkpoint's sampler state would
    # override a new seed)
    old_train = ckpt.get("train_settings", {})
    # a setting added after the checkpoint was written counts as its default
    defaults = MetaSettings().to_dict()
    pairs = [(k, old.get(k, defaults.get(k, "<unset>")), v) for k, v in settings.to_dict().items()]
    pairs += [(k, old_train.get(k, "<unset>"), v) for k, v in train.to_dict().items()
              if k not in RESUMABLE_CHANGES]
    for key, was, now in pairs:
        if _plain(was) != _plain(now):
            raise CheckpointError(
                f"{path}: cannot resume: it was meta-trained with {key} = {was!r}, this run asks "
                f"for {key} = {now!r}; only {', '.join(RESUMABLE_CHANGES)} may change on resume "
                "(start a new --out to train with other settings)")


def meta_train(model: FunctionalModel, train_families: Sequence[Family],
               val_families: Sequence[Family] = (), *,
               settings: MetaSettings | None = None, train: MetaTrainSettings | None = None,
               device: str | torch.device = "cpu", out: str | os.PathLike | None = None,
               resume: bool = False, progress: bool | None = None,
               extra: dict[str, Any] | None = None, init_params: Params | None = None
               ) -> MetaResult:
    """Meta-train ``model`` on episodes drawn from ``train_families``.

    Example:
        >>> res = meta_train(MLP(1), fams, settings=MetaSettings("fomaml"),
        ...                  train=MetaTrainSettings(steps=200), out="meta.pt")
        >>> res.params                       # the meta-learned initial parameters

    Args:
        model: any :class:`~matmeta.models.FunctionalModel`.
        train_families: meta-training families.
        val_families: meta-validation families (a fixed set of tasks drawn once).
        settings: algorithm and inner loop.
        train: outer loop.
        device: where tasks and parameters live.
        out: checkpoint path (written atomically every ``checkpoint_every`` steps and at the end;
            rank 0 only).
        resume: continue from ``out`` (its parameters, optimiser, sampler state and step).
        progress: show a progress bar (default: when stderr is a terminal).
        extra: stored in the checkpoint (``featurizer``, ``target_transform``, ``families``...).
        init_params: initial model parameters (default: ``model.init_params`` with the seed).

    Returns:
        A :class:`MetaResult`.

    Raises:
        InputError: families too small for ``k_shot + q_query`` (all of them), bad settings.
        ConvergenceError: a non-finite query loss or meta-gradient; the message names the step
            and the task, and the last checkpoint written stays as it was.
        CheckpointError: resuming from a checkpoint of another model, featurizer, algorithm or
            other settings (only ``steps``, ``checkpoint_every`` and ``val_every`` may change).
    """
    settings = (settings or MetaSettings()).resolve(model)
    train = train or MetaTrainSettings()
    device = torch.device(device)
    extra = dict(extra or {})
    rank, world = _dist()
    out_path = Path(out) if out is not None else None

    sampler = EpisodeSampler(train_families, train.k_shot, train.q_query, train.meta_batch,
                             seed=train.seed)
    val_tasks: list[Task] = []
    if val_families:
        val_sampler = EpisodeSampler(val_families, train.k_shot, train.q_query, train.val_tasks,
                                     seed=train.seed + 1, what="meta-validation")
        val_tasks = [task_to(t, device) for t in val_sampler.sample()]

    gen = torch.Generator().manual_seed(int(train.seed))
    params = init_params if init_params is not None else model.init_params(gen)
    meta = init_meta_params(model, params, settings)
    keys = list(meta)
    current = {k: meta[k].to(device).clone() for k in keys}
    opt_state = outer_init(current)
    start, history = 0, []

    if resume:
        if out_path is None or not out_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {out_path} to resume from")
        ckpt = load_checkpoint(out_path, kind="meta", map_location=device)
        _check_resume(ckpt, model, settings, train, extra, out_path)
        if set(ckpt["meta_params"]) != set(keys):
            raise CheckpointError(f"{out_path}: cannot resume: its parameters differ from this "
                                  f"model's ({sorted(set(ckpt['meta_params']) ^ set(keys))[:5]})")
        current = {k: ckpt["meta_params"][k].to(device) for k in keys}
        opt_state = {k: v.to(device) for k, v in ckpt["optimizer"].items()}
        sampler.restore(ckpt["sampler_state"])
        start, history = int(ckpt["step"]), list(ckpt["history"])

    def save(step: int) -> None:
        if out_path is None or rank != 0:
            return
        cpu = {k: v.detach().cpu() for k, v in current.items()}
        payload = {
            "model_name": model.name, "model_config": model.config(),
            "params": model_params(cpu), "meta_params": cpu,
            "optimizer": {k: v.cpu() for k, v in opt_state.items()},
            "sampler_state": sampler.state(), "step": step, "history": history,
            "meta_settings": settings.to_dict(), "train_settings": train.to_dict(),
            "inner": inner_record(settings, cpu), "extra": extra,
        }
        save_checkpoint(out_path, payload, kind="meta")

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    bar = tqdm(range(start, train.steps), initial=start, total=train.steps, desc="meta-train",
               disable=not progress or rank != 0, leave=False)
    val_loss = history[-1].get("val_loss", float("nan")) if history else float("nan")
    last_saved = start if resume else None
    running = history[-1]["train_loss"] if history else None
    kill_at = _test_kill_step()
    for step in bar:
        if kill_at is not None and step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        drawn = sampler.sample_indices()
        mine = [task_to(sampler.materialise(ix), device) for ix in drawn[rank::world]]
        names = [sampler.families[ix[0]].name for ix in drawn]
        if mine:
            grads, losses = meta_gradient(model, current, mine, settings, reduction="sum")
        else:
            grads = {k: torch.zeros_like(v) for k, v in current.items()}
            losses = torch.zeros(0, device=device)
        _check_finite(losses, grads, names, rank, world, step + 1, out_path, last_saved)
        loss_sum = losses.sum().reshape(1).to(current[keys[0]].dtype)
        if world > 1:
            import torch.distributed as dist

            flat = torch.cat([*(grads[k].reshape(-1) for k in keys), loss_sum])
            dist.all_reduce(flat)
            sizes = [grads[k].numel() for k in keys]
            parts = torch.split(flat[:-1], sizes)
            grads = {k: p.reshape(grads[k].shape) for k, p in zip(keys, parts, strict=True)}
            loss_sum = flat[-1:]
        n = len(drawn)
        current, opt_state = outer_update(current, {k: g / n for k, g in grads.items()},
                                          opt_state, train)
        record = {"step": step + 1, "train_loss": float(loss_sum) / n}
        if val_tasks and ((step + 1) % train.val_every == 0 or step + 1 == train.steps):
            val_loss = float(query_losses(model, current, val_tasks, settings).mean())
            record["val_loss"] = val_loss
        history.append(record)
        # meta-batches are noisy: the bar shows an exponential running mean of the train loss
        running = record["train_loss"] if running is None else (
            0.9 * running + 0.1 * record["train_loss"])
        bar.set_postfix(train=f"{running:.4g}", val=f"{val_loss:.4g}")
        if (step + 1) % train.checkpoint_every == 0 or step + 1 == train.steps:
            save(step + 1)
            last_saved = step + 1
    bar.close()
    return MetaResult(model, dict(current), settings, train, history, extra)


def _test_kill_step() -> int | None:
    """Test-only hook: the meta-step at whose start the process SIGKILLs itself.

    ``MATMETA_TEST_KILL_AT_STEP=N`` makes the kill-and-resume test deterministic (a kill sent
    from outside may arrive after a fast run has finished): the run dies before meta-step N,
    with whatever checkpoint it last wrote. Not for users; unset, it costs nothing.
    """
    value = os.environ.get("MATMETA_TEST_KILL_AT_STEP")
    return int(value) if value else None


def _check_finite(losses: Tensor, grads: Params, names: list[str], rank: int, world: int,
                  step: int, out: Path | None, last_saved: int | None) -> None:
    """Stop at a non-finite query loss or meta-gradient, naming the task and its family."""
    _check_finite_members(losses[None], {k: g[None] for k, g in grads.items()}, [names], rank,
                          world, step, out, last_saved, label_members=False)


def _check_finite_members(losses: Tensor, grads: Params, names: list[list[str]], rank: int,
                          world: int, step: int, out: Path | None, last_saved: int | None,
                          label_members: bool = True) -> None:
    """:func:`_check_finite` for M members trained together: ``losses`` (M, tasks on this
    rank), each gradient with a leading member dimension, ``names[m]`` member m's families."""
    bad_loss = ~torch.isfinite(losses)
    bad_grad = [m for m in range(losses.shape[0])
                if not all(bool(torch.isfinite(g[m]).all()) for g in grads.values())]
    device = next(iter(grads.values())).device  # NCCL reduces only device tensors
    flag = torch.tensor([float(bool(bad_loss.any()) or bool(bad_grad))], device=device)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return
    kept = (f"the last good checkpoint {out} (meta-step {last_saved}) is kept"
            if out is not None and last_saved is not None else "no checkpoint was written")
    if bool(bad_loss.any()):
        m, local = (int(i) for i in torch.nonzero(bad_loss)[0])
        i = rank + local * world
        what = (f"the query loss of task {i} (family {names[m][i]!r}) is "
                f"{losses[m, local].item()}")
    elif bad_grad:
        m, what = bad_grad[0], "the meta-gradient is not finite"
    else:
        m, what = None, "another rank met a non-finite loss"
    if label_members and m is not None:
        what = f"member {m}: {what}"
    raise ConvergenceError(f"meta-step {step}: {what}; stopped, {kept}; "
                           "lower the inner or outer learning rate, or clip gradients")


@dataclass
class MetaCheckpoint:
    """A meta checkpoint read back: enough to adapt and predict without anything else.

    Attributes:
        model, meta_params, settings, train, history, extra: as in :class:`MetaResult`.
        inner: the inner-loop record (steps, lr, per-parameter rates, trainable names).
        step: meta-steps done.
    """

    model: FunctionalModel
    meta_params: Params
    settings: MetaSettings
    train: MetaTrainSettings
    history: list[dict[str, float]]
    extra: dict[str, Any]
    inner: dict[str, Any]
    step: int

    @property
    def params(self) -> Params:
        return model_params(self.meta_params)


def load_meta(path: str | os.PathLike, map_location: str | torch.device = "cpu"
              ) -> MetaCheckpoint:
    """Read a meta checkpoint written by :func:`meta_train`.

    Example:
        >>> ck = load_meta("meta.pt")
        >>> adapted = adapt_params(ck.model, ck.meta_params, support, ck.settings)
    """
    from matmeta.models._registry import build_model

    ckpt = load_checkpoint(path, kind="meta", map_location=map_location)
    try:
        model = build_model(ckpt["model_name"], ckpt["model_config"])
        return MetaCheckpoint(model, dict(ckpt["meta_params"]),
                              MetaSettings.from_dict(ckpt["meta_settings"]),
                              MetaTrainSettings.from_dict(ckpt["train_settings"]),
                              list(ckpt["history"]), dict(ckpt["extra"]), dict(ckpt["inner"]),
                              int(ckpt["step"]))
    except KeyError as exc:
        raise CheckpointError(f"{path}: meta checkpoint lacks {exc}") from exc


def write_prior(result: MetaResult | MetaCheckpoint, families: Sequence[Family],
                path: str | os.PathLike, *, noise_std: float | None = None,
                min_std: float = 1e-4, max_iter: int = 100, tol: float = 1e-6,
                min_noise_std: float = 1e-3) -> Path:
    """Learn a prior over a parametric model's parameters across ``families`` and write it.

    The prior is :func:`matmeta.bayes.learn_prior` (Laplace-EM over the families, each family's
    samples one curve: an isotherm for ``jmak``, a grade's isotherms for ``arrhenius_jmak``) run
    on ``families``: its mean and full covariance describe the families' own MAP fits (ln k in
    ln(1/s), ln n, ...), and its ``noise_std`` (target units, a fraction for JMAK) is the noise it
    learned. The meta-learned initialisation is *not* used: gradient steps barely move ln k from
    it on flat JMAK losses, so a prior centred there with the spread of adapted parameters is
    narrow and misplaced (tungsten, 22 training isotherms: ln k = -7.05 +- 0.81 ln(1/s) that way,
    its 95% band on t_half holding 5 of the 22 isotherms' independent fits; -10.81 +- 2.88 here,
    holding 21). ``result`` supplies the model and its settings only; the file is a
    :class:`matmeta.models.parametric.Prior` (mean, cov, noise_std, model config) for
    ``matmeta jmak fit --prior`` and ``matmeta suggest kinetics --prior``.

    Families the fitter cannot take (no point with a positive weight, a non-finite time,
    fraction or weight, an Arrhenius-JMAK grade at one temperature: see :func:`prior_families`)
    are left out, named in one warning line; a Laplace-EM run that stops at ``max_iter`` without
    converging is said in the same line.

    Example:
        >>> write_prior(result, train_families, "prior.json")
        >>> Prior.load("prior.json").mean            # (ln_k, ln_n) for JMAK

    Args:
        result: a meta-training result or checkpoint of a parametric model.
        families: the families to learn from (meta-training's training families).
        path: where to write the JSON prior (atomically).
        noise_std: measurement std (target units); default: learned with the prior.
        min_std: floor of the prior's standard deviations (transformed units).
        max_iter, tol: Laplace-EM iterations at most and its tolerance (see ``learn_prior``).
        min_noise_std: floor of a *learned* noise std (target units: 1e-3 of a fraction), said
            in the warning line when it applies: on noise-free curves (reconstructed from
            published parameters) Laplace-EM learns a noise near zero, and MAP fits under the
            prior would then report standard errors of 1e-6.

    Returns:
        The path written.

    Raises:
        InputError: a model that is not parametric, fewer than 2 usable families, or a family
            Laplace-EM cannot fit (named); nothing is written then.
    """
    from matmeta.bayes import learn_prior

    model = result.model
    if not hasattr(model, "flatten") or not hasattr(model, "flat_names"):
        raise InputError(f"a prior file needs a parametric model; {model.name!r} is not one")
    usable, unusable = prior_families(model, families)
    if len(usable) < 2:
        left = f"; left out: {_listed(unusable)}" if unusable else ""
        raise InputError(
            f"{path}: {len(usable)} usable {'family' if len(usable) == 1 else 'families'} of "
            f"{len(families)}; learning a prior across families needs at least 2{left}")
    notes = []
    if unusable:
        notes.append(f"{len(unusable)} of {len(families)} families cannot be fitted and are left "
                     f"out of the prior: {_listed(unusable)}")
    inputs = [fam.inputs.detach().cpu() for fam in usable]
    ys = [fam.y.detach().cpu() for fam in usable]
    weights = None
    if any(fam.weight is not None for fam in usable):
        weights = [None if fam.weight is None else fam.weight.detach().cpu() for fam in usable]
    try:
        fit = learn_prior(model, inputs, ys, noise_std=noise_std, weights=weights,
                          max_iter=max_iter, tol=tol, min_std=min_std)
    except InputError as exc:
        # learn_prior names a family by its index among those it was given
        text = re.sub(r"\b(family|curve) (\d+)",
                      lambda m: f"family {usable[int(m.group(2))].name!r}"
                      if int(m.group(2)) < len(usable) else m.group(0), str(exc))
        raise InputError(f"{path}: cannot learn a prior across {len(usable)} families: {text}"
                         ) from None
    if not fit.converged:
        notes.append(f"Laplace-EM over {len(usable)} families stopped after {fit.iterations} "
                     f"iterations without converging to tol {tol:g}; the prior is its last "
                     "iterate")
    prior = fit.prior
    if noise_std is None and prior.noise_std is not None and prior.noise_std < min_noise_std:
        notes.append(f"the learned noise std {prior.noise_std:.2g} is below {min_noise_std:g} "
                     "(noise-free curves?); the prior records "
                     f"{min_noise_std:g}: pass noise_std (--noise-std to `jmak fit`) if the "
                     "measurements are that precise")
        prior = dataclasses.replace(prior, noise_std=float(min_noise_std))
    if notes:
        warnings.warn(f"{path}: " + "; ".join(notes), UserWarning, stacklevel=2)
    return prior.save(path)


def prior_families(model: Any, families: Sequence[Family]) -> tuple[list[Family], list[str]]:
    """Split ``families`` into those Laplace-EM can fit and the others, each ``"name (why)"``.

    A family is left out when it has no point with a positive weight, a non-finite input, target
    or weight at a weighted point, or inputs the law's starting guesses refuse (an
    Arrhenius-JMAK grade measured at one temperature): the refusals ``fit_curves`` would raise
    for the whole batch, caught here one family at a time so they can be named.

    Example:
        >>> usable, left_out = prior_families(ArrheniusJMAK(), grades)
    """
    from matmeta.fitting import pad_curves

    usable, unusable = [], []
    for fam in families:
        why = ""
        if fam.is_graph:
            why = "graph inputs, not a parametric law's"
        else:
            x, y = fam.inputs.detach().cpu(), fam.y.detach().cpu()
            w = torch.ones_like(y) if fam.weight is None else fam.weight.detach().cpu()
            live = w > 0
            finite = torch.isfinite(y) & torch.isfinite(x.reshape(len(y), -1)).all(-1)
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
                why = "a weight that is negative or not finite"
            elif not bool(live.any()):
                why = "no point with a positive weight"
            elif not bool(finite[live].all()):
                why = "a non-finite input or target"
            else:
                try:
                    model.initial_guesses(*pad_curves([x], [y], [w])[:3])
                except InputError as exc:
                    why = str(exc).splitlines()[0]
        if why:
            unusable.append(f"{fam.name} ({why})")
        else:
            usable.append(fam)
    return usable, unusable


def _listed(names: Sequence[str], most: int = 10) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(map(str, names[:most])) + more
