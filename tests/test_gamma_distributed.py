"""A joint fit of a simulated survey (3 observations, so that 4 devices need a padding copy;
a point source and a background norm per dataset fitted) gives the same result
on one device, on 4 forced CPU devices and across 2 local processes (``jax.distributed``,
2 CPU devices each): the datasets are split over the devices (``shard_map``) and the
statistic, its gradient and Hessian are summed across them. (Every process holds every
dataset, so this shows the reduction across processes is right, not that memory is split.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from fitax.gamma.simulate import simulate_files

_JOB = textwrap.dedent("""
    import json, sys
    import jax
    process, processes, port, folder, shard = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
    if processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process)
    import fitax.gamma as fg
    from fitax.gamma.likelihood import bind

    from fitax.parameters import freeze

    datasets = fg.read_datasets(f"{folder}/datasets.yaml")
    # the point source and the background norms: a model that compiles quickly
    models = fg.read_models(f"{folder}/models_start.yaml").without("gauss").without("disk")
    models = freeze(models, *[n for n in models.parameters if n.endswith("-bkg.tilt")])
    sharded = all(group.sharded for group in bind(datasets, models, shard=shard) if hasattr(group, "sharded"))
    result = fg.fit(datasets, models, shard=shard)
    print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(), "sharded": sharded,
                      "stat": float(result.stat), "converged": bool(result.converged),
                      "values": {n: float(result.values[n]) for n in result.free_names},
                      "errors": {n: float(result.errors[n]) for n in result.free_names}}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(folder, processes: int, shard: bool, env: dict | None = None) -> list[dict]:
    port = str(_free_port())
    environment = {**os.environ, **(env or {})}
    jobs = [subprocess.Popen([sys.executable, "-c", _JOB, str(i), str(processes), port, str(folder), "1" if shard else "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
            for i in range(processes)]
    outputs = []
    try:
        for rank, job in enumerate(jobs):
            stdout, stderr = job.communicate(timeout=600)
            assert job.returncode == 0, f"process {rank} of {processes} failed:\n{stderr[-3000:]}"
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for job in jobs:  # a process left waiting for a failed peer
            if job.poll() is None:
                job.kill()
    return outputs


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    folder = tmp_path_factory.mktemp("survey")
    simulate_files(folder, n_obs=3, event_types=1, npix=40, psf_mode="centre")
    return folder


def test_fit_is_the_same_on_one_device_four_devices_and_two_processes(survey):
    (single,) = _run(survey, 1, shard=False, env={"FITAX_CPU_DEVICES": "1"})
    (forced,) = _run(survey, 1, shard=True, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    processes = _run(survey, 2, shard=True, env={"FITAX_CPU_DEVICES": "2"})
    assert single["devices"] == 1 and single["converged"]
    assert forced["devices"] == 4 and forced["sharded"]
    assert [p["processes"] for p in processes] == [2, 2] and all(p["devices"] == 4 and p["sharded"] for p in processes)
    assert len(single["values"]) == 4 + 3
    for other in [forced, *processes]:
        assert other["converged"]
        assert other["stat"] == pytest.approx(single["stat"], rel=1e-10)
        for name, value in single["values"].items():
            assert other["values"][name] == pytest.approx(value, rel=1e-6, abs=1e-6 * single["errors"][name]), name
            assert other["errors"][name] == pytest.approx(single["errors"][name], rel=1e-5), name
