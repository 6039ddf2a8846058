"""Helpers shared by the gamma modules: parameters with the models' defaults, YAML files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from ..parameters import Parameter


def parameter(value, unit: str, frozen: bool = False, min=None, max=None) -> Parameter:
    """A Parameter from a number (with the model's unit and defaults) or an existing
    Parameter, kept as given (e.g. with the user's own bounds)."""
    if isinstance(value, Parameter):
        return value
    return Parameter(float(value), unit=unit or None, frozen=frozen, min=min, max=max)


def load_yaml(path: Path) -> dict:
    """The mapping at the top of a YAML file, or an error naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(content).__name__}")
    return content


def gammapy_yaml(content: dict) -> str:
    """``content`` as Gammapy 2.x writes YAML files: its layout (4-space indent, 80 columns,
    block style, keys in order) and a closing ``checksum`` (MD5 of the text before it), which
    Gammapy's ``Datasets.read`` verifies by default (warning "Checksum verification failed"
    without one)."""
    text = yaml.dump(content, sort_keys=False, indent=4, width=80, default_flow_style=False)
    return text + yaml.dump({"checksum": hashlib.md5(text.encode("utf-8")).hexdigest()}, default_flow_style=False)
