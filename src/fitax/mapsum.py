"""Sums of one function over many items (datasets, stars, ...), differentiated item by item.

A joint likelihood is a sum over datasets, ``sum_i f(shared, item_i)``, evaluated one item
at a time (``lax.map``) so that each item's intermediate arrays stay in cache and the
program compiles once whatever the number of items. Reverse-mode autodiff of ``lax.map``,
however, first runs every item forward and stacks all their intermediates, then runs the
loop backwards: for 10 simulated gamma-ray datasets that made a gradient 3.5x the cost of
the value, against 1.5x for one dataset.

:func:`map_sum` computes the gradient inside the loop instead: each item's value and
gradient together, summed as they come. It is a ``custom_jvp`` whose tangent is
``<sum_i grad f_i, t>``, so reverse mode transposes a dot product, forward-over-reverse
(Hessian-vector products) differentiates the per-item gradients, and only the inputs whose
tangents are not symbolically zero are differentiated (``symbolic_zeros``): Hessian blocks
of cheap parameters then skip whatever depends on the costly ones alone.

:class:`ItemSum` declares an objective to be such a sum, so that :func:`fitax.fit` also
computes its exact Hessians item by item (see there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

__all__ = ["map_sum", "map_items", "ItemSum"]


def map_items(function: Callable, items: Any) -> Any:
    """``function`` of each item (leading axis of ``items``), stacked: one after the other on
    CPU (``lax.map``; each item's intermediates stay in cache, measured 1.3x faster than
    ``vmap`` for 10 datasets of 15x100x100 bins), all at once on accelerators (``vmap``)."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(function, items)
    return jax.vmap(function)(items)


def map_sum(function: Callable[[Any, Any], Array], shared: Any, items: Any) -> Array:
    """``sum_i function(shared, items[i])`` over the leading axis of the pytree ``items``,
    with derivatives (with respect to ``shared`` and to ``items``' floating leaves)
    computed item by item.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fitax.mapsum import map_sum
        >>> f = lambda w, x: jnp.sum((x - w) ** 2)
        >>> float(jax.grad(lambda w: map_sum(f, w, jnp.arange(3.0)[:, None]))(jnp.zeros(1))[0])
        -6.0
    """
    return _map_sum(function, shared, items)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _map_sum(function, shared, items):
    return jnp.sum(map_items(lambda item: function(shared, item), items))


def _is_zero(tangent) -> bool:
    return isinstance(tangent, SymbolicZero)


def _merge(leaves: list, active: list[bool], values: list) -> list:
    values = iter(values)
    return [next(values) if on else leaf for leaf, on in zip(leaves, active)]


def _map_sum_jvp(function, primals, tangents):
    shared, items = primals
    shared_leaves, shared_def = jax.tree_util.tree_flatten(shared)
    item_leaves, item_def = jax.tree_util.tree_flatten(items)
    shared_tangents = shared_def.flatten_up_to(tangents[0])
    item_tangents = item_def.flatten_up_to(tangents[1])
    shared_active = [not _is_zero(t) for t in shared_tangents]
    item_active = [not _is_zero(t) for t in item_tangents]

    def value_and_grad(leaves_of_item):
        def f(active_shared, active_item):
            return function(jax.tree_util.tree_unflatten(shared_def, _merge(shared_leaves, shared_active, active_shared)),
                            jax.tree_util.tree_unflatten(item_def, _merge(leaves_of_item, item_active, active_item)))

        value, (shared_grad, item_grad) = jax.value_and_grad(f, argnums=(0, 1))(
            [leaf for leaf, on in zip(shared_leaves, shared_active) if on],
            [leaf for leaf, on in zip(leaves_of_item, item_active) if on])
        return value, ravel_pytree(shared_grad)[0], item_grad

    values, shared_flat, item_grads = map_items(value_and_grad, item_leaves)
    active_tangents = [t for t in shared_tangents if not _is_zero(t)]
    tangent = jnp.zeros((), values.dtype)
    if active_tangents:
        tangent = tangent + jnp.vdot(jnp.sum(shared_flat, axis=0), ravel_pytree(active_tangents)[0])
    for grad, t in zip(item_grads, [t for t in item_tangents if not _is_zero(t)]):
        tangent = tangent + jnp.vdot(grad, t)
    return jnp.sum(values), tangent


_map_sum.defjvp(_map_sum_jvp, symbolic_zeros=True)


class ItemSum(eqx.Module):
    """An objective that is a sum over items: ``objective(params, args)`` is
    ``sum_k sum_i function_k(params, items_k[i])`` for the ``(function_k, items_k)`` pairs
    that ``terms(args)`` returns (``items_k`` a pytree with a leading item axis, or
    ``None`` for a term evaluated once as ``function_k(params, None)``).

    Called, it evaluates the sum with :func:`map_sum`. :func:`fitax.fit` also uses the
    structure for its exact Hessians: each item's value, gradient and Hessian-vector
    products are computed in one pass of the loop over items, while the item's
    intermediate arrays are in cache. Linearising the whole sum instead stores every
    item's intermediates and reads them back once per Hessian-vector product: the Hessian
    of the joint fit of 10 simulated gamma-ray datasets took 252-270 ms that way and
    186-205 ms item by item, with the same numbers.

    Example:
        >>> import jax.numpy as jnp
        >>> from fitax.mapsum import ItemSum
        >>> chi2 = ItemSum(lambda data: [(lambda p, y: jnp.sum((y - p["mu"]) ** 2), data)])
        >>> float(chi2({"mu": jnp.asarray(1.0)}, jnp.arange(6.0).reshape(2, 3)))
        31.0
    """

    terms: Callable[[Any], Any] = eqx.field(static=True)

    def __call__(self, params, args=None) -> Array:
        return sum(function(params, None) if items is None else map_sum(function, params, items)
                   for function, items in self.terms(args))
