"""``-2 log L`` of a HistFactory model with its gradient and Hessian written out by hand.

Every expected yield is ``nu = A * E * F`` in each sample bin: ``A`` the nominal plus histosys
shifts, ``E = exp(sum of normsys log-factors)``, ``F`` the product of the free factors
(normfactor, lumi, shapefactor, shapesys, staterror). Each entry of these depends on one
parameter, so the second derivatives of ``nu`` are a few outer products of sparse vectors,
which become three matrix products over the sample bins. Autodiff's forward-over-reverse
Hessian instead carries one tangent per parameter through every entry (60 x 5000 entries on
the sbottom workspace).

:func:`nll` is the same function as ``-2 * model.logpdf`` (same formulas, same clamp of rates
at ``RATE_FLOOR``) with custom JVP rules: its tangent in the parameters is ``gradient . dp``
and the gradient's is ``Hessian @ dp``, both from :func:`value_gradient_hessian`; tangents in
the data or the model's arrays (derivatives with respect to yields and modifier data) go
through plain autodiff of ``-2 * model.logpdf``. So first and second derivatives cost one
evaluation of the formulas, and every derivative of every order stays exact (third
derivatives differentiate the hand-written Hessian).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, zero_from_primal
from jaxtyping import Array

from . import interpolation

__all__ = ["nll", "value_gradient_hessian"]


def _with_derivatives(fun, alpha):
    """``fun(alpha)``, ``fun'(alpha)`` and ``fun''(alpha)`` elementwise (fun is elementwise)."""
    ones = jnp.ones_like(alpha)

    def first(a):
        return jax.jvp(fun, (a,), (ones,))

    (value, slope), (_, curvature) = jax.jvp(first, (alpha,), (ones,))
    return value, slope, curvature


def _scatter_columns(n_rows: int, index: Array, values: Array) -> Array:
    """Dense (cells, n_rows) matrix with ``values[k, cell]`` added at ``[cell, index[k, cell]]``."""
    cells = jnp.broadcast_to(jnp.arange(index.shape[-1]), index.shape)
    return jnp.zeros((index.shape[-1], n_rows), values.dtype).at[cells, index].add(values)


