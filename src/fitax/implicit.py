"""Derivatives of a fitted minimum with respect to the data and model it was fitted to.

A fit returns ``v*(a) = argmin_v f(v, a)``; at the minimum ``grad_v f(v*, a) = 0``, so by the
implicit function theorem ``dv*/da = -H^-1 d(grad_v f)/da`` with ``H`` the Hessian in ``v``.
:func:`implicit_minimum` gives ``v*`` as a JAX function of ``a`` with exactly that derivative:
the fit itself runs beforehand (outside any trace), and differentiating an analysis through
its fits costs one Hessian solve per fit instead of differentiating the optimiser's
iterations. Parameters held fixed in the fit (frozen, or at an active bound) do not move.

The minimum value needs nothing special: ``d f(v*(a), a)/da = df/da`` at ``v*`` (the envelope
theorem), which autodiff of ``f(implicit_minimum(...), a)`` gives since ``grad_v f = 0`` there.

Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> f = lambda v, a: jnp.sum((v - 2 * a) ** 2)  # the minimum is v* = 2a
    >>> a = jnp.array([1.0, 2.0])  # a fit, made beforehand, found v* = (2, 4)
    >>> free = np.array([True, False])  # the second entry was held fixed
    >>> np.abs(jax.jacobian(lambda a: implicit_minimum(f, np.array([2.0, 4.0]), a, free))(a))
    array([[2., 0.],
           [0., 0.]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

__all__ = ["implicit_minimum"]


def implicit_minimum(
    objective: Callable[[Array, Any], Array],
    solution: Float[ArrayLike, " n"],
    args: Any,
    free: Bool[ArrayLike, " n"] | None = None,
) -> Float[Array, " n"]:
    """``solution`` (a minimum of ``objective(v, args)`` found beforehand) as a function of
    ``args`` whose derivatives are those of the minimiser.

    Args:
        objective: ``f(v, args) -> scalar``, twice differentiable in ``v`` and once in ``args``.
        solution: the minimum ``v*`` (concrete values, e.g. a fit's best-fit vector).
        args: the pytree the minimum depends on (data, model arrays); differentiate with
            respect to any of its array leaves.
        free: which entries of ``v`` were fitted (default all); the others were held fixed
            (frozen parameters, active bounds) and have zero derivative.

    Raises:
        ValueError: when the Hessian of the free entries is not positive definite (not a
            minimum: the derivative would be meaningless).
    """
    solution = jnp.asarray(solution, dtype=float)
    free_index = np.flatnonzero(np.ones(solution.shape[0], bool) if free is None else np.asarray(free, bool))

    @jax.custom_jvp
    def minimiser(args):
        return solution

    @minimiser.defjvp
    def minimiser_jvp(primals, tangents):
        (args,), (args_dot,) = primals, tangents
        free_gradient = lambda a: jax.grad(objective)(solution, a)[free_index]  # noqa: E731
        _, gradient_dot = jax.jvp(free_gradient, (args,), (args_dot,))
        hessian = jax.hessian(objective)(solution, args)[np.ix_(free_index, free_index)]
        factor = jax.scipy.linalg.cho_factor(hessian)
        step = -jax.scipy.linalg.cho_solve(factor, gradient_dot)
        return solution, jnp.zeros_like(solution).at[free_index].set(step, unique_indices=True)

    _check_minimum(objective, solution, args, free_index)
    return minimiser(args)


def _check_minimum(objective, solution, args, free_index) -> None:
    """Refuse a point that is not a minimum of the free entries (when args are concrete)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)) or free_index.size == 0:
        return
    hessian = np.asarray(jax.hessian(objective)(solution, args))[np.ix_(free_index, free_index)]
    if not np.all(np.isfinite(hessian)) or np.linalg.eigvalsh(0.5 * (hessian + hessian.T))[0] <= 0:
        raise ValueError("implicit_minimum: the Hessian of the free entries is not positive definite at the solution")
