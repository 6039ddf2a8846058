"""Jagged event data in JAX with static shapes: flat content + offsets, and a padded view.

A NanoAOD collection (``Jet``, ``Muon``, ...) has a variable number of entries per event. Its
branches arrive as one flat array per field and one array of offsets (``offsets[i]`` to
``offsets[i + 1]`` are event ``i``'s entries): :class:`Jagged`. Under ``jit`` every shape must
be known before the data are seen, so the analysis works on a :class:`Collection`: each field
as an ``(events, cap)`` array and a mask of the entries that exist, with ``cap`` at least the
largest multiplicity (the reader picks it from a few bucket sizes, so nothing is cut and a file
set compiles a handful of times). Everything here is a pure function of arrays with static
shapes: it runs under ``jit``, ``vmap`` and ``grad``, on CPU and unchanged on GPU.

Selections are masks (hard cuts) or weights in [0, 1] (soft cuts): the reductions take either,
so the same analysis code gives exact counts or differentiable ones.

Example:
    >>> jets = Jagged(jnp.array([40.0, 35.0, 50.0]), jnp.array([0, 2, 2, 3]))
    >>> collection = jets.padded(cap=2)
    >>> collection.mask.tolist()
    [[True, True], [False, False], [True, False]]
    >>> masked_sum(collection.values, collection.mask).tolist()
    [75.0, 0.0, 50.0]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "Collection",
    "Jagged",
    "LorentzVector",
    "combination_incidence",
    "combination_table",
    "combinations",
    "compact",
    "masked_any",
    "masked_all",
    "masked_argmax",
    "masked_count",
    "masked_max",
    "masked_sum",
    "overflow",
    "safe_sqrt",
]


class Jagged(eqx.Module):
    """One field of a collection: flat ``content`` and ``offsets`` (length events + 1).

    Example:
        >>> Jagged(jnp.array([1.0, 2.0, 3.0]), jnp.array([0, 2, 3])).counts.tolist()
        [2, 1]
    """

    content: Array
    offsets: Int[Array, " events_plus_one"]

    @property
    def counts(self) -> Int[Array, " events"]:
        return self.offsets[1:] - self.offsets[:-1]

    def segment_ids(self) -> Int[Array, " content"]:
        """The event of each entry of ``content``."""
        entries = jnp.arange(self.content.shape[0])
        return jnp.searchsorted(self.offsets, entries, side="right") - 1

    def segment_sum(self, values: Array | None = None) -> Array:
        """Per-event sum of ``values`` (default: the content), one segment op over the flat data."""
        values = self.content if values is None else values
        return jax.ops.segment_sum(values, self.segment_ids(), num_segments=self.offsets.shape[0] - 1)

    def padded(self, cap: int, fill=0) -> Collection:
        """The ``(events, cap)`` view; entries beyond ``cap`` are dropped, so pick
        ``cap >= counts.max()`` (the reader does) or count :func:`overflow` first."""
        slots = jnp.arange(cap)
        mask = slots[None, :] < self.counts[:, None]
        index = jnp.where(mask, self.offsets[:-1, None] + slots[None, :], 0)
        if self.content.shape[0] == 0:
            values = jnp.full(mask.shape, fill, dtype=self.content.dtype)
        else:
            values = jnp.where(mask, self.content[index], jnp.asarray(fill, dtype=self.content.dtype))
        return Collection({"values": values}, mask)


def overflow(counts: Int[Array, " events"], cap: int) -> Int[Array, ""]:
    """How many events have more entries than ``cap``."""
    return jnp.sum(counts > cap)


class Collection(eqx.Module):
    """Fields of one collection as ``(events, cap)`` arrays and the mask of existing entries.

    Attribute access reads a field: ``jets.pt`` is ``jets.fields["pt"]``.
    """

    fields: dict[str, Array]
    mask: Bool[Array, "events cap"]

    def __getattr__(self, name: str) -> Array:
        fields = self.__dict__.get("fields")
        if fields is not None and name in fields:
            return fields[name]
        raise AttributeError(f"collection has no field {name!r} (fields: {sorted(fields or {})})")

    @property
    def values(self) -> Array:
        return self.fields["values"]

    @property
    def cap(self) -> int:
        return self.mask.shape[-1]

    def replace(self, **fields: Array) -> Collection:
        """The collection with the given fields replaced or added (the mask unchanged)."""
        return Collection({**self.fields, **fields}, self.mask)

    def where(self, keep: Bool[Array, "events cap"]) -> Collection:
        """The same entries with the mask narrowed to ``keep``."""
        return Collection(self.fields, self.mask & keep)


def _mask_as_weight(mask: Array, dtype) -> Array:
    return mask.astype(dtype) if mask.dtype == jnp.bool_ else mask


def masked_sum(values: Float[Array, "events cap"], mask: Array) -> Float[Array, " events"]:
    """Per-event sum of ``values`` over the entries in ``mask`` (bool) or weighted by it (soft cuts)."""
    return jnp.sum(jnp.where(mask, values, 0) if mask.dtype == jnp.bool_ else values * mask, axis=-1)


def masked_count(mask: Array) -> Array:
    """Per-event number of entries in ``mask`` (int) or the sum of its weights (soft cuts)."""
    return jnp.sum(mask, axis=-1)


def masked_max(values: Float[Array, "events cap"], mask: Bool[Array, "events cap"], empty=-jnp.inf) -> Array:
    """Per-event maximum over the entries in ``mask``; ``empty`` for an event with none."""
    best = jnp.max(jnp.where(mask, values, -jnp.inf), axis=-1)
    return jnp.where(jnp.any(mask, axis=-1), best, empty)


def masked_argmax(values: Float[Array, "events cap"], mask: Bool[Array, "events cap"]) -> Int[Array, " events"]:
    """Per-event index of the largest value in ``mask`` (the first on ties); 0 for an event with
    none (check :func:`masked_any`)."""
    return jnp.argmax(jnp.where(mask, values, -jnp.inf), axis=-1)


def masked_any(condition: Bool[Array, "events cap"], mask: Bool[Array, "events cap"]) -> Bool[Array, " events"]:
    return jnp.any(condition & mask, axis=-1)


def masked_all(condition: Bool[Array, "events cap"], mask: Bool[Array, "events cap"]) -> Bool[Array, " events"]:
    return jnp.all(condition | ~mask, axis=-1)


def compact(collection: Collection, keep: Bool[Array, "events cap"], cap: int) -> tuple[Collection, Bool[Array, " events"]]:
    """The entries in ``keep`` moved to the front (their order kept) and the view cut to ``cap``
    columns, and which events had more than ``cap`` of them (those lost entries: the caller
    must check there are none or retry with a larger ``cap``). Combinations of selected objects
    then cost ``C(cap, k)`` instead of ``C(full cap, k)``."""
    keep = keep & collection.mask
    # The (s + 1)-th kept entry sits after the entries whose running count of kept ones is <= s
    # (a comparison and a sum: a sort costs ~5x more on CPU, measured).
    running = jnp.cumsum(keep, axis=-1)
    source = jnp.sum(running[..., None, :] <= jnp.arange(cap)[:, None], axis=-1)
    exists = source < collection.cap
    source = jnp.minimum(source, collection.cap - 1)
    fields = {name: jnp.take_along_axis(values, source, axis=-1) for name, values in collection.fields.items()}
    return Collection(fields, exists), running[..., -1] > cap


def combination_table(n: int, k: int) -> np.ndarray:
    """All ``k``-subsets of ``range(n)`` in lexicographic order, as a static ``(C(n, k), k)`` table."""
    table = np.array(list(itertools.combinations(range(n), k)), dtype=np.int32)
    return table.reshape(-1, k)


def combination_incidence(n: int, k: int) -> np.ndarray:
    """``(n, C(n, k))`` matrix with 1 where entry ``i`` belongs to subset ``j`` of
    :func:`combination_table`: a sum over each subset's members is ``values @ incidence``."""
    table = combination_table(n, k)
    return (np.arange(n)[:, None, None] == table[None]).any(-1).astype(np.float64)


