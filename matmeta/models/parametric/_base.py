"""The base of every physics-parametric model: named parameters, transforms, priors.

A parametric law is a :class:`~matmeta.models.FunctionalModel` whose parameters are few, named
and physical. Each parameter is stored in an unconstrained (transformed) space so that gradient
steps, Levenberg-Marquardt steps and Gaussian priors never leave the physical domain: a positive
quantity as its logarithm, a fraction in (0, 1) as its logit, a signed one as itself.

Prior files
-----------
A prior is a Gaussian over the *transformed* parameters, stored as a small JSON file::

    {
      "format": "matmeta-prior",
      "version": 1,
      "model": "jmak",                      # registry name of the model it belongs to
      "model_config": {"fit_t0": false},    # optional: constructor arguments, checked if present
      "names": ["ln_k", "ln_n"],            # flat parameter names in the model's order
      "mean": [-9.2, 0.5],
      "cov": [[4.0, 0.0], [0.0, 0.25]],     # or "std": [2.0, 0.5] for a diagonal prior
      "noise_std": 0.05                     # optional: std of one measurement (fraction units)
    }

The same keys in a dict saved with :func:`torch.save` (tensors allowed) load too, with
``weights_only=True``. :meth:`Prior.load` refuses a prior written for another model, or with other
parameter names, in one line. The meta-learning engine writes these files from meta-learned
initial parameters (mean) and their spread across families (covariance).

Example:
    >>> prior = Prior.from_std("jmak", ["ln_k", "ln_n"], mean=[-9.0, 0.7], std=[3.0, 0.5])
    >>> prior.save("prior.json")
    >>> Prior.load("prior.json", model=JMAK())   # checks the model and the names
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from matmeta.checkpoint import atomic_write_text
from matmeta.errors import InputError
from matmeta.models._protocol import Params

__all__ = ["ParamSpec", "ParametricModel", "Prior", "TRANSFORMS"]

TRANSFORMS = ("log", "logit", "none")


@dataclass(frozen=True)
class ParamSpec:
    """One named parameter of a parametric law.

    Attributes:
        name: key in the parameter dict (the transformed value), e.g. ``"ln_k"``.
        physical_name: name of the physical value with its unit, e.g. ``"k_per_s"``.
        unit: unit of the physical value, e.g. ``"1/s"`` (``""`` if dimensionless).
        transform: ``"log"`` (positive), ``"logit"`` (in (0, 1)) or ``"none"`` (any sign).
        default: default physical value (used by ``init_params`` without a prior).
        size: 0 for a scalar, otherwise the length of a vector parameter (one per temperature).
    """

    name: str
    physical_name: str
    unit: str
    transform: str
    default: float
    size: int = 0

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"{self.name}: transform must be one of {TRANSFORMS}")

    @property
    def numel(self) -> int:
        return max(self.size, 1)

    def forward_transform(self, physical: Tensor) -> Tensor:
        """Physical value -> stored (transformed) value."""
        if self.transform == "log":
            return torch.log(physical)
        if self.transform == "logit":
            return torch.log(physical) - torch.log1p(-physical)
        return physical

    def inverse_transform(self, value: Tensor) -> Tensor:
        """Stored (transformed) value -> physical value."""
        if self.transform == "log":
            return torch.exp(value)
        if self.transform == "logit":
            return torch.sigmoid(value)
        return value

    def check_physical(self, value: Tensor) -> None:
        bad = (~torch.isfinite(value)).any()
        if self.transform == "log":
            bad = bad | (value <= 0).any()
        elif self.transform == "logit":
            bad = bad | (value <= 0).any() | (value >= 1).any()
        if bool(bad):
            domain = {"log": "> 0", "logit": "in (0, 1)", "none": "finite"}[self.transform]
            raise InputError(f"{self.physical_name}: expected a value {domain}, "
                             f"got {value.tolist()}")


@dataclass
class Prior:
    """A Gaussian prior over a model's flat transformed parameter vector.

    Attributes:
        model: registry name of the model (``"jmak"``, ``"arrhenius_jmak"``, ...).
        names: flat parameter names in the model's order (``"ln_n[1]"`` for vector entries).
        mean: (P,) prior mean in transformed space.
        cov: (P, P) prior covariance in transformed space (symmetric positive definite).
        noise_std: std of one measurement in the target's units, used to weigh the data against
            the prior when the data carry no per-point std; ``None`` leaves it to the caller.
        model_config: constructor arguments the prior was made for (checked when given).
    """

    model: str
    names: list[str]
    mean: Tensor
    cov: Tensor
    noise_std: float | None = None
    model_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64).reshape(-1)
        self.cov = torch.as_tensor(self.cov, dtype=torch.float64)
        p = len(self.names)
        if self.mean.shape != (p,) or self.cov.shape != (p, p):
            raise InputError(
                f"prior for {self.model!r}: {p} names but mean has shape {tuple(self.mean.shape)} "
                f"and cov {tuple(self.cov.shape)}; expected ({p},) and ({p}, {p})"
            )
        if not (torch.isfinite(self.mean).all() and torch.isfinite(self.cov).all()):
            raise InputError(f"prior for {self.model!r}: mean and cov must be finite")
        if not torch.allclose(self.cov, self.cov.T, rtol=1e-8, atol=1e-12):
            raise InputError(f"prior for {self.model!r}: cov must be symmetric")
        _, info = torch.linalg.cholesky_ex(self.cov)
        if int(info) != 0:
            raise InputError(f"prior for {self.model!r}: cov must be positive definite")
        ok_noise = self.noise_std is None or (self.noise_std > 0 and math.isfinite(self.noise_std))
        if not ok_noise:
            raise InputError(f"prior for {self.model!r}: noise_std must be positive")

    @classmethod
    def from_std(cls, model: str, names: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], noise_std: float | None = None,
                 model_config: dict[str, Any] | None = None) -> Prior:
        """A diagonal prior from per-parameter standard deviations (transformed space).

        Example:
            >>> Prior.from_std("jmak", ["ln_k", "ln_n"], [-9.0, 0.7], [3.0, 0.5]).std
            tensor([3.0000, 0.5000], dtype=torch.float64)
        """
        std_t = torch.as_tensor(std, dtype=torch.float64)
        if (std_t <= 0).any() or not torch.isfinite(std_t).all():
            raise InputError(f"prior for {model!r}: std must be positive and finite")
        return cls(model, list(names), torch.as_tensor(mean, dtype=torch.float64),
                   torch.diag(std_t**2), noise_std, dict(model_config or {}))

    @property
    def std(self) -> Tensor:
        return self.cov.diagonal().sqrt()

    @property
    def precision_sqrt(self) -> Tensor:
        """``W`` with ``W.T @ W = cov^-1``, so the prior residual is ``W @ (theta - mean)``."""
        chol = torch.linalg.cholesky(self.cov)
        eye = torch.eye(len(self.names), dtype=self.cov.dtype)
        return torch.linalg.solve_triangular(chol, eye, upper=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "matmeta-prior", "version": 1, "model": self.model,
            "model_config": self.model_config, "names": list(self.names),
            "mean": self.mean.tolist(), "cov": self.cov.tolist(), "noise_std": self.noise_std,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "prior") -> Prior:
        for key in ("model", "names", "mean"):
            if key not in d:
                raise InputError(f"{source}: prior lacks the key {key!r}")
        if "cov" in d:
            cov = torch.as_tensor(d["cov"], dtype=torch.float64)
        elif "std" in d:
            std = torch.as_tensor(d["std"], dtype=torch.float64).reshape(-1)
            if (std <= 0).any():
                raise InputError(f"{source}: prior std must be positive")
            cov = torch.diag(std**2)
        else:
            raise InputError(f"{source}: prior needs 'cov' or 'std'")
        try:
            return cls(str(d["model"]), [str(n) for n in d["names"]], d["mean"], cov,
                       None if d.get("noise_std") is None else float(d["noise_std"]),
                       dict(d.get("model_config") or {}))
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the prior as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike, model: ParametricModel | None = None) -> Prior:
        """Read a prior file (JSON, or a weights_only torch file); check it fits ``model``."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such prior file")
        raw = path.read_bytes()
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            try:
                d = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - torch raises many types here
                # (not torch's message: it advises loading with weights_only=False, which
                # would let the file run code)
                raise InputError(f"{path}: not a prior file (neither JSON nor a torch file "
                                 "holding only tensors and plain values)") from None
        if isinstance(d, dict) and "matmeta_kind" in d:
            raise InputError(f"{path}: a matmeta {d['matmeta_kind']!r} checkpoint, not a prior; "
                             "`matmeta meta-train --prior PRIOR.json` writes the prior file")
        if not isinstance(d, dict):
            raise InputError(f"{path}: a prior file must hold an object with model, names, mean")
        prior = cls.from_dict(d, source=str(path))
        if model is not None:
            prior.check(model, source=str(path))
        return prior

    def check(self, model: ParametricModel, source: str = "prior") -> None:
        """Refuse a prior made for another model or other parameters (one-line InputError)."""
        if self.model != model.name:
            raise InputError(f"{source}: prior is for model {self.model!r}, not {model.name!r}")
        if list(self.names) != model.flat_names:
            raise InputError(f"{source}: prior parameters {self.names} do not match "
                             f"{model.name!r} parameters {model.flat_names}")