def value_gradient_hessian(model, p: Array, data: Array, floor: float) -> tuple[Array, Array, Array]:
    """``-2 log L``, its gradient and its Hessian in the flat parameters ``p``.

    ``model`` is a :class:`fitax.hep.Model` (not imported here: the model imports this module).
    """
    n_par = p.shape[0]
    n_main = model.n_main_bins
    main, aux = data[:n_main], data[n_main:]
    p_ext = jnp.concatenate([p, jnp.ones(1, p.dtype)])
    n_samples, n_bins = model.nominal.shape
    n_cells = n_samples * n_bins

    def flat(x):  # (..., S, B) -> (..., cells)
        return x.reshape(x.shape[:-2] + (n_cells,))

    # histosys: A = nominal + sum of shifts
    h_index = flat(model.histosys_index)
    shift, shift_1, shift_2 = _with_derivatives(
        lambda a: interpolation.additive(model.histosys_code, a, model.histosys_lo, model.histosys_nom, model.histosys_hi),
        p_ext[model.histosys_index],
    )
    A = flat(model.nominal + jnp.sum(shift, axis=0))
    # normsys: E = exp(sum of log-factors)
    n_index = flat(model.normsys_index)
    log_factor, log_1, log_2 = _with_derivatives(
        lambda a: interpolation.log_multiplicative(
            model.normsys_code, a, model.normsys_log_lo, model.normsys_log_hi, model.normsys_coefficients
        ),
        p_ext[model.normsys_index],
    )
    E = flat(jnp.exp(jnp.sum(log_factor, axis=0)))
    # free factors: F, products without one (F_f) and without two of them (F_fg), no divisions
    f_index = flat(model.factor_index)
    q = p_ext[f_index]  # (K, cells)
    k_factors = q.shape[0]
    ones = jnp.ones((n_cells,), p.dtype)

    def product(skip):
        out = ones
        for k in range(k_factors):
            if k not in skip:
                out = out * q[k]
        return out

    F = product(())
    F_without = jnp.stack([product((f,)) for f in range(k_factors)]) if k_factors else jnp.zeros((0, n_cells))

    nu = A * E * F
    bin_of_cell = jnp.tile(jnp.arange(n_bins), n_samples)
    raw_rate = jax.ops.segment_sum(nu, bin_of_cell, num_segments=n_bins)
    active = raw_rate > floor
    rate = jnp.where(active, raw_rate, floor)

    # d nu / d p as dense (cells, P + 1) matrices, one per kind of entry
    D_hist = _scatter_columns(n_par + 1, h_index, flat(shift_1))
    D_norm = _scatter_columns(n_par + 1, n_index, flat(log_1))
    D_fact = _scatter_columns(n_par + 1, f_index, F_without)
    EF = E * F
    gradient_nu = D_hist * EF[:, None] + D_norm * nu[:, None] + D_fact * (A * E)[:, None]
    jacobian = jax.ops.segment_sum(gradient_nu, bin_of_cell, num_segments=n_bins)  # (B, P + 1)

    # main term: -2 sum(n log(rate) - rate)
    weight = jnp.where(active, main / rate - 1.0, 0.0)  # d log L / d rate
    curvature = jnp.where(active, main / rate**2, 0.0)  # -d2 log L / d rate2
    value = -2.0 * jnp.sum(jax.scipy.special.xlogy(main, rate) - rate - jax.scipy.special.gammaln(main + 1.0))
    gradient = -2.0 * (jacobian.T @ weight)
    w_cell = weight[bin_of_cell]
    # sum over cells of w * (second derivatives of nu), as outer products. normsys and free
    # factors are sparse (sbottom: 126 and 114 entries of 54 x 65), so each product with
    # them runs over their entries (model.normsys_entries, model.factor_entries) instead of
    # a dense (P + 1) x cells x (P + 1) product: the whole evaluation costs 0.6 instead of 2.4
    # Mflop (XLA's cost analysis). Only the sum's symmetric part matters, so the first two
    # products need no transpose.
    n_slot, n_cell = model.normsys_entries
    f_slot, f_cell = model.factor_entries
    n_param, n_value = n_index[n_slot, n_cell], flat(log_1)[n_slot, n_cell]
    f_param, f_value = f_index[f_slot, f_cell], F_without[f_slot, f_cell]

    def by_normsys(rows, scale):  # (D_norm * scale).T @ rows
        return jax.ops.segment_sum(rows[n_cell] * (n_value * scale[n_cell])[:, None], n_param, num_segments=n_par + 1)

    def by_factors(rows, scale):  # (D_fact * scale).T @ rows
        return jax.ops.segment_sum(rows[f_cell] * (f_value * scale[f_cell])[:, None], f_param, num_segments=n_par + 1)

    second = by_normsys(D_hist, w_cell * EF) + by_factors(D_hist, w_cell * E) + by_normsys(D_fact, w_cell * A * E)
    second = second + second.T + by_normsys(D_norm, w_cell * nu)
    diagonal = jnp.zeros(n_par + 1, p.dtype)
    diagonal = diagonal.at[h_index].add(flat(shift_2) * (w_cell * EF))
    diagonal = diagonal.at[n_index].add(flat(log_2) * (w_cell * nu))
    second = second + jnp.diag(diagonal)
    if k_factors > 1:
        for f in range(k_factors):
            for g in range(k_factors):
                if f != g:
                    pair = product((f, g)) * w_cell * A * E
                    second = second.at[f_index[f], f_index[g]].add(pair)
    hessian = -2.0 * (second - jacobian.T @ (jacobian * curvature[:, None]))

    # constraints
    gauss_pull = aux[model.gauss_aux_pos] - p[model.gauss_index]
    inverse_variance = 1.0 / model.gauss_sigma**2
    value = value - 2.0 * jnp.sum(-0.5 * gauss_pull**2 * inverse_variance - jnp.log(model.gauss_sigma) - 0.5 * jnp.log(2 * jnp.pi))
    gradient = gradient.at[model.gauss_index].add(-2.0 * gauss_pull * inverse_variance)
    hessian = hessian.at[model.gauss_index, model.gauss_index].add(2.0 * inverse_variance)
    n_aux = aux[model.poisson_aux_pos]
    gamma = p[model.poisson_index]
    raw_aux_rate = gamma * model.poisson_factor
    aux_active = raw_aux_rate > floor
    aux_rate = jnp.where(aux_active, raw_aux_rate, floor)
    value = value - 2.0 * jnp.sum(jax.scipy.special.xlogy(n_aux, aux_rate) - aux_rate - jax.scipy.special.gammaln(n_aux + 1.0))
    safe_gamma = jnp.where(aux_active, gamma, 1.0)
    gradient = gradient.at[model.poisson_index].add(jnp.where(aux_active, -2.0 * (n_aux / safe_gamma - model.poisson_factor), 0.0))
    hessian = hessian.at[model.poisson_index, model.poisson_index].add(jnp.where(aux_active, 2.0 * n_aux / safe_gamma**2, 0.0))
    return value, gradient[:n_par], hessian[:n_par, :n_par]


