"""Compiled programs that outlive the process.

:func:`cached` wraps a function like :func:`equinox.filter_jit` (array leaves are traced,
every other leaf is static). Once :func:`enable` has named a folder (the ``fitax`` command
line does; library users and tests opt in), each program it traces is also written there as
a serialised :mod:`jax.export` program, and a later process that calls the same program
deserialises it instead of tracing the Python again.

Why: a command-line job run a second time, with XLA's persistent compilation cache filled,
still traces its programs, and tracing is most of what the user waits for (measured before
this module: ``fitax gamma fit`` on one dataset spent ~3.6 of 8.7 s tracing the Newton loop;
``fitax phot run`` on a 5000-star quadrant ~10 of 17-19 s). XLA's cache cannot help with
that: its key is the compiled program, which only tracing produces. Here the key is known
before tracing.

The key of a program (all of it is compared on load, so two programs never share a file):

* fitax's version and a hash of its source files, JAX, jaxlib, NumPy and Python versions,
  the backend, its device kind and count, the ``jax_enable_x64`` flag;
* the program's name (module and qualified name of the function);
* the structure of the arguments: pytree definitions with their static fields, the static
  leaves (callables by module and qualified name, plus a hash of their source file when they
  live outside fitax; dataclasses field by field), and the shape, dtype and weak type of
  every array.

Arguments whose static parts cannot be named that way (lambdas, closures, arbitrary objects)
or arrays spread over several devices are run through :func:`equinox.filter_jit` as usual,
without the disk. Programs that JAX cannot export (host callbacks) fall back the same way.

Files are written atomically (a temporary file, then :func:`os.replace`); an unreadable,
truncated or foreign file is ignored and rewritten. They are pickles (the output's static
structure travels with the program): only ever point :func:`enable` at a folder you own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import importlib.util
import inspect
import os
import pickle
import sys
import tempfile
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

__all__ = ["cached", "enable", "disable", "cache_directory", "enable_compilation_cache", "CachedProgram"]

_FORMAT = "fitax-program-1"
_SUFFIX = ".jaxexport"
_directory: Path | None = None


def enable(directory: str | os.PathLike) -> None:
    """Keep the programs of every :func:`cached` function in ``directory`` (created on first
    write), and load them from there."""
    global _directory
    if importlib.util.find_spec("flatbuffers") is None:  # jax.export cannot serialise without it
        warnings.warn("fitax.programs: the 'flatbuffers' package is missing, traced programs are not kept between runs", stacklevel=2)
        return
    _directory = Path(directory).expanduser()


def enable_compilation_cache() -> None:
    """What the ``fitax`` command line (and each of its worker processes) turns on: XLA's
    persistent compilation cache in ``xla/`` and this program cache in ``programs/`` under
    ``FITAX_CACHE_DIR`` (default ``~/.cache/fitax``; an empty value turns both off), so a
    user pays for tracing and compiling once per machine, not once per call."""
    root = os.environ.get("FITAX_CACHE_DIR", str(Path.home() / ".cache" / "fitax"))
    if root:
        jax.config.update("jax_compilation_cache_dir", str(Path(root) / "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        enable(Path(root) / "programs")


def disable() -> None:
    """Stop reading and writing programs on disk (the default): :func:`cached` functions
    behave exactly as :func:`equinox.filter_jit`."""
    global _directory
    _directory = None


def cache_directory() -> Path | None:
    """The folder programs are kept in, or None when the disk cache is off."""
    return _directory


class _Undescribable(Exception):
    """A static argument has no identity that is the same in every process."""


class _ArraySlot:
    """Marks where the output's arrays go in its pickled static structure."""

    def __reduce__(self):
        return "_ARRAY_SLOT"


_ARRAY_SLOT = _ArraySlot()