def combinations(collection: Collection, k: int) -> Collection:
    """Every ``k``-subset of each event's entries: fields of shape ``(events, C(cap, k), k)``,
    valid where all ``k`` members exist (as awkward's ``ak.combinations``, in the same order)."""
    table = jnp.asarray(combination_table(collection.cap, k))
    fields = {name: values[:, table] for name, values in collection.fields.items()}
    return Collection(fields, jnp.all(collection.mask[:, table], axis=-1))


def safe_sqrt(x: Array) -> Array:
    """sqrt clamped at 0 with a finite derivative there (massless or rounding-negative m^2)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


class LorentzVector(eqx.Module):
    """Four-momenta (any shape) in Cartesian components; kinematics as properties.

    Example:
        >>> v = LorentzVector.from_ptetaphim(jnp.array(50.0), jnp.array(0.0), jnp.array(0.0), jnp.array(10.0))
        >>> round(float(v.mass), 6), round(float(v.pt), 6)
        (10.0, 50.0)
    """

    px: Array
    py: Array
    pz: Array
    energy: Array

    @classmethod
    def from_ptetaphim(cls, pt, eta, phi, mass) -> LorentzVector:
        px, py, pz = pt * jnp.cos(phi), pt * jnp.sin(phi), pt * jnp.sinh(eta)
        return cls(px, py, pz, jnp.sqrt(px**2 + py**2 + pz**2 + mass**2))

    @classmethod
    def from_collection(cls, collection: Collection | Mapping) -> LorentzVector:
        fields = collection.fields if isinstance(collection, Collection) else collection
        return cls.from_ptetaphim(fields["pt"], fields["eta"], fields["phi"], fields["mass"])

    def __add__(self, other: LorentzVector) -> LorentzVector:
        return LorentzVector(self.px + other.px, self.py + other.py, self.pz + other.pz, self.energy + other.energy)

    def sum(self, axis: int = -1, weights: Array | None = None) -> LorentzVector:
        """Sum over ``axis`` (weighted: a mask or soft-cut weights)."""
        w = 1.0 if weights is None else _mask_as_weight(weights, self.px.dtype)
        return LorentzVector(*(jnp.sum(c * w, axis=axis) for c in (self.px, self.py, self.pz, self.energy)))

    @property
    def pt(self) -> Array:
        return safe_sqrt(self.px**2 + self.py**2)

    @property
    def phi(self) -> Array:
        return jnp.arctan2(self.py, self.px)

    @property
    def eta(self) -> Array:
        return jnp.arcsinh(self.pz / jnp.where(self.pt > 0, self.pt, 1.0))

    @property
    def mass(self) -> Array:
        return safe_sqrt(self.energy**2 - self.px**2 - self.py**2 - self.pz**2)
