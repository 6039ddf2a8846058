"""Helpers shared by the gamma modules: parameters with the models' defaults, YAML files."""

from __future__ import annotations

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
