"""What code and which packages made a run: the engine's version, its git commit, installed versions.

Every pipeline and study parent run records them (:func:`record_environment`): tags
``fairskin.version``, ``fairskin.git_commit``, ``fairskin.python`` and ``fairskin.pkg.<name>`` for
the packages that decide results, and the artifact ``environment/environment.txt`` listing every
installed distribution (``name==version``, from :mod:`importlib.metadata`).

The commit is taken from, in order:

1. ``FAIRSKIN_GIT_COMMIT`` in the environment: a ``ray job submit`` upload has no ``.git``, so the
   README's job recipe passes ``$(git rev-parse HEAD)`` this way (``--runtime-env-json``);
2. the checkout the package was imported from (``git rev-parse HEAD``, ``-dirty`` appended when
   tracked files differ from it);
3. pip's record of a ``pip install git+URL@REV`` (``direct_url.json``);

and is ``unknown`` otherwise (the tag says so rather than guessing).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

COMMIT_ENV = "FAIRSKIN_GIT_COMMIT"
UNKNOWN = "unknown"
# Packages whose versions can change a figure: shown as tags (every installed one is in the artifact).
KEY_PACKAGES = (
    "ray",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "torch-fidelity",
    "optuna",
    "mlflow",
    "numpy",
    "pandas",
    "pydantic",
    "scikit-learn",
)
TAG_VERSION = "fairskin.version"
TAG_COMMIT = "fairskin.git_commit"
ARTIFACT = "environment.txt"

_REPO = Path(__file__).resolve().parents[1]


def engine_version() -> str:
    """The installed ``fairskin`` distribution's version (``unknown`` when run from a bare checkout)."""
    try:
        return metadata.version("fairskin")
    except metadata.PackageNotFoundError:
        return UNKNOWN


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _commit_from_checkout() -> str | None:
    """HEAD of the checkout this package lives in (only if the checkout's top level is that folder)."""
    if not (_REPO / ".git").exists():
        return None
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != _REPO:
        return None
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if dirty else head


def _commit_from_pip() -> str | None:
    try:
        text = metadata.distribution("fairskin").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        return (json.loads(text or "{}").get("vcs_info") or {}).get("commit_id")
    except ValueError:
        return None


def git_commit() -> str:
    """The engine's commit: ``FAIRSKIN_GIT_COMMIT``, else the checkout's HEAD, else pip's record, else ``unknown``."""
    return os.environ.get(COMMIT_ENV, "").strip() or _commit_from_checkout() or _commit_from_pip() or UNKNOWN


def package_versions() -> dict[str, str]:
    """Every installed distribution, ``{name: version}``, sorted by lower-case name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def environment() -> dict[str, Any]:
    """The engine's version and commit, the interpreter, the platform and the installed packages."""
    return {
        "fairskin": engine_version(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
    }


def environment_text(env: dict[str, Any] | None = None) -> str:
    """:func:`environment` as text: ``key: value`` lines, then ``name==version`` per package."""
    env = env or environment()
    head = [f"{k}: {v}" for k, v in env.items() if k != "packages"]
    return "\n".join(head + ["", "# installed packages"] + [f"{n}=={v}" for n, v in env["packages"].items()]) + "\n"


def environment_tags(env: dict[str, Any] | None = None) -> dict[str, str]:
    """Tags for a run: engine version, commit, Python and the key packages' versions."""
    env = env or environment()
    lower = {n.lower().replace("_", "-"): v for n, v in env["packages"].items()}
    tags = {TAG_VERSION: env["fairskin"], TAG_COMMIT: env["git_commit"], "fairskin.python": env["python"]}
    tags.update({f"fairskin.pkg.{name}": lower[name] for name in KEY_PACKAGES if name in lower})
    return tags


def record_environment(run, prefix: str = "") -> dict[str, str]:
    """Tag ``run`` (a :class:`fairskin.tracking.RunHandle`) with :func:`environment_tags` and log
    ``environment/<prefix>environment.txt``. ``prefix`` (e.g. ``"resumed."``) keeps a resumed study's
    first record and adds the resuming code's beside it. Returns the tags."""
    env = environment()
    tags = environment_tags(env)
    if prefix:
        tags = {k.replace("fairskin.", f"fairskin.{prefix}", 1): v for k, v in tags.items()}
    run.set_tags(tags)
    run.log_text(environment_text(env), f"environment/{prefix}{ARTIFACT}")
    return tags
