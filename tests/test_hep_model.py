"""fitax.hep.Model against pyhf 0.7.6 (numpy backend): parameters, data, expected data, logpdf.

Tolerance: the issue asks for 1e-10 relative on logpdf. Both sides compute in float64 and differ
only in the order of sums and products (~1e-16 each); the log-likelihood sums terms
``n log(lambda) - lambda`` up to ~1e5 in size into totals of ~50, so cancellation can amplify
rounding by ~1e3 -> ~1e-13, well inside 1e-10.

Expected data are compared at 1e-12 relative (and 1e-12 absolute, for yields that histosys
shifts nearly cancel). pyhf returns NaN where an expected yield is negative (histosys extrapolated far); fitax clamps
rates at ``RATE_FLOOR``, which is pyhf's ``clip_bin_data`` option, so the reference model is
built with ``clip_bin_data=RATE_FLOOR`` (a separate test checks the clamp on its own).
"""

from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitax
from fitax.hep import RATE_FLOOR, Workspace

from conftest import shared_data

pyhf = pytest.importorskip("pyhf")
pyhf.set_backend("numpy")

N_POINTS = 1000
CODE4 = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


# ------------------------------------------------------------------------ synthetic workspaces
def _sample(name, data, *modifiers):
    return {"name": name, "data": list(map(float, data)), "modifiers": list(modifiers)}


def _mod(name, mtype, data=None):
    return {"name": name, "type": mtype, "data": data}


def _workspace(channels, observations, parameters=(), poi="mu"):
    return {
        "channels": [{"name": n, "samples": s} for n, s in channels],
        "observations": [{"name": n, "data": list(map(float, d))} for n, d in observations],
        "measurements": [{"name": "meas", "config": {"poi": poi, "parameters": list(parameters)}}],
        "version": "1.0.0",
    }


def _signal(data):
    return _sample("signal", data, _mod("mu", "normfactor"))


