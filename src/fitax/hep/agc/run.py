"""``fitax hep agc``: the whole AGC ttbar analysis from an inputs file to fit results and plots.

Writes to ``OUT``:

* ``histograms.root``: every histogram as AGC's reference names it (25 bins over 50-550 GeV,
  before rebinning), with its sums of squared weights;
* ``workspace.json``: the AGC model as a pyhf workspace (11 bins over 110-550 GeV);
* ``fit.json``: the maximum-likelihood fit to the pseudodata (every parameter with its error,
  ``ttbar_norm``, convergence, warnings), the expected uncertainty of ``ttbar_norm`` (Asimov),
  pre- and post-fit yields, and the notes of the run (what was left out, events beyond caps);
* ``stacked.png``, ``postfit.png``; with ``optimise_steps``: ``optimisation.json`` and
  ``optimisation.png`` (soft-cut gradient descent, confirmed with hard cuts).

A run with one process (only ttbar, say) writes its histograms; without ttbar there is no POI,
so the workspace and the fit are skipped and the notes say why. Outputs of an earlier run in
``OUT`` are removed first; JSON is strict (a non-finite number is written as null, with a note).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...io import atomic_write
from .histograms import fill_histograms, rebin_for_fit
from .inputs import read_inputs

__all__ = ["run_agc"]


_OUTPUTS = ("histograms.root", "stacked.png", "workspace.json", "fit.json", "postfit.png", "optimisation.json", "optimisation.png")


def _finite(value):
    """``value`` with every NaN or infinite number replaced by ``None`` (JSON's null)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _write_json(path: Path, document) -> None:
    """Strict JSON (no NaN or Infinity, which many readers reject): non-finite numbers as null."""
    text = json.dumps(_finite(document), indent=2, sort_keys=True, allow_nan=False)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def run_agc(
    inputs,
    out,
    *,
    max_files: int | None = None,
    step_size: int = 200_000,
    seed: int = 0,
    optimise_steps: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Run the analysis and write its outputs (see the module docstring); returns a summary
    with ``converged`` (``None`` when no fit was made)."""
    samples = read_inputs(inputs, max_files=max_files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in _OUTPUTS:  # a previous run's results must not pass for this run's
        (out / stale).unlink(missing_ok=True)
    histograms = fill_histograms(samples, step_size=step_size, seed=seed, progress=progress, workers=workers)
    histograms.write_root(out / "histograms.root")
    from .plots import stacked_plot

    stacked_plot(histograms, out / "stacked.png")
    notes = list(histograms.notes)
    summary = {
        "samples": [s.label for s in samples],
        "events": sum(s.n_generated for s in samples),
        "histograms": len(histograms.sumw),
        "outputs": ["histograms.root", "stacked.png"],
        "converged": None,
        "notes": notes,
    }
    if any(s.process == "ttbar" and s.variation == "nominal" for s in samples):
        summary.update(_fit(rebin_for_fit(histograms), out, notes))
    else:
        notes.append("no workspace or fit: the AGC model needs a ttbar sample (its POI ttbar_norm scales ttbar)")
    if optimise_steps:
        summary.update(_optimise(samples, out, optimise_steps, seed, progress))
    return summary


def _fit(rebinned, out: Path, notes: list) -> dict:
    from ..infer import yields
    from ..teststat import mle_fit, parameter_labels
    from ..workspace import Workspace
    from .differentiable import expected_poi_uncertainty
    from .model import build_workspace
    from .plots import postfit_plot

    spec, model_notes = build_workspace(rebinned)
    notes += model_notes
    workspace = Workspace(spec)
    model = workspace.model()
    _write_json(out / "workspace.json", spec)
    data = workspace.data(model)
    fit = mle_fit(data, model)
    poi = model.par_slice("ttbar_norm")
    uncertainty = float(expected_poi_uncertainty(model))
    if not np.isfinite(uncertainty):
        notes.append("the expected ttbar_norm uncertainty is not finite (a singular Asimov Hessian: too few events)")
    result = {
        "fit": fit.to_dict(parameter_labels(model)),
        "ttbar_norm": [float(fit.bestfit[poi][0]), float(fit.uncertainty[poi][0])],
        "expected_ttbar_norm_uncertainty": uncertainty,
        "prefit_yields": yields(model, data=data),
        "notes": notes,
    }
    outputs = ["workspace.json", "fit.json"]
    if fit.converged:
        result["postfit_yields"] = yields(model, fit, data)
        edges = np.linspace(rebinned.binning.low, rebinned.binning.high, rebinned.binning.n_bins + 1)
        postfit_plot(result["postfit_yields"], edges, out / "postfit.png")
        outputs.append("postfit.png")
    else:
        notes.append("the fit did not converge: no post-fit yields or plot")
    _write_json(out / "fit.json", result)
    return {
        "converged": fit.converged,
        "ttbar_norm": result["ttbar_norm"],
        "expected_ttbar_norm_uncertainty": result["expected_ttbar_norm_uncertainty"],
        "outputs_fit": outputs,
    }


def _optimise(samples, out: Path, steps: int, seed: int, progress: bool) -> dict:
    from .optimise import optimise_cuts
    from .plots import optimisation_plot

    result = optimise_cuts(samples, steps=steps, seed=seed, progress=progress)
    _write_json(out / "optimisation.json", result.to_dict())
    optimisation_plot(result.history, out / "optimisation.png")
    return {
        "optimisation": {
            "hard_cut_uncertainty_before": result.hard_before,
            "hard_cut_uncertainty_after": result.hard_after,
            "improved": result.improved,
        }
    }
