"""Helpers shared by the benchmark scripts: machine description, timing, the shell
(time-to-result) measurement, tables and JSON output.

Every benchmark reports three times for fitax (issue 16, section 3):

* in-process: wall time of the job once compiled (same process, programs already traced);
* compile: seconds JAX spent tracing, lowering and compiling during the first call
  (:class:`CompileClock`, from JAX's own compile events);
* shell: what a user waits for when re-running the job as a command in a new Python
  process, cold (empty cache directory) and warm (second run, caches filled), with
  :func:`shell_times`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

# Section 3 goal: a re-run command-line job (caches filled) within this many seconds plus
# twice its in-process compute time.
GOAL_OVERHEAD_S = 1.5
GOAL_COMPUTE_FACTOR = 2.0


def machine_summary() -> str:
    import jax
    import numpy as np

    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info())
    except ImportError:
        blas = "threadpoolctl not installed"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores | jax {jax.__version__} "
        f"on {jax.default_backend()} ({jax.device_count()} device, XLA uses all cores) | numpy {np.__version__} ({blas})"
    )


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def median_of(fn, repeats: int) -> tuple[object, float, list[float]]:
    """``(last result, median seconds, all seconds)`` of ``repeats`` calls of ``fn()``."""
    results, seconds = None, []
    for _ in range(repeats):
        results, t = timed(fn)
        seconds.append(t)
    return results, statistics.median(seconds), seconds


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling (XLA) while active, from JAX's
    own compile events: a compile time that does not depend on subtracting two noisy wall
    times."""

    _EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
               "/jax/core/compile/backend_compile_duration")
    _active: "CompileClock | None" = None
    _registered = False

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        import jax

        if not CompileClock._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileClock._record)
            CompileClock._registered = True
        CompileClock._active = self
        return self

    def __exit__(self, *exc):
        CompileClock._active = None

    @staticmethod
    def _record(event: str, seconds: float, **_) -> None:
        if CompileClock._active is not None and event in CompileClock._EVENTS:
            CompileClock._active.seconds += seconds


def enable_compilation_cache() -> None:
    """Turn on the caches the ``fitax`` command line uses (``FITAX_CACHE_DIR``: XLA's
    compilation cache and fitax's exported programs), so that a benchmark's one-job child
    process measures what a CLI user gets. Uses fitax's own switch
    (``fitax.programs.enable_compilation_cache``, or the CLI's); without one, JAX's
    persistent compilation cache set up the same way."""
    import importlib

    for module, name in (("fitax.programs", "enable_compilation_cache"), ("fitax.cli", "enable_compilation_cache"),
                         ("fitax.cli", "_enable_compilation_cache")):
        try:
            switch = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if callable(switch):
            switch()
            return
    import jax

    location = os.environ.get("FITAX_CACHE_DIR", str(Path.home() / ".cache" / "fitax"))
    if location:
        jax.config.update("jax_compilation_cache_dir", str(Path(location) / "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def shell_times(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """``(cold, warm)`` wall seconds of running ``cmd`` twice in new processes, sharing a
    fresh, empty ``FITAX_CACHE_DIR`` (JAX's compilation cache and fitax's exported
    programs): cold is the first run, warm the second with the caches it filled."""
    with tempfile.TemporaryDirectory(prefix="fitax-bench-cache-") as cache:
        full_env = {**os.environ, **(env or {}), "FITAX_CACHE_DIR": cache}
        times = []
        for _ in range(2):
            start = time.perf_counter()
            done = subprocess.run(cmd, env=full_env, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return times[0], times[1]


def goal_line(what: str, warm_s: float, compute_s: float) -> str:
    """The section 3 check, as a printable line."""
    limit = GOAL_OVERHEAD_S + GOAL_COMPUTE_FACTOR * compute_s
    verdict = "met" if warm_s <= limit else "NOT met"
    return (f"goal {what}: warm re-run {warm_s:.2f} s <= {GOAL_OVERHEAD_S} s + {GOAL_COMPUTE_FACTOR:g} x {compute_s:.3f} s "
            f"= {limit:.2f} s: {verdict}")


def goal_met(warm_s: float, compute_s: float) -> bool:
    return warm_s <= GOAL_OVERHEAD_S + GOAL_COMPUTE_FACTOR * compute_s


def print_table(rows: list[dict], columns: list[tuple[str, str, str]], title: str | None = None) -> None:
    """Print rows as an aligned table; ``columns`` are ``(key, header, format)``; ``title``
    (what is timed) is printed above it."""
    if title:
        print(title)
    cells = [[format(row[key], fmt) if row.get(key) is not None else "-" for key, _, fmt in columns] for row in rows]
    widths = [max(len(header), *(len(c[i]) for c in cells)) for i, (_, header, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def write_json(path: str | None, tables: dict) -> None:
    """Write ``tables`` (name -> rows, plus any notes) to ``path`` as JSON, with the machine."""
    if not path:
        return
    payload = {"machine": machine_summary(), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **tables}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1, default=_json_default))
    print(f"\nrows written to {path}")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
