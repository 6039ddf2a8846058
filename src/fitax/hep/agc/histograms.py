"""AGC histograms of a set of samples: the kernel run over every chunk of every file.

:func:`fill_histograms` reads each sample's files in chunks, runs the compiled kernel
(:func:`fitax.hep.agc.selection.chunk_histograms`) on each and sums on the device; a chunk's
shapes come from a few buckets, so a whole file set compiles a handful of times. Events whose
4j2b trijets did not fit the kernel's trijet cap are recomputed exactly with the chunk's full
jet cap (a small second call on those events only). The result, :class:`Histograms`, names
each histogram as AGC's ``histograms.root`` does (``4j1b_ttbar``, ``4j2b_ttbar_pt_scale_up``,
``4j1b_wjets_scale_var_down``, ``4j2b_pseudodata``, ...) and writes that file with uproot.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ...device import to_device
from ...io import atomic_write
from ..nanoaod import EventChunk, read_chunks, subset
from .inputs import Sample
from .selection import BINNING, REGIONS, ROWS, Binning, Cuts, Softness, chunk_histograms

__all__ = [
    "FIELDS", "TRIJET_CAP", "Histograms", "chunk_sums", "kernel", "file_sums", "fill_histograms", "histogram_names",
    "read_agc_chunks", "rebin_for_fit", "rebin_values", "resolution_key",
]  # fmt: skip

FIELDS = {
    "Electron": ("pt", "eta", "cutBased", "sip3d"),
    "Muon": ("pt", "eta", "tightId", "sip3d", "pfRelIso04_all"),
    "Jet": ("pt", "eta", "phi", "mass", "btagCSVV2", "jetId"),
}
"""The NanoAOD branches the AGC selection reads (``Jet_pt``, ...), and ``event``."""

TRIJET_CAP = 8
BLOCK_SIZE = 16_384
"""Events per kernel call: uproot reads ``step_size`` events, the kernel takes them in blocks
of this many, whose arrays stay in the CPU's caches (2x faster per event than 100000-event
blocks, measured on one core)."""

# Trijets are computed for at most size / REGION_FRACTION events of a chunk (the 4j2b ones: a
# few % of a chunk of events with at most 4 jets, 9-13% with 5-8, up to ~30% beyond, which
# start at half); a chunk with more is recomputed with twice the capacity, up to all its events.
# On the benchmark's 1.2 M events 1 of 58 chunks of 5-8 jets was recomputed once (measured).
REGION_FRACTION = 8
_MIN_REGION_CAPACITY = 64

kernel = jax.jit(chunk_histograms, static_argnames=("trijet_cap", "binning", "region_capacity"))
"""The compiled :func:`~fitax.hep.agc.selection.chunk_histograms` (one per shape, cap and mode)."""


class Histograms:
    """Named histograms (sums of weights and of squared weights) on one binning.

    Example:
        >>> h = fill_histograms(read_inputs("inputs.json"))  # doctest: +SKIP
        >>> h["4j2b_ttbar"]  # doctest: +SKIP
        array([...])  # 25 bins, 50-550 GeV
    """

    def __init__(self, sumw: dict[str, np.ndarray], sumw2: dict[str, np.ndarray], binning: Binning, notes: Sequence[str] = (), flow: dict | None = None):
        self.sumw = dict(sumw)
        self.sumw2 = dict(sumw2)
        self.binning = binning
        self.notes = tuple(notes)
        # per name ``[[under, over] of sumw, [under, over] of sumw2]``; rebinned histograms have none
        self.flow = dict(flow or {})

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.binning.low, self.binning.high, self.binning.n_bins + 1)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.sumw[name]
        except KeyError:
            raise KeyError(f"no histogram {name!r}; there are {sorted(self.sumw)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.sumw

    def __repr__(self) -> str:
        b = self.binning
        return f"Histograms({len(self.sumw)} histograms, {b.n_bins} bins over {b.low:g}-{b.high:g} GeV)"

    def write_root(self, path) -> str:
        """Write every histogram as a TH1D (with its sums of squared weights) to ``path``,
        through a temporary file renamed at the end (an interrupted write leaves no half file)."""
        import uproot

        def write(tmp):
            with uproot.recreate(tmp) as file:
                for name in sorted(self.sumw):
                    file[name] = _th1d(name, self.sumw[name], self.sumw2[name], self.edges, self.flow.get(name))

        return os.fspath(atomic_write(path, write))


def _th1d(name: str, sumw: np.ndarray, sumw2: np.ndarray, edges: np.ndarray, flow: np.ndarray | None):
    from uproot.writing.identify import to_TAxis, to_TH1x

    flow = np.zeros((2, 2)) if flow is None else np.asarray(flow)
    centres = 0.5 * (edges[1:] + edges[:-1])
    axis = to_TAxis("xaxis", "observable [GeV]", len(sumw), float(edges[0]), float(edges[-1]))
    # ROOT's statistics (fTsumw, ...) count the bins in range, as TH1::Fill does
    return to_TH1x(
        name, name, np.concatenate([[flow[0, 0]], sumw, [flow[0, 1]]]), float(np.sum(sumw) + flow[0].sum()),
        float(np.sum(sumw)), float(np.sum(sumw2)), float(np.sum(sumw * centres)), float(np.sum(sumw * centres**2)),
        np.concatenate([[flow[1, 0]], sumw2, [flow[1, 1]]]), axis,
    )  # fmt: skip


def resolution_key(seed: int, sample: Sample, index: int) -> np.uint64:
    """The seed of the jet resolution factors of file ``index`` of ``sample``."""
    return np.uint64((int(seed) << 32) ^ zlib.crc32(f"{sample.label}/{index}".encode()))


def chunk_sums(chunk: EventChunk, weight, key, cuts: Cuts = Cuts(), softness: Softness | None = None, binning: Binning = BINNING):
    """Sums of weights and of squared weights (``(rows, regions, bins)``, rows as
    :data:`~fitax.hep.agc.selection.ROWS`) of one chunk whose events weigh ``weight``, with
    the jet resolution factors of ``key``; events beyond the trijet cap recomputed exactly."""
    def run(piece: EventChunk, cap: int, capacity: int | None):
        return kernel(
            piece.collections, piece.valid, piece.scalars["event"], weight, key, cuts, softness,
            trijet_cap=cap, binning=binning, region_capacity=capacity,
        )  # fmt: skip

    for capacity in _region_capacities(chunk):
        sumw, sumw2, overflow, exceeded = run(chunk, TRIJET_CAP, capacity)
        if not exceeded:
            break
    overflow = np.flatnonzero(np.asarray(overflow))
    full_cap = chunk.collections["Jet"].cap
    if overflow.size and full_cap > TRIJET_CAP:
        few = subset(chunk, overflow)
        capped_w, capped_w2, _, _ = run(few, TRIJET_CAP, None)
        exact_w, exact_w2, _, _ = run(few, full_cap, None)
        sumw, sumw2 = sumw - capped_w + exact_w, sumw2 - capped_w2 + exact_w2
    return sumw, sumw2


def _region_capacities(chunk: EventChunk):
    """The trijet capacities to try on ``chunk``, smallest first, the last (``None``) all events:
    a chunk of events with more than :data:`TRIJET_CAP` jets (see :func:`read_agc_chunks`)
    starts at half (~20-30% of them are 4j2b)."""
    fraction = REGION_FRACTION if chunk.collections["Jet"].cap <= TRIJET_CAP else 2
    capacity = max(_MIN_REGION_CAPACITY, chunk.size // fraction)
    while capacity < chunk.size:
        yield capacity
        capacity *= 2
    yield None


def read_agc_chunks(path, step_size: int = 200_000, max_cap: int | None = None):
    """The chunks of one file the kernel takes: AGC's branches and ``event``, in blocks of
    :data:`BLOCK_SIZE` events grouped by jet multiplicity (``group_by="Jet"`` of
    :func:`~fitax.hep.nanoaod.read_chunks`: a chunk of events with at most 4 jets pads to 4,
    not to the file's largest multiplicity)."""
    return read_chunks(path, FIELDS, scalars=("event",), step_size=step_size, block_size=BLOCK_SIZE, max_cap=max_cap, group_by="Jet")


def file_sums(sample: Sample, index: int, cuts: Cuts = Cuts(), softness: Softness | None = None, binning: Binning = BINNING,
              step_size: int = 200_000, seed: int = 0, max_cap: int | None = None, progress=None) -> tuple:
    """``(sumw, sumw2, events beyond max_cap, events)`` of file ``index`` of ``sample`` as NumPy
    arrays (rows, regions, bins): the unit of work of a run, in this process or on a worker."""
    weight = to_device(np.float64(sample.event_weight))
    key = resolution_key(seed, sample, index)
    sumw = sumw2 = np.zeros((len(ROWS), len(REGIONS), binning.n_bins + 2))  # a file may hold no events
    over_cap = events = 0
    for chunk in read_agc_chunks(sample.files[index], step_size, max_cap):
        w, w2 = chunk_sums(chunk, weight, key, cuts, softness, binning)
        sumw, sumw2 = sumw + w, sumw2 + w2
        over_cap += sum(chunk.over_cap.values())
        events += chunk.n_events
        if progress is not None:
            progress.update(chunk.n_events)
    return np.asarray(sumw), np.asarray(sumw2), over_cap, events


def _worker_file_sums(*args):
    from ...programs import enable_compilation_cache

    enable_compilation_cache()  # a worker reads the kernels others compiled
    return file_sums(*args)


def _all_file_sums(samples, options: tuple, workers: int, scheduler, bar) -> list:
    """Per (sample, file) its sums, in this process or over Dask workers."""
    units = [(s, i) for s in samples for i in range(len(s.files))]
    if workers == 1 and scheduler is None:
        return [file_sums(s, i, *options, progress=bar) for s, i in units]
    from dask.distributed import Client, LocalCluster, as_completed

    os.environ.setdefault("FITAX_CPU_DEVICES", "1")  # one JAX CPU device per worker: no oversubscription
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40)
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            futures = [client.submit(_worker_file_sums, s, i, *options, pure=False) for s, i in units]
            for future in as_completed(futures):
                bar.update(future.result()[3])
            return [future.result() for future in futures]
    finally:
        if cluster is not None:
            cluster.close()


