"""Fit statistics: pure functions of arrays, summed over (optionally masked) bins.

All statistics are in ``-2 log L`` units (``errordef = 1``) unless their name says
log-likelihood. Poisson statistics are written in deviance form, so each bin contributes
``>= 0`` and a perfect model scores 0: the sum over millions of bins then keeps its precision,
and ``n = 0`` bins are exact (``n log n -> 0``) with finite gradients.

Predicted counts are floored at :data:`MU_FLOOR` inside the logarithm (as Gammapy does), so a
model that predicts zero counts where counts were seen gives a large, finite statistic that
pushes the fit away, rather than ``inf``/``NaN``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

__all__ = ["cash", "cash_terms", "cash_sparse", "cash_data_term", "wstat", "wstat_terms", "wstat_mu_bkg", "chi2", "poisson_loglike", "gaussian_loglike", "MU_FLOOR"]

MU_FLOOR = 1e-25


def _masked_sum(terms: Array, mask: ArrayLike | None) -> Array:
    if mask is None:
        return jnp.sum(terms)
    return jnp.sum(jnp.where(jnp.asarray(mask, dtype=bool), terms, 0.0))


def _n_log_n_over_mu(n: Array, mu: Array) -> Array:
    positive = n > 0
    safe_n = jnp.where(positive, n, 1.0)
    safe_mu = jnp.maximum(mu, MU_FLOOR)
    return jnp.where(positive, n * (jnp.log(safe_n) - jnp.log(safe_mu)), 0.0)


def cash_terms(n: Float[ArrayLike, "*bins"], mu: Float[ArrayLike, "*bins"]) -> Float[Array, "*bins"]:
    """Per-bin Cash deviance ``2 (mu - n + n log(n / mu))``."""
    n = jnp.asarray(n, dtype=float)
    mu = jnp.asarray(mu, dtype=float)
    return 2.0 * (mu - n + _n_log_n_over_mu(n, mu))


def cash_data_term(n: np.ndarray, mask: np.ndarray | None = None, axis=None) -> np.ndarray:
    """The data-only part of :func:`cash`, ``2 sum (n log n - n)`` over the (masked) bins,
    on the host: :func:`cash` is Gammapy's ``2 sum (mu - n log mu)`` plus this, and
    :func:`cash_sparse` is :func:`cash` minus it."""
    n = np.asarray(n, float)
    positive = n > 0
    terms = np.where(positive, n * np.log(np.where(positive, n, 1.0)), 0.0) - n
    if mask is not None:
        terms = np.where(mask, terms, 0.0)
    return 2 * np.sum(terms, axis=axis)


def cash_sparse(
    mu_sum: Float[ArrayLike, ""], mu_at_counts: Float[ArrayLike, " k"], counts: Float[ArrayLike, " k"]
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


def cash(n: Float[ArrayLike, "*bins"], mu: Float[ArrayLike, "*bins"], mask: Bool[ArrayLike, "*bins"] | None = None) -> Float[Array, ""]:
    """Cash statistic (Poisson deviance) ``2 sum(mu - n + n log(n / mu))``.

    Differs from Gammapy's ``2 sum(mu - n log mu)`` by a data-only constant, so fitted
    values, errors and TS are identical.

    Example:
        >>> import fitax
        >>> float(fitax.stats.cash([0, 3], [0.5, 3.0]))
        1.0
    """
    return _masked_sum(cash_terms(n, mu), mask)


def wstat_mu_bkg(n_on, n_off, alpha, mu_sig) -> Array:
    """Background counts in the off region that maximise the on-off likelihood (per bin).

    The positive root of the profile equation of the Poisson on/off likelihood over an
    unknown background (Cash 1979; the XSPEC/Gammapy "WStat"). The one closed form also
    covers ``n_on = 0`` (``n_off / (1 + alpha)``) and ``n_off = 0``
    (``max(n_on / (1 + alpha) - mu_sig / alpha, 0)``).
    """
    n_on, n_off, alpha, mu_sig = (jnp.asarray(x, dtype=float) for x in (n_on, n_off, alpha, mu_sig))
    c = alpha * (n_on + n_off) - (1 + alpha) * mu_sig
    discriminant = c**2 + 4 * alpha * (alpha + 1) * n_off * mu_sig
    # sqrt'(0) is infinite: take the root only where the argument is positive (finite gradients).
    positive = discriminant > 0
    d = jnp.where(positive, jnp.sqrt(jnp.where(positive, discriminant, 1.0)), 0.0)
    return (c + d) / (2 * alpha * (alpha + 1))


def wstat_terms(n_on, n_off, alpha, mu_sig) -> Array:
    """Per-bin WStat: Cash deviances of the on and off counts at the profiled background."""
    mu_bkg = wstat_mu_bkg(n_on, n_off, alpha, mu_sig)
    mu_on = jnp.asarray(mu_sig, dtype=float) + jnp.asarray(alpha, dtype=float) * mu_bkg
    return cash_terms(n_on, mu_on) + cash_terms(n_off, mu_bkg)


def wstat(n_on, n_off, alpha, mu_sig, mask=None) -> Float[Array, ""]:
    """On-off statistic with the background profiled out per bin (``-2 log L`` deviance form).

    Args:
        n_on, n_off: counts in the on and off regions.
        alpha: on/off exposure ratio (background in on = ``alpha`` x background in off).
        mu_sig: predicted signal counts in the on region.
        mask: optional boolean mask of bins to include.
    """
    return _masked_sum(wstat_terms(n_on, n_off, alpha, mu_sig), mask)


def chi2(data, model, error, mask=None) -> Float[Array, ""]:
    """``sum(((data - model) / error)**2)``."""
    data, model, error = (jnp.asarray(x, dtype=float) for x in (data, model, error))
    return _masked_sum(((data - model) / error) ** 2, mask)


def poisson_loglike(n, mu, mask=None) -> Float[Array, ""]:
    """Poisson log-likelihood ``sum(n log mu - mu - log n!)`` (``errordef = 0.5`` for its negative)."""
    n = jnp.asarray(n, dtype=float)
    mu = jnp.asarray(mu, dtype=float)
    from jax.scipy.special import gammaln, xlogy

    return _masked_sum(xlogy(n, jnp.maximum(mu, MU_FLOOR)) - mu - gammaln(n + 1), mask)


def gaussian_loglike(data, model, sigma, mask=None) -> Float[Array, ""]:
    """Gaussian log-likelihood ``sum(-0.5 ((data - model)/sigma)**2 - log(sigma sqrt(2 pi)))``."""
    data, model, sigma = (jnp.asarray(x, dtype=float) for x in (data, model, sigma))
    terms = -0.5 * ((data - model) / sigma) ** 2 - jnp.log(sigma) - 0.5 * jnp.log(2 * jnp.pi)
    return _masked_sum(terms, mask)
