"""fitax: fast, differentiable likelihood analysis of physics data, built on JAX.

Importing fitax switches JAX to float64. Likelihood fits need it: a Cash statistic summed
over ~1e7 counts loses its last significant digits in float32, so the optimiser sees noise
instead of curvature near the minimum and stops (or reports errors) silently wrong.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from . import integrate, stats  # noqa: E402
from .batch import BatchFitResult, fit_batch  # noqa: E402
from .fit import FitResult, fit  # noqa: E402
from .profile import ConfidenceInterval, ProfileResult, TSResult, confidence_interval, profile, ts  # noqa: E402
from .parameters import (  # noqa: E402
    GaussianPrior,
    Parameter,
    ParameterSpace,
    Prior,
    UniformPrior,
    free_parameter_names,
    freeze,
    parameter_names,
    parameters_dict,
    set_values,
    thaw,
    tie,
    value_of,
)

__version__ = "0.1.0"
