"""Helpers shared by the benchmark scripts: machine description and tables."""

from __future__ import annotations

import os
import platform
import time


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


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as an aligned table; ``columns`` are ``(key, header, format)``."""
    cells = [[format(row[key], fmt) if row.get(key) is not None else "-" for key, _, fmt in columns] for row in rows]
    widths = [max(len(header), *(len(c[i]) for c in cells)) for i, (_, header, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
