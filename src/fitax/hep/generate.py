"""NanoAOD-like ROOT files for the five AGC processes, for tests and scale.

The one real NanoAOD file at hand holds 200 events, none passing the AGC selection. This
generator writes files with the branches the AGC analysis reads (``Electron_*``, ``Muon_*``,
``Jet_*`` with NanoAOD's names, types and conventions: jets ordered by decreasing pT,
``Jet_jetId`` bit 2 = tight lepton veto, float32 kinematics, ``genWeight``) and kinematics
close enough to the real processes that the selection, its regions and the fit behave as in
AGC: a hadronically decaying top (b + W -> two quarks, decayed and boosted exactly, so the
4j2b trijet mass peaks near 173 GeV) plus a leptonic top's b jet in ttbar, one b jet in single
top, mostly light jets in W+jets; b-tag discriminants, lepton identification, impact
parameters and isolation drawn so that a fraction of objects fails each cut. It is a
parametric simulation, not a physics generator: yields and shapes are plausible, not CMS's.

Example:
    >>> write_nanoaod("ttbar.root", "ttbar", 10_000, seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

__all__ = ["AGC_SAMPLES", "PROCESSES", "write_agc_inputs", "write_nanoaod"]

TOP_MASS, W_MASS, B_MASS = 172.5, 80.4, 4.8

# Per process: chance of 0/1/2 prompt leptons, mean number of extra light jets, whether it has
# a hadronic top (3 jets), how many further b jets, and the fraction of events with a b pair
# (W+jets: W + bb).
PROCESSES: dict[str, dict] = {
    "ttbar": {"leptons": (0.45, 0.45, 0.10), "light_jets": 1.5, "hadronic_top": True, "b_jets": 1},
    "single_top_s_chan": {"leptons": (0.3, 0.7, 0.0), "light_jets": 1.5, "hadronic_top": False, "b_jets": 2},
    "single_top_t_chan": {"leptons": (0.3, 0.7, 0.0), "light_jets": 2.5, "hadronic_top": False, "b_jets": 1},
    "single_top_tW": {"leptons": (0.3, 0.55, 0.15), "light_jets": 1.5, "hadronic_top": True, "b_jets": 0},
    "wjets": {"leptons": (0.1, 0.9, 0.0), "light_jets": 1.3, "hadronic_top": False, "b_jets": 0, "bb_fraction": 0.02},
}


def _isotropic_two_body(rng, parent_mass, mass_a, mass_b, n):
    """Momenta of two daughters, back to back and isotropic in the parent's rest frame."""
    p = np.sqrt((parent_mass**2 - (mass_a + mass_b) ** 2) * (parent_mass**2 - (mass_a - mass_b) ** 2)) / (2 * parent_mass)
    cos_theta = rng.uniform(-1, 1, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    sin_theta = np.sqrt(1 - cos_theta**2)
    direction = np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], axis=-1) * p
    energy_a = np.hypot(p, mass_a) * np.ones(n)
    energy_b = np.hypot(p, mass_b) * np.ones(n)
    return np.concatenate([direction, energy_a[:, None]], axis=-1), np.concatenate([-direction, energy_b[:, None]], axis=-1)


def _boost(four, parent):
    """``four`` (rest frame of ``parent``) boosted to the frame where ``parent`` has its momentum."""
    beta = parent[:, :3] / parent[:, 3:4]
    beta2 = np.sum(beta**2, axis=-1, keepdims=True)
    gamma = 1 / np.sqrt(1 - beta2)
    bp = np.sum(beta * four[:, :3], axis=-1, keepdims=True)
    factor = np.where(beta2 > 0, (gamma - 1) * bp / np.where(beta2 > 0, beta2, 1), 0)
    momentum = four[:, :3] + factor * beta + gamma * beta * four[:, 3:4]
    energy = gamma * (four[:, 3:4] + bp)
    return np.concatenate([momentum, energy], axis=-1)


def _to_ptetaphim(four):
    px, py, pz, e = four.T
    pt = np.hypot(px, py)
    mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0))
    return pt, np.arcsinh(pz / pt), np.arctan2(py, px), mass


