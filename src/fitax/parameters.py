"""Parameters as pytree leaves, and the map between a model pytree and a flat vector.

A model is any pytree (an ``equinox.Module``, a dict, a tuple, ...) some of whose leaves are
:class:`Parameter` objects. Everything about a parameter except its value (bounds, frozen
flag, prior, unit, tie) is *static* pytree metadata, so it is fixed at trace time and a jitted
fit compiles once per model structure, while the values flow through ``jit``/``vmap``/``grad``.

:class:`ParameterSpace` turns the free parameters of a model into a flat vector and back. The
optimisers work in an *internal* space where every free parameter starts at 0 with a local
scale of 1 and bounds are removed by a smooth transform (a :mod:`fitax.bijectors` bijector per
kind of bound), so a 1e-12 amplitude next to an O(1) index is as easy to fit as two O(1)
numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .bijectors import Blockwise

__all__ = [
    "Parameter",
    "Prior",
    "GaussianPrior",
    "UniformPrior",
    "ParameterSpace",
    "is_parameter",
    "get_parameter",
    "with_value",
    "parameter_names",
    "parameters_dict",
    "free_parameter_names",
    "tie",
    "freeze",
    "thaw",
    "set_values",
    "value_of",
]


# --------------------------------------------------------------------------------------- priors
@dataclasses.dataclass(frozen=True)
class Prior:
    """A prior on one parameter, added to the objective as ``errordef * (-2 log p)``.

    Priors are frozen dataclasses (hashable) because they are static parameter metadata.
    """

    def neg2_log_density(self, value: Float[Array | np.ndarray, "*batch"]) -> Float[Array, "*batch"]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class GaussianPrior(Prior):
    """Normal prior ``N(mu, sigma)``: adds ``((value - mu) / sigma)**2`` (times errordef)."""

    mu: float
    sigma: float

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"GaussianPrior: sigma must be > 0, got {self.sigma}")

    def neg2_log_density(self, value: Float[Array | np.ndarray, "*batch"]) -> Float[Array, "*batch"]:
        return jnp.asarray(((value - self.mu) / self.sigma) ** 2)


@dataclasses.dataclass(frozen=True)
class UniformPrior(Prior):
    """Flat prior on ``[min, max]``: adds nothing inside; use it together with bounds."""

    min: float
    max: float

    def neg2_log_density(self, value: Float[Array | np.ndarray, "*batch"]) -> Float[Array, "*batch"]:
        return jnp.zeros_like(value)


# ------------------------------------------------------------------------------------ Parameter
class Parameter(eqx.Module):
    """A fit parameter: a value plus static metadata.

    Args:
        value: start (or current) value; a scalar, or an array with a leading batch axis in
            :func:`fitax.fit_batch`.
        min, max: optional bounds, honoured by every optimiser through smooth transforms.
        frozen: keep the value fixed in fits.
        prior: optional :class:`Prior` added to the objective.
        unit: unit string (astropy syntax), carried to results tables.
        tied_to: dotted name of another parameter whose value this one takes (joint fits);
            set it with :func:`tie`.
        scale: typical size of changes, used to scale the internal optimisation space;
            defaults to ``|value|`` (or 1 when the value is 0).

    Example:
        >>> import fitax
        >>> fitax.Parameter(2e-11, min=0, unit="TeV-1 s-1 cm-2")
        Parameter(2e-11, min=0.0, unit='TeV-1 s-1 cm-2')
    """

    value: Float[Array | np.ndarray, "*batch"]
    min: float | None = eqx.field(default=None, static=True)
    max: float | None = eqx.field(default=None, static=True)
    frozen: bool = eqx.field(default=False, static=True)
    prior: Prior | None = eqx.field(default=None, static=True)
    unit: str | None = eqx.field(default=None, static=True)
    tied_to: str | None = eqx.field(default=None, static=True)
    scale: float | None = eqx.field(default=None, static=True)

    def __init__(
        self,
        value,
        min=None,
        max=None,
        frozen=False,
        prior=None,
        unit=None,
        tied_to=None,
        scale=None,
    ):
        if hasattr(value, "unit") and hasattr(value, "value"):  # astropy Quantity
            if unit is None:
                unit = value.unit
            value = value.to_value(unit)
        self.value = _as_value(value)
        self.min = None if min is None else float(min)
        self.max = None if max is None else float(max)
        self.frozen = bool(frozen)
        if prior is not None and not isinstance(prior, Prior):
            raise TypeError(f"prior must be a fitax.Prior, got {type(prior).__name__}")
        self.prior = prior
        self.unit = None if unit is None else str(unit)
        self.tied_to = tied_to
        self.scale = None if scale is None else float(scale)
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"Parameter bounds must satisfy min < max, got [{self.min}, {self.max}]")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"Parameter scale must be > 0, got {self.scale}")

    def __repr__(self) -> str:
        try:
            value = np.asarray(self.value)
            shown = f"{float(value):.6g}" if value.ndim == 0 else f"array{value.shape}"
        except Exception:  # traced value
            shown = "<traced>"
        parts = [shown]
        for field in ("min", "max"):
            if getattr(self, field) is not None:
                parts.append(f"{field}={getattr(self, field)!r}")
        if self.frozen:
            parts.append("frozen=True")
        if self.prior is not None:
            parts.append(f"prior={self.prior!r}")
        if self.unit is not None:
            parts.append(f"unit={self.unit!r}")
        if self.tied_to is not None:
            parts.append(f"tied_to={self.tied_to!r}")
        return f"Parameter({', '.join(parts)})"

    @property
    def is_free(self) -> bool:
        return not self.frozen and self.tied_to is None


def _as_value(value):
    """A parameter value as float64. Host values stay NumPy: building and updating
    Parameters (results, model set-up) is then free of per-scalar device transfers, which
    cost ~50 us each and dominated small fits; jit and jnp take NumPy leaves as they are."""
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return value if value.dtype == jnp.float64 else jnp.asarray(value, dtype=float)
    return np.asarray(value, dtype=float)


def with_value(parameter: Parameter, value) -> Parameter:
    """``parameter`` with another value and the same (already validated) metadata; without
    re-running ``__init__``, which costs ~100 us per Parameter in equinox."""
    new = object.__new__(type(parameter))
    # the instance dict holds exactly the dataclass fields (equinox Modules have no slots);
    # copying it is ~10x cheaper than a getattr/setattr per field through Module's hooks
    new.__dict__.update(parameter.__dict__)
    new.__dict__["value"] = _as_value(value)
    return new


def is_parameter(x: Any) -> bool:
    """Whether ``x`` is a :class:`Parameter`: the ``is_leaf`` that makes ``jax.tree_util``
    functions see Parameters as leaves instead of descending to their values."""
    return isinstance(x, Parameter)


def value_of(x: Parameter | ArrayLike) -> ArrayLike:
    """The value of a Parameter, or ``x`` itself for plain numbers/arrays.

    Model code calls this so that a field can hold either a Parameter or a fixed constant.
    """
    return x.value if isinstance(x, Parameter) else x


# -------------------------------------------------------------------------------------- naming
def _key_name(key) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flatten_parameters(tree) -> tuple[list[str], list[Any], Any]:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_parameter)
    names, leaves = [], []
    for path, leaf in leaves_with_path:
        names.append(".".join(_key_name(k) for k in path))
        leaves.append(leaf)
    return names, leaves, treedef


def parameter_names(tree) -> list[str]:
    """Dotted names of all Parameters in ``tree`` (frozen and tied ones included)."""
    names, leaves, _ = _flatten_parameters(tree)
    return [n for n, leaf in zip(names, leaves) if is_parameter(leaf)]


def parameters_dict(tree) -> dict[str, Parameter]:
    """All Parameters of ``tree`` by dotted name, in pytree order."""
    names, leaves, _ = _flatten_parameters(tree)
    return {n: leaf for n, leaf in zip(names, leaves) if is_parameter(leaf)}


def free_parameter_names(tree) -> list[str]:
    """Dotted names of the Parameters a fit varies: neither frozen nor tied."""
    return [n for n, p in parameters_dict(tree).items() if p.is_free]


def get_parameter(tree, name: str) -> Parameter:
    """The Parameter of ``tree`` with dotted name ``name``; a KeyError lists the known names."""
    params = parameters_dict(tree)
    if name not in params:
        known = ", ".join(params) or "(none)"
        raise KeyError(f"no parameter named {name!r}; the model has: {known}")
    return params[name]


def _replace_parameters(tree, updates: dict[str, Callable[[Parameter], Parameter]]):
    names, leaves, treedef = _flatten_parameters(tree)
    for name in updates:
        get_parameter(tree, name)
    new_leaves = [updates[n](leaf) if n in updates else leaf for n, leaf in zip(names, leaves)]
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


def tie(tree, name: str, to: str):
    """Return ``tree`` with parameter ``name`` tied to parameter ``to`` (same value in fits).

    Used for joint fits, e.g. one spectral index shared by the source models of several
    datasets. The tied parameter is no longer free; its value follows ``to``.

    Example:
        >>> import fitax
        >>> model = {"a": {"index": fitax.Parameter(2.0)}, "b": {"index": fitax.Parameter(2.5)}}
        >>> fitax.free_parameter_names(fitax.tie(model, "b.index", to="a.index"))
        ['a.index']
    """
    if name == to:
        raise ValueError(f"cannot tie parameter {name!r} to itself")
    source = get_parameter(tree, to)
    target = get_parameter(tree, name)
    if source.unit != target.unit:
        raise ValueError(
            f"cannot tie {name!r} (unit {target.unit!r}) to {to!r} (unit {source.unit!r}): units differ"
        )
    return _replace_parameters(tree, {name: lambda p: dataclasses.replace(p, tied_to=to)})


def freeze(tree, *names: str):
    """Return ``tree`` with the named parameters frozen."""
    return _replace_parameters(tree, {n: lambda p: dataclasses.replace(p, frozen=True) for n in names})


def thaw(tree, *names: str):
    """Return ``tree`` with the named parameters free (not frozen)."""
    return _replace_parameters(tree, {n: lambda p: dataclasses.replace(p, frozen=False) for n in names})


def set_values(tree, values: dict[str, ArrayLike]):
    """Return ``tree`` with new parameter values given by dotted name."""
    return _replace_parameters(
        tree,
        {n: (lambda p, v=v: with_value(p, v)) for n, v in values.items()},
    )


# ------------------------------------------------------------------------------- ParameterSpace
@dataclasses.dataclass(frozen=True)
class ParameterSpace:
    """The free parameters of a model pytree as a flat vector.

    Built once, on the host, from a model pytree; afterwards every method is a pure, jit-able
    function. Static information only (names, bounds, positions), so it is hashable and can
    be a static argument of jitted functions.

    Two coordinates are used:
      * *physical values* ``v``: the parameter values themselves (shape ``(n_free,)``);
      * *internal coordinates* ``u``: unconstrained, 0 at the start point ``v0`` and with local
        scale 1, ``v = g(a + k u)``, with ``g`` the :attr:`bijector` of each parameter's kind
        of bound (identity, exponential or logistic; see :mod:`fitax.bijectors`) and the
        offset ``a`` and slope ``k`` (:meth:`transform_state`) chosen so that ``g(a) = v0``
        and ``dv/du = scale`` at ``u = 0``.
    """

    names: tuple[str, ...]
    """Dotted names of the free parameters, in vector order."""
    bijector: Blockwise
    """Map from unconstrained coordinates (before scaling) to the free parameters' values."""
    _treedef: Any
    _all_names: tuple[str, ...]  # dotted name of every leaf of the flattened model
    _leaf_positions: tuple[int, ...]  # position in the flattened leaf list of each free parameter
    _tie_positions: tuple[tuple[int, int], ...]  # (tied leaf, source leaf), sources first
    _mins: tuple[float, ...]
    _maxs: tuple[float, ...]
    _scales: tuple[float | None, ...]
    _priors: tuple[tuple[int, Prior], ...]  # (leaf position, prior) for all priors
    _metadata: tuple[tuple, ...]  # static fields of every leaf, to explain structure mismatches

    @classmethod
    def from_params(cls, params) -> "ParameterSpace":
        names, leaves, treedef = _flatten_parameters(params)
        position = {n: i for i, n in enumerate(names)}
        free_pos, mins, maxs, scales, priors = [], [], [], [], []
        for i, leaf in enumerate(leaves):
            if not is_parameter(leaf):
                continue
            if leaf.prior is not None:
                priors.append((i, leaf.prior))
            if not leaf.is_free:
                continue
            free_pos.append(i)
            mins.append(-np.inf if leaf.min is None else leaf.min)
            maxs.append(np.inf if leaf.max is None else leaf.max)
            scales.append(leaf.scale)
        ties = cls._resolve_ties(names, leaves, position)
        return cls(
            names=tuple(names[i] for i in free_pos),
            bijector=Blockwise.from_bounds(tuple(mins), tuple(maxs)),
            _treedef=treedef,
            _all_names=tuple(names),
            _leaf_positions=tuple(free_pos),
            _tie_positions=ties,
            _mins=tuple(mins),
            _maxs=tuple(maxs),
            _scales=tuple(scales),
            _priors=tuple(priors),
            _metadata=tuple(_metadata(leaf) for leaf in leaves),
        )

    @staticmethod
    def _resolve_ties(names, leaves, position) -> tuple[tuple[int, int], ...]:
        ties = {}
        for i, (name, leaf) in enumerate(zip(names, leaves)):
            if is_parameter(leaf) and leaf.tied_to is not None:
                if leaf.tied_to not in position or not is_parameter(leaves[position[leaf.tied_to]]):
                    raise ValueError(
                        f"parameter {name!r} is tied to {leaf.tied_to!r}, which is not a parameter of this model"
                    )
                ties[i] = position[leaf.tied_to]
        # Resolve chains a -> b -> c to their root so one pass of copies suffices.
        resolved = []
        for target, source in ties.items():
            seen = {target}
            while source in ties:
                if source in seen:
                    raise ValueError(f"tie cycle involving parameter {names[target]!r}")
                seen.add(source)
                source = ties[source]
            resolved.append((target, source))
        return tuple(resolved)

    # -------------------------------------------------------------------------------- layout
    @property
    def size(self) -> int:
        """Number of free parameters."""
        return len(self.names)

    @property
    def all_names(self) -> tuple[str, ...]:
        """Dotted names of all Parameters of the model (frozen and tied ones included), in
        pytree order."""
        return tuple(n for n, m in zip(self._all_names, self._metadata) if m)

    @property
    def ties(self) -> tuple[tuple[str, str], ...]:
        """``(tied, source)`` name pairs: ``tied`` takes the value of the free parameter
        ``source`` (chains of ties are resolved to their free end)."""
        return tuple((self._all_names[t], self._all_names[s]) for t, s in self._tie_positions)

    def _leaves(self, params) -> list:
        names, leaves, treedef = _flatten_parameters(params)
        if treedef != self._treedef or tuple(_metadata(leaf) for leaf in leaves) != self._metadata:
            self._explain_mismatch(names, leaves)
        return leaves

    def _explain_mismatch(self, names, leaves) -> None:
        if tuple(names) != self._all_names:
            missing = [n for n in self._all_names if n not in names]
            extra = [n for n in names if n not in self._all_names]
            raise ValueError(
                "params do not have the structure of the model being fitted: "
                f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'}"
            )
        for name, leaf, expected in zip(names, leaves, self._metadata):
            got = _metadata(leaf)
            if got != expected:
                fields = ("min", "max", "frozen", "prior", "unit", "tied_to", "scale")
                diffs = [f"{f}={g!r} (expected {e!r})" for f, g, e in zip(fields, got, expected) if g != e]
                raise ValueError(f"parameter {name!r} differs from the model being fitted: {', '.join(diffs)}")
        raise ValueError("params have a different pytree structure (container types) than the model being fitted")

    def values(self, params) -> Float[Array | np.ndarray, "*batch n_free"]:
        """Physical values of the free parameters, as a vector (leading axes: a batch of
        values, as in :func:`fitax.fit_batch`)."""
        leaves = self._leaves(params)
        if not self._leaf_positions:
            return jnp.zeros((0,))
        values = [leaves[i].value for i in self._leaf_positions]
        if all(isinstance(v, np.ndarray) for v in values):
            return np.stack(values, axis=-1)
        return jnp.stack(values, axis=-1)

    def with_values(self, params, values: Float[ArrayLike, "*batch n_free"] | list | tuple):
        """``params`` with the free parameters set to ``values`` and ties applied.

        ``values`` may also be a sequence of scalars: then each parameter depends on its own
        entry only, which lets autodiff skip whatever depends on undifferentiated entries
        (see :func:`fitax._minimize.value_grad_hessian`)."""
        leaves = list(self._leaves(params))
        if not isinstance(values, (list, tuple)) and self._leaf_positions:
            # one split, whose transpose is one concatenation (n slices would transpose
            # to n padded copies of the vector)
            split = np.split if isinstance(values, np.ndarray) else jnp.split
            values = [column[..., 0] for column in split(values, len(self._leaf_positions), axis=-1)]
        for j, i in enumerate(self._leaf_positions):
            leaves[i] = with_value(leaves[i], values[j])
        for target, source in self._tie_positions:
            leaves[target] = with_value(leaves[target], leaves[source].value)
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    def prior_penalty(self, params) -> Float[Array, "*batch"]:
        """Sum of ``-2 log p`` over all priors (add ``errordef`` times this to the objective)."""
        if not self._priors:
            return jnp.zeros(())
        leaves = self._leaves(params)
        return sum(prior.neg2_log_density(leaves[i].value) for i, prior in self._priors)

    def check_start(self, params) -> None:
        """Raise a ValueError naming any free parameter whose start is non-finite or out of bounds."""
        values = np.asarray(self.values(params))
        for name, v, lo, hi in zip(self.names, values.T, self._mins, self._maxs):
            v = np.atleast_1d(v)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"parameter {name!r} has a non-finite start value {v.tolist()}")
            if np.any(v < lo) or np.any(v > hi):
                bad = v[(v < lo) | (v > hi)]
                raise ValueError(
                    f"parameter {name!r} starts at {bad[0]:.6g}, outside its bounds [{lo:.6g}, {hi:.6g}]"
                )

    @property
    def bounds(self) -> list[tuple[float | None, float | None]]:
        """``(min, max)`` of each free parameter, ``None`` where unbounded."""
        return [(lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None) for lo, hi in zip(self._mins, self._maxs)]

    @property
    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the free parameters as arrays, ``-inf``/``inf`` where
        unbounded."""
        return np.array(self._mins, dtype=float), np.array(self._maxs, dtype=float)

    def at_bound(self, v: Float[ArrayLike, " n_free"], errors: Float[ArrayLike, " n_free"]) -> list[str]:
        """Names of free parameters closer to a bound than 1% of their error."""
        out = []
        for name, value, error, lo, hi in zip(self.names, np.asarray(v), np.asarray(errors), self._mins, self._maxs):
            tol = 0.01 * error if np.isfinite(error) and error > 0 else 1e-9 * max(abs(value), 1e-300)
            if (np.isfinite(lo) and value - lo <= tol) or (np.isfinite(hi) and hi - value <= tol):
                out.append(name)
        return out

    def units(self, params) -> list[str | None]:
        """Unit string (or None) of each free parameter."""
        leaves = self._leaves(params)
        return [leaves[i].unit for i in self._leaf_positions]

    # ----------------------------------------------------------------- internal coordinates
    def transform_state(
        self, v0: Float[ArrayLike, "*batch n_free"], curvature: Float[ArrayLike, "*batch n_free"] | None = None
    ) -> tuple[Float[Array, "*batch n_free"], Float[Array, "*batch n_free"]]:
        """Offsets ``a`` and slopes ``k`` of the internal transforms for start point ``v0``.

        The local scale of each internal coordinate is, in order of preference: the
        parameter's own ``scale``; ``1 / sqrt(|curvature|)`` when ``curvature`` (the diagonal
        of the objective's Hessian at ``v0``, divided by ``2 errordef``) is non-zero, i.e. an
        error estimate, so one internal unit is about one sigma; else ``|v0|`` (1 at 0).
        """
        v0 = jnp.asarray(v0, dtype=float)
        user_scale = np.asarray([np.nan if s is None else s for s in self._scales], dtype=float)
        natural = jnp.where(jnp.abs(v0) > 0, jnp.abs(v0), 1.0)
        if curvature is not None:
            # A negative curvature (start on the shoulder of a peak) still sets a length scale.
            curvature = jnp.abs(curvature)
            usable = jnp.isfinite(curvature) & (curvature > 0)
            from_curvature = 1.0 / jnp.sqrt(jnp.where(usable, curvature, 1.0))
            natural = jnp.where(usable, from_curvature, natural)
        scale = jnp.where(np.isnan(user_scale), natural, np.nan_to_num(user_scale, nan=1.0))
        return self.bijector.anchor(v0, scale)

    def to_physical(
        self, u: Float[ArrayLike, "*#batch n_free"], state: tuple[Float[Array, "*#batch n_free"], Float[Array, "*#batch n_free"]]
    ) -> Float[Array, "*#batch n_free"]:
        """Physical values for internal coordinates ``u``."""
        a, k = state
        return self.bijector.forward(a + k * u)

    def to_internal(
        self, v: Float[ArrayLike, "*#batch n_free"], state: tuple[Float[Array, "*#batch n_free"], Float[Array, "*#batch n_free"]]
    ) -> Float[Array, "*#batch n_free"]:
        """Internal coordinates of physical values ``v`` (inverse of :meth:`to_physical`)."""
        a, k = state
        return (self.bijector.inverse(jnp.asarray(v, dtype=float)) - a) / k

    def log_abs_det_jacobian(
        self, u: Float[ArrayLike, "*#batch n_free"], state: tuple[Float[Array, "*#batch n_free"], Float[Array, "*#batch n_free"]]
    ) -> Float[Array, "*#batch"]:
        """``log |det dv/du|`` of :meth:`to_physical` at ``u``: what a density over the physical
        values gains when it is written over internal coordinates (``p_u = p_v |det dv/du|``),
        as a sampler in internal coordinates needs. The Jacobian is diagonal."""
        a, k = state
        z = a + k * u
        return jnp.sum(jnp.log(jnp.abs(k)) + self.bijector.log_abs_det_jacobian(z), axis=-1)


def _metadata(leaf) -> tuple:
    if not is_parameter(leaf):
        return ()
    return (leaf.min, leaf.max, leaf.frozen, leaf.prior, leaf.unit, leaf.tied_to, leaf.scale)
