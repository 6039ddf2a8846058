"""Helpers shared by the gamma models."""

from __future__ import annotations

from ..parameters import Parameter


def parameter(value, unit: str, frozen: bool = False, min=None, max=None) -> Parameter:
    """A Parameter from a number (with the model's unit and defaults) or an existing
    Parameter, kept as given (e.g. with the user's own bounds)."""
    if isinstance(value, Parameter):
        return value
    return Parameter(float(value), unit=unit or None, frozen=frozen, min=min, max=max)
