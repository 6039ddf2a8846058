"""The position-dependent PSF of a map dataset as a short sum of convolutions (host side).

Gammapy convolves an extended source with the PSF of the source's centre. Across a large
source or a diffuse template the PSF changes (it widens with the offset from the
pointing), so a photon from true position ``x'`` must be spread with the kernel of
``x'``:

    npred_true(x, E) = sum_x' K(x - x'; E, x') exposure(x', E) F(x', E)

with ``F`` the source's flux per pixel. ``K`` at ``x'`` is the bilinear interpolation
between the kernels at the PSF map's pixel centres (the nodes): the interpolation that
:func:`fitax.gamma.irf.psf_profile` applies to the PSF itself, applied to the kernels
(Gammapy's recipe cuts each kernel at its own containment radius and normalises it, so
its kernels are not exactly linear in position; between the nodes of the simulated PSF
the two differ by ~2e-3 of the kernel's sum, and the bilinear one is continuous).

Direct summation costs ``kernel size^2`` per pixel and energy. At each true energy the
nodes' kernels span few dimensions (a singular-value decomposition,
``K_node(r; E) = sum_m U_m(r; E) a_m(node; E)``), so

    npred_true(x, E) = sum_m [U_m(E) * (beta_m(E) F(E))](x),
    beta_m(x', E) = exposure(x', E) sum_node W(x', node) a_m(node; E),

one FFT convolution per component, summed in Fourier space: ``M_E + 1`` transforms at a
true energy of ``M_E`` components, where a kernel of the source's centre needs about two.
The components of all energies form one list of terms, so an energy of lower rank costs
no padding. The truncation keeps
every node's kernel within ``POSITION_PSF_TOLERANCE`` of its sum (L1 norm), and so every
pixel's (a convex combination of nodes).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy.coordinates import SkyCoord
from jaxtyping import Float, Int

from . import irf
from .geometry import celestial, pixel_skycoords
from .psf_kernel_map import PSFKernelMap, bilinear_nodes, truncated_basis

__all__ = ["PositionPSF", "position_psf", "POSITION_PSF_TOLERANCE", "edisp_by_pixel"]

POSITION_PSF_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class PositionPSF:
    """A dataset's position-dependent PSF as terms ``t``, each a kernel component of one
    true energy: the kernel of pixel ``p`` at true energy ``E`` is the sum over the terms of
    that energy (``energy_of[t] == E``) of ``components[t] sum_f node_weight[f, p]
    node_coefficients[t, node_index[f, p]]``.

    ``components`` ``(T, k, k)`` are the components ``U_m(E)`` of every energy in turn (as
    many as each energy's rank: no zero components), ``node_coefficients`` ``(T, nodes)``
    their weights at the PSF map's nodes, ``node_index`` and ``node_weight`` ``(4, ny *
    nx)`` each pixel's four nodes and bilinear weights. Stored so, not as per-pixel weights,
    the decomposition of a 60 x 60 map holds 0.4 MB instead of 9 MB.
    """

    components: Float[np.ndarray, "t k k"]
    energy_of: Int[np.ndarray, " t"]
    node_coefficients: Float[np.ndarray, "t nodes"]
    node_index: Int[np.ndarray, "4 p"]
    node_weight: Float[np.ndarray, "4 p"]

    @property
    def n_terms(self) -> int:
        return len(self.energy_of)

    @property
    def rank(self) -> int:
        """The largest number of components at a true energy."""
        return int(np.bincount(self.energy_of).max())


def _node_weights(dataset, node_wcs, node_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear weights ``(4, P)`` of the nodes ``(4, P)`` (flat ``py * nx + px``) at each
    map pixel centre, clamped at the node grid's border as
    :func:`fitax.gamma.irf.psf_profile`."""
    return bilinear_nodes(node_wcs, node_shape, pixel_skycoords(dataset.wcs, dataset.shape).ravel())