SYNTHETIC = {
    # a normfactor shared by two channels, a sample present in one channel only
    "normfactor": _workspace(
        [
            ("SR", [_signal([5, 10, 3]), _sample("bkg", [50, 40, 30], _mod("k_bkg", "normfactor"))]),
            ("CR", [_sample("bkg", [200, 150], _mod("k_bkg", "normfactor")), _sample("other", [20, 25])]),
        ],
        [("SR", [52, 55, 31]), ("CR", [230, 170])],
    ),
    # normsys shared across channels, asymmetric and same-sided; one name also used as histosys
    "normsys": _workspace(
        [
            (
                "SR",
                [
                    _sample("signal", [6, 9], _mod("mu", "normfactor"), _mod("sig_xs", "normsys", {"hi": 1.1, "lo": 0.85})),
                    _sample(
                        "bkg",
                        [40, 30],
                        _mod("jes", "normsys", {"hi": 1.05, "lo": 0.97}),
                        _mod("oneside", "normsys", {"hi": 1.2, "lo": 1.05}),
                        _mod("shared", "normsys", {"hi": 1.03, "lo": 0.96}),
                        _mod("shared", "histosys", {"hi_data": [42, 31], "lo_data": [38, 29.5]}),
                    ),
                ],
            ),
            ("CR", [_sample("bkg", [100, 80, 60], _mod("jes", "normsys", {"hi": 1.02, "lo": 0.9}))]),
        ],
        [("SR", [48, 37]), ("CR", [104, 77, 58])],
    ),
    # histosys: shared, asymmetric, crossing (hi below nominal in one bin), sample missing in a channel
    "histosys": _workspace(
        [
            (
                "SR",
                [
                    _signal([4, 8, 2]),
                    _sample("bkg", [30, 20, 10], _mod("shape", "histosys", {"hi_data": [33, 19, 12], "lo_data": [28, 22, 7]})),
                    _sample("bkg2", [10, 10, 10], _mod("shape", "histosys", {"hi_data": [11, 12, 13], "lo_data": [9.5, 9, 8]})),
                ],
            ),
            ("CR", [_sample("bkg", [90, 70], _mod("cr_shape", "histosys", {"hi_data": [95, 66], "lo_data": [80, 75]}))]),
        ],
        [("SR", [40, 35, 25]), ("CR", [88, 71])],
    ),
    # lumi, configured by the measurement (no default exists)
    "lumi": _workspace(
        [("SR", [_sample("signal", [5, 7], _mod("mu", "normfactor"), _mod("lumi", "lumi")), _sample("bkg", [20, 25], _mod("lumi", "lumi"))])],
        [("SR", [27, 30])],
        parameters=[{"name": "lumi", "auxdata": [1.0], "sigmas": [0.017], "bounds": [[0.915, 1.085]], "inits": [1.0]}],
    ),
    # shapefactor shared by two channels with equal bin counts, and one of its own
    "shapefactor": _workspace(
        [
            ("A", [_signal([2, 3]), _sample("bkg", [10, 12], _mod("sf_shared", "shapefactor"))]),
            ("B", [_sample("bkg", [30, 40], _mod("sf_shared", "shapefactor"), _mod("sf_b", "shapefactor"))]),
        ],
        [("A", [13, 16]), ("B", [33, 38])],
    ),
    # shapesys with a zero-uncertainty bin and a zero-yield bin (both fixed by pyhf)
    "shapesys": _workspace(
        [
            (
                "SR",
                [
                    _signal([3, 6, 2, 1]),
                    _sample("bkg", [40, 0, 25, 12], _mod("bkg_stat", "shapesys", [4, 1, 0, 2])),
                    _sample("bkg2", [8, 9, 10, 11], _mod("bkg2_stat", "shapesys", [1, 2, 1.5, 3])),
                ],
            )
        ],
        [("SR", [50, 16, 36, 24])],
    ),
    # staterror on two samples of a channel (a bin without uncertainty is fixed), another
    # staterror in a second channel carried by a sample that is absent from the first
    "staterror": _workspace(
        [
            (
                "A",
                [
                    _signal([3, 4, 5]),
                    _sample("bkg1", [20, 30, 0], _mod("stat_A", "staterror", [2, 3, 0])),
                    _sample("bkg2", [10, 5, 0], _mod("stat_A", "staterror", [1, 0.5, 0])),
                ],
            ),
            ("B", [_sample("bkg3", [50, 60], _mod("stat_B", "staterror", [5, 4]))]),
        ],
        [("A", [36, 38, 4]), ("B", [55, 61])],
    ),
}


def _everything():
    """Every modifier type at once, with measurement overrides of inits, bounds, fixed, auxdata."""
    channels = []
    for name, spec in SYNTHETIC.items():
        for channel in spec["channels"]:
            channel = copy.deepcopy(channel)
            channel["name"] = f"{name}_{channel['name']}"
            channels.append((channel["name"], channel["samples"]))
    observations = [(f"{name}_{o['name']}", o["data"]) for name, spec in SYNTHETIC.items() for o in spec["observations"]]
    parameters = [
        {"name": "lumi", "auxdata": [1.0], "sigmas": [0.017], "bounds": [[0.915, 1.085]], "inits": [1.0]},
        {"name": "jes", "fixed": True, "inits": [0.3]},
        {"name": "oneside", "auxdata": [0.5], "bounds": [[-3.0, 3.0]]},
        {"name": "mu", "bounds": [[-2.0, 5.0]], "inits": [0.5]},
        {"name": "k_bkg", "fixed": True},
        {"name": "stat_B", "inits": [1.1, 0.9]},
    ]
    return _workspace(channels, observations, parameters)


SYNTHETIC["everything"] = _everything()