def histogram_names(sample: Sample) -> list[tuple[int, str]]:
    """(row of :data:`ROWS`, histogram name suffix) kept for a sample, as AGC fills them:
    systematics only for nominal samples, the scale variation only for W+jets."""
    if sample.variation != "nominal":
        return [(0, f"{sample.process}_{sample.variation}")]
    kept = []
    for row, name in enumerate(ROWS):
        if name.startswith("scale_var") and sample.process != "wjets":
            continue
        kept.append((row, sample.process if name == "nominal" else f"{sample.process}_{name}"))
    return kept


def fill_histograms(
    samples: Sequence[Sample],
    cuts: Cuts = Cuts(),
    *,
    softness: Softness | None = None,
    binning: Binning = BINNING,
    step_size: int = 200_000,
    seed: int = 0,
    max_cap: int | None = None,
    progress: bool = True,
    workers: int = 1,
    scheduler: str | None = None,
) -> Histograms:
    """The AGC histograms of ``samples`` (from :func:`~fitax.hep.agc.inputs.read_inputs`), with
    ``{region}_pseudodata`` as AGC builds it ((ttbar ME_var + PS_var) / 2 + W+jets) when those
    samples are there, else the sum of the nominal samples (said in ``notes``).

    With ``workers > 1`` (a local cluster of single-threaded processes) or a Dask ``scheduler``
    address, the files are processed in parallel, one task per file (:func:`file_sums`): Dask,
    as for photometry, because the same call spreads a file set over many machines, where JAX
    sharding would only spread one process's arrays over its devices."""
    sumw: dict[str, np.ndarray] = {}
    sumw2: dict[str, np.ndarray] = {}
    flow: dict[str, np.ndarray] = {}
    notes = []
    total = sum(sample.n_generated for sample in samples)
    options = (cuts, softness, binning, step_size, seed, max_cap)
    with tqdm(total=total, unit="events", desc="AGC histograms", disable=not progress) as bar:
        per_file = iter(_all_file_sums(samples, options, workers, scheduler, bar))
        for sample in samples:
            parts = [next(per_file) for _ in sample.files]
            w, w2 = sum(p[0] for p in parts), sum(p[1] for p in parts)
            over_cap = sum(p[2] for p in parts)
            if over_cap:
                notes.append(f"{sample.label}: {over_cap} events had more objects than max_cap={max_cap}; their extra objects were dropped")
            for row, suffix in histogram_names(sample):
                for r, region in enumerate(REGIONS):
                    sumw[f"{region}_{suffix}"] = w[row, r, 1:-1]
                    sumw2[f"{region}_{suffix}"] = w2[row, r, 1:-1]
                    flow[f"{region}_{suffix}"] = np.stack([w[row, r, [0, -1]], w2[row, r, [0, -1]]])
    processes = [s.process for s in samples if s.variation == "nominal"]
    _add_pseudodata(sumw, sumw2, notes, processes)
    flow_w, flow_w2 = {k: v[0] for k, v in flow.items()}, {k: v[1] for k, v in flow.items()}
    _add_pseudodata(flow_w, flow_w2, [], processes)
    flow = {k: np.stack([flow_w[k], flow_w2[k]]) for k in flow_w}
    return Histograms(sumw, sumw2, binning, notes, flow)


