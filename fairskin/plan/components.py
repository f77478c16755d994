"""The measured variance components of an endpoint: read from the newest ``variance_components.csv``."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from fairskin.plan.design import Components

COMPONENTS_FILE = "variance_components.csv"


def measured_components(runs_root: Path | str, endpoint: str) -> Components | None:
    """The endpoint's components from the newest ``<runs_root>/**/variance_components.csv`` (by mtime).

    The file has one row per endpoint (and compared variant, if any) with at least the columns
    endpoint, sigma2_ft, sigma2_pool, sigma2_cls (endpoint units squared; NaN: merged into the level
    above) and R, K, S. With several rows for the endpoint the largest sigma2_ft + sigma2_pool +
    sigma2_cls is taken (the variant hardest to tell apart; NaN as 0). None when there is no file or
    no row for the endpoint.
    """
    files = [p for p in Path(runs_root).rglob(COMPONENTS_FILE) if p.is_file()]
    if not files:
        return None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    with newest.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("endpoint") == endpoint]

    def number(row: Mapping[str, str], key: str) -> float:
        try:
            return float(row.get(key) or "nan")
        except ValueError:
            return float("nan")

    def count(row: Mapping[str, str], key: str) -> int | None:
        value = number(row, key)
        return int(value) if math.isfinite(value) else None

    if not rows:
        return None
    row = max(
        rows,
        key=lambda r: sum(
            v for v in (number(r, k) for k in ("sigma2_ft", "sigma2_pool", "sigma2_cls")) if math.isfinite(v)
        ),
    )
    return Components(
        number(row, "sigma2_ft"),
        number(row, "sigma2_pool"),
        number(row, "sigma2_cls"),
        R=count(row, "R"),
        K=count(row, "K"),
        S=count(row, "S"),
        source=str(newest) + (f" (of {len(rows)} rows, the largest)" if len(rows) > 1 else ""),
    )


def components_status(components: Components, classifier_level: bool = True) -> dict[str, str]:
    """For each component "measured" or "assumed: <why>" (NaN: merged into the level above; negative: 0)."""
    out = {}
    above = {"sigma2_pool": "sigma2_ft (K = 1 in the data)", "sigma2_cls": "sigma2_pool (S = 1 in the data)"}
    for name, value in components.parts().items():
        if name == "sigma2_cls" and not classifier_level:
            out[name] = "assumed: 0 (generation endpoint: no classifier level)"
        elif math.isnan(value) and name in above:
            out[name] = (
                f"assumed: 0, not separable: counted in {above[name]}, so planning more "
                f"{'pools' if name == 'sigma2_pool' else 'seeds'} is conservative"
            )
        elif not math.isfinite(value):
            out[name] = f"assumed: 0 (not finite in {components.source})"
        elif value < 0:
            out[name] = f"assumed: 0 (the estimate {value:.3g} is negative)"
        else:
            out[name] = "measured"
    return out