@functools.cache
def _source_hash() -> str:
    """Hash of fitax's own source files: a program traced from other code is another program."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _environment() -> str:
    import jaxlib

    from . import __version__

    device = jax.devices()[0]
    return (
        f"{_FORMAT}; fitax {__version__} source {_source_hash()}; jax {jax.__version__} jaxlib {jaxlib.__version__} "
        f"numpy {np.__version__} python {sys.version_info[0]}.{sys.version_info[1]}; {device.platform} "
        f"{device.device_kind} x {jax.device_count()}; x64 {jax.config.jax_enable_x64}"
    )


def _code_identity(obj) -> str:
    """Module and qualified name; code outside fitax also gives its source file's hash, so
    an edited user objective is a new program."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module is None or qualname is None or "<lambda>" in qualname or "<locals>" in qualname:
        raise _Undescribable(f"{obj!r} has no stable name (a lambda or a closure)")
    identity = f"{module}:{qualname}"
    if module != "fitax" and not module.startswith("fitax."):
        try:
            source = inspect.getsourcefile(obj)
        except TypeError:  # built-in: fixed by the Python and library versions in the key
            source = None
        if source is not None:
            try:
                identity += f"@{_file_hash(source)}"
            except OSError as error:  # defined in an interactive session
                raise _Undescribable(f"{identity}: its source file cannot be read") from error
    return identity


def _describe(obj, depth: int = 0) -> str:
    """A text that is equal in two processes exactly when ``obj`` is the same static value."""
    if depth > 50:
        raise _Undescribable("static structure nested too deeply")
    recurse = functools.partial(_describe, depth=depth + 1)
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return f"{type(obj).__name__}:{obj!r}"
    if isinstance(obj, jax.tree_util.PyTreeDef):
        node = obj.node_data()
        if node is None:
            return "*"
        node_type, aux = node
        return f"{_code_identity(node_type)}[{recurse(aux)}]({', '.join(recurse(c) for c in obj.children())})"
    if isinstance(obj, (tuple, list)):
        return f"{_code_identity(type(obj))}({', '.join(recurse(x) for x in obj)})"
    if isinstance(obj, dict):
        return f"{_code_identity(type(obj))}{{{', '.join(f'{recurse(k)}: {recurse(v)}' for k, v in obj.items())}}}"
    if isinstance(obj, (set, frozenset)):
        return f"{type(obj).__name__}{{{', '.join(sorted(recurse(x) for x in obj))}}}"
    if isinstance(obj, enum.Enum):
        return f"{_code_identity(type(obj))}.{obj.name}"
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return _code_identity(obj)
    if isinstance(obj, types.MethodType):
        return f"{recurse(obj.__self__)}.{obj.__func__.__name__}"
    if isinstance(obj, functools.partial):
        return f"partial({recurse(obj.func)}, {recurse(obj.args)}, {recurse(obj.keywords)})"
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):  # data in a static slot: its bytes are the key
        data = np.asarray(obj)
        return f"array{data.shape}{data.dtype}:{hashlib.sha256(data.tobytes()).hexdigest()[:16]}"
    if dataclasses.is_dataclass(obj):
        fields = ", ".join(f"{f.name}={recurse(getattr(obj, f.name))}" for f in dataclasses.fields(obj))
        return f"{_code_identity(type(obj))}({fields})"
    if not getattr(obj, "__dict__", None) and not getattr(type(obj), "__slots__", None):
        return f"{_code_identity(type(obj))}()"  # a stateless marker (e.g. equinox's Missing)
    raise _Undescribable(f"cannot name a static argument of type {type(obj).__qualname__} across processes")


def _array_spec(x) -> jax.ShapeDtypeStruct:
    if isinstance(x, jax.Array):
        if len(x.sharding.device_set) > 1:
            raise _Undescribable("an argument is spread over several devices")
        return jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=x.weak_type)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, jax.dtypes.canonicalize_dtype(x.dtype))


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """A deserialised program: its compiled call and where its arrays go in the output."""

    call: Callable
    output: Any  # output pytree, arrays replaced by _ARRAY_SLOT

    def __call__(self, dynamic: list):
        arrays = iter(self.call(*dynamic))
        return jax.tree_util.tree_map(lambda x: next(arrays) if x is _ARRAY_SLOT else x, self.output)

    @classmethod
    def from_bytes(cls, program: bytes, output) -> "_Loaded":
        exported = jax.export.deserialize(program)
        if exported.nr_devices == 1:
            return cls(jax.jit(exported.call), output)
        # A program that spreads its work over the devices itself (fit_batch's shard_map) is
        # called with its inputs on all of them, as its exported form requires.
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()[: exported.nr_devices]), ("devices",))
        everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return cls(jax.jit(exported.call, in_shardings=everywhere), output)


