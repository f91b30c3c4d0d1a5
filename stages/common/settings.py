"""Settings objects built from a config section, so workdir_template/config.toml stays the one
source of defaults: a dataclass field named like a config key has no default of its own and
takes the section's value; fields that are not config keys are internal constants."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import TypeVar

T = TypeVar("T")


def from_section(cls: type[T], section: Mapping, **extra) -> T:
    """cls(**the section's keys that are fields of cls, **extra); a field neither gives is an error
    (a config key was renamed or dropped), so a stage never runs on a silent fallback."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in section.items() if k in names} | extra
    missing = [f.name for f in fields(cls) if f.name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise KeyError(f"{cls.__name__} needs {', '.join(missing)}: not in the config section")
    return cls(**values)
