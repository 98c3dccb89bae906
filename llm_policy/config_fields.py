"""Config dataclass fields with validation bounds: one definition for the library and the experiment loader.

Each library config class (``SlatePolicyConfig``, ``PretrainConfig``, ``agents.ppo.PPOConfig``,
``agents.kl.KLConfig``, ``agents.slateq.SlateQConfig``) declares every knob once, with its
default, its range (``param(64, ge=1)``, kept in the field's metadata) and its choices (a
``Literal`` type), and calls :func:`check_fields` in ``__post_init__``. The experiment loader
(``experiments.config``) reads the same metadata and types, so a YAML key and a library
argument are validated alike. Plain Python: no torch, no import of ``experiments``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field
from typing import Any, Literal

__all__ = ["ConfigError", "param", "check_fields", "bounds_error"]

_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_TESTS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


class ConfigError(ValueError):
    """A config key, type or value is invalid; the message names the key and what is allowed."""


def param(default: Any, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with an inclusive (``ge``/``le``) or exclusive (``gt``/``lt``) numeric range."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"bounds": bounds})
    return field(default=default, metadata={"bounds": bounds})


def bounds_error(value: Any, bounds: dict[str, float]) -> str | None:
    """``"must be >= 1"`` when ``value`` (a number, or None = unset) breaks ``bounds``, else None."""
    if not bounds or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if all(_TESTS[name](value, bound) for name, bound in bounds.items()):
        return None
    return "must be " + " and ".join(f"{_SIGNS[name]} {bound}" for name, bound in bounds.items())


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` (or ``Literal | None``) type, else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    args = typing.get_args(tp)
    literals = [a for a in args if typing.get_origin(a) is Literal]
    if literals and type(None) in args:
        return (*typing.get_args(literals[0]), None)
    return None


def check_fields(obj: Any) -> None:
    """Raise :class:`ConfigError` when a field of the dataclass ``obj`` breaks its range or its ``Literal`` choices."""
    cls = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        choices = _choices(hints[f.name])
        if choices is not None and value not in choices:
            raise ConfigError(f"{cls.__name__}.{f.name}={value!r} is not valid; {f.name} must be one of "
                              f"{', '.join(map(repr, choices))}")
        problem = bounds_error(value, f.metadata.get("bounds", {}))
        if problem is not None:
            raise ConfigError(f"{cls.__name__}.{f.name}={value!r} {problem}")
