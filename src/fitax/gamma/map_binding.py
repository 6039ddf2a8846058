"""Binding map datasets to sources (host side): stacking and the IRFs at each source.

:func:`bind_maps` turns map datasets of identical shapes and energy axes, and the current
sources, into one :class:`MapGroup` pytree: the datasets stacked along a leading axis,
with each source's IRFs at its position (PSF kernels, or their principal components as
Fourier transforms; energy-dispersion matrices) and the sky grids its spatial model needs.
The group's likelihood is a loop over its datasets (:meth:`MapGroup.stat_terms`, an item
of :class:`fitax.ItemSum`), so a joint fit of N datasets compiles once, whatever N; the
kernels are in :mod:`fitax.gamma.map_npred`.

Only shapes and structure are static fields of a group (they key the compiled fit); every
value read from data (positions, counts, Gammapy's data constant) is an array leaf, so a
new binding or another dataset of the same shapes reuses the compiled fit.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from jaxtyping import Array, Bool, Float, Int

from ..device import to_device
from ..mapsum import map_items
from ..stats import cash_data_term
from . import irf
from .geometry import celestial, pixel_centres, position_key
from .map_npred import OneDataset, PositionArrays, SourceArrays, dataset_npred, dataset_stat, sharded_stat
from .models import Models, SkyModel
from .psf_kernel_map import truncated_basis
from .psf_position import edisp_by_pixel, position_psf
from .spatial import PointSpatialModel, unit_vectors
from .temporal import temporal_intervals
from .template import TemplateSpatialModel

__all__ = ["MapGroup", "bind_maps", "check_sources_on_maps", "oversampling_factor", "psf_components", "PSF_TOLERANCE"]

_MAX_OVERSAMPLING = 200


class MapGroup(eqx.Module):
    """Datasets of identical shapes and energy axes, stacked along a leading axis."""

    mask: Bool[Array, "n e y x"]
    background: Float[Array, "n e y x"]
    padded_exposure: Float[Array, "n et py px"]  # zero-padded by kernel_size + 1 pixels on each side; used true energies
    solid_angle: Float[Array, "n y x"]
    count_index: Int[Array, "n k"]  # bins (flat) with counts in the fit mask, padded
    count_values: Float[Array, "n k"]
    deviance_offset: Float[Array, " n"]
    energy_true_bounds: Float[Array, "2 et"]  # edges of the true-energy bins that reach some reconstructed energy
    energy_centres: Float[Array, " e"]
    sources: tuple[SourceArrays, ...]
    data_constant: Float[Array, ""]  # Gammapy's -2 log L minus the deviance: a leaf, not a jit key
    names: tuple[str, ...] = eqx.field(static=True)  # "" for padding
    source_names: tuple[str, ...] = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)
    sharded: bool = eqx.field(static=True)  # datasets split over the devices

    def items(self) -> OneDataset:
        """The arrays with a dataset axis, with each dataset's index: what is mapped over."""
        return OneDataset(mask=self.mask, background=self.background, padded_exposure=self.padded_exposure,
                          solid_angle=self.solid_angle, count_index=self.count_index, count_values=self.count_values,
                          deviance_offset=self.deviance_offset, sources=self.sources, index=jnp.arange(len(self.names)))

    def npred(self, models: Models) -> Float[Array, "n e y x"]:
        """npred of every dataset of the group (jit-able)."""
        return map_items(functools.partial(dataset_npred, models, self), self.items())

    def stat_terms(self) -> list:
        """The group's Cash deviance as :class:`fitax.ItemSum` terms: one per dataset (fits
        compute Hessians dataset by dataset), or one for the group split over devices."""
        if self.sharded:
            return [(self._sharded_stat, None)]
        return [(functools.partial(dataset_stat, self), self.items())]

    def _sharded_stat(self, models: Models, _) -> Float[Array, ""]:
        return sharded_stat(self, models, self.items())


