"""Rebinding in fitax.gamma.fit: the compiled fit is reused when only data change (source
positions at binding, counts), and a fit still moving after its last binding says so."""

import dataclasses
import importlib
import warnings

import jax
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

import fitax.gamma as fg
from fitax.gamma.demo import demo_models
from fitax.gamma.simulate import simulate_observation
from fitax.parameters import set_values

gamma_fit = importlib.import_module("fitax.gamma.fit")  # the module, not fitax.gamma.fit the function
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@pytest.fixture(scope="module")
def observation():
    """One 40x40-pixel observation of the demo's point and Gaussian sources."""
    truth = demo_models(["a"], [1.0])
    dataset = simulate_observation(truth, "a", SkyCoord(0.0, 0.0, unit="deg", frame="galactic"), npix=40,
                                   rng=np.random.default_rng(5))
    return fg.Datasets([dataset]), truth


class _Traces:
    """Counts JAX traces (jaxpr_trace_duration events: one per function traced for jit)
    while active."""

    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if self.active and event == TRACE_EVENT:
            self.count += 1

    def __enter__(self):
        self.count, self.active = 0, True
        return self

    def __exit__(self, *exc):
        self.active = False


@pytest.fixture(scope="module")
def traces():
    return _Traces()


def test_new_positions_and_new_counts_reuse_the_compiled_fit(observation, traces):
    """Bound at other source positions (the IRFs, pixel and reference position change), or
    to a dataset of the same shapes with other counts, the fit runs without tracing
    anything again: jit keys hold shapes and structure, the data are leaves. Before, the
    positions and Gammapy's data constant were static fields of the bound groups, so each
    rebinding retraced (and recompiled) the whole fit."""
    datasets, truth = observation
    first = fg.fit(datasets, truth)
    assert first.converged
    shifted = set_values(truth, {"point.spatial.lon_0": 0.13, "point.spatial.lat_0": 0.12, "extended.spatial.lon_0": -0.17})
    with traces:
        moved = fg.fit(datasets, shifted)
    assert moved.converged
    assert traces.count == 0, f"{traces.count} functions traced again for other source positions"

    dataset = datasets[0]
    recounted = dataclasses.replace(dataset, counts=np.where(dataset.counts > 0, dataset.counts + 1, 0.0))
    with traces:
        other = fg.fit(fg.Datasets([recounted]), truth)
    assert other.converged and other.stat != pytest.approx(first.stat)
    assert traces.count == 0, f"{traces.count} functions traced again for other counts"


def test_fit_still_moving_after_the_last_binding_warns_and_is_not_converged(observation, monkeypatch):
    """Started 0.15 deg from the point source with a single binding allowed, the fit moves
    it by more than the 0.1 deg after which IRFs are taken again: the result must say so
    (a warning naming the source, and not converged) instead of returning a minimum of
    IRFs taken elsewhere."""
    datasets, truth = observation
    far = set_values(truth, {"point.spatial.lon_0": 0.1 + 0.15})
    monkeypatch.setattr(gamma_fit, "_MAX_ROUNDS", 1)
    with pytest.warns(RuntimeWarning, match=r"point moved by 0\.1[0-9]* deg"):
        result = fg.fit(datasets, far)
    assert not result.converged
    assert "point moved" in result.message
    monkeypatch.setattr(gamma_fit, "_MAX_ROUNDS", 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fg.fit(datasets, far).converged


@pytest.mark.slow  # 30 s
def test_ts_from_fits_that_did_not_converge_warns(observation):
    """Two steps are not enough for either fit: the TS is still returned (the caller may
    want to see it), not converged, and a warning names both fits and why they stopped."""
    datasets, truth = observation
    start = set_values(truth, {"point.spectral.index": 2.0, "extended.spatial.sigma": 0.25})
    with pytest.warns(RuntimeWarning, match="unreliable: the alternative fit .* and the null fit .* did not converge"):
        result = fg.ts(datasets, start, "point", max_steps=2)
    assert not result.converged and not result.result_alt.converged and not result.result_null.converged
