"""Configuration: one set of documented defaults, a workdir's own file, profiles and --set.

Resolution order, later wins:
  workdir_template/config.toml (every key, documented: the single source of defaults)
  -> WORKDIR/config.toml (the user's edits; unknown keys are an error, to catch typos)
  -> [profiles.NAME.SECTION] of the chosen profile
  -> --set section.key=value (parsed as a TOML value, checked against the default's type).
The result is a plain dict of sections; a stage sees only its own section, and only that
section's values enter its fingerprint.
"""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from pipeline.errors import NeroicError

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "workdir_template"
CONFIG_NAME = "config.toml"


class ConfigError(NeroicError):
    """A bad key or value in config.toml or --set; the CLI treats it as a usage error."""


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise NeroicError(f"cannot read {path}: {e.strerror}") from None


def defaults() -> dict:
    return _read_toml(TEMPLATE_DIR / CONFIG_NAME)


def _check_value(where: str, default, value):
    """Return `value` if it has the default's type (ints are accepted for floats)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")
    return value


def _merge_sections(base: dict, extra: dict, origin: str) -> None:
    """Update `base` in place with `extra`, refusing sections or keys that base lacks."""
    for section, values in extra.items():
        if section == "profiles":
            continue
        if section not in base or not isinstance(values, dict):
            raise ConfigError(f"unknown config section [{section}] in {origin}",
                              hint=f"known sections: {', '.join(s for s in base if s != 'profiles')}")
        for key, value in values.items():
            if key not in base[section]:
                raise ConfigError(f"unknown config key {section}.{key} in {origin}",
                                  hint=f"keys of [{section}]: {', '.join(base[section])}")
            base[section][key] = _check_value(f"{section}.{key}", base[section][key], value)


def parse_override(text: str) -> tuple[str, str, object]:
    """'geometry.steps=2000' -> ('geometry', 'steps', 2000). Bare words are strings."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def resolve(config_path: Path | None, profile: str | None = None,
            overrides: tuple[str, ...] = ()) -> dict:
    """The effective configuration: defaults, the workdir's file, the profile, then --set."""
    settings = defaults()
    profiles = settings.pop("profiles", {})
    if config_path is not None and config_path.exists():
        user = _read_toml(config_path)
        _merge_sections(settings, user, str(config_path))
        for name, table in user.get("profiles", {}).items():
            profiles.setdefault(name, {}).update(table)
    parsed = [parse_override(o) for o in overrides]
    for section, key, value in parsed:
        if (section, key) == ("run", "profile"):
            profile = profile or value
    chosen = profile or settings["run"]["profile"]
    if chosen not in profiles:
        raise ConfigError(f"unknown profile {chosen!r}", hint=f"profiles: {', '.join(profiles)}")
    settings["run"]["profile"] = chosen
    _merge_sections(settings, copy.deepcopy(profiles[chosen]), f"profile {chosen!r}")
    for section, key, value in parsed:
        _merge_sections(settings, {section: {key: value}}, "--set")
    return settings
