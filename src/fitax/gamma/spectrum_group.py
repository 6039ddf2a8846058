"""Spectra stacked for the likelihood: the :class:`SpectrumGroup` pytree of spectra of equal
binning and kind, its predicted signal and its statistic (WStat for on-off spectra, Cash
with the background spectrum otherwise), in Gammapy's convention."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..device import to_device
from ..stats import cash, cash_data_term, wstat
from .models import Models, SkyModel
from .temporal import temporal_intervals

__all__ = ["SpectrumGroup", "bind_spectra"]


class SpectrumGroup(eqx.Module):
    """Spectra of identical binning and kind, stacked along a leading axis: on-off
    (``counts_off``, ``alpha``; WStat) or with a background spectrum (Cash)."""

    counts: Float[Array, "n e"]
    counts_off: Float[Array, "n e"] | None
    alpha: Float[Array, "n e"] | None
    background: Float[Array, "n e"] | None
    exposure: Float[Array, "n et"]
    edisp: Float[Array, "n et e"]
    mask: Bool[Array, "n e"]
    energy_true_edges: Float[Array, " et1"]
    energy_centres: Float[Array, " e"]
    applies: Float[Array, "s n"]  # 1 where a source applies to a dataset
    intervals: tuple[Float[Array, "n k 2"] | None, ...]  # per source: good time intervals its temporal model is averaged over
    data_constant: Float[Array, ""]  # Gammapy's -2 log L minus fitax's deviance (data: a leaf, not a jit key)
    names: tuple[str, ...] = eqx.field(static=True)
    source_names: tuple[str, ...] = eqx.field(static=True)

    def npred(self, models: Models) -> Float[Array, "n e"]:
        """Predicted signal counts (``npred_signal``)."""
        edges = self.energy_true_edges
        total = jnp.zeros_like(self.counts)
        for name, applies, intervals in zip(self.source_names, self.applies, self.intervals):
            source = models[name]
            flux = source.spectral.integral(edges[:-1], edges[1:])[None] * jnp.ones((len(self.names), 1))
            if intervals is not None:
                flux = flux * jax.vmap(source.temporal.mean)(intervals)[:, None]
            total = total + applies[:, None] * jnp.einsum("nt,nte->ne", self.exposure * flux, self.edisp)
        return total

    def stat(self, models: Models) -> Float[Array, ""]:
        # The statistics sanitise masked bins before their logarithms (alpha = 0 or no
        # prediction there must not make the gradient NaN).
        signal = self.npred(models)
        if self.counts_off is not None:
            return wstat(self.counts, self.counts_off, self.alpha, signal, self.mask)
        return cash(self.counts, signal + self.background * models.background_scales(self.names, self.energy_centres), self.mask)

    def stat_terms(self) -> list:
        """One :class:`fitax.ItemSum` term for the whole group: stacked spectra are cheap."""
        return [(self._stat_term, None)]

    def _stat_term(self, models: Models, _) -> Float[Array, ""]:
        return self.stat(models)


def bind_spectra(members: list, sources: list[SkyModel], on_off: bool) -> SpectrumGroup:
    """Stack spectra of equal binning: on-off ones (``on_off``: ``counts_off``, ``alpha``)
    or ones with a background spectrum."""
    stack = lambda name: to_device(np.stack([getattr(d, name) for d in members]))  # noqa: E731
    # fitax's WStat deviance form is Gammapy's; its Cash adds the data term
    constant = 0.0 if on_off else -float(cash_data_term(np.stack([d.counts for d in members]), np.stack([d.mask for d in members])))
    first = members[0]
    return SpectrumGroup(
        counts=stack("counts"), counts_off=stack("counts_off") if on_off else None, alpha=stack("alpha") if on_off else None,
        background=None if on_off else stack("background"), exposure=stack("exposure"), edisp=stack("edisp"), mask=stack("mask"),
        energy_true_edges=to_device(first.energy_true_edges),
        energy_centres=to_device(np.sqrt(first.energy_edges[1:] * first.energy_edges[:-1])),
        names=tuple(d.name for d in members), source_names=tuple(s.name for s in sources),
        applies=to_device(np.reshape([[float(s.applies_to(d.name)) for d in members] for s in sources], (len(sources), len(members)))),
        intervals=tuple(None if (t := temporal_intervals(s, [d.gti for d in members], [d.name for d in members])) is None else to_device(t)
                        for s in sources),
        data_constant=to_device(constant),
    )
