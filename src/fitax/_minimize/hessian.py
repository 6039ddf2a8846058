"""Exact Hessians (dense, or from fewer products by a plan), their use in internal coordinates,
the EDM, and the BFGS update used between exact Hessians."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..device import to_device
from ..mapsum import ItemSum, map_items

class HessianColoring(eqx.Module):
    """How to get a sparse symmetric Hessian from fewer Hessian-vector products than
    parameters (a coloring of its columns; see :func:`hessian_coloring`).

    ``seeds[k]`` is the k-th product's direction; ``color[c]`` the product holding column
    ``c``; entries come straight from that product where ``direct`` is true and from the
    symmetric entry where ``mirrored`` is true (zero elsewhere: structural zeros).
    """

    seeds: Float[Array, "m n"]
    color: Int[Array, " n"]
    direct: Float[Array, "n n"]
    mirrored: Float[Array, "n n"]


def hessian_coloring(pattern) -> HessianColoring | None:
    """A coloring of the symmetric sparsity ``pattern`` (``n x n`` bool, true where the
    Hessian may be non-zero), or ``None`` when it would not save products.

    Dense columns D are computed alone; the other columns S are grouped so that no two
    columns of a group share a non-zero row within S (their entries in D's rows are read
    from D's columns by symmetry). D is the set of columns with more than ``t`` non-zeros,
    for the ``t`` that needs the fewest products. A joint fit of N datasets with K shared
    and one own parameter each needs K + 1 products instead of K + N.
    """
    import numpy as np

    if len(pattern) == 0:
        return None
    pattern = np.asarray(pattern, bool) | np.eye(len(pattern), dtype=bool)
    pattern = pattern | pattern.T
    n = len(pattern)
    counts = pattern.sum(axis=0)
    best = None
    for threshold in sorted(set(counts.tolist())):
        dense = counts > threshold
        groups: list[list[int]] = []
        occupied: list[np.ndarray] = []
        sparse_rows = ~dense
        for column in np.argsort(-counts, kind="stable"):
            if dense[column]:
                continue
            rows = pattern[:, column] & sparse_rows
            for group, used in zip(groups, occupied):
                if not np.any(used & rows):
                    group.append(column)
                    used |= rows
                    break
            else:
                groups.append([column])
                occupied.append(rows.copy())
        cost = int(dense.sum()) + len(groups)
        if best is None or cost < best[0]:
            best = (cost, dense, groups)
    cost, dense, groups = best
    if cost >= n:
        return None
    seeds, color = [], np.zeros(n, int)
    for column in np.nonzero(dense)[0]:
        color[column] = len(seeds)
        seeds.append(np.eye(n)[column])
    for group in groups:
        color[group] = len(seeds)
        seeds.append(np.eye(n)[group].sum(axis=0))
    direct = dense[None, :] | (~dense[:, None] & pattern)
    mirrored = ~dense[None, :] & dense[:, None]
    return HessianColoring(seeds=to_device(np.array(seeds)), color=to_device(color), direct=to_device(direct.astype(float)),
                           mirrored=to_device(mirrored.astype(float)))


class HessianPlan(eqx.Module):
    """Which Hessian-vector products build the exact Hessian (see :func:`hessian_plan`).

    Columns of the ``costly`` parameters are computed in full. The block of the ``cheap``
    parameters comes from products of the gradient *with respect to the cheap parameters
    only*, the costly ones held constant, so autodiff skips every operation that depends on
    the costly parameters alone; the mixed block is the transpose of the costly columns.
    ``coloring`` (optional) groups the cheap block's columns.
    """

    costly: tuple[int, ...] = eqx.field(static=True)
    cheap: tuple[int, ...] = eqx.field(static=True)
    coloring: HessianColoring | None = None


def hessian_plan(n: int, pattern=None, costly=None) -> HessianPlan | None:
    """A :class:`HessianPlan` for ``n`` parameters with sparsity ``pattern`` (``n x n``
    bool, or ``None`` for dense) and boolean mask ``costly`` (or ``None``); ``None`` when
    it would not save anything."""
    import numpy as np

    costly_mask = np.zeros(n, bool) if costly is None else np.asarray(costly, bool)
    cheap = np.nonzero(~costly_mask)[0]
    coloring = None if pattern is None else hessian_coloring(np.asarray(pattern, bool)[np.ix_(cheap, cheap)])
    if coloring is None and not costly_mask.any():
        return None
    return HessianPlan(costly=tuple(int(i) for i in np.nonzero(costly_mask)[0]), cheap=tuple(int(i) for i in cheap),
                       coloring=coloring)


def _products(linear: Callable, seeds: Array) -> Array:
    """``linear`` applied to each row of ``seeds``: one after the other on CPU (the
    vectorised form keeps a copy of every intermediate array per seed and was measured 5x
    slower for 6 parameters and 6x slower for 251 on a 200k-bin cube), at once on
    accelerators."""
    if jax.default_backend() != "cpu":
        return jax.vmap(linear)(seeds)
    return jax.lax.map(linear, seeds)


def _scalars(x: Float[Array, " n"]) -> list[Array]:
    """The entries of ``x`` as scalars, by one split (whose transpose is one concatenation:
    n slices would compile to n kernels and transpose to n padded copies of ``x``)."""
    if x.shape[0] == 0:
        return []
    return [column[0] for column in jnp.split(x, x.shape[0])]


def value_grad_hessian(fun: Callable, v: Array, args: Any, plan: HessianPlan | None = None) -> tuple[Array, Array, Array]:
    """``fun(v, args)``, its gradient and its exact Hessian (forward over reverse mode; see
    :func:`_value_grad_products`).

    When ``fun`` is a :class:`fitax.mapsum.ItemSum` of functions of ``v`` (its
    ``terms(args)`` are ``(function(v, item), items)``, as :func:`fitax.fit` makes of an
    ItemSum objective), each item's value, gradient and
    Hessian-vector products are computed in one pass of a loop over the items. The
    products are summed over the items (a product is linear in the function) and the
    Hessian is assembled from them once. With a ``plan`` the items then hold ``O(products
    x n)`` each, where an ``n x n`` matrix per item held ~2 GB for 400 gamma-ray datasets
    (without one, each item's products are its ``n x n`` rows).
    """
    n = v.shape[0]
    if not isinstance(fun, ItemSum):
        value, grad, products = _value_grad_products(fun, v, args, plan)
        return value, grad, _hessian_from_products(products, plan, n)
    total = None
    for function, items in fun.terms(args):
        if items is None:
            part = _value_grad_products(function, v, None, plan)
        else:
            per_item = map_items(lambda item, function=function: _value_grad_products(function, v, item, plan), items)
            part = jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), per_item)
        total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
    value, grad, products = total
    return value, grad, _hessian_from_products(products, plan, n)


def _value_grad_products(fun: Callable, v: Array, args: Any, plan: HessianPlan | None = None) -> tuple[Array, Array, Any]:
    """``fun(v, args)``, its gradient and the Hessian-vector products that
    :func:`_hessian_from_products` assembles into its exact Hessian.

    The gradient is linearised once (``jax.linearize``) and the linear map applied to each
    seed, so the value, the gradient and their intermediate arrays are computed once, not
    once per Hessian-vector product. Without a ``plan`` the products are the ``n x n``
    Hessian's rows; with one, only its products: ``(costly columns or None, cheap
    products)``. Then ``fun`` must also accept its vector as a sequence of scalars (as the
    objectives of :func:`fitax.fit` do), so that the cheap parameters' products never see a
    tangent of a costly one.
    """
    n = v.shape[0]
    (value, grad), linear = jax.linearize(lambda x: jax.value_and_grad(fun)(x, args), v)
    full_product = lambda t: linear(t)[1]  # noqa: E731
    if plan is None:
        return value, grad, _products(full_product, jnp.eye(n, dtype=v.dtype))
    cheap_linear = full_product
    columns = None
    if plan.costly:
        costly = jnp.asarray(plan.costly, dtype=int)
        columns = _products(full_product, jnp.eye(n, dtype=v.dtype)[costly])  # [k, r] = H[r, costly[k]]
        entries = _scalars(v)

        def cheap_grad(vc):
            def restricted(w):
                values = list(entries)
                for i, value in zip(plan.cheap, _scalars(w)):
                    values[i] = value
                return fun(values, args)

            return jax.grad(restricted)(vc)

        _, cheap_linear = jax.linearize(cheap_grad, v[jnp.asarray(plan.cheap, dtype=int)])
    coloring = plan.coloring
    m = len(plan.cheap)
    seeds = jnp.eye(m, dtype=v.dtype) if coloring is None else coloring.seeds.astype(v.dtype)
    return value, grad, (columns, _products(cheap_linear, seeds))


def _hessian_from_products(products: Any, plan: HessianPlan | None, n: int) -> Array:
    """The symmetric ``n x n`` Hessian from the products of :func:`_value_grad_products`."""
    if plan is None:
        return 0.5 * (products + products.T)
    columns, cheap_products = products
    coloring = plan.coloring
    if coloring is None:
        block = cheap_products
    else:
        by_column = cheap_products[coloring.color]  # [c, r] = product holding column c, row r
        block = by_column.T * coloring.direct + by_column * coloring.mirrored
    cheap = jnp.asarray(plan.cheap, dtype=int)
    hessian = jnp.zeros((n, n), block.dtype).at[cheap[:, None], cheap[None, :]].set(block)
    if columns is not None:
        costly = jnp.asarray(plan.costly, dtype=int)
        hessian = hessian.at[costly, :].set(columns).at[:, costly].set(columns.T)
    return 0.5 * (hessian + hessian.T)


def edm_and_definiteness(grad: Array, hessian: Array) -> tuple[Array, Array]:
    """``0.5 g^T H^-1 g`` and whether ``H`` is positive definite (a Cholesky succeeds)."""
    chol = jnp.linalg.cholesky(hessian)
    positive_definite = jnp.all(jnp.isfinite(chol))
    z = jax.scipy.linalg.solve_triangular(chol, grad, lower=True)
    edm = 0.5 * jnp.sum(z * z)
    return jnp.where(positive_definite, edm, jnp.inf), positive_definite


def bfgs_update(hessian: Array, step: Array, grad_change: Array) -> Array:
    """BFGS update of a Hessian approximation; skipped when the curvature condition fails.

    The update is made in coordinates scaled by the Hessian's diagonal (BFGS is invariant
    under such scaling in exact arithmetic): physical parameters differ in scale by up to
    ~1e11 (a flux amplitude next to a spectral index), and the unscaled update loses
    positive definiteness to rounding.
    """
    scale = 1.0 / jnp.sqrt(jnp.maximum(jnp.abs(jnp.diagonal(hessian)), 1e-300))
    scaled = hessian * jnp.outer(scale, scale)
    step, grad_change = step / scale, grad_change * scale
    sy = step @ grad_change
    hs = scaled @ step
    shs = step @ hs
    ok = (sy > 1e-12 * jnp.sqrt(jnp.sum(step**2) * jnp.sum(grad_change**2))) & (shs > 0)
    updated = scaled + jnp.outer(grad_change, grad_change) / jnp.where(ok, sy, 1.0) - jnp.outer(hs, hs) / jnp.where(ok, shs, 1.0)
    updated = 0.5 * (updated + updated.T) / jnp.outer(scale, scale)
    return jnp.where(ok, updated, hessian)


def internal_derivatives(to_physical: Callable, u: Array, grad_v: Array, hess_v: Array, transform_curvature=True):
    """Gradient and Hessian in internal coordinates by the chain rule (``v = T(u)`` elementwise).

    ``transform_curvature=False`` drops the term ``g_v T''(u)`` (zero at the minimum): with a
    quasi-Newton ``hess_v``, far from the minimum that term alone can make the internal
    Hessian indefinite and stall the steps until an exact Hessian is computed.
    """
    ones = jnp.ones_like(u)
    first = lambda x: jax.jvp(to_physical, (x,), (ones,))[1]  # noqa: E731
    dv, d2v = jax.jvp(first, (u,), (ones,))
    grad_u = dv * grad_v
    hess_u = dv[:, None] * hess_v * dv[None, :] + jnp.diag(jnp.where(transform_curvature, grad_v * d2v, 0.0))
    return grad_u, hess_u
