"""Configs as data: a dataclass rebuilt from its JSON dict, refusing keys it does not know.

Every config of glimpse (preprocessing, simulation, training, the models') round-trips
through JSON; :func:`config_from_dict` is the one way back, so a misspelt or foreign
key is an error that names it, never silently dropped. The dataclass's own
``__post_init__`` then checks the values.

Not pydantic: its lax mode would coerce values the configs check themselves
(``"2"`` -> 2) and refuse some they accept (a single channel type as a string for a
tuple field), and its errors would have to be translated back into InputError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import InputError

__all__ = ["config_from_dict"]

T = TypeVar("T")


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, fix: str,
                     where: str = "a JSON object of its fields") -> T:
    """``cls(**data)`` after checking that ``data`` is a mapping of ``cls``'s fields only,
    with every field that has no default. ``fix`` says what to do about unknown keys;
    ``where`` names the object to pass instead of a non-mapping."""
    if not isinstance(data, Mapping):
        raise InputError(f"a JSON object of {cls.__name__} fields", type(data).__name__,
                         f"pass {where}")
    fields = dataclasses.fields(cls)
    known = sorted(f.name for f in fields)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"only {cls.__name__} fields ({', '.join(known)})",
                         f"unknown keys {unknown}", fix)
    missing = sorted(f.name for f in fields if f.name not in data
                     and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise InputError(f"every required field of {cls.__name__}", f"missing {missing}",
                         "add them to the config")
    return cls(**data)
