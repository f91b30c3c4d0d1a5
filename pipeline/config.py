"""Configuration: one set of documented defaults, a workdir's own file, profiles and --set.

Resolution order, later wins:
  workdir_template/config.toml (every key, documented: the single source of defaults)
  -> [profiles.NAME.SECTION] of the chosen profile (--profile, else run.profile)
  -> WORKDIR/config.toml (the user's edits: what the user wrote wins over the profile; unknown
     keys are an error, to catch typos; a new workdir gets the defaults commented out)
  -> --set section.key=value (parsed as a TOML value, checked against the default's type).
The result is a plain dict of sections; a stage sees only its own section, and only that
section's values enter its fingerprint.
"""
from __future__ import annotations

import copy
import logging
import re
import tomllib
from pathlib import Path

from stages.errors import NeroicError

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


def section_defaults(section: str) -> dict:
    """One section's documented defaults (what a stage gets when nothing overrides them)."""
    return defaults()[section]


def commented_template() -> str:
    """The template with every setting commented out: a new workdir's config.toml, which documents
    each key and its default but sets nothing, so the chosen profile still applies."""
    lines, in_profiles = [], False
    for line in (TEMPLATE_DIR / CONFIG_NAME).read_text(encoding="utf-8").splitlines():
        header = re.match(r"\s*\[([^\]]+)\]\s*$", line)
        if header:
            in_profiles = header.group(1).startswith("profiles")
        if line.strip() and not line.lstrip().startswith("#") and (in_profiles or not header):
            line = f"# {line}"
        lines.append(line)
    head = ("# This workdir's settings. Uncomment a line and change its value to change a result for good;\n"
            "# what is set here wins over the profile (--profile / run.profile). `--set section.key=value`\n"
            "# changes a value for one command.\n#\n")
    return head + "\n".join(lines) + "\n"


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
            overrides: tuple[str, ...] = (), fallback_profile: str | None = None) -> dict:
    """The effective configuration: defaults, the profile, the workdir's file, then --set.
    The profile is `profile` (--profile), else run.profile from --set or the workdir's file, else
    `fallback_profile` (the CLI's choice for the device found), else the default's."""
    settings = defaults()
    profiles = settings.pop("profiles", {})
    user: dict = {}
    if config_path is not None and config_path.exists():
        user = _read_toml(config_path)
        _merge_sections(copy.deepcopy(settings), user, str(config_path))  # refuse typos before anything
        for name, table in user.get("profiles", {}).items():
            profiles.setdefault(name, {}).update(table)
    parsed = [parse_override(o) for o in overrides]
    for section, key, value in parsed:
        if (section, key) == ("run", "profile"):
            profile = profile or value
    chosen = profile or user.get("run", {}).get("profile") or fallback_profile or settings["run"]["profile"]
    if chosen not in profiles:
        raise ConfigError(f"unknown profile {chosen!r}", hint=f"profiles: {', '.join(profiles)}")
    profile_values = copy.deepcopy(profiles[chosen])
    _warn_default_pins(settings, user, profile_values, chosen, config_path)
    _merge_sections(settings, profile_values, f"profile {chosen!r}")
    _merge_sections(settings, user, str(config_path))
    for section, key, value in parsed:
        _merge_sections(settings, {section: {key: value}}, "--set")
    settings["run"]["profile"] = chosen
    return settings


def _warn_default_pins(settings: dict, user: dict, profile_values: dict, profile: str, path) -> None:
    """Warn where the user's file pins a key to its default while the profile would change it:
    the file wins (as it says), but an unedited copy of the defaults would silently undo the
    profile (workdirs made before the file held commented defaults are such copies)."""
    for section, values in profile_values.items():
        for key, value in values.items():
            pinned = user.get(section, {}).get(key)
            if pinned is not None and pinned == settings[section][key] and pinned != value:
                logging.getLogger("neroic").warning(
                    "%s sets %s.%s = %r (the default), which overrides the %s profile's %r; "
                    "delete or comment out that line to let the profile choose", path, section, key, pinned,
                    profile, value)
