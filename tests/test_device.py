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


def test_to_device_copies_host_arrays_and_passes_jax_arrays_through():
    host = np.arange(5.0)
    array = to_device(host)
    host[0] = 99.0  # the caller changes its array afterwards
    assert float(array[0]) == 0.0
    assert to_device(array) is array
