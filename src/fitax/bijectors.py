"""Bijectors: smooth one-to-one maps from the real line onto a parameter's allowed range.

Fits and samplers move bounded parameters in an unconstrained coordinate ``z`` and see the
physical value ``v = forward(z)``. There is one bijector per kind of bound:

* :class:`Identity` (no bound): ``v = z``;
* :class:`Lower`: ``v = lo + exp(z)``;
* :class:`Upper`: ``v = hi - exp(z)``;
* :class:`Interval` (both bounds): ``v = lo + (hi - lo) sigmoid(z)``.

Each acts elementwise on the vector of all parameters of its kind (their bounds are a static
tuple, so bijectors are hashable and part of a jit key, like the rest of
:class:`fitax.ParameterSpace`). :class:`Blockwise` applies each bijector to its own entries of
a parameter vector only. Evaluating every kind on every entry and selecting afterwards
(``jnp.select``, as fitax did before) is wrong in reverse mode: an unbounded parameter at
``6e4`` (an MJD) made ``exp(6e4) = inf`` in the discarded branches, and the backward pass
multiplied their zero cotangent by it, ``0 * inf = NaN``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["Vector", "Bijector", "Identity", "Lower", "Upper", "Interval", "Blockwise"]

Vector = Float[Array, "*batch n"]
"""Entries of a parameter vector (last axis), with any leading batch axes."""

_NUDGE = 1e-6
"""A start on a bound is moved this many scales inside (bounds are reached only asymptotically)."""


class Bijector:
    """Elementwise map from unconstrained ``z`` to a parameter's range, with its inverse and
    the log of its (diagonal) Jacobian. Subclasses are frozen dataclasses holding bounds."""

    def forward(self, z: Vector) -> Vector:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, v: Vector) -> Vector:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_abs_det_jacobian(self, z: Vector) -> Vector:  # pragma: no cover - abstract
        """``log |d forward / dz|`` of each entry."""
        raise NotImplementedError

    def anchor(
        self, v0: Vector, scale: Vector
    ) -> tuple[Vector, Vector]:  # pragma: no cover - abstract
        """Offset ``a`` and slope ``k`` of the affine map ``z = a + k u`` that puts ``u = 0`` at
        the start ``v0`` (nudged inside the bounds) with ``dv/du = scale`` there."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Identity(Bijector):
    """No bound: ``v = z``."""

    def forward(self, z: Vector) -> Vector:
        return z

    def inverse(self, v: Vector) -> Vector:
        return v

    def log_abs_det_jacobian(self, z: Vector) -> Vector:
        return jnp.zeros_like(z)

    def anchor(self, v0: Vector, scale: Vector) -> tuple[Vector, Vector]:
        return v0, scale


@dataclasses.dataclass(frozen=True)
class Lower(Bijector):
    """Lower bounds ``lo``: ``v = lo + exp(z)``."""

    lo: tuple[float, ...]

    def forward(self, z: Vector) -> Vector:
        return np.asarray(self.lo) + jnp.exp(z)

    def inverse(self, v: Vector) -> Vector:
        return jnp.log(jnp.maximum(v - np.asarray(self.lo), 1e-300))

    def log_abs_det_jacobian(self, z: Vector) -> Vector:
        return z

    def anchor(self, v0: Vector, scale: Vector) -> tuple[Vector, Vector]:
        distance = jnp.maximum(v0 - np.asarray(self.lo), _NUDGE * jnp.maximum(scale, 1e-300))
        return jnp.log(distance), scale / distance


@dataclasses.dataclass(frozen=True)
class Upper(Bijector):
    """Upper bounds ``hi``: ``v = hi - exp(z)``."""

    hi: tuple[float, ...]

    def forward(self, z: Vector) -> Vector:
        return np.asarray(self.hi) - jnp.exp(z)

    def inverse(self, v: Vector) -> Vector:
        return jnp.log(jnp.maximum(np.asarray(self.hi) - v, 1e-300))

    def log_abs_det_jacobian(self, z: Vector) -> Vector:
        return z

    def anchor(self, v0: Vector, scale: Vector) -> tuple[Vector, Vector]:
        distance = jnp.maximum(np.asarray(self.hi) - v0, _NUDGE * jnp.maximum(scale, 1e-300))
        return jnp.log(distance), scale / distance


