"""The whole report: find the study's runs, build the tables and verdicts, write them with the figures and
``report.md`` into one folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fairskin.io import atomic_write_text
from fairskin.metrics.endpoints import Declaration
from fairskin.provenance import TAG_REAL
from fairskin.report.differences import difference_components, paired_differences, primary_verdicts
from fairskin.report.figures import draw_figures
from fairskin.report.markdown import report_markdown
from fairskin.report.result import Report
from fairskin.report.runs import (
    evaluate_runs,
    latest_study,
    pipeline_stage_keys,
    reference_run,
    scoped_studies,
    study_parent,
    tag_column,
    trial_runs,
)
from fairskin.report.tables import table1, table2, unit_frame


@dataclass
class _Sources:
    """The runs a report is built from, joined by provenance: the study's trials, the evaluate runs of their
    pools, the reference run, and the pipeline run and real-shard fingerprint that tie them together."""

    study: str | None
    trials: pd.DataFrame
    pipeline_run: str
    real: str
    pools: set[str]
    evaluated: pd.DataFrame
    ref: pd.Series | None


def build_report(
    tracking_uri: str,
    out: Path,
    groups: Sequence[str],
    study: str | None = None,
    seeds: int | None = None,
    baseline: str = "vanilla",
    level: float = 0.95,
    declaration: Declaration | None = None,
) -> Report:
    """Rebuild Table 1, the paired differences, Table 2 and Figures 3a-6 from MLflow into ``out``.

    ``study``: the ablation study whose trials fill Table 1 (default: the latest ``ablation``
    study); ``seeds``: use at most the first N classifier seeds of each repeat; ``baseline``:
    the variant every other is paired against; ``level``: interval coverage; ``declaration``: the
    primary endpoints, margins and alpha (:class:`fairskin.metrics.endpoints.Declaration`, default
    the built-in one): one Holm family per compared variant over them, everything else exploratory.
    Writes ``verdicts.csv`` and ``declaration.json`` beside the tables.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = _find_sources(tracking_uri, study)
    units = unit_frame(sources.trials, sources.evaluated, seeds)
    report = _write_tables(
        out, sources.trials, units, groups, baseline, level, declaration or Declaration(), sources.evaluated
    )
    _note_provenance(report, sources)
    aug = scoped_studies(tracking_uri, "aug_count", sources.pools)
    ratio = scoped_studies(tracking_uri, "ethnic_ratio", sources.pools)
    report.figures, report.missing = draw_figures(out, report.table1, units, sources.ref, aug, ratio, groups, level)
    studies = {
        "aug_count": sorted(set(aug["study"])) if len(aug) else [],
        "ethnic_ratio": sorted(set(ratio["study"])) if len(ratio) else [],
    }
    report.markdown = out / "report.md"
    text = report_markdown(report, sources.study, sources.pipeline_run, sources.ref, groups, baseline, level, studies)
    atomic_write_text(report.markdown, text)
    return report


def _find_sources(tracking_uri: str, study: str | None) -> _Sources:
    """The runs of ``study`` (default: the latest ablation study) and those joined to them by provenance."""
    study = study or latest_study(tracking_uri)
    trials = trial_runs(tracking_uri, study) if study else pd.DataFrame()
    parent = study_parent(tracking_uri, study) if study else None
    pipeline_run = str(parent.get("tags.fairskin.pipeline_run", "") or "") if parent is not None else ""
    keys = pipeline_stage_keys(tracking_uri, pipeline_run)
    real = str(parent.get(f"tags.{TAG_REAL}", "") or "") if parent is not None else ""
    pools = set(trials["pool"]) - {""} if len(trials) else set()
    evaluated = evaluate_runs(tracking_uri, pools, keys.get("evaluate"))
    ref = reference_run(tracking_uri, real, keys.get("reference"))
    return _Sources(study, trials, pipeline_run, real, pools, evaluated, ref)


def _write_tables(
    out: Path,
    trials: pd.DataFrame,
    units: pd.DataFrame,
    groups: Sequence[str],
    baseline: str,
    level: float,
    declaration: Declaration,
    evaluated: pd.DataFrame | None = None,
) -> Report:
    """Tables 1 and 2, the verdicts, the paired differences and their variance components, the repeats and
    the declaration, written into ``out``; the report holding them."""
    t1 = table1(units, level)
    verdicts = primary_verdicts(units, baseline, declaration, level)
    paired = paired_differences(units, baseline, level, declaration, verdicts)
    t2 = table2(units, groups, level)
    for frame, name in (
        (t1, "table1.csv"),
        (paired, f"delta_vs_{baseline}.csv"),
        (t2, "table2_fid_per_group.csv"),
        (units, "repeats.csv"),
        (verdicts, "verdicts.csv"),
        (difference_components(trials, units, baseline, declaration, level, evaluated), "variance_components.csv"),
    ):
        frame.to_csv(out / name, index=False)
    atomic_write_text(out / "declaration.json", json.dumps(declaration.as_dict(), indent=2))
    return Report(out, t1, t2, paired, units, verdicts=verdicts, declaration=declaration)


def _note_provenance(report: Report, sources: _Sources) -> None:
    """The judge, the fingerprints of every generator's pool and of the real shards, and notes on generators
    no evaluate run measured or whose skin-tone agreement is above its real ceiling."""
    evaluated, units = sources.evaluated, report.units
    if len(evaluated):
        report.judge = "; ".join(sorted(set(tag_column(evaluated, "fairskin.judge")) - {""}))
    if len(units):
        report.fingerprints = {
            f"{r.variant} repeat {r.repeat}": r.pool for r in units.drop_duplicates(["variant", "repeat"]).itertuples()
        }
        missing_eval = sorted({f"{r.variant} repeat {r.repeat}" for r in units.itertuples() if not np.isfinite(r.fid)})
        if missing_eval:
            report.notes.append(
                f"no evaluate run measured the pool of {missing_eval}: their generation columns are empty"
            )
    if sources.real:
        report.fingerprints["real shards"] = sources.real
    if len(units) and "skin_tone_agreement_above_ceiling" in units:
        above = sorted(
            {
                f"{r.variant} repeat {r.repeat}"
                for r in units.itertuples()
                if getattr(r, "skin_tone_agreement_above_ceiling", 0) == 1
            }
        )
        if above:
            report.notes.append(
                f"skin-tone agreement above its held-out real ceiling in {above}: a pool narrower "
                "in tone than real data scores so; read the W1 ratio, not the agreement"
            )
