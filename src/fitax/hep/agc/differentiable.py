"""The AGC likelihood as a differentiable function of the histograms, and its expected significance.

The JSON workspace (:func:`~fitax.hep.agc.model.build_workspace`) fixes the model's structure
from hard-cut histograms. :class:`ModelFromHistograms` then rebuilds that model's arrays from
any histograms of the same names — soft ones whose bins are JAX functions of the cut
thresholds — as a JAX function: each spec number (sample yields, normsys ratios, histosys
templates, staterror uncertainties) is computed with the same formulas as the JSON
(:func:`~fitax.hep.agc.model.norm_plus_shape`), and lands in the model's tables where
:meth:`fitax.hep.Workspace.model` puts it. Where it puts it is read once from the model built
from a workspace whose numbers are replaced by their positions (built twice with two offsets,
so copies are told apart from constants); the staterror widths are recomputed (pyhf's combined
relative uncertainty). At construction the map must reproduce the template's arrays (rtol
1e-12), so a change in the model builder cannot silently break it.

:func:`expected_significance` is the median expected discovery significance of the nominal
signal, ``Z_A = sqrt(q0)`` on the Asimov data of the model at its nominal parameters. Its
derivative needs no derivative of the background-only fit: at that fit's minimum the gradient
in the parameters vanishes (envelope theorem), so the fitted point is held fixed and only the
explicit dependence on the model's arrays and the Asimov data is differentiated.

Example:
    >>> mapping = ModelFromHistograms(spec)  # doctest: +SKIP
    >>> z, dz_dcuts, fit = significance_and_gradient(soft_histograms, cuts, mapping)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..interpolation import code4_coefficients
from ..jagged import safe_sqrt
from ..model import Model
from ..teststat import fixed_poi_fit
from ..workspace import Workspace
from .model import CHANNELS, LUMINOSITY_UNCERTAINTY, SAMPLE_NAMES, SYSTEMATICS, norm_plus_shape

__all__ = [
    "ModelFromHistograms",
    "background_only_fit",
    "expected_poi_uncertainty",
    "expected_significance",
    "significance_and_gradient",
    "spec_numbers",
]

_PLACED = ("nominal", "histosys_lo", "histosys_nom", "histosys_hi")
_PLACED_LOG = ("normsys_log_lo", "normsys_log_hi")
_REBUILT = _PLACED + _PLACED_LOG + ("normsys_coefficients", "gauss_sigma")
_OFFSET = 1.0e6
_REGION = {channel: region for region, channel in CHANNELS.items()}
_PROCESS = {name: process for process, name in SAMPLE_NAMES.items()}
_VARIATIONS = {name: (up, down) for name, _, up, down in SYSTEMATICS}


def _leaves(spec: Mapping) -> list:
    """The numeric entries of a workspace in a fixed order (sample data, then per modifier)."""
    out = []
    for channel in spec["channels"]:
        for sample in channel["samples"]:
            out.append(sample["data"])
            for modifier in sample["modifiers"]:
                data = modifier["data"]
                if modifier["type"] == "normsys":
                    out += [data["hi"], data["lo"]]
                elif modifier["type"] == "histosys":
                    out += [data["hi_data"], data["lo_data"]]
                elif modifier["type"] == "staterror":
                    out.append(data)
    return out


def spec_numbers(sumw: Mapping[str, Array], sumw2: Mapping[str, Array], like: Mapping) -> Float[Array, " numbers"]:
    """The numeric entries of the workspace with ``like``'s structure built from (rebinned)
    histograms ``sumw`` / ``sumw2`` (``{"4j1b_ttbar": bins, ...}``), as one JAX vector."""
    out = []
    for channel in like["channels"]:
        region = _REGION[channel["name"]]
        for sample in channel["samples"]:
            process = _PROCESS[sample["name"]]
            nominal = sumw[f"{region}_{process}"]
            out.append(nominal)
            for modifier in sample["modifiers"]:
                mtype, name = modifier["type"], modifier["name"]
                if mtype == "staterror":
                    out.append(safe_sqrt(sumw2[f"{region}_{process}"]))
                elif name == "Luminosity":
                    out += [jnp.asarray(1 + LUMINOSITY_UNCERTAINTY), jnp.asarray(1 - LUMINOSITY_UNCERTAINTY)]
                elif mtype in ("normsys", "histosys"):
                    up, down = _VARIATIONS[name]
                    variation = sumw[f"{region}_{process}_{up}"], None if down is None else sumw[f"{region}_{process}_{down}"]
                    hi, lo, hi_data, lo_data = norm_plus_shape(nominal, *variation, xp=jnp)
                    out += [hi, lo] if mtype == "normsys" else [hi_data, lo_data]
    return jnp.concatenate([jnp.ravel(jnp.asarray(x, dtype=jnp.float64)) for x in out])


def _with_numbers(spec: Mapping, numbers: np.ndarray) -> dict:
    """A copy of ``spec`` whose numeric entries are ``numbers`` (in :func:`_leaves` order)."""
    position = 0

    def take(like):
        nonlocal position
        size = int(np.size(like))
        values = numbers[position : position + size]
        position += size
        return values.tolist() if isinstance(like, list) else float(values[0])

    copy = {**spec, "channels": []}
    for channel in spec["channels"]:
        samples = []
        for sample in channel["samples"]:
            modifiers = []
            data = take(sample["data"])
            for modifier in sample["modifiers"]:
                d = modifier["data"]
                if modifier["type"] == "normsys":
                    d = {"hi": take(d["hi"]), "lo": take(d["lo"])}
                elif modifier["type"] == "histosys":
                    d = {"hi_data": take(d["hi_data"]), "lo_data": take(d["lo_data"])}
                elif modifier["type"] == "staterror":
                    d = take(d)
                modifiers.append({**modifier, "data": d})
            samples.append({**sample, "data": data, "modifiers": modifiers})
        copy["channels"].append({**channel, "samples": samples})
    return copy


def _placement(first: np.ndarray, second: np.ndarray, log: bool, field: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = (np.exp(first), np.exp(second)) if log else (first, second)
    moved = ~np.isclose(first, second, rtol=0, atol=1e-9)
    if not np.allclose(b[moved] - a[moved], _OFFSET, rtol=0, atol=1e-3):
        raise ValueError(f"model array {field} is not a placement of workspace numbers: cannot differentiate through it")
    source = np.where(moved, np.rint(a).astype(np.int64) - 1, -1)
    return source, np.where(moved, 0.0, first)


class ModelFromHistograms:
    """Rebuilds the model of workspace ``spec`` from its numbers (:func:`spec_numbers`).

    Call it with histograms (``sumw``, ``sumw2`` mappings of rebinned bins) to get the
    :class:`~fitax.hep.Model`; every array depends differentiably on them. A host-side builder
    (its layout tables are NumPy), not a pytree."""

    def __repr__(self) -> str:
        return f"ModelFromHistograms({len(self.template.samples)} samples, {self.template.n_main_bins} bins, {self.template.n_parameters} parameters)"

    def __init__(self, spec: Mapping, modifier_settings: Mapping | None = None):
        self.spec = dict(spec)
        self.template = Workspace(spec).model(modifier_settings=modifier_settings)
        count = sum(int(np.size(leaf)) for leaf in _leaves(spec))
        ids = np.arange(1.0, count + 1.0)
        first = Workspace(_with_numbers(spec, ids)).model(modifier_settings=modifier_settings)
        second = Workspace(_with_numbers(spec, ids + _OFFSET)).model(modifier_settings=modifier_settings)
        self.sources, self.fills = {}, {}
        for field in _PLACED + _PLACED_LOG:
            self.sources[field], self.fills[field] = _placement(
                np.asarray(getattr(first, field)), np.asarray(getattr(second, field)), field in _PLACED_LOG, field
            )
        self.staterror = self._staterror_layout(spec, count)
        numbers = np.concatenate([np.ravel(np.asarray(leaf, dtype=float)) for leaf in _leaves(spec)])
        rebuilt = self.from_numbers(jnp.asarray(numbers))
        for field in _REBUILT:
            if not np.allclose(np.asarray(getattr(rebuilt, field)), np.asarray(getattr(self.template, field)), rtol=1e-12, atol=1e-12):
                raise ValueError(f"rebuilding the model from its workspace numbers does not reproduce {field}")

    def _staterror_layout(self, spec, count) -> tuple:
        """Per staterror parameter set: its positions in ``gauss_sigma``, and per component the
        leaf positions of the carrying samples' nominal yields and uncertainties."""
        starts, position = {}, 0
        for channel in spec["channels"]:
            for sample in channel["samples"]:
                starts[(channel["name"], sample["name"], "data")] = position
                position += len(sample["data"])
                for modifier in sample["modifiers"]:
                    if modifier["type"] == "normsys":
                        position += 2
                    elif modifier["type"] == "histosys":
                        position += 2 * len(sample["data"])
                    elif modifier["type"] == "staterror":
                        starts[(channel["name"], sample["name"], modifier["name"])] = position
                        position += len(sample["data"])
        gauss_start, layout = 0, []
        for pset in self.template.parameter_sets:
            if pset.constraint == "normal" and pset.name.startswith("staterror"):
                nominal_rows, uncertainty_rows = [], []
                for channel in spec["channels"]:
                    carriers = [s["name"] for s in channel["samples"] if any(m["name"] == pset.name for m in s["modifiers"])]
                    if not carriers:
                        continue
                    n = len(channel["samples"][0]["data"])
                    for b in range(n):
                        nominal_rows.append([starts[(channel["name"], c, "data")] + b for c in carriers])
                        uncertainty_rows.append([starts[(channel["name"], c, pset.name)] + b for c in carriers])
                positions = np.arange(gauss_start, gauss_start + pset.size)
                layout.append((positions, np.asarray(nominal_rows), np.asarray(uncertainty_rows), np.asarray(pset.fixed)))
            if pset.constraint == "normal":
                gauss_start += pset.size
        return tuple(layout)

    def from_numbers(self, numbers: Float[Array, " numbers"]) -> Model:
        arrays = []
        for field in _PLACED + _PLACED_LOG:
            source, fill = self.sources[field], self.fills[field]
            placed = numbers[np.maximum(source, 0)]
            if field in _PLACED_LOG:
                placed = jnp.log(placed)
            arrays.append(jnp.where(source >= 0, placed, fill))
        if self.template.normsys_code == "code4":  # its polynomial follows the normsys ratios
            coefficients = code4_coefficients(jnp.exp(arrays[-2]), jnp.exp(arrays[-1]), xp=jnp)
        else:
            coefficients = self.template.normsys_coefficients
        sigma = self.template.gauss_sigma
        for positions, nominal_rows, uncertainty_rows, fixed in self.staterror:
            total = jnp.sum(numbers[nominal_rows], axis=1)
            relative = numbers[uncertainty_rows] / jnp.where(total > 0, total, 1.0)[:, None]
            width = safe_sqrt(jnp.sum(relative**2, axis=1))
            sigma = sigma.at[positions].set(jnp.where(fixed, 1.0, width))
        return eqx.tree_at(lambda m: tuple(getattr(m, f) for f in _REBUILT), self.template, tuple(arrays) + (coefficients, sigma))

    def __call__(self, sumw: Mapping[str, Array], sumw2: Mapping[str, Array]) -> Model:
        return self.from_numbers(spec_numbers(sumw, sumw2, self.spec))


