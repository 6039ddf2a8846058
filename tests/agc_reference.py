"""Independent implementations of the AGC ttbar analysis: awkward + NumPy histograms, and
AGC's cabinetry configuration of its statistical model (the references).

Written as AGC's ``ttbar_analysis_pipeline.py`` processor does it — jagged masks, ``ak.num``,
``ak.combinations``, ``ak.argmax`` — without coffea (four-vectors by hand), filling
boost-histogram (what AGC's ``hist`` is built on), with its own event weights (AGC's cross
sections, luminosity and generated-event counts read from the inputs file). Used by the tests and by ``benchmarks/hep_columnar.py``; never by fitax. The jet
resolution factors are an input (AGC draws them unseeded; the comparison gives both sides the
same ones).
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import uproot

BRANCHES = [
    "event",
    "Electron_pt", "Electron_eta", "Electron_cutBased", "Electron_sip3d",
    "Muon_pt", "Muon_eta", "Muon_tightId", "Muon_sip3d", "Muon_pfRelIso04_all",
    "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2", "Jet_jetId",
]  # fmt: skip

DEFAULT_CUTS = {"lepton_pt": 30.0, "lepton_eta": 2.1, "lepton_sip3d": 4.0, "muon_isolation": 0.15, "jet_pt": 30.0, "jet_eta": 2.4, "btag": 0.5}


def read(path, entry_start=None, entry_stop=None):
    events = uproot.open(path)["Events"].arrays(BRANCHES, entry_start=entry_start, entry_stop=entry_stop)
    return events


def _as64(array):
    return ak.values_astype(array, np.float64)


# AGC's cross sections (pb, utils/file_input.py) and luminosity (1/pb), written out here
# rather than taken from fitax.
XSEC = {
    "ttbar": 396.87 + 332.97,
    "single_top_s_chan": 2.0268 + 1.2676,
    "single_top_t_chan": (36.993 + 22.175) / 0.252,
    "single_top_tW": 37.936 + 37.906,
    "wjets": 61457 * 0.252,
}
LUMI = 3378.0


def event_weights(inputs_path) -> dict:
    """``{(process, variation): xsec * L / sum(nevts)}`` read from an AGC inputs file."""
    import json

    document = json.loads(open(inputs_path).read())
    return {
        (process, variation): XSEC[process] * LUMI / sum(f["nevts"] for f in entry["files"])
        for process, variations in document.items()
        for variation, entry in variations.items()
    }


def _fill(values, weights):
    """As AGC's ``hist`` fill (boost-histogram's regular axis: the upper edge is overflow)."""
    import boost_histogram as bh

    histogram = bh.Histogram(bh.axis.Regular(25, 50.0, 550.0), storage=bh.storage.Weight())
    histogram.fill(np.asarray(values, dtype=np.float64), weight=np.asarray(weights, dtype=np.float64))
    view = histogram.view(flow=True)  # underflow, the 25 bins, overflow
    return np.array(view.value), np.array(view.variance)


def histograms(events, event_weight: float, process: str, variation: str, resolution, cuts=DEFAULT_CUTS) -> dict:
    """``{name: (sumw, sumw2)}`` as AGC fills them, for one chunk of one sample; ``resolution`` is
    the jagged array of per-jet resolution factors."""
    c = cuts
    out = {}
    kinematic = {"nominal": 1.0}
    event_systematics = []
    if variation == "nominal":
        kinematic.update({"pt_scale_up": 1.03, "pt_res_up": resolution})
        event_systematics = [f"btag_var_{i}" for i in range(4)] + (["scale_var"] if process == "wjets" else [])
    electron_pt, muon_pt = _as64(events.Electron_pt), _as64(events.Muon_pt)
    electron_reqs = (
        (electron_pt > c["lepton_pt"]) & (np.abs(_as64(events.Electron_eta)) < c["lepton_eta"])
        & (events.Electron_cutBased == 4) & (_as64(events.Electron_sip3d) < c["lepton_sip3d"])
    )  # fmt: skip
    muon_reqs = (
        (muon_pt > c["lepton_pt"]) & (np.abs(_as64(events.Muon_eta)) < c["lepton_eta"]) & events.Muon_tightId
        & (_as64(events.Muon_sip3d) < c["lepton_sip3d"]) & (_as64(events.Muon_pfRelIso04_all) < c["muon_isolation"])
    )  # fmt: skip
    n_leptons = ak.num(electron_pt[electron_reqs]) + ak.num(muon_pt[muon_reqs])
    for name, factor in kinematic.items():
        jets = ak.zip(
            {
                "pt": _as64(events.Jet_pt) * factor,
                "eta": _as64(events.Jet_eta),
                "phi": _as64(events.Jet_phi),
                "mass": _as64(events.Jet_mass),
                "btag": _as64(events.Jet_btagCSVV2),
                "veto": (events.Jet_jetId & 4) != 0,
            }
        )
        jets = jets[(jets.pt > c["jet_pt"]) & (np.abs(jets.eta) < c["jet_eta"]) & jets.veto]
        n_tags = ak.sum(jets.btag > c["btag"], axis=1)
        base = (n_leptons == 1) & (ak.num(jets) >= 4)
        for region, selection in (("4j1b", base & (n_tags == 1)), ("4j2b", base & (n_tags >= 2))):
            region_jets = jets[selection]
            weights = np.ones(len(region_jets)) * event_weight
            if region == "4j1b":
                observable = ak.sum(region_jets.pt, axis=-1)
            else:
                observable = _trijet_mass(region_jets, c["btag"])
            if variation != "nominal":
                label = f"{process}_{variation}"
            else:
                label = process if name == "nominal" else f"{process}_{name}"
            out[f"{region}_{label}"] = _fill(observable, weights)
            if name != "nominal":
                continue
            for systematic in event_systematics:
                for direction, sign in (("up", 1), ("down", -1)):
                    if systematic.startswith("btag_var"):
                        i = int(systematic.rsplit("_", 1)[-1])
                        factor_w = 1 + sign * 0.075 * np.asarray(region_jets.pt[:, i]) / 50
                    else:
                        factor_w = np.full(len(region_jets), 1 + sign * 0.025)
                    out[f"{region}_{process}_{systematic}_{direction}"] = _fill(observable, weights * factor_w)
    return out


def _trijet_mass(jets, btag_cut):
    trijet = ak.combinations(jets, 3, fields=["j1", "j2", "j3"])
    px = py = pz = energy = 0
    for member in (trijet.j1, trijet.j2, trijet.j3):
        jx, jy, jz = member.pt * np.cos(member.phi), member.pt * np.sin(member.phi), member.pt * np.sinh(member.eta)
        px, py, pz = px + jx, py + jy, pz + jz
        energy = energy + np.sqrt(jx**2 + jy**2 + jz**2 + member.mass**2)
    max_btag = np.maximum(trijet.j1.btag, np.maximum(trijet.j2.btag, trijet.j3.btag))
    keep = max_btag > btag_cut
    px, py, pz, energy = px[keep], py[keep], pz[keep], energy[keep]
    pt = np.sqrt(px**2 + py**2)
    best = ak.argmax(pt, axis=1, keepdims=True)
    mass2 = (energy**2 - px**2 - py**2 - pz**2)[best]
    return np.sqrt(np.maximum(ak.to_numpy(ak.flatten(mass2)), 0.0))


def cabinetry_config(histograms_path, folder) -> dict:
    """AGC's ``cabinetry_config.yml`` (iris-hep/analysis-grand-challenge c37bf59), reading the
    rebinned histograms from ``histograms_path``."""
    binning = list(range(110, 551, 40))
    samples = [("ttbar", "ttbar"), ("wjets", "W+jets"), ("single_top_s_chan", "single top, s-channel"),
               ("single_top_t_chan", "single top, t-channel"), ("single_top_tW", "tW")]  # fmt: skip

    def norm_plus_shape(name, up, down=None, samples=None):
        entry = {"Name": name, "Up": {"VariationPath": up}, "Type": "NormPlusShape"}
        entry["Down"] = {"Symmetrize": True} if down is None else {"VariationPath": down}
        if samples:
            entry["Samples"] = samples
        return entry

    return {
        "General": {
            "Measurement": "CMS_ttbar",
            "POI": "ttbar_norm",
            "InputPath": f"{histograms_path}:{{RegionPath}}_{{SamplePath}}{{VariationPath}}",
            "HistogramFolder": str(folder),
        },
        "Regions": [
            {"Name": "4j1b CR", "RegionPath": "4j1b", "Variable": "H_T [GeV]", "Binning": binning},
            {"Name": "4j2b SR", "RegionPath": "4j2b", "Variable": "m_bjj [GeV]", "Binning": binning},
        ],
        "Samples": [{"Name": "Pseudodata", "SamplePath": "pseudodata", "Data": True}]
        + [{"Name": name, "SamplePath": path} for path, name in samples],
        "Systematics": [
            norm_plus_shape("ME variation", "_ME_var", samples="ttbar"),
            norm_plus_shape("PS variation", "_PS_var", samples="ttbar"),
            norm_plus_shape("ttbar scale variations", "_scaleup", "_scaledown", samples="ttbar"),
            norm_plus_shape("Jet energy scale", "_pt_scale_up"),
            norm_plus_shape("Jet energy resolution", "_pt_res_up"),
            *(norm_plus_shape(f"b-tag NP {i + 1}", f"_btag_var_{i}_up", f"_btag_var_{i}_down") for i in range(4)),
            norm_plus_shape("W+jets scale variations", "_scale_var_up", "_scale_var_down", samples="W+jets"),
            {"Name": "Luminosity", "Up": {"Normalization": 0.03}, "Down": {"Normalization": -0.03}, "Type": "Normalization"},
        ],
        "NormFactors": [{"Name": "ttbar_norm", "Samples": "ttbar", "Nominal": 1.0, "Bounds": [0, 10]}],
    }
