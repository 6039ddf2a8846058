"""Bring a large problem near its minimum with optimistix's BFGS (one gradient per step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float


def quasi_newton(
    fun: Callable[[Array, Any], Array],
    u0: Float[Array, " n"],
    args: Any = None,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    max_steps: int = 2000,
) -> tuple[Array, Array, Array]:
    """Bring ``u`` near the minimum with optimistix BFGS; returns ``(u, fun(u), n_steps)``.

    We use optimistix rather than our own BFGS because it is a well-kept implementation, but
    we do *not* trust its termination flag (a Cauchy test on step sizes that fires far from the
    minimum on 250-parameter Poisson fits): callers polish with :func:`fitax._minimize.newton`,
    which stops only when the EDM at an exact Hessian is small.
    """
    # Imported here: optimistix (and lineax under it) is a quarter of fitax's import time
    # and only this optional phase needs it.
    import optimistix as optx

    solver = optx.BFGS(rtol=rtol, atol=atol)
    solution = optx.minimise(fun, solver, u0, args, max_steps=max_steps, throw=False)
    u = solution.value
    # BFGS can in rare cases wander to a non-finite region; fall back to the start then.
    f = fun(u, args)
    f_start = fun(u0, args)
    better = jnp.isfinite(f) & (f <= f_start)
    u = jnp.where(better, u, u0)
    return u, jnp.where(better, f, f_start), solution.stats["num_steps"]
