"""fitax.programs: compiled programs kept on disk and reused by later processes without tracing.

The cross-process tests run a stand-in of fitax's fit program in child processes: a pytree of
Parameters with static metadata, an args pytree and a static, module-level objective; inside,
a ``lax.while_loop`` of Newton steps whose Hessian comes from ``jax.linearize`` of the
gradient, a ``custom_jvp`` function, ``lax.map`` over problems and ``shard_map`` over two CPU
devices (fitax starts one per core). Each child counts how often the program is traced
(JAX's ``jaxpr_trace_duration`` event, named after the function) and prints its results'
bytes.
"""

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fitax import programs

CHILD = textwrap.dedent('''
    import json, sys

    import jax, jax.monitoring

    TRACES = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: TRACES.append(kw.get("fun_name")) if event == "/jax/core/compile/jaxpr_trace_duration" else None)

    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    import fitax
    from fitax import programs


    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)


    @softplus.defjvp
    def _softplus_jvp(primals, tangents):
        return softplus(primals[0]), jax.nn.sigmoid(primals[0]) * tangents[0]


    def objective(params, data):
        model = params["amplitude"].value * jnp.exp(-softplus(params["rate"].value) * data["t"])
        return jnp.sum((data["y"] - model) ** 2)


    def newton(objective, params, data, max_steps):
        names = sorted(params)

        def one(problem):
            p, d = problem
            def f(v):
                return objective({n: eqx.tree_at(lambda q: q.value, p[n], v[i]) for i, n in enumerate(names)}, d)
            def body(state):
                v, k = state
                grad, hessian_times = jax.linearize(jax.grad(f), v)
                return v - jnp.linalg.solve(jax.vmap(hessian_times)(jnp.eye(v.size)), grad), k + 1
            def keep_going(state):
                return (state[1] < max_steps) & (jnp.linalg.norm(jax.grad(f)(state[0])) > 1e-12)
            v, _ = jax.lax.while_loop(keep_going, body, (jnp.stack([p[n].value for n in names]), 0))
            return v, f(v)

        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
        spec = jax.sharding.PartitionSpec("batch")
        return jax.shard_map(lambda problems: jax.lax.map(one, problems), mesh=mesh, in_specs=(spec,), out_specs=spec,
                             check_vma=False)((params, data))


    program = programs.cached(newton, name="test.newton")
    programs.enable(sys.argv[1])
    rng = np.random.default_rng(0)
    for variant in sys.argv[2:]:
        n, rate_min = variant.split(":")
        n = int(n)
        t = np.broadcast_to(np.linspace(0.0, 5.0, 20), (n, 20))
        y = 2.0 * np.exp(-np.log1p(np.exp(0.3)) * t) + 0.01 * rng.normal(size=t.shape)
        params = {"amplitude": fitax.Parameter(np.full(n, 1.0), unit="count"),
                  "rate": fitax.Parameter(np.full(n, 0.0), min=float(rate_min))}
        TRACES.clear()
        values, stat = program(objective, params, {"t": t, "y": y}, 50)
        print(json.dumps({"devices": jax.device_count(), "traces": TRACES.count("newton"), "source": programs._source_hash(),
                          "values": np.asarray(values).tobytes().hex(), "stat": np.asarray(stat).tolist()}))
''')


def _run_child(tmp_path, *variants):
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    env = {**os.environ, "FITAX_CPU_DEVICES": "2"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "programs"), *variants], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _skip_if_source_changed(first, *later):
    if any(run["source"] != first["source"] for run in later):
        pytest.skip("fitax's source files changed between the processes (edited meanwhile): programs are keyed by them")


def _program_files(tmp_path):
    return sorted((tmp_path / "programs" / "test.newton").glob("*.jaxexport"))


def test_a_later_process_reuses_the_program_without_tracing(tmp_path):
    (cold,) = _run_child(tmp_path, "8:-10")
    assert cold["devices"] == 2 and cold["traces"] == 1
    assert np.all(np.asarray(cold["stat"]) < 0.01)  # 20 points of noise 0.01: a fit, not garbage
    (stored,) = _program_files(tmp_path)
    warm, bigger, other_bound = _run_child(tmp_path, "8:-10", "16:-10", "8:-20")
    _skip_if_source_changed(cold, warm)
    # the same program: deserialised, not traced, and bit-identical results
    assert warm["traces"] == 0 and warm["values"] == cold["values"] and warm["stat"] == cold["stat"]
    # another shape, or another static field of a Parameter: another program
    assert bigger["traces"] == 1 and other_bound["traces"] == 1
    assert len(_program_files(tmp_path)) == 3

    stored.write_bytes(stored.read_bytes()[:100])  # truncated, e.g. by a full disk
    (after_corruption,) = _run_child(tmp_path, "8:-10")
    assert after_corruption["traces"] == 1 and after_corruption["values"] == cold["values"]
    (rewritten,) = _run_child(tmp_path, "8:-10")
    _skip_if_source_changed(cold, after_corruption, rewritten)
    assert rewritten["traces"] == 0 and rewritten["values"] == cold["values"]


def _scaled_sum(scale, data, how):
    return how(scale * data["x"]), data["x"].shape[0]


@pytest.fixture
def program_cache(tmp_path):
    programs.enable(tmp_path)
    yield tmp_path
    programs.disable()


def test_behaves_like_filter_jit_and_stores_nothing_when_disabled(tmp_path):
    program = programs.cached(_scaled_sum)
    data = {"x": np.arange(5.0)}
    assert programs.cache_directory() is None
    value, length = program(2.0, data, jnp.sum)  # 2.0 is static, as with eqx.filter_jit
    expected = eqx.filter_jit(_scaled_sum)(2.0, data, jnp.sum)
    assert float(value) == float(expected[0]) == 20.0 and length == expected[1] == 5
    assert not any(tmp_path.iterdir())


def test_static_outputs_and_keys(program_cache):
    program = programs.cached(_scaled_sum)
    value, length = program(np.asarray(2.0), {"x": np.arange(5.0)}, jnp.sum)
    assert float(value) == 20.0 and length == 5  # a static (Python int) output survives the export
    assert len(list(program_cache.rglob("*.jaxexport"))) == 1
    value, length = program(np.asarray(3.0), {"x": np.arange(5.0)}, jnp.sum)  # new data: same program
    assert float(value) == 30.0 and len(list(program_cache.rglob("*.jaxexport"))) == 1
    value, length = program(np.asarray(2.0), {"x": np.arange(5.0)}, jnp.max)  # another static callable
    assert float(value) == 8.0 and len(list(program_cache.rglob("*.jaxexport"))) == 2


def test_unnameable_static_arguments_fall_back_to_filter_jit(program_cache):
    """A lambda has no name that is the same in another process: run, but store nothing."""
    program = programs.cached(_scaled_sum)
    value, _ = program(np.asarray(2.0), {"x": np.arange(5.0)}, lambda a: jnp.sum(a**2))
    assert float(value) == 120.0
    assert not list(program_cache.rglob("*.jaxexport"))


def test_called_inside_another_trace(program_cache):
    program = programs.cached(_scaled_sum)
    gradient = jax.grad(lambda s: program(s, {"x": jnp.arange(5.0)}, jnp.sum)[0])(2.0)
    assert float(gradient) == 10.0
