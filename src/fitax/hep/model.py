"""A HistFactory model as an immutable JAX pytree: expected yields and pyhf's log-likelihood.

:class:`Model` holds its structure (channel, sample and parameter names, interpolation codes)
as static fields and its numbers (nominal yields, modifier tables, constraint widths) as arrays,
so a jitted function of a model compiles once per structure and shapes and re-uses the
compilation for another signal point of the same analysis. The likelihood methods are
``eqx.filter_jit``-ed: called outside a user's ``jit`` they run as one compiled program (the
first eager call of ``logpdf`` on a 20-parameter model took 17 s op by op under load, 1 s
compiled); inside a ``jit``, ``vmap`` or ``grad`` they inline.

Parameters are :class:`fitax.Parameter` objects in a dict keyed by pyhf's parameter names;
per-bin parameters (shapesys, staterror, shapefactor) are tuples of scalar Parameters. Flat
vectors (:meth:`Model.to_vector`, :meth:`Model.from_vector`) follow pyhf's ``par_order``, and
data vectors pyhf's layout: main bins channel by channel (channels sorted by name), then the
auxiliary data of the constrained parameters in parameter order.

Negative expected yields: pyhf returns NaN for the log-likelihood of a bin whose expected
count is negative (a histosys or a negative-weight sample can push it below zero). This model
clamps every main-bin rate, and every Poisson-constraint rate, at :data:`RATE_FLOOR` instead
(pyhf's ``clip_bin_data`` option with that value gives the same numbers): the likelihood stays
finite and huge-negative where the model is unphysical, so a fit backs away from it.
"""

from __future__ import annotations


from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy
from jaxtyping import Array, Float, Int

from ..device import to_device
from ..parameters import Parameter, value_of, with_value
from . import derivatives, interpolation
from .modifiers import ParameterLayout, build_structure

__all__ = ["Model", "RATE_FLOOR", "DEFAULT_MODIFIER_SETTINGS"]

RATE_FLOOR = 1e-100
"""Smallest expected count used in a Poisson term (see the module docstring). Far below any
physical yield, so a rate of exactly 0 (an empty bin) changes ``log L`` by 1e-100 only."""

DEFAULT_MODIFIER_SETTINGS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
"""pyhf's interpolation when no ``modifier_settings`` are given. When they are given, they
replace this dict as in pyhf: a type left out falls back to normsys code1 / histosys code0."""

_FALLBACK_CODES = {"normsys": "code1", "histosys": "code0"}
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def _interpolation_codes(modifier_settings: Mapping | None) -> tuple[str, str]:
    settings = DEFAULT_MODIFIER_SETTINGS if modifier_settings is None else modifier_settings
    unknown = set(settings) - {"normsys", "histosys"}
    if unknown:
        raise ValueError(f"modifier_settings: only 'normsys' and 'histosys' take settings, got {sorted(unknown)}")
    codes = []
    for mtype, allowed in (("normsys", interpolation.MULTIPLICATIVE_CODES), ("histosys", interpolation.ADDITIVE_CODES)):
        entry = dict(settings.get(mtype, {}))
        code = entry.pop("interpcode", _FALLBACK_CODES[mtype])
        if entry:
            raise ValueError(f"modifier_settings[{mtype!r}]: unknown keys {sorted(entry)} (only 'interpcode')")
        if code not in allowed:
            raise ValueError(f"modifier_settings[{mtype!r}]['interpcode'] must be one of {allowed}, got {code!r}")
        codes.append(code)
    return codes[0], codes[1]


def _entries(index: np.ndarray, n_parameters: int) -> Array:
    """``(slot, cell)`` of the table entries that name a parameter (padding names
    ``n_parameters``), cells flattened as ``sample * n_bins + bin``."""
    slots, cells = np.nonzero(index.reshape(index.shape[0], int(np.prod(index.shape[1:]))) < n_parameters)
    return jax.device_put(np.stack([slots, cells]).astype(np.int32))


