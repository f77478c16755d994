"""Every variant against the baseline, paired by generator repeat: the exploratory paired differences,
the verdicts on the declared primary endpoints (one Holm family per compared variant), the cells they
mark in Table 1, and the variance components of each primary difference."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fairskin.metrics.endpoints import CLASSIFIER_COLUMNS, CLASSIFIER_KEYS, GENERATION_COLUMNS, Declaration
from fairskin.metrics.endpoints import DIRECTIONS as DIRECTIONS_OF
from fairskin.metrics.paired import paired_table
from fairskin.metrics.verdicts import VERDICT_COLUMNS, family_verdicts

GENERATION_BLOCK = "generation"


def paired_differences(
    units: pd.DataFrame,
    baseline: str,
    level: float = 0.95,
    declaration: Declaration | None = None,
    verdicts: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every variant against ``baseline``, paired by repeat: classifier metrics within each mode
    (block = the mode), generation metrics once per variant (block ``generation``).

    Columns: ``block``, those of :func:`fairskin.metrics.paired.paired_table`, ``primary`` and
    ``verdict``. These are exploratory differences: only the declared primary endpoints (in the
    declaration's mode for classifier endpoints) carry a Holm-adjusted p (``p_holm``, from
    :func:`primary_verdicts`: one family per variant over its primary endpoints), and only their
    ``better`` / ``worse`` verdicts set ``significant`` and ``better`` (+1 / -1). Every other row has
    ``p_holm`` NaN, ``significant`` False, ``better`` 0 and ``verdict`` "exploratory". Empty when
    the baseline has no rows. ``verdicts``: :func:`primary_verdicts` of the same units when the caller
    has them already (computed here otherwise).
    """
    declaration = declaration or Declaration()
    if not len(units) or baseline not in set(units["variant"]):
        return pd.DataFrame()
    blocks = []
    classifier = [(c, d) for c, _, d in CLASSIFIER_COLUMNS if c in units and units[c].notna().any()]
    for mode, part in units.groupby("mode", sort=True):
        if baseline in set(part["variant"]) and part["variant"].nunique() > 1 and classifier:
            table = paired_table(
                part[["variant", "repeat", *[c for c, _ in classifier]]],
                baseline,
                [c for c, _ in classifier],
                dict(classifier),
                level=level,
                resolution={c: declaration.resolution(c) for c, _ in classifier},
            )
            blocks.append(table.assign(block=mode))
    generation = [(c, d) for c, _, d in GENERATION_COLUMNS if c in units and units[c].notna().any()]
    if generation:
        per_generator = units.drop_duplicates(["variant", "repeat"])[["variant", "repeat", *[c for c, _ in generation]]]
        if per_generator["variant"].nunique() > 1:
            table = paired_table(
                per_generator,
                baseline,
                [c for c, _ in generation],
                dict(generation),
                level=level,
                resolution={c: declaration.resolution(c) for c, _ in generation},
            )
            blocks.append(table.assign(block=GENERATION_BLOCK))
    if not blocks:
        return pd.DataFrame()
    out = pd.concat(blocks, ignore_index=True)
    out["family"] = out["variant"]
    own_block = np.where(out["metric"].isin(CLASSIFIER_KEYS), declaration.mode, GENERATION_BLOCK)
    out["primary"] = out["metric"].isin(declaration.primary) & (out["block"] == own_block)
    if verdicts is None:
        verdicts = primary_verdicts(units, baseline, declaration, level)
    lookup = {(r.variant, r.endpoint): r for r in verdicts.itertuples()} if len(verdicts) else {}
    found = [lookup.get((v, m)) if p else None for v, m, p in zip(out["variant"], out["metric"], out["primary"])]
    out["p_holm"] = [r.p_holm if r is not None else np.nan for r in found]
    out["verdict"] = [r.verdict if r is not None else "exploratory" for r in found]
    out["significant"] = out["verdict"].isin(["better", "worse"])
    out["better"] = np.select([out["verdict"] == "better", out["verdict"] == "worse"], [1, -1], 0).astype(int)
    return out[["block", *[c for c in out.columns if c != "block"]]]


def primary_values(units: pd.DataFrame, variant: str, endpoint: str, mode: str) -> pd.Series:
    """repeat -> the value of ``endpoint`` for ``variant``: classifier endpoints from downstream
    ``mode`` (averaged over the repeat's seeds already), generation endpoints once per generator."""
    part = units[units["variant"] == variant]
    if endpoint in CLASSIFIER_KEYS and "mode" in part:
        part = part[part["mode"] == mode]
    if endpoint not in part or not len(part):
        return pd.Series(dtype=float)
    values = pd.to_numeric(part[endpoint], errors="coerce")
    return values.groupby(part["repeat"]).first().dropna()


