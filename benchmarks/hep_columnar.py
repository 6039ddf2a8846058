"""fitax.hep.agc against an awkward + NumPy implementation of the same AGC analysis, in one run.

Both sides compute every AGC histogram (2 regions x nominal, JES, JER, 8 b-tag and 2 W+jets
weight variations, and the ttbar variation samples) of the same generated NanoAOD-like files
(``fitax hep generate``), and the script checks that they agree (every histogram except the
JER one, whose random factors each side draws itself, as AGC does: within 1e-12 relative).
The reference is tests/agc_reference.py, written as AGC's coffea processor does it with
awkward 2 (``ak.combinations``, jagged masks) and ``np.histogram``.

What is timed (median of ``--repeats`` after one untimed warm-up run, for both sides alike):

* kernel: the analysis of events already in memory (fitax: ``EventChunk`` device arrays read
  beforehand, grouped by jet multiplicity as ``fill_histograms`` reads them; awkward: the
  arrays uproot returned, read beforehand), I/O excluded. Both draw
  their jet-resolution factors inside (fitax from its keys, awkward with ``np.random.normal``
  as AGC's ``jet_pt_resolution``).
* end to end: reading the files with uproot in chunks of ``--step-size`` events and the
  analysis (fitax: ``fill_histograms``; awkward: ``uproot.iterate`` + the reference per chunk).
* compile: seconds JAX spent tracing and compiling during fitax's warm-up (its compile events),
  and programs compiled during the timed runs (0: no recompilation across chunks).
* memory: peak resident memory of a fresh process running the end-to-end job (``--one``) a
  second time, above its footprint before it (Linux's VmHWM, reset before the job), per million events
  of one chunk (both stream chunk by chunk; the peak scales with the chunk, not the file set).
* shell: ``fitax hep agc`` run twice as a new process (cold: empty caches; warm: caches filled),
  which also builds the workspace, fits it and plots (no awkward counterpart).

Throughput is per core: by default the process is pinned to one core (``--cores 1``), so
XLA's threads and NumPy share one core, as each of a batch system's single-core jobs would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def _pin(cores: int) -> None:
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(available[:cores]))


def _fitax_kernel(loaded):
    import jax

    from fitax.hep.agc.histograms import chunk_sums, resolution_key

    sums = [chunk_sums(chunk, sample.event_weight, resolution_key(0, sample, index)) for chunk, sample, index in loaded]
    jax.block_until_ready(sums)
    return sums


def _awkward_kernel(loaded):
    import awkward as ak
    import numpy as np

    import agc_reference

    out = {}
    for events, sample in loaded:
        counts = ak.num(events.Jet_pt)
        resolution = ak.unflatten(np.random.normal(np.ones(int(ak.sum(counts))), 0.05), counts)
        for name, (w, w2) in agc_reference.histograms(events, sample.event_weight, sample.process, sample.variation, resolution).items():
            old = out.get(name, (0.0, 0.0))
            out[name] = (old[0] + w, old[1] + w2)
    return out


def _awkward_end_to_end(samples, step_size):
    import uproot

    import agc_reference

    out = {}
    for sample in samples:
        for path in sample.files:
            tree = uproot.open(path)["Events"]
            for events in tree.iterate(agc_reference.BRANCHES, step_size=step_size):
                for name, value in _awkward_kernel([(events, sample)]).items():
                    old = out.get(name, (0.0, 0.0))
                    out[name] = (old[0] + value[0], old[1] + value[1])
    return out


def _check_agreement(fitax_histograms, awkward_histograms) -> float:
    import numpy as np

    worst = 0.0
    for name, (w, _) in awkward_histograms.items():
        if "pt_res" in name:
            continue
        flow = fitax_histograms.flow[name][0]  # the reference's boost-histogram has flow bins
        ours = np.concatenate([flow[:1], fitax_histograms[name], flow[1:]])
        scale = np.maximum(np.abs(w), 1e-300)
        worst = max(worst, float(np.max(np.abs(ours - w) / scale)))
    return worst


class _Compiles:
    def __init__(self):
        self.count = 0

    def __call__(self, event, *_, **__):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


def _one(side: str, inputs: str, step_size: int) -> None:
    """Child process: the end-to-end job of one side; prints peak RSS growth (MB) and events."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from fitax.hep.agc import fill_histograms, read_inputs

    samples = read_inputs(inputs)
    import agc_reference  # noqa: F401  (imports counted in the baseline for both sides)
    import awkward  # noqa: F401
    import uproot  # noqa: F401

    def job():
        if side == "fitax":
            fill_histograms(samples, step_size=step_size, progress=False)
        else:
            _awkward_end_to_end(samples, step_size)

    job()  # warm-up: fitax compiles here (XLA's compiler memory is not the job's)
    baseline = _memory_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    job()
    print(f"{_memory_mb('VmHWM') - baseline:.1f} {min(step_size, max(s.n_generated for s in samples))}")


