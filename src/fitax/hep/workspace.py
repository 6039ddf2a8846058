"""pyhf JSON workspaces: read, validate, patch, write, and turn into a :class:`~fitax.hep.Model`.

Validation has two layers. The HistFactory JSON schema 1.0.0 (``schemas/histfactory-1.0.0.json``,
the same documents pyhf accepts) is checked with the ``jsonschema`` library, and its error path is
translated into the names a user knows ("channel 'SR', sample 'ttbar', modifier 'jes'
(normsys): data.hi ..."). Then the checks a schema cannot express: every channel has an
observation, bin counts agree between samples, modifier data and observations, names are not
duplicated, numbers are finite and observed counts non-negative. Both raise
:class:`InvalidWorkspace`, a ``ValueError``.

Patches are RFC 6902 JSON patches applied with the ``jsonpatch`` library, as
``pyhf cls ws.json -p patch.json`` does; patchsets follow pyhf's patchset format.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonpatch
import jsonpointer
import jsonschema
import numpy as np

from .model import Model

__all__ = ["Workspace", "InvalidWorkspace", "Patch", "patchset_labels", "read_patchset", "validate"]

SCHEMA_VERSION = "1.0.0"


class InvalidWorkspace(ValueError):
    """A workspace, patch or patchset that does not follow the HistFactory JSON format."""


@functools.cache
def _schema_document() -> dict:
    text = resources.files(__package__).joinpath("schemas", f"histfactory-{SCHEMA_VERSION}.json").read_text()
    return json.loads(text)


@functools.cache
def _validator(definition: str) -> jsonschema.Draft7Validator:
    document = _schema_document()
    return jsonschema.Draft7Validator({"$ref": f"#/definitions/{definition}", "definitions": document["definitions"]})


def _location(document: Any, path: Sequence) -> str:
    """Human-readable location of a JSON path, using the names found along it."""
    parts = []
    node = document
    labels = {
        "channels": "channel",
        "samples": "sample",
        "modifiers": "modifier",
        "observations": "observation",
        "measurements": "measurement",
        "parameters": "parameter config",
        "patches": "patch",
    }
    fields = []
    pending_list = None
    for key in path:
        try:
            child = node[key]
        except (KeyError, IndexError, TypeError):
            child = None
        if isinstance(key, int) and pending_list in labels:
            name = child.get("name") if isinstance(child, Mapping) else None
            if pending_list == "patches" and isinstance(child, Mapping):
                name = (child.get("metadata") or {}).get("name")
            label = f"{labels[pending_list]} {name!r}" if isinstance(name, str) else f"{labels[pending_list]} #{key}"
            if pending_list == "modifiers" and isinstance(child, Mapping) and isinstance(child.get("type"), str):
                label += f" ({child['type']})"
            parts.append(label)
            fields = []
        elif isinstance(key, str) and key in labels and isinstance(child, list):
            pending_list = key
            node = child
            continue
        else:
            fields.append(str(key) if not isinstance(key, int) else f"[{key}]")
        pending_list = None
        node = child
    where = ", ".join(parts)
    field = ".".join(fields).replace(".[", "[")
    if field:
        where = f"{where}: {field}" if where else field
    return where or "top level"


def validate(document: Any, definition: str = "workspace") -> None:
    """Check ``document`` against a definition of the HistFactory schema 1.0.0.

    ``definition`` is ``"workspace"``, ``"measurement"``, ``"jsonpatch"``, ``"patchset"`` or
    ``"modifiers/<type>"``. Documents are checked against pyhf's form of the schema (a modifier
    is valid under any of the seven types), which jsonschema checks 2.3x faster than choosing
    the type's definition by ``if``/``then`` (measured on the sbottom workspace); only a failing
    modifier is then re-checked against its declared type, for the message.

    Raises:
        InvalidWorkspace: naming the channel/sample/modifier (or patch) where it fails.
    """
    error = jsonschema.exceptions.best_match(_validator(definition).iter_errors(document))
    if error is None:
        return
    path = list(error.absolute_path)
    message = error.message
    modifier_path = _modifier_prefix(path)
    if modifier_path is not None:
        # pyhf's anyOf over the seven types only says "not valid under any of the given
        # schemas": check the modifier against the definition of the type it declares.
        modifier = _at(document, modifier_path)
        declared = modifier.get("type") if isinstance(modifier, dict) else None
        known = _schema_document()["definitions"]["modifiers"]
        if isinstance(declared, str) and declared in known:
            detail = jsonschema.exceptions.best_match(_validator(f"modifiers/{declared}").iter_errors(modifier))
            if detail is not None:
                path, message = modifier_path + list(detail.absolute_path), detail.message
        elif isinstance(modifier, dict) and "type" in modifier:
            path, message = modifier_path + ["type"], f"unknown modifier type {declared!r}; known: {', '.join(known)}"
    raise InvalidWorkspace(f"{definition} does not follow the HistFactory schema {SCHEMA_VERSION}: {_location(document, path)}: {message}")


def _modifier_prefix(path: list) -> list | None:
    """The path of the modifier that ``path`` points into, if any."""
    for i in range(len(path) - 1):
        if path[i] == "modifiers" and isinstance(path[i + 1], int):
            return path[: i + 2]
    return None


def _at(document: Any, path: Sequence) -> Any:
    for key in path:
        document = document[key]
    return document


def _check_numbers(values, where: str, non_negative: bool = False) -> None:
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise InvalidWorkspace(f"{where}[{i}] is {v}, not a finite number")
        if non_negative and v < 0:
            raise InvalidWorkspace(f"{where}[{i}] is {v}; observed counts must be >= 0")


def _check_semantics(spec: Mapping) -> None:
    """The consistency checks the schema cannot express."""
    seen_channels = set()
    nbins = {}
    for channel in spec["channels"]:
        cname = channel["name"]
        if cname in seen_channels:
            raise InvalidWorkspace(f"channel {cname!r} is defined twice")
        seen_channels.add(cname)
        nbins[cname] = len(channel["samples"][0]["data"])
        seen_samples = set()
        for sample in channel["samples"]:
            where = f"channel {cname!r}, sample {sample['name']!r}"
            if sample["name"] in seen_samples:
                raise InvalidWorkspace(f"{where} is defined twice in the channel")
            seen_samples.add(sample["name"])
            if len(sample["data"]) != nbins[cname]:
                first = channel["samples"][0]["name"]
                raise InvalidWorkspace(
                    f"{where}: data has {len(sample['data'])} bins but sample {first!r} of the channel has {nbins[cname]}"
                )
            _check_numbers(sample["data"], f"{where}: data")
            for modifier in sample["modifiers"]:
                _check_modifier(modifier, f"{where}, modifier {modifier['name']!r} ({modifier['type']})", nbins[cname])
    observed = {}
    for obs in spec["observations"]:
        if obs["name"] in observed:
            raise InvalidWorkspace(f"observation {obs['name']!r} is defined twice")
        observed[obs["name"]] = obs["data"]
    for cname, n in nbins.items():
        if cname not in observed:
            raise InvalidWorkspace(f"channel {cname!r} has no observation (observations: {', '.join(observed) or 'none'})")
        if len(observed[cname]) != n:
            raise InvalidWorkspace(f"observation {cname!r} has {len(observed[cname])} bins but channel {cname!r} has {n}")
        _check_numbers(observed[cname], f"observation {cname!r}: data", non_negative=True)
    names = [m["name"] for m in spec["measurements"]]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InvalidWorkspace(f"measurement(s) {', '.join(map(repr, duplicated))} defined more than once")


def _check_modifier(modifier: Mapping, where: str, nbins: int) -> None:
    data = modifier["data"]
    if modifier["type"] == "histosys":
        for key in ("lo_data", "hi_data"):
            if len(data[key]) != nbins:
                raise InvalidWorkspace(f"{where}: {key} has {len(data[key])} bins but the channel has {nbins}")
            _check_numbers(data[key], f"{where}: {key}")
    elif modifier["type"] in ("shapesys", "staterror"):
        if len(data) != nbins:
            raise InvalidWorkspace(f"{where}: data has {len(data)} bins but the channel has {nbins}")
        _check_numbers(data, f"{where}: data")
    elif modifier["type"] == "normsys":
        _check_numbers([data["lo"], data["hi"]], f"{where}: data (lo, hi)")


def _read_json(path) -> Any:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except json.JSONDecodeError as e:
        raise InvalidWorkspace(f"{path} is not valid JSON: {e}") from None


class Patch(tuple):
    """One patch of a patchset: ``(name, values, operations)``, a named tuple-like triple.

    ``operations`` is the RFC 6902 list of operations, which :meth:`Workspace.patch` accepts.
    """

    __slots__ = ()

    def __new__(cls, name: str, values: Sequence, operations: list):
        return super().__new__(cls, (name, tuple(values), operations))

    @property
    def name(self) -> str:
        return self[0]

    @property
    def values(self) -> tuple:
        return self[1]

    @property
    def operations(self) -> list:
        return self[2]


def patchset_labels(path) -> tuple[str, ...]:
    """The coordinate names of a patchset's points (its ``metadata.labels``)."""
    document = _read_json(path)
    try:
        validate(document, "patchset")
    except InvalidWorkspace as e:
        raise InvalidWorkspace(f"{path}: {e}") from None
    return tuple(document["metadata"]["labels"])


