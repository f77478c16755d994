"""What a fetch left in the folder: the summary, and the per-subclass table against the paper's counts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairskin.config import DataConfig
from fairskin.data.fetch.ledger import FAILED, LEDGER_FILE, MD5_MISMATCH, NO_URL, TABLE_FILE, VERIFIED
from fairskin.data.fetch.rows import FetchRow

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class FetchSummary:
    """What a fetch left in the folder.

    ``listed``: rows considered; ``fetched``: MD5-verified images downloaded by this run;
    ``verified``: verified images now in the folder; ``md5_mismatch``: rows whose image has another MD5
    (in ``mismatch/``); ``failed``: reason -> rows (``no_url`` included, mismatches not), so
    ``listed == verified + md5_mismatch + sum(failed)``; ``skipped_existing``: verified rows not
    requested again; ``requested_rows``: rows this run requested; ``seconds``: wall time.
    ``table``: per (group, disease) of the paper subset, see :func:`subclass_fetch_table`;
    ``below_minimum``: (group, disease, verified) of the subclasses under ``data.min_subclass_count``.
    """

    listed: int
    fetched: int
    verified: int
    md5_mismatch: int
    failed: dict[str, int]
    skipped_existing: int
    requested_rows: int
    seconds: float
    out_dir: Path
    ledger: Path
    table_path: Path
    min_subclass_count: int
    table: pd.DataFrame = field(repr=False)
    below_minimum: list[tuple[str, str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Flat JSON-ready dict: the counts, ``seconds``, the paths and ``below_minimum``."""
        return {
            "listed": self.listed,
            "fetched": self.fetched,
            "verified": self.verified,
            "md5_mismatch": self.md5_mismatch,
            "failed": dict(sorted(self.failed.items())),
            "skipped_existing": self.skipped_existing,
            "requested_rows": self.requested_rows,
            "seconds": round(self.seconds, 3),
            "out": str(self.out_dir),
            "ledger": str(self.ledger),
            "table": str(self.table_path),
            "min_subclass_count": self.min_subclass_count,
            "below_minimum": [list(x) for x in self.below_minimum],
        }


def subclass_fetch_table(subset: pd.DataFrame, final: dict[str, dict[str, Any]], data: DataConfig) -> pd.DataFrame:
    """Per (group, disease) of ``data``: ``paper`` (the paper's count, from the shipped table; empty for
    subclasses it lacks), ``listed`` (rows in the CSV), ``verified``, ``md5_mismatch``, ``failed`` and
    one column per failure reason, ``missing`` (listed - verified), ``below_minimum`` (verified under
    ``data.min_subclass_count``). Sorted by group, then disease."""
    import pandas as pd

    from fairskin.data.prepare import reference_counts

    paper = reference_counts()
    status = [final.get(i, {}).get("status", "") for i in subset["id"]]
    reason = [final.get(i, {}).get("reason", "") for i in subset["id"]]
    frame = subset.assign(status=status, reason=reason)
    reasons = sorted({r for s, r in zip(status, reason) if s in (FAILED, NO_URL)})
    records = []
    for group in sorted(data.group_names):
        for disease in sorted(data.diseases):
            part = frame[(frame["group"] == group) & (frame["disease"] == disease)]
            failed = part[part["status"].isin([FAILED, NO_URL])]
            verified = int((part["status"] == VERIFIED).sum())
            records.append(
                {
                    "group": group,
                    "disease": disease,
                    "paper": paper.get((group, disease)),
                    "listed": len(part),
                    "verified": verified,
                    "md5_mismatch": int((part["status"] == MD5_MISMATCH).sum()),
                    "failed": len(failed),
                    **{r: int((failed["reason"] == r).sum()) for r in reasons},
                    "missing": len(part) - verified,
                    "below_minimum": verified < data.min_subclass_count,
                }
            )
    table = pd.DataFrame.from_records(records)
    table["paper"] = table["paper"].astype("Int64")
    return table


def _summary(
    rows: list[FetchRow],
    final: dict[str, dict[str, Any]],
    table: pd.DataFrame,
    data: DataConfig,
    fetched: int,
    skipped: int,
    requested: int,
    started: float,
    out_dir: Path,
) -> FetchSummary:
    """The :class:`FetchSummary` of a fetch into ``out_dir`` of ``rows`` that left ``final`` entries and
    ``table``: ``fetched`` images downloaded, ``skipped`` verified rows not requested again, ``requested``
    rows requested; ``started``: its ``time.monotonic()`` start. Warns for each subclass under
    ``data.min_subclass_count``."""
    listed_ids = [r.id for r in rows]
    statuses = [final[i]["status"] for i in listed_ids]
    failed: dict[str, int] = {}
    for i, status in zip(listed_ids, statuses):
        if status in (FAILED, NO_URL):
            failed[final[i]["reason"]] = failed.get(final[i]["reason"], 0) + 1
    small = table[table["below_minimum"]]
    below = [(r.group, r.disease, int(r.verified)) for r in small.itertuples()]
    warnings = [
        f"{r.group} / {r.disease}: {r.verified} verified image(s) of {r.listed} listed (paper: "
        f"{_paper_text(r.paper)}), under data.min_subclass_count={data.min_subclass_count}; prepare drops "
        f"this subclass"
        for r in small.itertuples()
    ]
    return FetchSummary(
        listed=len(rows),
        fetched=fetched,
        verified=statuses.count(VERIFIED),
        md5_mismatch=statuses.count(MD5_MISMATCH),
        failed=failed,
        skipped_existing=skipped,
        requested_rows=requested,
        seconds=time.monotonic() - started,
        out_dir=out_dir,
        ledger=out_dir / LEDGER_FILE,
        table_path=out_dir / TABLE_FILE,
        min_subclass_count=data.min_subclass_count,
        table=table,
        below_minimum=below,
        warnings=warnings,
    )


def _paper_text(value) -> str:
    import pandas as pd

    return "-" if pd.isna(value) else str(int(value))
