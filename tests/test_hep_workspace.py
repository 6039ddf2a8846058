"""fitax.hep.Workspace: reading, validation errors that name where, patches, patchsets, writing."""

from __future__ import annotations

import copy
import json
import os

import jsonpatch
import numpy as np
import pytest

from fitax.hep import InvalidWorkspace, Patch, Workspace, read_patchset, validate

from conftest import shared_data


def _spec():
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {"name": "signal", "data": [5.0, 10.0], "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
                    {
                        "name": "ttbar",
                        "data": [50.0, 60.0],
                        "modifiers": [
                            {"name": "jes", "type": "normsys", "data": {"hi": 1.05, "lo": 0.95}},
                            {"name": "stat_SR", "type": "staterror", "data": [2.0, 3.0]},
                        ],
                    },
                ],
            },
            {"name": "CR", "samples": [{"name": "ttbar", "data": [100.0], "modifiers": [{"name": "shape", "type": "histosys", "data": {"hi_data": [110.0], "lo_data": [92.0]}}]}]},
        ],
        "observations": [{"name": "SR", "data": [57.0, 66.0]}, {"name": "CR", "data": [103.0]}],
        "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def _sbottom():
    return Workspace.read(shared_data("hep", "sbottom_RegionA_BkgOnly.json"))


def _sbottom_patch():
    return json.loads(shared_data("hep", "sbottom_RegionA_patch_1300_205_60.json").read_text())


# --------------------------------------------------------------------------------- reading
def test_read_shared_workspace_and_data_order_match_pyhf():
    pyhf = pytest.importorskip("pyhf")
    ws = _sbottom()
    assert ws.channels == ["CRtt_meff", "SR_meff", "VRtt_meff"]
    assert ws.measurement_names == ["NormalMeasurement"]
    patched = ws.patch(_sbottom_patch())
    model = patched.model()
    reference_ws = pyhf.Workspace(json.loads(shared_data("hep", "sbottom_RegionA_BkgOnly.json").read_text()))
    reference = reference_ws.model(patches=[_sbottom_patch()])
    np.testing.assert_array_equal(patched.data(model), reference_ws.data(reference))
    np.testing.assert_array_equal(patched.data(model, include_auxdata=False), reference_ws.data(reference, include_auxdata=False))
    assert model.channels == tuple(reference.config.channels) and model.samples == tuple(reference.config.samples)