def _hadronic_top(rng, n):
    pt = rng.exponential(90.0, n) + 20
    eta, phi = rng.normal(0, 1.2, n), rng.uniform(-np.pi, np.pi, n)
    momentum = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)
    top = np.concatenate([momentum, np.sqrt(np.sum(momentum**2, -1) + TOP_MASS**2)[:, None]], axis=-1)
    b_rest, w_rest = _isotropic_two_body(rng, TOP_MASS, B_MASS, W_MASS, n)
    q1_rest, q2_rest = _isotropic_two_body(rng, W_MASS, 0.0, 0.0, n)
    w = _boost(w_rest, top)
    resolution = lambda: rng.normal(1, 0.1, n)[:, None]  # noqa: E731  (jet energy resolution)
    jets = [_boost(b_rest, top) * resolution(), _boost(q1_rest, w) * resolution(), _boost(q2_rest, w) * resolution()]
    return [_to_ptetaphim(j) for j in jets], [True, False, False]


def _single_jets(rng, n, count_mean, is_b):
    count = rng.poisson(count_mean, n) if count_mean else np.zeros(n, int)
    pts, etas, phis, masses, events, bs = [], [], [], [], [], []
    total = int(count.sum())
    events.append(np.repeat(np.arange(n), count))
    pts.append(rng.exponential(45.0 if is_b else 30.0, total) + 15)
    etas.append(rng.normal(0, 1.6, total))
    phis.append(rng.uniform(-np.pi, np.pi, total))
    masses.append(pts[-1] * rng.uniform(0.05, 0.2, total))
    bs.append(np.full(total, is_b))
    return np.concatenate(events), np.concatenate(pts), np.concatenate(etas), np.concatenate(phis), np.concatenate(masses), np.concatenate(bs)


def _jets(rng, process: Mapping, n):
    parts = [_single_jets(rng, n, process["light_jets"], False)]
    for _ in range(process["b_jets"]):
        event = np.arange(n)[rng.uniform(size=n) < 0.9]  # the b escapes acceptance 10% of the time
        part = _single_jets(rng, event.size, 1.0, True)
        parts.append((event[part[0]],) + part[1:])
    pair = np.arange(n)[rng.uniform(size=n) < process.get("bb_fraction", 0.0)]
    for _ in range(2 if pair.size else 0):
        part = _single_jets(rng, pair.size, 1.0, True)
        parts.append((pair[part[0]],) + part[1:])
    if process["hadronic_top"]:
        kinematics, b_flags = _hadronic_top(rng, n)
        for (pt, eta, phi, mass), is_b in zip(kinematics, b_flags):
            parts.append((np.arange(n), pt, eta, phi, mass, np.full(n, is_b)))
    event, pt, eta, phi, mass, is_b = (np.concatenate(column) for column in zip(*parts))
    keep = pt > 15  # NanoAOD stores jets above 15 GeV
    event, pt, eta, phi, mass, is_b = event[keep], pt[keep], eta[keep], phi[keep], mass[keep], is_b[keep]
    order = np.lexsort((-pt, event))
    event, pt, eta, phi, mass, is_b = event[order], pt[order], eta[order], phi[order], mass[order], is_b[order]
    btag = np.where(is_b, rng.beta(5.0, 1.5, pt.size), rng.beta(1.0, 8.0, pt.size))
    jet_id = np.where(rng.uniform(size=pt.size) < 0.97, 6, 2).astype(np.int32)
    fields = {"pt": pt, "eta": eta, "phi": phi, "mass": mass, "btagCSVV2": btag, "jetId": jet_id}
    return np.bincount(event, minlength=n), fields


def _leptons(rng, probabilities, n):
    prompt = rng.choice(3, size=n, p=probabilities)
    fake = rng.poisson(0.3, n)
    count = prompt + fake
    total = int(count.sum())
    is_prompt = np.concatenate([np.arange(c) < p for c, p in zip(count, prompt)]) if total else np.zeros(0, bool)
    pt = np.where(is_prompt, rng.exponential(40.0, total) + 15, rng.exponential(8.0, total) + 5)
    eta = rng.normal(0, 1.3, total)
    phi = rng.uniform(-np.pi, np.pi, total)
    is_electron = rng.uniform(size=total) < 0.5
    sip3d = np.where(is_prompt, rng.exponential(1.5, total), rng.exponential(6.0, total))
    identified = rng.uniform(size=total) < np.where(is_prompt, 0.9, 0.3)
    isolation = np.where(is_prompt, rng.exponential(0.04, total), rng.exponential(0.4, total))
    return count, is_electron, pt, eta, phi, sip3d, identified, isolation


def _collection(counts, fields):
    import awkward as ak

    return ak.zip({name: ak.unflatten(values, counts) for name, values in fields.items()})


