"""npred and Cash of one map dataset: the pure JAX kernels a bound map group runs.

npred follows Gammapy's ``MapEvaluator`` in 'global' mode (every source on the whole map;
no cut-out can truncate a source as it grows or moves):

    npred_true(E_true) = exposure x integral of the spectrum over the E_true bin
                         x (spatial model integrated over pixels, convolved with the PSF at E_true)
    npred = sum over sources of edisp(E_true -> E) applied to npred_true
            + background x norm (E / E_ref)^-tilt

A source with ``psf_mode="position"`` is instead spread with the PSF of each pixel it
covers, the exposure taken there too (see :mod:`fitax.gamma.psf_position`), and each
pixel's counts go through that pixel's energy dispersion:

    npred_true(x, E_true) = integral of the spectrum over the E_true bin
                            x sum_x' K(x - x'; E_true, x') exposure(x', E_true) F(x')

The convolution is an FFT (zero-padded, the same linear convolution as Gammapy's
``fftconvolve(mode='same')``): for 100x100 maps and ~20x20 kernels at 25 energies it is
an order of magnitude cheaper than direct summation. Point sources place their PSF
kernels instead of convolving a map.

The arrays are those :mod:`fitax.gamma.map_binding` prepares on the host: per source,
:class:`SourceArrays`; per dataset, :class:`OneDataset`. The static facts of the group
(kernel size, FFT shape, names) come with ``group``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float, Int

from ..mapsum import map_items
from ..stats import cash_sparse
from .models import Models

__all__ = ["PositionArrays", "SourceArrays", "OneDataset", "dataset_npred", "dataset_stat", "sharded_stat"]


class PositionArrays(eqx.Module):
    """A dataset's position-dependent PSF as terms (see
    :class:`fitax.gamma.psf_position.PositionPSF`), leading axis: datasets of the group."""

    fft: Complex[Array, "n t fy fxh"]        # Fourier transforms of the kernel components
    energy_of: Int[Array, "n t"]             # the true energy of each (padding: 0, with zeros)
    coefficients: Float[Array, "n t nodes"]  # their weights at the PSF map's nodes
    node_index: Int[Array, "n 4 p"]          # each pixel's four nodes ...
    node_weight: Float[Array, "n 4 p"]       # ... and their bilinear weights


class SourceArrays(eqx.Module):
    """One source's per-dataset inputs (leading axis: datasets of the group)."""

    applies: Float[Array, " n"]
    intervals: Float[Array, "n k 2"] | None  # good time intervals [MJD] a temporal model is averaged over
    edisp: Float[Array, "n et e"]
    psf_fft: Complex[Array, "n r fy fxh"] | None  # Fourier transforms of the PSF components (or kernels)
    psf_mix: Float[Array, "n et r"] | None         # kernel at each true energy = psf_mix @ components
    pixel: Float[Array, "n 2"] | None            # point source: pixel of the reference position
    pixel_jacobian: Float[Array, "n 2 2"] | None  # d(x, y) / d(lon, lat) there [pix / deg]
    reference: Float[Array, "n 2"] | None         # the reference (lon, lat) [deg]
    psf_kernel: Float[Array, "n et k k"] | None   # point source: PSF kernels (placed, not convolved)
    grid_xyz: Float[Array, "n 3 fy fx"] | None    # extended source: fine pixel centres in its frame
    template_image: Float[Array, "n p y x"] | None  # template: flux fraction per pixel (p = 1 or et)
    position_psf: PositionArrays | None                   # psf_mode="position": the PSF of each pixel
    pixel_edisp: Float[Array, "n k et e"] | None          # psf_mode="position": the EDisp matrices of the map's pixels
    pixel_edisp_index: Int[Array, "n p"] | None           # ... and which one each pixel takes
    oversampling: int = eqx.field(static=True)
    is_point: bool = eqx.field(static=True)


class OneDataset(eqx.Module):
    """The arrays of a group that have a dataset axis (what is mapped over), and each
    dataset's position in its group."""

    mask: Array
    background: Array
    padded_exposure: Array
    solid_angle: Array
    count_index: Array
    count_values: Array
    deviance_offset: Array
    sources: tuple[SourceArrays, ...]
    index: Array


def _point_pixel(spatial, arrays: SourceArrays) -> Array:
    """Pixel coordinates (x, y) of a point source, linear in its offset from the position
    the dataset was bound at (exact for CAR maps; for 0.1 deg moves on a TAN map the
    error is ~1e-6 pixel, and a larger move triggers a new binding)."""
    offset = jnp.stack([spatial.lon_0.value - arrays.reference[0], spatial.lat_0.value - arrays.reference[1]])
    offset = offset.at[0].set((offset[0] + 180.0) % 360.0 - 180.0)
    return arrays.pixel + arrays.pixel_jacobian @ offset


