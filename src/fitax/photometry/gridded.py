"""An empirical PSF that changes across the image: a rectangular grid of ePSFs with bilinear
interpolation between grid points, as photutils' ``GriddedPSFModel``.

Each grid point holds an oversampled, pixel-integrated ePSF (:class:`~fitax.photometry.psf.ImagePSF`
convention: the array centre is the star's centre). A star at ``(x, y)`` gets the ePSF
interpolated bilinearly from the four grid points around it, with photutils' weights; beyond
the outermost grid points the edge ePSFs are used (photutils does the same). Each star's
interpolated table is then sampled at sub-pixel offsets by :class:`ImagePSF`'s cubic
convolution, where photutils uses a bicubic spline: the two agree to a few 1e-4 of the peak.

Files: the WebbPSF/STPSF layout that ``GriddedPSFModel.read(path, format="webbpsf")`` reads: the
primary HDU holds the ePSFs as a ``(n_psf, ny, nx)`` cube, ``OVERSAMP`` the oversampling and
``DET_YX<i>`` the string ``"(y, x)"`` of plane ``i``'s detector position (0-based pixels), as
WebbPSF writes them. photutils up to 3.0 parsed that string as ``(x, y)``; later versions, and
fitax, read it as WebbPSF defines it.

Example:
    >>> import numpy as np
    >>> from fitax.photometry import GaussianPSF
    >>> from fitax.photometry.gridded import GriddedPSF
    >>> grid = GriddedPSF.from_function(lambda x, y: GaussianPSF(1.5 + x / 2000, 1.5, 0.0), image_shape=(1000, 1000),
    ...                                 grid_shape=(2, 2))
    >>> grid
    GriddedPSF(2 x 2 ePSFs at x 0-999, y 0-999, 25 x 25 px, oversampling 4)
    >>> centre = grid.at_point(499.5, 499.5)                  # halfway: the mean of the four ePSFs
    >>> edges = [GaussianPSF(s, 1.5, 0.0).prf(0.0, 0.0) for s in (1.5, 1.5 + 999 / 2000)]
    >>> bool(np.isclose(centre.prf(0.0, 0.0), np.mean(edges), rtol=1e-3))
    True
"""

from __future__ import annotations

import re
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .psf import ImagePSF
from .varying import PerStarPSF

__all__ = ["GriddedPSF", "read_gridded_psf", "write_gridded_psf"]

_DET_YX = re.compile(r"^DET_YX(\d+)$")


