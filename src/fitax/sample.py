"""``fitax.sample``: the posterior of the free parameters by NUTS, on the objective of a fit.

The same objective, parameters, priors and bounds as :func:`fitax.fit`: the log density is
``-(objective + errordef * prior_penalty) / (2 errordef)``, so a ``-2 log L`` objective
(``errordef=1``) and a ``-log L`` one (``errordef=0.5``) give the same posterior. Parameters
are sampled in the unconstrained internal coordinates ``u`` of
:class:`fitax.ParameterSpace` (the fit's smooth bound transforms) and the log-Jacobian of
``u -> v`` is added, so the posterior is the one on the physical values ``v``: the
likelihood times the priors, flat (improper) inside the bounds where a parameter has no
prior.

Sampler: NumPyro's NUTS, through its functional kernel (``numpyro.infer.hmc.hmc``), rather
than BlackJAX or one of our own:

* it takes a potential function of a flat vector, which is what a :class:`ParameterSpace`
  gives, and its warm-up (dual-averaging step size, windowed diagonal or dense mass matrix,
  Stan's schedule) lives inside the kernel and accepts a starting inverse mass matrix, here
  the covariance of a previous fit;
* the kernel is a pure function, so warm-up and sampling of all chains (``vmap`` over
  chains) are one compiled program whose inputs are the data (``args``) and the start
  points: sampling again with new data of the same shapes reuses it;
* its diagnostics (split Gelman-Rubin, Geyer's initial-monotone ESS) are maintained with
  it; here they are applied to rank-normalised split chains (Vehtari et al. 2021), which
  gives ArviZ's ``rhat`` (rank) and ``ess`` (bulk) (checked in ``tests/test_sample.py``)
  without ArviZ's xarray stack at run time;
* it adds two small packages (``multipledispatch``; ``tqdm`` is already used) where
  BlackJAX brings ``optax`` and ``absl``, and BlackJAX's window adaptation is one chain's
  function: the warm-up loop, its schedule and the diagnostics would be ours to write.

NumPyro is imported when :func:`sample` is first called (it adds ~1 s to an import).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .fit import FitResult, call_objective
from .parameters import ParameterSpace, parameters_dict

__all__ = ["sample", "SampleResult", "split_r_hat", "effective_sample_size"]

R_HAT_WARNING = 1.01
"""Above this split R-hat the chains have not mixed (Vehtari et al. 2021 recommend 1.01)."""

QUANTILES = (0.16, 0.50, 0.84)
"""Probabilities of the ``q16``, ``q50`` and ``q84`` columns of :meth:`SampleResult.summary`."""


# ------------------------------------------------------------------------------- diagnostics
def _split_chains(draws: np.ndarray) -> np.ndarray:
    """``(chains, draws)`` -> ``(2 chains, draws // 2)``: first and last halves of each chain."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, draws.shape[1] - half:]], axis=0)


def _rank_normalise(draws: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks (ties share their average rank), Blom's offsets."""
    _, inverse, counts = np.unique(draws, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    ranks = (last - (counts - 1) / 2.0)[inverse].reshape(draws.shape)
    return np.asarray(jax.scipy.special.ndtri((ranks - 0.375) / (draws.size + 0.25)))


def split_r_hat(draws) -> float:
    """Rank-normalised split R-hat of one quantity's ``(chains, draws)`` samples.

    The larger of the bulk R-hat (split chains, rank-normalised) and the tail R-hat (the
    same of ``|x - median|``), as Vehtari et al. (2021) define it and ArviZ computes it;
    1 for well-mixed chains, above :data:`R_HAT_WARNING` when they disagree.
    """
    from numpyro.diagnostics import gelman_rubin

    draws = _check_draws(draws)
    bulk = gelman_rubin(_rank_normalise(_split_chains(draws)))
    tail = gelman_rubin(_rank_normalise(_split_chains(np.abs(draws - np.median(draws)))))
    return float(max(bulk, tail))


def effective_sample_size(draws) -> float:
    """Bulk effective sample size of one quantity's ``(chains, draws)`` samples.

    NumPyro's ESS (Geyer's initial monotone sequence) of the rank-normalised split chains
    (Vehtari et al. 2021): the number of independent draws that would estimate the centre
    of the distribution as well. The Monte Carlo error of a posterior mean is about
    ``std / sqrt(ess)``. Capped at ``n log10(n)`` for ``n`` draws, as Stan and ArviZ do: an
    antithetic chain can have ESS > n, but a larger estimate is noise (measured: one chain
    of 200 anticorrelated draws gave 1057 uncapped).
    """
    from numpyro.diagnostics import effective_sample_size as geyer_ess

    split = _rank_normalise(_split_chains(_check_draws(draws)))
    return float(min(geyer_ess(split), split.size * np.log10(split.size)))


def _check_draws(draws) -> np.ndarray:
    draws = np.asarray(draws, dtype=float)
    if draws.ndim != 2 or draws.shape[1] < 4:
        raise ValueError(f"draws must have shape (chains, draws >= 4), got {draws.shape}")
    if not np.all(np.isfinite(draws)):
        raise ValueError("draws contain non-finite values")
    return draws


# ------------------------------------------------------------------------------------ result
@dataclasses.dataclass(frozen=True, repr=False)
class SampleResult:
    """The outcome of :func:`fitax.sample`.

    Attributes:
        names: dotted names of the free parameters (those sampled).
        samples: by name, the draws in physical units, shape ``(chains, draws)``, warm-up
            excluded.
        units: by name, the parameter's unit (or None).
        r_hat: by name, the rank-normalised split R-hat (:func:`split_r_hat`).
        ess: by name, the bulk effective sample size (:func:`effective_sample_size`).
        divergences: per chain, the number of divergent transitions after warm-up.
        acceptance: per chain, NUTS's mean acceptance probability after warm-up (the
            warm-up aims at 0.8).
        step_size: per chain, the adapted step size (internal coordinates).
        n_leapfrog: per chain, leapfrog steps (objective gradients) taken after warm-up.
        num_warmup: warm-up iterations per chain.
    """

    names: tuple[str, ...]
    samples: Mapping[str, np.ndarray]
    units: Mapping[str, str | None]
    r_hat: Mapping[str, float]
    ess: Mapping[str, float]
    divergences: np.ndarray
    acceptance: np.ndarray
    step_size: np.ndarray
    n_leapfrog: np.ndarray
    num_warmup: int

    @property
    def num_chains(self) -> int:
        return self.divergences.shape[0]

    @property
    def num_samples(self) -> int:
        """Draws per chain."""
        return self.samples[self.names[0]].shape[1]

    def summary(self):
        """An astropy Table, one row per free parameter: name, mean, std, q16, q50, q84
        (the 16, 50 and 84 % quantiles), r_hat and ess. Its ``meta`` holds the units, the
        chain and draw counts and the divergences."""
        from astropy.table import Table

        rows = {key: [] for key in ("mean", "std", "q16", "q50", "q84")}
        for name in self.names:
            draws = self.samples[name].ravel()
            rows["mean"].append(draws.mean())
            rows["std"].append(draws.std(ddof=1))
            for key, quantile in zip(("q16", "q50", "q84"), np.quantile(draws, QUANTILES)):
                rows[key].append(quantile)
        table = Table({"name": list(self.names), **rows, "r_hat": [self.r_hat[n] for n in self.names],
                       "ess": [self.ess[n] for n in self.names]})
        table.meta.update(
            units={n: self.units[n] or "" for n in self.names},
            num_chains=self.num_chains,
            num_samples=self.num_samples,
            num_warmup=self.num_warmup,
            divergences=self.divergences.tolist(),
        )
        return table

    def write(self, path) -> None:
        """Write :meth:`summary` as ECSV to ``path``, atomically (a temporary file in the
        same directory, then renamed), so a reader never sees a partial file."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".posterior-", suffix=".ecsv")
        os.close(handle)
        try:
            self.summary().write(temporary, format="ascii.ecsv", overwrite=True)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    def to_arviz(self):
        """The draws as ArviZ ``InferenceData``: ``posterior`` (one variable per free
        parameter) and ``sample_stats`` (``diverging`` and ``acceptance_rate`` per chain)."""
        try:
            import arviz
        except ImportError as error:
            raise ImportError("SampleResult.to_arviz needs ArviZ: pip install arviz") from error
        sample_stats = {
            "diverging": np.broadcast_to(self.divergences[:, None] > 0, (self.num_chains, self.num_samples)),
            "acceptance_rate": np.broadcast_to(self.acceptance[:, None], (self.num_chains, self.num_samples)),
        }
        return arviz.from_dict(posterior={n: np.asarray(self.samples[n]) for n in self.names},
                               sample_stats={k: np.array(v) for k, v in sample_stats.items()})

    def plot_corner(self, path=None, *, bins: int = 30):
        """A corner plot: each parameter's histogram on the diagonal, each pair's 2-d
        histogram with its 39 % and 86 % contours (1 and 2 sigma of a 2-d Gaussian) below.
        Saved to ``path`` when given; returns the matplotlib Figure."""
        from matplotlib.figure import Figure

        n = len(self.names)
        size = min(2.0 * n, 24.0)
        figure = Figure(figsize=(size, size))
        axes = np.atleast_2d(figure.subplots(n, n, squeeze=False))
        draws = [np.asarray(self.samples[name]).ravel() for name in self.names]
        for row in range(n):
            for column in range(n):
                ax = axes[row, column]
                if column > row:
                    ax.set_axis_off()
                    continue
                if column == row:
                    ax.hist(draws[row], bins=bins, histtype="step", color="k")
                    ax.set_yticks([])
                else:
                    _pair_panel(ax, draws[column], draws[row], bins)
                if row == n - 1:
                    ax.set_xlabel(self.names[column], fontsize=8)
                else:
                    ax.set_xticklabels([])
                if column == 0 and row > 0:
                    ax.set_ylabel(self.names[row], fontsize=8)
                elif column != row:
                    ax.set_yticklabels([])
                ax.tick_params(labelsize=6)
        figure.subplots_adjust(wspace=0.05, hspace=0.05)
        if path is not None:
            figure.savefig(path, dpi=100)
        return figure

    def __repr__(self) -> str:
        head = (
            f"SampleResult(num_chains={self.num_chains}, num_samples={self.num_samples}, "
            f"divergences={int(self.divergences.sum())}, acceptance={float(self.acceptance.mean()):.2f})"
        )
        width = max([len(n) for n in self.names] + [4])
        lines = [head, f"  {'name':<{width}}  {'mean':>12}  {'std':>10}  {'q16':>12}  {'q50':>12}  {'q84':>12}  {'r_hat':>6}  {'ess':>7}"]
        for row in self.summary():
            lines.append(
                f"  {row['name']:<{width}}  {row['mean']:>12.6g}  {row['std']:>10.4g}  {row['q16']:>12.6g}  "
                f"{row['q50']:>12.6g}  {row['q84']:>12.6g}  {row['r_hat']:>6.3f}  {row['ess']:>7.0f}"
            )
        return "\n".join(lines)


def _pair_panel(ax, x: np.ndarray, y: np.ndarray, bins: int) -> None:
    counts, x_edges, y_edges = np.histogram2d(x, y, bins=bins)
    ax.pcolormesh(x_edges, y_edges, counts.T, cmap="Greys", shading="flat")
    # Levels enclosing 39 % and 86 % of the draws: the highest-count bins first.
    ordered = np.sort(counts.ravel())[::-1]
    cumulative = np.cumsum(ordered) / ordered.sum()
    levels = sorted({ordered[min(np.searchsorted(cumulative, p), ordered.size - 1)] for p in (0.86, 0.39)})
    if len(levels) == 2 and levels[0] < levels[1]:
        centres_x = 0.5 * (x_edges[1:] + x_edges[:-1])
        centres_y = 0.5 * (y_edges[1:] + y_edges[:-1])
        ax.contour(centres_x, centres_y, counts.T, levels=levels, colors="C0", linewidths=0.8)


# ---------------------------------------------------------------------------------- sampler
def _log_density(objective, space: ParameterSpace, params, args, errordef: float, transform):
    """The log posterior density of the internal coordinates ``u``: that of the physical
    values plus ``log |dv/du|``, which the bijectors give in closed form (finite where the
    derivative itself underflows, far in a bounded parameter's tail)."""

    def log_density(u):
        model = space.with_values(params, space.to_physical(u, transform))
        neg2_log_posterior = (call_objective(objective, model, args) + errordef * space.prior_penalty(model)) / errordef
        return -0.5 * neg2_log_posterior + space.log_abs_det_jacobian(u, transform)

    return log_density


# The progress bar of the running sampler. The compiled program calls back a module-level
# function with a step count: a bar passed in would be part of the jit key (a new program
# for every call).
_PROGRESS: dict[str, Any] = {}


def _advance_progress(steps) -> None:
    bar = _PROGRESS.get("bar")
    if bar is not None:
        bar.update(int(steps))


@eqx.filter_jit
def _run_chains(objective, space: ParameterSpace, params, args, transform, u_start, inverse_mass, key,
                errordef: float, num_warmup: int, num_samples: int, dense_mass: bool, target_accept: float,
                progress_every: int):
    """Warm-up then sampling of every chain, chains in a ``vmap``, steps in a ``scan``. When
    a chain's start has a non-finite log density or gradient, no step is taken (the caller
    raises); the start's potential and gradient are returned for that check."""
    from numpyro.infer.hmc import hmc

    log_density = _log_density(objective, space, params, args, errordef, transform)
    init_kernel, sample_kernel = hmc(potential_fn=lambda u: -log_density(u), algo="NUTS")
    keys = jax.random.split(key, u_start.shape[0])
    start = jax.vmap(lambda u, k: init_kernel(
        u, num_warmup, inverse_mass_matrix=inverse_mass, dense_mass=dense_mass, target_accept_prob=target_accept,
        rng_key=k))(u_start, keys)
    start_ok = jnp.all(jnp.isfinite(start.potential_energy)) & jnp.all(jnp.isfinite(start.z_grad))

    def step(states, index):
        states = jax.lax.cond(start_ok, jax.vmap(sample_kernel), lambda s: s, states)
        if progress_every:
            jax.lax.cond((index + 1) % progress_every == 0,
                         lambda: jax.debug.callback(_advance_progress, progress_every), lambda: None)
        return states, (states.z, states.diverging, states.accept_prob, states.num_steps)

    # One scan over warm-up and sampling (numpyro's kernel adapts while its counter is below
    # num_warmup): two scans would compile the NUTS kernel twice.
    states, (u, diverging, accept, num_steps) = jax.lax.scan(step, start, jnp.arange(num_warmup + num_samples))
    u, diverging, accept, num_steps = (x[num_warmup:] for x in (u, diverging, accept, num_steps))
    v = jax.vmap(jax.vmap(lambda w: space.to_physical(w, transform)))(u)
    return (
        jnp.moveaxis(v, 0, 1),  # (chains, draws, n)
        jnp.sum(diverging, axis=0),
        jnp.mean(accept, axis=0),
        jnp.sum(num_steps, axis=0),
        states.adapt_state.step_size,
        -start.potential_energy,
        -start.z_grad,
    )


def _check_start(space: ParameterSpace, v0: np.ndarray) -> None:
    for name, value, (lo, hi) in zip(space.names, v0, space.bounds):
        if not np.isfinite(value):
            raise ValueError(f"parameter {name!r} has a non-finite start value {value}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"parameter {name!r} starts at {value:.6g}, outside its bounds [{lo}, {hi}]")


def _start_from_fit(space: ParameterSpace, init: FitResult, dense_mass: bool, num_chains: int, key):
    """Transform centred on the best fit with one internal unit per marginal error, the
    fit's covariance in those coordinates as the first inverse mass matrix, and start
    points drawn from it (the Laplace approximation)."""
    if not isinstance(init, FitResult):
        raise TypeError(f"init must be a fitax.FitResult, got {type(init).__name__}")
    if tuple(init.free_names) != tuple(space.names):
        raise ValueError(f"init was fitted with free parameters {list(init.free_names)}, but params have {list(space.names)}")
    covariance = np.asarray(init.covariance, dtype=float)
    try:
        if not np.all(np.isfinite(covariance)):
            raise np.linalg.LinAlgError
        np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        raise ValueError("init has no positive-definite covariance (its fit's Hessian was not); "
                         "sample from params instead (init=None)") from None
    if not init.converged:
        warnings.warn(f"init is a fit that did not converge ({init.message}); the chains start from its end point",
                      stacklevel=3)
    v_best = np.array([init.values[name] for name in space.names])
    _check_start(space, v_best)
    transform = space.transform_state(jnp.asarray(v_best), jnp.asarray(1.0 / np.diag(covariance)))
    _, dv_du = jax.jvp(lambda u: space.to_physical(u, transform), (jnp.zeros(space.size),), (jnp.ones(space.size),))
    dv_du = np.asarray(dv_du)
    covariance_u = covariance / np.outer(dv_du, dv_du)
    root = np.linalg.cholesky(covariance_u)
    u_start = np.asarray(jax.random.normal(key, (num_chains, space.size))) @ root.T
    inverse_mass = covariance_u if dense_mass else np.diag(covariance_u)
    return transform, u_start, inverse_mass


def _raise_for_bad_start(space: ParameterSpace, u_start, log_density, gradient, transform) -> None:
    for chain in range(log_density.shape[0]):
        v = np.asarray(space.to_physical(jnp.asarray(u_start[chain]), transform))
        where = ", ".join(f"{n}={x:.6g}" for n, x in zip(space.names, v))
        if not np.isfinite(log_density[chain]):
            raise ValueError(f"the log posterior is {log_density[chain]} at the start of chain {chain} ({where}); "
                             "fix the start values or the data")
        bad = [n for n, g in zip(space.names, gradient[chain]) if not np.isfinite(g)]
        if bad:
            raise ValueError(f"the gradient of the log posterior is non-finite with respect to {bad} at the start "
                             f"of chain {chain} ({where})")


def sample(
    objective: Callable,
    params,
    *,
    args: Any = None,
    errordef: float = 1.0,
    num_samples: int = 1000,
    num_warmup: int = 500,
    num_chains: int = 4,
    seed: int = 0,
    init: FitResult | None = None,
    dense_mass: bool = True,
    target_accept: float = 0.8,
    progress: bool = False,
) -> SampleResult:
    """Draw from the posterior of the free parameters of ``params`` with NUTS.

    Args:
        objective: as for :func:`fitax.fit`: ``objective(params[, args]) -> scalar``, in
            ``-2 log L`` units when ``errordef=1``, ``-log L`` when ``errordef=0.5``.
            Priors of the parameters are added; bounds are respected (through the fit's
            transforms, with their Jacobian), flat inside them.
        params: the model pytree; its values start the chains when ``init`` is None.
        args: data passed to ``objective``, traced (new data of the same shapes reuse the
            compiled sampler).
        errordef: 1 or 0.5, as for :func:`fitax.fit`.
        num_samples: draws kept per chain (at least 4, for split R-hat).
        num_warmup: warm-up iterations per chain: step size and mass matrix are adapted
            (Stan's windows), and the draws are dropped.
        num_chains: independent chains, run together (``vmap``) in one compiled program.
        seed: random seed; the same seed gives the same draws.
        init: a :class:`fitax.FitResult` of the same model (e.g. ``fitax.fit(objective,
            params)``): the chains start from draws of its Gaussian approximation, and its
            covariance is the first inverse mass matrix, so warm-up starts adapted.
            Without it every chain starts at the values of ``params`` (warm-up then
            separates them) with a unit mass matrix.
        dense_mass: adapt a dense mass matrix (captures correlations; one Cholesky per
            adaptation window) rather than its diagonal.
        target_accept: the acceptance probability warm-up aims for; raise it (e.g. 0.95)
            when there are divergences.
        progress: show a progress bar (tqdm) of iterations.

    Returns:
        A :class:`SampleResult`; a warning is issued when an R-hat exceeds
        :data:`R_HAT_WARNING` (naming the parameters) or any transition diverged.

    Example:
        >>> import jax.numpy as jnp, fitax
        >>> x = jnp.array([0.8, 1.1, 1.3, 0.9, 1.4])
        >>> def chi2(p):  # five measurements of mu with errors 0.5: posterior N(1.1, 0.5 / sqrt(5))
        ...     return jnp.sum(((x - p["mu"].value) / 0.5) ** 2)
        >>> result = fitax.sample(chi2, {"mu": fitax.Parameter(0.0)}, num_samples=200, num_warmup=100, num_chains=2)
        >>> table = result.summary()
        >>> print(f"mu = {table['mean'][0]:.1f} +- {table['std'][0]:.1f}, R-hat < 1.01: {table['r_hat'][0] < 1.01}")
        mu = 1.1 +- 0.2, R-hat < 1.01: True
    """
    for name, value, low in (("num_chains", num_chains, 1), ("num_samples", num_samples, 4), ("num_warmup", num_warmup, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not errordef > 0:
        raise ValueError(f"errordef must be > 0, got {errordef}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    space = ParameterSpace.from_params(params)
    if space.size == 0:
        raise ValueError("the model has no free parameters (all are frozen or tied)")
    v0 = np.asarray(space.values(params), dtype=float)
    _check_start(space, v0)
    start_key, chain_key = jax.random.split(jax.random.key(seed))
    if init is None:
        transform = space.transform_state(jnp.asarray(v0))
        u_start = np.zeros((num_chains, space.size))
        # Given even when it is the unit matrix, so that samplers with and without init
        # share one compiled program.
        inverse_mass = np.eye(space.size) if dense_mass else np.ones(space.size)
    else:
        transform, u_start, inverse_mass = _start_from_fit(space, init, dense_mass, num_chains, start_key)
    total = num_warmup + num_samples
    progress_every = max(1, total // 100) if progress else 0
    if progress:
        from tqdm.auto import tqdm

        _PROGRESS["bar"] = tqdm(total=total, desc="NUTS", unit="it")
    try:
        v, divergences, acceptance, n_leapfrog, step_size, start_log_density, start_gradient = _run_chains(
            objective, space, params, args, transform, jnp.asarray(u_start, dtype=float),
            jnp.asarray(inverse_mass, dtype=float), chain_key, float(errordef),
            int(num_warmup), int(num_samples), bool(dense_mass), float(target_accept), progress_every,
        )
        v = np.asarray(v)
        if progress:
            _advance_progress(total - _PROGRESS["bar"].n)
    finally:
        bar = _PROGRESS.pop("bar", None)
        if bar is not None:
            bar.close()
    _raise_for_bad_start(space, u_start, np.asarray(start_log_density), np.asarray(start_gradient), transform)
    return _make_result(space, params, v, divergences, acceptance, step_size, n_leapfrog, num_warmup)


def _read_only(array) -> np.ndarray:
    array = np.array(array)
    array.setflags(write=False)
    return array


def _make_result(space, params, v, divergences, acceptance, step_size, n_leapfrog, num_warmup) -> SampleResult:
    samples = {name: _read_only(v[:, :, j]) for j, name in enumerate(space.names)}
    if not np.all(np.isfinite(v)):
        bad = [name for name, draws in samples.items() if not np.all(np.isfinite(draws))]
        raise FloatingPointError(f"the sampler produced non-finite draws of {bad}")
    r_hat = {name: split_r_hat(draws) for name, draws in samples.items()}
    ess = {name: effective_sample_size(draws) for name, draws in samples.items()}
    all_params = parameters_dict(params)
    result = SampleResult(
        names=tuple(space.names),
        samples=types.MappingProxyType(samples),
        units=types.MappingProxyType({name: all_params[name].unit for name in space.names}),
        r_hat=types.MappingProxyType(r_hat),
        ess=types.MappingProxyType(ess),
        divergences=_read_only(np.asarray(divergences, dtype=int)),
        acceptance=_read_only(acceptance),
        step_size=_read_only(step_size),
        n_leapfrog=_read_only(np.asarray(n_leapfrog, dtype=int)),
        num_warmup=int(num_warmup),
    )
    unmixed = [name for name, value in r_hat.items() if not value <= R_HAT_WARNING]
    if unmixed:
        warnings.warn(f"the chains have not mixed: R-hat > {R_HAT_WARNING} for {unmixed}; "
                      "sample longer, or start from a fit (init=)", stacklevel=3)
    if result.divergences.sum() > 0:
        warnings.warn(f"{int(result.divergences.sum())} divergent transitions (per chain {result.divergences.tolist()}): "
                      "the posterior may be biased where they occurred; raise target_accept or reparametrise",
                      stacklevel=3)
    return result
