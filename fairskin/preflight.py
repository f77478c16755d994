"""Is this interpreter the engine's? A check the job entry points run before importing anything else.

Standard library only, so it runs under any Python. ``ray job submit ... -- python jobs/...`` runs
the entrypoint with the PATH that ``ray start`` had: a head started as ``.venv/bin/ray start``
without the venv active runs the system ``python``, which fails deep inside an import
(``No module named 'mlflow'``). This says which interpreter ran and how to fix it instead.
"""

from __future__ import annotations

import importlib.util
import sys

# The engine's import-time dependencies (module names, not distribution names).
REQUIRED = ("mlflow", "ray", "diffusers", "torch", "pydantic", "yaml", "pandas")
EXIT_WRONG_INTERPRETER = 2


def missing_modules(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """The modules among ``names`` this interpreter cannot import."""
    missing = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def wrong_interpreter_message(script: str, missing: list[str]) -> str:
    return (
        f"error: {sys.executable} (Python {sys.version.split()[0]}) ran {script}, but it lacks the engine's "
        f"dependencies: {', '.join(missing)} cannot be imported. Run it with the interpreter of the venv the "
        f"engine is installed in: `.venv/bin/python {script} ...`, or `source .venv/bin/activate` first. "
        f"Under `ray job submit` the entrypoint's `python` is the one on the PATH that `ray start` had: "
        f"activate the venv before `ray start` (a running head keeps the PATH it was started with), or name "
        f"the interpreter by its absolute path in the entrypoint: "
        f"`ray job submit ... -- $PWD/.venv/bin/python {script} ...` typed in the checkout (the working-dir "
        f"upload leaves .venv out, so a relative path does not exist in the job's folder)."
    )


def require_engine_interpreter(script: str) -> None:
    """Exit with code 2 and :func:`wrong_interpreter_message` when the engine's dependencies are missing."""
    missing = missing_modules()
    if missing:
        print(wrong_interpreter_message(script, missing), file=sys.stderr)
        raise SystemExit(EXIT_WRONG_INTERPRETER)