def primary_verdicts(units: pd.DataFrame, baseline: str, declaration: Declaration, level: float = 0.95) -> pd.DataFrame:
    """The verdict of every declared primary endpoint of every variant against ``baseline``.

    One family per compared variant (controls included, each its own family): its primary
    endpoints, paired by repeat (:func:`fairskin.metrics.verdicts.family_verdicts`: better / worse
    by Holm-adjusted paired t, else equivalent by Holm-adjusted TOST within the declared margin,
    else inconclusive, with the minimum detectable effect; untestable without spread). An endpoint
    this run did not measure (e.g. classifier endpoints without a tune stage) is ``untestable``
    with that reason and does not count in the family's m. Columns: ``variant`` then
    ``VERDICT_COLUMNS``; empty when the baseline has no rows.
    """
    if not len(units) or baseline not in set(units["variant"]):
        return pd.DataFrame(columns=["variant", *VERDICT_COLUMNS])
    frames = []
    for variant in [v for v in dict.fromkeys(units["variant"]) if v != baseline]:
        differences, unmeasured = {}, []
        for endpoint in declaration.primary:
            treated = primary_values(units, variant, endpoint, declaration.mode)
            base = primary_values(units, baseline, endpoint, declaration.mode)
            keys = sorted(set(treated.index) & set(base.index))
            if not keys:
                unmeasured.append(endpoint)
            differences[endpoint] = (treated.loc[keys] - base.loc[keys]).to_numpy(float)
        frame = family_verdicts(
            differences,
            {e: DIRECTIONS_OF[e] for e in declaration.primary},
            declaration.margins,
            {e: declaration.resolution(e) for e in declaration.primary},
            alpha=declaration.alpha,
            power=declaration.power,
            level=level,
        )
        frame.loc[frame["endpoint"].isin(unmeasured), "reason"] = "not measured by this run"
        frames.append(frame.assign(variant=variant))
    if not frames:  # the baseline is the only variant
        return pd.DataFrame(columns=["variant", *VERDICT_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    return out[["variant", *VERDICT_COLUMNS]]


def marks(t1: pd.DataFrame, paired: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """(variant, mode, column) -> ``▲`` / ``▼`` where the Holm-adjusted paired difference against
    the baseline is significant and better / worse; nothing else is marked."""
    out: dict[tuple[str, str, str], str] = {}
    if not len(paired):
        return out
    for _, p in paired[paired["better"] != 0].iterrows():
        symbol = "▲" if p["better"] > 0 else "▼"
        modes = t1.loc[t1["variant"] == p["variant"], "mode"] if p["block"] == GENERATION_BLOCK else [p["block"]]
        for mode in modes:
            out[(p["variant"], mode, p["metric"])] = symbol
    return out


def difference_components(
    trials: pd.DataFrame,
    units: pd.DataFrame,
    baseline: str,
    declaration: Declaration,
    level: float = 0.95,
    evaluated: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Variance components of each variant's paired difference on each primary endpoint
    (:func:`fairskin.metrics.components.variance_components`, moments and MLS intervals).

    Classifier endpoints: one difference per (repeat, pool, classifier seed), the trials of the
    declared mode paired with the baseline's of the same repeat, pool seed and classifier seed; generation
    endpoints: one per (repeat, pool), from the evaluate runs of each pool (``evaluated``: indexed by pool
    fingerprint, with ``variant``, ``repeat``, ``pool_seed`` columns; without it, the repeats' values, K = 1).
    With one pool per generator (``generation.pool_seeds`` of length 1) the fine-tune component holds the
    pool's too, and with S = 1 the classifier's is merged likewise (the ``notes`` say so).
    Columns: ``variant``, ``endpoint`` and those of ``Components.as_row()``; a family the data
    cannot estimate (fewer than 2 paired repeats, or unbalanced cells) is left out.
    """
    from fairskin.metrics.components import variance_components

    metric_of = {c: m for c, m, _ in CLASSIFIER_COLUMNS}
    generation_metric = {c: m for c, m, _ in GENERATION_COLUMNS}
    if len(trials) and "pool_seed" not in trials:
        trials = trials.assign(pool_seed=0)
    rows = []
    for variant in [v for v in dict.fromkeys(units["variant"]) if v != baseline] if len(units) else []:
        for endpoint in declaration.primary:
            if endpoint in CLASSIFIER_KEYS:
                column = f"metrics.{metric_of[endpoint]}"
                if not len(trials) or column not in trials:
                    continue
                part = trials[trials["mode"] == declaration.mode]
                frame = {
                    v: part[part["variant"] == v].groupby(["repeat", "pool_seed", "seed"])[column].mean()
                    for v in (variant, baseline)
                }
                d = (frame[variant] - frame[baseline]).dropna().rename("d").reset_index()
                seed = "seed"
            elif evaluated is not None and len(evaluated) and f"metrics.{generation_metric[endpoint]}" in evaluated:
                column = f"metrics.{generation_metric[endpoint]}"
                frame = {
                    v: pd.to_numeric(evaluated[evaluated["variant"] == v][column], errors="coerce")
                    .groupby([evaluated["repeat"], evaluated["pool_seed"]])
                    .mean()
                    for v in (variant, baseline)
                }
                d = (frame[variant] - frame[baseline]).dropna().rename("d").reset_index()
                seed = None
            else:
                a, b = primary_values(units, variant, endpoint, ""), primary_values(units, baseline, endpoint, "")
                d = (a - b).dropna().rename("d").rename_axis("repeat").reset_index().assign(pool_seed=0)
                seed = None
            if d["repeat"].nunique() < 2:
                continue
            try:
                comp = variance_components(d, "d", "repeat", "pool_seed", seed, method="moments", level=level)
            except ValueError:  # unbalanced cells (a failed trial): no moments, and the planner needs balance
                continue
            rows.append({"variant": variant, "endpoint": endpoint, **comp.as_row()})
    return pd.DataFrame(rows)
