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


def _node_weights(dataset, psf_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear weights of the PSF map's nodes at each map pixel centre, clamped at the
    PSF map's border as :func:`fitax.gamma.irf.psf_profile`: node indices ``(4, P)`` (flat
    ``py * nx + px``) and weights ``(4, P)``."""
    ny, nx = psf_shape
    positions = pixel_skycoords(dataset.wcs, dataset.shape).ravel()
    x, y = (np.asarray(v, float) for v in celestial(dataset.irfs.psf_wcs).world_to_pixel(positions))

    def axis(coordinate, n):
        if n == 1:
            zeros = np.zeros(coordinate.shape, int)
            return zeros, zeros, np.zeros(coordinate.shape)
        coordinate = np.clip(coordinate, 0, n - 1)
        low = np.minimum(np.floor(coordinate).astype(int), n - 2)
        return low, low + 1, coordinate - low

    x0, x1, fx = axis(x, nx)
    y0, y1, fy = axis(y, ny)
    index = np.stack([y0 * nx + x0, y0 * nx + x1, y1 * nx + x0, y1 * nx + x1])
    weight = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    return index, weight


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


def _truncated_svd(matrix: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``left (rows, r) @ right (r, cols)`` of the smallest rank ``r`` whose residual has an
    L1 norm within ``allowed`` in every row."""
    u, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    for rank in range(1, len(singular) + 1):
        left = u[:, :rank] * singular[:rank]
        if np.all(np.abs(matrix - left @ vt[:rank]).sum(axis=1) <= allowed):
            break
    return left, vt[:rank]


def position_psf(dataset, used: np.ndarray, tolerance: float = POSITION_PSF_TOLERANCE) -> PositionPSF:
    """The position-dependent PSF of ``dataset`` times its exposure at the true energies
    ``used`` (indices), decomposed as the module docstring says."""
    contents = dataset.irfs
    n_pixels = int(np.prod(dataset.shape))
    if contents.psf is None or contents.psf_wcs is None or contents.psf.shape[2:] == (1, 1):
        index, weight = np.zeros((4, n_pixels), np.int32), np.concatenate([np.ones((1, n_pixels)), np.zeros((3, n_pixels))])
    else:
        index, weight = _node_weights(dataset, contents.psf.shape[2:])
    if contents.psf is None:
        return PositionPSF(components=np.ones((len(used), 1, 1)), energy_of=np.arange(len(used), dtype=np.int32),
                           node_coefficients=np.ones((len(used), 1)), node_index=index, node_weight=weight)
    nodes, inverse = np.unique(index, return_inverse=True)
    kernels = _node_kernels(dataset, nodes, contents.psf.shape[2:], used)  # (nodes, et, k, k)
    n_nodes, n_true, size, _ = kernels.shape
    components, coefficients, energy_of = [], [], []
    for energy in range(n_true):
        flat = kernels[:, energy].reshape(n_nodes, -1)
        left, right = _truncated_svd(flat, tolerance * np.abs(flat).sum(axis=1))
        components.append(right)
        coefficients.append(left.T)
        energy_of += [energy] * len(right)
    return PositionPSF(components=np.concatenate(components).reshape(-1, size, size), energy_of=np.asarray(energy_of, np.int32),
                       node_coefficients=np.concatenate(coefficients), node_index=inverse.reshape(index.shape).astype(np.int32),
                       node_weight=weight)


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
