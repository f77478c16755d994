"""``python -m fairskin.metrics``: metric tools.

    python -m fairskin.metrics fairness PREDICTIONS.csv [--json] [--bootstrap N] [--seed S] [--debug]

PREDICTIONS.csv has a header with the columns ``y_true,y_pred,group`` (others are ignored);
labels are strings or integers. Input errors end in one paragraph and exit code 2;
``--debug`` shows their traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fairskin.cli import add_debug_argument, input_errors

REQUIRED = ("y_true", "y_pred", "group")


class PredictionsFileError(ValueError):
    """A malformed predictions file; the message names the line and column."""


def read_predictions(path: Path) -> tuple[list, list, list]:
    """(y_true, y_pred, group) from a CSV; integer-looking labels become ints."""
    try:
        fh = open(path, newline="")
    except OSError as exc:
        raise PredictionsFileError(f"{path}: cannot open ({exc.strerror})") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise PredictionsFileError(f"{path}: empty file; expected a header with columns {','.join(REQUIRED)}")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise PredictionsFileError(f"{path}: line 1: missing column(s) {missing}; found {header}")
        cols = {c: header.index(c) for c in REQUIRED}
        values: dict[str, list[str]] = {c: [] for c in REQUIRED}
        for row in reader:
            line = reader.line_num
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise PredictionsFileError(
                    f"{path}: line {line}: {len(row)} fields, expected {len(header)} ({','.join(header)})"
                )
            for c, i in cols.items():
                v = row[i].strip()
                if not v:
                    raise PredictionsFileError(f"{path}: line {line}, column {c}: empty value")
                values[c].append(v)
    if not values["y_true"]:
        raise PredictionsFileError(f"{path}: no data rows after the header")

    def typed(items: list[str]) -> list:
        try:
            return [int(v) for v in items]
        except ValueError:
            return items

    labels = values["y_true"] + values["y_pred"]
    as_ints = typed(labels)
    n = len(values["y_true"])
    return as_ints[:n], as_ints[n:], values["group"]


def _fairness(args: argparse.Namespace) -> int:
    from fairskin.metrics.fairness import fairness_report, format_report

    with input_errors(args.debug, extra=(PredictionsFileError,)):
        y_true, y_pred, group = read_predictions(Path(args.predictions))
    report = fairness_report(y_true, y_pred, group, bootstrap=args.bootstrap, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{len(y_true)} predictions, {len(set(group))} groups; 95% bootstrap intervals "
            f"({args.bootstrap} resamples within groups, seed {args.seed})"
        )
        print(format_report(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fairskin.metrics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fair = sub.add_parser("fairness", help="accuracy per group, DP, ESSP, equalised odds, with intervals")
    fair.add_argument("predictions", help="CSV with columns y_true,y_pred,group")
    fair.add_argument("--json", action="store_true", help="flat keys, intervals as <key>_ci = [low, high]")
    fair.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    fair.add_argument("--seed", type=int, default=0)
    add_debug_argument(fair)
    fair.set_defaults(fn=_fairness)
    args = parser.parse_args(argv)
    if getattr(args, "bootstrap", 0) < 0:
        parser.error(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