def _memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events per nominal sample (ttbar variations: a quarter)")
    parser.add_argument("--files", type=int, default=2, help="files per sample")
    parser.add_argument("--step-size", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=1, help="cores the process may use (default 1: per-core throughput)")
    parser.add_argument("--data", default=None, help="folder of generated files to reuse (default: a temporary one)")
    parser.add_argument("--no-shell", action="store_true", help="skip the command-line timings")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "INPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _pin(args.cores)
    if args.one:
        _one(args.one[0], args.one[1], args.step_size)
        return 0

    import jax

    jax.config.update("jax_enable_x64", True)
    import statistics

    import numpy as np
    import uproot

    import agc_reference
    from _common import CompileClock, machine_summary, print_table, shell_times, write_json
    from fitax.hep.agc import fill_histograms, read_inputs
    from fitax.hep.agc.histograms import read_agc_chunks
    from fitax.hep.generate import write_agc_inputs

    folder = Path(args.data or tempfile.mkdtemp(prefix="fitax-agc-bench-"))
    inputs = folder / "inputs.json"
    if not inputs.exists():
        start = time.perf_counter()
        write_agc_inputs(folder, args.events, files=args.files, seed=1)
        print(f"generated {folder} in {time.perf_counter() - start:.1f} s")
    samples = read_inputs(inputs)
    n_events = sum(s.n_generated for s in samples)
    print(machine_summary())
    print(f"{n_events} events in {sum(len(s.files) for s in samples)} files; {args.cores} core(s); chunks of {args.step_size}")

    fitax_loaded = [
        (chunk, sample, index)
        for sample in samples
        for index, path in enumerate(sample.files)
        for chunk in read_agc_chunks(path, args.step_size)
    ]
    awkward_loaded = [
        (events, sample)
        for sample in samples
        for path in sample.files
        for events in uproot.open(path)["Events"].iterate(agc_reference.BRANCHES, step_size=args.step_size)
    ]

    compiles = _Compiles()
    jax.monitoring.register_event_duration_secs_listener(compiles)
    with CompileClock() as clock:
        _fitax_kernel(fitax_loaded)
    compiled_at_warmup = compiles.count
    fitax_kernel = [_timed(lambda: _fitax_kernel(fitax_loaded)) for _ in range(args.repeats)]
    recompiled = compiles.count - compiled_at_warmup
    _awkward_kernel(awkward_loaded)
    awkward_kernel = [_timed(lambda: _awkward_kernel(awkward_loaded)) for _ in range(args.repeats)]

    fill_histograms(samples, step_size=args.step_size, progress=False)
    before = compiles.count
    fitax_e2e = [_timed(lambda: fill_histograms(samples, step_size=args.step_size, progress=False)) for _ in range(args.repeats)]
    recompiled += compiles.count - before
    fitax_result = fill_histograms(samples, step_size=args.step_size, progress=False)
    awkward_result = _awkward_end_to_end(samples, args.step_size)
    awkward_e2e = [_timed(lambda: _awkward_end_to_end(samples, args.step_size)) for _ in range(args.repeats)]
    worst = _check_agreement(fitax_result, awkward_result)

    memory = {}
    for side in ("fitax", "awkward"):
        done = subprocess.run(
            [sys.executable, __file__, "--one", side, str(inputs), "--step-size", str(args.step_size), "--cores", str(args.cores)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        grown, chunk = done.stdout.split()
        memory[side] = float(grown) / int(chunk) * 1e6

    rows = []
    for what, ours, theirs in (("kernel (I/O excluded)", fitax_kernel, awkward_kernel), ("end to end (I/O included)", fitax_e2e, awkward_e2e)):
        f, a = statistics.median(ours), statistics.median(theirs)
        rows.append({"task": what, "fitax_s": f, "awkward_s": a, "fitax_events_per_s": n_events / f, "awkward_events_per_s": n_events / a, "ratio": a / f})
    summary = {
        "events": n_events,
        "cores": args.cores,
        "step_size": args.step_size,
        "fitax_compile_s": clock.seconds,
        "programs_compiled_at_warmup": compiled_at_warmup,
        "programs_compiled_after_warmup": recompiled,
        "peak_mb_per_million_events_fitax": memory["fitax"],
        "peak_mb_per_million_events_awkward": memory["awkward"],
        "worst_relative_difference": worst,
    }
    print_table(
        rows,
        [("task", "task", "s"), ("fitax_s", "fitax s", ".3f"), ("awkward_s", "awkward s", ".3f"),
         ("fitax_events_per_s", "fitax ev/s", ".3g"), ("awkward_events_per_s", "awkward ev/s", ".3g"), ("ratio", "ratio", ".1f")],
        title=f"AGC histograms, {n_events} events, median of {args.repeats} after a warm-up, per {args.cores} core(s)",
    )  # fmt: skip
    for key, value in summary.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if not args.no_shell:
        cold, warm = shell_times([str(Path(sys.executable).parent / "fitax"), "hep", "agc", "--inputs", str(inputs), "--out", str(folder / "out"), "--quiet"])
        summary.update({"shell_cold_s": cold, "shell_warm_s": warm})
        print(f"fitax hep agc from the shell (histograms, workspace, fit, plots): cold {cold:.1f} s, warm {warm:.1f} s")
    write_json(args.json, {"hep_columnar": rows, "summary": summary})
    return 0 if worst < 1e-12 and recompiled == 0 else 1


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
