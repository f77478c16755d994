"""The evaluate stage's ``generation_table.md``: the per-generator table, Table 2's pooled FIDs and the
per-subclass table (FID / KID with their floors, disease fidelity), each naming the feature space and judge."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

# Columns of the per-generator table and of the per-subclass table.
VARIANT_COLUMNS = [
    "variant",
    "fid_mean",
    "fid_floor_mean",
    "fid_var_subclass",
    "fid_var_subclass_floor_corrected",
    "fid_var_group",
    "kid_mean",
    "kid_floor_mean",
    "is_mean",
    "memorised_fraction",
    "disease_fidelity",
    "disease_fidelity_worst_group",
    "judge_accuracy_generated",
    "judge_accuracy_real",
]
SUBCLASS_COLUMNS = [
    "variant",
    "group",
    "disease",
    "fid",
    "fid_floor",
    "kid_mean",
    "kid_floor",
    "floor_method",
    "disease_fidelity",
    "judge_accuracy_generated",
    "judge_accuracy_real",
    "n_generated",
    "n_real",
    "n_judge_real",
]
_TEXT_COLUMNS = ("variant", "group", "disease", "floor_method")


def _number(value, spec: str = ".4g") -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def _grid(cols: list[str], frame, head: list[str] | None = None, spec: str = ".4g") -> list[str]:
    """A markdown table of ``frame``'s ``cols`` (text columns as they are, numbers to ``spec``), as lines."""
    out = ["| " + " | ".join(head or cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        out.append(
            "| "
            + " | ".join(
                str(r.get(c, "")) if c in _TEXT_COLUMNS else _number(r.get(c, float("nan")), spec) for c in cols
            )
            + " |"
        )
    return out


def generation_markdown(table: pd.DataFrame, per_subclass: pd.DataFrame, groups: Sequence[str]) -> str:
    """Variant table, Table 2's pooled FIDs, and a per-subclass table (FID / KID with floors,
    disease fidelity), as markdown; every table names the feature space and the judge.

    ``table``: one row per generator (the evaluate stage's ``generation_table.csv``); ``per_subclass``: its
    per-subclass rows with a ``variant`` column; ``groups``: the group names, for the per-group columns.
    """
    first = table.iloc[0]
    judge = f"Judge (disease fidelity): {first.get('judge', 'n/a')}."
    space = f"Feature space: {first['feature_extractor']}."
    lines = [
        "# Generation metrics",
        "",
        f"{space} {judge} FID variance is the sample variance (ddof=1) over the "
        "subclasses and over the groups; `_floor` figures are the real-vs-real floor (held-out real images "
        "against the same reference at the same N: what a perfect generator would score; FID is biased upwards "
        "at small N, KID is not); `floor_corrected` subtracts each subclass's floor first. Disease fidelity = "
        "the judge's accuracy on generated images / on held-out real images (mean over subclasses).",
        "",
    ]
    lines += _grid(VARIANT_COLUMNS, table)
    pooled = ["variant", *[f"fid_pooled_{g}" for g in groups], "fid_pooled_overall", *[f"fid_{g}" for g in groups]]
    lines += [
        "",
        "## Table 2: FID per group",
        "",
        f"{space} {judge} `fid_pooled_<group>`: the group's generated images pooled over diseases (subsampled, "
        "seeded, to the real disease mix of the group) against all its real images; `fid_pooled_overall`: every "
        "image, no subcategory distinction, (group, disease) mix matched; `fid_<group>`: the count-weighted "
        "mean of the group's subclass FIDs.",
        "",
    ]
    lines += _grid(pooled, table)
    lines += ["", "## Per subclass", "", f"{space} {judge}", ""]
    lines += _grid(SUBCLASS_COLUMNS, per_subclass, spec=".4g")
    return "\n".join(lines) + "\n"
