"""The IRIS-HEP Analysis Grand Challenge ttbar analysis, differentiable and jit-compiled.

CMS 2015 open-data NanoAOD -> object and event selection -> observables -> histograms with the
AGC systematic variations (:mod:`.selection`, :mod:`.histograms`) -> the AGC statistical model
as a pyhf JSON workspace (:mod:`.model`) -> a fit on fitax's HistFactory engine. With soft cuts
every bin, the fit and the expected significance are differentiable in the cut thresholds.
"""

from .histograms import FIELDS, Histograms, fill_histograms, rebin_for_fit
from .inputs import CROSS_SECTIONS, LUMINOSITY, InvalidInputs, Sample, read_inputs
from .selection import BINNING, REGIONS, ROWS, Binning, Cuts, Softness, chunk_histograms

__all__ = [
    "BINNING",
    "Binning",
    "CROSS_SECTIONS",
    "Cuts",
    "FIELDS",
    "Histograms",
    "InvalidInputs",
    "LUMINOSITY",
    "REGIONS",
    "ROWS",
    "Sample",
    "Softness",
    "chunk_histograms",
    "fill_histograms",
    "read_inputs",
    "rebin_for_fit",
]