def test_spec_is_copied():
    spec = _spec()
    ws = Workspace(spec)
    spec["channels"][0]["name"] = "changed"
    assert ws.channels == ["CR", "SR"]
    ws.spec["channels"][0]["name"] = "changed"
    assert ws.channels == ["CR", "SR"]


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        Workspace.read(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidWorkspace, match="bad.json is not valid JSON"):
        Workspace.read(bad)
    broken = _spec()
    del broken["observations"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(InvalidWorkspace, match="broken.json: .*'observations' is a required property"):
        Workspace.read(path)


# ------------------------------------------------------------------------- schema violations
def _invalid(mutate):
    spec = _spec()
    mutate(spec)
    with pytest.raises(InvalidWorkspace) as error:
        Workspace(spec)
    return str(error.value)


def test_schema_violation_names_channel_sample_modifier():
    message = _invalid(lambda s: s["channels"][0]["samples"][1]["modifiers"][0]["data"].pop("hi"))
    assert "channel 'SR', sample 'ttbar', modifier 'jes' (normsys): data" in message
    assert "'hi' is a required property" in message
    message = _invalid(lambda s: s["channels"][0]["samples"][1]["modifiers"][1].__setitem__("data", "abc"))
    assert "channel 'SR', sample 'ttbar', modifier 'stat_SR' (staterror): data" in message and "not of type 'array'" in message
    message = _invalid(lambda s: s["channels"][1]["samples"][0]["data"].__setitem__(0, "x"))
    assert "channel 'CR', sample 'ttbar': data[0]" in message
    message = _invalid(lambda s: s["observations"][1].__setitem__("data", []))
    assert "observation 'CR': data" in message
    message = _invalid(lambda s: s["measurements"][0]["config"].pop("poi"))
    assert "measurement 'meas': config" in message and "'poi' is a required property" in message
    message = _invalid(lambda s: s.__setitem__("version", "2.0.0"))
    assert "version" in message


def test_unknown_modifier_type_is_named():
    def mutate(spec):
        spec["channels"][0]["samples"][0]["modifiers"].append({"name": "xsec", "type": "normfactorr", "data": None})

    message = _invalid(mutate)
    assert "channel 'SR', sample 'signal', modifier 'xsec' (normfactorr)" in message
    assert "unknown modifier type 'normfactorr'" in message and "normfactor" in message


def test_validate_accepts_what_pyhf_accepts():
    """The schema file accepts the shared workspaces and pyhf's own validation accepts ours."""
    pyhf = pytest.importorskip("pyhf")
    for name in ("sbottom_RegionA_BkgOnly.json", "validation_2bin_2channel_coupledhistosys_workspace.json", "validation_shapesys_nuisparfilter_workspace.json"):
        spec = json.loads(shared_data("hep", name).read_text())
        validate(spec)
        pyhf.schema.validate(spec, "workspace.json")
    validate(_sbottom_patch(), "jsonpatch")


# ------------------------------------------------------------------------ semantic checks
def test_missing_observation_is_named():
    message = _invalid(lambda s: s["observations"].pop(1))
    assert "channel 'CR' has no observation" in message


def test_bin_count_mismatches_are_named():
    message = _invalid(lambda s: s["channels"][0]["samples"][1]["data"].append(1.0))
    assert "channel 'SR', sample 'ttbar': data has 3 bins but sample 'signal' of the channel has 2" in message
    message = _invalid(lambda s: s["channels"][0]["samples"][1]["modifiers"][1]["data"].append(1.0))
    assert "channel 'SR', sample 'ttbar', modifier 'stat_SR' (staterror): data has 3 bins but the channel has 2" in message
    message = _invalid(lambda s: s["channels"][1]["samples"][0]["modifiers"][0]["data"]["hi_data"].append(1.0))
    assert "modifier 'shape' (histosys): hi_data has 2 bins but the channel has 1" in message
    message = _invalid(lambda s: s["observations"][0]["data"].append(1.0))
    assert "observation 'SR' has 3 bins but channel 'SR' has 2" in message


def test_duplicates_and_bad_numbers_are_named():
    assert "channel 'SR' is defined twice" in _invalid(lambda s: s["channels"].append(copy.deepcopy(s["channels"][0])))
    message = _invalid(lambda s: s["channels"][0]["samples"].append(copy.deepcopy(s["channels"][0]["samples"][0])))
    assert "channel 'SR', sample 'signal' is defined twice" in message
    assert "observation 'SR': data[1] is -1.0" in _invalid(lambda s: s["observations"][0]["data"].__setitem__(1, -1.0))
    assert "data[0] is nan" in _invalid(lambda s: s["channels"][0]["samples"][0]["data"].__setitem__(0, float("nan")))


def test_poi_that_is_not_a_parameter_is_named():
    """The background-only sbottom workspace has POI mu_SIG, which only its signal patches add."""
    with pytest.raises(ValueError, match="POI 'mu_SIG' is not a parameter of the model"):
        _sbottom().model()


def test_unknown_measurement_is_named():
    with pytest.raises(KeyError, match="no measurement 'other'"):
        Workspace(_spec()).model("other")


# ---------------------------------------------------------------------------------- patches
def test_patch_returns_new_workspace():
    ws = Workspace(_spec())
    ops = [{"op": "replace", "path": "/channels/0/samples/0/data", "value": [6.0, 12.0]}]
    for form in (ops, [ops], jsonpatch.JsonPatch(ops), Patch("p", [1], ops)):
        patched = ws.patch(form)
        assert patched.spec["channels"][0]["samples"][0]["data"] == [6.0, 12.0]
    assert ws.spec["channels"][0]["samples"][0]["data"] == [5.0, 10.0]
    twice = ws.patch([ops, [{"op": "add", "path": "/observations/0/data/0", "value": 1.0}, {"op": "remove", "path": "/observations/0/data/1"}]])
    assert twice.observations["SR"] == [1.0, 66.0]


def test_patch_that_does_not_apply_is_named():
    ws = Workspace(_spec())
    with pytest.raises(InvalidWorkspace, match=r"patch #0 does not apply: operation #1 \(replace /channels/5/samples\)"):
        ws.patch([{"op": "test", "path": "/version", "value": "1.0.0"}, {"op": "replace", "path": "/channels/5/samples", "value": []}])
    with pytest.raises(InvalidWorkspace, match=r"operation #0 \(test /version\)"):
        ws.patch([{"op": "test", "path": "/version", "value": "0.9"}])
    with pytest.raises(InvalidWorkspace, match="patch #0: jsonpatch does not follow the HistFactory schema"):
        ws.patch([{"op": "explode", "path": "/version"}])
    with pytest.raises(InvalidWorkspace, match="the patched workspace is invalid: channel 'SR', sample 'ttbar': data has 2 bins but sample 'signal'"):
        ws.patch([{"op": "add", "path": "/channels/0/samples/0/data/-", "value": 1.0}])


def test_patchset_read_and_apply(tmp_path):
    ws = _sbottom()
    patchset = {
        "metadata": {
            "description": "two signal points",
            "digests": {"sha256": ws.digest()},
            "labels": ["m1", "m2"],
            "references": {"hepdata": "ins1748602"},
        },
        "patches": [
            {"metadata": {"name": "sbottom_1300_205_60", "values": [1300, 205]}, "patch": _sbottom_patch()},
            {"metadata": {"name": "sbottom_1300_205_60_copy", "values": [1300, 206]}, "patch": _sbottom_patch()},
        ],
        "version": "1.0.0",
    }
    path = tmp_path / "patchset.json"
    path.write_text(json.dumps(patchset))
    patches = Workspace.read_patchset(path)
    assert [p.name for p in patches] == ["sbottom_1300_205_60", "sbottom_1300_205_60_copy"]
    name, values, operations = patches[1]
    assert values == (1300, 206) and operations == _sbottom_patch()
    assert ws.patch(patches[0]).model().poi_name == "mu_SIG"
    assert len(read_patchset(path, workspace=ws)) == 2
    with pytest.raises(InvalidWorkspace, match="the patchset is for another workspace: its sha256 digest"):
        read_patchset(path, workspace=ws.patch(patches[0]))
    patchset["patches"][1]["metadata"]["name"] = "bad name!"
    path.write_text(json.dumps(patchset))
    with pytest.raises(InvalidWorkspace, match=r"patch 'bad name!': metadata.name"):
        read_patchset(path)


def test_digest_is_pyhf_digest():
    pyhf = pytest.importorskip("pyhf")
    spec = json.loads(shared_data("hep", "validation_2bin_2channel_coupledhistosys_workspace.json").read_text())
    assert Workspace(spec).digest() == pyhf.utils.digest(spec)
    assert Workspace(spec).digest("md5") == pyhf.utils.digest(spec, "md5")


# ----------------------------------------------------------------------------------- write
def test_write_round_trip_and_atomic(tmp_path, monkeypatch):
    ws = Workspace(_spec())
    path = tmp_path / "ws.json"
    ws.write(path)
    assert Workspace.read(path) == ws
    patched = ws.patch([{"op": "replace", "path": "/observations/1/data", "value": [1.0]}])

    def failing_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        patched.write(path)
    monkeypatch.undo()
    assert Workspace.read(path) == ws  # the old file is intact
    assert os.listdir(tmp_path) == ["ws.json"]  # and no temporary file is left
