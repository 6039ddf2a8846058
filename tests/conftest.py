"""Shared helpers: reference fits with iminuit, and the location of ../shared/data."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.monitoring
import numpy as np
import pytest

import fitax
from fitax.fit import call_objective

REPO = Path(__file__).resolve().parents[1]

# In-process CLI tests would otherwise turn on the on-disk caches (XLA executables and
# exported programs under ~/.cache/fitax) for the whole test session: the suite would write
# into the user's home and every later compilation would go through the cache. Tests of the
# caches enable them explicitly in folders of their own.
os.environ["FITAX_CACHE_DIR"] = ""

# XLA's persistent compilation cache in a folder of this test run (``make test`` gives each
# lane of pytest processes one, FITAX_TEST_XLA_CACHE; alone, a process makes its own and
# removes it at exit): the executables are the same, only their compile time is saved when
# a program comes back, after the release of compiled programs below or in the type-checked
# pass of the same tests. Lanes run at once, so they do not share a folder (JAX writes cache
# files unlocked).
# Only programs that take >= 0.2 s to compile are kept (the fits, not each small operation).
_XLA_CACHE = os.environ.get("FITAX_TEST_XLA_CACHE")
if not _XLA_CACHE:
    _XLA_CACHE = tempfile.mkdtemp(prefix="fitax-test-xla-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _memory_mappings() -> int | None:
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux
        return None


# A quarter of Linux's default vm.max_map_count: room for the next module's programs.
_MAPPINGS_BEFORE_RELEASE = 16000


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after a test module once the process holds many memory
    mappings.

    Every XLA:CPU executable holds a few memory mappings of its machine code (~3, measured
    with 300 small programs), and a process may hold at most ``vm.max_map_count`` (65530 by
    default on Linux). One session that compiled the whole suite's programs passed that limit
    and XLA segfaulted in ``backend_compile_and_load`` (the crashes at "random" tests late in
    long sessions; ~19000 mappings after 3 minutes of the HEP + photometry tests and
    growing). Dropping them only past a threshold keeps the programs that later modules share
    (photometry's pipeline, HEP's fits) instead of compiling them again for every module.
    """
    yield
    mappings = _memory_mappings()
    if mappings is None or mappings > _MAPPINGS_BEFORE_RELEASE:
        jax.clear_caches()
        gc.collect()


@contextlib.contextmanager
def traced_programs():
    """The programs JAX traces inside the block, as a list of trace durations (an eager
    operation on a new shape, or a jitted function called for the first time, is one each)."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def shared_data(*parts: str) -> Path:
    """Path under the shared data folder; skips the test with a clear message when absent."""
    root = Path(os.environ.get("FITAX_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set FITAX_SHARED_DATA to its location)")
    return path


def joint_stat_gradients(datasets, models) -> list[tuple[str, float, float, float]]:
    """``(name, gradient, central difference, step)`` of fitax.gamma's joint Cash statistic
    for every free parameter of ``models``: steps of ~1e-4 of a typical error (1e-6 of
    the value, 1e-4 for amplitudes), which a Cash sum of ~1e4 keeps to ~1e-12 relative."""
    from fitax.gamma.datasets import bind, stat_sum_groups
    from fitax.parameters import ParameterSpace

    groups = bind(datasets, models)
    space = ParameterSpace.from_params(models)
    values = np.asarray(space.values(models))

    def stat(v):
        return stat_sum_groups(space.with_values(models, v), groups)

    gradient = np.asarray(jax.jit(jax.grad(stat))(values))
    stat_jit = jax.jit(stat)
    rows = []
    for i, name in enumerate(space.names):
        step = 1e-6 * max(abs(values[i]), 1e-2) if "amplitude" not in name else 1e-4 * abs(values[i])
        up, down = values.copy(), values.copy()
        up[i] += step
        down[i] -= step
        rows.append((name, float(gradient[i]), (float(stat_jit(up)) - float(stat_jit(down))) / (2 * step), step))
    return rows


def assert_close_where_large(ours: np.ndarray, theirs: np.ndarray, rtol: float):
    """``ours`` within ``rtol`` of ``theirs`` where it is above 1e-6 of its maximum, within 1e-6
    of that maximum below, and the comparison not trivial (most values above the cut): how
    maps that fall to 0 at the edge of a field of view are compared."""
    scale = np.abs(theirs).max()
    large = np.abs(theirs) > 1e-6 * scale
    np.testing.assert_allclose(ours[large], theirs[large], rtol=rtol)
    np.testing.assert_allclose(ours[~large], theirs[~large], rtol=0, atol=1e-6 * scale)
    assert large.mean() > 0.2


def iminuit_reference(objective, params, args=None, errordef=1.0, strategy=2, hesse=True):
    """MIGRAD + HESSE on the same objective, JAX gradient supplied; returns (values, errors, fval),
    errors None without ``hesse``.

    Tight settings (strategy 2, tol 1e-4, MIGRAD repeated until valid) so that differences
    measure fitax, not an under-converged reference. HESSE's cost grows as n^2 function
    calls: 125 s for 251 parameters, where its errors are also 6% off with strategy 1.
    """
    from iminuit import Minuit

    space = fitax.ParameterSpace.from_params(params)

    def physical(v):
        model = space.with_values(params, v)
        return call_objective(objective, model, args) + errordef * space.prior_penalty(model)

    fun = jax.jit(physical)
    grad = jax.jit(jax.grad(physical))
    minuit = Minuit(lambda v: float(fun(v)), np.asarray(space.values(params)), grad=lambda v: np.asarray(grad(v)), name=list(space.names))
    minuit.errordef = errordef
    minuit.strategy = strategy
    minuit.tol = 1e-4
    for i, limits in enumerate(space.bounds):
        minuit.limits[i] = limits
    for _ in range(5):
        minuit.migrad()
        if minuit.valid:
            break
    values = dict(zip(space.names, np.asarray(minuit.values)))
    if not hesse:
        return values, None, minuit.fval
    minuit.hesse()
    errors = dict(zip(space.names, np.asarray(minuit.errors)))
    return values, errors, minuit.fval
