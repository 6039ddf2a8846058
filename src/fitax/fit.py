"""``fitax.fit``: minimise an objective over the free parameters of a model pytree.

The whole fit — solver loop, Hessian and covariance — is one compiled XLA program per model
structure and objective, with no host round-trips inside. Results come back to the host once,
as a :class:`FitResult`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _minimize, programs
from .mapsum import ItemSum
from .parameters import ParameterSpace, parameters_dict

__all__ = ["fit", "FitResult", "NEWTON_MAX_PARAMETERS", "HESSIAN_EVERY_LARGE"]

Method = Literal["auto", "newton", "bfgs"]

NEWTON_MAX_PARAMETERS = 40
"""Up to this many free parameters Newton computes the exact Hessian at every step.

One exact Hessian costs about ``n`` gradients; above this size most steps use a BFGS update
instead (:data:`HESSIAN_EVERY_LARGE`). ``benchmarks/core_fit.py`` measures the trade-off.
"""

HESSIAN_EVERY_LARGE = 10
"""Exact-Hessian refresh interval of Newton above :data:`NEWTON_MAX_PARAMETERS` parameters
(also refreshed after two rejected steps in a row and to certify convergence). Measured on
the hard starts of the K = 50 blob cube (251 parameters; seeds 0, 1, 2): 4, 6, 6 exact
Hessians (the solver before its step rework took 10, 8, 6); refreshing only when needed
(1000) took 2, 2, 3 there but ended a joint PSF-shape fit of the photometry tests at an
indefinite Hessian, so it is not the default."""


def call_objective(objective: Callable, params, args):
    """``objective(params)`` or, when data are passed separately, ``objective(params, args)``."""
    return objective(params) if args is None else objective(params, args)


@dataclasses.dataclass(frozen=True, repr=False)
class FitResult:
    """The outcome of :func:`fitax.fit`.

    Attributes:
        params: the fitted model pytree (free parameters at the best fit, ties applied).
        values: best-fit value of every parameter, by dotted name (frozen and tied included).
        errors: 1-sigma errors from the covariance, by dotted name (0 for frozen parameters,
            the source's error for tied ones).
        stat: objective at the best fit (priors included).
        covariance: covariance matrix of the free parameters (order of ``free_names``),
            ``2 * errordef * H^-1`` with ``H`` the exact Hessian in physical units.
        edm: estimated distance to the minimum, ``0.5 g^T H^-1 g`` (objective units).
        converged: fitax's own verdict: EDM below tolerance *and* positive-definite Hessian.
        message: why the fit stopped, and any warning (parameters at bounds, ...).
        n_evaluations: objective (value and gradient) evaluations; ``n_hessians`` of them
            also computed the exact Hessian, ``n_gradients`` did not (quasi-Newton steps).
    """

    params: Any
    free_names: tuple[str, ...]
    values: dict[str, float]
    errors: dict[str, float]
    units: dict[str, str | None]
    frozen: dict[str, bool]
    stat: float
    covariance: np.ndarray
    edm: float
    converged: bool
    message: str
    n_evaluations: int
    n_gradients: int
    n_iterations: int
    n_hessians: int
    method: str

    @property
    def correlation(self) -> np.ndarray:
        """Correlation matrix of the free parameters (order of ``free_names``)."""
        sigma = np.sqrt(np.diag(self.covariance))
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.covariance / np.outer(sigma, sigma)

    def to_table(self):
        """The parameters as an astropy Table: name, value, error, unit, frozen."""
        from astropy.table import Table

        names = list(self.values)
        return Table(
            {
                "name": names,
                "value": [self.values[n] for n in names],
                "error": [self.errors[n] for n in names],
                "unit": [self.units[n] or "" for n in names],
                "frozen": [self.frozen[n] for n in names],
            }
        )

    def __repr__(self) -> str:
        head = (
            f"FitResult(converged={self.converged}, stat={self.stat:.6f}, edm={self.edm:.2e}, "
            f"method={self.method!r}, n_evaluations={self.n_evaluations})"
        )
        width = max([len(n) for n in self.values] + [4])
        lines = [head, f"  {'name':<{width}}  {'value':>13}  {'error':>11}  unit"]
        for name, value in self.values.items():
            error = "frozen" if self.frozen[name] else f"{self.errors[name]:.4g}"
            lines.append(f"  {name:<{width}}  {value:>13.6g}  {error:>11}  {self.units[name] or ''}")
        if not self.converged or "warning" in self.message:
            lines.append(f"  message: {self.message}")
        return "\n".join(lines)


def physical_objective(objective, space: ParameterSpace, params, errordef: float):
    """``objective`` (priors added) as a function of the free parameters' values ``v``; for
    an :class:`~fitax.mapsum.ItemSum`, an ItemSum of its terms as functions of ``v``, so that
    exact Hessians are computed item by item."""
    def fun(v, args):
        model = space.with_values(params, v)
        return call_objective(objective, model, args) + errordef * space.prior_penalty(model)

    if isinstance(objective, ItemSum):
        def penalty(v, _):
            return errordef * space.prior_penalty(space.with_values(params, v))

        def item_terms(args):
            terms = [(functools.partial(_term_of_values, function, space, params), items) for function, items in objective.terms(args)]
            return terms + [(penalty, None)]

        # A sum over items again, of functions of the vector ``v``: summed with ``v`` as the
        # shared argument, the per-item gradients come out as one vector (a pytree of n
        # scalar parameters added O(n) small operations outside the loop, each compiled on
        # its own), and value_grad_hessian sees the items.
        return ItemSum(item_terms)
    return fun


def _term_of_values(function, space: ParameterSpace, params, v, item):
    return function(space.with_values(params, v), item)


@programs.cached(name="fitax.fit")
def _run_fit(objective, space: ParameterSpace, params, args, method: str, errordef, edm_tol, max_steps, hessian_every, plan):
    v0 = space.values(params)
    physical = physical_objective(objective, space, params, errordef)
    if method != "bfgs":
        return _minimize.newton(
            physical, space, v0, args, errordef=errordef, edm_tol=edm_tol, max_steps=max_steps, hessian_every=hessian_every,
            plan=plan,
        ), 0
    # BFGS from the start point, in coordinates whitened by the exact Hessian there (so its
    # first step is a Newton step and it knows the correlations from the outset), then Newton
    # to converge and to certify convergence.
    f0, g0, h0 = _minimize.value_grad_hessian(physical, v0, args, plan)
    transform = space.transform_state(v0, jnp.diagonal(h0) / (2.0 * errordef))
    to_physical = lambda u: space.to_physical(u, transform)  # noqa: E731
    _, hess_u = _minimize.internal_derivatives(to_physical, jnp.zeros_like(v0), g0, h0)
    # Far from the minimum the Hessian is often indefinite; its absolute eigenvalues still give
    # the right metric (a standard modified-Newton choice), floored to stay invertible.
    eigenvalues, eigenvectors = jnp.linalg.eigh(hess_u / (2.0 * errordef))
    magnitude = jnp.maximum(jnp.abs(eigenvalues), 1e-8 * jnp.max(jnp.abs(eigenvalues)))
    usable = jnp.all(jnp.isfinite(eigenvalues))
    unwhiten = jnp.where(usable, eigenvectors / jnp.sqrt(magnitude), jnp.eye(v0.shape[0]))

    def whitened(w, a):
        return physical(to_physical(unwhiten @ w), a)

    start_ok = jnp.isfinite(f0) & jnp.all(jnp.isfinite(g0))
    w, _, n_bfgs = jax.lax.cond(
        start_ok,
        lambda: _minimize.quasi_newton(whitened, jnp.zeros_like(v0), args, max_steps=max_steps),
        lambda: (jnp.zeros_like(v0), f0, jnp.asarray(0)),
    )
    u0 = unwhiten @ w
    result = _minimize.newton(
        physical, space, v0, args, errordef=errordef, transform=transform, u0=u0, edm_tol=edm_tol, max_steps=max_steps,
        plan=plan,
    )
    result = eqx.tree_at(lambda r: (r.start_fun, r.start_grad), result, (f0, g0))
    return result, n_bfgs


def _raise_for_bad_start(space: ParameterSpace, params, result) -> None:
    value, grad = float(result.start_fun), np.asarray(result.start_grad)
    if not np.isfinite(value):
        start = ", ".join(f"{n}={v:.6g}" for n, v in zip(space.names, np.asarray(space.values(params))))
        raise ValueError(f"the objective is {value} at the start point ({start}); fix the start values or the data")
    bad = [n for n, g in zip(space.names, grad) if not np.isfinite(g)]
    if bad:
        raise ValueError(
            f"the objective's gradient is non-finite at the start point with respect to {bad}; "
            "a start value may sit where the model is not differentiable (e.g. a zero width)"
        )


def _indefinite_message(names, hessian: np.ndarray) -> str:
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    direction = eigenvectors[:, 0]
    involved = [names[i] for i in np.argsort(-np.abs(direction))[:3] if abs(direction[i]) > 0.1]
    return (
        "the Hessian is not positive definite at the end point (smallest eigenvalue "
        f"{eigenvalues[0]:.3g}, along {involved}): errors are undefined; the parameters may be "
        "degenerate, at a saddle point, or unconstrained by the data"
    )


def fit(
    objective: Callable,
    params,
    method: Method = "auto",
    *,
    args: Any = None,
    errordef: float = 1.0,
    tol: float = 1e-6,
    max_steps: int = 500,
    hessian_every: int | None = None,
    hessian_sparsity=None,
    hessian_costly=None,
) -> FitResult:
    """Minimise ``objective`` over the free parameters of ``params``.

    Args:
        objective: ``objective(params) -> scalar`` (or ``objective(params, args)`` when ``args``
            is given), jit-able. Pass large data through ``args`` rather than a closure so they
            are not baked into the compiled program as constants. Reuse the same function
            object across calls to reuse the compiled fit. A joint likelihood written as a
            :class:`fitax.ItemSum` (a sum over datasets) gets its exact Hessians computed
            dataset by dataset.
        params: a pytree (e.g. an ``equinox.Module`` or dict) whose leaves include
            :class:`fitax.Parameter`; its values are the start point.
        method: ``"newton"`` (damped Newton with exact Hessians, the default ``"auto"``) or
            ``"bfgs"`` (optimistix BFGS to approach the minimum, then Newton to finish).
        errordef: objective change that defines 1 sigma: 1 for chi2 and ``-2 log L`` (Cash,
            WStat), 0.5 for ``-log L``.
        tol: convergence when ``EDM < tol * errordef``.
        max_steps: iteration limit for each solver phase.
        hessian_every: Newton recomputes the exact Hessian every this many steps and uses
            BFGS updates in between; default 1 (pure Newton) up to
            :data:`NEWTON_MAX_PARAMETERS` free parameters, :data:`HESSIAN_EVERY_LARGE` above.
        hessian_sparsity: optional ``n_free x n_free`` booleans (order of the free
            parameters), false where the Hessian is known to vanish, e.g. between the
            nuisance parameters of different datasets of a joint fit. The exact Hessian is
            then built from fewer Hessian-vector products (a column coloring; see
            :func:`fitax._minimize.hessian_coloring`).
        hessian_costly: optional ``n_free`` booleans, true for parameters whose derivatives
            are expensive (e.g. a source's shape in front of a convolution). Their Hessian
            columns are computed in full; the other parameters' block from products that
            hold the costly ones constant, so autodiff skips the expensive operations.

    Returns:
        A :class:`FitResult`.

    Example:
        >>> import jax, jax.numpy as jnp, fitax
        >>> params = {"mu": fitax.Parameter(0.0), "sigma": fitax.Parameter(1.0, min=0)}
        >>> x = jnp.array([0.8, 1.1, 1.3, 0.9, 1.4])
        >>> def nll(p):
        ...     return -2 * jnp.sum(jax.scipy.stats.norm.logpdf(x, p["mu"].value, p["sigma"].value))
        >>> result = fitax.fit(nll, params)
        >>> round(result.values["mu"], 3), round(result.errors["mu"], 3)
        (1.1, 0.102)
    """
    if method not in ("auto", "newton", "bfgs"):
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'newton' or 'bfgs'")
    if not errordef > 0:
        raise ValueError(f"errordef must be > 0, got {errordef}")
    space = ParameterSpace.from_params(params)
    if space.size == 0:
        raise ValueError("the model has no free parameters (all are frozen or tied)")
    space.check_start(params)
    resolved = "newton" if method == "auto" else method
    if hessian_every is None:
        hessian_every = 1 if space.size <= NEWTON_MAX_PARAMETERS else HESSIAN_EVERY_LARGE
    pattern = costly = None
    if hessian_sparsity is not None:
        pattern = np.asarray(hessian_sparsity, bool)
        if pattern.shape != (space.size, space.size):
            raise ValueError(f"hessian_sparsity has shape {pattern.shape}; expected ({space.size}, {space.size}) for the free parameters")
    if hessian_costly is not None:
        costly = np.asarray(hessian_costly, bool)
        if costly.shape != (space.size,):
            raise ValueError(f"hessian_costly has shape {costly.shape}; expected ({space.size},) for the free parameters")
    plan = _minimize.hessian_plan(space.size, pattern, costly)
    result, n_bfgs = _run_fit(
        objective, space, params, args, resolved, float(errordef), float(tol * errordef), int(max_steps), int(hessian_every),
        plan,
    )
    _raise_for_bad_start(space, params, result)
    stuck = _stuck_at_bounds(space, result, float(tol * errordef))
    if stuck.any():
        # A parameter on a bound whose gradient points inside is no constrained minimum: the
        # bound transform's flat end caught it (a step overshot there). Fit once more from
        # the point reached, those parameters back at their start values.
        v_start, v_end = np.asarray(space.values(params)), np.asarray(result.v)
        retry_params = space.with_values(params, list(np.where(stuck, v_start, v_end)))
        retried, n_retry = _run_fit(
            objective, space, retry_params, args, resolved, float(errordef), float(tol * errordef), int(max_steps),
            int(hessian_every), plan,
        )
        if np.isfinite(float(retried.fun)) and float(retried.fun) < float(result.fun):
            first = result
            result = eqx.tree_at(
                lambda r: (r.n_hessians, r.n_gradients, r.n_evaluations, r.n_iterations, r.start_fun, r.start_grad), retried,
                (retried.n_hessians + first.n_hessians, retried.n_gradients + first.n_gradients,
                 retried.n_evaluations + first.n_evaluations, retried.n_iterations + first.n_iterations, first.start_fun,
                 first.start_grad),
            )
            n_bfgs += n_retry
    return _make_result(space, params, result, int(n_bfgs), errordef, resolved)


def _stuck_at_bounds(space: ParameterSpace, result, edm_tol: float) -> np.ndarray:
    """Free parameters of an unconverged fit that sit on a bound although the objective
    decreases into the interior (by more than the EDM tolerance on its own)."""
    n = space.size
    if int(result.status) == _minimize.RESULTS.converged:
        return np.zeros(n, bool)
    v, grad, hessian = np.asarray(result.v), np.asarray(result.grad), np.asarray(result.hessian)
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(grad))):
        return np.zeros(n, bool)
    lower, upper = space.limits
    span = np.where(np.isfinite(upper - lower), upper - lower, np.maximum(np.abs(v), 1.0))
    curvature = np.abs(np.diagonal(hessian)) if hessian.shape == (n, n) else np.ones(n)
    significant = grad**2 > 2.0 * edm_tol * np.where(np.isfinite(curvature) & (curvature > 0), curvature, np.inf)
    on_lower = np.isfinite(lower) & (v - lower <= 1e-9 * span) & (grad < 0)
    on_upper = np.isfinite(upper) & (upper - v <= 1e-9 * span) & (grad > 0)
    return (on_lower | on_upper) & significant


def _make_result(space, params, result, n_bfgs, errordef, method) -> FitResult:
    v, hessian = np.asarray(result.v), np.asarray(result.hessian)
    status = int(result.status)
    message = _minimize.RESULTS(status).message
    converged = status == _minimize.RESULTS.converged
    n = space.size
    try:
        chol = np.linalg.cholesky(hessian)
        inverse = np.linalg.inv(chol)
        covariance = 2.0 * errordef * (inverse.T @ inverse)
        errors_free = np.sqrt(np.diag(covariance))
    except np.linalg.LinAlgError:
        covariance = np.full((n, n), np.nan)
        errors_free = np.full(n, np.nan)
        converged = False
        message = _indefinite_message(space.names, hessian)
    if not np.all(np.isfinite(hessian)):
        converged = False
        message = "the Hessian is not finite at the end point: errors are undefined"
    at_bound = space.at_bound(v, errors_free)
    if at_bound:
        message += f"; warning: parameters at a bound {at_bound}, their errors are not meaningful"

    fitted = space.with_values(params, list(v))  # host scalars: no device op per parameter
    all_params = parameters_dict(fitted)
    free_error = dict(zip(space.names, errors_free.tolist()))
    values, errors, units, frozen = {}, {}, {}, {}
    for name, p in all_params.items():
        values[name] = float(np.asarray(p.value))
        root = name
        while all_params[root].tied_to is not None:
            root = all_params[root].tied_to
        errors[name] = 0.0 if all_params[root].frozen else free_error.get(root, 0.0)
        units[name] = p.unit
        frozen[name] = p.frozen
    return FitResult(
        params=fitted,
        free_names=space.names,
        values=values,
        errors=errors,
        units=units,
        frozen=frozen,
        stat=float(result.fun),
        covariance=covariance,
        edm=float(result.edm),
        converged=converged,
        message=message,
        n_evaluations=int(result.n_evaluations) + n_bfgs,
        n_gradients=int(result.n_gradients) + n_bfgs,
        n_iterations=int(result.n_iterations) + n_bfgs,
        n_hessians=int(result.n_hessians) + (1 if method == "bfgs" else 0),
        method=method,
    )
