"""Skin-tone fidelity of generated images: the individual typology angle (ITA) of healthy skin.

Does an image prompted for a group (e.g. "African", Fitzpatrick V-VI) show that group's skin
tone? Each image gets one ITA, measured on its healthy skin (the lesion left out), and the
generated ITAs of a group are compared with the ITAs of the group's real images.

The pieces, whose public names all stay importable from here:

- :mod:`fairskin.metrics.ita`: units and shapes (ITA in degrees from CIELAB), the healthy-skin
  rule and its measured tolerance, :func:`image_ita` (uint8 ``(N, H, W, 3)`` -> degrees ``(N,)``);
- :mod:`fairskin.metrics.ita_bands`: :class:`ReferenceBands`, each group's real ITAs, median and
  central 90 % band, and the nearest-median assignment;
- :mod:`fairskin.metrics.ita_distance`: :func:`ita_distance_ratios`, the W1 distance of a pool's
  ITAs to the real ones in units of the real-vs-real floor (the primary skin-tone endpoint, 1 = as
  close as held-out real images), and the spread ratio;
- here, :func:`skin_tone_report`: all of it per subclass, per group and as flat summary keys.

Reference bands and agreement
    ``ReferenceBands.from_real`` keeps each group's real ITAs, their median and central 90 %
    band (5th..95th percentile). An image is assigned to the group whose real median ITA is
    nearest (thresholds at the midpoints between sorted medians); *agreement* is the share of
    images assigned to the group they were prompted for, *in band* the share inside their own
    group's band. The same assignment applied to held-out real images gives the ceiling of
    agreement (groups overlap in skin tone: FST bins are not ITA bins).

    Agreement and in-band share saturate: with the procedural set's medians (-55.8, 17.9, 62.1
    degrees) an image must be 22-37 degrees off to count as wrong, so a pool of flat patches,
    one colour per group at its median, scores 1.000 on both, above the held-out real ceiling
    (~0.96). Agreement above its ceiling points to a tone range narrower than real, not to
    better than real fidelity; the report flags it (``above_ceiling``: more than one standard
    error of the difference above, so a real sample trips it by chance in ~1 group in 6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from fairskin.metrics.ita import (
    BANDWIDTH,
    CHANNEL_WEIGHTS,
    CHUNK,
    MASK_RADIUS,
    MAX_PIXELS,
    MAX_STEPS,
    RULES,
    START_RADIUS,
    STEP_TOL,
    TOLERANCE_DEG,
    TOLERANCE_SHARE,
    check_labelled,
    healthy_skin_mask,
    image_ita,
    ita_degrees,
    srgb_to_lab,
)
from fairskin.metrics.ita_bands import ReferenceBands
from fairskin.metrics.ita_distance import SUBSAMPLES, heldout_mix_subsample, ita_distance_ratios, wasserstein_1d

__all__ = [  # this module's names and those of the pieces, importable from here as before the split
    "BANDWIDTH",
    "CHANNEL_WEIGHTS",
    "CHUNK",
    "MASK_RADIUS",
    "MAX_PIXELS",
    "MAX_STEPS",
    "RULES",
    "START_RADIUS",
    "STEP_TOL",
    "SUBSAMPLES",
    "TOLERANCE_DEG",
    "TOLERANCE_SHARE",
    "ReferenceBands",
    "healthy_skin_mask",
    "heldout_mix_subsample",
    "image_ita",
    "ita_degrees",
    "ita_distance_ratios",
    "skin_tone_report",
    "srgb_to_lab",
    "wasserstein_1d",
]


def _stats(ita: np.ndarray, groups: np.ndarray, ref: ReferenceBands, group: str) -> dict:
    return {
        "n": int(len(ita)),
        "in_band": float(ref.in_band(ita, groups).mean()),
        "wasserstein": float(wasserstein_distance(ita, ref.samples[group])),
        "agreement": float((ref.assign(ita) == groups).mean()),
        "ita_median": float(np.median(ita)),
    }


def _above_ceiling(agreement: float, n: int, ceiling: float, n_heldout: int) -> float:
    """1.0 when ``agreement`` (n images) exceeds ``ceiling`` (n_heldout images) by more than the
    binomial standard error of their difference, ``sqrt(p (1 - p) / n + c (1 - c) / n_heldout)``."""
    se = math.sqrt(agreement * (1 - agreement) / n + ceiling * (1 - ceiling) / n_heldout)
    return float(agreement - ceiling > se)


def _check_report_inputs(gen_ita, gen_group, gen_disease, ref, heldout_ita, heldout_group, heldout_disease):
    """The generated ITAs ``(N,)``, groups and diseases as arrays; ``ValueError`` on inconsistent inputs."""
    ita, groups = check_labelled(gen_ita, gen_group, "gen_ita", "gen_group")
    diseases = np.asarray(gen_disease, dtype=object).reshape(-1)
    if len(diseases) != len(ita):
        raise ValueError(f"gen_ita and gen_disease differ in length: {len(ita)} and {len(diseases)}")
    if len(ita) == 0:
        raise ValueError("no generated ITA values")
    ref._check_known(groups)
    if (heldout_ita is None) != (heldout_group is None):
        raise ValueError("give both heldout_ita and heldout_group, or neither")
    if heldout_disease is not None and heldout_ita is None:
        raise ValueError("heldout_disease needs heldout_ita and heldout_group")
    return ita, groups, diseases


def _per_subclass_table(ita: np.ndarray, groups: np.ndarray, diseases: np.ndarray, ref: ReferenceBands) -> pd.DataFrame:
    """One row per (group, disease) present, sorted (see :func:`skin_tone_report`)."""
    rows = []
    for g, d in sorted(set(zip(groups.tolist(), diseases.tolist()))):
        m = (groups == g) & (diseases == d)
        rows.append({"group": g, "disease": d, **_stats(ita[m], groups[m], ref, g)})
    return pd.DataFrame(rows, columns=["group", "disease", "n", "in_band", "wasserstein", "agreement", "ita_median"])


def _agreement_ceiling(ref: ReferenceBands, heldout_ita, heldout_group) -> tuple[dict, dict, np.ndarray]:
    """Held-out real images' agreement per group (the ceiling), their count per group, and each one's hit ``(M,)``."""
    h_ita, h_groups = check_labelled(heldout_ita, heldout_group, "heldout_ita", "heldout_group")
    if len(h_ita) == 0:
        raise ValueError("no held-out ITA values")
    ref._check_known(h_groups)
    h_hit = ref.assign(h_ita) == h_groups
    ceiling = {g: float(h_hit[h_groups == g].mean()) for g in ref.groups if (h_groups == g).any()}
    n_ceiling = {g: int((h_groups == g).sum()) for g in ceiling}
    return ceiling, n_ceiling, h_hit


def _per_group_rows(ita, groups, ref: ReferenceBands, ceiling, n_ceiling, distance) -> list[dict]:
    """One row per group present, in ``ref.groups`` order; ceiling columns unless ``ceiling`` is None,
    distance columns unless ``distance`` (:func:`ita_distance_ratios` indexed by group) is None."""
    rows = []
    for g in ref.groups:
        m = groups == g
        if not m.any():
            continue
        row = {
            "group": g,
            **_stats(ita[m], groups[m], ref, g),
            "real_median": ref.median[g],
            "real_p05": ref.p05[g],
            "real_p95": ref.p95[g],
        }
        if ceiling is not None:
            row["agreement_ceiling"] = ceiling.get(g, float("nan"))
            row["above_ceiling"] = (
                _above_ceiling(row["agreement"], row["n"], ceiling[g], n_ceiling[g]) if g in ceiling else float("nan")
            )
        if distance is not None:
            row.update({k: float(distance.loc[g, k]) for k in ("w1_ratio", "w1_floor", "spread_ratio")})
        rows.append(row)
    return rows


def _summary(ita, groups, ref: ReferenceBands, rows, assigned, ceiling, h_hit) -> dict[str, float]:
    """The agreement, in-band and Wasserstein summary keys, and the ceiling's unless ``ceiling`` is None."""
    summary: dict[str, float] = {}
    summary["skin_tone_agreement"] = float((assigned == groups).mean())
    for row in rows:
        summary[f"skin_tone_agreement_{row['group']}"] = row["agreement"]
    summary["skin_tone_agreement_worst_group"] = float(min(row["agreement"] for row in rows))
    summary["ita_in_band"] = float(ref.in_band(ita, groups).mean())
    for row in rows:
        summary[f"ita_in_band_{row['group']}"] = row["in_band"]
    for row in rows:
        summary[f"ita_wasserstein_{row['group']}"] = row["wasserstein"]
    if ceiling is not None:
        summary["skin_tone_agreement_ceiling"] = float(h_hit.mean())
        for g, v in ceiling.items():
            summary[f"skin_tone_agreement_ceiling_{g}"] = v
        flags = {row["group"]: row["above_ceiling"] for row in rows if row["group"] in ceiling}
        for g, v in flags.items():
            summary[f"skin_tone_agreement_above_ceiling_{g}"] = v
        summary["skin_tone_agreement_above_ceiling"] = float(any(v == 1.0 for v in flags.values()))
    return summary