def background_only_fit(model: Model):
    """The background-only (POI = 0) fit of the model's Asimov data at its nominal parameters:
    the fitted point :func:`expected_significance` needs (a :class:`~fitax.hep.teststat.HistFitResult`)."""
    return fixed_poi_fit(0.0, model.expected_data(jnp.asarray(model.suggested_init())), model)


def expected_significance(model: Model, background_bestfit: Float[Array, " parameters"]) -> Float[Array, ""]:
    """Median expected discovery significance of the nominal signal (POI at its initial value 1),
    ``sqrt(q0)`` on the Asimov data, as a JAX function of ``model``'s arrays;
    ``background_bestfit`` is :func:`background_only_fit`'s ``bestfit`` for the same model (held
    fixed: the envelope theorem makes its derivative unnecessary)."""
    nominal = jnp.asarray(model.suggested_init())
    asimov = model.expected_data(nominal)
    fitted = jax.lax.stop_gradient(jnp.asarray(background_bestfit))
    return safe_sqrt(model.nll(fitted, asimov) - model.nll(nominal, asimov))


def expected_poi_uncertainty(model: Model) -> Float[Array, ""]:
    """The POI's expected uncertainty on the Asimov data of the model at its nominal parameters:
    ``sqrt(C_mu,mu)`` with ``C`` the inverse Hessian of ``-log L`` over the free parameters (the
    Asimov minimum is the nominal point, so no fit is needed), a JAX function of the model's
    arrays. ``1 / sigma_mu`` is the Wald approximation of the median expected significance of
    the nominal signal; for the AGC, where ttbar is both the POI and most of the data, it is
    the analysis' sensitivity (the precision of the ttbar cross section)."""
    nominal = jnp.asarray(model.suggested_init())
    asimov = model.expected_data(nominal)
    free = np.flatnonzero(~np.asarray(model.suggested_fixed()))
    hessian = jax.hessian(lambda p: model.nll(p, asimov))(nominal)[np.ix_(free, free)] / 2
    poi = int(np.flatnonzero(free == model.poi_index)[0])
    unit = jnp.zeros(free.size).at[poi].set(1.0)
    return jnp.sqrt(jnp.linalg.solve(hessian, unit)[poi])


def significance_and_gradient(histograms_of, cuts, mapping: ModelFromHistograms):
    """``(Z_A, dZ_A/dcuts, background fit)`` for ``histograms_of(cuts) -> (sumw, sumw2)``: the
    histograms once forward (keeping what their derivative needs), one fit, one backward pass."""
    histograms, pullback = jax.vjp(histograms_of, cuts)
    fit = background_only_fit(mapping(*histograms))
    value, d_histograms = jax.value_and_grad(lambda h: expected_significance(mapping(*h), fit.bestfit))(histograms)
    return value, pullback(d_histograms)[0], fit
