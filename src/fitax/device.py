"""Host arrays to device arrays without compiling anything.

``jnp.asarray`` of a NumPy array runs a small compiled program (``jit(stage)``) for every new
shape and dtype: ~10 ms each in a new process, or ~14 ms when read back from the compilation
cache. Binding a gamma-ray dataset moved ~20 arrays that way, a third of a second of every
``fitax gamma fit`` re-run from the shell. ``jax.device_put`` copies the buffer instead.
"""

from __future__ import annotations

import jax
import numpy as np
from jaxtyping import Array, ArrayLike

__all__ = ["to_device"]


def to_device(values: ArrayLike) -> Array:
    """``values`` (a NumPy array, a number or a nested sequence of numbers) as a JAX array of
    the same dtype (64-bit kept: fitax runs with ``jax_enable_x64``).

    Example:
        >>> to_device(np.arange(3.0)).dtype
        dtype('float64')
    """
    return jax.device_put(np.asarray(values))
