"""``fitax.fit_batch``: thousands of small independent fits in one compiled call.

Each problem is solved by exact-Hessian damped Newton (:func:`fitax._minimize.newton`) with
its own stopping test, then gets its covariance from the exact Hessian. How the problems are
laid over the hardware is a choice, ``vectorize``:

* ``"map"`` (``lax.map``): one problem after another inside one XLA loop. Each problem stops as
  soon as it converges. Best on CPU, where ``vmap`` buys little SIMD for these tiny linear
  algebra kernels but makes every problem run as many iterations as the slowest one
  (``benchmarks/batch_fit.py`` measures both).
* ``"vmap"``: all problems in lock step, the natural form for a GPU.
* ``"auto"``: ``"map"`` on CPU, ``"vmap"`` on accelerators.

Problems are split over all visible devices when there are several (``jax.sharding``), so the
same call spreads over GPUs or CPU cores (fitax starts one CPU device per core). Batches are
padded to a few sizes (:func:`padded_size`) so that a new batch size rarely recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import _minimize, programs
from .device import on_host
from .fit import physical_objective
from .parameters import ParameterSpace, is_parameter

__all__ = ["fit_batch", "BatchFitResult", "fit_traced", "TracedFit"]


@dataclasses.dataclass(frozen=True, repr=False)
class BatchFitResult:
    """Results of :func:`fitax.fit_batch`, one row per problem (host NumPy arrays).

    Attributes:
        params: fitted model pytree with a leading batch axis.
        names: dotted names of the free parameters.
        values, errors: dicts name -> array of shape ``(n_problems,)``.
        stat, edm: arrays ``(n_problems,)``.
        covariance: ``(n_problems, n_free, n_free)``.
        converged: EDM below tolerance and positive-definite Hessian.
        status: solver status codes (see :class:`fitax._minimize.RESULTS`).
        n_iterations: Newton iterations per problem.
        start_errors: why each problem's start point is invalid (non-finite or out of
            bounds), ``""`` for valid starts. Invalid problems are not solved: they keep
            their start values and come back with ``converged=False`` and NaN statistic
            and errors.
    """

    params: Any
    names: tuple[str, ...]
    values: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    stat: np.ndarray
    edm: np.ndarray
    covariance: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iterations: np.ndarray
    start_errors: tuple[str, ...]

    def __len__(self) -> int:
        return self.stat.shape[0]

    def message(self, i: int) -> str:
        """Why problem ``i`` stopped."""
        if self.start_errors[i]:
            return f"not fitted: {self.start_errors[i]}"
        text = _minimize.RESULTS(int(self.status[i])).message
        if self.status[i] == _minimize.RESULTS.converged and not self.converged[i]:
            text = "the Hessian is not positive definite at the end point: errors are undefined"
        return text

    def best(self) -> int:
        """Index of the converged problem with the lowest statistic (for multi-start fits)."""
        if not np.any(self.converged):
            raise RuntimeError("no problem in the batch converged")
        return int(np.argmin(np.where(self.converged, self.stat, np.inf)))

    def to_table(self):
        """One row per problem: ``stat``, ``converged``, then ``<name>`` and ``<name>_err`` columns."""
        from astropy.table import Table

        columns = {"stat": self.stat, "converged": self.converged, "n_iterations": self.n_iterations}
        for name in self.names:
            columns[name] = self.values[name]
            columns[f"{name}_err"] = self.errors[name]
        return Table(columns)

    def __repr__(self) -> str:
        n_ok = int(np.sum(self.converged))
        n_invalid = sum(bool(e) for e in self.start_errors)
        invalid = f", {n_invalid} with invalid starts" if n_invalid else ""
        return (
            f"BatchFitResult({len(self)} problems, {n_ok} converged{invalid}, free parameters {list(self.names)}, "
            f"median iterations {np.median(self.n_iterations):.0f})"
        )


def _repeat_last(x, extra: int):
    """``x`` with its last row repeated ``extra`` times; host arrays stay on the host (JAX
    would compile a small program per shape for them, ~14 ms each in a new process)."""
    if extra == 0:
        return x
    xp = np if on_host(x) else jnp
    return xp.concatenate([x, xp.repeat(x[-1:], extra, axis=0)])


def _batch_size(tree, what: str) -> int | None:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    sizes = {}
    for path, leaf in leaves:
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(f"{what}{jax.tree_util.keystr(path)} is a scalar; every leaf needs a leading batch axis")
        sizes[jax.tree_util.keystr(path)] = shape[0]
    if not sizes:
        return None
    distinct = set(sizes.values())
    if len(distinct) > 1:
        first = next(iter(sizes.items()))
        odd = next((k, v) for k, v in sizes.items() if v != first[1])
        raise ValueError(
            f"inconsistent batch sizes: {what}{first[0]} has {first[1]} problems but {what}{odd[0]} has {odd[1]}"
        )
    return distinct.pop()


@dataclasses.dataclass(frozen=True)
class _WithShared:
    """``objective(params, args, shared)`` seen as ``objective(params, (args, shared))``.

    A frozen dataclass (hashable by the wrapped function) so the jit cache is reused.
    """

    objective: Callable

    def __call__(self, params, args):
        own, shared = args
        return self.objective(params, own, shared)


def _covariance(hessian, errordef):
    """``2 errordef H^-1`` and whether ``H`` is positive definite."""
    chol = jnp.linalg.cholesky(hessian)
    inv_chol = jax.scipy.linalg.solve_triangular(chol, jnp.eye(hessian.shape[0]), lower=True)
    return 2.0 * errordef * inv_chol.T @ inv_chol, jnp.all(jnp.isfinite(chol))


class TracedFit(NamedTuple):
    """What :func:`fit_traced` returns: arrays, so it can be chained inside a program.

    ``v`` holds the free parameters' physical values (``ParameterSpace.names`` order),
    ``stat`` the objective there, ``status`` a :class:`fitax._minimize.RESULTS` code and
    ``covariance`` ``2 errordef H^-1`` (see :func:`fit_batch`'s ``method``).
    ``converged``: status converged at a positive-definite Hessian.
    """

    v: Array
    stat: Array
    edm: Array
    status: Array
    n_iterations: Array
    covariance: Array
    positive_definite: Array

    @property
    def converged(self) -> Array:
        return (self.status == _minimize.RESULTS.converged) & self.positive_definite


def fit_traced(
    objective: Callable,
    space: ParameterSpace,
    params,
    args: Any = None,
    *,
    errordef: float = 1.0,
    tol: float = 1e-6,
    max_steps: int = 100,
    method: Literal["newton", "projected"] = "projected",
) -> TracedFit:
    """One fit of ``objective(params, args)`` over the free parameters of ``space``, started
    at ``params``, as a traceable function: for programs that chain fits and the
    computations between them inside one ``jit`` (a hypothesis test's fits and the Asimov
    data made from one of them), where each :func:`fitax.fit` call would pay its own
    dispatch and Python. ``method``, ``errordef``, ``tol`` and ``max_steps`` as in
    :func:`fit_batch`; no start checks (do them on the host).

    Example:
        >>> import jax, jax.numpy as jnp, fitax
        >>> params = {"x": fitax.Parameter(1.0, min=0.0)}
        >>> objective = lambda p, target: (p["x"].value - target) ** 2
        >>> space = fitax.ParameterSpace.from_params(params)
        >>> jax.jit(lambda t: fitax.fit_traced(objective, space, params, t).v)(jnp.asarray(-2.0))
        Array([0.], dtype=float64)
    """
    physical = physical_objective(objective, space, params, errordef)
    v0 = space.values(params)
    edm_tol = tol * errordef
    if method == "projected":
        lower, upper = (jnp.asarray(x, v0.dtype) for x in space.limits)
        result = _minimize.projected_newton(physical, v0, lower, upper, args, errordef=errordef, edm_tol=edm_tol, max_steps=max_steps)
        full, full_definite = _covariance(result.hessian, errordef)

        def conditional():
            free = _minimize.free_parameters(result.v, result.grad, lower, upper)
            covariance, _ = _covariance(_minimize.free_block(result.hessian, free), errordef)
            return jnp.where(free[:, None] & free[None, :], covariance, jnp.nan)

        covariance = jax.lax.cond(full_definite, lambda: full, conditional)
        # the solver's EDM is finite only at a positive-definite free block
        positive_definite = jnp.isfinite(result.edm)
    else:
        result = _minimize.newton(physical, space, v0, args, errordef=errordef, edm_tol=edm_tol, max_steps=max_steps)
        covariance, positive_definite = _covariance(result.hessian, errordef)
    return TracedFit(result.v, result.fun, result.edm, result.status, result.n_iterations, covariance, positive_definite)


def _solve_one(objective, space: ParameterSpace, errordef, tol, max_steps, method, shared, problem):
    params, args = problem
    if shared is not None:
        args = (args, shared)
    return tuple(fit_traced(objective, space, params, args, errordef=errordef, tol=tol, max_steps=max_steps, method=method))


def _solve_all(objective, space, params_batch, args, shared, errordef, tol, max_steps, method, vectorize, chunk):
    solve = functools.partial(_solve_one, objective, space, errordef, tol, max_steps, method, shared)
    if vectorize == "vmap":
        return jax.vmap(solve)((params_batch, args))
    return jax.lax.map(solve, (params_batch, args), batch_size=chunk)


@programs.cached(name="fitax.fit_batch")
def _run_batch(objective, space, params_batch, args, shared, errordef, tol, max_steps, method, vectorize, chunk):
    devices = jax.devices()
    if len(devices) == 1:
        return _solve_all(objective, space, params_batch, args, shared, errordef, tol, max_steps, method, vectorize, chunk)
    # Several devices: each solves its slice of the batch (fit_batch pads to a multiple).
    mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    batch_spec = jax.sharding.PartitionSpec("batch")

    def local(problems, shared_local):
        return _solve_all(objective, space, *problems, shared_local, errordef, tol, max_steps, method, vectorize, chunk)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(batch_spec, jax.sharding.PartitionSpec()),
        out_specs=batch_spec,
        check_vma=False,
    )((params_batch, args), shared)


def start_errors(space: ParameterSpace, start: np.ndarray) -> list[str]:
    """Why each row of ``start`` (``n_problems x n_free`` physical values) cannot start a
    fit: the first free parameter that is non-finite or outside its bounds, ``""`` where
    the row is valid. Vectorised over problems; messages are built for the bad rows only."""
    lower, upper = space.limits
    bad = ~np.isfinite(start) | (start < lower) | (start > upper)
    errors = [""] * start.shape[0]
    for row in np.nonzero(bad.any(axis=1))[0]:
        column = int(np.argmax(bad[row]))
        name, value = space.names[column], start[row, column]
        if not np.isfinite(value):
            errors[row] = f"parameter {name!r} has a non-finite start value {value}"
        else:
            errors[row] = f"parameter {name!r} starts at {value:.6g}, outside its bounds [{lower[column]:.6g}, {upper[column]:.6g}]"
    return errors


def padded_size(n: int, n_devices: int = 1) -> int:
    """Batch size the problems are padded to: a power of two (at least 16) up to 1024, a
    multiple of 512 above, and a multiple of the device count. Batches of different sizes
    then share a few compiled programs, at <= 2.4% extra work for large batches of round size
    and at most 50% just above 1024; the floor of 16 keeps the small refit batches of
    iterative schemes (a few stars) cheap."""
    bucket = max(16, 1 << (n - 1).bit_length()) if n <= 1024 else -(-n // 512) * 512
    return -(-bucket // n_devices) * n_devices


def fit_batch(
    objective: Callable,
    params_batch,
    args: Any = None,
    *,
    shared: Any = None,
    vectorize: Literal["auto", "map", "vmap"] = "auto",
    chunk_size: int | None = None,
    errordef: float = 1.0,
    tol: float = 1e-6,
    max_steps: int = 100,
    method: Literal["newton", "projected"] = "newton",
) -> BatchFitResult:
    """Fit many independent problems of the same structure in one compiled call.

    Args:
        objective: ``objective(params)``, ``objective(params, args)`` or, with ``shared``,
            ``objective(params, args, shared)`` for *one* problem.
        params_batch: the model pytree with a leading batch axis on every Parameter value
            (e.g. ``Parameter(jnp.array([...]))``); all problems share bounds and frozen flags.
        args: per-problem data, every leaf with the same leading batch axis.
        shared: data common to all problems (not batched), e.g. a PSF grid.
        vectorize: ``"map"``, ``"vmap"`` or ``"auto"`` (see module docstring).
        chunk_size: with ``"map"``, vectorise this many problems per loop step.
        errordef, tol, max_steps: as in :func:`fitax.fit`.
        method: ``"newton"`` (damped Newton in unbounded internal coordinates, robust from
            poor starts) or ``"projected"`` (Newton in physical coordinates with the bounds
            as a box, :func:`fitax._minimize.projected_newton`: for starts near the minimum,
            e.g. pseudo-experiments fitted from the parameters they were drawn at, and
            minima on a bound, which it reaches exactly instead of geometrically). Errors
            come from the whole Hessian where it is positive definite (as damped Newton
            reports them next to a bound); otherwise from the block of the parameters not
            held by a bound (conditional on those), and the held ones get NaN.

    A problem whose start point is invalid (a non-finite value, or one outside the bounds)
    does not stop the batch: it is not fitted and comes back with ``converged=False`` and
    :meth:`BatchFitResult.message` saying why. Problems whose objective is non-finite at
    the start come back flagged likewise (status ``RESULTS.nonfinite``).

    Example (multi-start):
        >>> import jax.numpy as jnp, numpy as np, fitax
        >>> starts = {"x": fitax.Parameter(jnp.linspace(-3, 3, 6))}
        >>> res = fitax.fit_batch(lambda p: (p["x"].value ** 2 - 1) ** 2, starts)
        >>> np.unique(np.round(res.values["x"], 3)).tolist(), bool(res.converged.all())
        ([-1.0, 1.0], True)
    """
    if method not in ("newton", "projected"):
        raise ValueError(f"unknown method {method!r}; expected 'newton' or 'projected'")
    if vectorize not in ("auto", "map", "vmap"):
        raise ValueError(f"unknown vectorize {vectorize!r}; expected 'auto', 'map' or 'vmap'")
    if vectorize == "auto":
        vectorize = "map" if jax.default_backend() == "cpu" else "vmap"
    values_tree = jax.tree_util.tree_map(lambda p: p.value, params_batch, is_leaf=is_parameter)
    n_params = _batch_size(values_tree, "params_batch")
    n_args = _batch_size(args, "args") if args is not None else None
    if n_params is None:
        raise ValueError("params_batch has no parameters")
    if n_args is not None and n_args != n_params:
        raise ValueError(f"params_batch has {n_params} problems but args has {n_args}")
    first = jax.tree_util.tree_map(lambda x: x[0], params_batch)
    space = ParameterSpace.from_params(first)
    if space.size == 0:
        raise ValueError("the model has no free parameters (all are frozen or tied)")
    start = np.asarray(space.values(params_batch), dtype=float).reshape(n_params, space.size)
    invalid_starts = start_errors(space, start)
    invalid = np.array([bool(e) for e in invalid_starts])
    if invalid.all():
        return _unsolved(space, params_batch, start, invalid_starts)
    if invalid.any():
        # Invalid rows are solved from a valid start (static shapes) and their results discarded.
        substitute = np.where(invalid[:, None], start[np.argmax(~invalid)], start)
        params_batch = space.with_values(params_batch, substitute)

    wrapped = objective if shared is None else _WithShared(objective)
    # Pad by repeating the last problem, so new batch sizes rarely trigger a new compilation.
    n_padded = padded_size(n_params, jax.device_count())
    padded = jax.tree_util.tree_map(functools.partial(_repeat_last, extra=n_padded - n_params), (params_batch, args))
    outputs = _run_batch(
        wrapped, space, *padded, shared, float(errordef), float(tol), int(max_steps), method, vectorize, chunk_size
    )
    v, stat, edm, status, n_iter, cov, pd = (np.asarray(a)[:n_params] for a in outputs)
    v = np.where(invalid[:, None], start, v)
    status = np.where(invalid, _minimize.RESULTS.nonfinite, status)
    stat, edm = np.where(invalid, np.nan, stat), np.where(invalid, np.nan, edm)
    pd = pd & ~invalid
    errors = np.where(pd[:, None], np.sqrt(np.abs(np.diagonal(cov, axis1=1, axis2=2))), np.nan)
    fitted = space.with_values(params_batch, v)
    return BatchFitResult(
        params=fitted,
        names=space.names,
        values={n: v[:, i] for i, n in enumerate(space.names)},
        errors={n: errors[:, i] for i, n in enumerate(space.names)},
        stat=stat,
        edm=edm,
        covariance=np.where(pd[:, None, None], cov, np.nan),
        converged=(status == _minimize.RESULTS.converged) & pd,
        status=status,
        n_iterations=np.where(invalid, 0, n_iter),
        start_errors=tuple(invalid_starts),
    )


def _unsolved(space: ParameterSpace, params_batch, start: np.ndarray, invalid_starts: list[str]) -> BatchFitResult:
    """The result of a batch none of whose problems has a valid start: nothing is fitted."""
    n, k = start.shape
    nan = np.full(n, np.nan)
    return BatchFitResult(
        params=params_batch,
        names=space.names,
        values={name: start[:, i] for i, name in enumerate(space.names)},
        errors={name: nan for name in space.names},
        stat=nan,
        edm=nan,
        covariance=np.full((n, k, k), np.nan),
        converged=np.zeros(n, bool),
        status=np.full(n, _minimize.RESULTS.nonfinite),
        n_iterations=np.zeros(n, int),
        start_errors=tuple(invalid_starts),
    )

