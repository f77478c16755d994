"""Generation metrics per subclass: FID, KID, IS and memorisation, through torch-fidelity.

A synthetic pool is judged subclass by subclass, (group, disease), against the real images of
the same subclass: FID and KID compare two sets of features, IS looks at the pool alone, and
memorisation asks whether generated images sit closer to a training image than real held-out
images do.

Feature space. By default the features come from our reference classifier (a transformers
``ViTForImageClassification``), registered with torch-fidelity as a feature extractor bound to
that model: "pre_logits" (the CLS token after the final layernorm, (N, hidden)) for FID, KID
and memorisation, "logits" (N, num_labels) for IS. Figures in that space are *not* comparable
with published Inception FIDs; the report's ``feature_extractor`` field says which space was
used. With a local Inception weights file (``inception_weights_path``) torch-fidelity's
``inception-v3-compat`` is used instead (no download is ever attempted).

On synthetic data the evaluate stage uses the independent *judge* classifier instead (trained on
a fresh procedural set, :mod:`fairskin.classify.judge`), so the space never saw the reference
images. Beside every FID: the real-vs-real floor (:func:`real_floor`: held-out real images against
the reference at the same N), pooled FIDs with the pool subsampled to the real mix
(:func:`pooled_summary`), and disease fidelity (:func:`disease_fidelity`: the judge's accuracy on
generated images over its accuracy on held-out real ones).

Images everywhere are uint8 arrays (N, H, W, 3), values 0..255; torch-fidelity receives them as
uint8 (N, 3, H, W) tensors.

This module assembles the whole pool's report (:func:`generation_report`); the pieces live in
:mod:`fairskin.metrics.extractors` (feature spaces, features of images),
:mod:`fairskin.metrics.fid_kid` (FID, KID, IS of one subclass or two feature sets),
:mod:`fairskin.metrics.subclasses` (per-subclass summaries), :mod:`fairskin.metrics.fid_floors`
(real-vs-real floors), :mod:`fairskin.metrics.fid_pooled` (pooled figures),
:mod:`fairskin.metrics.memorisation` and :mod:`fairskin.metrics.judge_fidelity` (disease
fidelity), and every public name of theirs stays importable from here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairskin.metrics.extractors import (
    CLASSIFIER_KINDS,
    INCEPTION,
    FeatureSpace,
    UInt8Images,
    classifier_features,
    classifier_logits,
    classifier_space,
    feature_space,
    inception_space,
    register_classifier_extractor,
    space_features,
    weights_digest,
)
from fairskin.metrics.fid_floors import floor_table, real_floor, summarise_floors
from fairskin.metrics.fid_kid import (
    KID_MAX_SUBSET,
    features_metrics,
    inception_score,
    isc_splits_for,
    kid_subset_size_for,
    real_cache_name,
    subclass_metrics,
)
from fairskin.metrics.fid_pooled import mix_subsample, pooled_metrics, pooled_summary
from fairskin.metrics.judge_fidelity import disease_fidelity, judge_accuracy, judge_predictions
from fairskin.metrics.memorisation import memorisation, nearest_distances
from fairskin.metrics.subclasses import FID_VAR_DDOF, subclass_codes, summarise_subclasses, weighted_mean

__all__ = [  # this module's names and those of the pieces, importable from here as before the split
    "CLASSIFIER_KINDS",
    "FID_VAR_DDOF",
    "INCEPTION",
    "KID_MAX_SUBSET",
    "FeatureSpace",
    "GenerationReport",
    "UInt8Images",
    "classifier_features",
    "classifier_logits",
    "classifier_space",
    "disease_fidelity",
    "feature_space",
    "features_metrics",
    "floor_table",
    "generation_report",
    "inception_score",
    "inception_space",
    "isc_splits_for",
    "judge_accuracy",
    "judge_predictions",
    "kid_subset_size_for",
    "memorisation",
    "mix_subsample",
    "nearest_distances",
    "pooled_metrics",
    "pooled_summary",
    "real_cache_name",
    "real_floor",
    "register_classifier_extractor",
    "space_features",
    "subclass_metrics",
    "summarise_floors",
    "summarise_subclasses",
    "weights_digest",
]


@dataclass
class GenerationReport:
    """Generation metrics of one pool.

    ``per_subclass``: one row per (group, disease) with ``fid``, ``kid_mean``, ``kid_std``,
    ``kid_subset_size``, ``n_generated``, ``n_real`` (and memorisation columns when held-out
    images were given). ``summary``: flat keys, see :func:`generation_report`.
    """

    per_subclass: pd.DataFrame
    summary: dict[str, Any]


def _subclass_rows(meta: pd.DataFrame, group: str, disease: str) -> np.ndarray:
    return np.flatnonzero((meta["group"].to_numpy() == group) & (meta["disease"].to_numpy() == disease))


def _image_checksums(pixels: np.ndarray, meta: pd.DataFrame, rows: np.ndarray) -> list[str]:
    if "sha256" in meta.columns:
        return [str(s) for s in meta["sha256"].to_numpy()[rows]]
    return [hashlib.sha256(np.ascontiguousarray(pixels[i]).tobytes()).hexdigest() for i in rows]


def _per_subclass(pool, real, groups, diseases, extractor, cache_root, real_checksums, kid_subset_size) -> pd.DataFrame:
    """FID/KID rows per (group, disease) of ``pool`` against ``real``, each (uint8 pixels, meta); NaN if not evaluated."""
    (pool_pixels, pool_meta), (real_pixels, real_meta) = pool, real
    rows = []
    for g in groups:
        for d in diseases:
            gen_rows, real_rows = _subclass_rows(pool_meta, g, d), _subclass_rows(real_meta, g, d)
            row = {
                "group": g,
                "disease": d,
                "fid": math.nan,
                "kid_mean": math.nan,
                "kid_std": math.nan,
                "kid_subset_size": 0,
                "n_generated": len(gen_rows),
                "n_real": len(real_rows),
            }
            if len(gen_rows) >= 2 and len(real_rows) >= 2:  # else left NaN: not evaluated
                cache_name = None
                if cache_root is not None:
                    sums = _image_checksums(real_pixels, real_meta, real_rows) + list(real_checksums or [])
                    cache_name = real_cache_name(extractor.name, sums, (g, d))
                row.update(
                    subclass_metrics(
                        pool_pixels[gen_rows],
                        real_pixels[real_rows],
                        extractor,
                        cache_name=cache_name,
                        cache_root=cache_root,
                        kid_subset_size=kid_subset_size,
                    )
                )
            rows.append(row)
    return pd.DataFrame(rows)


class _Features:
    """Features of each image array in one feature space, extracted once per array object."""

    def __init__(self, space: FeatureSpace):
        self.space, self._done = space, {}

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        key = id(pixels)
        if key not in self._done:
            self._done[key] = (pixels, space_features(self.space, pixels))  # keeps the array alive: ids stay unique
        return self._done[key][1]


def _inception_scores(pool_pixels, pool_meta, groups, extractor) -> dict[str, float]:
    """IS of the whole pool (``is_mean``, ``is_std``) and of each group's images (``is_mean_<group>``, ...)."""
    out = dict(inception_score(pool_pixels, extractor))
    for g in groups:
        part = inception_score(pool_pixels[pool_meta["group"].to_numpy() == g], extractor)
        out[f"is_mean_{g}"], out[f"is_std_{g}"] = part["is_mean"], part["is_std"]
    return out


