"""Quadrature over intervals, vectorised over any number of intervals (bins) at once.

``f`` is called once with all abscissae, shape ``(*bins, n_points)``, so integrating a
spectrum over 1000 energy bins is one fused array expression under ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["simpson", "gauss_legendre", "integrate_bins"]


def simpson(
    f: Callable[[Array], Array], a: Float[ArrayLike, "*bins"], b: Float[ArrayLike, "*bins"], n_intervals: int = 100
) -> Float[Array, "*bins"]:
    """Composite Simpson rule on ``n_intervals`` (even) equal sub-intervals of each ``[a, b]``.

    Example:
        >>> import jax.numpy as jnp, fitax
        >>> float(fitax.integrate.simpson(jnp.sin, 0.0, jnp.pi, 10))  # doctest: +ELLIPSIS
        2.0001...
    """
    if n_intervals < 2 or n_intervals % 2:
        raise ValueError(f"simpson needs an even number of intervals >= 2, got {n_intervals}")
    a = jnp.asarray(a, dtype=float)
    b = jnp.asarray(b, dtype=float)
    t = jnp.linspace(0.0, 1.0, n_intervals + 1)
    x = a[..., None] + (b - a)[..., None] * t
    weights = np.ones(n_intervals + 1)
    weights[1:-1:2] = 4.0
    weights[2:-1:2] = 2.0
    h = (b - a) / n_intervals
    return h / 3.0 * jnp.sum(f(x) * weights, axis=-1)


@lru_cache(maxsize=32)
def _legendre_nodes(order: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(order)


def gauss_legendre(
    f: Callable[[Array], Array], a: Float[ArrayLike, "*bins"], b: Float[ArrayLike, "*bins"], order: int = 8
) -> Float[Array, "*bins"]:
    """Gauss–Legendre quadrature of ``order`` points on each ``[a, b]`` (exact for polynomials
    of degree ``2 order - 1``)."""
    if order < 1:
        raise ValueError(f"gauss_legendre needs order >= 1, got {order}")
    nodes, weights = _legendre_nodes(order)
    a = jnp.asarray(a, dtype=float)
    b = jnp.asarray(b, dtype=float)
    half = 0.5 * (b - a)
    x = (0.5 * (a + b))[..., None] + half[..., None] * nodes
    return half * jnp.sum(f(x) * weights, axis=-1)


def integrate_bins(
    f: Callable[[Array], Array], edges: Float[ArrayLike, " n_edges"] | Sequence[float], method: str = "gauss_legendre", n: int = 8
) -> Float[Array, " n_bins"]:
    """Integral of ``f`` over each bin between consecutive ``edges``.

    ``method`` is ``"gauss_legendre"`` (``n`` points per bin) or ``"simpson"`` (``n`` intervals).
    """
    edges = jnp.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.shape[0] < 2:
        raise ValueError(f"edges must be a 1-d array of at least 2 values, got shape {edges.shape}")
    if method == "gauss_legendre":
        return gauss_legendre(f, edges[:-1], edges[1:], n)
    if method == "simpson":
        return simpson(f, edges[:-1], edges[1:], n)
    raise ValueError(f"unknown method {method!r}; expected 'gauss_legendre' or 'simpson'")