def _distance_summary(distance: pd.DataFrame) -> dict[str, float]:
    """The W1 and spread-ratio summary keys of :func:`ita_distance_ratios` (indexed by group)."""
    summary: dict[str, float] = {}
    for g in distance.index:
        summary[f"skin_tone_w1_ratio_{g}"] = float(distance.loc[g, "w1_ratio"])
    summary["skin_tone_w1_ratio_worst_group"] = float(distance["w1_ratio"].max())
    for g in distance.index:
        summary[f"skin_tone_w1_floor_{g}"] = float(distance.loc[g, "w1_floor"])
    spread = distance["spread_ratio"]
    for g in distance.index:
        summary[f"skin_tone_spread_ratio_{g}"] = float(spread[g])
    # log|ratio|: halving and doubling the spread are equally far from 1; a flat pool (0) is furthest.
    with np.errstate(divide="ignore"):
        worst = int(np.argmax(np.abs(np.log(spread.to_numpy()))))
    summary["skin_tone_spread_ratio_worst_group"] = float(spread.iloc[worst])
    return summary


def _confusion(ref: ReferenceBands, groups: np.ndarray, assigned: np.ndarray) -> pd.DataFrame:
    """Counts (int) of prompted (rows) x assigned (columns) group, both all of ``ref.groups`` in order."""
    index = {g: i for i, g in enumerate(ref.groups)}
    counts = np.zeros((len(ref.groups), len(ref.groups)), dtype=np.int64)
    np.add.at(counts, ([index[g] for g in groups.tolist()], [index[g] for g in assigned.tolist()]), 1)
    return pd.DataFrame(
        counts, index=pd.Index(ref.groups, name="prompted"), columns=pd.Index(ref.groups, name="assigned")
    )


