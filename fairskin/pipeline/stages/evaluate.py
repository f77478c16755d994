"""The ``evaluate`` stage: every generator's pool scored against the real images (FID/KID per subclass and
group with their real-vs-real floors, pooled FIDs, FID variance, IS, memorisation, disease fidelity by the
judge, skin tone), with its tables, plots and one MLflow child run per generator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.pipeline.stages.generate import pool_folders, pool_provenance
from fairskin.tracking import RunHandle

if TYPE_CHECKING:  # annotations only: the stage module stays light to import
    import numpy as np
    import pandas as pd

    from fairskin.metrics.generation import GenerationReport
    from fairskin.metrics.references import References

# A pool's skin-tone tables: per subclass, per group, and the confusion of prompted and assigned group.
SkinToneTables = tuple["pd.DataFrame", "pd.DataFrame", "pd.DataFrame"]


@dataclass
class _Scoring:
    """What every pool is scored against, loaded once: the reference classifier, the references (real
    images, judge, skin-tone bands), the feature space, the real-vs-real floor images, the real-feature
    cache and the held-out images' ITA."""

    config: FairSkinConfig
    out: Path
    model: Any  # the reference classifier (torch module), on its device
    refs: References
    space: Any  # fairskin.metrics.generation's feature space
    floor_pixels: np.ndarray
    floor_meta: pd.DataFrame
    cache: Path
    held_ita: np.ndarray


def _evaluate_body(ctx: StageContext) -> Mapping[str, Any]:
    """Per variant: FID/KID per subclass and group with their real-vs-real floors, pooled FIDs, FID
    variance, IS, memorisation, disease fidelity (the judge), skin tone, t-SNE, heatmaps.

    Feature space: Inception with local weights, else on synthetic data the independent judge's
    (it never saw the real images), else the reference classifier's. Writes
    ``generation_table.csv`` (one row per variant), ``per_subclass.csv`` (variant x subclass) and,
    per variant, ``<variant>/`` with its table and plots; each variant is a child run tagged
    ``fairskin.variant``.

    Each pool's folder is kept under its own key (:func:`fairskin.pipeline.store.evaluation_key`): a later run
    over more pools (the next look of a run until conclusive) scores only the pools no earlier run scored. The
    tables are read back from the kept folders either way, so a scored and a reused pool give the same rows.
    """
    from fairskin.progress import progress_bar
    from fairskin.provenance import TAG_FINETUNE, TAG_POOL, TAG_REAL, shard_fingerprint

    config, inputs = ctx.config, ctx.inputs
    pools = pool_folders(inputs["generate"])
    provenance = pool_provenance(inputs["generate"])
    stored = _stored_evaluations(ctx, {v: provenance[v]["pool"] for v in pools})
    real_fingerprint = shard_fingerprint(inputs["prepare"].path / "shards")
    scoring = _load_scoring(ctx) if any(_missing(folder) for folder in stored.values()) else None
    rows, tables, scored = [], [], 0
    for variant, folder in progress_bar(
        pools.items(),
        total=len(pools),
        enabled=config.runtime.progress,
        description="evaluate: FID/KID/IS, floors, fidelity, t-SNE per generator",
    ):
        if _missing(stored[variant]):
            _score_into_store(scoring, variant, folder, stored[variant])
            scored += 1
        row, table = _link_evaluation(stored[variant], ctx.out / variant, variant)
        rows.append(row)
        tables.append(table)
        _log_variant_evaluation(
            ctx.run,
            variant,
            row,
            ctx.out / variant,
            {
                TAG_POOL: provenance[variant]["pool"],
                TAG_FINETUNE: provenance[variant]["finetune"],
                TAG_REAL: real_fingerprint,
            },
        )
    if scoring is not None:
        scoring.refs.judge_real.to_csv(ctx.out / "judge_real_accuracy.csv", index=False)
    else:  # every pool was scored before: the judge's accuracy on the real images as those runs wrote it
        _copy_kept_judge_accuracy(stored, ctx.out)
    return {**_write_tables(ctx.out, rows, tables, config), "pools_scored": scored}


EVALUATION_ROW = "row.json"  # a kept evaluation's row of generation_table.csv (its summary)
JUDGE_REAL = "judge_real_accuracy.csv"


def _stored_evaluations(ctx: StageContext, shards: Mapping[str, str]) -> dict[str, Path]:
    """pool id -> its kept evaluation folder (``<runs root>/evaluations/<pool>-<key>``); ``shards``: pool id ->
    content fingerprint. ``--force`` removes them first."""
    from fairskin.pipeline.stage import STAGES, external_fingerprints
    from fairskin.pipeline.store import evaluation_folders

    config, stage = ctx.config, STAGES["evaluate"]
    external = external_fingerprints(stage, config)
    return evaluation_folders(
        config, shards, stage.reads_for(config), ctx.inputs, stage.version, external, redo=ctx.redo
    )


def _missing(folder: Path) -> bool:
    from fairskin.pipeline.store import stored_record

    return stored_record(folder) is None


