"""The AGC ttbar selection, observables and histograms of one chunk, as one compiled kernel.

Definitions follow AGC's reference implementation (``ttbar_analysis_pipeline.py`` at
iris-hep/analysis-grand-challenge c37bf59, where its docs disagree):

* electrons: pT > 30 GeV, |eta| < 2.1, ``cutBased == 4``, ``sip3d < 4``; muons: pT > 30 GeV,
  |eta| < 2.1, ``tightId``, ``sip3d < 4``, ``pfRelIso04_all < 0.15``; jets: pT > 30 GeV,
  |eta| < 2.4, tight lepton veto (``jetId`` bit 2); b tag: ``btagCSVV2 > 0.5``;
* exactly one lepton and >= 4 jets; 4j1b: exactly one b tag, observable HT (scalar sum of the
  selected jets' pT); 4j2b: >= 2 b tags, observable the mass of the trijet (three selected jets,
  at least one b-tagged) of largest vector-sum pT;
* variations: jet pT x 1.03 (``pt_scale_up``) and x N(1, 0.05) per jet (``pt_res_up``), both
  applied before the cuts; b-tag weights ``1 +- 0.075 pT_i / 50 GeV`` of the i-th selected jet
  (``btag_var_{i}_{up,down}``, i = 0..3); W+jets scale weights 1.025 / 0.975 (``scale_var``);
* histograms: 25 bins over 50-550 GeV, a value on the upper edge in the overflow (as ``hist``).

AGC draws the resolution factors unseeded; here each jet's factor is a function of the file's
seed, its event number and its index, so a run is reproducible and independent of chunking.

Every cut is a probability that an object passes (0 or 1 for hard cuts, a sigmoid for soft
ones) and the event counts (one lepton, jets, b tags) are distributions over the objects, so
one code path gives exact histograms and, with :class:`Softness`, histograms differentiable in
the cut thresholds (:class:`Cuts`), the jet kinematics and the variations' sizes.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr
from jaxtyping import Array, Bool, Float

from ..jagged import Collection, LorentzVector, combination_incidence, combination_table, compact

__all__ = [
    "BINNING",
    "Binning",
    "Cuts",
    "REGIONS",
    "ROWS",
    "Softness",
    "chunk_histograms",
    "jet_resolution_factors",
]

REGIONS = ("4j1b", "4j2b")
KINEMATIC_VARIATIONS = ("nominal", "pt_scale_up", "pt_res_up")
BTAG_VARIATIONS = tuple(f"btag_var_{i}_{direction}" for i in range(4) for direction in ("up", "down"))
SCALE_VARIATIONS = ("scale_var_up", "scale_var_down")
ROWS = KINEMATIC_VARIATIONS + BTAG_VARIATIONS + SCALE_VARIATIONS
"""The histograms one kernel call fills per region, in this order."""

JET_ENERGY_SCALE = 1.03
JET_RESOLUTION = 0.05
BTAG_SLOPE = 0.075 / 50.0  # per GeV of the jet's pT
WJETS_SCALE = 0.025
TIGHT_LEPTON_VETO = 4  # Jet_jetId bit 2


class Binning(eqx.Module):
    """Regular bins over ``[low, high)`` (GeV)."""

    n_bins: int = eqx.field(static=True)
    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)

    @property
    def edges(self) -> Array:
        return jnp.linspace(self.low, self.high, self.n_bins + 1)


BINNING = Binning(25, 50.0, 550.0)


class Cuts(eqx.Module):
    """The selection thresholds (GeV where a momentum): differentiable leaves."""

    lepton_pt: Float[Array, ""] | float = 30.0
    lepton_eta: Float[Array, ""] | float = 2.1
    lepton_sip3d: Float[Array, ""] | float = 4.0
    muon_isolation: Float[Array, ""] | float = 0.15
    jet_pt: Float[Array, ""] | float = 30.0
    jet_eta: Float[Array, ""] | float = 2.4
    btag: Float[Array, ""] | float = 0.5


# Soft cuts are sigmoids of width ``temperature x`` these scales (the default thresholds).
_SCALES = Cuts()


class Softness(eqx.Module):
    """Soft cuts and soft histograms.

    ``temperature``: sigmoid width as a fraction of each default threshold (0.02: 0.6 GeV on a
    30 GeV pT cut); ``bandwidth``: Gaussian kernel width (GeV) that spreads each event over
    neighbouring bins; ``trijet_temperature``: softmax width (GeV) of the choice of the trijet of
    largest pT. All three -> 0 gives the hard histograms, with ``temperature`` going faster: a
    jet ``d`` GeV below the pT cut must weigh ``exp(-d / (temperature x 30 GeV))`` less than the
    ``exp(pT range / trijet_temperature)`` by which a higher-pT trijet is preferred (the tests
    take 1e-8, 0.01 GeV and 0.01 GeV: bins with > 100 events within 2% of the hard ones).
    """

    temperature: Float[Array, ""] | float = 0.02
    bandwidth: Float[Array, ""] | float = 5.0
    trijet_temperature: Float[Array, ""] | float = 2.0


def _above(x, cut, scale, softness: Softness | None):
    if softness is None:
        return (x > cut).astype(jnp.float64)
    return jax.nn.sigmoid((x - cut) / (softness.temperature * scale))


def _below(x, cut, scale, softness: Softness | None):
    return _above(-x, -cut, scale, softness)


def _log_above(x, cut, scale, softness: Softness):
    """log of the soft ``x > cut``, exact far below the cut (where the sigmoid underflows)."""
    return jax.nn.log_sigmoid((x - cut) / (softness.temperature * scale))


# log weight of a jet that cannot be selected (padding, failed jet ID): far below any
# ``pT / trijet_temperature`` difference, so a trijet with such a jet never wins the soft choice.
_EXCLUDED = -1e10


def _shift(distribution: Array, axis: int) -> Array:
    """Counts + 1 along ``axis``, the last bin holding 'this many or more'."""
    moved = jnp.roll(distribution, 1, axis=axis)
    first = [slice(None)] * distribution.ndim
    first[axis] = slice(0, 1)
    moved = moved.at[tuple(first)].set(0.0)
    last = [slice(None)] * distribution.ndim
    last[axis] = slice(-1, None)
    return moved.at[tuple(last)].add(distribution[tuple(last)])


def _count_distribution(p: Float[Array, "events n"], max_count: int) -> Float[Array, "events counts"]:
    """P(0), ..., P(max_count - 1), P(>= max_count) of how many objects pass, each with its own
    probability (a Poisson-binomial distribution; exact 0/1 for hard cuts)."""
    start = jnp.zeros((p.shape[0], max_count + 1)).at[:, 0].set(1.0)

    def add(distribution, p_object):
        return (1 - p_object)[:, None] * distribution + p_object[:, None] * _shift(distribution, 1), None

    return jax.lax.scan(add, start, p.T)[0]


def _jet_distribution(p_jet: Float[Array, "events n"], p_btag: Float[Array, "events n"]) -> Float[Array, "events 5 3"]:
    """Joint distribution of (selected jets: 0..3, >= 4) and (b tags among them: 0, 1, >= 2)."""
    start = jnp.zeros((p_jet.shape[0], 5, 3)).at[:, 0, 0].set(1.0)

    def add(distribution, probabilities):
        selected, tagged = probabilities
        one_more = _shift(distribution, 1)
        new = (1 - selected)[:, None, None] * distribution
        new = new + (selected * (1 - tagged))[:, None, None] * one_more
        return new + (selected * tagged)[:, None, None] * _shift(one_more, 2), None

    return jax.lax.scan(add, start, (p_jet.T, p_btag.T))[0]


def _mix64(x: Array) -> Array:
    """splitmix64's finaliser: a bijection of uint64 whose outputs pass the usual randomness
    tests (BigCrush) for counter inputs; integer multiplications wrap modulo 2^64."""
    x = (x ^ (x >> 30)) * jnp.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> 27)) * jnp.uint64(0x94D049BB133111EB)
    return x ^ (x >> 31)


def jet_resolution_factors(seed: Array, event: Array, cap: int) -> Float[Array, "events cap"]:
    """N(1, 0.05) for each jet slot of each event, a function of ``(seed, event number, slot)``
    only (so of no chunking): a counter hash (splitmix64) gives two uniforms per jet, Box-Muller
    a normal. ~6x cheaper than threefry keys per jet (measured), which cost a third of the
    kernel. The Box-Muller transcendentals run in float32 (2x faster than float64 on CPU,
    measured, and XLA repeats them in each fusion that reads the factors): the factors are
    N(1, 0.05) draws to ~1e-8, below the float32 precision of the stored jet pT."""
    golden = jnp.uint64(0x9E3779B97F4A7C15)
    counter = _mix64(jnp.asarray(seed, dtype=jnp.uint64) ^ _mix64(event.astype(jnp.uint64) * golden))
    bits = _mix64(counter[:, None] + (jnp.arange(cap, dtype=jnp.uint64)[None, :] + jnp.uint64(1)) * golden)
    # 24-bit uniforms (float32's mantissa, so exact) in (0, 1] and [0, 1) from the two halves
    first = ((bits >> 40).astype(jnp.float32) + 1.0) / 2.0**24
    second = ((bits >> 8) & jnp.uint64(0xFFFFFF)).astype(jnp.float32) / 2.0**24
    normal = jnp.sqrt(-2.0 * jnp.log(first)) * jnp.cos(2.0 * jnp.pi * second)
    return 1.0 + JET_RESOLUTION * normal.astype(jnp.float64)


def _lepton_probability(electrons: Collection, muons: Collection, cuts: Cuts, softness) -> Array:
    def common(leptons):
        return (
            _above(leptons.pt.astype(jnp.float64), cuts.lepton_pt, _SCALES.lepton_pt, softness)
            * _below(jnp.abs(leptons.eta.astype(jnp.float64)), cuts.lepton_eta, _SCALES.lepton_eta, softness)
            * _below(leptons.sip3d.astype(jnp.float64), cuts.lepton_sip3d, _SCALES.lepton_sip3d, softness)
            * leptons.mask
        )

    p_electron = common(electrons) * (electrons.cutBased == 4)
    p_muon = (
        common(muons)
        * muons.tightId
        * _below(muons.pfRelIso04_all.astype(jnp.float64), cuts.muon_isolation, _SCALES.muon_isolation, softness)
    )
    p_lepton = jnp.concatenate([p_electron, p_muon], axis=1)
    if softness is None:
        return (jnp.sum(p_lepton, axis=-1) == 1).astype(jnp.float64)
    return _count_distribution(p_lepton, 2)[:, 1]


def _trijet_mass(jets: Collection, trijet_cap: int, softness) -> tuple[Array, Array]:
    """The 4j2b observable, and which events had more candidate jets than ``trijet_cap``.

    Hard cuts: the candidates are the selected jets (exact unless they overflow the cap). Soft
    cuts: the ``trijet_cap`` leading jets, whatever the thresholds (a set chosen by the cuts
    would jump as they move); the choice of the trijet of largest pT is a softmax of
    ``pT / trijet_temperature + log P(its jets selected, one b-tagged)``, in log space so that a
    trijet with an unselected jet loses to any selected one, however large its pT. Sums over
    the ``C(cap, 3)`` trijets are products with their static incidence matrix (a matrix product
    is ~6x faster than gathering the members on CPU, measured)."""
    keep = jets.p_jet > 0.5 if softness is None else jets.mask
    candidates, overflow = compact(jets, keep, trijet_cap)
    incidence = jnp.asarray(combination_incidence(candidates.cap, 3))
    members = LorentzVector.from_collection(candidates)
    trijets = LorentzVector(*(c @ incidence for c in (members.px, members.py, members.pz, members.energy)))
    if softness is None:
        selected = candidates.p_jet * candidates.mask
        valid = (selected @ incidence == 3) & ((selected * candidates.p_btag) @ incidence >= 1)
        best = jnp.argmax(jnp.where(valid, trijets.pt, -jnp.inf), axis=-1)
        mass = jnp.take_along_axis(trijets.mass, best[:, None], axis=-1)[:, 0]
        return mass, overflow
    log_selected = jnp.where(candidates.mask, candidates.log_p_jet, _EXCLUDED) @ incidence
    log_tagged = _log_any_tagged(candidates, incidence, combination_table(candidates.cap, 3))
    choice = jax.nn.softmax(trijets.pt / softness.trijet_temperature + log_selected + log_tagged, axis=-1)
    return jnp.sum(choice * trijets.mass, axis=-1), jnp.zeros_like(overflow)


def _log_any_tagged(candidates: Collection, incidence: Array, table: np.ndarray) -> Array:
    """log P(at least one of a trijet's jets is b-tagged) = log(1 - prod(1 - b)): by ``expm1``
    of the summed ``log(1 - b)``, and where that sum is below 1e-10 (all three tags ~0, where
    ``expm1`` underflows) by ``logsumexp(log b)``, equal to it within 1e-10 there."""
    log_untagged = jnp.where(candidates.mask, candidates.log_untagged, 0.0) @ incidence
    exact = -log_untagged > 1e-10
    safe = jnp.where(exact, log_untagged, -1.0)
    small = jax.nn.logsumexp(candidates.log_tagged[:, table], axis=-1)
    return jnp.where(exact, jnp.log(-jnp.expm1(safe)), small)


def _fill(weights: Float[Array, "rows regions events"], x: Float[Array, "kinematic regions events"], binning: Binning, softness):
    """Sums of weights and of squared weights per bin, with the underflow first and the overflow
    last (``n_bins + 2`` slots, as ``hist``'s ``flow=True``). Row ``i < len(x)`` has observable
    ``x[i]``; the later rows (weight variations) share ``x[0]``. Hard bins as ``hist``'s regular
    axis (a value on the upper edge, or NaN, overflows), one scatter-add; soft bins the
    Gaussian-kernel mass of each bin around each event, computed once per observable and
    contracted with all rows that share it."""
    kinematic = x.shape[0]
    slots = binning.n_bins + 2
    if softness is None:
        z = (x - binning.low) / (binning.high - binning.low)
        inside = jnp.floor(z * binning.n_bins).astype(jnp.int32) + 1
        index = jnp.where(z < 0, 0, jnp.where(z < 1, inside, slots - 1))
        segment = index + slots * jnp.arange(x.shape[1])[:, None]  # (kinematic, regions, events)
        # one scatter per observable, each event adding a row of every weight (and its square)
        # sharing it: ~40% faster than a scatter per weight (measured)
        sums = [_scatter(jnp.concatenate([weights[:1], weights[kinematic:]]), segment[0], slots)]
        sums += [_scatter(weights[k : k + 1], segment[k], slots) for k in range(1, kinematic)]
        order = lambda i: jnp.concatenate([sums[0][i][:1]] + [s[i] for s in sums[1:]] + [sums[0][i][1:]])  # noqa: E731
        return order(0), order(1)
    cumulative = ndtr((binning.edges - x[..., None]) / softness.bandwidth)
    membership = jnp.concatenate([cumulative[..., :1], cumulative[..., 1:] - cumulative[..., :-1], 1 - cumulative[..., -1:]], axis=-1)
    own, shared = weights[:kinematic], weights[kinematic:]

    def contract(w_own, w_shared):
        return jnp.concatenate(
            [jnp.einsum("kre,kreb->krb", w_own, membership), jnp.einsum("fre,reb->frb", w_shared, membership[0])]
        )

    return contract(own, shared), contract(own**2, shared**2)


def _scatter(weights: Float[Array, "rows regions events"], segment, slots: int) -> Float[Array, "2 rows regions slots"]:
    """Sums of ``weights`` and of their squares per ``(region, slot)`` segment."""
    rows, regions = weights.shape[:2]
    payload = jnp.concatenate([weights, weights**2]).reshape(2 * rows, -1).T
    sums = jax.ops.segment_sum(payload, segment.ravel(), num_segments=regions * slots)
    return sums.T.reshape(2, rows, regions, slots)


def _soft_leading(pt: Array, p_jet: Array, n: int) -> Float[Array, "events n"]:
    """Expected pT of the 1st..n-th selected jet: jet ``j`` is the i-th selected with probability
    ``p_j x P(i of the jets before it are selected)`` (a running Poisson-binomial count), so the
    b-tag weights vary smoothly with the cuts; with 0/1 probabilities, the exact pTs."""
    start = jnp.zeros((pt.shape[0], n + 1)).at[:, 0].set(1.0)

    def add(before, jet):
        pt_j, p_j = jet
        contribution = (p_j * pt_j)[:, None] * before[:, :n]
        return (1 - p_j)[:, None] * before + p_j[:, None] * _shift(before, 1), contribution

    return jnp.sum(jax.lax.scan(add, start, (pt.T, p_jet.T))[1], axis=0)


def _region_trijet_mass(candidates: Collection, in_region, trijet_cap: int, capacity: int | None):
    """The trijet mass of the events ``in_region`` only (the others get 0): the first
    ``capacity`` of them gathered into a smaller batch, so the combinatorics cost a fraction of
    the chunk (4j2b holds ~10% of ttbar events, fewer of the others). Also says whether more
    than ``capacity`` events were in the region (then the caller recomputes with ``None``: all)."""
    n = in_region.shape[0]
    if capacity is None or capacity >= n:
        return *_trijet_mass(candidates, trijet_cap, None), jnp.asarray(False)
    index = jnp.nonzero(in_region, size=capacity, fill_value=n)[0]
    picked = jax.tree.map(lambda values: values[jnp.minimum(index, n - 1)], candidates)
    mass, overflow = _trijet_mass(picked, trijet_cap, None)
    mass = jnp.zeros(n).at[index].set(mass, mode="drop")
    overflow = jnp.zeros(n, dtype=bool).at[index].set(overflow, mode="drop")
    return mass, overflow, jnp.sum(in_region) > capacity


def _selection(jets: Collection, pt_factor, p_lepton, cuts: Cuts, softness, trijet_cap, region_capacity):
    pt = jets.pt.astype(jnp.float64) * pt_factor
    eta = jnp.abs(jets.eta.astype(jnp.float64))
    btag = jets.btagCSVV2.astype(jnp.float64)
    exists = ((jets.jetId & TIGHT_LEPTON_VETO) != 0) & jets.mask
    if softness is None:
        p_jet = _above(pt, cuts.jet_pt, _SCALES.jet_pt, None) * _below(eta, cuts.jet_eta, _SCALES.jet_eta, None) * exists
        p_btag = _above(btag, cuts.btag, _SCALES.btag, None)
        n_jets, n_tags = jnp.sum(p_jet, axis=-1), jnp.sum(p_jet * p_btag, axis=-1)
        regions = jnp.stack([(n_jets >= 4) & (n_tags == 1), (n_jets >= 4) & (n_tags >= 2)]).astype(jnp.float64)
        candidates = jets.replace(pt=pt, p_jet=p_jet, p_btag=p_btag)
    else:
        log_p_jet = _log_above(pt, cuts.jet_pt, _SCALES.jet_pt, softness) + _log_above(-eta, -cuts.jet_eta, _SCALES.jet_eta, softness)
        log_p_jet = jnp.where(exists, log_p_jet, _EXCLUDED)
        log_tagged = _log_above(btag, cuts.btag, _SCALES.btag, softness)
        log_untagged = _log_above(-btag, -cuts.btag, _SCALES.btag, softness)
        p_jet, p_btag = jnp.exp(log_p_jet), jnp.exp(log_tagged)
        counts = _jet_distribution(p_jet, p_btag)
        regions = jnp.stack([counts[:, 4, 1], counts[:, 4, 2]])
        candidates = jets.replace(pt=pt, p_jet=p_jet, p_btag=p_btag, log_p_jet=log_p_jet, log_tagged=log_tagged, log_untagged=log_untagged)
    regions = p_lepton[None, :] * regions
    ht = jnp.sum(pt * p_jet, axis=-1)
    if softness is None:
        mass, overflow, exceeded = _region_trijet_mass(candidates, regions[1] > 0, trijet_cap, region_capacity)
    else:
        (mass, overflow), exceeded = _trijet_mass(candidates, trijet_cap, softness), jnp.asarray(False)
    return regions, jnp.stack([ht, mass]), (regions[1] > 0) & overflow, p_jet, exceeded


def chunk_histograms(
    collections: dict[str, Collection],
    valid: Array,
    event: Array,
    event_weight: Float[Array, ""],
    seed: Array,
    cuts: Cuts = Cuts(),
    softness: Softness | None = None,
    trijet_cap: int = 8,
    binning: Binning = BINNING,
    region_capacity: int | None = None,
) -> tuple[Float[Array, "rows 2 slots"], Float[Array, "rows 2 slots"], Bool[Array, " events"], Bool[Array, ""]]:
    """Sums of weights and of squared weights in each bin of each region for every row of
    :data:`ROWS` (``n_bins + 2`` slots: underflow, the bins, overflow); which 4j2b events had more selected jets than ``trijet_cap`` (their trijets
    were not all considered: the driver recomputes those events with the full cap); and whether
    more than ``region_capacity`` events were in 4j2b (hard cuts compute trijets for at most that
    many events; ``None``: all; when exceeded the driver recomputes with ``None``).

    ``collections`` holds ``Electron``, ``Muon`` and ``Jet`` with the fields AGC reads; each event
    weighs ``event_weight`` (``xsec L / N``) where ``valid``; ``seed`` (uint64) draws the jet
    resolution factors (:func:`jet_resolution_factors`)."""
    jets, electrons, muons = collections["Jet"], collections["Electron"], collections["Muon"]
    p_lepton = _lepton_probability(electrons, muons, cuts, softness)
    cap = min(trijet_cap, jets.cap)
    factors = jnp.stack(
        [jnp.ones(jets.pt.shape), jnp.full(jets.pt.shape, JET_ENERGY_SCALE), jet_resolution_factors(seed, event, jets.cap)]
    )
    regions, observables, overflow, p_jet, exceeded = jax.vmap(
        lambda f: _selection(jets, f, p_lepton, cuts, softness, cap, region_capacity)
    )(factors)
    weights = event_weight * valid * regions  # (kinematic variations, regions, events)
    # b-tag weights: pT of the i-th selected jet, nominal variation only
    pt, selected = jets.pt.astype(jnp.float64), p_jet[0]
    leading_pt = compact(jets.replace(pt=pt), selected > 0.5, 4)[0].pt if softness is None else _soft_leading(pt, selected, 4)
    btag = [1 + sign * BTAG_SLOPE * leading_pt[:, i] for i in range(4) for sign in (1, -1)]
    scale = [jnp.full(valid.shape, 1 + WJETS_SCALE), jnp.full(valid.shape, 1 - WJETS_SCALE)]
    nominal_rows = jnp.stack(btag + scale)[:, None, :] * weights[0][None]
    weights = jnp.concatenate([weights, nominal_rows])
    sumw, sumw2 = _fill(weights, observables, binning, softness)
    return sumw, sumw2, jnp.any(overflow, axis=0), jnp.any(exceeded)
