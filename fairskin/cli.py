"""Shared command-line plumbing: ``--preset``, ``--config FILE`` and ``key.sub=value`` overrides."""

from __future__ import annotations

import argparse
import sys

from fairskin.config import PRESETS, ConfigError, FairSkinConfig, build_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="named configuration (default: demo, the embedded CPU demo)")
    parser.add_argument("--config", dest="config_file", default=None, help="YAML file applied over the preset")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="overrides applied last, e.g. runtime.seed=3 data.image_size=32")


def config_from_args(args: argparse.Namespace) -> FairSkinConfig:
    """Build the config or exit with the validation message (exit code 2, like argparse)."""
    try:
        return build_config(args.preset, args.config_file, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_or_exit(fn, *args, **kwargs):
    """Run ``fn``; turn FairSkin's input errors into a one-paragraph message and exit code 2."""
    from fairskin.data import DataError

    try:
        return fn(*args, **kwargs)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
