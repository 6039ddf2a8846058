"""The AGC ttbar histograms against an independent awkward + NumPy implementation (tests/agc_reference.py).

Tolerance: equal event counts in every bin and sums of weights within 1e-12 relative, for
every region, process and variation, on generated files and on the shared CMS NanoAOD file.
"""

from __future__ import annotations

import json

import awkward as ak
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import uproot

import agc_reference
from conftest import shared_data
from fitax.hep import nanoaod
from fitax.hep import Workspace
from fitax.hep.agc import Cuts, InvalidInputs, fill_histograms, histograms, read_inputs, rebin_for_fit
from fitax.hep.agc.model import build_workspace
from fitax.hep.agc.selection import jet_resolution_factors
from fitax.hep.generate import write_nanoaod

SAMPLES = {
    ("ttbar", "nominal"): 30_000,
    ("ttbar", "scaleup"): 6_000,
    ("ttbar", "scaledown"): 6_000,
    ("ttbar", "ME_var"): 6_000,
    ("ttbar", "PS_var"): 6_000,
    ("single_top_s_chan", "nominal"): 6_000,
    ("single_top_t_chan", "nominal"): 8_000,
    ("single_top_tW", "nominal"): 6_000,
    ("wjets", "nominal"): 30_000,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agc")
    document: dict = {}
    for seed, ((process, variation), n) in enumerate(SAMPLES.items()):
        files = []
        parts = 2 if (process, variation) == ("ttbar", "nominal") else 1  # a sample of several files
        for part in range(parts):
            name = f"{process}_{variation}_{part}.root"
            write_nanoaod(folder / name, process, n // parts, seed=10 * seed + part)
            files.append({"path": name, "nevts": n // parts})
        document.setdefault(process, {})[variation] = {"files": files}
    path = folder / "inputs.json"
    path.write_text(json.dumps(document))
    return path


def _reference(samples, inputs_path, seed=0, cuts=agc_reference.DEFAULT_CUTS) -> dict:
    """The reference's histograms of ``samples``: their files from fitax's reading of the inputs,
    their weights from the reference's own; the jet resolution factors are fitax's (a random
    input AGC draws unseeded; :func:`test_jet_resolution_factors_are_normal_and_independent_of_chunking`
    checks them)."""
    weights = agc_reference.event_weights(inputs_path)
    total: dict = {}
    for sample in samples:
        for index, path in enumerate(sample.files):
            events = agc_reference.read(path)
            counts = ak.num(events.Jet_pt)
            factors = jet_resolution_factors(
                histograms.resolution_key(seed, sample, index), jax.numpy.asarray(np.asarray(events.event)), max(int(ak.max(counts)), 1)
            )
            slots = np.arange(factors.shape[1])[None, :] < np.asarray(counts)[:, None]
            resolution = ak.unflatten(np.asarray(factors)[slots], counts)
            for name, (w, w2) in agc_reference.histograms(events, weights[(sample.process, sample.variation)], sample.process, sample.variation, resolution, cuts).items():
                old = total.get(name, (0.0, 0.0))
                total[name] = (old[0] + w, old[1] + w2)
    return total


def _assert_same(fitax_histograms, reference: dict, weights: dict) -> None:
    names = {n for n in fitax_histograms.sumw if not n.endswith("pseudodata")}
    assert names == set(reference)
    for name in sorted(names):
        w_ref, w2_ref = reference[name]  # with under- and overflow, as hist's flow=True
        flow = fitax_histograms.flow[name]
        w = np.concatenate([[flow[0, 0]], fitax_histograms[name], [flow[0, 1]]])
        w2 = np.concatenate([[flow[1, 0]], fitax_histograms.sumw2[name], [flow[1, 1]]])
        np.testing.assert_allclose(w, w_ref, rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(w2, w2_ref, rtol=1e-12, atol=0, err_msg=name)
        if name in weights:  # an unweighted histogram: equal event counts per bin
            assert np.array_equal(np.rint(w / weights[name]), np.rint(w_ref / weights[name])), name


def _unweighted(samples) -> dict:
    """Histograms whose every event has the sample's weight (no weight systematic)."""
    out = {}
    for s in samples:
        label = s.process if s.variation == "nominal" else f"{s.process}_{s.variation}"
        for region in ("4j1b", "4j2b"):
            out[f"{region}_{label}"] = s.event_weight
            if s.variation == "nominal":
                out[f"{region}_{label}_pt_scale_up"] = out[f"{region}_{label}_pt_res_up"] = s.event_weight
    return out


@pytest.mark.slow  # a long comparison, run by make test-slow (CI runs both): make test stays under 15 min
def test_hard_histograms_equal_the_awkward_implementation_on_generated_files(inputs):
    samples = read_inputs(inputs)
    result = fill_histograms(samples, progress=False, step_size=16_384)
    reference = _reference(samples, inputs)
    _assert_same(result, reference, _unweighted(samples))
    assert result["4j2b_ttbar"].sum() > 1000 and result["4j1b_wjets"].sum() > 1000  # the selection is not empty
    me, ps, wjets = (result[f"4j1b_{n}"] for n in ("ttbar_ME_var", "ttbar_PS_var", "wjets"))
    np.testing.assert_allclose(result["4j1b_pseudodata"], (me + ps) / 2 + wjets, rtol=1e-15)


def test_events_beyond_the_trijet_cap_are_recomputed_exactly(inputs, monkeypatch):
    samples = [s for s in read_inputs(inputs) if s.label == "ttbar__nominal"]
    monkeypatch.setattr(histograms, "TRIJET_CAP", 4)  # nearly every 4j2b event overflows it
    result = fill_histograms(samples, progress=False)
    _assert_same(result, _reference(samples, inputs), _unweighted(samples))


def test_loose_cuts_on_the_shared_cms_file_equal_the_awkward_implementation(tmp_path):
    path = shared_data("hep", "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    # None of its 200 events passes AGC's cuts; looser ones select some, in both regions.
    loose = {"lepton_pt": 10.0, "lepton_eta": 2.4, "lepton_sip3d": 10.0, "muon_isolation": 0.5, "jet_pt": 15.0, "jet_eta": 2.4, "btag": 0.3}
    (tmp_path / "inputs.json").write_text(json.dumps({"ttbar": {"nominal": {"files": [{"path": str(path), "nevts": 200}]}}}))
    samples = read_inputs(tmp_path / "inputs.json")
    result = fill_histograms(samples, Cuts(**loose), progress=False)
    reference = _reference(samples, tmp_path / "inputs.json", cuts=loose)
    _assert_same(result, reference, _unweighted(samples))
    assert result["4j1b_ttbar"].sum() > 0 and result["4j2b_ttbar"].sum() > 0


def _modifiers(spec) -> dict:
    return {
        (c["name"], s["name"], m["name"], m["type"]): m["data"]
        for c in spec["channels"]
        for s in c["samples"]
        for m in s["modifiers"]
    }


def _flat(data) -> np.ndarray:
    if data is None:
        return np.zeros(0)
    if isinstance(data, dict):
        return np.concatenate([np.ravel(np.asarray(v, dtype=float)) for _, v in sorted(data.items())])
    return np.asarray(data, dtype=float)


@pytest.fixture(scope="module")
def rebinned(inputs):
    return rebin_for_fit(fill_histograms(read_inputs(inputs), progress=False))


def test_workspace_equals_what_cabinetry_builds_from_agc_config(rebinned, tmp_path):
    cabinetry = pytest.importorskip("cabinetry")
    path = rebinned.write_root(tmp_path / "rebinned.root")
    spec, notes = build_workspace(rebinned)
    config = agc_reference.cabinetry_config(path, tmp_path / "templates")
    cabinetry.templates.collect(config)
    reference = cabinetry.workspace.build(config)
    ours, theirs = _modifiers(spec), _modifiers(reference)
    assert set(ours) <= set(theirs)
    for key in set(theirs) - set(ours):  # left out by fitax: cabinetry's own values are not finite
        assert not np.all(np.isfinite(_flat(theirs[key]))), key
        assert any(key[2] in note for note in notes), key
    for key, data in ours.items():
        np.testing.assert_allclose(_flat(data), _flat(theirs[key]), rtol=1e-12, atol=1e-12, err_msg=str(key))
    for c_ours, c_theirs in zip(spec["channels"], reference["channels"]):
        for s_ours, s_theirs in zip(c_ours["samples"], c_theirs["samples"]):
            assert s_ours["name"] == s_theirs["name"]
            np.testing.assert_allclose(s_ours["data"], s_theirs["data"], rtol=1e-12)
    for o_ours, o_theirs in zip(spec["observations"], reference["observations"]):
        assert o_ours["name"] == o_theirs["name"]
        np.testing.assert_allclose(o_ours["data"], o_theirs["data"], rtol=1e-12)
    assert spec["measurements"][0]["config"]["poi"] == reference["measurements"][0]["config"]["poi"] == "ttbar_norm"


def test_fit_of_the_agc_workspace_equals_pyhf(rebinned):
    pyhf = pytest.importorskip("pyhf")
    from fitax.hep.teststat import mle_fit

    spec, _ = build_workspace(rebinned)
    workspace = Workspace(spec)
    model = workspace.model()
    fit = mle_fit(workspace.data(model), model)
    assert fit.converged
    reference = pyhf.Workspace(spec)
    ref_model = reference.model()
    pyhf_at_fitax = float(-2 * ref_model.logpdf(fit.bestfit, reference.data(ref_model))[0])
    assert pyhf_at_fitax == pytest.approx(fit.twice_nll, rel=1e-10)
    # pyhf's default SLSQP stops ~1e-4 above the minimum here: fitax's point is lower on pyhf's
    # own likelihood, and SLSQP at tolerance 1e-12 no lower (it stops up to ~1e-4 above, its
    # ttbar_norm 5e-4 from fitax's with scipy 1.17; Minuit stops with "distance to minimum too
    # large"), so
    # the minimum itself is checked on pyhf's likelihood (pyhf's JAX backend): the Newton step
    # from fitax's point, H^-1 g over the parameters off their bounds, is below 1e-3 of each
    # parameter's error from that Hessian (C = 2 H^-1 for -2 log L).
    pyhf.set_backend("numpy", "scipy")
    _, slsqp_twice_nll = pyhf.infer.mle.fit(reference.data(ref_model), ref_model, return_fitted_val=True)
    assert fit.twice_nll <= float(slsqp_twice_nll) + 1e-8
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=1e-12))
    try:
        bestfit, twice_nll = pyhf.infer.mle.fit(reference.data(ref_model), ref_model, return_fitted_val=True)
    finally:
        pyhf.set_backend("numpy", "scipy")
    assert fit.twice_nll <= float(twice_nll) + 1e-8
    poi = fit.bestfit[model.par_slice("ttbar_norm")][0]
    assert poi == pytest.approx(bestfit[ref_model.config.poi_index], abs=0.05 * fit.uncertainty[model.poi_index])
    pyhf.set_backend("jax")
    try:
        jax_model = pyhf.Workspace(spec).model()
        data = jnp.asarray(reference.data(ref_model))
        twice_nll_of = lambda p: -2 * jax_model.logpdf(p, data)[0]  # noqa: E731
        point = jnp.asarray(fit.bestfit)
        gradient, hessian = (np.asarray(jax.jit(d)(point)) for d in (jax.grad(twice_nll_of), jax.hessian(twice_nll_of)))
    finally:
        pyhf.set_backend("numpy", "scipy")
    bounds = np.asarray(ref_model.config.suggested_bounds())
    free = (fit.bestfit - bounds[:, 0] > 1e-6) & (bounds[:, 1] - fit.bestfit > 1e-6) & ~np.asarray(ref_model.config.suggested_fixed())
    inner = hessian[np.ix_(free, free)]
    step = np.linalg.solve(inner, gradient[free])
    errors = np.sqrt(2 * np.diag(np.linalg.inv(inner)))
    assert free.sum() > 10 and np.max(np.abs(step) / errors) < 1e-3


def test_written_root_file_holds_every_histogram_with_its_variances(inputs, tmp_path):
    samples = [s for s in read_inputs(inputs) if s.process == "wjets"]
    result = fill_histograms(samples, progress=False)
    path = result.write_root(tmp_path / "histograms.root")
    with uproot.open(path) as file:
        names = {key.split(";")[0] for key in file.keys()}
        assert names == set(result.sumw)
        assert {"4j1b_wjets", "4j2b_wjets_pt_scale_up", "4j1b_wjets_scale_var_down", "4j2b_wjets_btag_var_3_up", "4j2b_pseudodata"} <= names
        np.testing.assert_array_equal(file["4j2b_wjets"].values(), result["4j2b_wjets"])
        np.testing.assert_array_equal(file["4j2b_wjets"].variances(), result.sumw2["4j2b_wjets"])
        for name in ("4j1b_wjets", "4j2b_wjets_pt_res_up", "4j2b_pseudodata"):  # under- and overflow kept
            np.testing.assert_array_equal(file[name].values(flow=True)[[0, -1]], result.flow[name][0])
            np.testing.assert_array_equal(file[name].variances(flow=True)[[0, -1]], result.flow[name][1])
        np.testing.assert_array_equal(file["4j2b_wjets"].axis().edges(), np.linspace(50, 550, 26))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["histograms.root"]  # no temporary file left


def test_bad_inputs_are_clear_errors(inputs, tmp_path):
    (tmp_path / "missing.json").write_text(json.dumps({"ttbar": {"nominal": {"files": [{"path": "nowhere.root", "nevts": 5}]}}}))
    with pytest.raises(InvalidInputs, match=r"ttbar.nominal.files\[0\]: no such file .*nowhere.root"):
        read_inputs(tmp_path / "missing.json")
    (tmp_path / "nevts.json").write_text(json.dumps({"ttbar": {"nominal": {"files": [{"path": str(inputs)}]}}}))
    with pytest.raises(InvalidInputs, match="'nevts' must be a positive integer"):
        read_inputs(tmp_path / "nevts.json")
    (tmp_path / "xsec.json").write_text(json.dumps({"zjets": {"nominal": {"files": [{"path": str(inputs), "nevts": 3}]}}}))
    with pytest.raises(InvalidInputs, match="no cross section for process 'zjets'"):
        read_inputs(tmp_path / "xsec.json")
    not_root = tmp_path / "not.root"
    not_root.write_text("hello")
    with pytest.raises(nanoaod.InvalidEvents, match="not a ROOT file"):
        next(nanoaod.read_chunks(not_root, {"Jet": ("pt",)}))
    with uproot.recreate(tmp_path / "other.root") as file:
        file["Other"] = {"x": np.arange(3.0)}
    with pytest.raises(nanoaod.InvalidEvents, match="no tree 'Events'"):
        next(nanoaod.read_chunks(tmp_path / "other.root", {"Jet": ("pt",)}))
    with uproot.recreate(tmp_path / "partial.root") as file:
        file.mktree("Events", {"Jet": ak.zip({"pt": ak.Array([[1.0]])}).type}, field_name=lambda o, i: f"{o}_{i}", counter_name=lambda c: f"n{c}")
    with pytest.raises(nanoaod.InvalidEvents, match="no branch Jet_eta"):
        next(nanoaod.read_chunks(tmp_path / "partial.root", {"Jet": ("pt", "eta")}))


def test_grouping_by_multiplicity_keeps_every_event_once_and_pads_to_the_group(inputs):
    """``group_by="Jet"``: the same events and objects as a plain read, each chunk padded to its
    own events' multiplicity (4, 8, 16, ...) and holding ``block_size x 4 / cap`` events (at
    least 1024), and a group's leftovers carried into the next read, so only a file's last
    chunk of each group is partial, padded to a quarter of its group's chunk size or to all."""
    path = read_inputs(inputs)[0].files[0]  # ttbar: 0 to ~15 jets per event

    def rows(chunks):
        out, chunks = {}, list(chunks)
        for chunk in chunks:
            jets, valid = chunk.collections["Jet"], np.asarray(chunk.valid)
            counts = np.asarray(jets.mask).sum(axis=1)
            for e, n, pts in zip(np.asarray(chunk.scalars["event"])[valid], counts[valid], np.asarray(jets.pt)[valid]):
                assert e not in out
                out[e] = tuple(pts[:n])
        return out, chunks

    plain, plain_chunks = rows(nanoaod.read_chunks(path, {"Jet": ("pt",)}, scalars=("event",), step_size=4096, block_size=2048))
    assert all(chunk.contiguous for chunk in plain_chunks) and "events 0..2048" in repr(plain_chunks[0])
    grouped, chunks = rows(nanoaod.read_chunks(path, {"Jet": ("pt",)}, scalars=("event",), step_size=4096, block_size=2048, group_by="Jet"))
    assert grouped == plain and len(plain) == 15_000
    caps = [chunk.collections["Jet"].cap for chunk in chunks]
    assert set(caps) >= {4, 8, 16}
    for chunk, cap in zip(chunks, caps):
        largest = np.asarray(chunk.collections["Jet"].mask).sum(axis=1).max()
        assert cap // 2 < largest <= cap or (cap == 4 and largest <= 4)
    block = {cap: max(1024, 2048 * 4 // cap) for cap in caps}
    partial = [cap for chunk, cap in zip(chunks, caps) if chunk.n_events < block[cap]]
    assert len(partial) == len(set(partial)) == len(set(caps))
    for chunk, cap in zip(chunks, caps):
        assert chunk.size == block[cap] or (chunk.n_events <= chunk.size == max(1024, block[cap] // 4))
    assert not chunks[0].contiguous and "events (not contiguous; last read from event" in repr(chunks[0])
    with pytest.raises(ValueError, match="group_by='Muon' is not one of the collections"):
        next(nanoaod.read_chunks(path, {"Jet": ("pt",)}, group_by="Muon"))
    with pytest.raises(ValueError, match="group_by='Jet' needs a block_size"):
        next(nanoaod.read_chunks(path, {"Jet": ("pt",)}, group_by="Jet"))

    # max_cap=8: the events with more jets join the 5-8 jet group (one shape, not one per bucket)
    capped = list(nanoaod.read_chunks(path, {"Jet": ("pt",)}, scalars=("event",), step_size=4096, block_size=2048, group_by="Jet", max_cap=8))
    assert {chunk.collections["Jet"].cap for chunk in capped} == {4, 8}
    assert sum(chunk.n_events for chunk in capped) == 15_000
    assert sum(chunk.over_cap["Jet"] for chunk in capped) == sum(1 for n in plain.values() if len(n) > 8) > 0


def test_events_above_max_cap_are_counted_and_reported(inputs):
    samples = [s for s in read_inputs(inputs) if s.label == "wjets__nominal"]
    chunk = next(nanoaod.read_chunks(samples[0].files[0], {"Jet": ("pt",)}))
    counts = np.asarray(chunk.collections["Jet"].mask).sum(axis=1)
    chunk = next(nanoaod.read_chunks(samples[0].files[0], {"Jet": ("pt",)}, max_cap=4))
    assert chunk.collections["Jet"].cap == 4 and chunk.over_cap == {"Jet": int(np.sum(counts > 4))} and chunk.over_cap["Jet"] > 0
    with pytest.raises(ValueError, match="max_cap must be at least 4"):
        next(nanoaod.read_chunks(samples[0].files[0], {"Jet": ("pt",)}, max_cap=2))
    result = fill_histograms(samples, progress=False, max_cap=6)
    assert any("more objects than max_cap=6" in note for note in result.notes)


AGC_NAMES_PER_REGION = (
    [f"{p}{suffix}" for p in ("ttbar", "wjets", "single_top_s_chan", "single_top_t_chan", "single_top_tW")
     for suffix in ["", "_pt_scale_up", "_pt_res_up"] + [f"_btag_var_{i}_{d}" for i in range(4) for d in ("up", "down")]]
    + [f"ttbar_{v}" for v in ("scaleup", "scaledown", "ME_var", "PS_var")]
    + ["wjets_scale_var_up", "wjets_scale_var_down", "pseudodata"]
)  # fmt: skip


def test_cli_runs_the_analysis_end_to_end(tmp_path, capsys):
    from fitax.cli import main

    status = main(["hep", "generate", "--out", str(tmp_path / "data"), "--events", "40000"])
    assert status == 0
    status = main(["hep", "agc", "--inputs", str(tmp_path / "data" / "inputs.json"), "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.split("\n}\n", 1)[1])  # after generate's own JSON
    assert summary["converged"] is True and summary["histograms"] == 124
    out = tmp_path / "out"
    with uproot.open(out / "histograms.root") as file:
        names = {key.split(";")[0] for key in file.keys()}
    # AGC's reference histograms.root: 2 regions x 62 names (reference/histos_*_file_per_process.json)
    assert names == {f"{region}_{name}" for region in ("4j1b", "4j2b") for name in AGC_NAMES_PER_REGION}
    fit = json.loads((out / "fit.json").read_text())
    assert fit["fit"]["converged"] and 0 < fit["ttbar_norm"][0] < 10 and fit["ttbar_norm"][1] > 0
    assert set(fit["postfit_yields"]) == {"4j1b CR", "4j2b SR"}
    spec = json.loads((out / "workspace.json").read_text())
    assert Workspace(spec).model().poi_name == "ttbar_norm"
    assert (out / "stacked.png").stat().st_size > 0 and (out / "postfit.png").stat().st_size > 0


def test_cli_with_a_single_process_and_with_bad_inputs(tmp_path, capsys):
    from fitax.cli import main

    main(["hep", "generate", "--out", str(tmp_path / "data"), "--events", "2000", "--processes", "wjets"])
    capsys.readouterr()
    status = main(["hep", "agc", "--inputs", str(tmp_path / "data" / "inputs.json"), "--out", str(tmp_path / "out"), "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert status == 0 and summary["converged"] is None
    assert any("needs a ttbar sample" in note for note in summary["notes"])
    assert (tmp_path / "out" / "histograms.root").exists() and not (tmp_path / "out" / "fit.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"ttbar": {"nominal": {"files": [{"path": "gone.root", "nevts": 10}]}}}))
    status = main(["hep", "agc", "--inputs", str(tmp_path / "bad.json"), "--out", str(tmp_path / "out2"), "--quiet"])
    assert status == 2 and "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_files_over_dask_workers_give_the_same_histograms(inputs):
    samples = [s for s in read_inputs(inputs) if s.process == "ttbar"]
    alone = fill_histograms(samples, progress=False)
    spread = fill_histograms(samples, progress=False, workers=2)
    for name, values in alone.sumw.items():
        np.testing.assert_allclose(spread[name], values, rtol=1e-13, err_msg=name)


def _collection(rows: list[list[dict]], fields: dict, cap: int = 8):
    from fitax.hep.jagged import Collection

    values = {name: np.zeros((len(rows), cap), dtype=dtype) for name, dtype in fields.items()}
    mask = np.zeros((len(rows), cap), dtype=bool)
    for i, objects in enumerate(rows):
        for j, obj in enumerate(objects):
            mask[i, j] = True
            for name in fields:
                values[name][i, j] = obj.get(name, values[name][i, j])
    return Collection({k: jax.numpy.asarray(v) for k, v in values.items()}, jax.numpy.asarray(mask))


def test_objects_exactly_on_a_cut_or_a_bin_edge_are_treated_as_agc_does():
    from fitax.hep.agc.selection import chunk_histograms

    muon = {"pt": 40.0, "eta": 0.5, "tightId": True, "sip3d": 1.0, "pfRelIso04_all": 0.05}
    jet = {"pt": 50.0, "eta": 0.3, "phi": 0.0, "mass": 5.0, "btagCSVV2": 0.1, "jetId": 6}
    tagged = {**jet, "btagCSVV2": 0.9}
    events = [  # (muons, electrons, jets)
        ([{**muon, "pt": 30.0}], [], [tagged, jet, jet, jet]),  # muon pT == 30: no lepton
        ([], [{"pt": 40.0, "eta": 2.1, "cutBased": 4, "sip3d": 1.0}], [tagged, jet, jet, jet]),  # |eta| == 2.1: no lepton
        ([muon], [], [tagged, jet, jet, {**jet, "eta": -2.4}]),  # a jet at |eta| == 2.4: 3 jets
        ([muon], [], [tagged, {**jet, "btagCSVV2": 0.5}, jet, jet]),  # btag == 0.5 untagged: 4j1b, HT 200
        ([muon], [], [{**tagged, "pt": 200.0}, {**jet, "pt": 150.0}, {**jet, "pt": 100.0}, {**jet, "pt": 100.0}]),  # HT == 550: overflow
        ([muon], [], [{**tagged, "pt": 100.0}, {**jet, "pt": 50.0}, {**jet, "pt": 50.0}, {**jet, "pt": 50.0}]),  # HT == 250: bin [250, 270)
        ([muon], [], [tagged, jet, jet, {**jet, "pt": 30.0}]),  # a jet at pT == 30: 3 jets
    ]
    muons = _collection([e[0] for e in events], {"pt": float, "eta": float, "tightId": bool, "sip3d": float, "pfRelIso04_all": float})
    electrons = _collection([e[1] for e in events], {"pt": float, "eta": float, "cutBased": np.int32, "sip3d": float})
    jets = _collection([e[2] for e in events], {"pt": float, "eta": float, "phi": float, "mass": float, "btagCSVV2": float, "jetId": np.int32})
    n = len(events)
    sumw, *_ = chunk_histograms(
        {"Jet": jets, "Electron": electrons, "Muon": muons}, jax.numpy.ones(n, bool), jax.numpy.arange(n, dtype=jax.numpy.uint64), 1.0, np.uint64(0)
    )
    nominal = np.asarray(sumw[0])  # underflow, 25 bins, overflow
    expected = np.zeros(27)
    expected[1 + (200 - 50) // 20] += 1  # event 3
    expected[1 + (250 - 50) // 20] += 1  # event 5
    expected[-1] += 1  # event 4: HT == 550 overflows
    np.testing.assert_array_equal(nominal[0], expected)
    assert nominal[1].sum() == 0


def test_jet_resolution_factors_are_normal_and_independent_of_chunking():
    from scipy import stats

    from fitax.hep.agc.selection import JET_RESOLUTION, jet_resolution_factors

    events = jax.numpy.arange(100_000, dtype=jax.numpy.uint64) * 7919 + 12345
    factors = np.asarray(jet_resolution_factors(np.uint64(42), events, 8))
    z = ((factors - 1.0) / JET_RESOLUTION).ravel()
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.std() - 1) < 5 / np.sqrt(2 * z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z.reshape(-1, 8)[:, 0], z.reshape(-1, 8)[:, 1])[0, 1]) < 5 / np.sqrt(100_000)
    # a function of (seed, event, slot) only: the same events in another order and chunk
    again = np.asarray(jet_resolution_factors(np.uint64(42), events[::-1][:1000], 8))
    np.testing.assert_array_equal(again, factors[::-1][:1000])
