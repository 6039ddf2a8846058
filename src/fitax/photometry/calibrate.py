"""CCD calibration: master bias, master flat, and raw frame -> electrons, variance, mask.

Masters are combined block by block: each step reads the same band of rows from every frame
(``.section`` reads only that band, also from tile-compressed files), so memory is
``n_frames x block_rows x n_columns`` values, not ``n_frames`` full frames: 20 frames of
3080 x 3072 with the default 256-row blocks need ~130 MB instead of 1.5 GB (a master flat
also reads one whole frame at a time for its median level).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import image_hdu_index

__all__ = ["master_bias", "master_flat", "calibrate"]


class _FrameStack:
    """Frames given as arrays or FITS paths, readable by row band."""

    def __init__(self, frames: Sequence):
        if len(frames) == 0:
            raise ValueError("no frames given")
        self.frames = list(frames)
        self._hdus = {}
        shapes = [self._shape(i) for i in range(len(self.frames))]
        if len(set(shapes)) > 1:
            self.close()
            detail = ", ".join(f"{self._name(i)}: {shape}" for i, shape in enumerate(shapes))
            raise ValueError(f"frames have different shapes: {detail}")
        self.shape = shapes[0]

    def _name(self, i) -> str:
        frame = self.frames[i]
        return str(frame) if isinstance(frame, (str, Path)) else f"frame {i}"

    def _hdu(self, i):
        if i not in self._hdus:
            from astropy.io import fits

            path = self.frames[i]
            try:
                # memmap=False: a memory map cannot apply BZERO (uint16 frames); .section
                # still reads only the requested rows
                hdul = fits.open(path, memmap=False)
            except OSError as error:
                raise ValueError(f"cannot read {path}: {error}") from error
            self._hdus[i] = (hdul, hdul[image_hdu_index(hdul, path)])
        return self._hdus[i][1]

    def close(self) -> None:
        for hdul, _ in self._hdus.values():
            hdul.close()
        self._hdus.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _shape(self, i):
        frame = self.frames[i]
        return tuple(self._hdu(i).shape) if isinstance(frame, (str, Path)) else np.shape(frame)

    def rows(self, i, start: int, stop: int) -> np.ndarray:
        frame = self.frames[i]
        if isinstance(frame, (str, Path)):
            return np.asarray(self._hdu(i).section[start:stop], dtype=np.float64)
        return np.asarray(frame[start:stop], dtype=np.float64)

    def full(self, i) -> np.ndarray:
        return self.rows(i, 0, self.shape[0])


def _combine(stack: _FrameStack, transform, block_rows: int, sigma_clip: float | None) -> np.ndarray:
    n_rows = stack.shape[0]
    out = np.empty(stack.shape, dtype=np.float32)
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        block = np.stack([transform(i, start, stop) for i in range(len(stack.frames))])
        if sigma_clip is not None:
            median = np.median(block, axis=0)
            spread = 1.4826 * np.median(np.abs(block - median), axis=0)
            block = np.where(np.abs(block - median) <= sigma_clip * np.maximum(spread, 1e-12), block, np.nan)
            out[start:stop] = np.nanmedian(block, axis=0)
        else:
            out[start:stop] = np.median(block, axis=0)
    return out


def master_bias(frames: Sequence, *, sigma_clip: float | None = None, block_rows: int = 256) -> np.ndarray:
    """Per-pixel median of bias frames (arrays or FITS paths), optionally sigma-clipped."""
    with _FrameStack(frames) as stack:
        return _combine(stack, stack.rows, block_rows, sigma_clip)


def master_flat(
    frames: Sequence, bias: np.ndarray, *, sigma_clip: float | None = None, block_rows: int = 256
) -> np.ndarray:
    """Master flat: each frame bias-subtracted and divided by its own median, then the
    per-pixel median (optionally sigma-clipped); normalised to median 1."""
    with _FrameStack(frames) as stack:
        bias = np.asarray(bias, dtype=np.float64)
        if bias.shape != stack.shape:
            raise ValueError(f"master bias has shape {bias.shape}, the flat frames {stack.shape}")
        levels = []
        for i in range(len(stack.frames)):
            level = float(np.median(stack.full(i) - bias))
            if not level > 0:
                raise ValueError(f"flat {stack._name(i)} has median level {level:.3g} after bias subtraction; expected > 0")
            levels.append(level)
        flat = _combine(stack, lambda i, a, b: (stack.rows(i, a, b) - bias[a:b]) / levels[i], block_rows, sigma_clip)
    return flat / np.median(flat[flat > 0])


def calibrate(
    raw: np.ndarray,
    bias: np.ndarray,
    flat: np.ndarray,
    *,
    gain: float,
    read_noise: float,
    saturation: float | None = None,
    bad_pixels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw frame [ADU] -> ``(image [e-], variance [e-^2], mask)``.

    ``image = gain (raw - bias) / flat``; ``variance = max(image, 0) / flat + read_noise^2 /
    flat^2`` (Poisson on the detected electrons plus read noise, both scaled by the flat);
    ``mask`` is True where pixels are saturated (``raw >= saturation`` ADU), where the flat is
    not positive, and in ``bad_pixels``. Masked pixels are set to 0 in the image.
    """
    raw = np.asarray(raw, dtype=np.float64)
    for name, array in (("bias", bias), ("flat", flat)):
        if np.shape(array) != raw.shape:
            raise ValueError(f"master {name} has shape {np.shape(array)}, the raw frame {raw.shape}")
    if not gain > 0:
        raise ValueError(f"gain must be > 0 e-/ADU, got {gain}")
    flat = np.asarray(flat, dtype=np.float64)
    bad_flat = ~(flat > 0) | ~np.isfinite(flat)
    if bad_flat.all():
        raise ValueError("the master flat has no positive pixel")
    mask = bad_flat | ~np.isfinite(raw)
    if saturation is not None:
        mask |= raw >= saturation
    if bad_pixels is not None:
        mask |= np.asarray(bad_pixels, dtype=bool)
    safe_flat = np.where(bad_flat, 1.0, flat)
    image = gain * (raw - np.asarray(bias, dtype=np.float64)) / safe_flat
    variance = np.maximum(image, 0.0) / safe_flat + read_noise**2 / safe_flat**2
    image = np.where(mask, 0.0, image)
    return image, variance, mask
