"""Spectral models with Gammapy's names, parameter names and units.

Energies are in TeV and differential fluxes in ``cm-2 s-1 TeV-1`` (integral fluxes in
``cm-2 s-1``): fixed units inside the models keep them pure functions of arrays; conversion
from other units happens at the I/O edge. Every model is an ``eqx.Module`` of
:class:`fitax.Parameter` s, so it is a pytree that ``fitax.fit`` can fit, and has

* ``model(energy)``: the differential flux;
* ``model.integral(energy_min, energy_max)``: the flux in energy bins, analytic where it is
  exact (power laws, broken power law, constant) and otherwise Gauss–Legendre quadrature in
  ``ln E`` (8 nodes per bin: relative error < 1e-7 on curved spectra over a decade-wide
  bin, checked against scipy ``quad``). Gammapy integrates such models with a log-log
  trapezoid of 100 points per decade, which is off by up to ~1e-3 on 0.2-decade bins of a
  curved spectrum (``tests/test_gamma_spectral.py``).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ..integrate import gauss_legendre
from ..parameters import Parameter
from ._common import parameter

__all__ = [
    "PowerLawSpectralModel", "PowerLaw2SpectralModel", "LogParabolaSpectralModel", "ExpCutoffPowerLawSpectralModel",
    "BrokenPowerLawSpectralModel", "SmoothBrokenPowerLawSpectralModel", "ConstantSpectralModel", "PowerLawNormSpectralModel",
    "ScaleSpectralModel",
]

FLUX_UNIT = "cm-2 s-1 TeV-1"


def _power_law_integral(amplitude, index, reference, energy_min, energy_max):
    """``int_{E1}^{E2} A (E / E0)^-index dE``, with its ``index = 1`` limit ``A E0 ln(E2/E1)``."""
    one_minus = 1.0 - index
    near_one = jnp.abs(one_minus) < 1e-10
    safe = jnp.where(near_one, 1.0, one_minus)
    power = ((energy_max / reference) ** safe - (energy_min / reference) ** safe) / safe
    return amplitude * reference * jnp.where(near_one, jnp.log(energy_max / energy_min), power)


class _SpectralModel(eqx.Module):
    def __call__(self, energy: Float[ArrayLike, "*e"]) -> Float[Array, "*e"]:
        raise NotImplementedError

    def integral(self, energy_min: Float[ArrayLike, "*e"], energy_max: Float[ArrayLike, "*e"], order: int = 8) -> Float[Array, "*e"]:
        """Flux between ``energy_min`` and ``energy_max`` [TeV] in ``cm-2 s-1``."""
        log_min, log_max = jnp.log(jnp.asarray(energy_min, float)), jnp.log(jnp.asarray(energy_max, float))
        return gauss_legendre(lambda log_e: self(jnp.exp(log_e)) * jnp.exp(log_e), log_min, log_max, order)


class PowerLawSpectralModel(_SpectralModel):
    """``amplitude (E / reference)^-index``.

    Example:
        >>> from fitax.gamma import PowerLawSpectralModel
        >>> pwl = PowerLawSpectralModel(index=2.0, amplitude=1e-12)
        >>> float(pwl(1.0)), round(float(pwl.integral(1.0, 10.0)) / 9e-13, 12)
        (1e-12, 1.0)
    """

    index: Parameter
    amplitude: Parameter
    reference: Parameter

    def __init__(self, index=2.0, amplitude=1e-12, reference=1.0):
        self.index = parameter(index, "")
        self.amplitude = parameter(amplitude, FLUX_UNIT)
        self.reference = parameter(reference, "TeV", frozen=True)

    def __call__(self, energy):
        return self.amplitude.value * (jnp.asarray(energy, float) / self.reference.value) ** -self.index.value

    def integral(self, energy_min, energy_max, order: int = 8):
        return _power_law_integral(self.amplitude.value, self.index.value, self.reference.value,
                                   jnp.asarray(energy_min, float), jnp.asarray(energy_max, float))


class PowerLaw2SpectralModel(_SpectralModel):
    """Power law normalised by its integral flux ``amplitude`` [cm-2 s-1] between
    ``emin`` and ``emax``."""

    amplitude: Parameter
    index: Parameter
    emin: Parameter
    emax: Parameter

    def __init__(self, amplitude=1e-12, index=2.0, emin=0.1, emax=100.0):
        self.amplitude = parameter(amplitude, "cm-2 s-1")
        self.index = parameter(index, "")
        self.emin = parameter(emin, "TeV", frozen=True)
        self.emax = parameter(emax, "TeV", frozen=True)

    def _norm(self):
        return self.amplitude.value / _power_law_integral(1.0, self.index.value, 1.0, self.emin.value, self.emax.value)

    def __call__(self, energy):
        return self._norm() * jnp.asarray(energy, float) ** -self.index.value

    def integral(self, energy_min, energy_max, order: int = 8):
        return _power_law_integral(self._norm(), self.index.value, 1.0, jnp.asarray(energy_min, float), jnp.asarray(energy_max, float))


class LogParabolaSpectralModel(_SpectralModel):
    """``amplitude (E / reference)^(-alpha - beta ln(E / reference))`` (natural log, as in
    Gammapy)."""

    amplitude: Parameter
    reference: Parameter
    alpha: Parameter
    beta: Parameter

    def __init__(self, amplitude=1e-12, reference=10.0, alpha=2.0, beta=1.0):
        self.amplitude = parameter(amplitude, FLUX_UNIT)
        self.reference = parameter(reference, "TeV", frozen=True)
        self.alpha = parameter(alpha, "")
        self.beta = parameter(beta, "")

    def __call__(self, energy):
        x = jnp.asarray(energy, float) / self.reference.value
        return self.amplitude.value * x ** (-self.alpha.value - self.beta.value * jnp.log(x))


class ExpCutoffPowerLawSpectralModel(_SpectralModel):
    """``amplitude (E / reference)^-index exp(-(lambda_ E)^alpha)``."""

    index: Parameter
    amplitude: Parameter
    reference: Parameter
    lambda_: Parameter
    alpha: Parameter

    def __init__(self, index=1.5, amplitude=1e-12, reference=1.0, lambda_=0.1, alpha=1.0):
        self.index = parameter(index, "")
        self.amplitude = parameter(amplitude, FLUX_UNIT)
        self.reference = parameter(reference, "TeV", frozen=True)
        self.lambda_ = parameter(lambda_, "TeV-1")
        self.alpha = parameter(alpha, "", frozen=True)

    def __call__(self, energy):
        energy = jnp.asarray(energy, float)
        power = self.amplitude.value * (energy / self.reference.value) ** -self.index.value
        return power * jnp.exp(-((self.lambda_.value * energy) ** self.alpha.value))


class BrokenPowerLawSpectralModel(_SpectralModel):
    """``amplitude (E / ebreak)^-index1`` below ``ebreak``, ``^-index2`` above (its integral
    is split at the break, so it is exact)."""

    index1: Parameter
    index2: Parameter
    amplitude: Parameter
    ebreak: Parameter

    def __init__(self, index1=2.0, index2=2.0, amplitude=1e-12, ebreak=1.0):
        self.index1 = parameter(index1, "")
        self.index2 = parameter(index2, "")
        self.amplitude = parameter(amplitude, FLUX_UNIT)
        self.ebreak = parameter(ebreak, "TeV")

    def __call__(self, energy):
        x = jnp.asarray(energy, float) / self.ebreak.value
        return self.amplitude.value * jnp.where(x < 1, x ** -self.index1.value, x ** -self.index2.value)

    def integral(self, energy_min, energy_max, order: int = 8):
        e1, e2, eb = jnp.asarray(energy_min, float), jnp.asarray(energy_max, float), self.ebreak.value
        amplitude = self.amplitude.value
        below = _power_law_integral(amplitude, self.index1.value, eb, jnp.minimum(e1, eb), jnp.minimum(e2, eb))
        above = _power_law_integral(amplitude, self.index2.value, eb, jnp.maximum(e1, eb), jnp.maximum(e2, eb))
        return below + above


class SmoothBrokenPowerLawSpectralModel(_SpectralModel):
    """``amplitude (E / reference)^-index1 [1 + (E / ebreak)^((index2 - index1) / beta)]^-beta``."""

    index1: Parameter
    index2: Parameter
    amplitude: Parameter
    ebreak: Parameter
    reference: Parameter
    beta: Parameter

    def __init__(self, index1=2.0, index2=2.0, amplitude=1e-12, ebreak=1.0, reference=1.0, beta=1.0):
        self.index1 = parameter(index1, "")
        self.index2 = parameter(index2, "")
        self.amplitude = parameter(amplitude, FLUX_UNIT)
        self.ebreak = parameter(ebreak, "TeV")
        self.reference = parameter(reference, "TeV", frozen=True)
        self.beta = parameter(beta, "", frozen=True)

    def __call__(self, energy):
        energy = jnp.asarray(energy, float)
        power = self.amplitude.value * (energy / self.reference.value) ** -self.index1.value
        exponent = (self.index2.value - self.index1.value) / self.beta.value
        return power * (1 + (energy / self.ebreak.value) ** exponent) ** -self.beta.value


class PowerLawNormSpectralModel(_SpectralModel):
    """``norm (E / reference)^-tilt``, dimensionless: it scales a spectrum carried by
    something else, e.g. an energy-dependent template (then the template times the
    integral of this model over each true-energy bin is the flux, as in Gammapy)."""

    norm: Parameter
    tilt: Parameter
    reference: Parameter

    def __init__(self, norm=1.0, tilt=0.0, reference=1.0):
        self.norm = parameter(norm, "")
        self.tilt = parameter(tilt, "", frozen=True)
        self.reference = parameter(reference, "TeV", frozen=True)

    def __call__(self, energy):
        return self.norm.value * (jnp.asarray(energy, float) / self.reference.value) ** -self.tilt.value

    def integral(self, energy_min, energy_max, order: int = 8):
        return _power_law_integral(self.norm.value, self.tilt.value, self.reference.value,
                                   jnp.asarray(energy_min, float), jnp.asarray(energy_max, float))


class ScaleSpectralModel(_SpectralModel):
    """``norm x model``: a spectrum scaled by one dimensionless parameter (Gammapy's
    ``ScaleSpectralModel``), the norm flux points fit in each energy bin.

    Example:
        >>> scaled = ScaleSpectralModel(PowerLawSpectralModel(index=2.0, amplitude=1e-12), norm=2.0)
        >>> float(scaled(1.0))
        2e-12
    """

    norm: Parameter
    model: eqx.Module

    def __init__(self, model, norm=1.0):
        self.norm = parameter(norm, "")
        self.model = model

    def __call__(self, energy):
        return self.norm.value * self.model(energy)

    def integral(self, energy_min, energy_max, order: int = 8):
        return self.norm.value * self.model.integral(energy_min, energy_max, order)


class ConstantSpectralModel(_SpectralModel):
    """``const``, the same differential flux at every energy."""

    const: Parameter

    def __init__(self, const=1e-12):
        self.const = parameter(const, FLUX_UNIT)

    def __call__(self, energy):
        return jnp.full(jnp.shape(energy), 1.0) * self.const.value

    def integral(self, energy_min, energy_max, order: int = 8):
        return self.const.value * (jnp.asarray(energy_max, float) - jnp.asarray(energy_min, float))

