"""The Fitzpatrick17k CSV's rows to fetch: each row's id (its md5hash), URL and line, checked before any request."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fairskin.config import DataConfig
from fairskin.data import DataError

if TYPE_CHECKING:
    import pandas as pd

_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class FetchRow:
    """One CSV row to fetch: ``id`` (the lower-case md5hash), its URL ("" when none), its 1-based line."""

    id: str
    url: str
    line: int


def read_fetch_rows(
    csv_path: Path, data: DataConfig, only_paper_subset: bool = False
) -> tuple[list[FetchRow], pd.DataFrame]:
    """Read and check the CSV; returns (rows to fetch, the paper subset's ``id, group, disease`` frame).

    Checks, before anything is requested: the ``md5hash`` and ``url`` columns exist, every md5hash is 32
    hexadecimal digits (it becomes a file name, so a path such as ``../x`` is refused), and everything
    :func:`~fairskin.data.fitzpatrick.read_fitzpatrick_csv` checks. The subset is the rows of
    ``data.diseases`` with a known skin type, binned as ``data.binning`` says (the same rule as
    ``python -m fairskin data counts``); with ``only_paper_subset`` only those rows are fetched.
    """
    import pandas as pd

    from fairskin.data.fitzpatrick import ManifestReport, read_fitzpatrick_csv, select_rows

    csv_path = Path(csv_path)
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{csv_path}: file not found (the Fitzpatrick17k metadata CSV)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("md5hash", "url") if c not in raw.columns]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {missing}; the fetch needs md5hash (the file name and "
            f"the expected MD5) and url"
        )
    for i, value in enumerate(raw["md5hash"]):
        if not _MD5.match(value.strip().lower()):
            hint = (
                " (a path is not allowed: it names a file in the output folder)"
                if any(ch in value for ch in "/\\") or ".." in value
                else ""
            )
            raise DataError(
                f"{csv_path}: line {i + 2}, column md5hash: got {value!r}; expected 32 hexadecimal digits{hint}"
            )
    df = read_fitzpatrick_csv(csv_path)  # the other columns' checks; same row order, ids lower-cased
    df["url"] = raw["url"].str.strip().values
    subset = select_rows(df, data, ManifestReport())[["id", "group", "disease"]]
    if only_paper_subset:
        df = df[df["md5hash"].isin(set(subset["id"]))]
    rows = [FetchRow(id=i, url=u, line=int(n)) for i, u, n in zip(df["md5hash"], df["url"], df["line"])]
    return rows, subset.reset_index(drop=True)
