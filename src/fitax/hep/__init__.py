"""HistFactory likelihoods (pyhf JSON workspaces) on the fitax core.

:class:`Workspace` reads, validates, patches and writes pyhf JSON workspaces;
:meth:`Workspace.model` builds a :class:`Model` whose ``logpdf`` and ``expected_data`` equal
pyhf's (0.7.6) as pure, float64 JAX functions of fitax Parameters named as pyhf names them.
"""

from .model import DEFAULT_MODIFIER_SETTINGS, RATE_FLOOR, Model
from .modifiers import MODIFIER_TYPES, ParameterLayout, ParameterSet
from .workspace import InvalidWorkspace, Patch, Workspace, patchset_labels, read_patchset, validate

__all__ = [
    "DEFAULT_MODIFIER_SETTINGS",
    "InvalidWorkspace",
    "MODIFIER_TYPES",
    "Model",
    "ParameterLayout",
    "ParameterSet",
    "Patch",
    "RATE_FLOOR",
    "Workspace",
    "patchset_labels",
    "read_patchset",
    "validate",
]
