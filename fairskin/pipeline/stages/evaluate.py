"""The ``evaluate`` stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.config import FairSkinConfig
from fairskin.pipeline.keyed import StageResult
from fairskin.pipeline.stage import Stage, StageContext, register_stage
from fairskin.pipeline.stages.generate import pool_folders, pool_provenance
from fairskin.tracking import RunHandle


def _evaluate_body(ctx: StageContext) -> Mapping[str, Any]:
    """Per variant: FID/KID per subclass and group with their real-vs-real floors, pooled FIDs, FID
    variance, IS, memorisation, disease fidelity (the judge), skin tone, t-SNE, heatmaps.

    Feature space: Inception with local weights, else on synthetic data the independent judge's
    (it never saw the real images), else the reference classifier's. Writes
    ``generation_table.csv`` (one row per variant), ``per_subclass.csv`` (variant x subclass) and,
    per variant, ``<variant>/`` with its table and plots; each variant is a child run tagged
    ``fairskin.variant``.
    """
    config, out, inputs, run = ctx.config, ctx.out, ctx.inputs, ctx.run
    import json

    import numpy as np
    import pandas as pd

    from fairskin.classify.models import load_saved_classifier
    from fairskin.classify.train import classifier_device
    from fairskin.data.shards import load_decoded
    from fairskin.metrics.generation import (
        classifier_features,
        disease_fidelity,
        feature_space,
        generation_report,
        judge_accuracy,
        judge_predictions,
    )
    from fairskin.metrics.plots import plot_fid_heatmap, plot_tsne
    from fairskin.metrics.references import load_references
    from fairskin.metrics.skin_tone import image_ita, skin_tone_report
    from fairskin.progress import progress_bar
    from fairskin.provenance import TAG_FINETUNE, TAG_POOL, TAG_REAL, shard_fingerprint

    g, c = config.generation, config.classifier
    groups, diseases = config.data.group_names, config.data.diseases
    shards = inputs["prepare"].path / "shards"
    device = classifier_device(c)
    model = load_saved_classifier(inputs["reference"].path / "model").to(device).eval()
    refs = load_references(config, shards, inputs["judge"].path, inputs["reference"].path, device)
    judge, info, judge_real = refs.judge, refs.info, refs.judge_real
    space = feature_space(
        judge if info.kind == "independent" else model,
        c.image_size,
        g.inception_weights_path,
        kind="judge-classifier" if info.kind == "independent" else "reference-classifier",
    )
    train_pixels, train_meta = refs.train_pixels, refs.train_meta
    real_pixels, real_meta = refs.real_pixels, refs.real_meta
    held_pixels, held_meta = refs.held_pixels, refs.held_meta
    floor_pixels, floor_meta = refs.floors(g.real_split)
    judge_real.to_csv(out / "judge_real_accuracy.csv", index=False)
    cache = config.runtime.runs_root / "cache" / "fidelity"  # real features, keyed by image checksums

    # Skin tone: ITA of each image's healthy skin against the real training images' ITA per group;
    # held-out real images give the same rule's ceiling.
    bands = refs.bands
    held_ita = image_ita(held_pixels)
    rows, tables = [], []
    pools = pool_folders(inputs["generate"])
    provenance = pool_provenance(inputs["generate"])
    real_fingerprint = shard_fingerprint(shards)
    for variant, folder in progress_bar(
        pools.items(),
        total=len(pools),
        enabled=config.runtime.progress,
        description="evaluate: FID/KID/IS, floors, fidelity, t-SNE per generator",
    ):
        pool_pixels, pool_meta = load_decoded(folder)
        report = generation_report(
            pool_pixels,
            pool_meta,
            real_pixels,
            real_meta,
            groups,
            diseases,
            space,
            cache_root=cache,
            heldout_pixels=held_pixels,
            heldout_meta=held_meta,
            train_pixels=train_pixels,
            train_meta=train_meta,
            floor_pixels=floor_pixels,
            floor_meta=floor_meta,
            seed=config.runtime.seed,
        )
        fidelity, fidelity_summary = disease_fidelity(
            judge_accuracy(judge_predictions(judge, pool_pixels, c.image_size, diseases), pool_meta, groups, diseases),
            judge_real,
            groups,
        )
        report.per_subclass = report.per_subclass.merge(fidelity, on=["group", "disease"], how="left")
        report.summary.update(fidelity_summary)
        report.summary.update(judge=info.description, judge_saw_train_images=int(info.saw_train_images))
        tone_subclass, tone_group, tone_summary, confusion = skin_tone_report(
            image_ita(pool_pixels),
            pool_meta["group"].to_numpy(),
            pool_meta["disease"].to_numpy(),
            bands,
            held_ita,
            held_meta["group"].to_numpy(),
            heldout_disease=held_meta["disease"].to_numpy(),
            seed=config.runtime.seed,
        )  # W1 ratios: the reference is bands.samples, the train split's ITAs
        report.summary.update(tone_summary)
        (out / variant).mkdir(parents=True, exist_ok=True)
        tone_subclass.to_csv(out / variant / "skin_tone_per_subclass.csv", index=False)
        tone_group.to_csv(out / variant / "skin_tone_per_group.csv", index=False)
        confusion.to_csv(out / variant / "skin_tone_confusion.csv")
        plot_fid_heatmap(
            tone_subclass,
            out / variant / "skin_tone_heatmap.png",
            value="agreement",
            title=f"{variant}: skin-tone agreement per subclass (share assigned to the prompted group)",
        )
        report.per_subclass.to_csv(out / variant / "per_subclass.csv", index=False)
        (out / variant / "summary.json").write_text(json.dumps(report.summary, indent=2, default=str))
        plot_fid_heatmap(
            report.per_subclass,
            out / variant / "fid_heatmap.png",
            title=f"{variant}: FID per subclass ({space.kind} features)",
        )
        plot_fid_heatmap(
            report.per_subclass,
            out / variant / "disease_fidelity_heatmap.png",
            value="disease_fidelity",
            title=f"{variant}: disease fidelity per subclass (judge accuracy, generated / held-out real)"
            + ("; judge saw the train images" if info.saw_train_images else ""),
        )
        features = classifier_features(model, pool_pixels, c.image_size)
        plot_tsne(
            features,
            pool_meta["group"].to_numpy(),
            pool_meta["disease"].to_numpy(),
            out / variant / "tsne.png",
            title=f"{variant}: t-SNE of reference-classifier features",
            seed=config.runtime.seed,
        )
        rows.append({"variant": variant, **report.summary})
        tables.append(report.per_subclass.assign(variant=variant))
        _log_variant_evaluation(
            run,
            variant,
            report.summary,
            out / variant,
            {
                TAG_POOL: provenance[variant]["pool"],
                TAG_FINETUNE: provenance[variant]["finetune"],
                TAG_REAL: real_fingerprint,
            },
        )
    table = pd.DataFrame(rows)
    table.to_csv(out / "generation_table.csv", index=False)
    pd.concat(tables, ignore_index=True).to_csv(out / "per_subclass.csv", index=False)
    (out / "generation_table.md").write_text(_generation_markdown(table, pd.concat(tables), config))
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


def _generation_markdown(table, per_subclass, config: FairSkinConfig) -> str:
    """Variant table, Table 2's pooled FIDs, and a per-subclass table (FID / KID with floors,
    disease fidelity), as markdown; every table names the feature space and the judge."""
    groups = config.data.group_names
    first = table.iloc[0]
    judge = f"Judge (disease fidelity): {first.get('judge', 'n/a')}."
    space = f"Feature space: {first['feature_extractor']}."

    def fmt(value, spec: str = ".4g") -> str:
        try:
            return format(float(value), spec)
        except (TypeError, ValueError):
            return str(value)

    def grid(cols: list[str], frame, head: list[str] | None = None, spec: str = ".4g") -> list[str]:
        out = ["| " + " | ".join(head or cols) + " |", "|" + "---|" * len(cols)]
        for _, r in frame.iterrows():
            out.append(
                "| "
                + " | ".join(
                    str(r.get(c, ""))
                    if c in ("variant", "group", "disease", "floor_method")
                    else fmt(r.get(c, float("nan")), spec)
                    for c in cols
                )
                + " |"
            )
        return out

    cols = [
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
    lines += grid(cols, table)
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
    lines += grid(pooled, table)
    sub = [
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
    lines += ["", "## Per subclass", "", f"{space} {judge}", ""]
    lines += grid(sub, per_subclass, spec=".4g")
    return "\n".join(lines) + "\n"


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