def skin_tone_report(
    gen_ita: np.ndarray,
    gen_group: Sequence,
    gen_disease: Sequence,
    ref: ReferenceBands,
    heldout_ita: np.ndarray | None = None,
    heldout_group: Sequence | None = None,
    *,
    heldout_disease: Sequence | None = None,
    seed: int = 0,
    subsamples: int = SUBSAMPLES,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], pd.DataFrame]:
    """Skin-tone fidelity of generated images against the real reference ``ref``.

    ``gen_ita`` ``(N,)`` degrees, ``gen_group`` ``(N,)`` the prompted group, ``gen_disease``
    ``(N,)``; optional held-out real images ``heldout_ita``, ``heldout_group`` ``(M,)`` give the
    ceiling of agreement; with their diseases ``heldout_disease`` ``(M,)`` as well, the distance
    ratios of ``ita_distance_ratios`` (reference: ``ref.samples``, the real training ITAs;
    ``seed`` and ``subsamples`` are passed on). Returns:

    - per subclass, one row per (group, disease) present, sorted: ``group, disease, n,
      in_band, wasserstein, agreement, ita_median``. ``in_band``: share of generated ITAs inside
      the group's real 5..95th percentile band; ``wasserstein``: 1-D Wasserstein distance
      (degrees) between generated ITAs and all the group's real ITAs; ``agreement``: share
      assigned (nearest real median) to the prompted group;
    - per group, one row per group present, in ``ref.groups`` order (darkest first): the same
      columns without ``disease``, plus ``real_median, real_p05, real_p95`` and, with held-out
      images, ``agreement_ceiling`` (NaN for a group without held-out images) and
      ``above_ceiling`` (1.0 when the group's agreement exceeds its ceiling by more than the
      binomial standard error of the difference, else 0.0; NaN without a ceiling), and with
      ``heldout_disease`` also ``w1_ratio, w1_floor, spread_ratio``;
    - summary, flat floats: ``skin_tone_agreement`` (all images), ``skin_tone_agreement_<group>``,
      ``skin_tone_agreement_worst_group`` (the lowest), ``ita_in_band``, ``ita_in_band_<group>``,
      ``ita_wasserstein_<group>``, and with held-out images ``skin_tone_agreement_ceiling``,
      ``skin_tone_agreement_ceiling_<group>``, ``skin_tone_agreement_above_ceiling_<group>``
      and ``skin_tone_agreement_above_ceiling`` (1.0 if any group is); with ``heldout_disease``
      also ``skin_tone_w1_ratio_<group>``, ``skin_tone_w1_ratio_worst_group`` (the largest:
      the primary skin-tone endpoint, lower is better, 1 = held-out real), ``skin_tone_w1_floor_<group>``
      (degrees), ``skin_tone_spread_ratio_<group>`` and ``skin_tone_spread_ratio_worst_group``
      (the ratio furthest from 1 in log terms);
    - confusion, counts (int): rows the prompted group (index name ``prompted``), columns the
      assigned group (``assigned``), both all of ``ref.groups`` in order.
    """
    ita, groups, diseases = _check_report_inputs(
        gen_ita, gen_group, gen_disease, ref, heldout_ita, heldout_group, heldout_disease
    )
    per_subclass = _per_subclass_table(ita, groups, diseases, ref)
    ceiling = n_ceiling = h_hit = None
    if heldout_ita is not None:
        ceiling, n_ceiling, h_hit = _agreement_ceiling(ref, heldout_ita, heldout_group)
    distance = None
    if heldout_disease is not None:
        distance = ita_distance_ratios(
            ita,
            groups,
            diseases,
            heldout_ita,
            heldout_group,
            heldout_disease,
            ref.samples,
            seed=seed,
            subsamples=subsamples,
        ).set_index("group")
    rows = _per_group_rows(ita, groups, ref, ceiling, n_ceiling, distance)
    assigned = ref.assign(ita)
    summary = _summary(ita, groups, ref, rows, assigned, ceiling, h_hit)
    if distance is not None:
        summary.update(_distance_summary(distance))
    return per_subclass, pd.DataFrame(rows), summary, _confusion(ref, groups, assigned)
