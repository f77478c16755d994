"""Credentials never leave the process: :func:`redact` blanks them in URIs and connection strings.

The tracking URI may carry a password (``postgresql+psycopg://user:secret@db/mlflow``,
``https://user:token@mlflow.example``). Everything the engine writes for people or for the
tracking store (MLflow params, printed lines, ``last_config.yaml``, ``mlflow_parent.json``,
error messages) goes through :func:`redact` or :func:`redact_tree`; only the code that opens
the connection uses the real URI. Better still, keep credentials out of the URI: MLflow
reads ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for http(s) servers and
libpq reads ``~/.pgpass`` (or ``PGPASSFILE``) for PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:password@host -> scheme://***:***@host. The user part stops at ':', '/', '@';
# the password part (as SQLAlchemy parses it) runs to the '@' and may hold '/', '?', '#'.
# Quotes, whitespace and '<>' end a URI inside larger text (YAML, JSON, log lines).
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?P<user>[^:/@\s'\"<>]*):(?P<password>[^@\s'\"<>]*)@"
)
# key=value secrets in query strings (?password=..., &token=...) and libpq keyword strings
# ("host=db password=..."): the value runs to '&', ';', whitespace, a quote or '#'.
_KEYS = r"password|passwd|pwd|secret|token|access_token|api_key|apikey|sslpassword"
_KEYVALUE = re.compile(rf"(?P<key>(?<![A-Za-z0-9_])(?:{_KEYS}))=(?P<value>[^&;\s'\"#]+)", re.IGNORECASE)


def redact(text: Any) -> Any:
    """``text`` with every URI password (and its user name) and every ``password=`` value
    replaced by ``***``. Non-strings (``None``, numbers) come back unchanged.

    >>> redact("postgresql+psycopg://fair:s3cret@db:5432/mlflow?sslmode=require")
    'postgresql+psycopg://***:***@db:5432/mlflow?sslmode=require'
    >>> redact("mysql://root@db/mlflow")  # no password: a user name alone is kept
    'mysql://root@db/mlflow'
    """
    if not isinstance(text, str):
        return text
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}:{MASK}@", text)
    return _KEYVALUE.sub(lambda m: f"{m['key']}={MASK}", out)


def redact_tree(value: Any) -> Any:
    """A copy of nested dicts / lists / tuples with :func:`redact` applied to every string."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value


def http_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """(``uri`` without its ``user:password@``, MLflow's standard credential variables) for an http(s)
    URI with credentials; other URIs come back unchanged with ``{}``. A client given the bare URI and
    the variables sends the same basic auth, and its error messages (which quote the URL) carry none.

    >>> http_credentials("https://fair:t%40ken@mlflow.example/x")
    ('https://mlflow.example/x', {'MLFLOW_TRACKING_USERNAME': 'fair', 'MLFLOW_TRACKING_PASSWORD': 't@ken'})
    """
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.username or not parts.password:
        return uri, {}  # MLflow sends basic auth only for a user and a password both set
    host = parts.netloc.rsplit("@", 1)[1]
    return (
        urlunsplit(parts._replace(netloc=host)),
        {
            "MLFLOW_TRACKING_USERNAME": unquote(parts.username or ""),
            "MLFLOW_TRACKING_PASSWORD": unquote(parts.password),
        },
    )


def has_secret(text: Any) -> bool:
    """True when :func:`redact` would change ``text``."""
    return isinstance(text, str) and redact(text) != text
