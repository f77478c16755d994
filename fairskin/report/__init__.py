"""The ablation report: the paper's tables and figures rebuilt from MLflow, with repeats and paired differences.

**Which runs.** Runs are joined by their provenance tags (:mod:`fairskin.provenance`), never
by "latest": the study's trial runs name the pool each drew from (``fairskin.pool_fingerprint``);
an ``evaluate`` run enters a row only when it measured that same pool; the reference run
is the one of the study's own pipeline (its ``reference`` stage key) on the same real shards.
Separately run studies (``aug_count`` for Figure 3b, ``ethnic_ratio`` for Figure 5) belong
to the report when every pool they drew from is one of the report's pools. The fingerprints
are listed under the tables.

**Repeats.** A variant's figures come from R generator repeats (a fine-tune and its pool,
seeded by ``diffusion.repeat_seeds[r]``) x S classifier seeds. The unit is the generator
repeat: the S seeds of a repeat are averaged into one value, and intervals are Student-t
intervals over the R repeat values (FID, KID, IS have one value per repeat). Every row says
R and S. With R = 1 there is no interval.

**Paired differences.** Repeat r of every variant shares repeat r's seed (and its pool noise),
so variants are compared *paired by repeat* against a baseline variant (default ``vanilla``):
the R within-repeat differences, their t-interval, the paired t-test p-value (R >= 3) and an
exact sign-flip permutation p-value (R >= 6) (:mod:`fairskin.metrics.paired`). These are
exploratory. **Verdicts** are given on the primary endpoints declared in the configuration
(``report.primary``, :mod:`fairskin.metrics.endpoints`) only: one Holm family per compared
variant over them (controls included, each its own family), better / worse / equivalent (TOST
within the declared margin) / inconclusive (with the minimum detectable effect) / untestable
(:mod:`fairskin.metrics.verdicts`). A Table 1 cell is marked ``▲`` (better) or ``▼`` (worse) only
where a primary verdict says so; no other "best" is claimed.
Demographic parity is not ranked: a classifier that always answers one disease has DP = 0,
and a perfect one has DP = its oracle floor, which is shown beside it.

**Where it lives.** :mod:`~fairskin.report.runs` finds the runs, :mod:`~fairskin.report.tables` builds the
per-repeat units and Tables 1 and 2, :mod:`~fairskin.report.differences` the paired differences, verdicts and
variance components, :mod:`~fairskin.report.figures` the figures, :mod:`~fairskin.report.markdown` the
markdown, :mod:`~fairskin.report.build` puts them together (:func:`build_report`);
:mod:`~fairskin.report.generation` writes the evaluate stage's ``generation_table.md``.
"""

from __future__ import annotations

from fairskin.io import atomic_write_text

# (column, MLflow metric, direction) of every report metric: +1 higher is better, -1 lower, 0 not ranked.
from fairskin.metrics.endpoints import (
    CLASSIFIER_COLUMNS,
    CLASSIFIER_KEYS,
    GENERATION_COLUMNS,
    LABELS,
    MODES,
    Declaration,
)
from fairskin.metrics.endpoints import DIRECTIONS as DIRECTIONS_OF
from fairskin.metrics.paired import paired_table, repeat_values, t_interval
from fairskin.metrics.verdicts import VERDICT_COLUMNS, family_verdicts
from fairskin.provenance import TAG_POOL, TAG_REAL, TAG_REPEAT, TAG_STAGE_KEY, TAG_VARIANT
from fairskin.report.build import build_report
from fairskin.report.differences import (
    GENERATION_BLOCK,
    difference_components,
    marks,
    paired_differences,
    primary_values,
    primary_verdicts,
)
from fairskin.report.figures import figure_3a, figure_3b, figure_4, figure_5, figure_6
from fairskin.report.markdown import frame_markdown, paired_markdown, table1_markdown, verdicts_markdown
from fairskin.report.result import Report, ReportError
from fairskin.report.runs import (
    evaluate_runs,
    find_runs,
    latest_study,
    pipeline_stage_keys,
    reference_run,
    scoped_studies,
    study_parent,
    trial_runs,
)
from fairskin.report.tables import PER_GROUP_PREFIXES, table1, table2, table2_columns, unit_frame

__all__ = [
    "CLASSIFIER_COLUMNS",
    "CLASSIFIER_KEYS",
    "DIRECTIONS_OF",
    "GENERATION_BLOCK",
    "GENERATION_COLUMNS",
    "LABELS",
    "MODES",
    "PER_GROUP_PREFIXES",
    "Declaration",
    "Report",
    "ReportError",
    "build_report",
    "difference_components",
    "evaluate_runs",
    "figure_3a",
    "figure_3b",
    "figure_4",
    "figure_5",
    "figure_6",
    "find_runs",
    "frame_markdown",
    "latest_study",
    "marks",
    "paired_differences",
    "paired_markdown",
    "pipeline_stage_keys",
    "primary_values",
    "primary_verdicts",
    "reference_run",
    "scoped_studies",
    "study_parent",
    "table1",
    "table1_markdown",
    "table2",
    "table2_columns",
    "trial_runs",
    "unit_frame",
    "verdicts_markdown",
    # imported here before the split, importable from here still
    "TAG_POOL",
    "TAG_REAL",
    "TAG_REPEAT",
    "TAG_STAGE_KEY",
    "TAG_VARIANT",
    "VERDICT_COLUMNS",
    "atomic_write_text",
    "family_verdicts",
    "paired_table",
    "repeat_values",
    "t_interval",
]
