"""``python -m fairskin``: data and config tools.

    python -m fairskin data counts --csv PATH [--binning centaur_fallback|scale|centaur] [--json] [--debug]
    python -m fairskin config [--preset P] [--config FILE] [key=value ...]   # print the resolved config
    python -m fairskin runs [--preset P] [--config FILE] [key=value ...] [--remove-unused [--dry-run]] [--json]

Input errors end in one paragraph and exit code 2; ``--debug`` shows their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from fairskin.cli import (add_config_arguments, add_debug_argument, add_lock_argument, config_from_args,
                          input_errors)


def _data_counts(args: argparse.Namespace) -> int:
    from fairskin.config import build_config
    from fairskin.data.fitzpatrick import build_manifest, subclass_table

    overrides = ["data.source=fitzpatrick17k", f"data.csv_path={args.csv}", f"data.binning={args.binning}",
                 f"data.min_subclass_count={args.min_count}", f"runtime.seed={args.seed}"]
    if args.drop_qc_wrong:
        overrides.append("data.drop_qc_wrongly_labelled=true")
    with input_errors(args.debug):
        config = build_config("demo", None, overrides)
        manifest, report = build_manifest(config.data, config.runtime.seed, False)
    table = subclass_table(manifest)
    if args.json:
        print(json.dumps({"subclasses": table.to_dict("records"), "report": report.as_dict()}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"Fitzpatrick17k subclasses ({args.binning} binning, seed {args.seed})")
    for col in table.columns:
        out.add_column(col, justify="right" if col in ("count", "train", "val", "test") else "left")
    for row in table.itertuples(index=False):
        out.add_row(*[str(v) for v in row])
    console = Console()
    console.print(out)
    console.print(f"{len(table)} subclasses, {int(table['count'].sum())} images, "
                  f"{int(table['count'].min())} to {int(table['count'].max())} per subclass; "
                  f"dropped: {report.rows_unknown_fst} unknown FST, {report.rows_qc_dropped} by qc, "
                  f"{len(report.subclasses_below_minimum)} subclasses under {args.min_count}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from fairskin.config import dump_config

    print(dump_config(config_from_args(args)), end="")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from fairskin.housekeeping import as_json, remove_unused, render, scan

    config = config_from_args(args)
    root = config.runtime.runs_root
    if not root.is_dir():
        print(f"error: no runs root at {root} (set it with runtime.runs_root=...)", file=sys.stderr)
        return 2
    with input_errors(args.debug):
        if args.remove_unused:
            inv, removed = remove_unused(config, dry_run=args.dry_run, break_lock=args.break_lock,
                                         echo=lambda msg: print(msg, file=sys.stderr))
        else:
            inv, removed = scan(config), []
    if args.json:
        print(json.dumps({**as_json(inv, [] if args.dry_run else removed),
                          "would_remove" if args.dry_run else "removed": [str(e.path) for e in removed]}, indent=2))
        return 0
    from fairskin.housekeeping import human_size

    title = f"runs root {root} (preset {config.preset})"
    render(inv, [] if args.dry_run else removed, title=title)
    freed = human_size(sum(e.size for e in removed))
    if args.remove_unused and args.dry_run:
        print(f"dry run: would remove {len(removed)} item(s), {freed}:")
        for entry in removed:
            print(f"  {entry.path}")
    elif args.remove_unused:
        print(f"removed {len(removed)} unused item(s), {freed}")
    elif inv.unused:
        print(f"{len(inv.unused)} unused item(s), {human_size(inv.total('unused'))}: "
              "--remove-unused --dry-run shows what would be removed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fairskin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    counts = data.add_parser("counts", help="the 15-row subclass table of a Fitzpatrick17k CSV")
    counts.add_argument("--csv", required=True, help="path to fitzpatrick17k.csv")
    counts.add_argument("--binning", default="centaur_fallback", choices=["centaur_fallback", "scale", "centaur"])
    counts.add_argument("--min-count", type=int, default=12, help="drop subclasses under this many images")
    counts.add_argument("--seed", type=int, default=0, help="split seed")
    counts.add_argument("--drop-qc-wrong", action="store_true", help="drop rows whose qc says wrongly labelled")
    counts.add_argument("--json", action="store_true", help="machine-readable output")
    add_debug_argument(counts)
    counts.set_defaults(fn=_data_counts)
    cfg = sub.add_parser("config", help="print the resolved configuration as YAML")
    add_config_arguments(cfg)
    cfg.set_defaults(fn=_config)
    runs = sub.add_parser("runs", help="list stage folders, pools, checkpoints, studies and caches under the runs "
                                       "root with sizes, ages and whether the current configuration uses them",
                          description="In use: named by a stage key the given configuration (same --preset, "
                                      "--config and overrides as the pipeline) computes. --remove-unused removes the "
                                      "unused ones, holding the runs-root lock (refused while a pipeline or study runs).")
    add_config_arguments(runs)
    add_lock_argument(runs)
    runs.add_argument("--remove-unused", action="store_true", help="remove the items marked unused")
    runs.add_argument("--dry-run", action="store_true", help="with --remove-unused: print what would be removed, "
                                                             "remove nothing")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(fn=_runs)
    args = parser.parse_args(argv)
    if getattr(args, "dry_run", False) and not args.remove_unused:
        parser.error("--dry-run goes with --remove-unused")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
