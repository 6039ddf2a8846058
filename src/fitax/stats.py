"""Fit statistics: pure functions of arrays, summed over (optionally masked) bins.

All statistics are in ``-2 log L`` units (``errordef = 1``) unless their name says
log-likelihood. Poisson statistics are written in deviance form, so each bin contributes
``>= 0`` and a perfect model scores 0: the sum over millions of bins then keeps its precision,
and ``n = 0`` bins are exact (``n log n -> 0``) with finite gradients.

Predicted counts are floored at :data:`MU_FLOOR` inside the logarithm (as Gammapy does), so a
model that predicts zero counts where counts were seen gives a large, finite statistic that
pushes the fit away, rather than ``inf``/``NaN``.

Masked-out bins may hold anything (NaN pixels, zero errors, ``alpha = 0``): every input is
replaced by a harmless value there *before* any division, logarithm or square root, and the
terms are masked again after ("double where"). Masking only the terms keeps the value finite
but not the gradient: the backward pass multiplies the zero cotangent of an excluded bin by the
infinite derivative of its term, and ``0 * inf`` is NaN.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, ArrayLike, Bool, Float, Real

__all__ = ["cash", "cash_terms", "cash_sparse", "cash_data_term", "wstat", "wstat_terms", "wstat_mu_bkg", "chi2", "poisson_loglike", "gaussian_loglike", "MU_FLOOR"]

MU_FLOOR = 1e-25


def _included(mask: Bool[ArrayLike, "*#bins"] | None, *inputs: tuple[Real[ArrayLike, "*#bins"], float]) -> list[Float[Array, "*#bins"]]:
    """Each ``(array, fill)`` as a float array holding ``fill`` in the bins ``mask`` excludes.

    The fills are chosen per statistic so that its terms and their derivatives are finite
    there; the sum then drops those terms (:func:`_masked_sum`).
    """
    arrays = [jnp.asarray(x, dtype=float) for x, _ in inputs]
    if mask is None:
        return arrays
    mask = jnp.asarray(mask, dtype=bool)
    return [jnp.where(mask, x, fill) for x, (_, fill) in zip(arrays, inputs)]


def _masked_sum(terms: Float[Array, "*#bins"], mask: Bool[ArrayLike, "*#bins"] | None) -> Float[Array, ""]:
    if mask is None:
        return jnp.sum(terms)
    return jnp.sum(jnp.where(jnp.asarray(mask, dtype=bool), terms, 0.0))


def _n_log_n_over_mu(n: Float[Array, "*#bins"], mu: Float[Array, "*#bins"]) -> Float[Array, "*#bins"]:
    positive = n > 0
    safe_n = jnp.where(positive, n, 1.0)
    safe_mu = jnp.maximum(mu, MU_FLOOR)
    return jnp.where(positive, n * (jnp.log(safe_n) - jnp.log(safe_mu)), 0.0)


def cash_terms(n: Real[ArrayLike, "*#bins"], mu: Real[ArrayLike, "*#bins"]) -> Float[Array, "*#bins"]:
    """Per-bin Cash deviance ``2 (mu - n + n log(n / mu))``."""
    n = jnp.asarray(n, dtype=float)
    mu = jnp.asarray(mu, dtype=float)
    return 2.0 * (mu - n + _n_log_n_over_mu(n, mu))


def cash_data_term(
    n: Real[ArrayLike, "*#bins"], mask: Bool[ArrayLike, "*#bins"] | None = None, axis: int | tuple[int, ...] | None = None
) -> Float[np.ndarray, "..."] | float:
    """The data-only part of :func:`cash`, ``2 sum (n log n - n)`` over the (masked) bins,
    on the host: :func:`cash` is Gammapy's ``2 sum (mu - n log mu)`` plus this, and
    :func:`cash_sparse` is :func:`cash` minus it."""
    n = np.asarray(n, float)
    if mask is not None:
        n = np.where(mask, n, 0.0)  # an excluded NaN would warn in the logarithm
    positive = n > 0
    terms = np.where(positive, n * np.log(np.where(positive, n, 1.0)), 0.0) - n
    return 2 * np.sum(terms, axis=axis)


def cash_sparse(
    mu_sum: Real[ArrayLike, ""], mu_at_counts: Real[ArrayLike, " k"], counts: Real[ArrayLike, " k"]
) -> Float[Array, ""]:
    """Cash ``2 (sum mu - sum n log mu)`` from the total predicted counts ``mu_sum`` over
    the fitted bins and ``mu_at_counts``, the predictions in the ``k`` bins that have
    ``counts > 0`` (entries with ``counts = 0`` are padding and add nothing).

    Equals :func:`cash` minus its data-only constant ``2 sum (n log n - n)``. Bins without
    counts contribute through ``mu_sum`` only, so the logarithm is taken ``k`` times instead
    of once per bin: gamma-ray maps are mostly empty (99% of the bins of the simulated
    CTA-like datasets), and the per-bin logarithms were a quarter of an evaluation.
    """
    mu_at_counts = jnp.maximum(jnp.asarray(mu_at_counts, dtype=float), MU_FLOOR)
    return 2.0 * (jnp.asarray(mu_sum, dtype=float) - jnp.sum(jnp.asarray(counts, dtype=float) * jnp.log(mu_at_counts)))


def cash(
    n: Real[ArrayLike, "*#bins"], mu: Real[ArrayLike, "*#bins"], mask: Bool[ArrayLike, "*#bins"] | None = None
) -> Float[Array, ""]:
    """Cash statistic (Poisson deviance) ``2 sum(mu - n + n log(n / mu))``.

    Differs from Gammapy's ``2 sum(mu - n log mu)`` by a data-only constant, so fitted
    values, errors and TS are identical.

    Example:
        >>> import numpy as np, fitax
        >>> float(fitax.stats.cash(np.array([0, 3]), np.array([0.5, 3.0])))
        1.0
    """
    n, mu = _included(mask, (n, 0.0), (mu, 1.0))
    return _masked_sum(cash_terms(n, mu), mask)


def wstat_mu_bkg(
    n_on: Real[ArrayLike, "*#bins"], n_off: Real[ArrayLike, "*#bins"], alpha: Real[ArrayLike, "*#bins"], mu_sig: Real[ArrayLike, "*#bins"]
) -> Float[Array, "*#bins"]:
    """Background counts in the off region that maximise the on-off likelihood (per bin).

    The positive root of the profile equation of the Poisson on/off likelihood over an
    unknown background (Cash 1979; the XSPEC/Gammapy "WStat"). The one closed form also
    covers ``n_on = 0`` (``n_off / (1 + alpha)``) and ``n_off = 0``
    (``max(n_on / (1 + alpha) - mu_sig / alpha, 0)``). Needs ``alpha > 0``: give bins
    without off exposure to :func:`wstat` masked out.
    """
    n_on, n_off, alpha, mu_sig = (jnp.asarray(x, dtype=float) for x in (n_on, n_off, alpha, mu_sig))
    c = alpha * (n_on + n_off) - (1 + alpha) * mu_sig
    discriminant = c**2 + 4 * alpha * (alpha + 1) * n_off * mu_sig
    # sqrt'(0) is infinite: take the root only where the argument is positive (finite gradients).
    positive = discriminant > 0
    d = jnp.where(positive, jnp.sqrt(jnp.where(positive, discriminant, 1.0)), 0.0)
    return (c + d) / (2 * alpha * (alpha + 1))


def wstat_terms(
    n_on: Real[ArrayLike, "*#bins"], n_off: Real[ArrayLike, "*#bins"], alpha: Real[ArrayLike, "*#bins"], mu_sig: Real[ArrayLike, "*#bins"]
) -> Float[Array, "*#bins"]:
    """Per-bin WStat: Cash deviances of the on and off counts at the profiled background."""
    mu_bkg = wstat_mu_bkg(n_on, n_off, alpha, mu_sig)
    mu_on = jnp.asarray(mu_sig, dtype=float) + jnp.asarray(alpha, dtype=float) * mu_bkg
    return cash_terms(n_on, mu_on) + cash_terms(n_off, mu_bkg)


def wstat(
    n_on: Real[ArrayLike, "*#bins"],
    n_off: Real[ArrayLike, "*#bins"],
    alpha: Real[ArrayLike, "*#bins"],
    mu_sig: Real[ArrayLike, "*#bins"],
    mask: Bool[ArrayLike, "*#bins"] | None = None,
) -> Float[Array, ""]:
    """On-off statistic with the background profiled out per bin (``-2 log L`` deviance form).

    Args:
        n_on, n_off: counts in the on and off regions.
        alpha: on/off exposure ratio (background in on = ``alpha`` x background in off).
        mu_sig: predicted signal counts in the on region.
        mask: optional boolean mask of bins to include.
    """
    n_on, n_off, alpha, mu_sig = _included(mask, (n_on, 0.0), (n_off, 0.0), (alpha, 1.0), (mu_sig, 1.0))
    return _masked_sum(wstat_terms(n_on, n_off, alpha, mu_sig), mask)


def chi2(
    data: Real[ArrayLike, "*#bins"],
    model: Real[ArrayLike, "*#bins"],
    error: Real[ArrayLike, "*#bins"],
    mask: Bool[ArrayLike, "*#bins"] | None = None,
) -> Float[Array, ""]:
    """``sum(((data - model) / error)**2)``."""
    data, model, error = _included(mask, (data, 0.0), (model, 0.0), (error, 1.0))
    return _masked_sum(((data - model) / error) ** 2, mask)


def poisson_loglike(
    n: Real[ArrayLike, "*#bins"], mu: Real[ArrayLike, "*#bins"], mask: Bool[ArrayLike, "*#bins"] | None = None
) -> Float[Array, ""]:
    """Poisson log-likelihood ``sum(n log mu - mu - log n!)`` (``errordef = 0.5`` for its negative)."""
    n, mu = _included(mask, (n, 0.0), (mu, 1.0))
    return _masked_sum(xlogy(n, jnp.maximum(mu, MU_FLOOR)) - mu - gammaln(n + 1), mask)


def gaussian_loglike(
    data: Real[ArrayLike, "*#bins"],
    model: Real[ArrayLike, "*#bins"],
    sigma: Real[ArrayLike, "*#bins"],
    mask: Bool[ArrayLike, "*#bins"] | None = None,
) -> Float[Array, ""]:
    """Gaussian log-likelihood ``sum(-0.5 ((data - model)/sigma)**2 - log(sigma sqrt(2 pi)))``."""
    data, model, sigma = _included(mask, (data, 0.0), (model, 0.0), (sigma, 1.0))
    terms = -0.5 * ((data - model) / sigma) ** 2 - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi)
    return _masked_sum(terms, mask)
