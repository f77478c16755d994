"""The FairSkin pipeline as one job.

    python jobs/full_pipeline.py [--preset demo|smoke|paper] [--config FILE] [--force STAGE ...] [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/full_pipeline.py --preset demo

Every stage is keyed by the configuration it reads and skipped when already done under
the runs root; ``--force STAGE`` (or ``--force all``) redoes it and the stages of this run
that depend on it. The runs root is locked while the job runs (``--break-lock``: see README).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install
from fairskin.preflight import require_engine_interpreter  # noqa: E402  (standard library only)

require_engine_interpreter("jobs/full_pipeline.py")  # before the engine's imports

from fairskin.cli import add_config_arguments, add_lock_argument, config_from_args, input_errors  # noqa: E402
from fairskin.lock import runs_root_lock  # noqa: E402
from fairskin.pipeline import STAGES, run_pipeline  # noqa: E402
from fairskin.pipeline.conclusive import LOOKS_FILE, run_until_conclusive  # noqa: E402
from fairskin.pipeline.stages.report import report_path  # noqa: E402
from fairskin.runtime import RAY_MESSAGES_LOG, quiet_console, ray_logs_dir, ray_messages_count  # noqa: E402

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    add_lock_argument(parser)
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help=f"redo a stage, and every later stage of this run that depends on it, even if done "
        f"(repeatable; 'all' for every stage): {', '.join(STAGES)}",
    )
    parser.add_argument(
        "--stages", nargs="+", default=None, metavar="STAGE", help="run only these stages (and the ones they need)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's worker logs, Ray Data's and the libraries' progress bars "
        "(runtime.verbose=true; otherwise they are only in the Ray session's log files)",
    )
    args = parser.parse_args(argv)
    if args.verbose:
        args.overrides = list(args.overrides) + ["runtime.verbose=true"]
    # `--stages evaluate runtime.seed=1`: nargs="+" swallows the overrides that follow it.
    named = args.stages or []
    args.overrides = list(args.overrides) + [s for s in named if "=" in s]
    args.stages = [s for s in named if "=" not in s] or None
    for name in (args.stages or []) + [f for f in args.force if f != "all"]:
        if name not in STAGES:
            parser.error(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    config = config_from_args(args)
    if config.report.until_conclusive and args.stages:
        parser.error("report.until_conclusive runs the whole pipeline at every look; leave out --stages")
    quiet_console(config.runtime.verbose)
    started = time.time()
    conclusive = None
    try:
        # One process per runs root: a second one is refused at once (exit 2, naming the holder).
        with input_errors(args.debug), runs_root_lock(config.runtime.runs_root, break_lock=args.break_lock):
            if (
                config.report.until_conclusive
            ):  # the pipeline look by look, adding repeats (fairskin.pipeline.conclusive)
                conclusive = run_until_conclusive(config, force=args.force)
                outcome = conclusive.last_pipeline
            else:
                outcome = run_pipeline(config, stages=args.stages, force=args.force)
    except KeyboardInterrupt:
        # The running stage's MLflow runs are marked KILLED; what it can resume from is kept.
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    tracker = outcome.tracker
    print()
    print(f"runs root      : {config.runtime.runs_root}")
    for name, result in outcome.results.items():
        state = "skipped" if result.skipped else f"{result.seconds:6.1f} s"
        print(f"  {name:<12} {state:>9}  {result.path}")
    print(f"total          : {time.time() - started:.1f} s")
    if conclusive is not None:
        looks = ", ".join(str(look.n) for look in conclusive.looks)
        print(f"looks          : {looks} repeats; stopped: {conclusive.reason}  ({conclusive.folder / LOOKS_FILE})")
    if ray_logs_dir():
        messages = ray_messages_count()
        held = f"; {messages} cluster and Tune message(s) in {RAY_MESSAGES_LOG}" if messages else ""
        print(f"Ray logs       : {ray_logs_dir()}  (worker output{held}; --verbose shows it here)")
    if "report" in outcome.results:
        print(f"report         : {report_path(outcome.results['report'])}")
    print(f"MLflow URI     : {tracker.display_uri}")
    if tracker.enabled:
        print(f"MLflow UI      : {tracker.ui_command()}")
        print(f"runs           : {tracker.runs_url()}  (parent run {outcome.parent_run_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