def _score_into_store(scoring: _Scoring, variant: str, pool: Path, stored: Path) -> None:
    """Score one pool and keep its folder at ``stored`` (temporary name, the record last, one rename)."""
    import json

    from fairskin.data.shards import load_decoded
    from fairskin.io import atomic_directory, atomic_write_json, atomic_write_text, plain_number
    from fairskin.pipeline.store import STORE_RECORD

    pool_pixels, pool_meta = load_decoded(pool)
    report, skin_tone = _score_pool(scoring, pool_pixels, pool_meta)
    with atomic_directory(stored, replace=True) as tmp:
        _write_variant_folder(scoring, variant, report, skin_tone, pool_pixels, pool_meta, tmp)
        scoring.refs.judge_real.to_csv(tmp / JUDGE_REAL, index=False)
        # in the summary's order (generation_table.csv's columns), not sorted as atomic_write_json would
        row = json.dumps({k: plain_number(v) for k, v in report.summary.items()}, indent=1, default=str)
        atomic_write_text(tmp / EVALUATION_ROW, row + "\n")
        atomic_write_json(tmp / STORE_RECORD, {"pool": variant})


def _link_evaluation(stored: Path, out: Path, variant: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """Link a kept evaluation into ``out`` (its variant folder); its row of ``generation_table.csv`` and its
    rows of ``per_subclass.csv``."""
    import json

    import pandas as pd

    from fairskin.pipeline.store import link_tree

    link_tree(stored, out)
    for name in (EVALUATION_ROW, JUDGE_REAL):  # the stage folder's copies are written once, at its top
        (out / name).unlink()
    row = {"variant": variant, **json.loads((stored / EVALUATION_ROW).read_text())}
    table = pd.read_csv(stored / "per_subclass.csv", float_precision="round_trip").assign(variant=variant)
    return row, table


def _copy_kept_judge_accuracy(stored: Mapping[str, Path], out: Path) -> None:
    import shutil

    shutil.copy2(next(iter(stored.values())) / JUDGE_REAL, out / JUDGE_REAL)


def _load_scoring(ctx: StageContext) -> _Scoring:
    """The reference classifier, the references and the feature space.

    Skin tone: ITA of each image's healthy skin against the real training images' ITA per group;
    held-out real images give the same rule's ceiling."""
    from fairskin.classify.models import load_saved_classifier
    from fairskin.classify.train import classifier_device
    from fairskin.metrics.generation import feature_space
    from fairskin.metrics.references import load_references
    from fairskin.metrics.skin_tone import image_ita

    config, out, inputs = ctx.config, ctx.out, ctx.inputs
    g, c = config.generation, config.classifier
    shards = inputs["prepare"].path / "shards"
    device = classifier_device(c)
    model = load_saved_classifier(inputs["reference"].path / "model").to(device).eval()
    refs = load_references(config, shards, inputs["judge"].path, inputs["reference"].path, device)
    independent = refs.info.kind == "independent"
    space = feature_space(
        refs.judge if independent else model,
        c.image_size,
        g.inception_weights_path,
        kind="judge-classifier" if independent else "reference-classifier",
    )
    floor_pixels, floor_meta = refs.floors(g.real_split)
    cache = config.runtime.runs_root / "cache" / "fidelity"  # real features, keyed by image checksums
    held_ita = image_ita(refs.held_pixels)
    return _Scoring(config, out, model, refs, space, floor_pixels, floor_meta, cache, held_ita)


def _score_pool(
    scoring: _Scoring, pool_pixels: np.ndarray, pool_meta: pd.DataFrame
) -> tuple[GenerationReport, SkinToneTables]:
    """One pool's generation report (FID/KID/IS with floors, disease fidelity, skin tone in its summary) and
    its skin-tone tables (per subclass, per group, the confusion of prompted and assigned group)."""
    from fairskin.metrics.generation import disease_fidelity, generation_report, judge_accuracy, judge_predictions
    from fairskin.metrics.skin_tone import image_ita, skin_tone_report

    config, refs = scoring.config, scoring.refs
    groups, diseases = config.data.group_names, config.data.diseases
    report = generation_report(
        pool_pixels,
        pool_meta,
        refs.real_pixels,
        refs.real_meta,
        groups,
        diseases,
        scoring.space,
        cache_root=scoring.cache,
        heldout_pixels=refs.held_pixels,
        heldout_meta=refs.held_meta,
        train_pixels=refs.train_pixels,
        train_meta=refs.train_meta,
        floor_pixels=scoring.floor_pixels,
        floor_meta=scoring.floor_meta,
        seed=config.runtime.seed,
    )
    predictions = judge_predictions(refs.judge, pool_pixels, config.classifier.image_size, diseases)
    fidelity, fidelity_summary = disease_fidelity(
        judge_accuracy(predictions, pool_meta, groups, diseases), refs.judge_real, groups
    )
    report.per_subclass = report.per_subclass.merge(fidelity, on=["group", "disease"], how="left")
    report.summary.update(fidelity_summary)
    report.summary.update(judge=refs.info.description, judge_saw_train_images=int(refs.info.saw_train_images))
    tone_subclass, tone_group, tone_summary, confusion = skin_tone_report(
        image_ita(pool_pixels),
        pool_meta["group"].to_numpy(),
        pool_meta["disease"].to_numpy(),
        refs.bands,
        scoring.held_ita,
        refs.held_meta["group"].to_numpy(),
        heldout_disease=refs.held_meta["disease"].to_numpy(),
        seed=config.runtime.seed,
    )  # W1 ratios: the reference is bands.samples, the train split's ITAs
    report.summary.update(tone_summary)
    return report, (tone_subclass, tone_group, confusion)


def _write_variant_folder(
    scoring: _Scoring,
    variant: str,
    report: GenerationReport,
    skin_tone: SkinToneTables,
    pool_pixels: np.ndarray,
    pool_meta: pd.DataFrame,
    folder: Path,
) -> None:
    """``folder`` (the variant's): the skin-tone tables and heatmap, ``per_subclass.csv``, ``summary.json``, the
    FID and disease-fidelity heatmaps and the t-SNE of the reference classifier's features."""
    import json

    from fairskin.metrics.generation import classifier_features
    from fairskin.metrics.plots import plot_fid_heatmap, plot_tsne

    info = scoring.refs.info
    tone_subclass, tone_group, confusion = skin_tone
    folder.mkdir(parents=True, exist_ok=True)
    tone_subclass.to_csv(folder / "skin_tone_per_subclass.csv", index=False)
    tone_group.to_csv(folder / "skin_tone_per_group.csv", index=False)
    confusion.to_csv(folder / "skin_tone_confusion.csv")
    plot_fid_heatmap(
        tone_subclass,
        folder / "skin_tone_heatmap.png",
        value="agreement",
        title=f"{variant}: skin-tone agreement per subclass (share assigned to the prompted group)",
    )
    report.per_subclass.to_csv(folder / "per_subclass.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(report.summary, indent=2, default=str))
    plot_fid_heatmap(
        report.per_subclass,
        folder / "fid_heatmap.png",
        title=f"{variant}: FID per subclass ({scoring.space.kind} features)",
    )
    plot_fid_heatmap(
        report.per_subclass,
        folder / "disease_fidelity_heatmap.png",
        value="disease_fidelity",
        title=f"{variant}: disease fidelity per subclass (judge accuracy, generated / held-out real)"
        + ("; judge saw the train images" if info.saw_train_images else ""),
    )
    features = classifier_features(scoring.model, pool_pixels, scoring.config.classifier.image_size)
    plot_tsne(
        features,
        pool_meta["group"].to_numpy(),
        pool_meta["disease"].to_numpy(),
        folder / "tsne.png",
        title=f"{variant}: t-SNE of reference-classifier features",
        seed=scoring.config.runtime.seed,
    )


def _write_tables(
    out: Path, rows: list[dict[str, Any]], tables: list[pd.DataFrame], config: FairSkinConfig
) -> dict[str, float]:
    """``generation_table.csv``, ``per_subclass.csv`` and ``generation_table.md``; the stage's summary
    (``<variant>_<figure>`` -> value, every numeric figure of every variant)."""
    import numpy as np
    import pandas as pd

    from fairskin.report.generation import generation_markdown

    table = pd.DataFrame(rows)
    table.to_csv(out / "generation_table.csv", index=False)
    pd.concat(tables, ignore_index=True).to_csv(out / "per_subclass.csv", index=False)
    (out / "generation_table.md").write_text(generation_markdown(table, pd.concat(tables), config.data.group_names))
    numeric = {
        f"{r['variant']}_{k}": float(v)
        for r in rows
        for k, v in r.items()
        if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)
    }
    return numeric


def _log_variant_evaluation(
    run: RunHandle, generator: str, summary: Mapping[str, Any], folder: Path, fingerprints: Mapping[str, str]
) -> None:
    from fairskin.provenance import generator_tags

    child = run.child(
        f"evaluate-{generator}",
        tags={
            "fairskin.stage": "evaluate",
            **generator_tags(generator),
            "fairskin.feature_extractor": summary["feature_extractor"],
            "fairskin.judge": summary.get("judge", ""),
            **fingerprints,
        },
    )
    child.log_metrics(
        {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    )
    for path in sorted(folder.iterdir()):
        child.log_artifact(path, "evaluate")
    child.end()


def _evaluate_log(run: RunHandle, result: StageResult) -> None:
    run.log_metrics(result.summary)
    for name in ("generation_table.csv", "generation_table.md", "per_subclass.csv", "judge_real_accuracy.csv"):
        if (result.path / name).exists():
            run.log_artifact(result.path / name, "evaluate")


register_stage(
    Stage(
        "evaluate",
        reads=("generation.real_split", "generation.inception_weights_path", "classifier.image_size", "runtime.seed"),
        version=3,
        inputs=("prepare", "reference", "generate", "judge"),
        body=_evaluate_body,
        log=_evaluate_log,
        external=("generation.inception_weights_path",),
    )
)
