"""Shared command-line plumbing: ``--preset``, ``--config FILE``, ``key.sub=value`` overrides, ``--debug``,
and turning FairSkin's input errors into a one-paragraph message with exit code 2.

Input errors are the error classes FairSkin raises for bad input (a config value, a data
file, a search space, a study, an augmentation plan, a missing model folder): they end in
``error: <message>`` on stderr (credentials in URIs redacted) and exit code 2, like
argparse's own errors. ``--debug`` re-raises them with the traceback. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

from fairskin.config import PRESETS, FairSkinConfig, build_config

EXIT_INPUT_ERROR = 2

# (module, class): checked only when the module is already imported (an error of a module
# that was never imported cannot have been raised), so this list imports nothing heavy.
INPUT_ERRORS = (
    ("fairskin.config", "ConfigError"),
    ("fairskin.data", "DataError"),
    ("fairskin.tune.spaces", "SpaceError"),
    ("fairskin.tune.study", "StudyError"),
    ("fairskin.classify.augment", "PlanError"),
    ("fairskin.classify.models", "ModelNotFoundError"),
    ("fairskin.diffusion.models", "ModelNotFoundError"),
    ("fairskin.lock", "RunsRootLocked"),
)


def input_error_classes() -> tuple[type[BaseException], ...]:
    """The input-error classes of the FairSkin modules imported so far."""
    found = []
    for module, name in INPUT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def is_input_error(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    return isinstance(exc, input_error_classes() + tuple(extra))


def error_message(exc: BaseException) -> str:
    """``error: <message>`` with credentials redacted (one paragraph, no traceback)."""
    from fairskin.secrets import redact

    return f"error: {redact(str(exc)).strip()}"


@contextlib.contextmanager
def input_errors(debug: bool = False, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Inside: an input error prints :func:`error_message` and exits 2 (re-raised with ``debug``).

    An error class with an ``exit_code`` attribute exits with that code instead (a study whose
    every trial failed: 1).
    """
    try:
        yield
    except Exception as exc:
        if debug or not is_input_error(exc, extra):
            raise
        print(error_message(exc), file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", EXIT_INPUT_ERROR)) from None


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an input error, show the full traceback instead of the one-paragraph message",
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="demo",
        choices=sorted(PRESETS),
        help="named configuration (default: demo, the embedded CPU demo)",
    )
    parser.add_argument("--config", dest="config_file", default=None, help="YAML file applied over the preset")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="overrides applied last, e.g. runtime.seed=3 data.image_size=32",
    )
    add_debug_argument(parser)


def add_lock_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--break-lock",
        action="store_true",
        help="take the runs root's lock even if another host's process holds it (only when you "
        "know that process has ended; a dead holder on this host is taken over anyway)",
    )


def config_from_args(args: argparse.Namespace) -> FairSkinConfig:
    """Build the config or exit with the validation message (exit code 2, like argparse)."""
    with input_errors(getattr(args, "debug", False)):
        return build_config(args.preset, args.config_file, args.overrides)


def run_or_exit(fn, *args, **kwargs):
    """Run ``fn``; turn FairSkin's input errors into a one-paragraph message and exit code 2.

    For ``--debug``, wrap the call in :func:`input_errors` instead.
    """
    with input_errors():
        return fn(*args, **kwargs)
