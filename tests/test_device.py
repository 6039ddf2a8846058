"""Host arrays reach the device without compiling anything (fitax.device.to_device)."""

import contextlib

import jax
import jax.monitoring
import numpy as np
import pytest

from fitax.device import to_device


@contextlib.contextmanager
def traced_programs():
    """Names-free count of the programs JAX traces inside the block (each eager operation
    on a new shape, or a jitted function seen for the first time, is one)."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("values", [np.arange(11 * 17 * 5, dtype=float).reshape(11, 17, 5), np.arange(13, dtype=np.int32),
                                    np.ones((3, 19), bool), 2.5, [[1.0, 2.0]] * 7])
def test_to_device_keeps_values_and_dtypes_and_traces_nothing(values):
    with traced_programs() as traced:
        array = to_device(values)
    assert isinstance(array, jax.Array)
    expected = np.asarray(values)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(array), expected)
    assert traced == []
