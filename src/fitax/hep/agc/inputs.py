"""The AGC inputs file: per process and variation, its NanoAOD files and generated-event counts.

The format is AGC's ``nanoaod_inputs.json``::

    {"ttbar": {"nominal": {"nevts_total": 2000, "files": [{"path": "tt_0.root", "nevts": 1000}, ...]},
               "scaleup": {...}, "ME_var": {...}},
     "wjets": {"nominal": {...}}}

Each event of a sample weighs ``xsec * LUMINOSITY / N`` with ``N`` the sum of ``nevts`` over
the files used (as AGC's ``file_input.py``: an unweighted count; ``nevts_total`` is not read).
Relative paths are taken from the inputs file's folder. Cross sections are AGC's, in pb; an
entry ``"xsec"`` next to ``"files"`` overrides one (or names a process AGC does not have).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import equinox as eqx

__all__ = ["CROSS_SECTIONS", "LUMINOSITY", "InvalidInputs", "Sample", "read_inputs"]

LUMINOSITY = 3378.0  # 1/pb, CMS 2015 open data as AGC uses it

# pb, as AGC's utils/file_input.py computes them (not its docs' table).
CROSS_SECTIONS = {
    "ttbar": 396.87 + 332.97,
    "single_top_s_chan": 2.0268 + 1.2676,
    "single_top_t_chan": (36.993 + 22.175) / 0.252,
    "single_top_tW": 37.936 + 37.906,
    "wjets": 61457 * 0.252,
}

# Variations that are separate samples of a process (AGC: ttbar only).
PROCESS_VARIATIONS = ("nominal", "scaleup", "scaledown", "ME_var", "PS_var")


class InvalidInputs(ValueError):
    """The inputs file is not as described in :mod:`fitax.hep.agc.inputs`."""


class Sample(eqx.Module):
    """The files of one process and variation and the weight of each of their events."""

    process: str
    variation: str
    files: tuple[str, ...]
    events_per_file: tuple[int, ...]
    cross_section: float

    @property
    def n_generated(self) -> int:
        return sum(self.events_per_file)

    @property
    def event_weight(self) -> float:
        """``xsec * L / N`` in events per generated event."""
        return self.cross_section * LUMINOSITY / self.n_generated

    @property
    def label(self) -> str:
        return f"{self.process}__{self.variation}"


def _sample(where: str, process: str, variation: str, entry, folder: str, max_files: int | None) -> Sample:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("files"), list) or not entry["files"]:
        raise InvalidInputs(f"{where}: expected {{'files': [{{'path': ..., 'nevts': ...}}, ...]}} with at least one file")
    files, counts = [], []
    for i, item in enumerate(entry["files"][:max_files]):
        if not isinstance(item, Mapping) or not isinstance(item.get("path"), str):
            raise InvalidInputs(f"{where}.files[{i}]: expected an object with a 'path' string")
        nevts = item.get("nevts")
        if not isinstance(nevts, int) or isinstance(nevts, bool) or nevts <= 0:
            raise InvalidInputs(f"{where}.files[{i}] ({item['path']}): 'nevts' must be a positive integer (generated events), got {nevts!r}")
        path = item["path"] if os.path.isabs(item["path"]) or "://" in item["path"] else os.path.join(folder, item["path"])
        if "://" not in path and not os.path.exists(path):
            raise InvalidInputs(f"{where}.files[{i}]: no such file {path}")
        files.append(path)
        counts.append(nevts)
    cross_section = entry.get("xsec", CROSS_SECTIONS.get(process))
    if not isinstance(cross_section, (int, float)) or isinstance(cross_section, bool) or cross_section <= 0:
        raise InvalidInputs(
            f"{where}: no cross section for process {process!r} (AGC's are for {sorted(CROSS_SECTIONS)}); give 'xsec' in pb"
        )
    return Sample(process, variation, tuple(files), tuple(counts), float(cross_section))


def read_inputs(path, max_files: int | None = None) -> list[Sample]:
    """The samples of an inputs file, in its order; ``max_files`` uses the first files of each
    (AGC's ``N_FILES_MAX_PER_SAMPLE``). Raises :class:`InvalidInputs` naming the entry at fault.

    Example:
        >>> samples = read_inputs("inputs.json")  # doctest: +SKIP
        >>> samples[0].label, samples[0].event_weight  # doctest: +SKIP
        ('ttbar__nominal', 0.0246...)
    """
    path = os.fspath(path)
    try:
        with open(path) as stream:
            document = json.load(stream)
    except FileNotFoundError as error:
        raise InvalidInputs(f"{path}: no such inputs file") from error
    except json.JSONDecodeError as error:
        raise InvalidInputs(f"{path}: not JSON ({error})") from error
    if not isinstance(document, Mapping) or not document:
        raise InvalidInputs(f"{path}: expected {{process: {{variation: {{'files': [...]}}}}}}")
    folder = os.path.dirname(os.path.abspath(path))
    samples = []
    for process, variations in document.items():
        if not isinstance(variations, Mapping) or "nominal" not in variations:
            raise InvalidInputs(f"{path}: process {process!r} needs a 'nominal' variation")
        for variation, entry in variations.items():
            if variation not in PROCESS_VARIATIONS:
                raise InvalidInputs(f"{path}: {process}.{variation}: unknown variation (expected one of {PROCESS_VARIATIONS})")
            samples.append(_sample(f"{path}: {process}.{variation}", process, variation, entry, folder, max_files))
    return samples