class ParametricModel:
    """Base of physics-parametric laws: a :class:`~matmeta.models.FunctionalModel` with
    named, unit-carrying, transformed parameters.

    Subclasses set ``name``, return their :class:`ParamSpec` list from :meth:`param_specs` and
    implement the pure :meth:`forward`. Everything else (flattening, physical values, priors,
    generic Jacobians and multi-start guesses) comes from here.

    Example:
        >>> model = JMAK()
        >>> params = model.from_physical(k_per_s=1e-3, n=2.0)
        >>> model.to_physical(params)["n"]
        tensor(2., dtype=torch.float64)
    """

    name: str = "parametric"
    # Starts of one curve that come within this distance of each other in every transformed
    # parameter are taken to head for the same minimum, and the fitter stops the costlier one
    # (see matmeta.fitting._lm). None (the default): every start runs to its end. A law sets it
    # only where its transformed parameters share a scale and the merging was checked on it.
    fit_merge_tol: float | None = None

    def __init__(self, prior: Prior | dict | None = None) -> None:
        if isinstance(prior, dict):
            prior = Prior.from_dict(prior)
        if prior is not None:
            prior.check(self)
        self.prior = prior

    # -- subclass interface -------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        raise NotImplementedError

    def forward(self, params: Params, inputs: Any) -> Tensor:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {}

    # -- FunctionalModel -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able); a prior travels as its dict."""
        cfg = self._config()
        if self.prior is not None:
            cfg["prior"] = self.prior.to_dict()
        return cfg

    def init_params(self, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float64) -> Params:
        """The prior mean if the model has a prior, else the specs' default physical values.

        ``generator`` is accepted for the protocol; parametric laws start from a deterministic
        physical guess rather than random numbers.
        """
        if self.prior is not None:
            return self.unflatten(self.prior.mean.to(dtype))
        out: Params = {}
        for s in self.param_specs():
            val = torch.full((s.size,) if s.size else (), float(s.default), dtype=dtype)
            out[s.name] = s.forward_transform(val)
        return out

    def predict(self, params: Params, inputs: Any) -> Tensor:
        """Alias of :meth:`forward` (the name the issue tracker and users use)."""
        return self.forward(params, inputs)

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({cfg})"

    # -- names and flattening -----------------------------------------------------------------
    @property
    def specs(self) -> list[ParamSpec]:
        return self.param_specs()

    @property
    def param_names(self) -> list[str]:
        return [s.name for s in self.param_specs()]

    @property
    def flat_names(self) -> list[str]:
        """One name per scalar: ``"ln_n[0]"``, ``"ln_n[1]"`` for vector parameters."""
        names = []
        for s in self.param_specs():
            names += [f"{s.name}[{i}]" for i in range(s.size)] if s.size else [s.name]
        return names

    @property
    def num_params(self) -> int:
        return sum(s.numel for s in self.param_specs())

    def flat_specs(self) -> list[tuple[str, ParamSpec, int | None]]:
        """(flat name, spec, index in the vector or None) for each scalar parameter."""
        out = []
        for s in self.param_specs():
            if s.size:
                out += [(f"{s.name}[{i}]", s, i) for i in range(s.size)]
            else:
                out.append((s.name, s, None))
        return out

    def flatten(self, params: Params) -> Tensor:
        """Parameter dict -> tensor (..., P) in :attr:`flat_names` order."""
        parts = []
        for s in self.param_specs():
            v = params[s.name]
            parts.append(v if s.size else v.unsqueeze(-1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, theta: Tensor) -> Params:
        """Tensor (..., P) -> parameter dict (views, no copies)."""
        out: Params = {}
        i = 0
        for s in self.param_specs():
            if s.size:
                out[s.name] = theta[..., i:i + s.size]
            else:
                out[s.name] = theta[..., i]
            i += s.numel
        return out

    # -- physical values -----------------------------------------------------------------------
    def to_physical(self, params: Params) -> dict[str, Tensor]:
        """Transformed params -> physical values keyed by physical name (``k_per_s``, ``n``)."""
        return {s.physical_name: s.inverse_transform(params[s.name]) for s in self.param_specs()}

    def from_physical(self, dtype: torch.dtype = torch.float64, **values: Any) -> Params:
        """Physical values (by physical name) -> transformed params; all parameters required.

        Example:
            >>> JMAK(fit_t0=True).from_physical(k_per_s=1e-3, n=2.0, t0_s=60.0)["ln_t0_s"]
            tensor(4.0943, dtype=torch.float64)
        """
        specs = self.param_specs()
        missing = [s.physical_name for s in specs if s.physical_name not in values]
        extra = sorted(set(values) - {s.physical_name for s in specs})
        if missing or extra:
            raise InputError(f"{self.name}: from_physical needs exactly "
                             f"{[s.physical_name for s in specs]} (missing {missing}, "
                             f"unknown {extra})")
        out: Params = {}
        for s in specs:
            v = torch.as_tensor(values[s.physical_name], dtype=dtype)
            s.check_physical(v)
            out[s.name] = s.forward_transform(v)
        return out

    def physical_jacobian_diag(self, theta: Tensor) -> Tensor:
        """d(physical)/d(transformed) for each flat parameter, shape like ``theta``."""
        cols = []
        for j, (_, s, _) in enumerate(self.flat_specs()):
            v = theta[..., j]
            if s.transform == "log":
                cols.append(torch.exp(v))
            elif s.transform == "logit":
                sg = torch.sigmoid(v)
                cols.append(sg * (1 - sg))
            else:
                cols.append(torch.ones_like(v))
        return torch.stack(cols, dim=-1)

    def physical_flat(self, theta: Tensor) -> Tensor:
        """Physical values for each flat parameter, shape like ``theta``."""
        cols = [s.inverse_transform(theta[..., j]) for j, (_, s, _) in
                enumerate(self.flat_specs())]
        return torch.stack(cols, dim=-1)

    def derived(self, params: Params) -> dict[str, Tensor]:
        """Derived physical outputs (``t_half_s`` for JMAK); pure, so their standard errors come
        from autograd. Base: none."""
        return {}

    # -- fitting support -----------------------------------------------------------------------
    def value_and_jacobian(self, theta: Tensor, inputs: Any) -> tuple[Tensor, Tensor]:
        """Predictions (B, N) and their Jacobian (B, N, P) for a batch of flat parameters.

        ``inputs`` carries a leading batch dimension B (a tensor or a tuple of tensors). The
        generic version uses ``torch.func.jacfwd`` under ``vmap``; laws with few parameters
        override it with a closed form (the batched fitter's hot loop).
        """
        def f(th: Tensor, x: Any) -> Tensor:
            return self.forward(self.unflatten(th), x)

        def fj(th: Tensor, x: Any) -> tuple[Tensor, Tensor]:
            def with_aux(t: Tensor) -> tuple[Tensor, Tensor]:
                y = f(t, x)
                return y, y

            jac, val = torch.func.jacfwd(with_aux, has_aux=True)(th)
            return val, jac

        return torch.func.vmap(fj)(theta, inputs)

    def fit_inputs(self, inputs: Any) -> Any:
        """Inputs precomputed once per fit for :meth:`fit_value_and_jacobian` (default: as is)."""
        return inputs

    def fit_value_and_jacobian(self, theta: Tensor, prepared: Any) -> tuple[Tensor, Tensor]:
        """Values (B, N) and the *transposed* Jacobian (B, P, N) on :meth:`fit_inputs` output
        (the fitter's hot loop)."""
        f, jac = self.value_and_jacobian(theta, prepared)
        return f, jac.transpose(1, 2)

    def fit_normal_equations(self, theta: Tensor, prepared: Any, y: Tensor, sqrt_w: Tensor
                             ) -> tuple[Tensor, Tensor, Tensor] | None:
        """Optionally fused ``(sum(r^2), J^T J, J^T r)`` for ``r = sqrt_w (f - y)``; None (the
        default) makes the fitter build them from :meth:`fit_value_and_jacobian`."""
        return None

    def fit_targets(self, y: Tensor, sqrt_w: Tensor) -> Any:
        """Optionally, what :meth:`fit_gram` takes of the targets ``y`` and the residual weights
        ``sqrt_w`` (both (B, N)), computed once per fit (e.g. the part of the residuals that
        does not depend on the parameters). None (the default): the law has no fused Gram
        matrix, and the fitter builds it from :meth:`fit_normal_equations` or
        :meth:`fit_value_and_jacobian`."""
        return None

    def fit_gram(self, theta: Any, prepared: Any, targets: Any, sqrt_w: Any) -> Any:
        """The fused Gram matrix of ``[J | r]`` for ``r = sqrt_w (f - y)``, the one array the
        batched fitter's loop carries per curve, for laws whose :meth:`fit_targets` is not
        None (the fitter calls it only then).

        Batch-last, in the loop's namespace (numpy arrays on the CPU, torch tensors
        elsewhere; see :mod:`matmeta.fitting`): ``theta`` (P, B), ``prepared`` (N, ..., B)
        (:meth:`fit_inputs` output with the batch moved last), ``targets`` (N, B) (from
        :meth:`fit_targets`, batch moved last) and ``sqrt_w`` (N, B). Returns
        ``[[J^T J, J^T r], [r^T J, r^T r]]`` flattened row-major, ((P+1)^2, B).
        """
        raise NotImplementedError

    def fit_valley_direction(self, theta: Any, step: Any) -> Any:
        """Optionally, for fits that creep (many small accepted steps), which ones run along a
        flat valley of the law (a parameter running off to infinity or zero while the
        objective keeps falling): an array (R,) of +1 or -1 (the valley's two ends) or 0 (not
        in one), from ``theta`` (P, R) and each fit's last step (P, R), batch-last as in
        :meth:`fit_gram`. None (the default): the law has no such valley."""
        return None

    def fit_valley_jump(self, theta: Any, direction: Any, prepared: Any, sqrt_w: Any) -> Any:
        """Far points (P, R) along the valleys :meth:`fit_valley_direction` found (``direction``
        (R,) +1 or -1; data batch-last as in :meth:`fit_gram`). The fitter keeps a jump only
        where it lowers the objective."""
        raise NotImplementedError

    def fit_determining_points(self, theta: Tensor, inputs: Any, weight: Tensor
                               ) -> Tensor | None:
        """Optionally, how many of each fitted curve's points (weight > 0) lie where the curve
        still moves, (B,) from ``theta`` (B, P) and padded ``inputs``: a fit without a prior
        through fewer than two such points is reported poorly determined, whatever its
        standard errors say (a step fitted exactly by a near-vertical curve has tiny ones).
        None (the default): no such test for the law."""
        return None

    def prior_starts(self, inputs: Any, y: Tensor, weight: Tensor, prior: Prior) -> Tensor:
        """Starts (B, S, P) for a MAP fit whose data alone would not do (where
        :meth:`initial_guesses` refuses them, e.g. an Arrhenius law from one isotherm): by
        default the prior's mean; laws override it to read what the data do say."""
        return prior.mean.to(y).expand(y.shape[0], 1, -1).clone()

    def initial_guesses(self, inputs: Any, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """Starting points for a multi-start fit: (B, S, P) for batched padded curves.

        ``inputs`` and ``y`` carry a leading batch dimension B; ``weight`` (B, N) is zero on
        padding. The base offers the default parameters only; laws override it with guesses
        read from the data.
        """
        b = y.shape[0]
        theta = self.flatten(self.init_params(dtype=y.dtype)).to(y.device)
        return theta.expand(b, 1, -1).clone()
