"""``python -m fairskin``: data and config tools.

    python -m fairskin data counts --csv PATH [--binning centaur_fallback|scale|centaur] [--json] [--debug]
    python -m fairskin config [--preset P] [--config FILE] [key=value ...]   # print the resolved config

Input errors end in one paragraph and exit code 2; ``--debug`` shows their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from fairskin.cli import add_config_arguments, add_debug_argument, config_from_args, input_errors


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
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
