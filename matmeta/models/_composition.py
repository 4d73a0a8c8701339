"""A composition model on the functional core (registry name ``"composition"``).

Lab data on alloys is compositions, not relaxed structures. This module owns two stages:

* :func:`encode_compositions` turns a validated alloy table
  (:func:`matmeta.io.alloys.read_alloy_table`) into tensors: atomic numbers and atomic
  fractions padded to a common width, and standardised process inputs (test temperature,
  one-hot test type and processing route).
* :class:`CompositionModel` maps those tensors to one number per alloy with a pure
  ``forward(params, inputs)``: fraction-weighted learned element embeddings, plus the
  fraction-weighted mean and spread of fixed element descriptors from pymatgen, plus the process
  inputs, feeding a residual MLP with no normalisation layers (so ``torch.func.grad``,
  grad-of-grad and ``vmap`` over stacked parameters all work).

Example:
    >>> df = read_alloy_table(path, "FORMULA", "PROPERTY: YS (MPa)", process_columns=[...])
    >>> model = CompositionModel.for_table(df)              # elements and process encoding of df
    >>> params = model.init_params(torch.Generator().manual_seed(0))
    >>> inputs = encode_compositions(df, model)
    >>> pred = model.forward(params, inputs)                # (n,), in the target's model space
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from matmeta.errors import InputError, where
from matmeta.models._protocol import Params

__all__ = [
    "DESCRIPTORS",
    "CompositionInputs",
    "CompositionModel",
    "UnknownElementWarning",
    "element_descriptor_table",
    "encode_compositions",
    "fit_process_encoding",
    "pack_composition_inputs",
]

# Element descriptors that enter as fraction-weighted mean and spread; units in the names.
DESCRIPTORS: tuple[str, ...] = ("radius_A", "electronegativity", "valence_electrons",
                                "melting_point_K", "mass_u")
_MAX_Z = 118
_ACTIVATIONS = {"tanh": torch.tanh, "silu": torch.nn.functional.silu,
                "softplus": torch.nn.functional.softplus}
# Added under the square root of the descriptor variance: a pure element has zero spread.
_SPREAD_EPS = 1e-12


class UnknownElementWarning(UserWarning):
    """An element the model has no learned embedding for (never seen in training)."""


class CompositionInputs(NamedTuple):
    """Tensors for n alloys; a NamedTuple so ``torch.func`` treats it as a pytree.

    Attributes:
        z: (n, k) long, atomic numbers, padded with 0.
        fraction: (n, k) float, atomic fractions (each row sums to 1; 0 in padding).
        process: (n, p) float, standardised process inputs (p may be 0).
    """

    z: Tensor
    fraction: Tensor
    process: Tensor


def _descriptor_value(el: Any, name: str) -> float:
    if name == "radius_A":
        r = el.metallic_radius if el.metallic_radius is not None else el.atomic_radius
        return float(r) if r is not None else math.nan
    if name == "electronegativity":
        return float(el.X)
    if name == "valence_electrons":
        # Valence electron count as used for alloys (VEC): s+d electrons for groups 1-12,
        # s+p for groups 13-18; lanthanides and actinides count as group 3.
        g = int(el.group)
        return float(g if g <= 12 else g - 10)
    if name == "melting_point_K":
        return float(el.melting_point) if el.melting_point is not None else math.nan
    if name == "mass_u":
        return float(el.atomic_mass)
    raise InputError(f"element descriptor {name!r}: expected one of {', '.join(DESCRIPTORS)}")


@lru_cache(maxsize=8)
def _table(names: tuple[str, ...]) -> tuple[tuple[float, ...], ...]:
    from pymatgen.core import Element

    rows = [tuple(0.0 for _ in names)]  # Z = 0 is padding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about elements lacking data
        for z in range(1, _MAX_Z + 1):
            el = Element.from_Z(z)
            rows.append(tuple(_descriptor_value(el, n) for n in names))
    return tuple(rows)


def element_descriptor_table(names: Sequence[str] = DESCRIPTORS) -> list[list[float]]:
    """Raw element descriptors from pymatgen, one row per atomic number 0..118 (row 0 padding).

    Example:
        >>> table = element_descriptor_table(("radius_A", "electronegativity"))
        >>> table[28]            # Ni: metallic radius 1.24 A, Pauling electronegativity 1.91
        [1.24, 1.91]

    Values pymatgen lacks (noble-gas electronegativity, radii of superheavy elements) are NaN;
    :class:`CompositionModel` replaces them by the mean over elements, i.e. by 0 after
    standardisation.
    """
    for n in names:
        if n not in DESCRIPTORS:
            raise InputError(f"element descriptor {n!r}: expected one of {', '.join(DESCRIPTORS)}")
    return [list(r) for r in _table(tuple(names))]


def fit_process_encoding(df: Any, process_columns: Sequence[str] | Mapping[str, str] | None = None
                         ) -> list[dict[str, Any]]:
    """Learn how process columns become model inputs, from the training table.

    Numbers are standardised with the training mean and standard deviation; categories become
    one-hot vectors over the training categories (sorted). The result is plain JSON-able data that
    travels in the model's configuration.

    Example:
        >>> spec = fit_process_encoding(train_df)        # the columns read_alloy_table recorded
        >>> spec[0]
        {'column': 'T_C', 'kind': 'numeric', 'mean': 251.5, 'std': 402.9}

    Args:
        df: a table from :func:`~matmeta.io.alloys.read_alloy_table`.
        process_columns: columns and kinds; default: ``df.attrs["report"]["process_kinds"]``.

    Returns:
        A list with one dict per column: ``{"column", "kind": "numeric", "mean", "std"}`` or
        ``{"column", "kind": "category", "categories": [...]}``.
    """
    if process_columns is None:
        process_columns = dict(df.attrs.get("report", {}).get("process_kinds", {}))
    for col in process_columns:
        if col not in df.columns:
            raise InputError(f"process column {col!r} is not in the table; columns are "
                             f"{[str(c) for c in df.columns]}")
    if not isinstance(process_columns, Mapping):
        process_columns = {c: ("numeric" if np.issubdtype(np.asarray(df[c]).dtype, np.number)
                               else "category") for c in process_columns}
    spec: list[dict[str, Any]] = []
    for col, kind in process_columns.items():
        if kind == "numeric":
            try:
                x = np.asarray(df[col], dtype=float)
            except (TypeError, ValueError):
                x = np.array([math.nan])
            if not np.isfinite(x).all():
                raise InputError(f"process column {col!r}: empty, infinite or non-numeric values; "
                                 "expected numbers (read the table with read_alloy_table)")
            std = float(x.std())
            spec.append({"column": str(col), "kind": "numeric", "mean": float(x.mean()),
                         "std": std if std > 0 else 1.0})
        elif kind == "category":
            spec.append({"column": str(col), "kind": "category",
                         "categories": sorted({str(v) for v in df[col]})})
        else:
            raise InputError(f"process column {col!r}: kind {kind!r}; expected 'numeric' or "
                             "'category'")
    return spec


def _process_dim(spec: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 if s["kind"] == "numeric" else len(s["categories"]) for s in spec)


def encode_compositions(
    table: Any,
    model: CompositionModel | None = None,
    *,
    process: Sequence[Mapping[str, Any]] | None = None,
    elements: Sequence[str] | None = None,
    max_elements: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> CompositionInputs:
    """Turn an alloy table into :class:`CompositionInputs` (the table -> tensors stage).

    Example:
        >>> inputs = encode_compositions(df, model)                  # model's process encoding
        >>> inputs = encode_compositions(["Al0.5CoCrFeNi", "CoCrNi"])  # compositions only

    Args:
        table: a DataFrame from :func:`~matmeta.io.alloys.read_alloy_table` (uses its
            ``fractions`` and process columns), or a list of composition strings or
            ``{symbol: amount}`` dicts (then there are no process inputs).
        model: takes ``process`` and ``elements`` from it.
        process: process encoding from :func:`fit_process_encoding` (default: none).
        elements: elements with a learned embedding; others trigger an
            :class:`UnknownElementWarning` (their embedding is zero, only the descriptors inform).
        max_elements: pad width k (default: the most elements in one row). Give the same value to
            every task you want to stack for ``vmap``.
        dtype, device: of the float tensors.

    Returns:
        ``CompositionInputs(z (n, k) long, fraction (n, k), process (n, p))``.

    Raises:
        InputError: an empty table, a composition that does not parse, a row with more elements
            than ``max_elements``, a missing process column or an empty process number.
    """
    from matmeta.io.alloys import parse_composition

    if model is not None:
        process = model.process if process is None else process
        elements = model.elements if elements is None else elements
    process = list(process or [])
    is_frame = hasattr(table, "columns")
    if is_frame:
        source = table.attrs.get("report", {}).get("source", "<DataFrame>")
        if "fractions" not in table.columns:
            raise InputError(f"{source}: no 'fractions' column; expected a table from "
                             "read_alloy_table")
        row_ids = list(table["row"]) if "row" in table.columns else list(table.index)
        fractions = [_checked_fractions(f, source, r)
                     for f, r in zip(table["fractions"], row_ids, strict=True)]
    else:
        source = "<compositions>"
        items = list(table)
        row_ids = list(range(len(items)))
        fractions = [parse_composition(t, source=source, row=i) if isinstance(t, str)
                     else _normalised(t, source, i) for i, t in enumerate(items)]
        if process:
            raise InputError("process inputs need a table with the process columns "
                             f"{[s['column'] for s in process]}; got a list of compositions")
    if not fractions:
        raise InputError(f"{source}: no rows to encode; expected at least one composition")

    from pymatgen.core import Element

    width = max(len(f) for f in fractions)
    if max_elements is not None:
        if width > max_elements:
            i = next(i for i, f in enumerate(fractions) if len(f) > max_elements)
            raise InputError(f"{where(source, row_ids[i])}{len(fractions[i])} elements; expected "
                             f"at most max_elements={max_elements}")
        width = int(max_elements)
    z = np.zeros((len(fractions), width), dtype=np.int64)
    frac = np.zeros((len(fractions), width), dtype=np.float64)
    for i, f in enumerate(fractions):
        for j, (el, x) in enumerate(f.items()):
            z[i, j] = Element(el).Z
            frac[i, j] = x

    if elements is not None:
        known = set(elements)
        unseen = sorted({el for f in fractions for el in f if el not in known})
        if unseen:
            first = next(i for i, f in enumerate(fractions) if any(el not in known for el in f))
            n_rows = sum(any(el not in known for el in f) for f in fractions)
            fallback = ("the element descriptors still inform" if model is None
                        or model.descriptors else "descriptors are off, so they add nothing")
            warnings.warn(f"{where(source, row_ids[first])}element(s) {', '.join(unseen)} never "
                          f"seen in training ({n_rows} row(s)): their learned embedding is zero; "
                          f"{fallback}", UnknownElementWarning, stacklevel=2)

    columns: list[np.ndarray] = []
    for s in process:
        col = s["column"]
        if col not in table.columns:
            raise InputError(f"{source}: no process column {col!r}; the model was trained with "
                             f"{[p['column'] for p in process]}")
        if s["kind"] == "numeric":
            try:
                x = np.asarray(table[col], dtype=float)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{source}, column {col!r}: not all numbers ({exc}); expected "
                                 "numbers (read the table with read_alloy_table)") from exc
            bad = ~np.isfinite(x)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"{where(source, row_ids[i], col)}empty or infinite; expected a "
                                 "number")
            columns.append(((x - s["mean"]) / s["std"])[:, None])
        else:
            cats = list(s["categories"])
            values = [str(v) for v in table[col]]
            onehot = np.zeros((len(values), len(cats)))
            index = {c: k for k, c in enumerate(cats)}
            for i, v in enumerate(values):
                if v in index:
                    onehot[i, index[v]] = 1.0
            new = sorted({v for v in values if v not in index})
            if new:
                i = next(i for i, v in enumerate(values) if v not in index)
                warnings.warn(f"{where(source, row_ids[i], col)}categor(ies) {new} not seen in "
                              f"training (expected one of {cats}): encoded as all zeros",
                              UserWarning, stacklevel=2)
            columns.append(onehot)
    proc = np.concatenate(columns, axis=1) if columns else np.zeros((len(fractions), 0))
    return CompositionInputs(
        z=torch.as_tensor(z, device=device),
        fraction=torch.as_tensor(frac, dtype=dtype, device=device),
        process=torch.as_tensor(proc, dtype=dtype, device=device),
    )


def pack_composition_inputs(inputs: CompositionInputs) -> Tensor:
    """One float tensor ``[z, fraction, process]`` (n, 2k + p) that :class:`CompositionModel`
    also accepts.

    The meta-learning stages (families, episodes, ``vmap`` over tasks, moves between devices)
    index and stack plain tensors; packing lets composition inputs travel through them unchanged.
    Atomic numbers are stored as floats (exact up to 2**24).

    Example:
        >>> packed = pack_composition_inputs(encode_compositions(df, model))
        >>> model.forward(params, packed[:5])          # the same as the unpacked inputs
    """
    dtype = inputs.fraction.dtype
    return torch.cat([inputs.z.to(dtype), inputs.fraction, inputs.process.to(dtype)], dim=-1)


def _checked_fractions(fractions: Any, source: str, row: Any) -> dict[str, float]:
    """A ``fractions`` cell must be what read_alloy_table writes: symbols -> fractions summing
    to 1 (a hand-made table may hold anything)."""
    from pymatgen.core import Element

    ok = isinstance(fractions, Mapping) and len(fractions) > 0
    if ok:
        try:
            values = [float(v) for v in fractions.values()]
        except (TypeError, ValueError):
            values = [math.nan]
        ok = (all(isinstance(el, str) and Element.is_valid_symbol(el) for el in fractions)
              and all(v > 0 for v in values) and abs(sum(values) - 1.0) < 1e-6)
    if not ok:
        raise InputError(f"{where(source, row, 'fractions')}{str(fractions)[:80]!r}; expected "
                         "{element symbol: positive atomic fraction} summing to 1 "
                         "(read the table with read_alloy_table)")
    return dict(fractions)


def _normalised(amounts: Any, source: str, row: int) -> dict[str, float]:
    from matmeta.io.alloys import parse_composition

    if not isinstance(amounts, Mapping):
        raise InputError(f"{where(source, row)}a {type(amounts).__name__}; expected a "
                         "composition string or a {symbol: amount} dict")
    text = "".join(f"{el}{float(x):.12g}" for el, x in amounts.items())
    return parse_composition(text, source=source, row=row)


class CompositionModel:
    """Composition (+ process inputs) -> one number, as a parameter dict and a pure forward.

    For an alloy with atomic fractions ``f_i`` of elements ``z_i``::

        e = sum_i f_i E[z_i]                               learned embeddings (d)
        m = sum_i f_i D[z_i],  s = sqrt(sum_i f_i (D[z_i] - m)^2)   fixed descriptors (2 * q)
        x = [e, m, s, process]
        h_0 = act(W_in x + b_in);  h_l = h_{l-1} + act(W_l h_{l-1} + b_l)   (l = 1..depth)
        y = w_head . h_depth + b_head

    ``D`` holds pymatgen's element descriptors standardised over the elements (spread of the
    radius is the alloy's atomic size mismatch; of the valence electron count, its VEC spread).
    Sums over the element axis make the output independent of the order the elements are listed
    in, and fractions summing to 1 make ``Al0.5CoCrFeNi`` and ``Al10Co20Cr20Fe20Ni20`` the same
    input.

    Unknown elements: ``E`` has one row per element in ``elements`` (the training vocabulary).
    Any other element's embedding is exactly zero and receives no gradient (it is untrained), so
    such an alloy is described by its other elements' embeddings, diluted by its fraction, and by
    the descriptors, which cover every element; :func:`encode_compositions` warns about it. With
    ``elements=None`` every element has a row, so an element absent from the training data keeps
    its random initial row and no warning is possible: build the model with
    :meth:`for_table` (or pass the training elements) to get the zero-and-warn behaviour.

    Example:
        >>> model = CompositionModel(elements=["Al", "Co", "Cr", "Fe", "Ni"], hidden=32)
        >>> params = model.init_params(torch.Generator().manual_seed(0))
        >>> model.forward(params, encode_compositions(["Al0.5CoCrFeNi"], model))   # (1,)

    Args:
        elements: symbols with a learned embedding, normally the training elements (default:
            every element 1..118; see "Unknown elements" above).
        embedding_dim: width of the learned embeddings; 0 switches them off.
        descriptors: names from :data:`DESCRIPTORS`; an empty list switches them off.
        process: process encoding from :func:`fit_process_encoding` (default: none).
        hidden: width of the hidden layers.
        depth: number of residual blocks after the input layer.
        activation: ``"silu"``, ``"tanh"`` or ``"softplus"`` (smooth, so second derivatives
            exist).
        dtype: ``"float32"`` or ``"float64"`` for the parameters.
        descriptor_table: raw descriptor values per atomic number 0..118 (default: read from
            pymatgen; ``None`` or NaN where pymatgen has no value); saved in the configuration
            so a checkpoint does not depend on the installed pymatgen's data.

    Shapes:
        inputs: :class:`CompositionInputs` with z (n, k), fraction (n, k), process (n, p);
        output: (n,); :meth:`features`: (n, hidden).
    """

    name = "composition"

    def __init__(self, elements: Sequence[str] | None = None, embedding_dim: int = 16,
                 descriptors: Sequence[str] = DESCRIPTORS,
                 process: Sequence[Mapping[str, Any]] | None = None, hidden: int = 64,
                 depth: int = 2, activation: str = "silu", dtype: str = "float32",
                 descriptor_table: Sequence[Sequence[float]] | None = None) -> None:
        from pymatgen.core import Element

        if elements is None:
            elements = [Element.from_Z(z).symbol for z in range(1, _MAX_Z + 1)]
        for el in elements:
            if not isinstance(el, str) or not Element.is_valid_symbol(el):
                raise InputError(f"CompositionModel elements: {el!r} is not an element symbol")
        if int(embedding_dim) < 0 or int(hidden) < 1 or int(depth) < 0:
            raise InputError(f"CompositionModel embedding_dim={embedding_dim}, hidden={hidden}, "
                             f"depth={depth}: expected embedding_dim >= 0, hidden >= 1, "
                             "depth >= 0")
        if activation not in _ACTIVATIONS:
            raise InputError(f"CompositionModel activation {activation!r}: expected one of "
                             f"{', '.join(sorted(_ACTIVATIONS))}")
        if dtype not in ("float32", "float64"):
            raise InputError(f"CompositionModel dtype {dtype!r}: expected 'float32' or 'float64'")
        self.elements = sorted(set(elements), key=lambda s: Element(s).Z)
        self.embedding_dim = int(embedding_dim)
        if self.embedding_dim and not self.elements:
            raise InputError("CompositionModel elements: empty; expected the training elements "
                             "(or embedding_dim=0 for descriptors only)")
        self.descriptors = tuple(descriptors)
        self.process = [dict(s) for s in (process or [])]
        for s in self.process:
            if s.get("kind") not in ("numeric", "category") or "column" not in s:
                raise InputError(f"CompositionModel process entry {s!r}: expected one from "
                                 "fit_process_encoding")
        self.hidden = int(hidden)
        self.depth = int(depth)
        self.activation = activation
        self.dtype = dtype
        if not self.descriptors:
            self.descriptor_table: list[list[float]] = []
        elif descriptor_table is None:
            self.descriptor_table = element_descriptor_table(self.descriptors)
        else:
            self.descriptor_table = [[math.nan if v is None else float(v) for v in row]
                                     for row in descriptor_table]
            if (len(self.descriptor_table) != _MAX_Z + 1
                    or any(len(r) != len(self.descriptors) for r in self.descriptor_table)):
                raise InputError(f"CompositionModel descriptor_table: expected {_MAX_Z + 1} rows "
                                 f"of {len(self.descriptors)} values")
        if self.embedding_dim == 0 and not self.descriptors and not self.process:
            raise InputError("CompositionModel: no inputs (embedding_dim=0, no descriptors, no "
                             "process columns)")
        self.in_dim = self.embedding_dim + 2 * len(self.descriptors) + _process_dim(self.process)

        # Constants, never parameters: the meta-learners adapt every entry of the param dict.
        row = torch.zeros(_MAX_Z + 1, dtype=torch.long)
        known = torch.zeros(_MAX_Z + 1)
        for k, el in enumerate(self.elements):
            row[Element(el).Z] = k
            known[Element(el).Z] = 1.0
        self._row, self._known = row, known
        self._desc = self._standardised_descriptors()

    @classmethod
    def for_table(cls, df: Any, **kwargs: Any) -> CompositionModel:
        """A model whose element vocabulary and process encoding come from a training table.

        Example:
            >>> model = CompositionModel.for_table(train_df, hidden=64)
        """
        elements = sorted({el for f in df["fractions"] for el in f})
        kwargs.setdefault("process", fit_process_encoding(df))
        return cls(elements=elements, **kwargs)

    def _standardised_descriptors(self) -> Tensor:
        if not self.descriptors:
            return torch.zeros(_MAX_Z + 1, 0, dtype=torch.float64)
        raw = np.asarray(self.descriptor_table, dtype=np.float64)[1:]
        mean = np.nanmean(raw, axis=0)
        std = np.nanstd(raw, axis=0)
        std[~(std > 0)] = 1.0
        z = (raw - mean) / std
        z[~np.isfinite(z)] = 0.0  # missing data -> the element average
        return torch.as_tensor(np.vstack([np.zeros((1, raw.shape[1])), z]))

    def __repr__(self) -> str:
        return (f"CompositionModel(elements={len(self.elements)}, "
                f"embedding_dim={self.embedding_dim}, descriptors={list(self.descriptors)}, "
                f"process_dim={_process_dim(self.process)}, hidden={self.hidden}, "
                f"depth={self.depth}, activation={self.activation!r})")

    def config(self) -> dict[str, Any]:
        return {"elements": list(self.elements), "embedding_dim": self.embedding_dim,
                "descriptors": list(self.descriptors), "process": [dict(s) for s in self.process],
                "hidden": self.hidden, "depth": self.depth, "activation": self.activation,
                "dtype": self.dtype,
                # Missing values as None: NaN is not JSON and never equals itself.
                "descriptor_table": [[None if math.isnan(v) else v for v in r]
                                     for r in self.descriptor_table]}

    def head_names(self) -> list[str]:
        """The output layer's parameter names (what ANIL adapts)."""
        return ["head.weight", "head.bias"]

    def init_params(self, generator: torch.Generator | None = None) -> Params:
        """torch.nn.Linear's uniform rule; embeddings N(0, 1); residual blocks start small.

        The residual blocks' weights are scaled by ``1 / sqrt(depth + 1)`` so the hidden
        activations keep their size as depth grows (no normalisation layer does it for us).
        """
        dtype = getattr(torch, self.dtype)

        def uniform(shape: tuple[int, ...], bound: float) -> Tensor:
            return (2 * torch.rand(shape, generator=generator, dtype=dtype) - 1) * bound

        params: Params = {}
        if self.embedding_dim:
            params["embedding"] = torch.randn(len(self.elements), self.embedding_dim,
                                              generator=generator, dtype=dtype)
        b = 1.0 / math.sqrt(self.in_dim)
        params["input.weight"] = uniform((self.hidden, self.in_dim), b)
        params["input.bias"] = uniform((self.hidden,), b)
        b = 1.0 / math.sqrt(self.hidden)
        for i in range(self.depth):
            params[f"blocks.{i}.weight"] = uniform((self.hidden, self.hidden), b) / math.sqrt(
                self.depth + 1)
            params[f"blocks.{i}.bias"] = uniform((self.hidden,), b)
        params["head.weight"] = uniform((1, self.hidden), b)
        params["head.bias"] = uniform((1,), b)
        return params

    def unpack(self, packed: Tensor) -> CompositionInputs:
        """:class:`CompositionInputs` from a tensor made by :func:`pack_composition_inputs`."""
        p = _process_dim(self.process)
        width = packed.shape[-1] - p
        if width < 2 or width % 2:
            raise InputError(f"packed composition inputs have {packed.shape[-1]} columns; "
                             f"expected 2 * elements + {p} process inputs for this model")
        k = width // 2
        return CompositionInputs(packed[..., :k].round().long(), packed[..., k:2 * k],
                                 packed[..., 2 * k:])

    def features(self, params: Params, inputs: CompositionInputs | Tensor) -> Tensor:
        """The last hidden layer, (n, hidden): what a Bayesian or refitted head sits on.

        ``inputs`` is :class:`CompositionInputs` or the same packed into one tensor
        (:func:`pack_composition_inputs`).
        """
        if isinstance(inputs, Tensor):
            inputs = self.unpack(inputs)
        w = params["input.weight"]
        z = inputs.z
        frac = inputs.fraction.to(w.dtype).unsqueeze(-1)  # (n, k, 1)
        parts = []
        if self.embedding_dim:
            known = self._known.to(device=z.device, dtype=w.dtype)[z].unsqueeze(-1)
            emb = params["embedding"][self._row.to(z.device)[z]] * known  # (n, k, d)
            parts.append((frac * emb).sum(-2))
        if self.descriptors:
            d = self._desc.to(device=z.device, dtype=w.dtype)[z]  # (n, k, q)
            mean = (frac * d).sum(-2)
            var = (frac * (d - mean.unsqueeze(-2)) ** 2).sum(-2)
            parts += [mean, torch.sqrt(var + _SPREAD_EPS)]
        if self.process:
            parts.append(inputs.process.to(w.dtype))
        x = torch.cat(parts, dim=-1)
        if x.shape[-1] != self.in_dim:
            raise InputError(f"composition inputs give {x.shape[-1]} features, the model expects "
                             f"{self.in_dim} (process inputs {inputs.process.shape[-1]}, expected "
                             f"{_process_dim(self.process)}); encode them with this model")
        act = _ACTIVATIONS[self.activation]
        h = act(x @ w.T + params["input.bias"])
        for i in range(self.depth):
            h = h + act(h @ params[f"blocks.{i}.weight"].T + params[f"blocks.{i}.bias"])
        return h

    def forward(self, params: Params, inputs: CompositionInputs | Tensor) -> Tensor:
        """Predictions (n,) in the model's target space (wrap a TargetTransform around it)."""
        h = self.features(params, inputs)
        return (h @ params["head.weight"].T + params["head.bias"]).squeeze(-1)