class GriddedPSF(eqx.Module):
    """ePSFs on a rectangular grid of image positions. ``data[k]`` is the ePSF at
    ``(grid_x[k % nx_grid], grid_y[k // nx_grid])`` (sorted by y, then x), padded as
    :class:`ImagePSF` stores its table and normalised as it is: the table sums to
    ``oversampling**2``, so a fitted flux is the star's flux within the table. photutils uses a
    grid's tables as given (flux = amplitude x table sum / oversampling**2): for a table that
    does not hold the whole PSF (a WebbPSF grid sums to its encircled energy) its fluxes are
    larger by 1 / that sum."""

    data: Float[Array, "n_psf ny nx"]
    grid_x: tuple[float, ...] = eqx.field(static=True)
    grid_y: tuple[float, ...] = eqx.field(static=True)
    oversampling: int = eqx.field(static=True)
    source: str = eqx.field(static=True, default="")

    def __init__(self, data, grid_xypos, oversampling: int, *, source: str = ""):
        where = f"{source}: " if source else ""
        data = np.asarray(data, dtype=float)
        if data.ndim == 2:
            data = data[None]
        positions = np.asarray(grid_xypos, dtype=float).reshape(-1, 2)
        if data.ndim != 3 or min(data.shape[1:]) < 4:
            raise ValueError(f"{where}a PSF grid needs ePSFs of at least 4 x 4 samples as a (n_psf, ny, nx) cube, got shape {data.shape}")
        if len(positions) != len(data):
            raise ValueError(f"{where}{len(data)} ePSFs but {len(positions)} grid positions")
        if not np.all(np.isfinite(data)) or np.any(data.sum(axis=(1, 2)) <= 0):
            raise ValueError(f"{where}every ePSF of the grid must be finite with a positive sum")
        xs, ys = np.unique(positions[:, 0]), np.unique(positions[:, 1])
        if {tuple(p) for p in positions} != {(x, y) for x in xs for y in ys} or len(positions) != len(xs) * len(ys):
            raise ValueError(f"{where}the ePSF positions must form a rectangular grid (every x with every y, once), got {positions.tolist()}")
        if int(oversampling) < 1:
            raise ValueError(f"{where}oversampling must be a positive integer, got {oversampling}")
        order = np.lexsort((positions[:, 0], positions[:, 1]))
        tables = data[order] / data[order].sum(axis=(1, 2), keepdims=True) * int(oversampling) ** 2
        self.data = jnp.asarray(np.pad(tables, ((0, 0), (2, 2), (2, 2))))
        self.grid_x, self.grid_y = tuple(float(v) for v in xs), tuple(float(v) for v in ys)
        self.oversampling = int(oversampling)
        self.source = source

    @classmethod
    def from_function(cls, psf_at, *, image_shape: tuple[int, int], grid_shape: tuple[int, int] = (3, 3), size: int = 25,
                      oversampling: int = 4) -> "GriddedPSF":
        """A grid of any fitax PSF: ``psf_at(x, y)`` gives the PSF at image position ``(x,
        y)``; the grid spans the image corner to corner with ``grid_shape = (ny, nx)`` points
        and ePSFs of ``size`` image pixels. Write it with :func:`write_gridded_psf` to hand a
        fitted PSF to photutils."""
        ny, nx = grid_shape
        xs = np.linspace(0, image_shape[1] - 1, nx) if nx > 1 else np.array([(image_shape[1] - 1) / 2])
        ys = np.linspace(0, image_shape[0] - 1, ny) if ny > 1 else np.array([(image_shape[0] - 1) / 2])
        fine = (np.arange(size * oversampling + 1) - size * oversampling / 2) / oversampling
        tables, positions = [], []
        for y in ys:
            for x in xs:
                tables.append(np.asarray(psf_at(float(x), float(y)).prf(fine[None, :], fine[:, None])))
                positions.append((x, y))
        return cls(np.stack(tables), positions, oversampling)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.grid_y), len(self.grid_x)

    def weights(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear weights ``(n, 4)`` of each star's four surrounding ePSFs and their indices
        into :attr:`data` (photutils' interpolation: the bounding grid cell, the position
        clipped to it, so beyond the grid the edge ePSFs are used)."""
        x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        gx, gy = np.asarray(self.grid_x), np.asarray(self.grid_y)
        if len(gx) == 1 and len(gy) == 1:
            return np.ones((len(x), 1)), np.zeros((len(x), 1), dtype=int)
        ix = np.clip(np.searchsorted(gx, x) - 1, 0, max(len(gx) - 2, 0))
        iy = np.clip(np.searchsorted(gy, y) - 1, 0, max(len(gy) - 2, 0))
        ix1, iy1 = np.minimum(ix + 1, len(gx) - 1), np.minimum(iy + 1, len(gy) - 1)
        tx = np.where(ix1 > ix, (np.clip(x, gx[ix], gx[ix1]) - gx[ix]) / np.where(ix1 > ix, gx[ix1] - gx[ix], 1.0), 0.0)
        ty = np.where(iy1 > iy, (np.clip(y, gy[iy], gy[iy1]) - gy[iy]) / np.where(iy1 > iy, gy[iy1] - gy[iy], 1.0), 0.0)
        n_x = len(gx)
        index = np.stack([iy * n_x + ix, iy * n_x + ix1, iy1 * n_x + ix, iy1 * n_x + ix1], axis=1)
        weights = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], axis=1)
        return weights, index

    def at(self, x, y) -> PerStarPSF:
        """The ePSF of each star at ``x, y`` (0-based pixels), one table per star."""
        weights, index = self.weights(x, y)
        tables = np.einsum("nk,nkyx->nyx", weights, np.asarray(self.data)[index])
        return PerStarPSF(eqx.tree_at(lambda p: p.data, ImagePSF(np.ones((4, 4)), self.oversampling), tables))

    def at_point(self, x: float, y: float) -> ImagePSF:
        """The ePSF at one position, as a plain :class:`ImagePSF`."""
        tables = self.at(np.array([x]), np.array([y])).psf.data
        return eqx.tree_at(lambda p: p.data, ImagePSF(np.ones((4, 4)), self.oversampling), jnp.asarray(tables[0]))

    @property
    def fwhm(self) -> float:
        """The largest FWHM of the grid's ePSFs [pixels] (sizes that must hold every star)."""
        return max(self.at_point(x, y).fwhm for y in self.grid_y for x in self.grid_x)

    @property
    def table_size(self) -> int:
        """Width of the ePSF tables in image pixels."""
        return int((self.data.shape[-1] - 4) // self.oversampling)

    def cropped(self, size: int) -> "GriddedPSF":
        """The grid with its ePSF tables cut to the central ``size`` image pixels (odd) and
        normalised again: star fits hold one table per star, so a WebbPSF-sized table (~100 px
        at x4, 1.3 MB) costs memory that the 11-15 px stamps do not use. The cut keeps the
        table's centre, ``(n - 1) / 2``: it has as many samples as ``size`` pixels hold, one
        more where needed to keep the parity of ``n`` (WebbPSF tables are often even)."""
        tables = np.asarray(self.data)[:, 2:-2, 2:-2]
        samples = int(size) * self.oversampling
        lengths = [samples + (n - samples) % 2 for n in tables.shape[1:]]
        if any(length >= n for length, n in zip(lengths, tables.shape[1:])):
            return self
        start_y, start_x = ((n - length) // 2 for n, length in zip(tables.shape[1:], lengths))
        cut = tables[:, start_y : start_y + lengths[0], start_x : start_x + lengths[1]]
        positions = [(x, y) for y in self.grid_y for x in self.grid_x]
        return GriddedPSF(cut, positions, self.oversampling, source=self.source)

    def check_covers(self, image_shape: tuple[int, int]) -> None:
        """Raise if the grid does not cover an image of ``image_shape``: every image edge must
        lie within half a grid spacing of the outermost grid points (the convention of ePSFs
        at cell centres), else the edge ePSFs would be extrapolated over a region the grid
        does not describe (a grid for another detector or a cut-out)."""
        problems = []
        for axis, grid, extent in (("x", self.grid_x, image_shape[1]), ("y", self.grid_y, image_shape[0])):
            if len(grid) < 2:
                continue
            reach = 0.5 * float(np.min(np.diff(grid))) + 0.5
            if grid[0] - reach > 0 or grid[-1] + reach < extent - 1:
                problems.append(f"{axis} {grid[0]:g}-{grid[-1]:g} (reaching {grid[0] - reach:g}-{grid[-1] + reach:g})"
                                f" but the image spans {axis} 0-{extent - 1}")
        if problems:
            name = self.source or "the PSF grid"
            raise ValueError(f"{name} does not cover the image: its ePSFs are at " + "; ".join(problems)
                             + " (give a grid made for this detector, or positions in this image's pixels)")

    def __repr__(self) -> str:
        return (f"GriddedPSF({len(self.grid_y)} x {len(self.grid_x)} ePSFs at x {self.grid_x[0]:g}-{self.grid_x[-1]:g}, "
                f"y {self.grid_y[0]:g}-{self.grid_y[-1]:g}, {self.table_size} x {self.table_size} px, oversampling {self.oversampling})")


def read_gridded_psf(path) -> GriddedPSF:
    """A PSF grid from a FITS file in the WebbPSF layout photutils' ``GriddedPSFModel`` reads
    (see the module docstring); errors name the file and what is missing."""
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path) as hdul:
            header, data = hdul[0].header, hdul[0].data
            data = None if data is None else np.array(data, dtype=float)
    except OSError as error:
        raise ValueError(f"{path}: not a readable FITS file ({error})") from error
    if data is None or data.ndim not in (2, 3):
        raise ValueError(f"{path}: a PSF grid needs the ePSFs as a 2-d image or (n_psf, ny, nx) cube in the primary HDU")
    if "OVERSAMP" not in header:
        raise ValueError(f"{path}: missing the OVERSAMP keyword (the ePSFs' oversampling)")
    keys = {int(m.group(1)): key for key in header if (m := _DET_YX.match(key))}
    if not keys:
        raise ValueError(f"{path}: missing the DET_YX<i> keywords (each ePSF's '(y, x)' detector position)")
    positions = []
    for i in sorted(keys):
        text = str(header[keys[i]])
        numbers = re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", text)
        if len(numbers) != 2:
            raise ValueError(f"{path}: {keys[i]} = {text!r} is not a '(y, x)' position")
        positions.append((float(numbers[1]), float(numbers[0])))
    data = data if data.ndim == 3 else data[None]
    if sorted(keys) != list(range(len(data))):
        raise ValueError(f"{path}: {len(data)} ePSF planes but DET_YX keywords numbered {sorted(keys)}")
    oversampling = header["OVERSAMP"]
    if isinstance(oversampling, str):  # some writers give "(4, 4)"
        values = {int(float(v)) for v in re.findall(r"\d+(?:\.\d+)?", oversampling)}
        if len(values) != 1:
            raise ValueError(f"{path}: OVERSAMP = {oversampling!r}: only equal oversampling in x and y is supported")
        oversampling = values.pop()
    return GriddedPSF(data, positions, int(oversampling), source=str(path))


def write_gridded_psf(psf: GriddedPSF, path, *, overwrite: bool = False) -> None:
    """Write ``psf`` in the WebbPSF layout (atomically): photutils reads it with
    ``GriddedPSFModel.read(path, format="webbpsf")``."""
    from astropy.io import fits

    from ..io import atomic_write

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (overwrite=True to replace it)")
    tables = np.asarray(psf.data)[:, 2:-2, 2:-2]
    header = fits.Header()
    header["OVERSAMP"] = (psf.oversampling, "oversampling of the ePSFs")
    header["NUM_PSFS"] = (len(tables), "number of ePSFs")
    k = 0
    for y in psf.grid_y:
        for x in psf.grid_x:
            header[f"DET_YX{k}"] = (str((y, x)), f"(y,x) pixel position of ePSF {k} (0-based)")
            k += 1
    header["ORIGIN"] = ("fitax", "written by fitax.photometry.gridded")
    atomic_write(path, lambda tmp: fits.PrimaryHDU(tables, header).writeto(tmp, overwrite=True))