def check_sources_on_maps(maps: list, sources: list[SkyModel]) -> None:
    """Errors naming the model for sources that map datasets cannot evaluate: without a
    spatial model, a template with a free position, or outside every map they apply to."""
    for source in sources:
        if source.spatial is None:
            if any(source.applies_to(d.name) for d in maps):
                raise ValueError(f"model {source.name!r} has no spatial model, so it cannot predict counts in map datasets "
                                 f"({[d.name for d in maps if source.applies_to(d.name)]}); give it one or restrict its datasets_names")
            continue
        position = source.spatial.position
        if isinstance(source.spatial, TemplateSpatialModel) and not (source.spatial.lon_0.frozen and source.spatial.lat_0.frozen):
            raise ValueError(f"model {source.name!r}: a template's position (lon_0, lat_0) cannot be fitted; freeze it")
        applies = [d for d in maps if source.applies_to(d.name)]
        if position is not None and applies and not any(d.contains(position) for d in applies):
            raise ValueError(
                f"model {source.name!r} at {position.to_string('decimal')} ({source.spatial.frame}) lies outside "
                f"every dataset map it applies to ({[d.name for d in applies]})"
            )


def _next_fast_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c 7^d >= n (sizes the FFT handles fastest)."""
    size = n
    while True:
        rest = size
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def _fft_length(n: int, kernel_size: int) -> int:
    """Length of the circular convolutions: the wrapped tail of the linear convolution of
    ``n`` pixels with an odd ``kernel_size`` kernel must land in the ``(kernel_size - 1) / 2``
    pixels that the 'same' crop drops, so ``n + (kernel_size - 1) / 2`` suffice (109
    instead of 118 for 100 pixels and 19-pixel kernels: FFTs of 112 instead of 120)."""
    return _next_fast_size(n + (kernel_size - 1) // 2)


def oversampling_factor(spatial, wcs: WCS) -> int:
    """Sub-pixels per pixel side on which an extended source's model is integrated: its
    smallest feature (``evaluation_bin_size_min``) over the pixel size, at most 200."""
    size = spatial.evaluation_bin_size_min()
    if size is None:
        return 1
    scale = irf.pixel_scale(wcs)
    return int(min(np.ceil(scale / size), _MAX_OVERSAMPLING)) if size > 0 else _MAX_OVERSAMPLING


def bind_maps(members: list, sources: list[SkyModel], shard: bool) -> MapGroup:
    """Stack map datasets of identical shapes and energy axes (``members``) and attach
    each source's IRFs and sky grids at its current position. ``shard``: split the
    datasets over the JAX devices (padded with copies whose fit mask is empty)."""
    n_real = len(members)
    multiple = jax.device_count() if shard and n_real > 1 else 1
    members = members + [members[-1]] * (-(-n_real // multiple) * multiple - n_real)
    first = members[0]
    ny, nx = first.shape
    positions = [source.spatial.position for source in sources]
    edisps = [[dataset.edisp_matrix(position) for dataset in members] for position in positions]
    by_position = [_psf_by_position(source) for source in sources]
    pixel_edisps = [dataset.cached(("edisp_by_pixel",), lambda d=dataset: edisp_by_pixel(d)) for dataset in members] \
        if any(by_position) else []
    every_pixel = [list(found[0]) for found in pixel_edisps if found is not None]
    used = _used_true_energies(edisps + every_pixel, len(first.energy_true_centres))
    kernels: dict[tuple[int, int], np.ndarray] = {}
    for j, position in enumerate(positions):
        for i, dataset in enumerate(members):
            kernel = None if position is None or by_position[j] else dataset.psf_kernel(position)
            if kernel is not None:
                kernels[i, j] = _trimmed(kernel[used])
    position_psfs = [dataset.cached(("psf_position", tuple(used)), lambda d=dataset: position_psf(d, used))
                     for dataset in members] if any(by_position) else []
    size = max([k.shape[-1] for k in kernels.values()] + [p.components.shape[-1] for p in position_psfs], default=1)
    fft_shape = (_fft_length(ny, size), _fft_length(nx, size))

    def padded(kernel):
        full = np.zeros((len(kernel), size, size))
        start = (size - kernel.shape[-1]) // 2
        full[:, start:start + kernel.shape[-1], start:start + kernel.shape[-1]] = kernel
        return full

    def padded_fft(kernel):
        return np.fft.rfft2(padded(kernel), s=fft_shape)

    def basis_and_mix(kernel):
        basis, mix = psf_components(padded(kernel))
        return padded_fft(basis), mix

    # one copy on the device for all the sources spread by position: the arrays depend on the dataset only
    position_arrays = _position_arrays(members, position_psfs, size, fft_shape, used) if position_psfs else None
    pixel_edisp_arrays = _pixel_edisp_arrays(members, pixel_edisps, used) if any(p is not None for p in pixel_edisps) \
        else (None, None)
    source_arrays = []
    for j, source in enumerate(sources):
        spatial, position = source.spatial, positions[j]
        edisp = np.stack(edisps[j])[:, used]
        is_point = isinstance(spatial, PointSpatialModel)
        psf_fft = psf_mix = None
        if not is_point and any((i, j) in kernels for i in range(len(members))):
            identity = np.ones((len(used), 1, 1))
            if isinstance(spatial, TemplateSpatialModel) and spatial.is_energy_dependent:
                # one image per true energy: each needs its own kernel
                psf_fft = to_device(np.stack([
                    dataset.cached(("psf_fft", position_key(position), size, fft_shape, tuple(used)),
                                    lambda i=i: padded_fft(kernels[i, j]))
                    if (i, j) in kernels else padded_fft(identity) for i, dataset in enumerate(members)]))
            else:
                parts = [dataset.cached(("psf_components", position_key(position), size, fft_shape, tuple(used)),
                                         lambda i=i: basis_and_mix(kernels[i, j]))
                         if (i, j) in kernels else basis_and_mix(identity) for i, dataset in enumerate(members)]
                rank = _rank_bucket(max(mix.shape[1] for _, mix in parts), len(used))
                psf_fft = to_device(_stacked_with_zeros([f for f, _ in parts], (rank,) + parts[0][0].shape[1:]))
                psf_mix = to_device(_stacked_with_zeros([mix for _, mix in parts], (len(used), rank)))
        by_pixel = position_arrays if by_position[j] else None
        pixel_edisp, pixel_edisp_index = pixel_edisp_arrays if by_position[j] else (None, None)
        pixel = jacobian = reference = grid_xyz = point_kernel = template_image = None
        oversampling = 1
        if isinstance(spatial, TemplateSpatialModel):
            template_image = to_device(np.stack([_template_image(spatial, d)[used if spatial.is_energy_dependent else slice(None)]
                                                   for d in members]))
        elif is_point:
            point_kernel = to_device(np.stack([padded(kernels.get((i, j), np.ones((len(used), 1, 1))))
                                                 for i in range(len(members))]))
            lon, lat = float(spatial.lon_0.value), float(spatial.lat_0.value)
            linear = [d.pixel_linearisation(lon, lat, spatial.frame) for d in members]
            pixel = to_device(np.stack([p for p, _ in linear]))
            jacobian = to_device(np.stack([jac for _, jac in linear]))
            reference = to_device([[lon, lat]] * len(members))
        else:
            oversampling = max(oversampling_factor(spatial, d.wcs) for d in members)
            grid_xyz = to_device(np.stack([d.cached(("grid", oversampling, spatial.frame),
                                                       lambda d=d: _grid_in_frame(d, oversampling, spatial.frame)) for d in members]))
        intervals = temporal_intervals(source, [d.irfs.gti for d in members], [d.name if i < n_real else "" for i, d in enumerate(members)])
        source_arrays.append(SourceArrays(
            applies=to_device([float(source.applies_to(d.name)) for d in members]), edisp=to_device(edisp),
            intervals=None if intervals is None else to_device(intervals),
            psf_fft=psf_fft, psf_mix=psf_mix, pixel=pixel, pixel_jacobian=jacobian, reference=reference, psf_kernel=point_kernel,
            grid_xyz=grid_xyz, template_image=template_image, position_psf=by_pixel,
            pixel_edisp=pixel_edisp, pixel_edisp_index=pixel_edisp_index,
            oversampling=oversampling, is_point=is_point,
        ))
    data = _stacked_data(tuple(members), n_real, size + 1, tuple(used))
    return MapGroup(
        mask=data.mask, background=data.background, padded_exposure=data.padded_exposure,
        solid_angle=data.solid_angle,
        count_index=data.count_index, count_values=data.count_values, deviance_offset=data.deviance_offset,
        energy_true_bounds=to_device(np.stack([first.energy_true_edges[:-1], first.energy_true_edges[1:]])[:, used]),
        energy_centres=to_device(first.energy_centres),
        sources=tuple(source_arrays), names=tuple(d.name if i < n_real else "" for i, d in enumerate(members)), source_names=tuple(s.name for s in sources),
        kernel_size=size, fft_shape=fft_shape, data_constant=to_device(data.constant), sharded=shard and n_real > 1,
    )


def _psf_by_position(source: SkyModel) -> bool:
    """Whether ``source`` is spread with the PSF of each pixel (a point source's PSF is
    that of its position either way)."""
    return source.psf_mode == "position" and not isinstance(source.spatial, PointSpatialModel)


def _position_arrays(members: list, position_psfs: list, size: int, fft_shape: tuple[int, int], used) -> PositionArrays:
    """The datasets' position-dependent PSFs as arrays of the group: the terms' Fourier
    transforms (components padded to ``size`` pixels, centred), energies and coefficients
    at the nodes, and each pixel's nodes; as many terms in every dataset (zeros: exact),
    rounded up to a multiple of 8 so that another binding with a few more does not
    compile the fit again, and as many nodes (unused padding)."""
    n_terms = -(-max(p.n_terms for p in position_psfs) // 8) * 8
    n_nodes = max(p.node_coefficients.shape[-1] for p in position_psfs)

    def transforms(decomposition):
        k = decomposition.components.shape[-1]
        start = (size - k) // 2
        padded = np.zeros((decomposition.n_terms, size, size))
        padded[:, start:start + k, start:start + k] = decomposition.components
        return np.fft.rfft2(padded, s=fft_shape)

    fft = [d.cached(("psf_position_fft", tuple(used), size, fft_shape), lambda p=p: transforms(p))
           for d, p in zip(members, position_psfs)]
    return PositionArrays(
        fft=to_device(_stacked_with_zeros(fft, (n_terms,) + fft[0].shape[1:])),
        energy_of=to_device(_stacked_with_zeros([p.energy_of for p in position_psfs], (n_terms,))),
        coefficients=to_device(_stacked_with_zeros([p.node_coefficients for p in position_psfs], (n_terms, n_nodes))),
        node_index=to_device(np.stack([p.node_index for p in position_psfs])),
        node_weight=to_device(np.stack([p.node_weight for p in position_psfs])))


def _pixel_edisp_arrays(members: list, pixel_edisps: list, used) -> tuple[Array, Array]:
    """Each dataset's per-pixel energy dispersion (its map-centre matrix everywhere where
    one matrix holds), as many matrices per dataset (padding repeats the first)."""
    found = [p if p is not None else (d.edisp_matrix(None)[None], np.zeros(int(np.prod(d.shape)), np.int32))
             for d, p in zip(members, pixel_edisps)]
    count = max(len(matrices) for matrices, _ in found)
    matrices = np.stack([np.concatenate([m[:, used]] + [m[:1, used]] * (count - len(m))) for m, _ in found])
    return to_device(matrices), to_device(np.stack([index for _, index in found]))


def _stacked_with_zeros(arrays: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """``arrays`` stacked into one array of ``(len(arrays),) + shape``, each in the leading
    corner of its slot and zeros after it, written in place: padding each, then stacking,
    then copying to the device made three copies of the PSF transforms (460 MB per source
    for 400 simulated datasets)."""
    if any(array.ndim != len(shape) or any(n > m for n, m in zip(array.shape, shape)) for array in arrays):
        raise ValueError(f"cannot stack arrays of shapes {sorted({a.shape for a in arrays})} into slots of {tuple(shape)}")
    stacked = np.zeros((len(arrays),) + tuple(shape), np.result_type(*arrays))
    for slot, array in zip(stacked, arrays):
        slot[tuple(slice(0, n) for n in array.shape)] = array
    return stacked


@dataclasses.dataclass(frozen=True)
class _StackedData:
    mask: Array
    background: Array
    padded_exposure: Array  # (n, et, y + 2 margin, x + 2 margin)
    solid_angle: Array
    count_index: Array     # (n, k) flat bins with counts in the fit mask, padded with bin 0
    count_values: Array    # (n, k) their counts, 0 for padding
    deviance_offset: Array  # (n,) 2 sum (n log n - n) over the fit mask
    constant: float         # Gammapy's -2 log L minus the deviance, summed over datasets


def _trimmed(kernels: Float[np.ndarray, "et k k"]) -> np.ndarray:
    """Kernels without the zero border they share: the true energies left out may have
    been the only ones as wide as the stack (the simulated PSF's lowest energy: 19 pixels,
    the next 17), and narrower kernels make shorter FFTs (108 instead of 112 points)."""
    nonzero = np.any(kernels != 0, axis=0)
    if not nonzero.any():
        return kernels
    half = kernels.shape[-1] // 2
    rows, cols = np.nonzero(nonzero)
    reach = int(max(np.abs(rows - half).max(), np.abs(cols - half).max()))
    return kernels[:, half - reach:half + reach + 1, half - reach:half + reach + 1]


def _used_true_energies(edisps: list[list[np.ndarray]], n_true: int) -> np.ndarray:
    """Indices of the true-energy bins whose counts the energy dispersion sends to some
    reconstructed energy, for some source in some dataset. The others (the simulated
    datasets' first and last of 25) add nothing to npred, so every array leaves them out:
    exact, and that much less work per evaluation."""
    rows = [matrix.sum(axis=1) > 0 for per_source in edisps for matrix in per_source]
    used = np.flatnonzero(np.any(rows, axis=0)) if rows else np.arange(n_true)
    return used if len(used) else np.arange(n_true)


@functools.lru_cache(maxsize=2)
def _stacked_data(members: tuple, n_real: int, margin: int, used_true: tuple[int, ...]) -> _StackedData:
    """The datasets' arrays stacked on the device (padding copies get an empty mask). They
    do not depend on the models, so refits of the same datasets reuse them (datasets are
    immutable and hashed by identity)."""
    counts = np.stack([d.counts for d in members])
    mask = np.stack([d.mask if i < n_real else np.zeros_like(d.mask) for i, d in enumerate(members)])
    counted = [np.flatnonzero(m & (c > 0)) for c, m in zip(counts, mask)]
    width = _count_width(max(len(i) for i in counted))
    count_index = np.zeros((len(members), width), np.int32)
    count_values = np.zeros((len(members), width))
    for row, (index, c) in enumerate(zip(counted, counts)):
        count_index[row, :len(index)] = index
        count_values[row, :len(index)] = c.reshape(-1)[index]
    offsets = cash_data_term(counts, mask, axis=(1, 2, 3))
    return _StackedData(
        mask=to_device(mask), background=to_device(np.stack([d.background for d in members])),
        padded_exposure=_padded_exposure(members, margin, list(used_true)),
        solid_angle=to_device(np.stack(_solid_angles(members))),
        count_index=to_device(count_index), count_values=to_device(count_values), deviance_offset=to_device(offsets),
        # Gammapy's 2 (mu - n log mu) is the deviance minus 2 (n log n - n)
        constant=-float(np.sum(offsets)),
    )


def _rank_bucket(rank: int, n_kernels: int) -> int:
    """PSF components kept, rounded up to a multiple of 4 (zero components, exact): the
    rank a kernel needs depends on the source's position (14 or 15 of the 23 kernels of a
    simulated dataset's sources 0.05 deg apart), and as a shape of the compiled fit it
    made a new binding trace and compile the fit again."""
    return min(-(-rank // 4) * 4, n_kernels)


def _solid_angles(members: tuple) -> list[np.ndarray]:
    """Each dataset's pixel solid angles, computed once per geometry (shape and WCS equal,
    wcslib's exact comparison): datasets of one geometry, as the 10 simulated ones, share
    them (10 times ~90 ms on a loaded machine otherwise)."""
    computed: list[tuple] = []  # (shape, wcsprm, solid angles)
    result = []
    for dataset in members:
        wcs = celestial(dataset.wcs).wcs
        same = next((values for shape, other, values in computed if shape == dataset.shape and other.compare(wcs)), None)
        if same is None:
            same = dataset.solid_angle
            computed.append((dataset.shape, wcs, same))
        result.append(same)
    return result


_HOST_PADDING_BYTES = 256 * 2**20


def _padded_exposure(members: tuple, margin: int, used_true: list[int]) -> Array:
    """The exposures of the true energies used, zero-padded by ``margin`` pixels, on the
    device. A small stack is padded on the host (nothing to compile); a large one is moved
    unpadded and padded there: for 400 simulated datasets the padded array is 1.5 GB, six
    times the exposures, and writing and copying it on the host took ~9 s of the binding
    (~1-3 s moved then padded)."""
    n_true, ny, nx = members[0].exposure[used_true].shape
    shape = (len(members), n_true, ny + 2 * margin, nx + 2 * margin)
    if np.prod(shape) * 8 <= _HOST_PADDING_BYTES:
        padded = np.zeros(shape)
        for row, dataset in enumerate(members):
            padded[row, :, margin:margin + ny, margin:margin + nx] = dataset.exposure[used_true]
        return to_device(padded)
    return _pad_images(to_device(np.stack([dataset.exposure[used_true] for dataset in members]).astype(float, copy=False)), margin)


@functools.partial(jax.jit, static_argnames="margin")
def _pad_images(images: Float[Array, "n p y x"], margin: int) -> Float[Array, "n p y2 x2"]:
    return jnp.pad(images, ((0, 0), (0, 0), (margin, margin), (margin, margin)))


def _count_width(n: int) -> int:
    """Room for ``n`` counted bins, rounded up to one of 8 widths per octave: the width is a
    shape of the compiled likelihood, so datasets of equal shapes whose counts differ
    (another observation, a resimulation) must fall on the same width to share the
    compiled fit; the padding (< 12.5%) costs a gather of zeros."""
    if n <= 8:
        return 8
    step = 2 ** (int(np.log2(n)) - 3)
    return -(-n // step) * step


def _template_image(spatial: TemplateSpatialModel, dataset) -> np.ndarray:
    """A template resampled at the dataset's pixel centres (and true energies) times the
    pixels' solid angles: ``(1 or energy_true, ny, nx)``."""
    lon, lat = pixel_centres(dataset.wcs, dataset.shape)
    if _wcs_frame(dataset.wcs) != spatial.frame:
        coords = SkyCoord(lon, lat, unit="deg", frame=_wcs_frame(dataset.wcs)).transform_to(spatial.frame)
        lon, lat = coords.spherical.lon.deg, coords.spherical.lat.deg
    energy = dataset.energy_true_centres if spatial.is_energy_dependent else None
    values = spatial.evaluate(lon, lat, energy)
    return (values if values.ndim == 3 else values[None]) * dataset.solid_angle


def _grid_in_frame(dataset, oversampling: int, frame: str) -> np.ndarray:
    """Unit vectors ``(3, fy, fx)`` of the fine pixel centres, in the model's frame."""
    lon, lat = pixel_centres(dataset.wcs, dataset.shape, oversampling)
    map_frame = _wcs_frame(dataset.wcs)
    if map_frame != frame:
        coords = SkyCoord(lon, lat, unit="deg", frame=map_frame).transform_to(frame)
        lon, lat = coords.spherical.lon.deg, coords.spherical.lat.deg
    return np.asarray(unit_vectors(lon, lat))


def _wcs_frame(wcs: WCS) -> str:
    from astropy.wcs.utils import wcs_to_celestial_frame

    return wcs_to_celestial_frame(celestial(wcs)).name


PSF_TOLERANCE = 1e-6


def psf_components(kernels: Float[np.ndarray, "et k k"]) -> tuple[np.ndarray, np.ndarray]:
    """The fewest components ``(r, k, k)`` and weights ``(et, r)`` that reproduce every
    true energy's kernel to ``PSF_TOLERANCE`` of its sum (L1 norm of the difference).

    A PSF changes smoothly with energy, so its kernels span few dimensions (the 23 kernels
    of the simulated CTA PSF that the fit uses need 16 components): convolving
    the image with the components and weighting the results needs r FFTs instead of one
    per true energy, forwards and in the gradient. The truncation changes npred by at most
    1e-6 of the source's counts around each pixel, far below Gammapy's own PSF tabulation
    and the 1e-3 agreement the tests require.
    """
    flat = kernels.reshape(len(kernels), -1)
    basis = truncated_basis(flat, PSF_TOLERANCE * np.abs(flat).sum(axis=1))
    return basis.reshape((len(basis),) + kernels.shape[1:]), flat @ basis.T
