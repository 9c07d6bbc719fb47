"""Command-line overrides of an ml_collections config: ``key=value,...`` into typed fields.

One parser for every config in specjax (experiments and training): `parse_arg` splits the
text, `apply_overrides` sets dotted keys with the type of the field they replace, and an
unknown key fails with the closest known ones (`unknown_keys_message`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config has unknown keys or bad values (the message names them)."""


_SPLIT_ARG = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"gamma=4,sampling.temperature=0.7"`` -> {"gamma": "4", ...} (values stay strings).

    A comma starts a new pair only when ``key=`` follows, so list-like values survive:
    ``prompts.categories=writing,coding`` is one pair.
    """
    if not arg or not arg.strip():
        return {}
    out: dict[str, str] = {}
    for part in _SPLIT_ARG.split(arg.strip()):
        if "=" not in part:
            raise ConfigError(f"config argument {part!r} is not key=value (in {arg!r})")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys += all_keys(v, prefix + k + ".")
    return keys


def _coerce(key: str, value: Any, current: Any) -> Any:
    """``value`` (often a string from a command line) as the type of the field it replaces."""
    if not isinstance(value, str):
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if isinstance(current, bool):
            low = value.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        kind = type(current).__name__
        raise ConfigError(f"{key}={value!r}: expected a value of type {kind}") from None
    return value


def unknown_keys_message(
    config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict
) -> str | None:
    """Which keys of ``config`` the ``schema`` lacks, each with its closest schema keys; None
    when there are none."""
    known = all_keys(schema)
    unknown = [k for k in all_keys(config) if k not in known]
    unknown = [k for k in unknown if not any(k.startswith(u + ".") for u in unknown)]
    if not unknown:
        return None
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=3)
        parts.append(
            f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
        )
    return f"unknown config key{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted keys set; unknown keys fail with a suggestion."""
    config = ml_collections.ConfigDict(config.to_dict())  # an unlocked deep copy
    known = all_keys(config)
    for key, value in overrides.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint}")
        *groups, name = key.split(".")
        parent = config
        for group in groups:
            parent = parent[group]
        current = parent[name]
        if isinstance(current, ml_collections.ConfigDict):
            fields = ", ".join(f"{key}.{k}" for k in current)
            raise ConfigError(f"{key!r} is a group of settings; set one of: {fields}")
        try:
            parent[name] = _coerce(key, value, current)
        except TypeError as error:
            raise ConfigError(f"{key}={value!r}: {error}") from None
    return config
