"""Minimisation kernels on flat vectors: pure, jit-able functions of ``fun(u, args) -> scalar``.

Two solvers, chosen by problem size in :func:`fitax.fit`:

* :func:`newton` — Newton's method with the exact (autodiff) Hessian, stabilised by
  Levenberg–Marquardt damping ``(H + lambda I) d = -g`` whose size is adapted from the ratio of
  actual to predicted decrease (a trust region in disguise). Quadratic convergence, robust on
  the curved, badly scaled valleys of Poisson likelihoods. One iteration costs one Hessian,
  i.e. about ``n`` gradient evaluations, so it is the method of choice for up to a few tens
  of parameters and for polishing.
* :func:`quasi_newton` — optimistix's BFGS, whose iterations cost one gradient. It brings
  large problems (hundreds of parameters) close to the minimum cheaply. We use optimistix
  rather than our own BFGS because it is a well-kept implementation; we do *not* trust its
  termination flag (a Cauchy test on step sizes that fires far from the minimum on
  250-parameter Poisson fits), so :func:`fitax.fit` always finishes with :func:`newton`,
  which stops only when the estimated distance to the minimum (EDM) is small.

The convergence test is the EDM, ``0.5 g^T H^-1 g`` with the exact Hessian: the expected
decrease of the objective still to come, in the objective's own units, independent of how the
parameters are scaled. It is only accepted where the Hessian is positive definite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, Int

from .mapsum import map_items

# Solver status codes (also used by batch results).
CONVERGED = 0
MAX_STEPS = 1
NO_PROGRESS = 2
NON_FINITE = 3

STATUS_MESSAGES = {
    CONVERGED: "converged (EDM below tolerance, Hessian positive definite)",
    MAX_STEPS: "maximum number of steps reached before the EDM fell below tolerance",
    NO_PROGRESS: "no step decreases the objective, but the EDM is above tolerance "
    "(flat direction, non-smooth objective, or an indefinite Hessian)",
    NON_FINITE: "the objective, its gradient or its Hessian became non-finite",
}


class MinimiseResult(eqx.Module):
    """End state of :func:`newton`: physical values and derivatives at the best point."""

    v: Float[Array, " n"]
    fun: Float[Array, ""]
    grad: Float[Array, " n"]
    hessian: Float[Array, "n n"]
    edm: Float[Array, ""]
    transform: tuple[Array, Array]
    start_fun: Float[Array, ""]
    start_grad: Float[Array, " n"]
    n_hessians: Int[Array, ""]
    n_iterations: Int[Array, ""]
    n_evaluations: Int[Array, ""]
    status: Int[Array, ""]


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
    return HessianColoring(seeds=jnp.asarray(np.array(seeds)), color=jnp.asarray(color), direct=jnp.asarray(direct, float),
                           mirrored=jnp.asarray(mirrored, float))


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


def value_grad_hessian(fun: Callable, v: Array, args: Any, plan: HessianPlan | None = None) -> tuple[Array, Array, Array]:
    """``fun(v, args)``, its gradient and its exact Hessian (see :func:`_value_grad_hessian`).

    When ``fun`` is a sum over items and says so (``fun.item_terms(args)`` gives its
    ``(function(v, item), items)`` terms, as :func:`fitax.fit` provides for a
    :class:`fitax.mapsum.ItemSum` objective), each item's value, gradient and Hessian are
    computed in one pass of a loop over the items and summed.
    """
    item_terms = getattr(fun, "item_terms", None)
    if item_terms is None:
        return _value_grad_hessian(fun, v, args, plan)
    total = None
    for function, items in item_terms(args):
        if items is None:
            part = _value_grad_hessian(function, v, None, plan)
        else:
            per_item = map_items(lambda item, function=function: _value_grad_hessian(function, v, item, plan), items)
            part = tuple(jnp.sum(a, axis=0) for a in per_item)
        total = part if total is None else tuple(a + b for a, b in zip(total, part))
    return total


def _value_grad_hessian(fun: Callable, v: Array, args: Any, plan: HessianPlan | None = None) -> tuple[Array, Array, Array]:
    """``fun(v, args)``, its gradient and its exact Hessian (forward over reverse mode).

    The gradient is linearised once (``jax.linearize``) and the linear map applied to each
    seed, so the value, the gradient and their intermediate arrays are computed once, not
    once per Hessian-vector product. With a ``plan`` only its products are computed; then
    ``fun`` must also accept its vector as a sequence of scalars (as the objectives of
    :func:`fitax.fit` do), so that the cheap parameters' products never see a tangent of
    a costly one.
    """
    n = v.shape[0]
    (value, grad), linear = jax.linearize(lambda x: jax.value_and_grad(fun)(x, args), v)
    full_product = lambda t: linear(t)[1]  # noqa: E731
    if plan is None:
        products = _products(full_product, jnp.eye(n, dtype=v.dtype))
        return value, grad, 0.5 * (products + products.T)
    cheap = jnp.asarray(plan.cheap, dtype=int)
    cheap_linear = full_product
    if plan.costly:
        costly = jnp.asarray(plan.costly, dtype=int)
        columns = _products(full_product, jnp.eye(n, dtype=v.dtype)[costly])  # [k, r] = H[r, costly[k]]
        entries = [v[i] for i in range(n)]

        def cheap_grad(vc):
            def restricted(w):
                values = list(entries)
                for k, i in enumerate(plan.cheap):
                    values[i] = w[k]
                return fun(values, args)

            return jax.grad(restricted)(vc)

        _, cheap_linear = jax.linearize(cheap_grad, v[cheap])
    m = len(plan.cheap)
    coloring = plan.coloring
    seeds = jnp.eye(m, dtype=v.dtype) if coloring is None else coloring.seeds.astype(v.dtype)
    products = _products(cheap_linear, seeds)
    if coloring is None:
        block = products
    else:
        by_column = products[coloring.color]  # [c, r] = product holding column c, row r
        block = by_column.T * coloring.direct + by_column * coloring.mirrored
    hessian = jnp.zeros((n, n), v.dtype).at[cheap[:, None], cheap[None, :]].set(block)
    if plan.costly:
        hessian = hessian.at[costly, :].set(columns).at[:, costly].set(columns.T)
    return value, grad, 0.5 * (hessian + hessian.T)


def edm_and_definiteness(grad: Array, hessian: Array) -> tuple[Array, Array]:
    """``0.5 g^T H^-1 g`` and whether ``H`` is positive definite (a Cholesky succeeds)."""
    chol = jnp.linalg.cholesky(hessian)
    positive_definite = jnp.all(jnp.isfinite(chol))
    z = jax.scipy.linalg.solve_triangular(chol, grad, lower=True)
    edm = 0.5 * jnp.sum(z * z)
    return jnp.where(positive_definite, edm, jnp.inf), positive_definite


def _bfgs_update(hessian: Array, step: Array, grad_change: Array) -> Array:
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


INITIAL_TRUST_RADIUS = 3.0
"""Largest first step of any parameter, in units of its error estimate at the start."""


class _NewtonState(eqx.Module):
    u: Array
    fun: Array
    grad: Array  # physical
    hessian: Array  # physical
    transform: tuple[Array, Array]
    start_fun: Array
    start_grad: Array
    damping: Array
    radius: Array  # trust radius: largest move of any coordinate in one step (internal units)
    edm: Array
    exact: Array  # is ``hessian`` the exact Hessian at ``u`` (not a BFGS update)?
    since_refresh: Array
    n_hessians: Array
    n_iterations: Array
    n_evaluations: Array
    status: Array  # -1 while running


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
    """Minimise ``fun(v, args)`` by damped Newton steps with the exact Hessian.

    With ``hessian_every = m > 1`` the exact Hessian is computed every ``m``-th step and
    updated by BFGS in between (a trust-region quasi-Newton method that keeps Newton's
    robustness at a fraction of the cost for many parameters); convergence is still only
    declared at a freshly computed exact Hessian.

    Steps are taken in the internal coordinates of ``space`` (a
    :class:`fitax.ParameterSpace`): unconstrained, and scaled so that one unit is about one
    standard error. Unless ``transform`` is given, that scaling is set from the Hessian at
    the first evaluation, ``v0``. Every iteration evaluates ``fun``, its gradient and its
    Hessian once, at one call site, so the Hessian is compiled once.

    Stops when the EDM is below ``edm_tol`` at a positive-definite Hessian (``CONVERGED``),
    after ``max_steps`` iterations (``MAX_STEPS``), when no damping yields a decrease
    (``NO_PROGRESS``) or when values become non-finite (``NON_FINITE``).
    """
    n = v0.shape[0]
    dtype = v0.dtype
    fixed_transform = transform is not None
    if transform is None:
        transform = space.transform_state(v0)
    u_start = jnp.zeros_like(v0) if u0 is None else u0
    eye = jnp.eye(n, dtype=dtype)
    init = _NewtonState(
        u=u_start,
        fun=jnp.asarray(jnp.inf, dtype),
        grad=jnp.zeros_like(v0),
        hessian=eye,
        transform=transform,
        start_fun=jnp.asarray(jnp.nan, dtype),
        start_grad=jnp.zeros_like(v0),
        damping=jnp.asarray(1e-3, dtype),
        radius=jnp.asarray(INITIAL_TRUST_RADIUS, dtype),
        edm=jnp.asarray(jnp.inf, dtype),
        exact=jnp.asarray(False),
        since_refresh=jnp.asarray(0),
        n_hessians=jnp.asarray(0),
        n_iterations=jnp.asarray(0),
        n_evaluations=jnp.asarray(0),
        status=jnp.asarray(-1),
    )

    def cond(s: _NewtonState):
        return s.status < 0

    def body(s: _NewtonState) -> _NewtonState:
        first = s.n_evaluations == 0
        # A BFGS-updated Hessian that says "converged" must be confirmed by an exact one at
        # the same point: a zero step with a refresh.
        certify = ~s.exact & (s.edm < edm_tol)
        refresh = first | certify | (s.since_refresh + 1 >= hessian_every)
        to_physical = lambda u: space.to_physical(u, s.transform)  # noqa: E731
        grad_u, hess_u = internal_derivatives(to_physical, s.u, s.grad, s.hessian, transform_curvature=s.exact)
        # Damping scaled by the Hessian's diagonal magnitude keeps lambda dimensionless.
        diag_scale = jnp.maximum(jnp.mean(jnp.abs(jnp.diagonal(hess_u))), 1e-12)
        chol = jnp.linalg.cholesky(hess_u + s.damping * diag_scale * eye)
        solvable = jnp.all(jnp.isfinite(chol)) & ~first & ~certify
        step = -jax.scipy.linalg.cho_solve((chol, True), grad_u)
        step = jnp.where(solvable, step, jnp.zeros_like(step))
        # Internal units are ~1 sigma, so the radius bounds each step in sigmas: far from the
        # minimum a quadratic model can send a parameter across the whole space (a source
        # jumping 50 pixels) into another basin.
        step_size = jnp.max(jnp.abs(step))
        step = step * jnp.minimum(1.0, s.radius / jnp.maximum(step_size, 1e-300))
        step_size = jnp.minimum(step_size, s.radius)
        predicted = -(grad_u @ step + 0.5 * step @ (hess_u @ step))
        u_trial = s.u + step
        v_trial = to_physical(u_trial)
        if hessian_every == 1:
            f_trial, g_trial, h_trial = value_grad_hessian(fun, v_trial, args, plan)
        else:

            def quasi_newton_update():
                f_new, g_new = jax.value_and_grad(fun)(v_trial, args)
                return f_new, g_new, _bfgs_update(s.hessian, v_trial - to_physical(s.u), g_new - s.grad)

            f_trial, g_trial, h_trial = jax.lax.cond(
                refresh, lambda: value_grad_hessian(fun, v_trial, args, plan), quasi_newton_update
            )
        finite_trial = jnp.isfinite(f_trial) & jnp.all(jnp.isfinite(g_trial)) & jnp.all(jnp.isfinite(h_trial))
        actual = s.fun - f_trial
        # An exact Hessian computed where a quasi-Newton one gave no usable step (or to certify
        # convergence) is new information at the same point: keep it.
        reevaluate = certify | (refresh & ~solvable & ~s.exact)
        accept = first | (reevaluate & finite_trial) | (solvable & finite_trial & (actual > 0))

        # After the first evaluation, fix the internal scaling from the Hessian at v0.
        curvature = jnp.diagonal(h_trial) / (2.0 * errordef)
        new_transform = s.transform if fixed_transform else space.transform_state(v0, curvature)
        transform_now = jax.tree_util.tree_map(lambda a, b: jnp.where(first, a, b), new_transform, s.transform)

        pick = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        u, f, g, h = pick(u_trial, s.u), pick(f_trial, s.fun), pick(g_trial, s.grad), pick(h_trial, s.hessian)
        ratio = actual / jnp.maximum(predicted, 1e-300)
        damping = jnp.where(
            first | reevaluate,
            s.damping,
            jnp.where(
                accept,
                jnp.where(ratio > 0.75, s.damping / 5, jnp.where(ratio < 0.25, s.damping * 2, s.damping)),
                jnp.maximum(s.damping * 10, 1e-6),
            ),
        )
        damping = jnp.clip(damping, 1e-12, 1e20)
        radius = jnp.where(
            first | reevaluate,
            s.radius,
            jnp.where(
                accept,
                jnp.where(ratio > 0.75, jnp.maximum(s.radius, 2 * step_size), jnp.where(ratio < 0.25, 0.5 * s.radius, s.radius)),
                # an indefinite system gave no step at all: only the damping grows
                jnp.where(solvable, 0.5 * step_size, s.radius),
            ),
        )
        radius = jnp.clip(radius, 1e-12, 1e12)
        to_physical_now = lambda x: space.to_physical(x, transform_now)  # noqa: E731
        exact = jnp.where(accept, refresh, s.exact)
        g_u, h_u = internal_derivatives(to_physical_now, u, g, h, transform_curvature=exact)
        edm, _ = edm_and_definiteness(g_u, h_u)
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(h))
        n_iterations = s.n_iterations + 1
        # A rejected step whose predicted decrease is already negligible means we are as close
        # as floating point allows; then the EDM test has had its say and we stop.
        negligible = solvable & (jnp.abs(predicted) < 1e-14 * jnp.maximum(jnp.abs(s.fun), 1.0))
        stalled = ~accept & exact & ((damping >= 1e20) | (radius <= 1e-12) | negligible)
        status = jnp.where(
            ~finite,
            NON_FINITE,
            jnp.where(
                (edm < edm_tol) & exact,
                CONVERGED,
                jnp.where(stalled, NO_PROGRESS, jnp.where(n_iterations > max_steps, MAX_STEPS, -1)),
            ),
        )
        return _NewtonState(
            u=u,
            fun=f,
            grad=g,
            hessian=h,
            transform=transform_now,
            start_fun=jnp.where(first, f_trial, s.start_fun),
            start_grad=jnp.where(first, g_trial, s.start_grad),
            damping=damping,
            radius=radius,
            edm=edm,
            exact=exact,
            # After a rejected step, refresh the Hessian sooner: the model of it was poor.
            since_refresh=jnp.where(refresh, 0, jnp.where(accept, s.since_refresh + 1, hessian_every)),
            n_hessians=s.n_hessians + refresh.astype(int),
            n_iterations=n_iterations,
            n_evaluations=s.n_evaluations + 1,
            status=status,
        )

    final = jax.lax.while_loop(cond, body, init)
    return MinimiseResult(
        v=space.to_physical(final.u, final.transform),
        fun=final.fun,
        grad=final.grad,
        hessian=final.hessian,
        edm=final.edm,
        transform=final.transform,
        start_fun=final.start_fun,
        start_grad=final.start_grad,
        n_hessians=final.n_hessians,
        n_iterations=final.n_iterations - 1,
        n_evaluations=final.n_evaluations,
        status=final.status,
    )


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

    Its own success flag is ignored on purpose (see module docstring); callers polish with
    :func:`newton`.
    """
    solver = optx.BFGS(rtol=rtol, atol=atol)
    solution = optx.minimise(fun, solver, u0, args, max_steps=max_steps, throw=False)
    u = solution.value
    # BFGS can in rare cases wander to a non-finite region; fall back to the start then.
    f = fun(u, args)
    f_start = fun(u0, args)
    better = jnp.isfinite(f) & (f <= f_start)
    u = jnp.where(better, u, u0)
    return u, jnp.where(better, f, f_start), solution.stats["num_steps"]