def _node_kernels(dataset, nodes: np.ndarray, psf_shape: tuple[int, int], used: np.ndarray) -> np.ndarray:
    """The kernels ``(nodes, used energy_true, k, k)`` at the centres of the PSF map's
    pixels ``nodes`` (flat indices), centred and zero-padded to a common size."""
    contents = dataset.irfs
    ny, nx = psf_shape
    if contents.psf_wcs is None or (ny, nx) == (1, 1):
        coordinates = [irf.map_centre(dataset.wcs, dataset.shape)]
    else:
        wcs = celestial(contents.psf_wcs)
        coordinates = [wcs.pixel_to_world(node % nx, node // nx) for node in nodes]
    kernels = [dataset.psf_kernel(SkyCoord(c))[used] for c in coordinates]
    size = max(k.shape[-1] for k in kernels)
    padded = np.zeros((len(kernels), len(used), size, size))
    for row, kernel in enumerate(kernels):
        start = (size - kernel.shape[-1]) // 2
        padded[row, :, start:start + kernel.shape[-1], start:start + kernel.shape[-1]] = kernel
    return padded


def position_psf(dataset, used: np.ndarray, tolerance: float = POSITION_PSF_TOLERANCE) -> PositionPSF:
    """The position-dependent PSF of ``dataset`` times its exposure at the true energies
    ``used`` (indices), decomposed as the module docstring says."""
    contents = dataset.irfs
    if contents.psf_kernel_map is not None:
        return _from_kernel_map(dataset, contents.psf_kernel_map, used)
    n_pixels = int(np.prod(dataset.shape))
    if contents.psf is None or contents.psf_wcs is None or contents.psf.shape[2:] == (1, 1):
        index, weight = np.zeros((4, n_pixels), np.int32), np.concatenate([np.ones((1, n_pixels)), np.zeros((3, n_pixels))])
    else:
        index, weight = _node_weights(dataset, contents.psf_wcs, contents.psf.shape[2:])
    if contents.psf is None:
        return PositionPSF(components=np.ones((len(used), 1, 1)), energy_of=np.arange(len(used), dtype=np.int32),
                           node_coefficients=np.ones((len(used), 1)), node_index=index, node_weight=weight)
    nodes, inverse = np.unique(index, return_inverse=True)
    kernels = _node_kernels(dataset, nodes, contents.psf.shape[2:], used)  # (nodes, et, k, k)
    n_nodes, n_true, size, _ = kernels.shape
    components, coefficients, energy_of = [], [], []
    for energy in range(n_true):
        flat = kernels[:, energy].reshape(n_nodes, -1)
        basis = truncated_basis(flat, tolerance * np.abs(flat).sum(axis=1))
        components.append(basis)
        coefficients.append(basis @ flat.T)
        energy_of += [energy] * len(basis)
    return PositionPSF(components=np.concatenate(components).reshape(-1, size, size), energy_of=np.asarray(energy_of, np.int32),
                       node_coefficients=np.concatenate(coefficients), node_index=inverse.reshape(index.shape).astype(np.int32),
                       node_weight=weight)


def _from_kernel_map(dataset, kernel_map: PSFKernelMap, used: np.ndarray) -> PositionPSF:
    """The asymmetric kernel map's own components (already truncated, at its tolerance) at
    the true energies ``used``."""
    index, weight = _node_weights(dataset, kernel_map.node_wcs, kernel_map.node_shape)
    nodes, inverse = np.unique(index, return_inverse=True)
    position_of = np.full(kernel_map.n_energies, -1)
    position_of[used] = np.arange(len(used))
    terms = np.flatnonzero(position_of[kernel_map.energy_of] >= 0)
    coefficients = kernel_map.coefficients.reshape(len(kernel_map.components), -1)[terms][:, nodes]
    return PositionPSF(components=kernel_map.components[terms], energy_of=position_of[kernel_map.energy_of[terms]].astype(np.int32),
                       node_coefficients=coefficients, node_index=inverse.reshape(index.shape).astype(np.int32), node_weight=weight)


def edisp_by_pixel(dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """The energy dispersion of each map pixel, for sources spread by position: the
    distinct matrices ``(k, energy_true, energy)`` of the EDisp map's pixels that hold map
    pixels, and each map pixel's (flat ``y * nx + x``) index into them. Each pixel takes its
    nearest EDisp-map pixel, as :func:`fitax.gamma.irf.edisp_matrix` does for a source's
    centre. ``None`` where one matrix holds everywhere (no EDisp map, a single region, or
    equal matrices)."""
    contents = dataset.irfs
    if contents.edisp is None or contents.edisp_wcs is None or contents.edisp.shape[2:] == (1, 1):
        return None
    ey, ex = contents.edisp.shape[2:]
    positions = pixel_skycoords(dataset.wcs, dataset.shape).ravel()
    x, y = (np.asarray(v, float) for v in celestial(contents.edisp_wcs).world_to_pixel(positions))
    nearest = (np.clip(np.ceil(y - 0.5), 0, ey - 1).astype(int) * ex + np.clip(np.ceil(x - 0.5), 0, ex - 1).astype(int))
    nodes, index = np.unique(nearest, return_inverse=True)
    matrices = contents.edisp.reshape(contents.edisp.shape[:2] + (-1,))[:, :, nodes].transpose(2, 0, 1)
    if np.all(matrices == matrices[:1]):
        return None
    return matrices, index.astype(np.int32)