def _extended_image(spatial, arrays: SourceArrays, solid_angle, shape) -> Float[Array, "p y x"]:
    """Fraction of an extended source's flux in each pixel, before the PSF (one plane, or
    one per true energy for an energy-dependent template)."""
    if arrays.template_image is not None:
        return arrays.template_image
    k = arrays.oversampling
    values = spatial.evaluate_xyz(arrays.grid_xyz)
    ny, nx = shape
    return (values.reshape(ny, k, nx, k).mean(axis=(1, 3)) * solid_angle)[None]


def _add_point_source(npred, spatial, arrays: SourceArrays, exposure, flux, margin: int):
    """Add a point source's counts to ``npred`` (padded by ``margin`` pixels).

    The PSF-convolved point is its four bilinear pixel weights times the kernel, so the
    kernel is placed at the four pixels instead of convolving a whole map: a window of
    static size (kernel + 1) that moves with the source under ``jit``; it holds the whole
    kernel, so it never truncates the source.
    """
    kernel = arrays.psf_kernel
    size = kernel.shape[-1]
    half = (size - 1) // 2
    x, y = _point_pixel(spatial, arrays)
    ix, iy = jnp.floor(x), jnp.floor(y)
    fx, fy = x - ix, y - iy
    padded = lambda ky, kx: jnp.pad(kernel, ((0, 0), ky, kx))  # noqa: E731
    window = ((1 - fy) * (1 - fx) * padded((0, 1), (0, 1)) + (1 - fy) * fx * padded((0, 1), (1, 0))
              + fy * (1 - fx) * padded((1, 0), (0, 1)) + fy * fx * padded((1, 0), (1, 0)))
    _, ny, nx = exposure.shape
    inside = (ix >= -half - 1) & (ix <= nx - 1 + half) & (iy >= -half - 1) & (iy <= ny - 1 + half)
    start_y = jnp.clip(iy.astype(int) - half + margin, 0, ny + 2 * margin - size - 1)
    start_x = jnp.clip(ix.astype(int) - half + margin, 0, nx + 2 * margin - size - 1)
    exposure_window = jax.lax.dynamic_slice(exposure, (0, start_y, start_x), (exposure.shape[0], size + 1, size + 1))
    true_counts = window * exposure_window * flux[:, None, None]
    reco = _apply_edisp(true_counts, arrays.edisp) * (arrays.applies * inside)
    current = jax.lax.dynamic_slice(npred, (0, start_y, start_x), (npred.shape[0], size + 1, size + 1))
    return jax.lax.dynamic_update_slice(npred, current + reco, (0, start_y, start_x))


def _convolve(image: Float[Array, "p y x"], kernel_fft: Complex[Array, "r fy fxh"], mix: Float[Array, "et r"] | None, size: int,
              fft_shape) -> Float[Array, "et y x"]:
    """Linear convolution of the image with each (odd, ``size`` wide) kernel, cropped to
    the image: the kernels are ``mix @ components`` (see :func:`fitax.gamma.map_binding.psf_components`), or with
    ``mix=None`` the image has one plane per kernel and ``kernel_fft`` holds the kernels."""
    ny, nx = image.shape[-2:]
    full = jnp.fft.irfft2(jnp.fft.rfft2(image, s=fft_shape) * kernel_fft, s=fft_shape)
    half = (size - 1) // 2
    cropped = full[:, half:half + ny, half:half + nx]
    return cropped if mix is None else _planes_matmul(mix, cropped)


def _convolve_by_position(image: Float[Array, "p y x"], exposure: Float[Array, "et y x"], psf: PositionArrays, size: int,
                          fft_shape) -> Float[Array, "et y x"]:
    """``sum_m U_m(E) * (beta_m(E) image(E))`` at each true energy ``E``, cropped to the
    image, with ``beta_m(x', E)`` the component's coefficient at pixel ``x'`` (bilinear
    between its nodes) times the exposure there. Each term is one forward transform; the
    terms of an energy are summed in Fourier space and transformed back once."""
    n_true, ny, nx = exposure.shape
    coefficients = jnp.einsum("tfp,fp->tp", psf.coefficients[:, psf.node_index], psf.node_weight)
    images = image[psf.energy_of] if image.shape[0] > 1 else image
    planes = coefficients.reshape(-1, ny, nx) * exposure[psf.energy_of] * images
    spectra = jnp.fft.rfft2(planes, s=fft_shape) * psf.fft
    full = jnp.fft.irfft2(jax.ops.segment_sum(spectra, psf.energy_of, num_segments=n_true), s=fft_shape)
    half = (size - 1) // 2
    return full[:, half:half + ny, half:half + nx]


