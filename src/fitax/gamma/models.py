"""Sky models, background models and the ``Models`` collection that a fit varies.

``Models`` is a pytree keyed by model name, so the parameter names of a fit read like
Gammapy's: ``pointsrc.spectral.index``, ``gauss.spatial.sigma``, ``obs000-bkg.norm``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..parameters import Parameter, parameters_dict
from ._common import parameter

__all__ = ["SkyModel", "FoVBackgroundModel", "Models", "PSF_MODES"]

PSF_MODES = ("centre", "position")


class SkyModel(eqx.Module):
    """A source: ``spectral(E) x spatial(lon, lat)`` [cm-2 s-1 TeV-1 sr-1], times its
    ``temporal`` model averaged over each dataset's good time intervals, if it has one
    (:mod:`fitax.gamma.temporal`).

    Without a spatial model it can only be fitted to spectra (on-off datasets).
    ``datasets_names`` restricts the model to some datasets of a joint fit (``None``: all).
    ``psf_mode`` says how an extended source meets the PSF in map datasets: ``"centre"``
    (Gammapy's way, the default) convolves it with the PSF at its centre; ``"position"``
    spreads each part of it with the PSF where that part lies (for sources across which
    the PSF changes: diffuse templates, large disks; see :mod:`fitax.gamma.psf_position`).
    Point sources are the same either way.

    Example:
        >>> from fitax.gamma import SkyModel, PowerLawSpectralModel, PointSpatialModel
        >>> SkyModel(PowerLawSpectralModel(index=2.3, amplitude=2e-11),
        ...          PointSpatialModel(0.2, 0.1, frame="galactic"), name="pointsrc")
        SkyModel('pointsrc': PowerLawSpectralModel x PointSpatialModel, 5 parameters, 4 free)
    """

    spectral: eqx.Module
    spatial: eqx.Module | None
    temporal: eqx.Module | None
    name: str = eqx.field(static=True)
    datasets_names: tuple[str, ...] | None = eqx.field(static=True)
    psf_mode: str = eqx.field(static=True)

    def __init__(self, spectral_model, spatial_model=None, name: str = "", datasets_names: Iterable[str] | None = None,
                 psf_mode: str = "centre", temporal_model=None):
        if not name:
            raise ValueError("a SkyModel needs a name")
        if psf_mode not in PSF_MODES:
            raise ValueError(f"model {name!r}: psf_mode {psf_mode!r}; expected one of {PSF_MODES}")
        self.spectral = spectral_model
        self.spatial = spatial_model
        self.temporal = temporal_model
        self.name = str(name)
        self.datasets_names = None if datasets_names is None else tuple(datasets_names)
        self.psf_mode = psf_mode

    def with_psf_mode(self, psf_mode: str) -> "SkyModel":
        """The same model with another ``psf_mode``."""
        return SkyModel(self.spectral, self.spatial, self.name, self.datasets_names, psf_mode, self.temporal)

    @property
    def spectral_model(self):
        return self.spectral

    @property
    def spatial_model(self):
        return self.spatial

    @property
    def temporal_model(self):
        return self.temporal

    def applies_to(self, dataset_name: str) -> bool:
        return self.datasets_names is None or dataset_name in self.datasets_names

    def __repr__(self) -> str:
        parameters = parameters_dict(self)
        free = sum(p.is_free for p in parameters.values())
        spatial = type(self.spatial).__name__ if self.spatial is not None else "no spatial model"
        if self.temporal is not None:
            spatial += f" x {type(self.temporal).__name__}"
        mode = "" if self.psf_mode == "centre" else f", PSF by {self.psf_mode}"
        return (f"SkyModel({self.name!r}: {type(self.spectral).__name__} x {spatial}, "
                f"{len(parameters)} parameters, {free} free{mode})")


class FoVBackgroundModel(eqx.Module):
    """Scales a dataset's background template: ``norm (E / reference)^-tilt`` at the
    reconstructed-energy bin centres (Gammapy's ``FoVBackgroundModel`` with its default
    ``PowerLawNormSpectralModel``)."""

    norm: Parameter
    tilt: Parameter
    reference: Parameter
    dataset_name: str = eqx.field(static=True)

    def __init__(self, dataset_name: str, norm=1.0, tilt=0.0, reference=1.0):
        self.norm = parameter(norm, "")
        self.tilt = parameter(tilt, "", frozen=True)
        self.reference = parameter(reference, "TeV", frozen=True)
        self.dataset_name = str(dataset_name)

    @property
    def name(self) -> str:
        return f"{self.dataset_name}-bkg"

    def __call__(self, energy: Float[ArrayLike, "*e"]) -> Float[Array, "*e"]:
        return self.norm.value * (jnp.asarray(energy, float) / self.reference.value) ** -self.tilt.value

    def __repr__(self) -> str:
        return f"FoVBackgroundModel({self.dataset_name!r}: norm={float(self.norm.value):.4g}, tilt={float(self.tilt.value):.4g})"


@jax.tree_util.register_pytree_with_keys_class
class Models:
    """An ordered collection of named models; a pytree whose keys are the model names.

    Example:
        >>> from fitax.gamma import Models, FoVBackgroundModel
        >>> models = Models([FoVBackgroundModel("obs000")])
        >>> models.names, models["obs000-bkg"].norm.value.item()
        (['obs000-bkg'], 1.0)
    """

    def __init__(self, models: Iterable = ()):
        models = list(models)
        names = [m.name for m in models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"model names must be unique; repeated: {duplicated}")
        self._models = dict(zip(names, models))

    def tree_flatten_with_keys(self):
        return [(jax.tree_util.DictKey(name), model) for name, model in self._models.items()], tuple(self._models)

    def tree_flatten(self):
        return list(self._models.values()), tuple(self._models)

    @classmethod
    def tree_unflatten(cls, names, children):
        new = object.__new__(cls)
        new._models = dict(zip(names, children))
        return new

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def __getitem__(self, name: str):
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(f"no model named {name!r}; models: {self.names}") from None

    def __iter__(self) -> Iterator:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __add__(self, other: "Models | Iterable") -> "Models":
        return Models([*self, *other])

    def without(self, name: str) -> "Models":
        """The collection without model ``name`` (e.g. the null hypothesis of a TS)."""
        self[name]
        return Models([m for n, m in self._models.items() if n != name])

    def replace(self, model) -> "Models":
        """The collection with the model of the same name replaced by ``model``."""
        self[model.name]
        return Models([model if n == model.name else m for n, m in self._models.items()])

    def with_psf_mode(self, psf_mode: str) -> "Models":
        """Every sky model with ``psf_mode`` (``fitax gamma fit --psf-mode``)."""
        return Models([m.with_psf_mode(psf_mode) if isinstance(m, SkyModel) else m for m in self])

    @property
    def sky_models(self) -> list[SkyModel]:
        return [m for m in self if isinstance(m, SkyModel)]

    def background_model(self, dataset_name: str) -> FoVBackgroundModel | None:
        found = [m for m in self if isinstance(m, FoVBackgroundModel) and m.dataset_name == dataset_name]
        return found[0] if found else None

    def background_scales(self, dataset_names: Sequence[str], energy: Float[ArrayLike, " e"]) -> Float[Array, "n e"]:
        """Each dataset's background model ``norm (E / reference)^-tilt`` at the
        reconstructed energies ``energy`` (1 for a dataset without one: its background
        template as it is); maps and spectra scale their backgrounds with it. The
        parameters are stacked first, so a traced graph holds one power law, not one per
        dataset."""
        order = {id(model): k for k, model in enumerate(self)}
        backgrounds = {m.dataset_name: m for m in reversed(list(self)) if isinstance(m, FoVBackgroundModel)}
        free, fixed = [], []  # free: (rank in the parameter vector, (row, column, value)); fixed: (row, column, value)
        for row, name in enumerate(dataset_names):
            model = backgrounds.get(name)
            if model is None:
                fixed += [(row, 0, 1.0), (row, 1, 0.0), (row, 2, 1.0)]
                continue
            for column, leaf in enumerate((model.norm, model.tilt, model.reference)):
                if leaf.is_free:
                    free.append((3 * order[id(model)] + column, (row, column, leaf.value)))
                else:
                    fixed.append((row, column, leaf.value))
        # The free norms and tilts are stacked in the order of the fit's parameter vector,
        # whatever the order of the datasets, so that XLA merges their slices of that vector
        # into one: one kernel, not one per dataset (the fit's compile time stays flat in N).
        table = jnp.zeros((len(dataset_names), 3))
        for entries in ([entry for _, entry in sorted(free, key=lambda e: e[0])], fixed):
            if entries:
                rows, columns, values = zip(*entries)
                table = table.at[np.array(rows), np.array(columns)].set(jnp.stack([jnp.asarray(x, float) for x in values]))
        norm, tilt, reference = table[:, :1], table[:, 1:2], table[:, 2:]
        return norm * (jnp.asarray(energy, float)[None] / reference) ** -tilt

    @property
    def parameters(self) -> dict[str, Parameter]:
        """All parameters by dotted name."""
        return parameters_dict(self)

    def __repr__(self) -> str:
        lines = [f"Models ({len(self)}):"] + [f"  {model!r}" for model in self]
        return "\n".join(lines)
