"""Photometry traces each compiled program once per process (two batch shapes for every fit
and refit pass, PSF values as data), and a later process with the program cache filled does
not trace photometry's programs at all.

Counted in child processes (a count, not a time): JAX's ``jaxpr_trace_duration`` event per
traced function. Before batches had one shape, the star fits' Newton loop (``_run_batch``)
was traced once per batch size and refit pass: 4 times on the first image here, 9 times on a
5000-star quadrant, and again for every new image.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent('''
    import collections, hashlib, json, sys

    import jax, jax.monitoring

    TRACES = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: TRACES.update([kw.get("fun_name")]) if event == "/jax/core/compile/jaxpr_trace_duration" else None)

    import numpy as np
    from astropy.io import fits

    import fitax
    from fitax import programs
    from fitax.photometry.pipeline import ImageData, process_image
    from fitax.photometry.simulate import simulate_image

    scenes = [simulate_image((160, 160), 30, flux_range=(2e3, 2e5), cosmic_rays=2, seed=1),
              simulate_image((200, 180), 45, gamma=2.6, alpha=3.3, flux_range=(2e3, 2e5), seed=2)]
    header = fits.Header({"GAIN": 1.0, "BUNIT": "electron", "READNOI": 10.0})
    if sys.argv[1] != "-":
        programs.enable(sys.argv[1])
    core = (("_run_batch", "fitax.batch"), ("_run_fit", "fitax.fit"))
    cached = [name for name, module in core if isinstance(getattr(sys.modules[module], name, None), programs.CachedProgram)]
    for image, truth in scenes[: int(sys.argv[2])]:
        TRACES.clear()
        catalog, shape = process_image(ImageData(image, np.zeros(image.shape, bool), header, 10.0))
        digest = hashlib.sha256(b"".join(np.asarray(catalog[c]).tobytes() for c in ("x", "y", "flux", "flux_err", "flags")))
        print(json.dumps({"traces": TRACES, "stars": len(catalog), "catalog": digest.hexdigest(), "core_cached": cached,
                          "source": programs._source_hash()}))
''')

PHOTOMETRY_PROGRAMS = ("prf_boxes", "_weighted_linear_fit", "_snr_and_peaks")


def _run_child(tmp_path, cache: str, images: int):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), cache, str(images)], capture_output=True, text=True,
                          env={**os.environ, "FITAX_CPU_DEVICES": "2"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


# slow (64 s, make test's 15-minute budget): tests/test_programs.py checks the mechanism in make test
@pytest.mark.slow
def test_each_program_is_traced_once_per_process(tmp_path):
    first, second = _run_child(tmp_path, "-", 2)
    assert first["stars"] >= 25 and second["stars"] >= 40
    # one Newton-loop program (both images have fewer stars than a large batch) for the first
    # fits and every refit pass of both images
    assert first["traces"].get("_run_batch", 0) == 1 and second["traces"].get("_run_batch", 0) == 0
    # PRFs: the start PSF on 15-pixel stamps (plain, and per star for the degree-1 shape fit,
    # in and out of its objective) and the fitted one on 11-pixel stamps
    assert first["traces"].get("prf_boxes", 0) <= 4 and first["traces"].get("_weighted_linear_fit", 0) == 1
    # the PSF-shape fits: degree 0 and degree 2 (not better, so degree 1 is not fitted); the
    # refit without the rejected star (these small images leave no spare candidates, so the
    # count changes: 13 -> 12 stars) shares the program of the first fit, as both are padded
    # to 16 stars
    assert first["traces"].get("_run_fit", 0) == 2
    # the second image (another size, star count and PSF, with the same quadrature order) only
    # traces what depends on the image shape (the detection filter) and the PSF-shape fits'
    # star bucket (20 stars, padded to 32): degrees 0, 2 and perhaps 1
    assert set(second["traces"]) <= {"_snr_and_peaks", "_run_fit"} | set(first["traces"]) - {"_run_batch", "prf_boxes"}
    assert second["traces"].get("_snr_and_peaks", 0) <= 1 and second["traces"].get("_run_fit", 0) <= 3


@pytest.mark.slow  # ~75 s; test_programs.py checks the same for the core in make test
def test_a_later_process_traces_no_photometry_program(tmp_path):
    cache = str(tmp_path / "programs")
    (cold,) = _run_child(tmp_path, cache, 1)
    (warm,) = _run_child(tmp_path, cache, 1)
    if warm["source"] != cold["source"]:
        pytest.skip("fitax's source files changed between the two processes (edited meanwhile): programs are keyed by them")
    assert all(cold["traces"].get(name, 0) == 1 for name in ("_weighted_linear_fit", "_snr_and_peaks"))
    names = PHOTOMETRY_PROGRAMS + tuple(warm["core_cached"])  # the core's fit programs once they use fitax.programs
    assert {name: warm["traces"].get(name, 0) for name in names} == dict.fromkeys(names, 0)
    assert warm["catalog"] == cold["catalog"]  # bit-identical catalogs