def _events(rng, process_name: str, n: int, first_event: int) -> dict:
    process = PROCESSES[process_name]
    jet_counts, jets = _jets(rng, process, n)
    count, is_electron, pt, eta, phi, sip3d, identified, isolation = _leptons(rng, process["leptons"], n)
    event = np.repeat(np.arange(n), count)
    electrons, muons = {}, {}
    for flag, store in ((True, electrons), (False, muons)):
        pick = is_electron == flag
        order = np.lexsort((-pt[pick], event[pick]))
        ev = event[pick][order]
        store["counts"] = np.bincount(ev, minlength=n)
        store["fields"] = {
            "pt": pt[pick][order].astype(np.float32),
            "eta": eta[pick][order].astype(np.float32),
            "phi": phi[pick][order].astype(np.float32),
            "mass": np.full(ev.size, 0.000511 if flag else 0.1057, np.float32),
            "sip3d": sip3d[pick][order].astype(np.float32),
        }
        if flag:
            store["fields"]["cutBased"] = np.where(identified[pick][order], 4, rng.integers(0, 4, ev.size)).astype(np.int32)
        else:
            store["fields"]["tightId"] = identified[pick][order]
            store["fields"]["pfRelIso04_all"] = isolation[pick][order].astype(np.float32)
    jet_fields = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in jets.items()}
    return {
        "run": np.ones(n, np.uint32),
        "event": np.arange(first_event, first_event + n, dtype=np.uint64),
        "genWeight": np.ones(n, np.float32),
        "Jet": _collection(jet_counts, jet_fields),
        "Electron": _collection(electrons["counts"], electrons["fields"]),
        "Muon": _collection(muons["counts"], muons["fields"]),
    }


def _nanoaod_field_name(collection: str, field: str) -> str:
    return f"{collection}_{field}"


def _nanoaod_counter_name(collection: str) -> str:
    return f"n{collection}"


def write_nanoaod(path, process: str, n_events: int, *, seed: int = 0, chunk: int = 500_000) -> str:
    """Write ``n_events`` events of ``process`` (a key of :data:`PROCESSES`) to ``path``, tree
    ``Events``, in baskets of ``chunk`` events; returns the path. The file is written to a
    temporary name and renamed, so an interrupted run leaves no half file."""
    import uproot

    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; expected one of {sorted(PROCESSES)}")
    path = os.fspath(path)
    rng = np.random.default_rng(seed)
    partial = path + ".partial"
    with uproot.recreate(partial) as file:
        written = 0
        while written < n_events:
            n = min(chunk, n_events - written)
            events = _events(rng, process, n, written)
            if written == 0:
                types = {name: getattr(values, "type", getattr(values, "dtype", None)) for name, values in events.items()}
                tree = file.mktree("Events", types, field_name=_nanoaod_field_name, counter_name=_nanoaod_counter_name)
            tree.extend(events)
            written += n
    os.replace(partial, path)
    return path


# AGC's samples: every process nominal, and ttbar's generator variations (separate samples).
AGC_SAMPLES = tuple((p, "nominal") for p in PROCESSES) + tuple(("ttbar", v) for v in ("scaleup", "scaledown", "ME_var", "PS_var"))


def write_agc_inputs(folder, events: int, *, files: int = 1, seed: int = 0, processes=None, variation_fraction: float = 0.25) -> str:
    """Write NanoAOD-like files for AGC's samples to ``folder`` and the inputs file describing
    them (``folder/inputs.json``, AGC's format, relative paths); returns its path.

    ``events`` per nominal sample, split over ``files`` files; ttbar's variations get
    ``variation_fraction`` of that (as AGC's variation samples are smaller). ``processes``
    limits the processes (default: all five)."""
    import json

    from ..io import atomic_write

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    wanted = set(PROCESSES if processes is None else processes)
    unknown = wanted - set(PROCESSES)
    if unknown:
        raise ValueError(f"unknown process {sorted(unknown)}; expected some of {sorted(PROCESSES)}")
    document: dict = {}
    for index, (process, variation) in enumerate(s for s in AGC_SAMPLES if s[0] in wanted):
        total = events if variation == "nominal" else max(1, int(events * variation_fraction))
        entries = []
        for part in range(files):
            n = total // files + (1 if part < total % files else 0)
            if n == 0:
                continue
            name = f"{process}__{variation}__{part}.root"
            write_nanoaod(os.path.join(folder, name), process, n, seed=seed * 10_000 + index * 100 + part)
            entries.append({"path": name, "nevts": n})
        document.setdefault(process, {})[variation] = {"nevts_total": total, "files": entries}
    path = os.path.join(folder, "inputs.json")
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(document, indent=1) + "\n"))
    return path
