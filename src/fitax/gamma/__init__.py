"""Gamma-ray astronomy on the fitax core, in Gammapy's vocabulary (work in progress: spectral
models so far)."""

from .spectral import (
    BrokenPowerLawSpectralModel,
    ConstantSpectralModel,
    ExpCutoffPowerLawSpectralModel,
    LogParabolaSpectralModel,
    PowerLaw2SpectralModel,
    PowerLawSpectralModel,
    SmoothBrokenPowerLawSpectralModel,
)

__all__ = [
    "BrokenPowerLawSpectralModel", "ConstantSpectralModel", "ExpCutoffPowerLawSpectralModel", "LogParabolaSpectralModel",
    "PowerLaw2SpectralModel", "PowerLawSpectralModel", "SmoothBrokenPowerLawSpectralModel",
]
