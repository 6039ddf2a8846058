"""Gamma-ray astronomy on the fitax core, in Gammapy's vocabulary.

Datasets (:class:`MapDataset`, :class:`Datasets`) read from Gammapy's files; sky models
(spectral x spatial, :class:`SkyModel`) and background models in a :class:`Models`
collection; npred and Cash ``stat_sum`` as Gammapy computes them, as pure JAX functions.
"""

from .datasets import Datasets, read_datasets
from .mapdataset import MapDataset
from .mapdataset_onoff import MapDatasetOnOff
from .fit import fit, sample, ts
from .modelio import read_models, write_models, write_results
from .geometry import SkyGrid, integrate_spatial
from .models import FoVBackgroundModel, Models, SkyModel
from .spectrum import SpectrumDataset, SpectrumDatasetOnOff
from .template import TemplateSpatialModel
from .psf_kernel_map import PSFKernelMap
from .io import read_psf_kernel_map, write_psf_kernel_map
from .spatial import ConstantSpatialModel, DiskSpatialModel, GaussianSpatialModel, PointSpatialModel, ShellSpatialModel
from .spectral import (
    BrokenPowerLawSpectralModel,
    ConstantSpectralModel,
    ExpCutoffPowerLawSpectralModel,
    LogParabolaSpectralModel,
    PowerLaw2SpectralModel,
    PowerLawNormSpectralModel,
    PowerLawSpectralModel,
    SmoothBrokenPowerLawSpectralModel,
)

__all__ = [
    "BrokenPowerLawSpectralModel", "ConstantSpectralModel", "ExpCutoffPowerLawSpectralModel", "LogParabolaSpectralModel",
    "PowerLaw2SpectralModel", "PowerLawSpectralModel", "PowerLawNormSpectralModel", "TemplateSpatialModel", "SmoothBrokenPowerLawSpectralModel",
    "Datasets", "MapDataset", "MapDatasetOnOff", "SpectrumDataset", "SpectrumDatasetOnOff", "fit", "ts", "sample", "read_datasets", "read_models", "write_models", "write_results", "FoVBackgroundModel", "Models", "SkyModel", "PointSpatialModel",
    "ConstantSpatialModel", "DiskSpatialModel", "GaussianSpatialModel", "ShellSpatialModel", "SkyGrid", "integrate_spatial",
    "PSFKernelMap", "read_psf_kernel_map", "write_psf_kernel_map",
]
