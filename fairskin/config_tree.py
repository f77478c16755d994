"""The configuration as a tree of plain values: merging layers, ``key.sub=value`` overrides, flattening.

What :func:`fairskin.config.build_config` does to the nested dicts before pydantic sees them, and the
:class:`ConfigError` it raises (with :func:`format_validation_error`'s message). Nothing here knows the
configuration's fields; :mod:`fairskin.config` re-exports ``ConfigError``, ``parse_override`` and ``flatten``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``update`` laid over it: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into (["a","b","c"], value); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_override(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``tree[parts[0]]...[parts[-1]] = value`` in place, making missing sections (:func:`parse_override`)."""
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {part!r} is not a section")
    node[parts[-1]] = value


def format_validation_error(exc: ValidationError, origin: str) -> str:
    """A :class:`ConfigError` message: one line per invalid field, its value and what is wrong with it."""
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        value = err.get("input")
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
        if err["type"] == "extra_forbidden":
            lines.append(
                f"  {field} = {shown}: unknown field (check the spelling; print the valid fields with `python -m fairskin config`)"
            )
        else:
            lines.append(f"  {field} = {shown}: {err['msg']}")
    return "\n".join(lines)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": value}``; lists are kept as JSON strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat
