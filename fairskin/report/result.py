"""What :func:`fairskin.report.build_report` returns, and the error it raises on runs it cannot join."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fairskin.metrics.endpoints import Declaration


class ReportError(ValueError):
    """Runs that cannot be put together honestly (e.g. one generator's trials drew from two pools)."""


@dataclass
class Report:
    """What :func:`build_report` wrote: tables, figure paths, and the figures it could not draw."""

    folder: Path
    table1: pd.DataFrame
    table2: pd.DataFrame
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    units: pd.DataFrame = field(default_factory=pd.DataFrame)
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)
    declaration: Declaration = field(default_factory=Declaration)
    figures: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    markdown: Path | None = None
    judge: str = ""  # which judge scored disease fidelity (the evaluate runs' ``fairskin.judge`` tag)
