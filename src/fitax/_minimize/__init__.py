"""Minimisation kernels on flat vectors: pure, jit-able functions of ``fun(v, args) -> scalar``.

Three solvers, chosen in :func:`fitax.fit` and :func:`fitax.fit_batch`:

* :func:`newton` (:mod:`.damped_newton`) — a damped Newton / trust-region method with exact
  (autodiff) Hessians: quadratic convergence, robust on the curved, badly scaled valleys of
  Poisson likelihoods. One exact Hessian costs about ``n`` gradients (fewer with a
  :class:`HessianPlan`, :mod:`.hessian`), so large problems refresh it only every few steps and
  use BFGS updates in between.
* :func:`projected_newton` (:mod:`.projected_newton`) — Newton in physical coordinates with
  the bounds as a box and an active set, for many small fits started near their minimum whose
  optimum may lie on a bound (:func:`fitax.fit_batch` with ``method="projected"``).
* :func:`quasi_newton` (:mod:`.bfgs`) — optimistix's BFGS, one gradient per iteration, to
  bring a problem near its minimum before :func:`newton` finishes.

Convergence is only declared by :func:`newton` and :func:`projected_newton`, when the EDM (``0.5 g^T H^-1 g``, the expected
decrease still to come, in the objective's own units and independent of how the parameters are
scaled) is small at an exact, positive-definite Hessian. Why a solve stopped is a
:class:`RESULTS` member.
"""

from .bfgs import quasi_newton
from .hessian import (
    HessianColoring,
    HessianPlan,
    bfgs_update,
    edm_and_definiteness,
    hessian_coloring,
    hessian_plan,
    internal_derivatives,
    value_grad_hessian,
)
from .damped_newton import DampedNewton, MinimiseResult, NewtonState, Problem, iterate, newton
from .projected_newton import ProjectedNewton, ProjectedState, free_block, free_parameters, projected_newton
from .results import RESULTS

__all__ = [
    "RESULTS",
    "DampedNewton",
    "HessianColoring",
    "HessianPlan",
    "MinimiseResult",
    "NewtonState",
    "Problem",
    "ProjectedNewton",
    "ProjectedState",
    "bfgs_update",
    "edm_and_definiteness",
    "free_block",
    "free_parameters",
    "hessian_coloring",
    "hessian_plan",
    "internal_derivatives",
    "iterate",
    "newton",
    "projected_newton",
    "quasi_newton",
    "value_grad_hessian",
]