@dataclasses.dataclass(frozen=True)
class Interval(Bijector):
    """Both bounds: ``v = lo + (hi - lo) sigmoid(z)``."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    @property
    def _width(self) -> np.ndarray:
        return np.asarray(self.hi) - np.asarray(self.lo)

    def forward(self, z: Vector) -> Vector:
        return np.asarray(self.lo) + self._width * jax.nn.sigmoid(z)

    def inverse(self, v: Vector) -> Vector:
        frac = jnp.clip((v - np.asarray(self.lo)) / self._width, 1e-300, 1 - 1e-16)
        return jnp.log(frac) - jnp.log1p(-frac)

    def log_abs_det_jacobian(self, z: Vector) -> Vector:
        # log sigmoid(z) + log sigmoid(-z), without overflow for any z
        return np.log(self._width) - jax.nn.softplus(-z) - jax.nn.softplus(z)

    def anchor(self, v0: Vector, scale: Vector) -> tuple[Vector, Vector]:
        width = self._width
        frac = jnp.clip((v0 - np.asarray(self.lo)) / width, 1e-9, 1 - 1e-9)
        return jnp.log(frac) - jnp.log1p(-frac), scale / (width * frac * (1 - frac))


@dataclasses.dataclass(frozen=True)
class Blockwise:
    """Several bijectors, each on its own entries of one vector (the last axis).

    Every bijector sees only its entries, so no bijector is ever evaluated on a value meant
    for another (where it may overflow). Entries are gathered per block and the results put
    back in vector order; with a single block covering the vector in order, the vector
    itself is used.
    """

    blocks: tuple[tuple[tuple[int, ...], Bijector], ...]
    """``(positions, bijector)`` pairs; the positions of all blocks partition ``range(size)``."""

    @classmethod
    def from_bounds(cls, mins: tuple[float, ...], maxs: tuple[float, ...]) -> "Blockwise":
        """One block per kind of bound present, from bounds that are ``-inf``/``inf`` where absent."""
        lo, hi = np.asarray(mins, dtype=float), np.asarray(maxs, dtype=float)
        has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
        kinds = [
            (~has_lo & ~has_hi, lambda i: Identity()),
            (has_lo & ~has_hi, lambda i: Lower(tuple(lo[i].tolist()))),
            (~has_lo & has_hi, lambda i: Upper(tuple(hi[i].tolist()))),
            (has_lo & has_hi, lambda i: Interval(tuple(lo[i].tolist()), tuple(hi[i].tolist()))),
        ]
        return cls(tuple((tuple(np.flatnonzero(m).tolist()), make(m)) for m, make in kinds if m.any()))

    def _map(self, method: str, *vectors: Array):
        if not self.blocks:  # no parameters: any bijector's method on empty vectors
            return getattr(Identity(), method)(*vectors)
        (positions, bijector), *others = self.blocks
        if not others and positions == tuple(range(len(positions))):
            return getattr(bijector, method)(*vectors)
        outputs = [getattr(b, method)(*(x[..., np.asarray(p)] for x in vectors)) for p, b in self.blocks]
        order = np.argsort(np.concatenate([p for p, _ in self.blocks]))

        def in_vector_order(parts):
            return jnp.concatenate(parts, axis=-1)[..., order]

        if isinstance(outputs[0], tuple):
            return tuple(in_vector_order(parts) for parts in zip(*outputs))
        return in_vector_order(outputs)

    def forward(self, z: Vector) -> Vector:
        return self._map("forward", z)

    def inverse(self, v: Vector) -> Vector:
        return self._map("inverse", v)

    def log_abs_det_jacobian(self, z: Vector) -> Vector:
        """``log |dv/dz|`` of each entry (the Jacobian is diagonal)."""
        return self._map("log_abs_det_jacobian", z)

    def anchor(
        self, v0: Vector, scale: Vector
    ) -> tuple[Vector, Vector]:
        return self._map("anchor", v0, scale)
