"""Fitting sky models to datasets through the fitax core.

Each source's PSF kernel, energy dispersion and pixel mapping are taken at its position
when the datasets are bound to the models (:func:`fitax.gamma.datasets.bind`), as
Gammapy does. A fit that moves a source by more than 0.1 deg (Gammapy's threshold for
looking up IRFs again in its 'local' mode; IRF maps are tabulated on coarser grids), or
shrinks an extended source below the resolution its integration grid was chosen for, is
bound again at the new values and refitted from there, so the result does not depend on
where the fit started. The compiled likelihood is reused across these rounds (only data
change).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np

from ..fit import fit as _core_fit
from ..fit import FitResult
from ..parameters import Parameter, is_parameter, parameters_dict
from ..profile import TSResult, warn_unless_converged, wilks_significance
from ..sample import SampleResult
from ..sample import sample as _core_sample
from .datasets import Datasets
from .likelihood import bind, stat_sum_groups
from .map_binding import oversampling_factor
from .mapdataset import MapDataset
from .models import FoVBackgroundModel, Models, SkyModel
from .spatial import PointSpatialModel
from .template import TemplateSpatialModel

__all__ = ["fit", "ts", "sample", "hessian_sparsity", "costly_parameters"]

_REBIND_DISTANCE = 0.1  # deg
_MAX_ROUNDS = 4
# Exact Hessians every 8th step (and to certify convergence), BFGS updates in between: with
# the Hessian plans an exact Hessian costs ~6 gradients, and a third one mid-way saves ~7
# BFGS steps. Measured (interleaved runs, median of 6) on the simulated datasets:
# N = 1: 0.125 s with 13 steps, against 0.146 s with 21 steps for Hessians only at the start
# and end, 0.144 s refreshing every 4th step; N = 10: 1.44 s, against 1.56 s and 1.57 s.
_HESSIAN_EVERY = 8


def _as_datasets(datasets) -> Datasets:
    if isinstance(datasets, Datasets):
        return datasets
    if isinstance(datasets, MapDataset):
        return Datasets([datasets])
    return Datasets(datasets)


def _moved_sources(datasets: Datasets, bound: Models, fitted: Models) -> list[str]:
    """The sources of ``fitted`` whose IRFs or integration grid, taken for ``bound``, no
    longer serve: moved by more than 0.1 deg, or shrunk so that some map dataset needs a
    finer grid; each with what changed."""
    maps = [d for d in datasets if isinstance(d, MapDataset)]
    changes = []
    for before in bound.sky_models:
        after = fitted[before.name]
        if before.spatial is None or before.spatial.position is None:
            continue
        moved = before.spatial.position.separation(after.spatial.position).deg
        if moved > _REBIND_DISTANCE:
            changes.append(f"{before.name} moved by {moved:.3f} deg")
        elif any(oversampling_factor(after.spatial, d.wcs) > oversampling_factor(before.spatial, d.wcs)
                 for d in maps if before.applies_to(d.name)):
            changes.append(f"{before.name} shrank below its integration grid")
    return changes


def _touched_datasets(model, dataset_names: list[str]) -> set[str]:
    if isinstance(model, SkyModel):
        return {name for name in dataset_names if model.applies_to(name)}
    return {model.dataset_name}


def _parameter_owners(models: Models) -> list[tuple[str, Parameter, object, str]]:
    """Every parameter as ``(dotted name, parameter, the model holding it, the part of that
    model: 'spectral', 'spatial' or '' for a background model)``, in the order of the
    fit's parameter vector. The holder is read from the pytree path, not from the dotted
    name: catalog names such as 'J1745' and 'J1745.1' make names prefixes of each other."""
    leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(models, is_leaf=is_parameter)[0]
              if is_parameter(leaf)]
    owners = []
    for name, (path, leaf) in zip(parameters_dict(models), leaves):
        model = models[path[0].key]
        part = path[1].name if isinstance(model, SkyModel) else ""
        owners.append((name, leaf, model, part))
    return owners


def _tie_root(name: str, parameters: dict[str, Parameter]) -> str:
    while parameters[name].tied_to is not None:
        name = parameters[name].tied_to
    return name


def hessian_sparsity(datasets: Datasets, models: Models) -> np.ndarray:
    """Which second derivatives of a joint Cash statistic can be non-zero: those of two
    parameters that enter a common dataset (a source's parameters enter all datasets it
    applies to, a background model's only its own). Parameters tied to another count for
    it."""
    dataset_names = datasets.names
    owners = _parameter_owners(models)
    parameters = {name: leaf for name, leaf, _, _ in owners}
    # a set per parameter: a tie below widens one parameter's set, not its whole model's
    touched = {name: _touched_datasets(model, dataset_names) for name, _, model, _ in owners}
    for name, leaf, _, _ in owners:
        if leaf.tied_to is not None:
            touched[_tie_root(name, parameters)] |= touched[name]
    free = [touched[name] for name, leaf, _, _ in owners if leaf.is_free]
    return np.array([[bool(a & b) for b in free] for a in free], bool).reshape(len(free), len(free))


def costly_parameters(models: Models) -> np.ndarray:
    """Which free parameters shape a PSF-convolved extended source (its spatial
    parameters): their derivatives need the convolutions, the others' (spectra, point
    sources, backgrounds) do not, so the fit's Hessian treats them apart
    (``hessian_costly`` of :func:`fitax.fit`)."""
    return np.array([part == "spatial" and not isinstance(model.spatial, (PointSpatialModel, TemplateSpatialModel))
                     for _, leaf, model, part in _parameter_owners(models) if leaf.is_free], bool)


def _check_models_fit_datasets(datasets: Datasets, models: Models) -> None:
    """Every model must act on some dataset, or its parameters are unconstrained."""
    known = set(datasets.names)
    for model in models:
        if isinstance(model, FoVBackgroundModel) and model.dataset_name not in known:
            raise ValueError(f"background model {model.name!r} refers to dataset {model.dataset_name!r}, not among {sorted(known)}")
        if isinstance(model, SkyModel) and not any(model.applies_to(name) for name in known):
            raise ValueError(f"model {model.name!r} applies to datasets {list(model.datasets_names)}, none of which is fitted "
                             f"({sorted(known)})")


def fit(datasets, models: Models, *, tol: float = 1e-6, max_steps: int = 500, shard: bool | None = None) -> FitResult:
    """Fit ``models`` to ``datasets`` (one, or several jointly) by minimising Cash.

    Returns a :class:`fitax.FitResult` whose ``params`` are the fitted :class:`Models` and
    whose ``stat`` is the total Cash statistic in Gammapy's convention. ``shard``: split
    the datasets over the JAX devices (default: on accelerators only; see
    :func:`fitax.gamma.datasets.bind`).

    Example:
        >>> from fitax.gamma import Datasets, read_models, fit
        >>> datasets = Datasets.read("../shared/data/gamma/sim/datasets_n1.yaml")  # doctest: +SKIP
        >>> result = fit(datasets, read_models("../shared/data/gamma/sim/models_start_n1.yaml"))  # doctest: +SKIP
    """
    datasets = _as_datasets(datasets)
    current = models if isinstance(models, Models) else Models(models)
    _check_models_fit_datasets(datasets, current)
    for _ in range(_MAX_ROUNDS):
        groups = bind(datasets, current, shard=shard)
        result = _core_fit(stat_sum_groups, current, args=groups, tol=tol, max_steps=max_steps,
                           hessian_every=_HESSIAN_EVERY, hessian_sparsity=hessian_sparsity(datasets, current),
                           hessian_costly=costly_parameters(current))
        changes = _moved_sources(datasets, current, result.params)
        current = result.params
        if not changes:
            break
    constant = sum(float(g.data_constant) for g in groups)
    result = dataclasses.replace(result, stat=result.stat + constant)
    if changes:
        # the minimum found is that of IRFs taken elsewhere: say so rather than return it as converged
        message = (f"still moving after {_MAX_ROUNDS} bindings of the IRFs ({'; '.join(changes)}); the fit is not "
                   "converged: start it from these results")
        warnings.warn(f"fitax.gamma.fit: {message}", RuntimeWarning, stacklevel=2)
        result = dataclasses.replace(result, converged=False, message=f"{message}; {result.message}")
    return result


def ts(datasets, models: Models, source: str, *, tol: float = 1e-6, max_steps: int = 500,
       fitted: FitResult | None = None) -> TSResult:
    """Test statistic of source ``source``: twice the log-likelihood gain of the fit with
    it over the fit without it (the other models refitted in both), with its Gaussian
    significance for as many degrees of freedom as the source has free parameters.
    ``fitted``: the fit with the source from these ``models``, when already done (the fit
    without it starts from ``models`` too, so both take IRFs at the same positions).

    A TS from a fit that did not converge can be anything: ``converged`` is then false
    and a warning names each such fit (alternative: with the source; null: without it)
    and why it stopped.
    """
    models = models if isinstance(models, Models) else Models(models)
    with_source = fitted if fitted is not None else fit(datasets, models, tol=tol, max_steps=max_steps)
    without = fit(datasets, models.without(source), tol=tol, max_steps=max_steps)
    value = without.stat - with_source.stat
    df = sum(p.is_free for p in Models([models[source]]).parameters.values())
    result = TSResult(float(value), df, wilks_significance(value, df), with_source, without)
    warn_unless_converged(result)
    return result


def sample(datasets, fitted: FitResult, *, num_samples: int = 1000, num_warmup: int | None = None, num_chains: int = 4,
           seed: int = 0) -> SampleResult:
    """Posterior draws (NUTS, :func:`fitax.sample`) of the free parameters of a fit's
    models, flat priors inside their bounds (and the parameters' own priors): the
    likelihood is the fit's joint Cash statistic, its IRFs taken at the fitted positions
    (within 0.1 deg of where the fit took them last). The chains start from the fit's
    Gaussian approximation, with its covariance as first mass matrix; ``num_warmup``
    defaults to ``num_samples``."""
    datasets = _as_datasets(datasets)
    groups = bind(datasets, fitted.params)
    return _core_sample(stat_sum_groups, fitted.params, args=groups, num_samples=num_samples,
                        num_warmup=num_samples if num_warmup is None else num_warmup, num_chains=num_chains, seed=seed,
                        init=fitted)
