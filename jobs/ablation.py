"""Rebuild the paper's tables and figures for a study from MLflow alone.

    python jobs/ablation.py [--preset demo] [--study NAME] [--seeds N] [--out DIR] [report.baseline=vanilla ...]

Runs are found by their ``fairskin.*`` tags in the tracking store the configuration names
(default: the SQLite file under the runs root). Writes report.md, table CSVs and figure PNGs
to ``--out`` (default ``<runs root>/report/<study>``) and logs them to an MLflow run tagged
``fairskin.kind = report``. A figure with no runs behind it is listed as missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install
from fairskin.preflight import require_engine_interpreter  # noqa: E402  (standard library only)

require_engine_interpreter("jobs/ablation.py")  # before the engine's imports

from fairskin.cli import add_config_arguments, add_lock_argument, config_from_args, input_errors  # noqa: E402
from fairskin.names import name_problem  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    add_lock_argument(parser)
    parser.add_argument("--study", default=None, help="study name (default: the latest `ablation` study)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="use the first N training seeds of each row (default: all found)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    if args.study is not None and name_problem(args.study):  # it names <runs root>/report/<study>
        parser.error(f"--study: {name_problem(args.study)}")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    config = config_from_args(args)
    from fairskin.lock import runs_root_lock

    with input_errors(args.debug), runs_root_lock(config.runtime.runs_root, break_lock=args.break_lock):
        return _report(args, config)


def _report(args: argparse.Namespace, config) -> int:
    from fairskin.report import build_report, latest_study
    from fairskin.secrets import redact
    from fairskin.tracking import Tracker

    uri = config.tracking_uri()
    study = args.study or latest_study(uri)
    if study is None:
        print(
            f"error: no `ablation` study with trial runs in {redact(uri)}; run the pipeline "
            f"(python jobs/full_pipeline.py) or name one with --study",
            file=sys.stderr,
        )
        return 2
    if name_problem(study):  # a tag read back from the tracking store
        print(f"error: study {name_problem(study)}; name a study with --study", file=sys.stderr)
        return 2
    out = args.out or config.runtime.runs_root / "report" / study
    r = config.report
    report = build_report(
        uri,
        out,
        config.data.group_names,
        study=study,
        seeds=args.seeds,
        baseline=r.baseline,
        level=r.level,
        declaration=config.declaration(),
    )
    tracker = Tracker.from_config(config)
    with tracker.run(f"report-{study}", tags={"fairskin.kind": "report", "fairskin.study": study}) as run:
        for path in sorted(out.iterdir()):
            run.log_artifact(path, "report")
    print(report.markdown.read_text())
    print(f"report: {report.markdown}")
    for name, reason in report.missing.items():
        print(f"missing {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
