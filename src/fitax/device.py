"""Host arrays to device arrays without compiling anything.

``jnp.asarray`` of a NumPy array runs a small compiled program (``jit(stage)``) for every new
shape and dtype: ~10 ms each in a new process, or ~14 ms when read back from the compilation
cache. Binding a gamma-ray dataset moved ~20 arrays that way (0.17 s of a 2.5 s ``fitax gamma
fit`` re-run from the shell, measured). ``jax.device_put`` of a copy does not compile.
"""

from __future__ import annotations

import jax
import numpy as np
import numpy.typing as npt

__all__ = ["to_device", "on_host"]


def to_device(values: npt.ArrayLike) -> jax.Array:
    """``values`` (a NumPy array, a number or a nested sequence of numbers) as a JAX array of
    the same dtype (64-bit kept: fitax runs with ``jax_enable_x64``). The device array never
    shares memory with an array the caller may change: ``device_put`` copies, except that on
    CPU jaxlib 0.10.2 may alias a suitably aligned NumPy buffer whatever ``may_alias`` says
    (jax-ml/jax#37830), so such a result is made again from a copy. Copying every array first
    instead doubled the cost of binding 400 gamma-ray datasets' ~3 GB (7 s on this machine).
    A JAX array is returned as it is, so a sharded one is not gathered onto one device.

    Example:
        >>> to_device(np.arange(3.0)).dtype
        dtype('float64')
    """
    if isinstance(values, jax.Array):
        return values
    host = np.asarray(values)
    array = jax.device_put(host, may_alias=False)
    if host.nbytes and _shares_memory(array, host):
        array = jax.device_put(np.array(host), may_alias=False)
    return array


def _shares_memory(array: jax.Array, host: np.ndarray) -> bool:
    """Whether the (single-device) ``array`` lies in ``host``'s memory."""
    try:
        pointer = array.unsafe_buffer_pointer()
    except Exception:  # noqa: BLE001 - a platform without host pointers cannot alias host memory
        return False
    low, high = np.lib.array_utils.byte_bounds(host)
    return low <= pointer < high


def on_host(*values) -> bool:
    """Whether none of ``values`` is a JAX array (or tracer): host code may then compute
    with NumPy, where eager JAX would compile a program per operation and shape.

    Example:
        >>> on_host(np.ones(3), 2.0), on_host(np.ones(3), to_device(1.0))
        (True, False)
    """
    return not any(isinstance(v, jax.Array) for v in values)