class CachedProgram:
    """A function jitted like :func:`equinox.filter_jit`, whose programs are kept on disk
    while :func:`enable` is in force. Made by :func:`cached`."""

    def __init__(self, fn: Callable, name: str):
        self.fn = fn
        self.name = name
        self._jitted = eqx.filter_jit(fn)
        self._loaded: dict[str, _Loaded] = {}
        self._not_exportable: set[str] = set()
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        directory = _directory
        if directory is None:
            return self._jitted(*args, **kwargs)
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        traced = [eqx.is_array(x) for x in leaves]
        if any(isinstance(x, jax.core.Tracer) for x in leaves):  # called inside another trace: inlined
            return self._jitted(*args, **kwargs)
        try:
            specs = [_array_spec(x) for x, t in zip(leaves, traced) if t]
            key = "\n".join([
                _environment(), self.name, _describe(treedef), "".join("a" if t else "s" for t in traced),
                *(f"{spec.shape} {spec.dtype}{' weak' if spec.weak_type else ''}" for spec in specs),
                *(_describe(x) for x, t in zip(leaves, traced) if not t),
            ])
        except _Undescribable:
            return self._jitted(*args, **kwargs)
        if key in self._not_exportable:
            return self._jitted(*args, **kwargs)
        dynamic = [x for x, t in zip(leaves, traced) if t]
        program = self._loaded.get(key)
        if program is None:
            path = directory / self.name / (hashlib.sha256(key.encode()).hexdigest()[:40] + _SUFFIX)
            program = _read(path, key) or self._export(path, key, treedef, leaves, traced, specs)
            if program is None:
                self._not_exportable.add(key)
                return self._jitted(*args, **kwargs)
            self._loaded[key] = program
        return program(dynamic)

    def _export(self, path: Path, key: str, treedef, leaves, traced, specs) -> _Loaded | None:
        output = {}

        def program(*dynamic):
            arrays = iter(dynamic)
            args, kwargs = jax.tree_util.tree_unflatten(treedef, [next(arrays) if t else x for x, t in zip(leaves, traced)])
            out_leaves, out_def = jax.tree_util.tree_flatten(self.fn(*args, **kwargs))
            output["value"] = jax.tree_util.tree_unflatten(out_def, [_ARRAY_SLOT if eqx.is_array(x) else x for x in out_leaves])
            return [x for x in out_leaves if eqx.is_array(x)]

        program.__name__, program.__qualname__ = self.fn.__name__, self.fn.__qualname__
        try:
            serialized = bytes(jax.export.export(jax.jit(program))(*specs).serialize())
            payload = pickle.dumps({"format": _FORMAT, "key": key, "program": serialized, "output": output["value"]})
        except Exception:  # host callbacks, unpicklable static outputs: no disk for this program
            return None
        _write_atomically(path, payload)
        return _Loaded.from_bytes(serialized, output["value"])


def _read(path: Path, key: str) -> _Loaded | None:
    """The program stored at ``path``, or None if absent, unreadable or another program's."""
    try:
        payload = pickle.loads(path.read_bytes())
        if payload["format"] != _FORMAT or payload["key"] != key:
            return None
        return _Loaded.from_bytes(payload["program"], payload["output"])
    except Exception:  # missing, truncated, corrupt or from another version: trace and rewrite
        return None


def _write_atomically(path: Path, payload: bytes) -> None:
    """Readers see no file or a whole one; a read-only or full disk only loses the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def cached(fn: Callable | None = None, *, name: str | None = None):
    """Jit ``fn`` like :func:`equinox.filter_jit` and, while :func:`enable` is in force,
    keep its compiled programs on disk across processes (see the module docstring).

    ``name`` (default: ``module.qualname`` of ``fn``) is the program's folder under the
    cache directory. Use as ``@cached`` or ``cached(fn, name=...)``.
    """
    if fn is None:
        return functools.partial(cached, name=name)
    return CachedProgram(fn, name or f"{fn.__module__}.{fn.__qualname__}")