def read_patchset(path, workspace: Workspace | None = None) -> list[Patch]:
    """Patches of a pyhf patchset file, validated against the patchset schema.

    Args:
        path: the patchset JSON file.
        workspace: when given, the background-only workspace the patches are meant for: its
            digests must equal those the patchset records (as ``pyhf patchset verify``).

    Returns:
        a list of :class:`Patch` ``(name, values, operations)``, in file order.
    """
    document = _read_json(path)
    try:
        validate(document, "patchset")
    except InvalidWorkspace as e:
        raise InvalidWorkspace(f"{path}: {e}") from None
    if workspace is not None:
        for algorithm, recorded in document["metadata"]["digests"].items():
            actual = workspace.digest(algorithm)
            if actual != recorded:
                raise InvalidWorkspace(
                    f"{path}: the patchset is for another workspace: its {algorithm} digest is {recorded}, "
                    f"the workspace's is {actual}"
                )
    patches = [Patch(p["metadata"]["name"], p["metadata"]["values"], p["patch"]) for p in document["patches"]]
    names = [p.name for p in patches]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InvalidWorkspace(f"{path}: patch name(s) {', '.join(duplicated)} appear more than once")
    return patches


class Workspace:
    """A validated pyhf JSON workspace (HistFactory schema 1.0.0).

    Args:
        spec: the workspace as a dict (copied; the workspace does not change afterwards).

    Raises:
        InvalidWorkspace: on a schema violation or an inconsistency, naming where.
    """

    def __init__(self, spec: Mapping):
        spec = copy.deepcopy(dict(spec))
        validate(spec, "workspace")
        _check_semantics(spec)
        self._spec = spec

    # ---------------------------------------------------------------------------- I/O
    @classmethod
    def read(cls, path) -> Workspace:
        """Read a workspace JSON file."""
        spec = _read_json(path)
        try:
            return cls(spec)
        except InvalidWorkspace as e:
            raise InvalidWorkspace(f"{path}: {e}") from None

    read_patchset = staticmethod(read_patchset)

    def write(self, path) -> None:
        """Write the workspace as JSON, atomically (temporary file + ``os.replace``)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._spec, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @property
    def spec(self) -> dict:
        """A copy of the workspace dict."""
        return copy.deepcopy(self._spec)

    def digest(self, algorithm: str = "sha256") -> str:
        """Hash of the JSON text with sorted keys: the digest pyhf's patchsets record."""
        text = json.dumps(self._spec, sort_keys=True, ensure_ascii=False)
        return hashlib.new(algorithm, text.encode("utf8")).hexdigest()

    def __eq__(self, other) -> bool:
        return isinstance(other, Workspace) and self._spec == other._spec

    __hash__ = None

    def __repr__(self) -> str:
        return f"Workspace(channels={self.channels}, measurements={self.measurement_names})"

    # ------------------------------------------------------------------------- contents
    @property
    def channels(self) -> list[str]:
        """Channel names, sorted (pyhf's order)."""
        return sorted(c["name"] for c in self._spec["channels"])

    @property
    def measurement_names(self) -> list[str]:
        """Measurement names in file order (the first is the default)."""
        return [m["name"] for m in self._spec["measurements"]]

    @property
    def observations(self) -> dict[str, list[float]]:
        return {o["name"]: list(o["data"]) for o in self._spec["observations"]}

    def measurement(self, name: str | None = None) -> dict:
        """The measurement called ``name``, or the first one."""
        if name is None:
            return copy.deepcopy(self._spec["measurements"][0])
        for m in self._spec["measurements"]:
            if m["name"] == name:
                return copy.deepcopy(m)
        raise KeyError(f"no measurement {name!r} in the workspace (measurements: {', '.join(self.measurement_names)})")

    # -------------------------------------------------------------------------- patches
    def patch(self, patches) -> Workspace:
        """A new workspace with JSON patches applied, in order.

        Args:
            patches: one RFC 6902 patch (a list of operation dicts, a ``jsonpatch.JsonPatch``
                or a :class:`Patch` from a patchset) or a list of them.

        Raises:
            InvalidWorkspace: a patch is malformed or does not apply (naming the operation),
                or the result is not a valid workspace.
        """
        spec = self._spec
        for i, operations in enumerate(_as_patch_list(patches)):
            label = f"patch {operations.name!r}" if isinstance(operations, Patch) else f"patch #{i}"
            ops = list(operations.operations if isinstance(operations, Patch) else operations)
            try:
                validate(ops, "jsonpatch")
            except InvalidWorkspace as e:
                raise InvalidWorkspace(f"{label}: {e}") from None
            for k, op in enumerate(ops):
                try:
                    spec = jsonpatch.JsonPatch([op]).apply(spec)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                    raise InvalidWorkspace(
                        f"{label} does not apply: operation #{k} ({op['op']} {op['path']}): {e}"
                    ) from None
        try:
            return Workspace(spec)
        except InvalidWorkspace as e:
            raise InvalidWorkspace(f"the patched workspace is invalid: {e}") from None

    # --------------------------------------------------------------------------- models
    def model(self, measurement: str | None = None, modifier_settings: Mapping | None = None) -> Model:
        """The :class:`~fitax.hep.Model` of a measurement (default: the first).

        ``modifier_settings`` follows pyhf, e.g. ``{"normsys": {"interpcode": "code4"},
        "histosys": {"interpcode": "code4p"}}`` (pyhf's default when it is ``None``).
        """
        config = self.measurement(measurement)["config"]
        return Model.build(self._spec["channels"], config["parameters"], config["poi"], modifier_settings)

    def data(self, model: Model, include_auxdata: bool = True) -> np.ndarray:
        """Observed main data in the model's channel order, then the model's auxiliary data."""
        observed = self.observations
        missing = [c for c in model.channels if c not in observed]
        if missing:
            raise KeyError(f"the workspace has no observation for channel(s) {', '.join(missing)} of the model")
        parts = [np.asarray(observed[c], dtype=float) for c in model.channels]
        if include_auxdata:
            parts.append(np.asarray(model.auxdata))
        return np.concatenate(parts)


def _as_patch_list(patches) -> list:
    if isinstance(patches, jsonpatch.JsonPatch):
        return [patches.patch]
    if isinstance(patches, Patch):
        return [patches]
    if isinstance(patches, Sequence) and not isinstance(patches, (str, bytes)):
        if all(isinstance(p, Mapping) for p in patches):
            return [list(patches)]  # a single patch: a list of operations
        return [p.patch if isinstance(p, jsonpatch.JsonPatch) else p for p in patches]
    raise TypeError(f"patches must be a JSON patch (list of operations) or a list of patches, got {type(patches).__name__}")