def _rest_tangent(rest, rest_dot):
    """Tangents of the non-parameter inputs, or None when they are all symbolic zeros."""
    leaves = jax.tree_util.tree_leaves(rest_dot, is_leaf=lambda t: isinstance(t, SymbolicZero))
    if all(isinstance(t, SymbolicZero) for t in leaves):
        return None
    return jax.tree_util.tree_map(
        lambda t, x: zero_from_primal(x) if isinstance(t, SymbolicZero) else t,
        rest_dot,
        rest,
        is_leaf=lambda t: isinstance(t, SymbolicZero),
    )


def _plain_nll(p, rest):
    model, data = rest
    return -2.0 * model.logpdf(p, data)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _gradient(p, rest, floor):
    return value_gradient_hessian(rest[0], p, rest[1], floor)[1]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _nll(p, rest, floor):
    return value_gradient_hessian(rest[0], p, rest[1], floor)[0]


def _nll_jvp(floor, primals, tangents):
    p, rest = primals
    p_dot, rest_dot = tangents
    value = _nll(p, rest, floor)
    tangent = jnp.zeros_like(value)
    if not isinstance(p_dot, SymbolicZero):
        tangent = tangent + _gradient(p, rest, floor) @ p_dot
    rest_dot = _rest_tangent(rest, rest_dot)
    if rest_dot is not None:
        tangent = tangent + jax.jvp(lambda r: _plain_nll(p, r), (rest,), (rest_dot,))[1]
    return value, tangent


def _gradient_jvp(floor, primals, tangents):
    p, rest = primals
    p_dot, rest_dot = tangents
    gradient, p_tangent = None, None
    if not isinstance(p_dot, SymbolicZero):
        _, gradient, hessian = value_gradient_hessian(rest[0], p, rest[1], floor)
        p_tangent = hessian @ p_dot
    else:
        gradient = _gradient(p, rest, floor)
    tangent = jnp.zeros_like(gradient) if p_tangent is None else p_tangent
    rest_dot = _rest_tangent(rest, rest_dot)
    if rest_dot is not None:
        tangent = tangent + jax.jvp(lambda r: jax.grad(_plain_nll)(p, r), (rest,), (rest_dot,))[1]
    return gradient, tangent


_nll.defjvp(_nll_jvp, symbolic_zeros=True)
_gradient.defjvp(_gradient_jvp, symbolic_zeros=True)


def nll(model, p: Array, data: Array, floor: float) -> Array:
    """``-2 * model.logpdf(p, data)`` with hand-written first and second derivatives in ``p``."""
    return _nll(p, (model, data), floor)
