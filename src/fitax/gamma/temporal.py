"""Temporal models with Gammapy's names, parameters and units: a source's flux is its
spectrum times ``f(t)``, and a dataset sees ``f`` averaged over its good time intervals,

    norm = sum_i int_{start_i}^{stop_i} f(t) dt / sum_i (stop_i - start_i),

as Gammapy's ``TemporalModel.integral`` summed over the GTIs. Times are MJD [d] in the
model's ``scale`` (Gammapy's default: ``utc``), elapsed from ``t_ref`` as Gammapy's ``Time``
differences count them; the intervals are converted so where the datasets are bound, so the averages here are pure JAX functions of the parameters and the
``(k, 2)`` interval arrays (intervals of zero length, ``start == stop``, pad a stack and add
nothing). Every model has the closed-form integral Gammapy uses, except two where
Gammapy's is wrong and fitax integrates exactly (``tests/test_gamma_temporal.py`` shows each
difference): ``SineTemporalModel``, whose Gammapy integral takes ``sin`` where the
antiderivative of ``1 + amp sin(omega (t - t_ref))`` has ``-cos / omega`` (10% off), and
``LightCurveTemplateTemporalModel``, which Gammapy sums at 100 points with the spacing of 99
(about 1% high) and at GTI times in TT read as UTC.

Example:
    >>> model = ExpDecayTemporalModel(t0=2.0, t_ref=53000.0)
    >>> round(float(model.mean(np.array([[53000.0, 53002.0]]))), 6)  # (1 - e^-1) / 2 x 2 / 2
    0.632121
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import jax.scipy.special as jsp
from jaxtyping import Array, Float

from ..parameters import Parameter
from ._common import parameter

__all__ = ["ConstantTemporalModel", "ExpDecayTemporalModel", "GaussianTemporalModel", "LightCurveTemplateTemporalModel", "LinearTemporalModel",
           "PowerLawTemporalModel", "SineTemporalModel", "TEMPORAL_TAGS", "TIME_SCALES", "temporal_intervals"]

_T_REF_DEFAULT = 51544.0  # Gammapy's default t_ref, 2000-01-01 00:00 (MJD, UTC)
TIME_SCALES = ("utc", "tt", "tai", "tcg", "tcb", "tdb", "ut1")


class _TemporalModel(eqx.Module):
    scale: str = eqx.field(static=True, kw_only=True, default="utc")

    def __check_init__(self):
        if self.scale not in TIME_SCALES:
            raise ValueError(f"time scale {self.scale!r}; expected one of {TIME_SCALES}")

    def __call__(self, time: Float[Array, "*t"]) -> Float[Array, "*t"]:
        raise NotImplementedError

    def antiderivative(self, time: Float[Array, "*t"]) -> Float[Array, "*t"]:
        raise NotImplementedError

    def mean(self, intervals: Float[Array, "k 2"]) -> Float[Array, ""]:
        """``f`` averaged over the intervals ``(start, stop)`` [MJD, in ``scale``]."""
        intervals = jnp.asarray(intervals, float)
        start, stop = intervals[..., 0], intervals[..., 1]
        # zero-length padding adds nothing: its antiderivative difference is taken as 0 exactly
        integral = jnp.where(stop > start, self.antiderivative(stop) - self.antiderivative(jnp.where(stop > start, start, stop)), 0.0)
        return jnp.sum(integral) / jnp.sum(stop - start)


class ConstantTemporalModel(_TemporalModel):
    """``f(t) = 1``."""

    def __call__(self, time):
        return jnp.ones_like(jnp.asarray(time, float))

    def antiderivative(self, time):
        return jnp.asarray(time, float)

    def mean(self, intervals):
        return jnp.ones(())


class LinearTemporalModel(_TemporalModel):
    """``f(t) = alpha + beta (t - t_ref)``, ``beta`` [d-1]."""

    alpha: Parameter
    beta: Parameter
    t_ref: Parameter

    def __init__(self, alpha=1.0, beta=0.0, t_ref=_T_REF_DEFAULT, *, scale: str = "utc"):
        self.alpha = parameter(alpha, "")
        self.beta = parameter(beta, "d-1")
        self.t_ref = parameter(t_ref, "d", frozen=True)
        self.scale = scale

    def __call__(self, time):
        return self.alpha.value + self.beta.value * (jnp.asarray(time, float) - self.t_ref.value)

    def antiderivative(self, time):
        dt = jnp.asarray(time, float) - self.t_ref.value
        return self.alpha.value * dt + 0.5 * self.beta.value * dt**2


class ExpDecayTemporalModel(_TemporalModel):
    """``f(t) = exp(-(t - t_ref) / t0)``, ``t0`` [d]."""

    t0: Parameter
    t_ref: Parameter

    def __init__(self, t0=1.0, t_ref=_T_REF_DEFAULT, *, scale: str = "utc"):
        self.t0 = parameter(t0, "d")
        self.t_ref = parameter(t_ref, "d", frozen=True)
        self.scale = scale

    def __call__(self, time):
        return jnp.exp(-(jnp.asarray(time, float) - self.t_ref.value) / self.t0.value)

    def antiderivative(self, time):
        return -self.t0.value * self(time)


class GaussianTemporalModel(_TemporalModel):
    """``f(t) = exp(-(t - t_ref)^2 / (2 sigma^2))``, ``sigma`` [d]."""

    t_ref: Parameter
    sigma: Parameter

    def __init__(self, t_ref=_T_REF_DEFAULT, sigma=1.0, *, scale: str = "utc"):
        self.t_ref = parameter(t_ref, "d")
        self.sigma = parameter(sigma, "d")
        self.scale = scale

    def __call__(self, time):
        return jnp.exp(-((jnp.asarray(time, float) - self.t_ref.value) ** 2) / (2 * self.sigma.value**2))

    def antiderivative(self, time):
        sigma = self.sigma.value
        return jnp.sqrt(jnp.pi / 2) * sigma * jsp.erf((jnp.asarray(time, float) - self.t_ref.value) / (jnp.sqrt(2.0) * sigma))


class PowerLawTemporalModel(_TemporalModel):
    """``f(t) = ((t - t_ref) / t0)^alpha``, ``t0`` [d]; defined after ``t_ref``."""

    alpha: Parameter
    t_ref: Parameter
    t0: Parameter

    def __init__(self, alpha=1.0, t_ref=_T_REF_DEFAULT, t0=1.0, *, scale: str = "utc"):
        self.alpha = parameter(alpha, "")
        self.t_ref = parameter(t_ref, "d", frozen=True)
        self.t0 = parameter(t0, "d", frozen=True)
        self.scale = scale

    def __call__(self, time):
        return ((jnp.asarray(time, float) - self.t_ref.value) / self.t0.value) ** self.alpha.value

    def antiderivative(self, time):
        x = (jnp.asarray(time, float) - self.t_ref.value) / self.t0.value
        power = self.alpha.value + 1.0
        near_minus_one = jnp.abs(power) < 1e-10
        return self.t0.value * jnp.where(near_minus_one, jnp.log(x), x ** jnp.where(near_minus_one, 1.0, power) / jnp.where(near_minus_one, 1.0, power))


class SineTemporalModel(_TemporalModel):
    """``f(t) = 1 + amp sin(omega (t - t_ref))``, ``omega`` [rad d-1]."""

    amp: Parameter
    omega: Parameter
    t_ref: Parameter

    def __init__(self, amp=1.0, omega=1.0, t_ref=_T_REF_DEFAULT, *, scale: str = "utc"):
        self.amp = parameter(amp, "")
        self.omega = parameter(omega, "rad d-1")
        self.t_ref = parameter(t_ref, "d")
        self.scale = scale

    def __call__(self, time):
        return 1.0 + self.amp.value * jnp.sin(self.omega.value * (jnp.asarray(time, float) - self.t_ref.value))

    def antiderivative(self, time):
        dt = jnp.asarray(time, float) - self.t_ref.value  # from t_ref: MJDs of ~5e4 d would cost 1e-11 d of precision
        return dt - self.amp.value / self.omega.value * jnp.cos(self.omega.value * dt)


def _positive_part_integral(start, slope, x):
    """``int_0^x max(0, start + slope s) ds`` (negative for ``x < 0``), exact: the line's
    integral where it stays above 0, nothing where it stays below, and the part above 0
    where it crosses (then ``slope != 0``)."""
    end = start + slope * x
    crossing = (start >= 0) != (end >= 0)
    safe_slope = jnp.where(crossing, slope, 1.0)
    crossed = 0.5 * (jnp.maximum(end, 0.0) ** 2 - jnp.maximum(start, 0.0) ** 2) / safe_slope
    return jnp.where(crossing, crossed, jnp.where(start >= 0, start * x + 0.5 * slope * x**2, 0.0))


class LightCurveTemplateTemporalModel(_TemporalModel):
    """A light curve given as ``norms`` at ``nodes`` [d after ``t_ref``] (Gammapy's
    ``LightCurveTemplateTemporalModel`` from a table): linear between the nodes, extrapolated
    linearly from the outer two beyond them, and 0 where that is negative, as Gammapy's
    ``interp_by_coord`` and clip. Its averages are the exact integrals of that function.

    ``filename`` is the table it was read from (``models.yaml`` names it); energy-dependent
    templates (Gammapy's map format) are not supported.

    Example:
        >>> flare = LightCurveTemplateTemporalModel([0.0, 1.0, 2.0], [0.0, 2.0, 0.0], t_ref=53000.0)
        >>> round(float(flare.mean(np.array([[53000.0, 53002.0]]))), 6)  # a triangle of area 2 over 2 days
        1.0
    """

    t_ref: Parameter
    nodes: Float[Array, " n"]
    norms: Float[Array, " n"]
    filename: str = eqx.field(static=True, kw_only=True, default="")

    def __init__(self, nodes, norms, t_ref=_T_REF_DEFAULT, *, filename: str = "", scale: str = "utc"):
        nodes, norms = np.asarray(nodes, float), np.asarray(norms, float)
        where = f"light-curve template {filename}".rstrip()
        if nodes.ndim != 1 or nodes.shape != norms.shape or nodes.size < 2:
            raise ValueError(f"{where}: expected at least two times and as many norms, got shapes {nodes.shape} and {norms.shape}")
        if not (np.all(np.isfinite(nodes)) and np.all(np.isfinite(norms))):
            raise ValueError(f"{where}: times and norms must be finite")
        if np.any(np.diff(nodes) <= 0):
            raise ValueError(f"{where}: times must increase strictly")
        self.t_ref = parameter(t_ref, "d", frozen=True)
        self.nodes, self.norms = nodes, norms
        self.filename = str(filename)
        self.scale = scale

    def _segments(self, time):
        """Each time's segment: its start node, its value there and its slope."""
        nodes, norms = jnp.asarray(self.nodes), jnp.asarray(self.norms)
        after = jnp.asarray(time, float) - self.t_ref.value
        segment = jnp.clip(jnp.searchsorted(nodes, after, side="right") - 1, 0, nodes.size - 2)
        slopes = jnp.diff(norms) / jnp.diff(nodes)
        return after - nodes[segment], norms[segment], slopes[segment], segment

    def __call__(self, time):
        x, start, slope, _ = self._segments(time)
        return jnp.maximum(start + slope * x, 0.0)

    def antiderivative(self, time):
        nodes, norms = jnp.asarray(self.nodes), jnp.asarray(self.norms)
        widths = jnp.diff(nodes)
        whole = _positive_part_integral(norms[:-1], jnp.diff(norms) / widths, widths)
        before = jnp.concatenate([jnp.zeros(1), jnp.cumsum(whole)[:-1]])
        x, start, slope, segment = self._segments(time)
        return before[segment] + _positive_part_integral(start, slope, x)


TEMPORAL_TAGS = {
    ("ConstantTemporalModel", "const"): ConstantTemporalModel,
    ("LinearTemporalModel", "linear"): LinearTemporalModel,
    ("ExpDecayTemporalModel", "exp-decay"): ExpDecayTemporalModel,
    ("GaussianTemporalModel", "gauss"): GaussianTemporalModel,
    ("PowerLawTemporalModel", "powerlaw"): PowerLawTemporalModel,
    ("SineTemporalModel", "sinus"): SineTemporalModel,
    ("LightCurveTemplateTemporalModel", "template"): LightCurveTemplateTemporalModel,
}
"""Gammapy's temporal model tags (type names and short names) fitax has."""


def temporal_intervals(source, gtis: list, dataset_names: list[str]) -> np.ndarray | None:
    """The good time intervals ``(n, k, 2)`` of the datasets a source with a temporal model is
    bound to, or ``None`` for a source without one: MJD in the model's time ``scale``, counted
    in elapsed (TT) days from ``t_ref`` so that a leap second between a run and ``t_ref`` is
    time that passed, as Gammapy's ``Time`` differences count it; padded with zero-length
    intervals to the most any dataset has. A dataset the source does not apply to gets one
    unit interval a day after ``t_ref`` instead of its own (its average is unused; where the
    model is defined, it is finite, so that 0 x average stays 0 and its gradient too). A
    dataset the source applies to without good time intervals is an error naming both."""
    from astropy.time import Time

    if source.temporal is None:
        return None
    missing = [name for name, gti in zip(dataset_names, gtis) if gti is None and name and source.applies_to(name)]
    if missing:
        raise ValueError(f"model {source.name!r} has a temporal model, but datasets {missing} carry no good time intervals (GTI) "
                         "to average it over")
    scale = source.temporal.scale
    t_ref = getattr(source.temporal, "t_ref", None)
    reference = float(t_ref.value) if t_ref is not None else 51544.0
    # TT - (the scale) at t_ref [d]: elapsed TT days from t_ref, expressed on the scale's MJD axis
    shift = Time(reference, format="mjd", scale=scale).tt.mjd - reference
    unused = np.array([[reference + 1.0, reference + 2.0]])
    mjds = [np.reshape(gti.tt.mjd, (-1, 2)) - shift if gti is not None and name and source.applies_to(name) else unused
            for gti, name in zip(gtis, dataset_names)]
    k = max(len(m) for m in mjds)
    padded = np.zeros((len(mjds), k, 2))
    for i, m in enumerate(mjds):
        padded[i, : len(m)] = m
        padded[i, len(m):] = m[-1, 1]  # zero-length intervals at the last stop
    return padded
