"""Families and tasks: who belongs together, and k-shot episodes drawn from them.

A :class:`Family` holds every sample of one chemical family (an anion family, an alloy system, a
tungsten grade) in an indexable form: a tensor of inputs (rows are samples) or a list of
``torch_geometric`` graphs collated per task. A :class:`Task` is a support set and a query set drawn
from one family. :class:`EpisodeSampler` draws seeded, reproducible meta-batches of tasks;
:func:`split_families` splits by family so no test family leaks into training.

Example:
    >>> fams = [Family("O", x_o, y_o), Family("N", x_n, y_n)]
    >>> sampler = EpisodeSampler(fams, k_shot=5, q_query=10, meta_batch=4, seed=0)
    >>> tasks = sampler.sample()          # list of 4 Task
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from matmeta.errors import InputError
from matmeta.models._protocol import Samples

__all__ = [
    "Family",
    "Task",
    "EpisodeSampler",
    "split_families",
    "stack_tasks",
    "most_electronegative_element",
    "anion_set",
    "element_system",
]


@dataclass
class Family:
    """All samples of one family.

    Example:
        >>> fam = Family("Al-Co-Cr-Fe-Ni", torch.randn(12, 8), torch.randn(12))
        >>> fam.samples(torch.tensor([0, 3, 5]))     # Samples of three rows

    Attributes:
        name: the family's name (``"O"``, ``"Al-Co-Cr-Fe-Ni"``, ``"W_Lopez2015_HR@1373K"``).
        inputs: a tensor whose first axis runs over samples, or a list of graphs
            (``torch_geometric.data.Data``) that :func:`matmeta.graphs.collate` joins per task.
        y: (n,) targets in the model's target space.
        weight: (n,) per-sample weights, or None.
        group: the key a split goes by (defaults to ``name``); isotherms of one tungsten grade
            share the grade as their group so a split never puts one isotherm in training and
            another of the same grade in the test set.
        featurizer: :class:`~matmeta.graphs.FeaturizerSettings` for graph inputs.
        rows: the source table's row number of each sample (for error messages).
    """

    name: str
    inputs: Any
    y: Tensor
    weight: Tensor | None = None
    group: str | None = None
    featurizer: Any = None
    rows: list[int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = int(self.y.shape[0])
        n_in = len(self.inputs) if isinstance(self.inputs, (list, tuple)) else self.inputs.shape[0]
        if n_in != n:
            raise InputError(f"family {self.name!r}: {n_in} inputs but {n} targets")
        if self.weight is not None and self.weight.shape[0] != n:
            raise InputError(f"family {self.name!r}: {self.weight.shape[0]} weights but {n} "
                             "targets")
        if self.group is None:
            self.group = self.name

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def is_graph(self) -> bool:
        return isinstance(self.inputs, (list, tuple))

    def samples(self, index: Tensor | Sequence[int] | None = None) -> Samples:
        """The samples at ``index`` (all when None) as :class:`~matmeta.models.Samples`."""
        if index is None:
            index = torch.arange(len(self))
        index = torch.as_tensor(index, dtype=torch.long)
        if self.is_graph:
            from matmeta.graphs import collate

            inputs = collate([self.inputs[i] for i in index.tolist()], self.featurizer,
                             dtype=self.y.dtype)
        else:
            inputs = self.inputs[index]
        weight = None if self.weight is None else self.weight[index]
        return Samples(inputs, self.y[index], weight)

    def to(self, device: torch.device | str) -> Family:
        """A copy on ``device`` (graphs are moved per task, after collation)."""
        inputs = self.inputs if self.is_graph else self.inputs.to(device)
        weight = None if self.weight is None else self.weight.to(device)
        return Family(self.name, inputs, self.y.to(device), weight, self.group, self.featurizer,
                      self.rows)


@dataclass
class Task:
    """A support set and a query set drawn from one family."""

    support: Samples
    query: Samples
    family: str


def _samples_to(s: Samples, device: torch.device | str) -> Samples:
    inputs = s.inputs.to(device)
    return Samples(inputs, s.y.to(device), None if s.weight is None else s.weight.to(device))


def task_to(task: Task, device: torch.device | str) -> Task:
    """Move a task's tensors (or graph batches) to ``device``."""
    return Task(_samples_to(task.support, device), _samples_to(task.query, device), task.family)


