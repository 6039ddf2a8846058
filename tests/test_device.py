"""Host arrays reach the device without compiling anything (fitax.device.to_device)."""

import jax
import numpy as np
import pytest
from conftest import traced_programs

from fitax.device import to_device


@pytest.mark.parametrize("values", [np.arange(11 * 17 * 5, dtype=float).reshape(11, 17, 5), np.arange(13, dtype=np.int32),
                                    np.ones((3, 19), bool), np.int16(7), [[1.0, 2.0]] * 7])
def test_to_device_keeps_values_and_dtypes_and_traces_nothing(values):
    with traced_programs() as traced:
        array = to_device(values)
    assert isinstance(array, jax.Array)
    expected = np.asarray(values)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(array), expected)
    assert traced == []


def test_to_device_leaves_a_sharded_array_where_it_is():
    """Copying through NumPy would gather it onto one device."""
    if jax.device_count() < 2:
        pytest.skip("needs two JAX devices (fitax makes one per core; or XLA_FLAGS=--xla_force_host_platform_device_count=2)")
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ("rows",))
    sharded = jax.device_put(np.arange(8.0), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows")))
    assert to_device(sharded).sharding == sharded.sharding


def test_the_device_array_never_shares_the_callers_memory():
    """jaxlib 0.10.2 on CPU may alias a 64-byte aligned NumPy buffer even with
    ``may_alias=False`` (jax-ml/jax#37830): changing the caller's array must not change
    the device array."""
    buffer = np.zeros(8 * 1000 + 64, np.uint8)
    offset = (-buffer.ctypes.data) % 64
    values = buffer[offset:offset + 8000].view(np.float64)
    small = np.zeros(64, np.int8)
    arrays = to_device(values), to_device(small)
    values[0], small[0] = 42.0, 5
    assert float(arrays[0][0]) == 0.0 and int(arrays[1][0]) == 0
