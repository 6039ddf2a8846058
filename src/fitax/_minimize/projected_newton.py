"""Projected Newton for box-bounded problems started near their minimum, in physical
coordinates: the solver of many small fits whose optimum may lie on a bound (toy fits).

:class:`~fitax._minimize.damped_newton.DampedNewton` maps each bounded parameter to an
unbounded internal coordinate, so a parameter whose minimum is on its bound (a signal
strength at 0 in half of the background-only pseudo-experiments) approaches it only
geometrically: ~20 iterations where the others need ~6 (measured on the sbottom workspace's
toys), and the end point is near the bound, not on it. Here the bounds are a box and the
parameters stay physical:

* the *active set* is the parameters on a bound whose gradient points out of the box (the
  Karush-Kuhn-Tucker condition); the Newton step
  ``H_ff d_f = -g_f`` is solved on the others, with the Hessian's positive-definite model
  where a Cholesky factorisation fails;
* the step is clipped to a trust radius (at first :data:`STEP_RADIUS` standard errors from
  the Hessian's diagonal, so a fit does not jump into another valley of a non-convex
  likelihood; doubled after an accepted clipped step, halved after a rejected one), then
  projected onto the box; a trial that does not decrease the objective is rejected;
* convergence: EDM ``0.5 g_f^T H_ff^-1 g_f`` below tolerance at the exact, positive-definite
  Hessian of the free block — the same certificate as :class:`DampedNewton`, with the bounds'
  KKT conditions satisfied exactly.

:func:`fitax.fit_batch` takes the covariance from the whole Hessian where it is positive
definite, else from the block of the parameters not held by a bound (:func:`free_parameters`).

Each iteration is one evaluation of value, gradient and exact Hessian. The solver has no
internal scaling to learn, so it suits starts already near the minimum (a toy fitted from the
parameters it was generated at); from a poor start the damped Newton solver is the robust one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .damped_newton import MinimiseResult, positive_definite_model
from .hessian import value_grad_hessian
from .results import RESULTS

STEP_RADIUS = 3.0
"""Largest move of any parameter in the first step, in standard errors (``1/sqrt(H_ii / 2)``
for ``errordef = 1``). Measured on 200 sbottom toys: a fixed radius 3 took a median of 5
iterations and ended above the best known minimum in 5 of 400 fits; unclipped Newton steps
needed more iterations (a tail to 25) and ended higher in 7. From the initial values (48
sbottom data fits) a fixed radius took up to 47 iterations, the doubling up to 37."""

SMALLEST_RADIUS = 1e-10
"""Trust radius (standard errors) below which no trial is attempted (the solve has stalled)."""


def free_parameters(v: Float[Array, " n"], grad: Float[Array, " n"], lower: Float[Array, " n"], upper: Float[Array, " n"]) -> Array:
    """The parameters not held by a bound: those off their bounds, or on one with the
    gradient pointing into the box."""
    outward = ((v <= lower) & (grad > 0)) | ((v >= upper) & (grad < 0))
    return ~outward


def free_block(hessian: Float[Array, "n n"], free: Array) -> Array:
    """``hessian`` with the rows and columns of held parameters replaced by the identity's."""
    return jnp.where(free[:, None] & free[None, :], hessian, jnp.eye(free.shape[0], dtype=hessian.dtype))


class ProjectedState(eqx.Module):
    """Everything that changes from one iteration to the next."""

    v: Float[Array, " n"]
    fun: Float[Array, ""]
    grad: Float[Array, " n"]
    hessian: Float[Array, "n n"]
    direction: Float[Array, " n"]  # the Newton step on the free block from ``v``
    size: Float[Array, ""]  # its largest move of a parameter, in standard errors
    edm: Float[Array, ""]  # of the free block; inf where its Hessian is not positive definite
    radius: Float[Array, ""]  # trust radius, in standard errors
    start_fun: Float[Array, ""]
    start_grad: Float[Array, " n"]
    n_steps: Int[Array, ""]


