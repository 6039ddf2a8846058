"""The AGC statistical model as a pyhf JSON workspace, built as AGC's cabinetry config builds it.

Regions "4j1b CR" (HT) and "4j2b SR" (trijet mass), 11 bins over 110-550 GeV; samples ttbar,
W+jets and the three single-top processes; POI ``ttbar_norm`` (a normfactor on ttbar, bounds
[0, 10]); each sample's MC statistical uncertainty as ``staterror`` (per channel, from the sums
of squared weights); and the systematics of AGC's ``cabinetry_config.yml`` as cabinetry 0.5
writes them (0.6): each "NormPlusShape" systematic becomes a ``normsys`` (the variation's yield ratio)
and a ``histosys`` (the variation normalised to the nominal yield) of the same name, a one-sided
variation symmetrised about the nominal; the luminosity a 3% ``normsys`` on every sample.

A systematic whose histograms a run did not make (e.g. no ttbar ME_var sample in the inputs) is
left out and named in the returned notes.
"""

from __future__ import annotations


import numpy as np

from .histograms import Histograms

__all__ = ["CHANNELS", "POI", "SAMPLE_NAMES", "SYSTEMATICS", "build_workspace"]

CHANNELS = {"4j1b": "4j1b CR", "4j2b": "4j2b SR"}
SAMPLE_NAMES = {
    "ttbar": "ttbar",
    "wjets": "W+jets",
    "single_top_s_chan": "single top, s-channel",
    "single_top_t_chan": "single top, t-channel",
    "single_top_tW": "tW",
}
# (name, processes it applies to (None: all), up histogram suffix, down suffix or None: symmetrised)
SYSTEMATICS = (
    ("ME variation", ("ttbar",), "ME_var", None),
    ("PS variation", ("ttbar",), "PS_var", None),
    ("ttbar scale variations", ("ttbar",), "scaleup", "scaledown"),
    ("Jet energy scale", None, "pt_scale_up", None),
    ("Jet energy resolution", None, "pt_res_up", None),
    *((f"b-tag NP {i + 1}", None, f"btag_var_{i}_up", f"btag_var_{i}_down") for i in range(4)),
    ("W+jets scale variations", ("wjets",), "scale_var_up", "scale_var_down"),
)
LUMINOSITY_UNCERTAINTY = 0.03
POI = "ttbar_norm"


def norm_plus_shape(nominal, up, down=None, xp=np) -> tuple:
    """cabinetry's "NormPlusShape" of one sample: ``(normsys hi, normsys lo, histosys hi_data,
    histosys lo_data)``; a variation without ``down`` is symmetrised about the nominal. ``xp``:
    ``numpy`` for the JSON workspace, ``jax.numpy`` for the differentiable one."""
    total = xp.sum(nominal)
    up_ratio = xp.sum(up) / total
    up_shape = up / up_ratio
    if down is None:
        return up_ratio, 2.0 - up_ratio, up_shape, 2.0 * nominal - up_shape
    down_ratio = xp.sum(down) / total
    return up_ratio, down_ratio, up_shape, down / down_ratio


def _norm_plus_shape(name: str, nominal: np.ndarray, up: np.ndarray, down: np.ndarray | None) -> list[dict]:
    hi, lo, hi_data, lo_data = norm_plus_shape(nominal, up, down)
    return [
        {"name": name, "type": "normsys", "data": {"hi": float(hi), "lo": float(lo)}},
        {"name": name, "type": "histosys", "data": {"hi_data": hi_data.tolist(), "lo_data": lo_data.tolist()}},
    ]


def _processes(histograms: Histograms, region: str) -> list[str]:
    return [p for p in SAMPLE_NAMES if f"{region}_{p}" in histograms]


def build_workspace(histograms: Histograms) -> tuple[dict, list[str]]:
    """The pyhf workspace (a dict, schema 1.0.0) of rebinned AGC histograms (see
    :func:`~fitax.hep.agc.histograms.rebin_for_fit`), observed data their ``pseudodata``, and the
    notes on what was left out. Raises ``ValueError`` without a ttbar sample (the POI).

    Example:
        >>> spec, notes = build_workspace(rebin_for_fit(fill_histograms(read_inputs("inputs.json"))))  # doctest: +SKIP
        >>> Workspace(spec).model().config.poi_name  # doctest: +SKIP
        'ttbar_norm'
    """
    if f"{next(iter(CHANNELS))}_ttbar" not in histograms:
        raise ValueError("the AGC model needs a ttbar sample: its POI ttbar_norm scales ttbar (the inputs have none)")
    notes: list[str] = []
    channels, observations = [], []
    for region, channel in CHANNELS.items():
        samples = []
        for process in _processes(histograms, region):
            nominal = np.asarray(histograms[f"{region}_{process}"])
            modifiers = [{"name": "Luminosity", "type": "normsys", "data": {"hi": 1 + LUMINOSITY_UNCERTAINTY, "lo": 1 - LUMINOSITY_UNCERTAINTY}}]
            if process == "ttbar":
                modifiers.append({"name": POI, "type": "normfactor", "data": None})
            for name, applies_to, up, down in SYSTEMATICS:
                if applies_to is not None and process not in applies_to:
                    continue
                wanted = [f"{region}_{process}_{up}"] + ([] if down is None else [f"{region}_{process}_{down}"])
                if not all(w in histograms for w in wanted):
                    if region == next(iter(CHANNELS)):
                        notes.append(f"{name} left out for {process}: no histogram {' / '.join(w for w in wanted if w not in histograms)}")
                    continue
                variations = [np.asarray(histograms[w]) for w in wanted]
                if nominal.sum() <= 0 or any(v.sum() <= 0 for v in variations):
                    # cabinetry would write NaN ratios: an empty template has no normalisation to vary.
                    notes.append(f"{name} left out for {process} in {channel}: an empty nominal or varied template")
                    continue
                modifier = _norm_plus_shape(name, nominal, variations[0], variations[1] if down is not None else None)
                ratios = modifier[0]["data"]
                if not ratios["hi"] > 0 or not ratios["lo"] > 0:
                    # symmetrising a variation of more than +100% gives a negative factor, which
                    # a normsys cannot take (cabinetry would write it; pyhf then fails)
                    notes.append(f"{name} left out for {process} in {channel}: normsys factors hi={ratios['hi']:.3g}, lo={ratios['lo']:.3g} (must be > 0)")
                    continue
                modifiers += modifier
            staterror = np.sqrt(histograms.sumw2[f"{region}_{process}"])
            modifiers.append({"name": f"staterror_{channel.replace(' ', '-')}", "type": "staterror", "data": staterror.tolist()})
            samples.append({"name": SAMPLE_NAMES[process], "data": nominal.tolist(), "modifiers": modifiers})
        channels.append({"name": channel, "samples": samples})
        observations.append({"name": channel, "data": np.asarray(histograms[f"{region}_pseudodata"]).tolist()})
    measurement = {"name": "CMS_ttbar", "config": {"poi": POI, "parameters": [{"name": POI, "bounds": [[0.0, 10.0]], "inits": [1.0]}]}}
    return {"channels": channels, "observations": observations, "measurements": [measurement], "version": "1.0.0"}, notes
