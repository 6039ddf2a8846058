"""Derivatives of the AGC analysis (soft cuts -> histograms -> model -> sensitivity) against
central finite differences (Richardson-extrapolated), float64.

Tolerance: 1e-6 relative to each derivative, with an absolute floor of 1e-6 x the largest
derivative of the same quantity (bins whose derivative is ~0 are compared at that floor).
"""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitax.hep import Workspace
from fitax.hep.agc import Cuts, Histograms, Softness, fill_histograms, read_inputs, rebin_for_fit
from fitax.hep.agc.differentiable import (
    ModelFromHistograms,
    background_only_fit,
    expected_poi_uncertainty,
    expected_significance,
    significance_and_gradient,
)
from fitax.hep.agc.histograms import FIELDS
from fitax.hep.agc.model import build_workspace
from fitax.hep.agc.optimise import LoadedSamples, soft_histograms
from fitax.hep.agc.selection import ROWS, chunk_histograms
from fitax.hep.generate import write_nanoaod
from fitax.hep.nanoaod import read_chunks, subset

CUT_NAMES = ("lepton_pt", "lepton_eta", "lepton_sip3d", "muon_isolation", "jet_pt", "jet_eta", "btag")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agc_gradients")
    document = {}
    for seed, (process, n) in enumerate((("ttbar", 30000), ("wjets", 6000), ("single_top_t_chan", 3000))):
        write_nanoaod(folder / f"{process}.root", process, n, seed=seed)
        document[process] = {"nominal": {"files": [{"path": f"{process}.root", "nevts": n}]}}
    (folder / "inputs.json").write_text(json.dumps(document))
    return read_inputs(folder / "inputs.json")


@pytest.fixture(scope="module")
def chunk(inputs):
    return next(read_chunks(inputs[0].files[0], FIELDS, scalars=("event",)))


@pytest.fixture(scope="module")
def few(chunk):
    """The first 6000 events: enough for every bin's derivative, cheaper to differentiate."""
    return subset(chunk, np.arange(6000))


def _central_difference(f, x: float, h: float) -> np.ndarray:
    """Richardson extrapolation of central differences: error O(h^4)."""
    d = lambda step: (np.asarray(f(x + step)) - np.asarray(f(x - step))) / (2 * step)  # noqa: E731
    return (4 * d(h / 2) - d(h)) / 3


def _assert_derivative(analytic, numeric, label: str) -> None:
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    floor = 1e-6 * np.max(np.abs(analytic))
    assert np.all(np.isfinite(analytic)), label
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=floor, err_msg=label)


def _with(cuts: Cuts, name: str, value) -> Cuts:
    return eqx.tree_at(lambda c: getattr(c, name), cuts, value)


def _soft_bins(chunk, cuts: Cuts, softness: Softness):
    sumw, *_ = chunk_histograms(chunk.collections, chunk.valid, chunk.scalars["event"], 1.0, np.uint64(7), cuts, softness, 10)
    return sumw


@pytest.mark.parametrize("name", [n if n in ("jet_pt", "btag") else pytest.param(n, marks=pytest.mark.slow) for n in CUT_NAMES])
def test_soft_histogram_derivatives_equal_central_differences(few, name):
    softness = Softness()
    bins = jax.jit(lambda value: _soft_bins(few, _with(Cuts(), name, value), softness))
    start = float(getattr(Cuts(), name))
    analytic = jax.jacfwd(bins)(jnp.asarray(start))
    numeric = _central_difference(bins, start, 3e-5 * start)
    assert np.max(np.abs(analytic)) > 0, "the bins do not depend on this cut"
    _assert_derivative(analytic, numeric, f"d bins / d {name}")


@pytest.mark.slow
def test_steep_sigmoids_and_narrow_kernels_keep_derivatives_finite(few):
    steep = Softness(temperature=1e-7, bandwidth=1e-4, trijet_temperature=1e-5)
    grads = jax.grad(lambda c: jnp.sum(_soft_bins(few, c, steep) ** 2))(Cuts())
    assert all(np.isfinite(float(getattr(grads, name))) for name in CUT_NAMES)


