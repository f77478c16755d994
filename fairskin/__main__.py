"""``python -m fairskin``: data and config tools.

    python -m fairskin data counts --csv PATH [--binning centaur_fallback|scale|centaur] [--json] [--debug]
    python -m fairskin data fetch --csv PATH --out DIR [--workers N] [--per-host N] [--rate R] [--timeout S]
        [--total-timeout S] [--retries N] [--max-bytes B] [--max-redirects N] [--only-paper-subset]
        [--binning B] [--min-count N] [--no-progress] [--json] [--debug]   # images from the CSV's URLs
    python -m fairskin config [--preset P] [--config FILE] [key=value ...]   # print the resolved config
    python -m fairskin runs [--preset P] [--config FILE] [key=value ...] [--remove-unused [--dry-run]] [--json]
    python -m fairskin plan [--preset P] [--config FILE] [key=value ...] --endpoint E --mde M [--power 0.8]
        [--budget-hours H] [--gpus N] [--gpu-figures FILE] [--method t|normal] [--json]   # (R, K, S) for an MDE

Input errors end in one paragraph and exit code 2; ``--debug`` shows their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fairskin.cli import add_config_arguments, add_debug_argument, add_lock_argument, config_from_args, input_errors


def _data_counts(args: argparse.Namespace) -> int:
    from fairskin.config import build_config
    from fairskin.data.fitzpatrick import build_manifest, subclass_table

    overrides = [
        "data.source=fitzpatrick17k",
        f"data.csv_path={args.csv}",
        f"data.binning={args.binning}",
        f"data.min_subclass_count={args.min_count}",
        f"runtime.seed={args.seed}",
    ]
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
    console.print(
        f"{len(table)} subclasses, {int(table['count'].sum())} images, "
        f"{int(table['count'].min())} to {int(table['count'].max())} per subclass; "
        f"dropped: {report.rows_unknown_fst} unknown FST, {report.rows_qc_dropped} by qc, "
        f"{len(report.subclasses_below_minimum)} subclasses under {args.min_count}"
    )
    return 0


def _fetch_default(name: str):
    """A keyword default of :func:`fairskin.data.fetch.fetch_images` (the defaults live there only)."""
    import inspect

    from fairskin.data.fetch import fetch_images

    return inspect.signature(fetch_images).parameters[name].default


def _data_fetch(args: argparse.Namespace) -> int:
    from fairskin.config import build_config
    from fairskin.data.fetch import fetch_images

    options = {
        name: getattr(args, name)
        for name in ("workers", "per_host", "rate", "timeout", "total_timeout", "retries", "max_bytes", "max_redirects")
    }
    try:
        with input_errors(args.debug):
            data = build_config(
                "demo", None, [f"data.binning={args.binning}", f"data.min_subclass_count={args.min_count}"]
            ).data
            summary = fetch_images(
                args.csv,
                args.out,
                **options,
                only_paper_subset=args.only_paper_subset,
                data=data,
                progress=not args.no_progress,
            )
    except KeyboardInterrupt:
        print("interrupted: the ledger keeps every finished row; the same command resumes", file=sys.stderr)
        return 130
    import pandas as pd
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # With --json, stdout carries only the final JSON line; the human report goes to stderr.
    console = Console(stderr=args.json)
    table = summary.table
    reasons = [c for c in table.columns[table.columns.get_loc("failed") + 1 :] if c not in ("missing", "below_minimum")]
    out = Table(title=f"Fitzpatrick17k images in {escape(str(summary.out_dir))} per subclass (paper subset)")
    for col in ("group", "disease", "paper", "listed", "verified", "md5 mismatch", "failed", "missing"):
        out.add_column(col, justify="left" if col in ("group", "disease") else "right")
    out.add_column("failed by reason")
    for row in table.to_dict("records"):
        style = "bold red" if row["below_minimum"] else None
        why = ", ".join(f"{r} {row[r]}" for r in reasons if row[r])
        paper = "-" if pd.isna(row["paper"]) else str(row["paper"])
        counts = (str(row[c]) for c in ("listed", "verified", "md5_mismatch", "failed", "missing"))
        out.add_row(row["group"], row["disease"], paper, *counts, why, style=style)
    console.print(out)
    failed = ", ".join(f"{k} {v}" for k, v in sorted(summary.failed.items())) or "none"
    console.print(
        f"{summary.listed} rows: {summary.verified} verified ({summary.fetched} fetched now, "
        f"{summary.skipped_existing} already there), {summary.md5_mismatch} md5 mismatch "
        f"(in {summary.out_dir / 'mismatch'}), failed: {failed}; {summary.seconds:.1f} s. "
        f"Ledger {summary.ledger}, table {summary.table_path}.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    console.print(
        f"next: python jobs/full_pipeline.py --preset paper data.source=fitzpatrick17k "
        f"data.csv_path={args.csv} data.image_root={summary.out_dir}"
        + (" data.on_bad_image=skip" if summary.verified < summary.listed else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if args.json:
        print(json.dumps(summary.as_json()), flush=True)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
        return value

    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _add_fetch_parser(data) -> None:
    fetch = data.add_parser(
        "fetch",
        help="download the Fitzpatrick17k images from the CSV's URLs into a folder, verified and resumable",
        description="Each row's url -> DIR/<md5hash>.<ext> when the body is an image whose MD5 is the row's md5hash; "
        "other images go to DIR/mismatch/. A ledger in DIR makes a rerun skip what is done and retry "
        "only transient failures. Ends with the per-subclass table of what is missing against the "
        "paper's counts (also DIR/.fetch_subclasses.csv).",
    )
    fetch.add_argument("--csv", required=True, help="path to fitzpatrick17k.csv")
    fetch.add_argument("--out", required=True, help="folder the images go to (data.image_root for prepare)")
    _add_fetch_limits(fetch)
    fetch.add_argument(
        "--only-paper-subset",
        action="store_true",
        help="fetch only the rows of data.diseases with a known skin type (the paper's subclasses)",
    )
    fetch.add_argument(
        "--binning",
        default="centaur_fallback",
        choices=["centaur_fallback", "scale", "centaur"],
        help="skin-type rule for the subclass table and --only-paper-subset",
    )
    fetch.add_argument(
        "--min-count",
        type=_positive_int,
        default=12,
        help="warn for subclasses with fewer verified images (data.min_subclass_count)",
    )
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON line: listed, fetched, verified, md5_mismatch, failed, "
        "skipped_existing, seconds (the table goes to stderr)",
    )
    add_debug_argument(fetch)
    fetch.set_defaults(fn=_data_fetch)


def _add_fetch_limits(fetch) -> None:
    """The fetch's politeness and size limits (workers, per-host, rate, timeouts, retries, bytes, redirects),
    their defaults those of :func:`fairskin.data.fetch.fetch_images`."""
    d = _fetch_default
    fetch.add_argument(
        "--workers", type=_positive_int, default=d("workers"), help="download threads (default %(default)s)"
    )
    fetch.add_argument(
        "--per-host",
        type=_positive_int,
        default=d("per_host"),
        help="requests in flight per host (default %(default)s)",
    )
    fetch.add_argument(
        "--rate",
        type=_non_negative(float),
        default=d("rate"),
        help="request starts per second per host, 0 for no limit (default %(default)s)",
    )
    fetch.add_argument(
        "--timeout",
        type=_positive_float,
        default=d("timeout"),
        help="seconds for each connect and each read (default %(default)s)",
    )
    fetch.add_argument(
        "--total-timeout",
        type=_positive_float,
        default=d("total_timeout"),
        help="seconds for one attempt, redirects and body included (default %(default)s)",
    )
    fetch.add_argument(
        "--retries",
        type=_non_negative(int),
        default=d("retries"),
        help="further attempts on a timeout, connection error, 429 or 5xx (default %(default)s)",
    )
    fetch.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=d("max_bytes"),
        help="largest body accepted, in bytes (default %(default)s)",
    )
    fetch.add_argument(
        "--max-redirects",
        type=_non_negative(int),
        default=d("max_redirects"),
        help="http(s) redirects followed per attempt (default %(default)s)",
    )


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
            inv, removed = remove_unused(
                config, dry_run=args.dry_run, break_lock=args.break_lock, echo=lambda msg: print(msg, file=sys.stderr)
            )
        else:
            inv, removed = scan(config), []
    if args.json:
        print(
            json.dumps(
                {
                    **as_json(inv, [] if args.dry_run else removed),
                    "would_remove" if args.dry_run else "removed": [str(e.path) for e in removed],
                },
                indent=2,
            )
        )
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
        print(
            f"{len(inv.unused)} unused item(s), {human_size(inv.total('unused'))}: "
            "--remove-unused --dry-run shows what would be removed"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fairskin``: parse ``argv`` (default: the command line), run its command; the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m fairskin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    _add_fetch_parser(data)
    cfg = sub.add_parser("config", help="print the resolved configuration as YAML")
    add_config_arguments(cfg)
    cfg.set_defaults(fn=_config)
    runs = sub.add_parser(
        "runs",
        help="list stage folders, pools, checkpoints, studies and caches under the runs "
        "root with sizes, ages and whether the current configuration uses them",
        description="In use: named by a stage key the given configuration (same --preset, "
        "--config and overrides as the pipeline) computes. --remove-unused removes the "
        "unused ones, holding the runs-root lock (refused while a pipeline or study runs).",
    )
    add_config_arguments(runs)
    add_lock_argument(runs)
    runs.add_argument("--remove-unused", action="store_true", help="remove the items marked unused")
    runs.add_argument(
        "--dry-run", action="store_true", help="with --remove-unused: print what would be removed, remove nothing"
    )
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(fn=_runs)
    from fairskin import plan as plan_cli

    plan = sub.add_parser(
        "plan",
        help="the (R, K, S) and compute a claim needs, from measured variance components and stage times",
        description="Least-cost repeats R, pools K and classifier seeds S reaching --mde at the "
        "given power; see fairskin/plan/.",
    )
    plan_cli.add_arguments(plan)
    plan.set_defaults(fn=plan_cli.run)
    args = parser.parse_args(argv)
    if getattr(args, "dry_run", False) and not args.remove_unused:
        parser.error("--dry-run goes with --remove-unused")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