def _planes_matmul(matrix: Float[Array, "a b"], planes: Float[Array, "b y x"]) -> Float[Array, "a y x"]:
    """``matrix @ planes`` over the plane axis, as a 2-d matrix product: written so, its
    derivatives need no transposed copies of the planes (as an einsum they did, and the
    gradient and Hessian-vector products of a dataset took ~20% longer)."""
    return (matrix @ planes.reshape(planes.shape[0], -1)).reshape((matrix.shape[0],) + planes.shape[1:])


def _apply_pixel_edisp(true_counts: Float[Array, "et y x"], matrices: Float[Array, "k et e"],
                       index: Int[Array, " p"]) -> Float[Array, "e y x"]:
    """Each pixel's counts through its own energy-dispersion matrix: one matrix product per
    distinct matrix, kept where the pixels take it (no per-pixel copy of the matrices)."""
    _, ny, nx = true_counts.shape
    flat = true_counts.reshape(true_counts.shape[0], -1)

    def add(reco, k):
        return reco + jnp.where(index == k, matrices[k].T @ flat, 0.0), None

    reco, _ = jax.lax.scan(add, jnp.zeros((matrices.shape[-1], flat.shape[1])), jnp.arange(matrices.shape[0]))
    return reco.reshape(-1, ny, nx)


def _apply_edisp(true_counts: Float[Array, "et y x"], edisp: Float[Array, "et e"]) -> Float[Array, "e y x"]:
    return _planes_matmul(edisp.T, true_counts)


def dataset_npred(models: Models, group, one: OneDataset) -> Float[Array, "e y x"]:
    """npred of one dataset of ``group``; ``one`` holds that dataset's arrays."""
    _, ny, nx = one.background.shape
    margin = group.kernel_size + 1
    low, high = group.energy_true_bounds
    npred = one.background * models.background_scales(group.names, group.energy_centres)[one.index][:, None, None]
    exposure = one.padded_exposure[:, margin:margin + ny, margin:margin + nx]
    points = by_pixel = pixel_edisp = None
    for name, arrays in zip(group.source_names, one.sources):
        source = models[name]
        flux = source.spectral.integral(low, high)
        if arrays.intervals is not None:
            flux = flux * source.temporal.mean(arrays.intervals)
        if arrays.is_point:
            if points is None:
                points = jnp.zeros((npred.shape[0], ny + 2 * margin, nx + 2 * margin))
            points = _add_point_source(points, source.spatial, arrays, one.padded_exposure, flux, margin)
            continue
        image = _extended_image(source.spatial, arrays, one.solid_angle, (ny, nx))
        if arrays.position_psf is not None:
            true_counts = _convolve_by_position(image, exposure, arrays.position_psf, group.kernel_size,
                                                group.fft_shape) * flux[:, None, None]
            if arrays.pixel_edisp is not None:
                # the sources spread by position share each pixel's matrices: applied once, to their sum
                contribution = arrays.applies * true_counts
                by_pixel = contribution if by_pixel is None else by_pixel + contribution
                pixel_edisp = arrays
                continue
        else:
            spread = image if arrays.psf_fft is None else _convolve(image, arrays.psf_fft, arrays.psf_mix, group.kernel_size,
                                                                    group.fft_shape)
            true_counts = spread * exposure * flux[:, None, None]
        npred = npred + arrays.applies * _apply_edisp(true_counts, arrays.edisp)
    if by_pixel is not None:
        npred = npred + _apply_pixel_edisp(by_pixel, pixel_edisp.pixel_edisp, pixel_edisp.pixel_edisp_index)
    return npred if points is None else npred + points[:, margin:margin + ny, margin:margin + nx]


def dataset_stat(group, models: Models, one: OneDataset) -> Float[Array, ""]:
    """Cash deviance of one dataset of ``group`` over its fit mask."""
    npred = dataset_npred(models, group, one)
    total = jnp.sum(jnp.where(one.mask, npred, 0.0))
    return cash_sparse(total, npred.reshape(-1)[one.count_index], one.count_values) + one.deviance_offset


def sharded_stat(group, models: Models, items: OneDataset) -> Float[Array, ""]:
    """The group's Cash deviance with its datasets (``items``) split over the devices
    (N / n_devices datasets per device)."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("datasets",))

    def local(models_local, shard):
        return jax.lax.psum(jnp.sum(map_items(lambda one: dataset_stat(group, models_local, one), shard)), "datasets")

    return jax.shard_map(local, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec("datasets")),
                         out_specs=jax.sharding.PartitionSpec(), check_vma=False)(models, items)