SETTINGS = {
    "default": None,
    "code1_code0": {"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}},
    "code4_code2": {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code2"}},
    "code4_code4p": CODE4,
    "empty": {},  # pyhf: normsys code1, histosys code0
}

CASES = [(name, setting) for name in SYNTHETIC for setting in SETTINGS if name == "everything" or setting == "default"]


# ---------------------------------------------------------------------------------- helpers
def _pyhf_model(spec, settings, batch_size=None, patches=None):
    workspace = pyhf.Workspace(spec)
    kwargs = {} if settings is None else {"modifier_settings": settings}
    model = workspace.model(patches=patches, batch_size=batch_size, clip_bin_data=RATE_FLOOR, **kwargs)
    return workspace, model


def _random_points(model, n, seed=0, inside=()):
    """Uniform within pyhf's bounds; parameters named in ``inside`` within [-1, 1]."""
    bounds = np.array(model.config.suggested_bounds(), dtype=float)
    for name in inside:
        bounds[model.config.par_slice(name)] = np.clip(bounds[model.config.par_slice(name)], -1.0, 1.0)
    rng = np.random.default_rng(seed)
    return rng.uniform(bounds[:, 0], bounds[:, 1], size=(n, len(bounds)))


def _histosys_names(spec, settings):
    """Histosys parameters under code2: pyhf's code2 is wrong outside |alpha| <= 1 (see
    test_code2_follows_root_outside), so pyhf is the reference inside only."""
    if not settings or settings.get("histosys", {}).get("interpcode") != "code2":
        return ()
    return sorted({m["name"] for c in spec["channels"] for s in c["samples"] for m in s["modifiers"] if m["type"] == "histosys"})


def _compare(ws, model, pyhf_ws, pyhf_batch, n_points=N_POINTS, inside=()):
    """Structure, data and logpdf/expected data at random points, fitax vs pyhf."""
    config = pyhf_batch.config
    assert model.parameter_names == config.par_order
    assert model.par_names == config.par_names
    assert model.poi_name == config.poi_name and model.poi_index == config.poi_index
    np.testing.assert_array_equal(model.suggested_init(), config.suggested_init())
    np.testing.assert_array_equal(model.suggested_bounds(), np.array(config.suggested_bounds(), dtype=float))
    np.testing.assert_array_equal(model.suggested_fixed(), config.suggested_fixed())
    data = ws.data(model)
    np.testing.assert_array_equal(data, np.array(pyhf_ws.data(pyhf_batch), dtype=float))
    assert model.n_main_bins == config.nmaindata and model.aux_size == config.nauxdata

    points = _random_points(pyhf_batch, n_points, inside=inside)
    ours = np.asarray(jax.jit(jax.vmap(model.logpdf, in_axes=(0, None)))(points, data))
    theirs = pyhf_batch.logpdf(points, data)
    assert np.all(np.isfinite(theirs)) and np.all(np.isfinite(ours))
    relative = np.abs(ours / theirs - 1)
    assert relative.max() < 1e-10, f"worst relative logpdf difference {relative.max():.2e}"

    expected = np.asarray(jax.jit(jax.vmap(model.expected_data))(points))
    # a yield that histosys shifts nearly cancel (0.003 from terms ~1e3 on sbottom) carries an
    # absolute rounding of ~1e-16 * 1e3: hence the absolute 1e-12 next to 1e-12 relative
    np.testing.assert_allclose(expected, pyhf_batch.expected_data(points), rtol=1e-12, atol=1e-12)
    return relative.max()


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("name,setting", CASES)
def test_synthetic_workspaces_match_pyhf(name, setting):
    spec = SYNTHETIC[name]
    settings = SETTINGS[setting]
    ws = Workspace(spec)
    model = ws.model(modifier_settings=settings)
    pyhf_ws, pyhf_batch = _pyhf_model(spec, settings, batch_size=N_POINTS)
    _compare(ws, model, pyhf_ws, pyhf_batch, inside=_histosys_names(spec, settings))


def test_every_modifier_type_and_code_is_covered():
    """The synthetic cases exercise all seven modifier types and all five codes."""
    types = {m["type"] for spec in SYNTHETIC.values() for c in spec["channels"] for s in c["samples"] for m in s["modifiers"]}
    assert types == set(fitax.hep.MODIFIER_TYPES)
    codes = set()
    for name, setting in CASES:
        model = Workspace(SYNTHETIC[name]).model(modifier_settings=SETTINGS[setting])
        codes |= {model.normsys_code, model.histosys_code}
    assert codes == {"code0", "code1", "code2", "code4", "code4p"}


@pytest.mark.parametrize("filename", ["validation_2bin_2channel_coupledhistosys_workspace.json", "validation_shapesys_nuisparfilter_workspace.json"])
def test_validation_workspaces_match_pyhf(filename):
    spec = json.loads(shared_data("hep", filename).read_text())
    for settings in (None, {}):
        ws = Workspace(spec)
        pyhf_ws, pyhf_batch = _pyhf_model(spec, settings, batch_size=N_POINTS)
        _compare(ws, ws.model(modifier_settings=settings), pyhf_ws, pyhf_batch)


@pytest.mark.slow
@pytest.mark.parametrize("settings", [None, {}], ids=["code4_code4p", "code1_code0"])
def test_sbottom_with_signal_patch_matches_pyhf(settings):
    spec = json.loads(shared_data("hep", "sbottom_RegionA_BkgOnly.json").read_text())
    patch = json.loads(shared_data("hep", "sbottom_RegionA_patch_1300_205_60.json").read_text())
    ws = Workspace(spec).patch(patch)
    pyhf_ws, pyhf_batch = _pyhf_model(spec, settings, batch_size=N_POINTS, patches=[patch])
    _compare(ws, ws.model(modifier_settings=settings), pyhf_ws, pyhf_batch)


def _root_code2(lo, nom, hi, alpha):
    """ROOT PiecewiseInterpolation, interpolation code 2 (RooFit source), one bin."""
    a = 0.5 * (hi + lo) - nom
    b = 0.5 * (hi - lo)
    if alpha > 1:
        return (2 * a + b) * (alpha - 1) + hi - nom
    if alpha < -1:
        return -1 * (2 * a - b) * (alpha + 1) + lo - nom
    return a * alpha**2 + b * alpha


def test_code2_follows_root_outside():
    """Outside |alpha| <= 1 pyhf's code2 jumps (3 -> 3.5e-6 at alpha = 1 for lo, nom, hi =
    8, 10, 13); fitax follows ROOT there: continuous value and slope, equal to ROOT's formula."""
    from fitax.hep import interpolation

    rng = np.random.default_rng(5)
    lo, nom, hi = rng.uniform(5, 10, 50), rng.uniform(9, 11, 50), rng.uniform(10, 16, 50)
    alphas = rng.uniform(-5, 5, 50)
    ours = np.asarray(interpolation.additive("code2", alphas, lo, nom, hi))
    root = np.array([_root_code2(*args) for args in zip(lo, nom, hi, alphas)])
    np.testing.assert_allclose(ours, root, rtol=1e-13, atol=1e-13)
    for edge in (1.0, -1.0):
        left, right = (interpolation.additive("code2", edge + d, 8.0, 10.0, 13.0) for d in (-1e-9, 1e-9))
        assert abs(float(right) - float(left)) < 1e-8
        slopes = [float(jax.grad(lambda x: interpolation.additive("code2", x, 8.0, 10.0, 13.0))(edge + d)) for d in (-1e-9, 1e-9)]
        assert slopes[0] == pytest.approx(slopes[1], abs=1e-8)
    assert float(interpolation.additive("code2", 1.000001, 8.0, 10.0, 13.0)) == pytest.approx(3.0000035, rel=1e-9)


def test_init_params_are_pyhf_suggestions():
    """Parameters named as pyhf names them, per-bin sets as tuples; inits, bounds, frozen flags."""
    spec = SYNTHETIC["everything"]
    model = Workspace(spec).model()
    _, reference = _pyhf_model(spec, None)
    params = model.init_params()
    assert list(params) == reference.config.par_order
    config = reference.config
    for name in config.par_order:
        paramset = config.param_set(name)
        components = [params[name]] if paramset.is_scalar else list(params[name])
        assert isinstance(params[name], fitax.Parameter) == paramset.is_scalar
        assert [float(p.value) for p in components] == list(paramset.suggested_init)
        assert [(p.min, p.max) for p in components] == [tuple(b) for b in paramset.suggested_bounds]
        assert [p.frozen for p in components] == list(paramset.suggested_fixed)
    assert params["jes"].frozen and float(params["jes"].value) == 0.3  # measurement overrides
    assert params["bkg_stat"][2].frozen  # shapesys bin without uncertainty
    assert params["stat_A"][2].frozen  # staterror bin without uncertainty


def test_vectors_round_trip_and_parameters_equal_vectors():
    model = Workspace(SYNTHETIC["everything"]).model()
    _, reference = _pyhf_model(SYNTHETIC["everything"], None)
    vector = _random_points(reference, 1, seed=3)[0]
    params = model.from_vector(vector)
    np.testing.assert_array_equal(np.asarray(model.to_vector(params)), vector)
    data = Workspace(SYNTHETIC["everything"]).data(model)
    assert float(model.logpdf(params, data)) == float(model.logpdf(vector, data))
    assert float(model.nll(params, data)) == -2 * float(model.logpdf(vector, data))
    templated = model.from_vector(vector, template=model.init_params())
    assert templated["jes"].frozen and float(templated["jes"].value) == vector[model.par_slice("jes")][0]


def test_gradient_matches_finite_differences():
    """Exact gradients (jax.grad) agree with central differences of the pyhf reference."""
    spec = SYNTHETIC["everything"]
    ws = Workspace(spec)
    model = ws.model(modifier_settings=CODE4)
    _, reference = _pyhf_model(spec, CODE4)
    data = ws.data(model)
    x = _random_points(reference, 1, seed=7)[0]
    gradient = np.asarray(jax.grad(model.logpdf)(jnp.asarray(x), data))
    step = 1e-6
    numeric = np.array(
        [(reference.logpdf(x + step * e, data)[0] - reference.logpdf(x - step * e, data)[0]) / (2 * step) for e in np.eye(len(x))]
    )
    # central differences: truncation ~ step^2 * f''' and rounding ~ 1e-16 * |logpdf| / step ~ 1e-7
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-5)


def test_negative_yields_are_clamped_not_nan():
    """A histosys pushed below zero: pyhf gives NaN, fitax the clamped value pyhf's clip_bin_data gives."""
    spec = _workspace(
        [("SR", [_signal([1, 1]), _sample("bkg", [5, 5], _mod("shape", "histosys", {"hi_data": [9, 6], "lo_data": [1, 4]}))])],
        [("SR", [6, 5])],
    )
    ws = Workspace(spec)
    model = ws.model(modifier_settings={})  # code0: linear extrapolation, bkg = 5 - 4 * 3 < 0 at alpha = -3
    data = ws.data(model)
    x = np.array([-3.0, 1.0])  # (shape, mu): pyhf's order
    assert model.parameter_names == ["shape", "mu"]
    plain = pyhf.Workspace(spec).model(modifier_settings={})
    assert np.isnan(plain.logpdf(x, data)[0])
    clipped = pyhf.Workspace(spec).model(modifier_settings={}, clip_bin_data=RATE_FLOOR)
    value = float(model.logpdf(x, data))
    assert np.isfinite(value) and value == pytest.approx(clipped.logpdf(x, data)[0], rel=1e-12)
    assert float(model.expected_actualdata(x)[0]) == RATE_FLOOR
    assert np.all(np.isfinite(np.asarray(jax.grad(model.logpdf)(jnp.asarray(x), data))))
    # the hand-written derivatives of nll treat the clamped bin as autodiff does (constant)
    np.testing.assert_allclose(jax.hessian(model.nll)(jnp.asarray(x), data), -2 * jax.hessian(model.logpdf)(jnp.asarray(x), data), rtol=1e-12)


@pytest.mark.slow
def test_fit_reaches_pyhf_minimum():
    """fitax.fit on model.nll finds pyhf's best fit on a small workspace (scipy reference)."""
    spec = SYNTHETIC["everything"]
    ws = Workspace(spec)
    model = ws.model()
    data = ws.data(model)
    result = fitax.fit(model.nll, model.init_params(), args=data)
    assert result.converged, result.message
    _, reference = _pyhf_model(spec, None)
    pyhf.set_backend("numpy", "scipy")
    _, twice_nll = pyhf.infer.mle.fit(data, reference, return_fitted_val=True)
    assert result.stat <= float(twice_nll) + 1e-6


def test_model_is_a_pytree_with_static_structure():
    """Two signal points of one analysis share the jit cache: the structure is the key, not the yields."""
    spec = SYNTHETIC["everything"]
    model = Workspace(spec).model()
    other = copy.deepcopy(spec)
    other["channels"][0]["samples"][0]["data"] = [7.0, 11.0, 4.0]
    # and a staterror sample whose yields (hence the combined widths) change
    staterror_channel = next(c for c in other["channels"] if c["name"] == "staterror_A")
    staterror_channel["samples"][1]["data"] = [25.0, 20.0, 0.0]
    model2 = Workspace(other).model()
    assert not np.array_equal(model.gauss_sigma, model2.gauss_sigma)
    assert jax.tree_util.tree_structure(model) == jax.tree_util.tree_structure(model2)
    traces = []

    @jax.jit
    def f(m, x, d):
        traces.append(1)
        return m.logpdf(x, d)

    data = Workspace(spec).data(model)
    x = model.suggested_init()
    f(model, x, data)
    f(model2, x, data)
    assert len(traces) == 1
    assert float(f(model, x, data)) != float(f(model2, x, data))


def test_model_errors():
    with pytest.raises(ValueError, match="POI 'nope' is not a parameter"):
        Workspace(_workspace(*_simple(), poi="nope")).model()
    with pytest.raises(ValueError, match="normsys.*interpcode.*code0"):
        Workspace(SYNTHETIC["normsys"]).model(modifier_settings={"normsys": {"interpcode": "code0"}})
    with pytest.raises(ValueError, match="lumi.*needs inits, bounds, auxdata, sigmas"):
        spec = copy.deepcopy(SYNTHETIC["lumi"])
        spec["measurements"][0]["config"]["parameters"] = []
        Workspace(spec).model()
    with pytest.raises(ValueError, match="configures parameter 'mu' more than once"):
        Workspace(_workspace(*_simple(), parameters=[{"name": "mu"}, {"name": "mu"}])).model()
    with pytest.raises(ValueError, match="'mu' sets 'sigmas'"):
        Workspace(_workspace(*_simple(), parameters=[{"name": "mu", "sigmas": [1.0]}])).model()
    with pytest.raises(ValueError, match="different parameter sets"):
        channels, obs = _simple()
        channels[0][1][1]["modifiers"].append(_mod("mu", "normsys", {"hi": 1.1, "lo": 0.9}))
        Workspace(_workspace(channels, obs)).model()
    model = Workspace(_workspace(*_simple())).model()
    with pytest.raises(ValueError, match="data has length"):
        model.logpdf(model.suggested_init(), np.ones(4))


def _simple():
    return [("SR", [_signal([1, 2]), _sample("bkg", [5, 6], _mod("b", "normsys", {"hi": 1.1, "lo": 0.9}))])], [("SR", [6, 8])]


def test_elementwise_derivatives_equal_plain_autodiff():
    """elementwise_in_alpha changes how derivatives are computed, not their values: first,
    second and third derivatives in alpha and mixed ones with the tables equal plain autodiff."""
    from fitax.hep.interpolation import elementwise_in_alpha

    def plain(alpha, c, d):
        inside = jnp.clip(alpha, -1.0, 1.0)
        return jnp.where(alpha > 0.3, c * jnp.exp(d * alpha), c * (1 + inside * d + inside**3)) + jnp.sin(alpha) * d

    fast = elementwise_in_alpha(plain)
    rng = np.random.default_rng(2)
    alpha, c, d = rng.uniform(-2, 2, 7), rng.uniform(1, 2, 7), rng.uniform(-1, 1, 7)

    def total(f):
        return lambda a, c, d: jnp.sum(f(a, c, d) ** 2)

    for argnums in [(0,), (0, 1), (1, 2), (0, 2)]:
        ours = jax.jit(jax.hessian(total(fast), argnums=argnums))(alpha, c, d)
        reference = jax.jit(jax.hessian(total(plain), argnums=argnums))(alpha, c, d)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    third = [jax.jit(jax.jacfwd(jax.hessian(total(f))))(alpha, c, d) for f in (fast, plain)]
    np.testing.assert_allclose(third[0], third[1], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_hessian_matches_differences_of_the_gradient():
    spec = SYNTHETIC["everything"]
    ws = Workspace(spec)
    for settings in (None, SETTINGS["code4_code2"]):
        model = ws.model(modifier_settings=settings)
        data = ws.data(model)
        _, reference = _pyhf_model(spec, settings)
        x = jnp.asarray(_random_points(reference, 1, seed=11, inside=_histosys_names(spec, settings))[0])
        hessian = np.asarray(jax.jit(jax.hessian(model.nll))(x, data))
        gradient = jax.jit(jax.grad(model.nll))
        step = 1e-5
        columns = [(gradient(x + step * e, data) - gradient(x - step * e, data)) / (2 * step) for e in jnp.eye(len(x))]
        # central differences of an exact gradient: error ~ step^2 * (third derivative) ~ 1e-8 relative
        np.testing.assert_allclose(hessian, np.asarray(columns), rtol=1e-5, atol=1e-5 * np.abs(hessian).max())


@pytest.mark.parametrize(
    "setting", ["default", pytest.param("code1_code0", marks=pytest.mark.slow), pytest.param("code4_code2", marks=pytest.mark.slow)]
)
def test_nll_derivatives_equal_autodiff_of_logpdf(setting):
    """model.nll's hand-written gradient and Hessian equal autodiff of -2 * logpdf (1e-12,
    float64 rounding of differently ordered sums), also under vmap and with respect to the
    model's yields and the data (which go through autodiff)."""
    import equinox as eqx

    spec = SYNTHETIC["everything"]
    ws = Workspace(spec)
    settings = SETTINGS[setting]
    model = ws.model(modifier_settings=settings)
    data = jnp.asarray(ws.data(model))
    _, reference = _pyhf_model(spec, settings)
    points = jnp.asarray(_random_points(reference, 8, seed=13))

    def plain(x, d):
        return -2.0 * model.logpdf(x, d)

    for f in (jax.grad, jax.hessian):
        ours = jax.jit(jax.vmap(f(model.nll), in_axes=(0, None)))(points, data)
        theirs = jax.jit(jax.vmap(f(plain), in_axes=(0, None)))(points, data)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12 * float(jnp.abs(theirs).max()))
    values = jax.jit(jax.vmap(model.nll, in_axes=(0, None)))(points, data)
    np.testing.assert_allclose(values, jax.jit(jax.vmap(plain, in_axes=(0, None)))(points, data), rtol=1e-14)
    if setting != "default":
        return
    x = points[0]
    by_yields = eqx.filter_jit(eqx.filter_grad(lambda m: m.nll(x, data)))(model).nominal
    by_yields_plain = eqx.filter_jit(eqx.filter_grad(lambda m: -2.0 * m.logpdf(x, data)))(model).nominal
    np.testing.assert_allclose(by_yields, by_yields_plain, rtol=1e-12, atol=1e-12)
    mixed = jax.jit(jax.jacfwd(jax.grad(model.nll), argnums=1))(x, data)
    mixed_plain = jax.jit(jax.jacfwd(jax.grad(plain), argnums=1))(x, data)
    np.testing.assert_allclose(mixed, mixed_plain, rtol=1e-12, atol=1e-12)


def test_normsys_that_would_give_negative_yields_is_refused():
    """normsys lo <= 0, or code4 factors that dip below 0 (pyhf: negative yields, NaN)."""
    channels, obs = _simple()
    channels[0][1][1]["modifiers"][0]["data"] = {"hi": 17.4, "lo": 1e-4}
    spec = _workspace(channels, obs)
    with pytest.raises(ValueError, match=r"modifier 'b' \(normsys lo=0.0001, hi=17.4\): the code4 interpolation .* goes <= 0"):
        Workspace(spec).model()
    Workspace(spec).model(modifier_settings={"normsys": {"interpcode": "code1"}})
    grid = np.linspace(-1, 1, 2001)
    reference = pyhf.interpolators.code4([[[[1e-4], [1.0], [17.4]]]])(pyhf.tensorlib.astensor(grid[None, :])).ravel()
    assert reference.min() < 0  # pyhf's own code4 goes negative there
    channels[0][1][1]["modifiers"][0]["data"] = {"hi": 1.1, "lo": 0.0}
    with pytest.raises(ValueError, match=r"modifier 'b' \(normsys lo=0.0, hi=1.1\): lo and hi must be > 0"):
        Workspace(_workspace(channels, obs)).model(modifier_settings={})
