"""Asymmetric PSF kernel maps: a PSF kernel per sky position and true energy, held compressed.

Off the optical axis a Cherenkov telescope's PSF is elongated and its orientation turns
with the field (the major axis follows the direction to the pointing), so a radial PSF map
(Gammapy's ``PSFMap``, a profile in offset per position) cannot describe it. The kernels
must be given per position and true energy, as 2-D images in the dataset's pixels (as
Gammapy's ``PSFKernel``), on a coarse grid of positions (the nodes, as a ``PSFMap``'s sky
grid). Dense, such a map is large: 40 x 40 nodes x 20 true energies x 81 x 81 pixels is
1.7 GB in float64.

The kernels of neighbouring nodes differ little, so at each true energy they span few
dimensions. :class:`PSFKernelMap` holds them as a truncated singular-value decomposition,
``K(r; E, node) = sum_m U_m(r; E) a_m(node; E)``, the form the position-dependent
convolution (:mod:`fitax.gamma.psf_position`) applies directly. The truncation keeps every
node's kernel within ``tolerance`` of its sum (L1 norm of the residual): the 1.7 GB map
above holds ~2 MB. :func:`compress_node_kernels` builds it from a function that returns
the kernels of some nodes at one energy, chunk by chunk, so that a dense map is never held
(a user's dense kernels can be a NumPy memory map read in slices).

The kernel of any position is the bilinear interpolation (clamped at the grid's border)
between its four nodes' kernels, the rule :func:`fitax.gamma.irf.psf_profile` applies to
radial PSF maps. The FITS layout is in :mod:`fitax.gamma.io`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from jaxtyping import Float, Int

from .geometry import celestial, sky_to_pixel

__all__ = ["PSFKernelMap", "compress_node_kernels", "elliptical_gaussian_kernels", "bilinear_nodes", "truncated_basis",
           "KERNEL_MAP_TOLERANCE"]

KERNEL_MAP_TOLERANCE = 1e-4
_CHUNK = 256


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class PSFKernelMap:
    """PSF kernels per position and true energy, as a sum of components per energy.

    The kernel at node ``(iy, ix)`` and true-energy bin ``e`` is the sum over the terms
    ``t`` with ``energy_of[t] == e`` of ``coefficients[t, iy, ix] components[t]``.

    Attributes:
        components: ``(T, k, k)`` kernel components (orthonormal within an energy), in the
            pixels of the dataset maps: axis 1 is the map's y, axis 2 its x, the centre
            pixel holds zero offset, and index ``[k // 2 + dy, k // 2 + dx]`` is the
            probability of a photon to be reconstructed ``(dy, dx)`` pixels away from its
            true position.
        energy_of: ``(T,)`` true-energy bin of each term.
        coefficients: ``(T, ny, nx)`` each term's weight at each node.
        energy_true_edges: ``(E + 1,)`` [TeV] the true-energy bins.
        node_wcs: celestial WCS of the ``(ny, nx)`` node grid (node centres at its pixel centres).
        pixel_scale: ``(2,)`` [deg] the kernel pixels' ``CDELT`` (signed, x then y): the
            dataset maps' pixel size and orientation.
        tolerance: the largest L1 residual of a node's kernel, relative to its sum.

    Example: a PSF twice as long as it is wide, turning by 80 deg across a 7 x 7 node grid
    one degree apart, held in 22 terms instead of 2 x 49 kernels:

        >>> import numpy as np
        >>> from astropy.wcs import WCS
        >>> from fitax.gamma.psf_kernel_map import PSFKernelMap
        >>> node_wcs = WCS(naxis=2)
        >>> node_wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
        >>> node_wcs.wcs.cdelt, node_wcs.wcs.crpix = [-1.0, 1.0], [4.0, 4.0]
        >>> kernel_map = PSFKernelMap.elliptical_gaussian(
        ...     sigma_major=np.full((2, 7, 7), 0.1), sigma_minor=np.full((2, 7, 7), 0.05),
        ...     position_angle=np.linspace(0, 80, 49).reshape(7, 7), energy_true_edges=[0.1, 1.0, 10.0],
        ...     node_wcs=node_wcs, pixel_scale=[-0.02, 0.02])
        >>> kernel_map
        PSFKernelMap(2 true energies x 7x7 nodes, kernels 39x39 pixels of 0.02 deg: 22 terms (rank <= 11), 0.3 MB held, 1.2 MB dense)
    """

    components: Float[np.ndarray, "t k k"]
    energy_of: Int[np.ndarray, " t"]
    coefficients: Float[np.ndarray, "t ny nx"]
    energy_true_edges: Float[np.ndarray, " e1"]
    node_wcs: WCS
    pixel_scale: Float[np.ndarray, "2"]
    tolerance: float = KERNEL_MAP_TOLERANCE

    def __post_init__(self):
        n_true = len(self.energy_true_edges) - 1
        if self.components.ndim != 3 or self.components.shape[1] != self.components.shape[2] or self.components.shape[1] % 2 == 0:
            raise ValueError(f"PSF kernel map: components must be (terms, k, k) with an odd k, got {self.components.shape}")
        if self.coefficients.ndim != 3 or self.coefficients.shape[0] != len(self.components):
            raise ValueError(f"PSF kernel map: coefficients {self.coefficients.shape} must be ({len(self.components)}, ny, nx)")
        if self.energy_of.shape != (len(self.components),) or set(np.unique(self.energy_of)) != set(range(n_true)):
            raise ValueError(f"PSF kernel map: every one of the {n_true} true energies needs at least one term")

    @property
    def node_shape(self) -> tuple[int, int]:
        return self.coefficients.shape[1:]

    @property
    def kernel_size(self) -> int:
        return self.components.shape[-1]

    @property
    def n_energies(self) -> int:
        return len(self.energy_true_edges) - 1

    @property
    def nbytes(self) -> int:
        """Memory the map holds [bytes]."""
        return self.components.nbytes + self.coefficients.nbytes

    @property
    def dense_nbytes(self) -> int:
        """Memory the same kernels would take dense, in float64 [bytes]."""
        return 8 * int(np.prod(self.node_shape)) * self.n_energies * self.kernel_size**2

    def node_kernels(self, energy: int, nodes: Int[np.ndarray, " n"]) -> Float[np.ndarray, "n k k"]:
        """The kernels at true-energy bin ``energy`` of the flat node indices ``nodes``."""
        terms = self.energy_of == energy
        flat = self.coefficients[terms].reshape(int(terms.sum()), -1)[:, nodes]
        return np.einsum("tn,tij->nij", flat, self.components[terms])

    def kernels_at(self, position: SkyCoord) -> Float[np.ndarray, "e k k"]:
        """The kernels ``(energy_true, k, k)`` at ``position``: bilinear between its four
        nodes (clamped at the grid's border)."""
        index, weight = bilinear_nodes(self.node_wcs, self.node_shape, position)
        coefficient = np.einsum("tf,f->t", self.coefficients.reshape(len(self.components), -1)[:, index[:, 0]], weight[:, 0])
        kernels = np.zeros((self.n_energies, self.kernel_size, self.kernel_size))
        np.add.at(kernels, self.energy_of, coefficient[:, None, None] * self.components)
        return kernels

    @classmethod
    def from_node_kernels(cls, node_kernels: Callable[[int, np.ndarray], np.ndarray], energy_true_edges, node_wcs: WCS,
                          node_shape: tuple[int, int], pixel_scale, tolerance: float = KERNEL_MAP_TOLERANCE) -> "PSFKernelMap":
        """Compress the kernels ``node_kernels(energy, nodes) -> (len(nodes), k, k)`` (flat
        node indices ``iy * nx + ix``) of every node and true-energy bin; see
        :func:`compress_node_kernels`."""
        energy_true_edges = np.asarray(energy_true_edges, float)
        ny, nx = node_shape
        components, energy_of, coefficients = compress_node_kernels(node_kernels, len(energy_true_edges) - 1, ny * nx, tolerance)
        return cls(components=components, energy_of=energy_of, coefficients=coefficients.reshape(-1, ny, nx),
                   energy_true_edges=energy_true_edges, node_wcs=celestial(node_wcs), pixel_scale=np.asarray(pixel_scale, float),
                   tolerance=float(tolerance))

    @classmethod
    def elliptical_gaussian(cls, sigma_major: Float[np.ndarray, "e ny nx"], sigma_minor: Float[np.ndarray, "e ny nx"],
                            position_angle: Float[np.ndarray, "ny nx"], energy_true_edges, node_wcs: WCS, pixel_scale,
                            tolerance: float = KERNEL_MAP_TOLERANCE) -> "PSFKernelMap":
        """Elliptical Gaussian kernels: widths ``sigma_major``, ``sigma_minor`` [deg] per true
        energy and node, the major axis at ``position_angle`` [deg] east of north (as
        Gammapy's ``phi``) at each node; see :func:`elliptical_gaussian_kernels`."""
        kernels = elliptical_gaussian_kernels(sigma_major, sigma_minor, position_angle, pixel_scale)
        return cls.from_node_kernels(kernels, energy_true_edges, node_wcs, np.shape(position_angle), pixel_scale, tolerance)

    def __repr__(self) -> str:
        ny, nx = self.node_shape
        rank = int(np.bincount(self.energy_of).max())
        return (f"PSFKernelMap({self.n_energies} true energies x {ny}x{nx} nodes, kernels {self.kernel_size}x{self.kernel_size} "
                f"pixels of {abs(self.pixel_scale[0]):.3g} deg: {len(self.components)} terms (rank <= {rank}), "
                f"{_size(self.nbytes)} held, {_size(self.dense_nbytes)} dense)")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def bilinear_nodes(node_wcs: WCS, node_shape: tuple[int, int], positions: SkyCoord) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear weights of a node grid's four nodes around each of ``positions``, clamped at
    the grid's border: flat node indices ``iy * nx + ix`` ``(4, P)`` and weights ``(4, P)``."""
    ny, nx = node_shape
    x, y = (np.atleast_1d(v) for v in sky_to_pixel(node_wcs, positions))

    def axis(coordinate, n):
        if n == 1:
            zeros = np.zeros(coordinate.shape, int)
            return zeros, zeros, np.zeros(coordinate.shape)
        coordinate = np.clip(coordinate, 0, n - 1)
        low = np.minimum(np.floor(coordinate).astype(int), n - 2)
        return low, low + 1, coordinate - low

    x0, x1, fx = axis(x.ravel(), nx)
    y0, y1, fy = axis(y.ravel(), ny)
    index = np.stack([y0 * nx + x0, y0 * nx + x1, y1 * nx + x0, y1 * nx + x1])
    weight = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    return index, weight


def compress_node_kernels(node_kernels: Callable[[int, np.ndarray], np.ndarray], n_energies: int, n_nodes: int,
                          tolerance: float = KERNEL_MAP_TOLERANCE, chunk: int = _CHUNK):
    """Per true energy, an orthonormal basis of the nodes' kernels in which every node's
    kernel is within ``tolerance`` of its sum (L1), holding at most ``chunk`` kernels (and
    as many residuals) at a time.

    The basis starts as the truncated SVD of a sample of ``chunk`` nodes spread over the
    grid. Every node is then projected onto it, ``chunk`` nodes at a time; the residuals of
    the (at most ``chunk``) worst nodes beyond the tolerance extend the basis by their own
    truncated SVD, until no node is beyond. Returns ``components (T, k, k)``, ``energy_of
    (T,)`` and ``coefficients (T, n_nodes)``.
    """
    components, energy_of, coefficients = [], [], []
    for energy in range(n_energies):
        sample = np.unique(np.linspace(0, n_nodes - 1, min(n_nodes, chunk)).round().astype(int))
        kernels = np.asarray(node_kernels(energy, sample), float).reshape(len(sample), -1)
        size = int(round(np.sqrt(kernels.shape[1])))
        basis = truncated_basis(kernels, tolerance * np.abs(kernels).sum(axis=1))
        weights = (kernels @ basis.T).T
        while len(sample) < n_nodes:  # (a sample of every node is within tolerance by construction)
            worst_excess, worst_residual, worst_allowed = np.zeros(0), np.zeros((0, kernels.shape[1])), np.zeros(0)
            weights = np.zeros((len(basis), n_nodes))
            for start in range(0, n_nodes, chunk):
                nodes = np.arange(start, min(start + chunk, n_nodes))
                flat = np.asarray(node_kernels(energy, nodes), float).reshape(-1, size * size)
                weights[:, nodes] = basis @ flat.T
                residual = flat - weights[:, nodes].T @ basis
                allowed = tolerance * np.abs(flat).sum(axis=1)
                excess = np.abs(residual).sum(axis=1) - allowed
                keep = np.argsort(-np.r_[worst_excess, excess])[:chunk]
                keep = keep[np.r_[worst_excess, excess][keep] > 0]
                worst_excess = np.r_[worst_excess, excess][keep]
                worst_residual = np.concatenate([worst_residual, residual])[keep]
                worst_allowed = np.r_[worst_allowed, allowed][keep]
            if not len(worst_excess):
                break
            extra = truncated_basis(worst_residual, worst_allowed)
            extra -= (extra @ basis.T) @ basis  # orthogonal to the basis already, up to rounding
            basis = np.concatenate([basis, np.linalg.qr(extra.T)[0].T])
        components.append(basis.reshape(-1, size, size))
        coefficients.append(weights)
        energy_of += [energy] * len(basis)
    return np.concatenate(components), np.asarray(energy_of, np.int32), np.concatenate(coefficients)


def truncated_basis(matrix: Float[np.ndarray, "rows cols"], allowed: Float[np.ndarray, " rows"]) -> Float[np.ndarray, "r cols"]:
    """Orthonormal rows ``(r, cols)`` (right singular vectors of ``matrix``) of the smallest
    rank whose projection leaves every row of ``matrix`` with an L1 norm within ``allowed``."""
    _, _, vt = np.linalg.svd(matrix, full_matrices=False)
    residual = matrix.copy()
    for rank, direction in enumerate(vt, start=1):
        residual -= np.outer(residual @ direction, direction)  # the directions are orthonormal: one projection at a time
        if np.all(np.abs(residual).sum(axis=1) <= allowed):
            break
    return vt[:rank]


def elliptical_gaussian_kernels(sigma_major, sigma_minor, position_angle, pixel_scale,
                                containment: float = 0.999) -> Callable[[int, np.ndarray], np.ndarray]:
    """``node_kernels(energy, nodes)`` of elliptical Gaussians (see
    :meth:`PSFKernelMap.elliptical_gaussian`): each kernel averaged over a grid of points per
    pixel (fine enough for 3 points per minor width, at most 5 x 5), cut at the radius that
    holds ``containment`` of the widest (as Gammapy cuts its kernels) and normalised to 1.
    The pixels' ``CDELT`` (``pixel_scale``, x then y, signed) turn sky offsets (east, north)
    into pixels: with Gammapy's ``CDELT1 < 0`` east is towards -x."""
    sigma_major, sigma_minor = np.asarray(sigma_major, float), np.asarray(sigma_minor, float)
    angle = np.deg2rad(np.asarray(position_angle, float)).ravel()
    scale_x, scale_y = (float(v) for v in pixel_scale)
    pixel = min(abs(scale_x), abs(scale_y))
    if np.any(sigma_minor <= 0) or np.any(sigma_major < sigma_minor):
        raise ValueError("elliptical Gaussian PSF: widths must be positive with sigma_major >= sigma_minor")
    half = int(np.ceil(np.sqrt(-2 * np.log(1 - containment)) * sigma_major.max() / pixel))
    size = 2 * half + 1

    def node_kernels(energy: int, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes)
        oversampling = int(np.clip(np.ceil(3 * pixel / sigma_minor[energy].min()), 1, 5))
        fine = (np.arange(oversampling) + 0.5) / oversampling - 0.5
        offsets = (np.arange(-half, half + 1)[:, None] + fine[None]).ravel()
        east, north = scale_x * offsets, scale_y * offsets  # sky offsets of the fine columns and rows [deg]
        major = sigma_major[energy].ravel()[nodes][:, None, None]
        minor = sigma_minor[energy].ravel()[nodes][:, None, None]
        sin, cos = np.sin(angle[nodes])[:, None, None], np.cos(angle[nodes])[:, None, None]
        kernels = np.empty((len(nodes), size, size))
        for start in range(0, len(nodes), 8):  # 8 finely sampled kernels at a time bound the memory
            part = slice(start, start + 8)
            along = east[None, None, :] * sin[part] + north[None, :, None] * cos[part]
            across = east[None, None, :] * cos[part] - north[None, :, None] * sin[part]
            density = np.exp(-0.5 * ((along / major[part]) ** 2 + (across / minor[part]) ** 2))
            pixels = density.reshape(-1, size, oversampling, size, oversampling).sum(axis=(2, 4))
            kernels[part] = pixels / pixels.sum(axis=(1, 2), keepdims=True)
        return kernels

    return node_kernels