@pytest.mark.slow
def test_soft_histograms_tend_to_the_hard_ones(chunk):
    hard = np.asarray(_soft_bins(chunk, Cuts(), None))
    soft = np.asarray(_soft_bins(chunk, Cuts(), Softness(temperature=1e-8, bandwidth=0.01, trijet_temperature=0.01)))
    filled = hard > 100
    assert filled.sum() > 20
    np.testing.assert_allclose(soft[filled], hard[filled], rtol=0.02)
    assert hard.shape[0] == len(ROWS)


@pytest.fixture(scope="module")
def mapping(inputs):
    spec, _ = build_workspace(rebin_for_fit(fill_histograms(inputs, progress=False)))
    return ModelFromHistograms(spec)


@pytest.mark.slow
def test_expected_uncertainty_derivative_end_to_end_equals_central_differences(inputs, mapping):
    loaded = LoadedSamples.load(inputs)
    softness = Softness()

    def uncertainty(name, value):
        return expected_poi_uncertainty(mapping(*soft_histograms(loaded, _with(Cuts(), name, value), softness)))

    for name in ("jet_pt", "btag"):
        start = float(getattr(Cuts(), name))
        analytic = jax.grad(lambda v: uncertainty(name, v))(jnp.asarray(start))
        numeric = _central_difference(lambda v: uncertainty(name, v), start, 3e-5 * start)
        _assert_derivative(analytic, numeric, f"d sigma(ttbar_norm) / d {name}")


@pytest.mark.slow
def test_expected_significance_derivative_equals_central_differences_with_refits(inputs):
    # ttbar scaled down to a small signal over W+jets, so the background-only fit converges.
    hard = rebin_for_fit(fill_histograms(inputs, progress=False))
    scale = {name: (0.01 if "_ttbar" in name else 1.0) for name in hard.sumw}
    sumw = {k: jnp.asarray(v * scale[k]) for k, v in hard.sumw.items()}
    sumw2 = {k: jnp.asarray(v * scale[k] ** 2) for k, v in hard.sumw2.items()}
    scaled = type(hard)({k: np.asarray(v) for k, v in sumw.items()}, {k: np.asarray(v) for k, v in sumw2.items()}, hard.binning)
    mapping = ModelFromHistograms(build_workspace(scaled)[0])
    name = "4j2b_ttbar"

    def significance(shift):
        shifted = {**sumw, name: sumw[name] * (1 + shift)}
        return shifted

    value, gradient, fit = significance_and_gradient(lambda s: (significance(s), sumw2), jnp.asarray(0.0), mapping)
    assert fit.converged and np.isfinite(float(value)) and float(value) > 0

    def refitted(shift):
        model = mapping(significance(shift), sumw2)
        return expected_significance(model, background_only_fit(model).bestfit)

    # step 1e-2: each refit is exact to its EDM (~1e-11 on these yields), which a smaller step amplifies
    _assert_derivative(gradient, _central_difference(refitted, 0.0, 1e-2), "d Z_A / d (4j2b ttbar yield scale)")


def test_rebuilt_model_equals_the_model_of_the_changed_workspace(inputs, mapping):
    hard = rebin_for_fit(fill_histograms(inputs, progress=False))
    factor = lambda name: 1.1 if name.endswith("pt_scale_up") else 0.93 if "btag_var_0" in name else 1.02  # noqa: E731
    sumw = {k: v * factor(k) for k, v in hard.sumw.items()}
    sumw2 = {k: v * 1.3 for k, v in hard.sumw2.items()}
    direct = Workspace(build_workspace(Histograms(sumw, sumw2, hard.binning))[0]).model()
    rebuilt = mapping({k: jnp.asarray(v) for k, v in sumw.items()}, {k: jnp.asarray(v) for k, v in sumw2.items()})
    for field in ("nominal", "histosys_lo", "histosys_nom", "histosys_hi", "normsys_log_lo", "normsys_log_hi", "normsys_coefficients", "gauss_sigma"):
        np.testing.assert_allclose(getattr(rebuilt, field), getattr(direct, field), rtol=1e-10, atol=1e-12, err_msg=field)
    point = jnp.asarray(direct.suggested_init()) + 0.1
    data = direct.expected_data(point)
    assert float(rebuilt.nll(point, data)) == pytest.approx(float(direct.nll(point, data)), rel=1e-12)
