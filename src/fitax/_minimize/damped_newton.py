"""Damped Newton with exact Hessians (optionally refreshed only every few steps, BFGS updates
in between), written as a small solver object driven by one ``lax.while_loop``.

The shape follows optimistix: :class:`DampedNewton` has ``init`` (the state before any
evaluation), ``step`` (one iteration), ``terminate`` (done, and why) and ``postprocess`` (the
:class:`MinimiseResult`); :func:`iterate` is the driver. Each iteration is one of two kinds:

* a *trial*: a step from the current quadratic model, Levenberg–Marquardt damped
  ``(M + lambda I) d = -g`` (``M``: the Hessian, or its positive-definite model) and clipped to a trust radius (see :func:`damped_step`), accepted
  when the objective decreases (:func:`update_trust_region` adapts both from the ratio of
  actual to predicted decrease). With ``hessian_every = 1`` the trial point's exact Hessian is
  computed with its gradient; otherwise only its value and gradient, and the model is updated
  by BFGS.
* a *refresh*: the exact Hessian at the current point, no move (:meth:`DampedNewton.refresh_due`
  says when). It is never thrown away, unlike an exact Hessian at a trial point that gets
  rejected.

Convergence is certified only by :meth:`DampedNewton.certified`: EDM ``0.5 g^T H^-1 g`` below
tolerance at an *exact*, positive-definite Hessian. Whatever the reason for stopping, the
returned Hessian is the exact one at the returned point (a final refresh is made if needed),
so errors computed from it are honest.

Measured on a 251-parameter Poisson cube from hard starts (``blob_cube(50)``, positions off by
~0.7 pixel, seed 0; ``hessian_every = 10``), the previous single loop body took 10 exact
Hessians in 38 evaluations, 5 of them wasted: an indefinite Hessian at the start cost one
evaluation per tenfold increase of the damping (each also forcing a refresh at the same point),
and after a rejected quasi-Newton step the exact Hessian was computed at the next *trial*
point, lost when that trial was rejected too. Here the damping grows inside the step, an
indefinite Hessian is replaced by its :func:`positive_definite_model`, and exact Hessians are
only taken at accepted points: with ``hessian_every = 1000`` (refreshes only when the model
fails or to certify) the same fit takes 2 exact Hessians (start and end) in 52 evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .hessian import HessianPlan, bfgs_update, edm_and_definiteness, internal_derivatives, value_grad_hessian
from .results import RESULTS

INITIAL_TRUST_RADIUS = 3.0
"""Largest first step of any parameter, in units of its error estimate at the start."""

MAX_DAMPING = 1e20
"""Damping (relative to the Hessian's mean diagonal) beyond which no step is attempted."""

MIN_RADIUS = 1e-12
"""Trust radius (internal units, ~sigma) below which no step is attempted."""

REJECTIONS_BEFORE_REFRESH = 2
"""Consecutive rejected quasi-Newton steps after which the exact Hessian is recomputed."""


class MinimiseResult(eqx.Module):
    """End state of :func:`newton`: physical values and derivatives at the best point.

    ``hessian`` is always the exact Hessian at ``v`` (never a BFGS update). ``n_evaluations``
    counts evaluations of the objective and its gradient; ``n_hessians`` of them also computed
    the exact Hessian, ``n_gradients`` did not.
    """

    v: Float[Array, " n"]
    fun: Float[Array, ""]
    grad: Float[Array, " n"]
    hessian: Float[Array, "n n"]
    edm: Float[Array, ""]
    transform: tuple[Array, Array]
    start_fun: Float[Array, ""]
    start_grad: Float[Array, " n"]
    n_hessians: Int[Array, ""]
    n_gradients: Int[Array, ""]
    n_iterations: Int[Array, ""]
    n_evaluations: Int[Array, ""]
    status: Int[Array, ""]


class Problem(eqx.Module):
    """What is minimised: ``fun(v, args)`` over the physical vector ``v`` of the free
    parameters of ``space`` (a :class:`fitax.ParameterSpace`), whose exact Hessians are built
    according to ``plan`` (``None``: dense)."""

    fun: Callable[[Array, Any], Array]
    space: Any
    args: Any
    plan: HessianPlan | None

    def to_physical(self, u: Array, transform: tuple[Array, Array]) -> Array:
        return self.space.to_physical(u, transform)


class NewtonState(eqx.Module):
    """Everything that changes from one iteration to the next."""

    u: Float[Array, " n"]  # internal coordinates of the current (best) point
    fun: Float[Array, ""]
    grad: Float[Array, " n"]  # physical
    hessian: Float[Array, "n n"]  # physical: exact, or a BFGS update of an exact one
    exact: Bool[Array, ""]  # is ``hessian`` the exact Hessian at ``u``?
    edm: Float[Array, ""]  # from ``hessian``; inf where it is not positive definite
    transform: tuple[Array, Array]  # internal coordinates: v = space.to_physical(u, transform)
    start_fun: Float[Array, ""]
    start_grad: Float[Array, " n"]
    damping: Float[Array, ""]
    radius: Float[Array, ""]  # trust radius: largest move of any coordinate in one step
    since_refresh: Int[Array, ""]  # accepted quasi-Newton steps since the last exact Hessian
    rejections: Int[Array, ""]  # consecutive rejected steps
    stalled: Bool[Array, ""]  # a step at an exact Hessian failed with nothing left to try
    n_steps: Int[Array, ""]  # iterations, the first evaluation included
    n_hessians: Int[Array, ""]
    n_gradients: Int[Array, ""]


def positive_definite_model(hessian: Array) -> Array:
    """``hessian`` where it is positive definite; else the same eigenvectors (in coordinates
    scaled by its diagonal) with absolute eigenvalues, floored at 1e-8 of the largest: the
    "saddle-free" Newton model, which keeps the curvature of every direction and turns the
    steps along negative ones downhill.

    A uniform damping large enough to make an indefinite Hessian definite instead flattens
    every direction: on a 251-parameter cube from hard starts the exact Hessian stayed
    indefinite for the first ~35 steps, and BFGS updates of it kept the damping near 1
    (relative to the mean diagonal), so the steps crawled like gradient descent.
    """
    definite = jnp.all(jnp.isfinite(jnp.linalg.cholesky(hessian)))

    def absolute_eigenvalues():
        scale = 1.0 / jnp.sqrt(jnp.maximum(jnp.abs(jnp.diagonal(hessian)), 1e-300))
        eigenvalues, eigenvectors = jnp.linalg.eigh(hessian * jnp.outer(scale, scale))
        magnitude = jnp.maximum(jnp.abs(eigenvalues), 1e-8 * jnp.max(jnp.abs(eigenvalues)))
        return (eigenvectors * magnitude) @ eigenvectors.T / jnp.outer(scale, scale)

    return jax.lax.cond(definite, lambda: hessian, absolute_eigenvalues)


def damped_step(grad_u: Array, hess_u: Array, damping: Array) -> tuple[Array, Array, Array]:
    """Levenberg–Marquardt step ``-(M + lambda s I)^-1 g`` with ``M`` the
    :func:`positive_definite_model` of ``hess_u`` and ``s`` its mean absolute diagonal (so
    that ``lambda`` is dimensionless). Should the system still not factor (rounding,
    non-finite entries), ``lambda`` is raised tenfold until it does, without evaluating the
    objective. Returns ``(step, lambda, solvable)``.
    """
    model = positive_definite_model(hess_u)
    eye = jnp.eye(grad_u.shape[0], dtype=grad_u.dtype)
    diag_scale = jnp.maximum(jnp.mean(jnp.abs(jnp.diagonal(model))), 1e-12)

    def factor(lam):
        return jnp.linalg.cholesky(model + lam * diag_scale * eye)

    def failed(carry):
        lam, chol = carry
        return ~jnp.all(jnp.isfinite(chol)) & (lam < MAX_DAMPING)

    def raise_damping(carry):
        lam = jnp.minimum(jnp.maximum(carry[0] * 10, 1e-6), MAX_DAMPING)
        return lam, factor(lam)

    damping, chol = jax.lax.while_loop(failed, raise_damping, (damping, factor(damping)))
    solvable = jnp.all(jnp.isfinite(chol))
    step = -jax.scipy.linalg.cho_solve((chol, True), grad_u)
    return jnp.where(solvable, step, jnp.zeros_like(step)), damping, solvable


def clip_to_radius(step: Array, radius: Array) -> tuple[Array, Array]:
    """``step`` shrunk so that no coordinate moves more than ``radius``; and its size.

    Internal units are ~1 sigma, so the radius bounds each step in sigmas: far from the
    minimum a quadratic model can send a parameter across the whole space (a source jumping
    50 pixels) into another basin.
    """
    size = jnp.max(jnp.abs(step))
    return step * jnp.minimum(1.0, radius / jnp.maximum(size, 1e-300)), jnp.minimum(size, radius)


def update_trust_region(
    damping: Array, radius: Array, accepted: Array, ratio: Array, step_size: Array
) -> tuple[Array, Array]:
    """New ``(damping, radius)`` after a trial step, from the ratio of actual to predicted
    decrease: a good model (ratio > 0.75) earns less damping and a larger radius, a poor
    one (< 0.25) the opposite, a rejected step ten times the damping and half its own size
    as radius."""
    good, poor = ratio > 0.75, ratio < 0.25
    damping = jnp.where(
        accepted,
        jnp.where(good, damping / 5, jnp.where(poor, damping * 2, damping)),
        jnp.maximum(damping * 10, 1e-6),
    )
    radius = jnp.where(
        accepted,
        jnp.where(good, jnp.maximum(radius, 2 * step_size), jnp.where(poor, 0.5 * radius, radius)),
        0.5 * step_size,
    )
    return jnp.clip(damping, 1e-12, MAX_DAMPING), jnp.clip(radius, MIN_RADIUS, 1e12)


class Proposal(eqx.Module):
    """A trial step and what the model predicts of it."""

    refresh: Bool[Array, ""]  # no move: this iteration computes the exact Hessian in place
    direction: Float[Array, " n"]  # internal coordinates
    size: Float[Array, ""]  # largest move of any coordinate
    predicted: Float[Array, ""]  # decrease of the objective predicted by the quadratic model
    damping: Float[Array, ""]  # the damping that made the model's system solvable
    solvable: Bool[Array, ""]


def _all_finite(*arrays: Array) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


class DampedNewton(eqx.Module):
    """Damped Newton / quasi-Newton trust-region solver (see the module docstring).

    Attributes:
        edm_tol: convergence when the EDM at an exact positive-definite Hessian is below it.
        max_steps: iterations after the first evaluation (one more may refresh the Hessian).
        hessian_every: exact Hessian at every step (1), or after this many accepted BFGS steps.
        errordef: objective change defining one sigma (sets the internal scaling).
        fixed_transform: keep the internal coordinates given to :meth:`init` instead of
            setting their scale from the Hessian at the start.
    """

    edm_tol: float
    max_steps: int = eqx.field(static=True)
    hessian_every: int = eqx.field(static=True)
    errordef: float
    fixed_transform: bool = eqx.field(static=True)

    def init(self, problem: Problem, v0: Array, transform: tuple[Array, Array], u0: Array) -> NewtonState:
        """The state before any evaluation; the first :meth:`step` evaluates at ``u0``."""
        dtype = v0.dtype
        scalar = lambda x: jnp.asarray(x, dtype)  # noqa: E731
        return NewtonState(
            u=u0,
            fun=scalar(jnp.inf),
            grad=jnp.zeros_like(v0),
            hessian=jnp.eye(v0.shape[0], dtype=dtype),
            exact=jnp.asarray(False),
            edm=scalar(jnp.inf),
            transform=transform,
            start_fun=scalar(jnp.nan),
            start_grad=jnp.zeros_like(v0),
            damping=scalar(1e-3),
            radius=scalar(INITIAL_TRUST_RADIUS),
            since_refresh=jnp.asarray(0),
            rejections=jnp.asarray(0),
            stalled=jnp.asarray(False),
            n_steps=jnp.asarray(0),
            n_hessians=jnp.asarray(0),
            n_gradients=jnp.asarray(0),
        )

    def certified(self, state: NewtonState) -> Array:
        """The convergence certificate: EDM below tolerance at an exact, positive-definite
        Hessian (the EDM is infinite where the Hessian is not positive definite)."""
        return state.exact & (state.edm < self.edm_tol)

    def refresh_due(self, state: NewtonState) -> Array:
        """Whether this iteration computes the exact Hessian at the current point: at the
        start; and, with a quasi-Newton model, to certify a small EDM, after
        ``hessian_every`` accepted steps, after :data:`REJECTIONS_BEFORE_REFRESH` rejected
        ones, and before stopping for any other reason (errors need the exact Hessian)."""
        first = state.n_steps == 0
        model_spent = (
            (state.edm < self.edm_tol)
            | (state.since_refresh >= self.hessian_every)
            | (state.rejections >= REJECTIONS_BEFORE_REFRESH)
            | (state.n_steps > self.max_steps)
        )
        return first | (~state.exact & model_spent)

    def evaluate(self, problem: Problem, state: NewtonState, v: Array, exact: Array, v_now: Array):
        """Value, gradient and Hessian at ``v``: the exact Hessian where ``exact`` (always,
        with ``hessian_every = 1``), else the BFGS update of the current one."""
        if self.hessian_every == 1:
            return value_grad_hessian(problem.fun, v, problem.args, problem.plan)

        def quasi_newton():
            f, g = jax.value_and_grad(problem.fun)(v, problem.args)
            # BFGS keeps a positive-definite model positive definite but cannot repair an
            # indefinite one: from an indefinite exact Hessian, 500 steps of a 251-parameter
            # cube did not converge. Start from its positive-definite model instead.
            model = jax.lax.cond(state.exact, positive_definite_model, lambda h: h, state.hessian)
            return f, g, bfgs_update(model, v - v_now, g - state.grad)

        return jax.lax.cond(exact, lambda: value_grad_hessian(problem.fun, v, problem.args, problem.plan), quasi_newton)

    def propose(self, problem: Problem, state: NewtonState) -> Proposal:
        """The trial step from the current model (zero when the Hessian is refreshed)."""
        refresh = self.refresh_due(state)
        to_physical = lambda u: problem.to_physical(u, state.transform)  # noqa: E731
        grad_u, hess_u = internal_derivatives(to_physical, state.u, state.grad, state.hessian, transform_curvature=state.exact)
        direction, damping, solvable = damped_step(grad_u, hess_u, state.damping)
        direction, size = clip_to_radius(direction, state.radius)
        direction = jnp.where(refresh, jnp.zeros_like(direction), direction)
        predicted = -(grad_u @ direction + 0.5 * direction @ (hess_u @ direction))
        return Proposal(refresh=refresh, direction=direction, size=size, predicted=predicted, damping=damping, solvable=solvable)

    def step(self, problem: Problem, state: NewtonState) -> NewtonState:
        """One iteration: a refresh of the exact Hessian in place, or a trial step."""
        first = state.n_steps == 0
        proposal = self.propose(problem, state)
        refresh = proposal.refresh
        to_physical = lambda u: problem.to_physical(u, state.transform)  # noqa: E731
        v_now = to_physical(state.u)
        u_trial = state.u + proposal.direction
        f, g, h = self.evaluate(problem, state, to_physical(u_trial), refresh, v_now)
        actual = state.fun - f
        # A refresh stays at the current point: its exact Hessian is new information even
        # when it is not finite (then the solve stops and says so).
        accept = refresh | (proposal.solvable & _all_finite(f, g, h) & (actual > 0))
        exact = jnp.where(accept, refresh | (self.hessian_every == 1), state.exact)

        ratio = actual / jnp.maximum(proposal.predicted, 1e-300)
        trust_damping, radius = update_trust_region(proposal.damping, state.radius, accept, ratio, proposal.size)
        damping = jnp.where(refresh, state.damping, trust_damping)
        radius = jnp.where(refresh, state.radius, radius)

        # After the first evaluation, fix the internal scaling from the Hessian at the start.
        transform = state.transform
        if not self.fixed_transform:
            scaled = problem.space.transform_state(v_now, jnp.diagonal(h) / (2.0 * self.errordef))
            transform = jax.tree_util.tree_map(lambda a, b: jnp.where(first, a, b), scaled, state.transform)

        pick = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        u, fun, grad, hessian = pick(u_trial, state.u), pick(f, state.fun), pick(g, state.grad), pick(h, state.hessian)
        grad_u, hess_u = internal_derivatives(lambda x: problem.to_physical(x, transform), u, grad, hessian, transform_curvature=exact)
        edm, _ = edm_and_definiteness(grad_u, hess_u)
        # A rejected step whose predicted decrease is already negligible means we are as close
        # as floating point allows; then the EDM test has had its say.
        negligible = proposal.solvable & (jnp.abs(proposal.predicted) < 1e-14 * jnp.maximum(jnp.abs(state.fun), 1.0))
        stalled = ~accept & state.exact & ((damping >= MAX_DAMPING) | (radius <= MIN_RADIUS) | negligible)
        return NewtonState(
            u=u,
            fun=fun,
            grad=grad,
            hessian=hessian,
            exact=exact,
            edm=edm,
            transform=transform,
            start_fun=jnp.where(first, f, state.start_fun),
            start_grad=jnp.where(first, g, state.start_grad),
            damping=damping,
            radius=radius,
            since_refresh=jnp.where(refresh, 0, state.since_refresh + accept.astype(int)),
            rejections=jnp.where(accept, 0, state.rejections + 1),
            stalled=stalled,
            n_steps=state.n_steps + 1,
            n_hessians=state.n_hessians + (refresh | (self.hessian_every == 1)).astype(int),
            n_gradients=state.n_gradients + (~refresh & (self.hessian_every != 1)).astype(int),
        )

    def terminate(self, state: NewtonState) -> tuple[Array, Array]:
        """``(done, result)``: stop when certified, when the values became non-finite, or,
        once the Hessian is exact, when stalled or out of steps."""
        started = state.n_steps > 0
        finite = _all_finite(state.fun, state.grad, state.hessian)
        certified = self.certified(state)
        out_of_steps = state.n_steps > self.max_steps
        done = started & (~finite | certified | (state.exact & (state.stalled | out_of_steps)))
        result = jnp.where(
            ~finite,
            RESULTS.nonfinite,
            jnp.where(certified, RESULTS.converged, jnp.where(state.stalled, RESULTS.no_progress, RESULTS.max_steps_reached)),
        )
        return done, result

    def postprocess(self, problem: Problem, state: NewtonState) -> MinimiseResult:
        _, result = self.terminate(state)
        return MinimiseResult(
            v=problem.to_physical(state.u, state.transform),
            fun=state.fun,
            grad=state.grad,
            hessian=state.hessian,
            edm=state.edm,
            transform=state.transform,
            start_fun=state.start_fun,
            start_grad=state.start_grad,
            n_hessians=state.n_hessians,
            n_gradients=state.n_gradients,
            n_iterations=state.n_steps - 1,
            n_evaluations=state.n_hessians + state.n_gradients,
            status=result,
        )


def iterate(solver: DampedNewton, problem: Problem, state: NewtonState) -> MinimiseResult:
    """The driver: ``solver.step`` until ``solver.terminate`` says done, then ``postprocess``."""
    final = jax.lax.while_loop(lambda s: ~solver.terminate(s)[0], lambda s: solver.step(problem, s), state)
    return solver.postprocess(problem, final)


def newton(
    fun: Callable[[Array, Any], Array],
    space,
    v0: Float[Array, " n"],
    args: Any = None,
    *,
    errordef: float = 1.0,
    transform: tuple[Array, Array] | None = None,
    u0: Float[Array, " n"] | None = None,
    edm_tol: float = 1e-6,
    max_steps: int = 200,
    hessian_every: int = 1,
    plan: HessianPlan | None = None,
) -> MinimiseResult:
    """Minimise ``fun(v, args)`` with :class:`DampedNewton`.

    Steps are taken in the internal coordinates of ``space`` (a
    :class:`fitax.ParameterSpace`): unconstrained, and scaled so that one unit is about one
    standard error. Unless ``transform`` is given, that scaling is set from the Hessian at
    ``v0``; ``u0`` (default 0, i.e. ``v0``) is the start in those coordinates. The status is a
    :class:`~fitax._minimize.RESULTS` code.
    """
    solver = DampedNewton(
        edm_tol=edm_tol, max_steps=max_steps, hessian_every=hessian_every, errordef=errordef,
        fixed_transform=transform is not None,
    )
    problem = Problem(fun=fun, space=space, args=args, plan=plan)
    if transform is None:
        transform = space.transform_state(v0)
    state = solver.init(problem, v0, transform, jnp.zeros_like(v0) if u0 is None else u0)
    return iterate(solver, problem, state)