class Model(eqx.Module):
    """HistFactory model built from a workspace (see :meth:`fitax.hep.Workspace.model`).

    Static structure: ``channels``, ``channel_nbins``, ``samples``, ``parameter_sets`` (pyhf's
    order: names, sizes, constraints, fixed flags), ``poi_name`` and the interpolation codes.
    Arrays: nominal yields, modifier tables, constraint terms, inits and bounds.
    """

    channels: tuple[str, ...] = eqx.field(static=True)
    channel_nbins: tuple[int, ...] = eqx.field(static=True)
    samples: tuple[str, ...] = eqx.field(static=True)
    parameter_sets: tuple[ParameterLayout, ...] = eqx.field(static=True)
    poi_name: str | None = eqx.field(static=True)
    normsys_code: str = eqx.field(static=True)
    histosys_code: str = eqx.field(static=True)

    nominal: Float[Array, "samples bins"]
    factor_index: Array
    normsys_index: Array
    normsys_log_lo: Array
    normsys_log_hi: Array
    normsys_coefficients: Array
    histosys_index: Array
    histosys_lo: Array
    histosys_nom: Array
    histosys_hi: Array
    normsys_entries: Int[Array, "2 normsys_entries"]  # (slot, cell) of each normsys that applies
    factor_entries: Int[Array, "2 factor_entries"]  # (slot, cell) of each free factor that applies
    gauss_index: Array  # parameter index of each Gaussian-constrained component
    gauss_aux_pos: Array  # its position in the auxiliary data
    gauss_sigma: Array
    poisson_index: Array
    poisson_aux_pos: Array
    poisson_factor: Array
    auxdata: Float[Array, " aux"]
    inits: Float[Array, " parameters"]  # pyhf's suggested_init, flat
    bounds: Float[Array, "parameters 2"]

    @classmethod
    def build(
        cls,
        channels: Sequence[Mapping],
        parameter_configs: Sequence[Mapping] = (),
        poi_name: str | None = None,
        modifier_settings: Mapping | None = None,
    ) -> Model:
        """Build from a workspace's ``channels`` and one measurement's ``config``.

        Raises:
            ValueError: the POI is not a scalar parameter of the model, a parameter is configured
                inconsistently, an interpolation code is unknown, or a normsys factor is not > 0.
        """
        normsys_code, histosys_code = _interpolation_codes(modifier_settings)
        structure = build_structure(channels, parameter_configs)
        names = [p.name for p in structure.parameter_sets]
        if poi_name is not None:
            if poi_name not in names:
                free = [p.name for p in structure.parameter_sets if p.constraint is None and p.is_scalar]
                raise ValueError(
                    f"the measurement's POI {poi_name!r} is not a parameter of the model "
                    f"(its {len(names)} parameters include the normfactors {', '.join(free) or 'none'})"
                )
            if not structure.parameter_sets[names.index(poi_name)].is_scalar:
                raise ValueError(f"the POI {poi_name!r} has one component per bin; a POI must be a scalar parameter")
        tables = structure.tables
        _check_normsys(channels, normsys_code)
        coefficients = tables.normsys_coefficients() if normsys_code == "code4" else np.zeros((6,) + tables.normsys_lo.shape)

        inits = [v for p in structure.parameter_sets for v in p.inits]
        gauss_index, gauss_pos, gauss_sigma, poisson_index, poisson_pos, poisson_factor, auxdata = ([] for _ in range(7))
        start = 0
        for pset in structure.parameter_sets:
            if pset.constraint == "normal":
                gauss_index += range(start, start + pset.size)
                gauss_pos += range(len(auxdata), len(auxdata) + pset.size)
                gauss_sigma += pset.sigmas
            elif pset.constraint == "poisson":
                poisson_index += range(start, start + pset.size)
                poisson_pos += range(len(auxdata), len(auxdata) + pset.size)
                poisson_factor += pset.factors
            if pset.constraint is not None:
                auxdata += pset.auxdata
            start += pset.size

        # device_put, not jnp.asarray: the latter compiled a conversion per array shape (45 ms
        # each, most of a model's build time, measured under load).
        def ints(x):
            return jax.device_put(np.asarray(x, dtype=np.int32).reshape(-1))

        def floats(x):
            return jax.device_put(np.asarray(x, dtype=float))

        return cls(
            channels=structure.channels,
            channel_nbins=structure.channel_nbins,
            samples=structure.samples,
            parameter_sets=tuple(p.layout() for p in structure.parameter_sets),
            poi_name=poi_name,
            normsys_code=normsys_code,
            histosys_code=histosys_code,
            nominal=floats(tables.nominal),
            factor_index=jax.device_put(tables.factor_index),
            normsys_index=jax.device_put(tables.normsys_index),
            normsys_log_lo=floats(np.log(tables.normsys_lo)),
            normsys_log_hi=floats(np.log(tables.normsys_hi)),
            normsys_coefficients=floats(coefficients),
            histosys_index=jax.device_put(tables.histosys_index),
            histosys_lo=floats(tables.histosys_lo),
            histosys_nom=floats(tables.histosys_nom),
            histosys_hi=floats(tables.histosys_hi),
            normsys_entries=_entries(tables.normsys_index, len(inits)),
            factor_entries=_entries(tables.factor_index, len(inits)),
            gauss_index=ints(gauss_index),
            gauss_aux_pos=ints(gauss_pos),
            gauss_sigma=floats(gauss_sigma).reshape(-1),
            poisson_index=ints(poisson_index),
            poisson_aux_pos=ints(poisson_pos),
            poisson_factor=floats(poisson_factor).reshape(-1),
            auxdata=floats(auxdata).reshape(-1),
            inits=floats(inits).reshape(-1),
            bounds=floats([b for p in structure.parameter_sets for b in p.bounds]).reshape(-1, 2),
        )

    # ------------------------------------------------------------------ structure, pyhf names
    @property
    def parameter_names(self) -> list[str]:
        """Parameter names in pyhf's ``par_order``."""
        return [p.name for p in self.parameter_sets]

    @property
    def par_names(self) -> list[str]:
        """One name per component, pyhf's ``config.par_names`` (``name[i]`` for per-bin sets)."""
        out = []
        for p in self.parameter_sets:
            out += [p.name] if p.is_scalar else [f"{p.name}[{i}]" for i in range(p.size)]
        return out

    @property
    def n_parameters(self) -> int:
        """Length of the flat parameter vector."""
        return sum(p.size for p in self.parameter_sets)

    def par_slice(self, name: str) -> slice:
        """Slice of parameter ``name`` in the flat vector (pyhf's ``config.par_slice``)."""
        start = 0
        for p in self.parameter_sets:
            if p.name == name:
                return slice(start, start + p.size)
            start += p.size
        raise KeyError(f"no parameter {name!r} in the model")

    @property
    def poi_index(self) -> int | None:
        """Index of the POI in the flat vector."""
        return None if self.poi_name is None else self.par_slice(self.poi_name).start

    @property
    def n_main_bins(self) -> int:
        return int(sum(self.channel_nbins))

    @property
    def aux_size(self) -> int:
        return int(self.auxdata.shape[0])

    def channel_slices(self) -> dict[str, slice]:
        """Slice of each channel's bins in the main data."""
        edges = np.cumsum((0,) + self.channel_nbins)
        return {c: slice(int(a), int(b)) for c, a, b in zip(self.channels, edges[:-1], edges[1:])}

    def suggested_init(self) -> np.ndarray:
        return np.array(self.inits)

    def suggested_bounds(self) -> np.ndarray:
        """Shape (n_parameters, 2)."""
        return np.array(self.bounds)

    def suggested_fixed(self) -> np.ndarray:
        return np.array([f for p in self.parameter_sets for f in p.fixed], dtype=bool)

    # ------------------------------------------------------------------------- parameters
    def init_params(self) -> dict[str, Parameter | tuple[Parameter, ...]]:
        """pyhf's starting point as fitax Parameters: inits, bounds, ``fixed -> frozen``.

        Scalar parameters are single Parameters, per-bin ones tuples of scalar Parameters.
        """
        return self.from_vector(self.suggested_init())

    def from_vector(self, vector, template: Mapping | None = None) -> dict:
        """Parameters with values from a flat vector in pyhf's order.

        Metadata (bounds, frozen flags) come from ``template`` (a dict as from
        :meth:`init_params`) when given, else from the model's defaults. A fixed parameter whose
        configured bounds collapse to a point gets no bounds (fitax needs ``min < max``).
        """
        if not isinstance(vector, jax.core.Tracer):
            vector = np.asarray(vector, dtype=float)  # concrete: index on the host, not op by op
        if vector.shape[-1:] != (self.n_parameters,):
            raise ValueError(f"parameter vector has length {vector.shape[-1:]} but the model has {self.n_parameters}")
        bounds = self.suggested_bounds().tolist() if template is None else None
        out, prototypes = {}, {}
        start = 0
        for pset in self.parameter_sets:
            components = []
            for i in range(pset.size):
                value = vector[..., start + i]
                if template is not None:
                    like = template[pset.name] if pset.is_scalar else template[pset.name][i]
                    components.append(with_value(like, value))
                    continue
                low, high = bounds[start + i]
                metadata = (low, high, bool(pset.fixed[i])) if low < high else (None, None, True)
                if metadata not in prototypes:
                    # Parameters of a model share a few kinds of bounds; copying a prototype
                    # is ~20x cheaper than equinox's __init__ for each of ~100 parameters.
                    prototypes[metadata] = Parameter(0.0, min=metadata[0], max=metadata[1], frozen=metadata[2])
                components.append(with_value(prototypes[metadata], value))
            out[pset.name] = components[0] if pset.is_scalar else tuple(components)
            start += pset.size
        return out

    def to_vector(self, params) -> Array:
        """Flat vector of parameter values in pyhf's order (accepts Parameters or numbers).

        A 1-d array is returned unchanged after a length check, so every method taking
        ``params`` also takes a flat vector.
        """
        if not isinstance(params, Mapping):
            vector = jnp.asarray(params, dtype=float)
            if vector.shape[-1:] != (self.n_parameters,):
                raise ValueError(f"parameter vector has length {vector.shape[-1:]} but the model has {self.n_parameters}")
            return vector
        missing = [p.name for p in self.parameter_sets if p.name not in params]
        if missing:
            raise ValueError(f"parameters missing: {', '.join(missing)}")
        values = []
        for pset in self.parameter_sets:
            entry = params[pset.name]
            components = [entry] if pset.is_scalar else list(entry)
            if len(components) != pset.size:
                raise ValueError(f"parameter {pset.name!r} has {len(components)} components, expected {pset.size}")
            values += [value_of(c) for c in components]
        if not any(isinstance(v, jax.core.Tracer) for v in values):
            # concrete values: one host stack and one copy to the device (an eager jnp.stack
            # of 64 scalars costs ~3 ms, mostly dtype promotion)
            return to_device(np.stack(np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in values)), axis=-1))
        return jnp.stack(jnp.broadcast_arrays(*(jnp.asarray(v, dtype=float) for v in values)), axis=-1)

    # --------------------------------------------------------------------------- yields
    @eqx.filter_jit
    def expected_by_sample(self, params) -> Float[Array, "samples bins"]:
        """Expected yield of every sample in every main bin (before the rate floor)."""
        p = self.to_vector(params)
        if p.ndim != 1:
            raise ValueError("batched parameters: use jax.vmap over a model method")
        p_ext = jnp.concatenate([p, jnp.ones(1)])
        log_normsys = interpolation.log_multiplicative(
            self.normsys_code, p_ext[self.normsys_index], self.normsys_log_lo, self.normsys_log_hi, self.normsys_coefficients
        )
        shift = interpolation.additive(
            self.histosys_code, p_ext[self.histosys_index], self.histosys_lo, self.histosys_nom, self.histosys_hi
        )
        rate = (self.nominal + jnp.sum(shift, axis=0)) * jnp.exp(jnp.sum(log_normsys, axis=0))
        for index in self.factor_index:  # a few factors per bin: explicit products, see log_multiplicative
            rate = rate * p_ext[index]
        return rate

    @eqx.filter_jit
    def expected_actualdata(self, params) -> Float[Array, " bins"]:
        """Expected counts of the main bins, clamped at :data:`RATE_FLOOR`."""
        return jnp.maximum(jnp.sum(self.expected_by_sample(params), axis=0), RATE_FLOOR)

    @eqx.filter_jit
    def expected_auxdata(self, params) -> Float[Array, " aux"]:
        """Expected auxiliary data: the parameter (Gaussian) or ``tau * gamma`` (Poisson)."""
        p = self.to_vector(params)
        aux = jnp.zeros(self.aux_size)
        aux = aux.at[self.gauss_aux_pos].set(p[self.gauss_index])
        return aux.at[self.poisson_aux_pos].set(p[self.poisson_index] * self.poisson_factor)

    @eqx.filter_jit
    def expected_data(self, params, include_auxdata: bool = True) -> Array:
        """Main then auxiliary expected data, pyhf's ``model.expected_data``."""
        main = self.expected_actualdata(params)
        if not include_auxdata:
            return main
        return jnp.concatenate([main, self.expected_auxdata(params)])

    # ------------------------------------------------------------------------ likelihood
    def _split(self, data) -> tuple[Array, Array]:
        data = jnp.asarray(data, dtype=float)
        expected = self.n_main_bins + self.aux_size
        if data.shape[-1:] != (expected,):
            raise ValueError(
                f"data has length {data.shape[-1:]} but the model needs {expected} "
                f"({self.n_main_bins} main bins + {self.aux_size} auxiliary data)"
            )
        return data[: self.n_main_bins], data[self.n_main_bins :]

    @eqx.filter_jit
    def mainlogpdf(self, params, maindata) -> Array:
        """Poisson log-likelihood of the main bins (continuous in the counts, via gammaln)."""
        rate = self.expected_actualdata(params)
        return jnp.sum(xlogy(maindata, rate) - rate - gammaln(maindata + 1.0))

    @eqx.filter_jit
    def constraint_logpdf(self, params, auxdata) -> Array:
        """Gaussian and Poisson constraint terms, as pyhf writes them."""
        p = self.to_vector(params)
        pull = (auxdata[self.gauss_aux_pos] - p[self.gauss_index]) / self.gauss_sigma
        gauss = jnp.sum(-0.5 * pull**2 - jnp.log(self.gauss_sigma) - _LOG_SQRT_2PI)
        n = auxdata[self.poisson_aux_pos]
        rate = jnp.maximum(p[self.poisson_index] * self.poisson_factor, RATE_FLOOR)
        poisson = jnp.sum(xlogy(n, rate) - rate - gammaln(n + 1.0))
        return gauss + poisson

    @eqx.filter_jit
    def logpdf(self, params, data) -> Array:
        """Full log-likelihood (pyhf's ``model.logpdf``, as a scalar) of ``data`` = main + aux."""
        main, aux = self._split(data)
        return self.mainlogpdf(params, main) + self.constraint_logpdf(params, aux)

    @eqx.filter_jit
    def nll(self, params, data) -> Array:
        """``-2 log L``: the objective for ``fitax.fit(model.nll, params, args=data)`` (errordef 1).

        Equal to ``-2 * logpdf``, with first and second derivatives in the parameters written
        out by hand (:mod:`fitax.hep.derivatives`): value, gradient and Hessian of the sbottom
        likelihood (64 parameters), as fitax's fits compute them, cost 3.0 Mflop and 3.5 MB of
        memory traffic instead of 8.5 Mflop and 21 MB with autodiff (XLA cost analysis).
        """
        p = self.to_vector(params)
        data = jnp.asarray(data, dtype=float)
        self._split(data)  # checks the length
        return derivatives.nll(self, p, data, RATE_FLOOR)


def _check_normsys(channels, code: str) -> None:
    """normsys factors must be > 0, and under code4 stay > 0 inside |alpha| < 1.

    pyhf gives NaN (log of a negative yield) or factors of 0 there. Code 4's polynomial dips
    below 0 for extreme pairs (e.g. lo = 1e-4 with hi = 17), which code 1 never does.
    """
    for c in channels:
        for s in c["samples"]:
            for m in s["modifiers"]:
                if m["type"] != "normsys":
                    continue
                lo, hi = m["data"]["lo"], m["data"]["hi"]
                where = f"channel {c['name']!r}, sample {s['name']!r}, modifier {m['name']!r} (normsys lo={lo}, hi={hi})"
                if not (lo > 0 and hi > 0):
                    raise ValueError(f"{where}: lo and hi must be > 0 (relative yields); pyhf would give NaN or 0 factors")
                if code == "code4" and interpolation.code4_minimum(interpolation.code4_coefficients(lo, hi)) <= 0:
                    raise ValueError(
                        f"{where}: the code4 interpolation of these factors goes <= 0 inside |alpha| < 1 "
                        "(negative yields, NaN in pyhf); use modifier_settings={'normsys': {'interpcode': 'code1'}}"
                    )