def _memorisation_columns(per_subclass, pool, train, heldout, features) -> tuple[pd.DataFrame, dict[str, float]]:
    """Join memorisation per subclass onto the table; summary share over all generated images, per group.

    ``pool``, ``train``, ``heldout``: (uint8 pixels, meta) each; ``features``: a :class:`_Features`."""
    (pool_pixels, pool_meta), (train_pixels, train_meta), (heldout_pixels, heldout_meta) = pool, train, heldout
    table = memorisation(
        features(pool_pixels),
        subclass_codes(pool_meta),
        features(train_pixels),
        subclass_codes(train_meta),
        features(heldout_pixels),
        subclass_codes(heldout_meta),
    )
    table[["group", "disease"]] = table["subclass"].str.split("\x1f", expand=True)
    table = table.drop(columns=["subclass", "n_generated"])
    merged = per_subclass.merge(table, on=["group", "disease"], how="left")
    summary = {"memorised_fraction": weighted_mean(merged["memorised_fraction"], merged["n_generated"])}
    for g in per_subclass["group"].unique():
        rows = merged[merged["group"] == g]
        summary[f"memorised_fraction_{g}"] = weighted_mean(rows["memorised_fraction"], rows["n_generated"])
    return merged, summary


def _floor_columns(
    per_subclass, real, floor, groups, features, seed, kid_subset_size
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Join the real-vs-real floors (:func:`floor_table`) and ``fid_floor_corrected`` onto the table; their summary.

    ``real``, ``floor``: (uint8 pixels, meta) of the reference and of the real images outside it."""
    (real_pixels, real_meta), (floor_pixels, floor_meta) = real, floor
    floor_features = features(floor_pixels) if len(floor_pixels) else np.zeros((0, 1), np.float32)
    floors = floor_table(
        features(real_pixels),
        real_meta,
        floor_features,
        floor_meta,
        per_subclass[["group", "disease", "n_generated"]],
        seed=seed,
        kid_subset_size=kid_subset_size,
    )
    per_subclass = per_subclass.merge(floors, on=["group", "disease"], how="left")
    per_subclass["fid_floor_corrected"] = per_subclass["fid"] - per_subclass["fid_floor"]
    return per_subclass, summarise_floors(per_subclass, groups)


def generation_report(
    pool_pixels: np.ndarray,
    pool_meta: pd.DataFrame,
    real_pixels: np.ndarray,
    real_meta: pd.DataFrame,
    groups: Sequence[str],
    diseases: Sequence[str],
    extractor: FeatureSpace,
    *,
    cache_root: Path | None = None,
    real_checksums: Sequence[str] | None = None,
    heldout_pixels: np.ndarray | None = None,
    heldout_meta: pd.DataFrame | None = None,
    train_pixels: np.ndarray | None = None,
    train_meta: pd.DataFrame | None = None,
    kid_subset_size: int | None = None,
    isc: bool = True,
    floor_pixels: np.ndarray | None = None,
    floor_meta: pd.DataFrame | None = None,
    pooled: bool = True,
    seed: int = 0,
) -> GenerationReport:
    """FID, KID, IS and memorisation of a synthetic pool, per subclass, per group and overall.

    Inputs: ``pool_pixels`` uint8 (N, H, W, 3) with ``pool_meta`` (N rows: group, disease);
    ``real_pixels`` uint8 (M, H, W, 3) with ``real_meta`` (M rows: group, disease, optional
    sha256), the real images each subclass is compared with (the train split by default).

    Per subclass (``per_subclass``): FID and KID of the pool's images of that (group, disease)
    against the real ones, ``n_generated``, ``n_real``. Subclasses with < 2 images on either
    side are listed with NaN figures and left out of the aggregates.

    Summary (flat keys):
    - :func:`summarise_subclasses`: ``fid_<group>``, ``kid_<group>`` (weights ``n_real``, the
      group's real disease mixture), ``fid_mean``, ``kid_mean`` (unweighted over subclasses, so a
      generator that balances the subclasses is not penalised for its balance), ``fid_var_subclass``
      and ``fid_var_group`` (sample variances, ddof=1, ``fid_var_ddof``; see there for the paper's FID variance);
    - ``is_mean``, ``is_std`` over the whole pool and ``is_mean_<group>``, ``is_std_<group>``
      (IS layer of the extractor: the classifier's logits, or Inception's), when ``isc``;
    - ``memorised_fraction`` (share of all generated images) and ``memorised_fraction_<group>``,
      when ``heldout_pixels``/``heldout_meta`` are given; the training images default to
      ``real_pixels``/``real_meta`` (see :func:`memorisation`);
    - real-vs-real floors (:func:`real_floor`), when ``floor_pixels``/``floor_meta`` (real images
      outside the reference, e.g. val + test) are given: per subclass ``fid_floor``, ``kid_floor``,
      ``floor_method``, ``floor_n_query``, ``floor_n_reference`` and ``fid_floor_corrected``
      (``fid - fid_floor``); summary :func:`summarise_floors` (``fid_floor_mean``, ...);
    - with ``pooled``, the pooled figures of :func:`pooled_summary` (``fid_pooled_<group>``,
      ``fid_pooled_overall``, ...), each pool subsampled to the real mix with ``seed``;
    - ``feature_extractor``: the feature space's description; ``feature_extractor_name``.

    ``cache_root`` turns on torch-fidelity's cache for the real side: a subclass's cache name is
    :func:`real_cache_name` of the extractor, the subclass and its images' ``sha256`` (hashed
    from the pixels when the column is missing) plus ``real_checksums`` (e.g. shard checksums).
    """
    pool, real = (pool_pixels, pool_meta), (real_pixels, real_meta)
    per_subclass = _per_subclass(pool, real, groups, diseases, extractor, cache_root, real_checksums, kid_subset_size)
    summary: dict[str, Any] = summarise_subclasses(per_subclass, groups)
    if isc:
        summary.update(_inception_scores(pool_pixels, pool_meta, groups, extractor))
    features = _Features(extractor)
    if heldout_pixels is not None and heldout_meta is not None and len(heldout_pixels):
        train = (real_pixels if train_pixels is None else train_pixels, real_meta if train_meta is None else train_meta)
        per_subclass, mem = _memorisation_columns(per_subclass, pool, train, (heldout_pixels, heldout_meta), features)
        summary.update(mem)
    if floor_pixels is not None and floor_meta is not None:
        floor = (floor_pixels, floor_meta)
        per_subclass, floors = _floor_columns(per_subclass, real, floor, groups, features, seed, kid_subset_size)
        summary.update(floors)
    if pooled:
        pool_features, real_features = features(pool_pixels), features(real_pixels)
        summary.update(
            pooled_summary(
                pool_features, pool_meta, real_features, real_meta, groups, seed=seed, kid_subset_size=kid_subset_size
            )
        )
    summary["feature_extractor"] = extractor.description
    summary["feature_extractor_name"] = extractor.name
    return GenerationReport(per_subclass=per_subclass, summary=summary)