class EpisodeSampler:
    """Seeded k-shot / q-query episodes, a meta-batch at a time.

    Families with fewer than ``k_shot + q_query`` samples are reported in a warning that names
    them and are not drawn; if none remain the sampler raises :class:`InputError`. Families are
    drawn uniformly (with replacement across the meta-batch); within a family, support and query
    are disjoint random subsets.

    Example:
        >>> sampler = EpisodeSampler(families, k_shot=3, q_query=7, meta_batch=8, seed=1)
        >>> state = sampler.state()          # a tensor; restore() makes the run repeat exactly
        >>> tasks = sampler.sample()

    Args:
        families: the families to draw from.
        k_shot: support samples per task.
        q_query: query samples per task.
        meta_batch: tasks per meta-batch.
        seed: seed of the sampler's own ``torch.Generator``.
        what: how the families are called in messages (``"meta-train"``).
    """

    def __init__(self, families: Sequence[Family], k_shot: int, q_query: int,
                 meta_batch: int, seed: int = 0, what: str = "meta-train") -> None:
        if k_shot < 1 or q_query < 1:
            raise InputError(f"k_shot={k_shot}, q_query={q_query}: expected at least 1 each")
        if meta_batch < 1:
            raise InputError(f"meta-batch size {meta_batch}: a meta-batch needs at least one task")
        need = k_shot + q_query
        small = [f for f in families if len(f) < need]
        self.families = [f for f in families if len(f) >= need]
        self.too_small = [(f.name, len(f)) for f in small]
        if not self.families:
            listed = ", ".join(f"{n} ({c})" for n, c in self.too_small) or "none given"
            raise InputError(f"no {what} family has the {need} samples that k_shot={k_shot} + "
                             f"q_query={q_query} need; families (samples): {listed}")
        if small:
            listed = ", ".join(f"{n} ({c})" for n, c in self.too_small)
            warnings.warn(f"{len(small)} {what} families have fewer than k_shot + q_query = "
                          f"{need} samples and are not drawn: {listed}", stacklevel=2)
        self.k_shot, self.q_query, self.meta_batch = k_shot, q_query, meta_batch
        self.generator = torch.Generator().manual_seed(int(seed))

    def state(self) -> Tensor:
        return self.generator.get_state()

    def restore(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def draw(self, family: Family) -> Task:
        """One task from ``family``."""
        return self.materialise(self._draw_index(self.families.index(family)))

    def _draw_index(self, i: int) -> tuple[int, Tensor, Tensor]:
        perm = torch.randperm(len(self.families[i]), generator=self.generator)
        return i, perm[: self.k_shot], perm[self.k_shot: self.k_shot + self.q_query]

    def sample_indices(self) -> list[tuple[int, Tensor, Tensor]]:
        """A meta-batch as (family index, support rows, query rows), without building inputs.

        Distributed ranks all draw the same indices (same seed) and build only their own
        slice of tasks (graph collation is the costly part).
        """
        picks = torch.randint(len(self.families), (self.meta_batch,), generator=self.generator)
        return [self._draw_index(i) for i in picks.tolist()]

    def materialise(self, index: tuple[int, Tensor, Tensor]) -> Task:
        """The :class:`Task` of one entry of :meth:`sample_indices`."""
        i, sup, qry = index
        family = self.families[i]
        return Task(family.samples(sup), family.samples(qry), family.name)

    def sample(self) -> list[Task]:
        """A meta-batch of ``meta_batch`` tasks."""
        return [self.materialise(ix) for ix in self.sample_indices()]


def stack_tasks(tasks: Sequence[Task]) -> tuple[Samples, Samples]:
    """Stack equally sized tensor-input tasks along a new first axis (for ``vmap``).

    Raises:
        InputError: an empty meta-batch, or graph inputs (which cannot be stacked).
    """
    if len(tasks) == 0:
        raise InputError("empty meta-batch: there are no tasks to meta-train on")

    def stack(items: list[Samples]) -> Samples:
        if not isinstance(items[0].inputs, Tensor):
            raise InputError("only tensor inputs can be stacked over tasks; use the loop path")
        w = None if items[0].weight is None else torch.stack([s.weight for s in items])
        return Samples(torch.stack([s.inputs for s in items]), torch.stack([s.y for s in items]), w)

    return stack([t.support for t in tasks]), stack([t.query for t in tasks])


def split_families(families: Sequence[Family], *, val: float | Iterable[str] = 0.0,
                   test: float | Iterable[str] = 0.0, seed: int = 0
                   ) -> tuple[list[Family], list[Family], list[Family]]:
    """Split families into meta-train / meta-validation / meta-test by their ``group``.

    Example:
        >>> train, val, test = split_families(fams, val=0.2, test=["N", "Co"], seed=0)

    Args:
        families: the families.
        val, test: a fraction of the groups (drawn at random with ``seed``), or explicit group
            names. Groups never straddle two splits.

    Returns:
        (train, val, test) lists of families.

    Raises:
        InputError: an explicit name that matches no group, or a split that leaves meta-train empty.
    """
    groups = sorted({f.group for f in families})
    gen = torch.Generator().manual_seed(int(seed))
    order = [groups[i] for i in torch.randperm(len(groups), generator=gen).tolist()]
    chosen: dict[str, set[str]] = {}
    taken: set[str] = set()
    for what, spec in (("test", test), ("val", val)):
        if isinstance(spec, (int, float)):
            if not 0 <= spec < 1:
                raise InputError(f"{what} fraction {spec}: expected a number in [0, 1)")
            n = int(round(spec * len(groups)))
            if spec > 0:
                n = max(n, 1)
            pick = [g for g in order if g not in taken][:n]
        else:
            pick = list(spec)
            unknown = sorted(set(pick) - set(groups))
            if unknown:
                raise InputError(f"{what} families {unknown} are not among the families "
                                 f"({', '.join(groups[:20])}{' ...' if len(groups) > 20 else ''})")
            both = sorted(set(pick) & taken)
            if both:
                raise InputError(f"families {both} are in both the test and validation splits")
        chosen[what] = set(pick)
        taken |= set(pick)
    train = [f for f in families if f.group not in taken]
    if not train:
        raise InputError("the split leaves no meta-train families; lower the val/test shares")
    return (train, [f for f in families if f.group in chosen["val"]],
            [f for f in families if f.group in chosen["test"]])


def most_electronegative_element(formula: str) -> str:
    """The most electronegative element of a compound (its anion family), e.g. ``"O"`` for Fe2O3.

    Pauling electronegativities from pymatgen; elements without one (noble gases) rank last.
    """
    from pymatgen.core import Composition

    comp = _composition(formula, Composition)
    els = sorted(comp.elements, key=lambda e: (e.X if e.X == e.X else -1.0, e.Z))
    return els[-1].symbol


def anion_set(formula: str) -> str:
    """The sorted anion set of a compound (``"FNO"`` for an oxyfluoronitride).

    Anions are the elements among N, O, F, P, S, Cl, Se, Br, Te, I, H, C present in the formula
    except the least electronegative one (so CO2 gives ``"O"``, not ``"CO"``), or the most
    electronegative element when that rule leaves nothing.
    """
    from pymatgen.core import Composition

    comp = _composition(formula, Composition)
    anions = {"N", "O", "F", "P", "S", "Cl", "Se", "Br", "Te", "I", "H", "C"}
    els = sorted(comp.elements, key=lambda e: (e.X if e.X == e.X else -1.0, e.Z))
    found = [e.symbol for e in els[1:] if e.symbol in anions]
    return "".join(sorted(found)) if found else els[-1].symbol


def element_system(formula: str) -> str:
    """An alloy's element system: its sorted elements joined by '-' (``"Al-Co-Cr-Fe-Ni"``)."""
    from pymatgen.core import Composition

    comp = _composition(formula, Composition)
    return "-".join(sorted(e.symbol for e in comp.elements))


def _composition(formula: str, cls: Any) -> Any:
    try:
        comp = cls(str(formula))
    except Exception as exc:  # noqa: BLE001 - pymatgen raises several types for bad formulas
        raise InputError(f"formula {formula!r}: not a chemical formula ({exc})") from exc
    if len(comp.elements) == 0:
        raise InputError(f"formula {formula!r}: no elements")
    from pymatgen.core.periodic_table import DummySpecies

    dummies = [str(e.symbol) for e in comp.elements if isinstance(e, DummySpecies)]
    if dummies:
        raise InputError(f"formula {formula!r}: not a chemical formula ({', '.join(dummies)} "
                         "is not an element)")
    return comp
