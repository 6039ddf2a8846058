"""File input and output shared by all domains: writes are atomic and never touch the
inputs; gzip-compressed FITS files are read quickly.

A result file is first written next to its destination under a temporary name and then
renamed over it (``os.replace`` is atomic on POSIX and Windows), so an interrupted run leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["atomic_write", "check_not_input", "open_fits"]


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Raise if ``output`` is one of ``inputs`` (so a run can never overwrite its own data)."""
    out = Path(output).resolve()
    for item in inputs:
        if Path(item).resolve() == out:
            raise ValueError(f"refusing to write {output}: it is an input of this run")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically. A file replaced
    keeps its permissions, and a symbolic link keeps pointing where it did (its target is
    replaced).

    Example:
        >>> from fitax.io import atomic_write
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "table.txt"
        >>> _ = atomic_write(target, lambda tmp: tmp.write_text("ok"))
        >>> target.read_text()
        'ok'
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp creates 0600; give a new file the usual permissions
        tmp_path.chmod(mode)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def open_fits(path: str | os.PathLike, **kwargs):
    """``astropy.io.fits.open``, with a ``.gz`` file decompressed into memory first.

    astropy reads the HDUs of a gzip file through a decompressing stream, where every move
    back to an earlier HDU decompresses again from the start: reading all HDUs of a 7.5 MB
    Gammapy MapDataset took 1.37 s that way, 0.28 s decompressed at once (gunzip included).
    A truncated or corrupt gzip file raises ``OSError`` or ``EOFError``, as astropy's would.
    """
    from astropy.io import fits

    if os.fspath(path).endswith(".gz"):
        with open(path, "rb") as stream:
            return fits.open(io.BytesIO(gzip.decompress(stream.read())), **kwargs)
    return fits.open(path, **kwargs)
