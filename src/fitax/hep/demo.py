"""``fitax hep demo``: the inference chain of a published search on the ATLAS sbottom workspace.

Reads the background-only workspace and the signal patch of the shared data (HEPData
ins1748602, RegionA, point 1300_205_60), with pyhf's command-line interpolation codes, and
writes to ``OUT``: the free fit (``fit.json``), the CLs hypotest at mu = 1 (``cls.json``),
observed and expected upper limits with a Brazil plot, the ranking of the nuisance parameters
with an impact plot (POI allowed below 0), and the hypotests of a small signal grid made from the patch (signal
yields scaled as a falling function of two mass-like coordinates: a stand-in for a real
patchset, which the shared data do not carry) with an exclusion plot.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

from .model import DEFAULT_MODIFIER_SETTINGS as PYHF_CLI_MODIFIER_SETTINGS
from .workspace import Workspace

__all__ = ["run_hep_demo", "demo_patchset"]

BACKGROUND = "sbottom_RegionA_BkgOnly.json"
SIGNAL_PATCH = "sbottom_RegionA_patch_1300_205_60.json"


def _shared_hep_data() -> Path:
    root = Path(os.environ.get("FITAX_SHARED_DATA", Path.cwd().parent / "shared" / "data"))
    folder = root / "hep"
    if not (folder / BACKGROUND).exists():
        raise FileNotFoundError(f"the sbottom workspace is not at {folder / BACKGROUND} (set FITAX_SHARED_DATA to the shared data folder)")
    return folder


def _scaled(operations: list, factor: float) -> list:
    """A signal patch with every added sample's yields (and their absolute uncertainties:
    histosys templates, staterror) multiplied by ``factor``."""
    scaled = copy.deepcopy(operations)
    for operation in scaled:
        sample = operation.get("value")
        if operation["op"] != "add" or not isinstance(sample, dict) or "data" not in sample:
            continue
        sample["data"] = [factor * x for x in sample["data"]]
        for modifier in sample["modifiers"]:
            if modifier["type"] == "histosys":
                modifier["data"] = {key: [factor * x for x in values] for key, values in modifier["data"].items()}
            elif modifier["type"] == "staterror":
                modifier["data"] = [factor * x for x in modifier["data"]]
    return scaled


def demo_patchset(workspace: Workspace, signal_patch: list, masses=(1000.0, 1300.0, 1600.0), splittings=(60.0, 205.0, 400.0)) -> dict:
    """A pyhf patchset over ``masses x splittings`` built from ``signal_patch``: the signal
    scaled by ``(1300 / m)^8 * (205 / dm)^0.5``, equal to the patch at (1300, 205)."""
    patches = []
    for mass in masses:
        for splitting in splittings:
            factor = (1300.0 / mass) ** 8 * (205.0 / splitting) ** 0.5
            patches.append({"metadata": {"name": f"demo_{mass:g}_{splitting:g}", "values": [mass, splitting]},
                            "patch": _scaled(signal_patch, factor)})
    return {
        "metadata": {
            "name": "fitax_demo_grid",
            "description": "signal grid scaled from the sbottom 1300_205_60 patch (fitax demo)",
            "digests": {"sha256": workspace.digest()},
            "labels": ["m_sbottom_GeV", "delta_m_GeV"],
            "references": {"hepdata": "ins1748602"},
        },
        "patches": patches,
        "version": "1.0.0",
    }


def _write_json(path: Path, document) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run_hep_demo(out: str | Path = "results/hep") -> dict:
    """Run the demo, write its results and plots to ``out``; returns a summary."""
    from .calculators import hypotest
    from .infer import ranking
    from .limits import upper_limit
    from .patchsets import hypotest_patchset
    from .plots import brazil_plot, exclusion_plot, impact_plot
    from .teststat import mle_fit, parameter_labels

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = _shared_hep_data()
    background = Workspace.read(folder / BACKGROUND)
    signal_patch = json.loads((folder / SIGNAL_PATCH).read_text())
    workspace = background.patch(signal_patch)
    model = workspace.model(modifier_settings=PYHF_CLI_MODIFIER_SETTINGS)
    data = workspace.data(model)

    fit = mle_fit(data, model)
    _write_json(out / "fit.json", fit.to_dict(parameter_labels(model)))
    test = hypotest(1.0, data, model, "qtilde")
    _write_json(out / "cls.json", test.to_dict())
    limit = upper_limit(data, model)
    _write_json(out / "limit.json", limit.to_dict())
    brazil_plot(limit, out / "brazil.png")
    # The POI ends at its lower bound 0 here, where no nuisance parameter can move it: the
    # impacts are taken, as ATLAS does for ranking plots, with the POI allowed below 0.
    signed = workspace.patch([{"op": "add", "path": "/measurements/0/config/parameters/-",
                               "value": {"name": model.poi_name, "bounds": [[-10.0, 10.0]]}}])
    signed_model = signed.model(modifier_settings=PYHF_CLI_MODIFIER_SETTINGS)
    impacts = ranking(signed.data(signed_model), signed_model)
    _write_json(out / "ranking.json", impacts.to_dict())
    impact_plot(impacts, out / "ranking.png", top=15)

    patchset_path = out / "demo_patchset.json"
    _write_json(patchset_path, demo_patchset(background, signal_patch))
    grid = hypotest_patchset(background, patchset_path, modifier_settings=PYHF_CLI_MODIFIER_SETTINGS)
    _write_json(out / "patchset_cls.json", grid.to_dict())
    exclusion_plot(grid, out / "exclusion.png")

    converged = bool(fit.converged and test.converged and limit.converged and impacts.converged and grid.converged.all())
    return {
        "out": str(out),
        "mu_hat": float(fit.bestfit[model.poi_index]),
        "CLs_obs": test.cls_obs,
        "upper_limit_observed": float(limit.observed),
        "upper_limit_expected": float(limit.expected[2]),
        "top_impact": impacts.labels[0],
        "points_excluded": int(grid.excluded().sum()),
        "points": len(grid.names),
        "converged": converged,
    }