class ProjectedNewton(eqx.Module):
    """Projected Newton in a box (see the module docstring).

    Attributes:
        lower, upper: the box (``-inf``/``inf`` where unbounded).
        edm_tol: convergence when the free block's EDM is below it.
        max_steps: iterations after the first evaluation.
        errordef: objective change defining one sigma (sets the trust radius).
    """

    lower: Float[Array, " n"]
    upper: Float[Array, " n"]
    edm_tol: float
    max_steps: int = eqx.field(static=True)
    errordef: float

    def newton_step(self, v: Array, grad: Array, hessian: Array) -> tuple[Array, Array, Array]:
        """The Newton step on the free block, its largest move in standard errors, and the
        EDM."""
        free = free_parameters(v, grad, self.lower, self.upper)
        g = jnp.where(free, grad, 0.0)
        h = free_block(hessian, free)
        chol = jnp.linalg.cholesky(h)
        definite = jnp.all(jnp.isfinite(chol))

        def newton():
            return -jax.scipy.linalg.cho_solve((chol, True), g)

        def modified():
            return -jnp.linalg.solve(positive_definite_model(h), g)

        direction = jax.lax.cond(definite, newton, modified)
        edm = jnp.where(definite, -0.5 * g @ direction, jnp.inf)
        sigma = jnp.sqrt(2.0 * self.errordef / jnp.maximum(jnp.abs(jnp.diagonal(h)), 1e-300))
        direction = jnp.where(free, direction, 0.0)
        return direction, jnp.max(jnp.abs(direction) / sigma), edm

    def init(self, fun: Callable, v0: Array, args: Any) -> ProjectedState:
        """The state at the start point (one evaluation)."""
        f, g, h = value_grad_hessian(fun, v0, args)
        direction, size, edm = self.newton_step(v0, g, h)
        return ProjectedState(
            v=v0, fun=f, grad=g, hessian=h, direction=direction, size=size, edm=edm, radius=jnp.asarray(STEP_RADIUS, v0.dtype),
            start_fun=f, start_grad=g, n_steps=jnp.asarray(0),
        )

    def step(self, fun: Callable, args: Any, state: ProjectedState) -> ProjectedState:
        """One trial: the Newton step clipped to the trust radius, projected onto the box."""
        clipped = state.size > state.radius
        scale = jnp.where(clipped, state.radius / jnp.maximum(state.size, 1e-300), 1.0)
        trial = jnp.clip(state.v + scale * state.direction, self.lower, self.upper)
        f, g, h = value_grad_hessian(fun, trial, args)
        accept = jnp.isfinite(f) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(h)) & (f <= state.fun)
        direction, size, edm = self.newton_step(trial, g, h)
        pick = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        return ProjectedState(
            v=pick(trial, state.v),
            fun=pick(f, state.fun),
            grad=pick(g, state.grad),
            hessian=pick(h, state.hessian),
            direction=pick(direction, state.direction),
            size=pick(size, state.size),
            edm=pick(edm, state.edm),
            radius=jnp.where(
                accept,
                # a step that moves nothing (a stationary point that is no minimum) ends the solve
                jnp.where(jnp.any(trial != state.v), jnp.where(clipped, 2.0 * state.radius, state.radius), 0.0),
                0.5 * jnp.minimum(state.radius, state.size),
            ),
            start_fun=state.start_fun,
            start_grad=state.start_grad,
            n_steps=state.n_steps + 1,
        )

    def terminate(self, state: ProjectedState) -> tuple[Array, Array]:
        """``(done, result)``: certified, non-finite at the start, stalled or out of steps."""
        finite = jnp.isfinite(state.fun) & jnp.all(jnp.isfinite(state.grad))
        certified = finite & (state.edm < self.edm_tol)
        stalled = state.radius < SMALLEST_RADIUS
        out_of_steps = state.n_steps >= self.max_steps
        done = ~finite | certified | stalled | out_of_steps
        result = jnp.where(
            ~finite,
            RESULTS.nonfinite,
            jnp.where(certified, RESULTS.converged, jnp.where(stalled, RESULTS.no_progress, RESULTS.max_steps_reached)),
        )
        return done, result

    def postprocess(self, state: ProjectedState) -> MinimiseResult:
        _, result = self.terminate(state)
        identity = (jnp.ones_like(state.v), jnp.zeros_like(state.v))
        return MinimiseResult(
            v=state.v, fun=state.fun, grad=state.grad, hessian=state.hessian, edm=state.edm, transform=identity,
            start_fun=state.start_fun, start_grad=state.start_grad, n_hessians=state.n_steps + 1,
            n_gradients=jnp.asarray(0), n_iterations=state.n_steps, n_evaluations=state.n_steps + 1, status=result,
        )


def projected_newton(
    fun: Callable[[Array, Any], Array],
    v0: Float[Array, " n"],
    lower: Float[Array, " n"],
    upper: Float[Array, " n"],
    args: Any = None,
    *,
    errordef: float = 1.0,
    edm_tol: float = 1e-6,
    max_steps: int = 100,
) -> MinimiseResult:
    """Minimise ``fun(v, args)`` over the box ``[lower, upper]`` with :class:`ProjectedNewton`
    from ``v0`` (inside the box or on its faces). ``hessian`` of the result is the exact
    Hessian at ``v`` over all parameters; the status is a :class:`~fitax._minimize.RESULTS`
    code."""
    solver = ProjectedNewton(
        lower=lower, upper=upper, edm_tol=edm_tol, max_steps=max_steps, errordef=errordef,
    )
    state = solver.init(fun, v0, args)
    final = jax.lax.while_loop(lambda s: ~solver.terminate(s)[0], lambda s: solver.step(fun, args, s), state)
    return solver.postprocess(final)
