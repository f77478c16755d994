"""Names that become folder names under the runs root (study names, search-space names).

A safe name is one path component: it starts with a letter or digit, holds only letters,
digits, ``.``, ``_`` and ``-``, is at most 100 characters long and has no ``..``, so
``<runs root>/tune/<name>`` can never point outside the runs root.
"""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SAFE_NAME_RULE = (
    "one path component of at most 100 characters: letters, digits, '.', '_' and '-', "
    "starting with a letter or digit, without '..'"
)


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a safe name, or None when it is."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not SAFE_NAME.match(value) or ".." in value:
        return f"{value!r} is not a safe name ({SAFE_NAME_RULE})"
    return None


def check_safe_name(value: str, field: str, error: type[Exception] = ValueError) -> str:
    """``value`` if it is a safe name, else raise ``error`` naming ``field``."""
    problem = name_problem(value)
    if problem is not None:
        raise error(f"{field}: {problem}")
    return value
