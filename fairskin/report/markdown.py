"""The report as markdown: Table 1 with its marks, the paired differences, the primary verdicts, Table 2,
and ``report.md`` around them (how to read it, what it does not claim, provenance, figures)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fairskin.metrics.endpoints import CLASSIFIER_COLUMNS, GENERATION_COLUMNS, LABELS
from fairskin.report.differences import marks
from fairskin.report.result import Report
from fairskin.report.runs import baseline_row
from fairskin.report.tables import table2_columns


def _fmt(value: float, low: float | None = None, high: float | None = None, mark: str = "") -> str:
    if value is None or not np.isfinite(value):
        return "—"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    if low is not None and high is not None and np.isfinite([low, high]).all():
        text += f" [{low:.3f}, {high:.3f}]" if abs(value) < 100 else f" [{low:.1f}, {high:.1f}]"
    return f"{text} {mark}".strip()


def table1_markdown(t1: pd.DataFrame, paired: pd.DataFrame, baseline: str) -> str:
    """Table 1 as markdown: one row per (variant, mode) with R x S, every cell its mean and interval, ``▲`` /
    ``▼`` where a primary verdict against ``baseline`` says better / worse, DP with its oracle floor."""
    if not len(t1):
        return "_missing: no trial runs found for this study_\n"
    mark = marks(t1, paired)
    columns = [c for c, _, _ in GENERATION_COLUMNS + CLASSIFIER_COLUMNS]
    head = ["variant", "mode", "R x S"] + [LABELS[c] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in t1.iterrows():
        name = f"{r['variant']} (baseline)" if r["variant"] == baseline else r["variant"]
        cells = [name, r["mode"], f"{r['R']} x {r['S']}"]
        for c in columns:
            text = _fmt(r[c], r[f"{c}_low"], r[f"{c}_high"], mark.get((r["variant"], r["mode"], c), ""))
            if c == "dp":
                text += f" ({_fmt(r['dp_oracle_floor'])})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_markdown(paired: pd.DataFrame, baseline: str, repeats: int, level: float) -> str:
    """The paired differences against ``baseline`` as markdown; the p-value columns only with ``repeats`` >= 3."""
    if not len(paired):
        return f"_no paired differences: the baseline `{baseline}` has no rows, or it is the only variant_\n"
    show_p = repeats >= 3
    head = ["block", "variant", "metric", "n", f"difference [{level:.0%} CI]"]
    head += ["p (t)", "p (Holm)", "p (sign-flip)", "verdict"] if show_p else ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, p in paired.iterrows():
        verdict = p.get("verdict", "exploratory")
        verdict = {"better": "better ▲ (primary)", "worse": "worse ▼ (primary)"}.get(
            verdict, verdict if verdict == "exploratory" else f"{verdict} (primary)"
        )
        cells = [
            p["block"],
            p["variant"],
            LABELS.get(p["metric"], p["metric"]),
            str(int(p["n"])),
            _fmt(p["mean_diff"], p["low"], p["high"]),
        ]
        if show_p:
            cells += [_p(p["p_t"]), _p(p["p_holm"]), _p(p["p_perm"])]
        cells.append(verdict)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdicts_markdown(verdicts: pd.DataFrame, baseline: str, level: float) -> str:
    """The primary verdicts as a table: one row per (variant, endpoint), with the MDE it could detect."""
    if not len(verdicts):
        return f"\n_no verdicts: the baseline `{baseline}` has no rows, or it is the only variant_\n"
    head = [
        "variant",
        "endpoint",
        "n",
        f"difference [{level:.0%} CI]",
        "p (Holm)",
        "TOST p (Holm)",
        "verdict",
        "MDE (80 % power)",
        "MDE at sd's 80 % upper bound",
        "R for MDE <= margin",
    ]
    lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in verdicts.itertuples():
        reach = "—" if pd.isna(r.repeats_for_margin) else str(int(r.repeats_for_margin))
        verdict = r.verdict + (f" ({r.reason})" if r.reason else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    r.variant,
                    LABELS.get(r.endpoint, r.endpoint),
                    str(int(r.n)),
                    _fmt(r.mean_diff, r.low, r.high),
                    _p(r.p_holm),
                    _p(r.p_tost_holm),
                    verdict,
                    _fmt(r.mde),
                    _fmt(r.mde_sd_upper80),
                    reach,
                ]
            )
            + " |"
        )
    return "\n".join(lines) + (
        "\n\nMDE: the smallest true difference the family's paired t-test (two-sided, "
        "alpha / m, n = R) detects with 80 % power at the measured sd of the differences; "
        "R for MDE <= margin: the repeats that would make the margin detectable.\n"
    )


def _p(value: float) -> str:
    return "—" if not np.isfinite(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def frame_markdown(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """A per-variant table (Table 2) as markdown: variant, R, and each of ``columns`` with its interval."""
    if not len(frame):
        return "_missing: no evaluate runs found for this study's pools_\n"
    head = ["variant", "R", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in frame.iterrows():
        cells = [r["variant"], str(r["R"])] + [_fmt(r[c], r[f"{c}_low"], r[f"{c}_high"]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(
    report: Report,
    study: str | None,
    pipeline_run: str,
    ref: pd.Series | None,
    groups: Sequence[str],
    baseline: str,
    level: float,
    studies: dict[str, list[str]],
) -> str:
    """``report.md``: how to read it, the primary verdicts, Table 1, the paired differences, Table 2, what it
    does not claim, its provenance (fingerprints, the side ``studies`` by space, notes) and its figures."""
    t1 = report.table1
    repeats = int(t1["R"].min()) if len(t1) else 0
    lines = [
        *_introduction(study, pipeline_run, repeats, baseline, level, report.declaration.alpha),
        *_verdict_section(report, ref, groups, baseline, level),
        *_table_sections(report, groups, baseline, repeats, level),
        *_claims_section(),
        *_provenance_section(report, studies),
        *_figure_section(report),
    ]
    return "\n".join(lines)


def _introduction(
    study: str | None, pipeline_run: str, repeats: int, baseline: str, level: float, alpha: float
) -> list[str]:
    lines = [
        "# FairSkin ablation report",
        "",
        f"Study: `{study or 'none found'}`"
        + (f", made by pipeline run `{pipeline_run}`" if pipeline_run else "")
        + ". Rebuilt from MLflow runs joined by their provenance tags (pool, real-shard and stage fingerprints).",
        "",
    ]
    if repeats == 1:
        lines += [
            "**1 repeat: no interval.** Each variant has one fine-tune and one pool (R = 1), so nothing below "
            "measures generator variance and no difference between variants is claimed. Set "
            "`diffusion.repeat_seeds` to R >= 3 seeds (the `paper` preset has 3) for intervals and tests.",
            "",
        ]
    elif repeats == 2:
        lines += [
            "**R = 2: intervals only.** With two generator repeats the paired differences show their "
            "intervals but no p-value; no difference is called significant.",
            "",
        ]
    lines += [
        f"How to read it: each cell is the mean over R generator repeats (the S classifier seeds of a repeat "
        f"averaged first), with its {level:.0%} t-interval over the R repeat values. `▲` / `▼` mark a "
        f"declared primary endpoint whose verdict against `{baseline}` is better / worse (Holm over the "
        f"variant's primary endpoints, family-wise alpha {alpha}); every other cell is exploratory and "
        "never marked. DP is not ranked (a constant classifier has DP = 0); its oracle floor, what a perfect "
        "classifier scores, is in brackets.",
        "",
    ]
    return lines


def _verdict_section(
    report: Report, ref: pd.Series | None, groups: Sequence[str], baseline: str, level: float
) -> list[str]:
    lines = [
        "## Primary endpoints and verdicts",
        "",
        "Declared in the configuration before any data (`report.primary`, `report.margins`, `report.resolutions`):",
        "",
        report.declaration.markdown(),
        verdicts_markdown(report.verdicts, baseline, level),
    ]
    if ref is not None:
        base = baseline_row(ref, groups)
        lines += [
            f"Baseline (real data only, reference classifier, one seed): accuracy {_fmt(base['accuracy'])}, "
            f"DP {_fmt(base['dp'])}, ESSP (FairSeg) {_fmt(base['essp_fairseg'])}.",
            "",
        ]
    return lines


def _table_sections(report: Report, groups: Sequence[str], baseline: str, repeats: int, level: float) -> list[str]:
    return [
        "## Table 1: variants x downstream modes (test split)",
        "",
        table1_markdown(report.table1, report.paired, baseline),
        "FID / KID / IS are computed in the feature space named by the evaluate runs "
        "(`fairskin.feature_extractor` tag); FID variance is the sample variance (ddof=1). Disease fidelity: "
        "the judge's accuracy on generated images / on held-out real images; "
        f"{report.judge or 'judge not recorded'}. KID floor: held-out real vs the real reference at the same N "
        "(what a perfect generator scores); floor-corrected FID variance subtracts each subclass's FID floor.",
        "",
        f"## Paired differences: `delta_vs_{baseline}`",
        "",
        f"Within-repeat differences (variant - {baseline}), paired by generator repeat; classifier metrics "
        "within each downstream mode, generation metrics once per variant. Exploratory: an interval, with "
        "the unadjusted paired t p and the sign-flip p (R >= 6) for orientation, never a verdict; only the "
        "primary endpoints above carry one (their rows say so). A difference with no spread above the "
        "metric's resolution has no p (a tie, not a precise effect).",
        "",
        paired_markdown(report.paired, baseline, repeats, level),
        "## Table 2: FID per group",
        "",
        "Columns named by a group: the mean of the group's subclass FIDs weighted by their real counts; "
        "`pooled`: the group's (or every) generated image pooled over diseases, the pool subsampled (seeded) to "
        "the real disease (subclass) mix, against all the group's (every) real image. Feature space and judge "
        f"as in Table 1 ({report.judge or 'judge not recorded'}).",
        "",
        frame_markdown(report.table2, [c for c in table2_columns(groups) if c in report.table2]),
    ]


def _claims_section() -> list[str]:
    return [
        "## What this report does not claim",
        "",
        "- It compares the variants as run: one base model, these seeds, this data. Generator variance is "
        "measured only over the R repeats listed; R = 1 measures none.",
        "- Test figures never steered a search; studies chose on validation figures only.",
        "- No absence of an effect: where a primary endpoint is `inconclusive`, the experiment could only have "
        "detected the MDE shown beside it (80 % power); `equivalent` means inside the declared margin by "
        "TOST, nothing stronger. Exploratory differences decide nothing.",
        "",
    ]


def _provenance_section(report: Report, studies: dict[str, list[str]]) -> list[str]:
    lines = ["## Provenance", ""]
    lines += [f"- {name}: `{fp}`" for name, fp in report.fingerprints.items()] or ["- no fingerprints found"]
    for space, names in studies.items():
        lines.append(f"- `{space}` studies on these pools: {', '.join(f'`{n}`' for n in names) or 'none'}")
    lines += [f"- note: {n}" for n in report.notes]
    return lines


def _figure_section(report: Report) -> list[str]:
    lines = ["", "## Figures", ""]
    for name, path in report.figures.items():
        lines += [f"### {name}", "", f"![{name}]({path.name})", ""]
    for name, reason in report.missing.items():
        lines += [f"### {name}", "", f"_missing: {reason}_", ""]
    return lines