def _add_pseudodata(sumw, sumw2, notes, processes) -> None:
    for region in REGIONS:
        parts = [f"{region}_ttbar_ME_var", f"{region}_ttbar_PS_var", f"{region}_wjets"]
        if all(name in sumw for name in parts):
            sumw[f"{region}_pseudodata"] = (sumw[parts[0]] + sumw[parts[1]]) / 2 + sumw[parts[2]]
            sumw2[f"{region}_pseudodata"] = (sumw2[parts[0]] + sumw2[parts[1]]) / 4 + sumw2[parts[2]]
        else:
            nominal = [f"{region}_{process}" for process in processes]
            sumw[f"{region}_pseudodata"] = sum(sumw[name] for name in nominal)
            sumw2[f"{region}_pseudodata"] = sum(sumw2[name] for name in nominal)
            if region == REGIONS[0]:
                notes.append("pseudodata: the sum of the nominal samples (AGC's needs ttbar ME_var, ttbar PS_var and wjets)")


def _fit_rebinning(b: Binning) -> tuple[int, Binning]:
    width = (b.high - b.low) / b.n_bins
    first = int(round((110.0 - b.low) / width))
    if not np.isclose(b.low + first * width, 110.0) or (b.n_bins - first) % 2:
        raise ValueError(f"cannot rebin {b} to AGC's 11 bins over 110-550 GeV")
    return first, Binning((b.n_bins - first) // 2, 110.0, b.high)


def rebin_values(values, binning: Binning = BINNING):
    """AGC's fit binning of one histogram's bins (NumPy or JAX): the bins from 110 GeV on,
    merged in pairs (25 bins over 50-550 GeV -> 11 bins over 110-550 GeV), as its
    ``h[110j::hist.rebin(2)]``."""
    first, _ = _fit_rebinning(binning)
    return values[..., first:].reshape(values.shape[:-1] + (-1, 2)).sum(axis=-1)


def rebin_for_fit(histograms: Histograms) -> Histograms:
    """Every histogram in AGC's fit binning (:func:`rebin_values`)."""
    _, binning = _fit_rebinning(histograms.binning)
    rebin = lambda v: rebin_values(v, histograms.binning)  # noqa: E731
    sumw = {k: rebin(v) for k, v in histograms.sumw.items()}
    return Histograms(sumw, {k: rebin(v) for k, v in histograms.sumw2.items()}, binning, histograms.notes)
