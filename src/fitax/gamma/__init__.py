"""Gamma-ray astronomy on the fitax core, in Gammapy's vocabulary.

Work in progress: spectral and spatial models and their pixel integration (checked against
Gammapy 2.1) so far; sky
models, datasets, npred, I/O and the ``fitax gamma`` command are still to come.
"""

from .geometry import SkyGrid, integrate_spatial
from .spatial import ConstantSpatialModel, DiskSpatialModel, GaussianSpatialModel, ShellSpatialModel
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
    "ConstantSpatialModel", "DiskSpatialModel", "GaussianSpatialModel", "ShellSpatialModel", "SkyGrid", "integrate_spatial",
]
