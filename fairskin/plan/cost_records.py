"""Unit costs on this machine from the pipeline's stage records, else from a cost model (assumed).

Unit costs: the latest finished stage records ``<runs root>/stages/<stage>-<key>/_stage.json``: wall
seconds per fine-tune, per pool and per classifier trial at the concurrency they ran with (a stage's
seconds over its units), times the units per level in this config. Of each stage the latest record made
with this config's work settings is used, else the latest within 4x of them scaled linearly by the work
(steps x batch, images x sampling steps, epochs x count scale, pixels). A unit without such a record
falls back to a cost model (``HERE_MODEL``: README run 6, the study preset on 2 CPU cores, scaled the
same way) and is marked assumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairskin.plan.design import UnitCosts

STAGE_RECORD = "_stage.json"  # fairskin.pipeline.keyed.STAGE_RECORD (not imported: that module pulls in the engine)

# Cost model on this machine where a stage has no record: README run 6 (study preset, 2 CPU cores, quiet;
# finetune 559 s for 4 fine-tuned variants x 3 repeats of 200 steps x 16 images; generate 670 s for 12
# sampled pools of 45 x 15 images x 20 steps (the 6 mixed pools cost next to nothing); evaluate 155 s for
# 18 pools of 675 images; tune 289 s for 18 trials of 8 epochs at count scale 0.05), all at 64 px.
HERE_MODEL = {
    "finetune_s": 559 / 12,
    "finetune_work": 200 * 16,
    "generate_s": 670 / 12,
    "generate_work": 675 * 20,
    "evaluate_s": 155 / 18,
    "evaluate_work": 675,
    "trial_s": 289 / 18,
    "trial_work": 8 * 0.05,
    "image_size": 64,
    "source": "README run 6 (study preset, 2 CPU cores)",
}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def stage_records(runs_root: Path | str, stage: str) -> list[tuple[Path, dict]]:
    """Finished records of ``stage`` under ``<runs_root>/stages/<stage>-<key>/_stage.json``, latest
    ``started`` first: (stage folder, record)."""
    found = []
    for path in Path(runs_root, "stages").glob(f"{stage}-*/{STAGE_RECORD}"):
        record = _read_json(path)
        if record is not None and record.get("stage", stage) == stage and "seconds" in record:
            found.append((path.parent, record))
    return sorted(found, key=lambda item: float(item[1].get("started") or 0), reverse=True)


def _read(reads: Mapping[str, Any], dotted: str) -> Any:
    """A setting from a record's ``reads`` (dotted keys, or a section stored whole); None if absent."""
    if dotted in reads:
        return reads[dotted]
    section, _, rest = dotted.partition(".")
    node = reads.get(section)
    for part in rest.split(".") if rest else []:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _work_ratio(reads: Mapping[str, Any], config, keys: Sequence[tuple[str, int]]) -> float:
    """Product over ``keys`` (dotted setting, exponent) of (config value / recorded value) ** exponent,
    for the settings the record holds: how much more work this config's unit is."""
    ratio = 1.0
    for dotted, power in keys:
        recorded = _read(reads, dotted)
        if isinstance(recorded, (int, float)) and recorded > 0:
            ratio *= (float(config.section(dotted)) / float(recorded)) ** power
    return ratio


FT_WORK = (("diffusion.max_steps", 1), ("diffusion.global_batch_size", 1))
GEN_WORK = (("generation.images_per_subclass", 1), ("generation.inference_steps", 1), ("data.image_size", 2))
EVAL_WORK = (("generation.images_per_subclass", 1), ("data.image_size", 2))
CLS_WORK = (("classifier.epochs", 1), ("tune.count_scale", 1), ("classifier.image_size", 2))


def _modes(config) -> int:
    """Downstream modes per (variant, pool, seed) in the config's tune space (1 when unreadable)."""
    try:
        from fairskin.tune.spaces import load_space

        space = load_space(config.tune.space)
    except Exception:  # noqa: BLE001  (a custom space that does not load here: one mode)
        return 1
    for p in space.parameters:
        if p.name == "mode" and isinstance(p.values, list):
            return max(1, len(p.values))
    return 1


def level_counts(config) -> dict[str, int]:
    """Units per level unit in ``config``: fine-tunes per repeat, pools per (repeat, pool seed),
    sampled pools among them (mixed pools are made from others), classifier trials per (repeat,
    pool, seed) cell (variants x downstream modes)."""
    from fairskin.config import is_mix_control

    variants = list(config.diffusion.variants)
    sampled = [v for v in variants if not is_mix_control(v)]
    return {
        "finetunes": len(sampled),
        "pools": len(variants),
        "sampled_pools": len(sampled),
        "trials": len(variants) * _modes(config),
    }


def _n_pools(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*/index.json"))


def _n_generated(folder: Path, record: dict) -> int:
    """The pools a generate stage sampled itself: its summary's ``pools_generated`` (the others it linked from the
    store, fairskin.pipeline.store), else (older records) every pool in its folder."""
    summary = record.get("summary") or {}
    return int(summary["pools_generated"]) if "pools_generated" in summary else _n_pools(folder)


def _model_seconds(config, model: str, work: float, pixels: int) -> float:
    """``HERE_MODEL``'s seconds for one ``model`` unit ("finetune", "generate", "evaluate", "trial") scaled
    linearly to ``work`` (the unit's steps x images, or epochs x count scale) and ``pixels`` (its image side)."""
    return HERE_MODEL[f"{model}_s"] * work / HERE_MODEL[f"{model}_work"] * (pixels / HERE_MODEL["image_size"]) ** 2


MAX_SCALE = 4.0  # a record whose unit did 4x more or less work than this config's is not used


def _pick(
    records: Sequence[tuple[Path, dict]],
    config,
    keys: Sequence[tuple[str, int]],
    reads_of=lambda folder, rec: rec.get("reads") or {},
) -> tuple[Path, dict, float] | str:
    """The latest record made with this config's settings (work ratio 1), else the latest within
    ``MAX_SCALE`` of them, as (folder, record, work ratio); else why none is usable."""
    rated = [(folder, rec, _work_ratio(reads_of(folder, rec), config, keys)) for folder, rec in records]
    same = [r for r in rated if abs(r[2] - 1) < 1e-9]
    near = [r for r in rated if 1 / MAX_SCALE <= r[2] <= MAX_SCALE]
    if same or near:
        return (same or near)[0]
    if rated:
        return (
            f"its latest record's units did {1 / rated[0][2]:.3g} x this config's work each "
            f"(more than {MAX_SCALE:g} x off: start-up overhead does not scale)"
        )
    return "no record"


def measured_costs(runs_root: Path | str, config, notes: list[str] | None = None) -> tuple[UnitCosts, dict[str, str]]:
    """Unit costs on this machine (wall seconds per level unit, :class:`UnitCosts`) from the stage records.

    Per unit, at the concurrency the stage ran with: a fine-tune = a finetune stage's seconds / its
    fine-tunes (summary keys ``<generator>_seconds``); a pool = a generate stage's seconds / its pools
    (``<stage folder>/*/index.json``) + an evaluate stage's seconds / the pools it read; a classifier
    trial = a tune stage's ``study_seconds`` / ``trials``. Each times its count per level in
    ``config`` (:func:`level_counts`). Of each stage the latest record (by ``started``) made with this
    config's work settings (``FT_WORK``, ``GEN_WORK``, ``EVAL_WORK``, ``CLS_WORK``) is used, else the
    latest within ``MAX_SCALE`` x of them, scaled linearly by the work. A unit without a usable record
    comes from ``HERE_MODEL`` (README run 6) scaled the same way, and is "assumed".

    Returns (costs, measured): measured maps c_ft, c_pool, c_cls to "measured" or "assumed: <why>";
    ``notes`` (if given) gets one sentence per measured unit.
    """
    root = Path(runs_root)
    counts = level_counts(config)
    notes = notes if notes is not None else []
    under = f"under {root / 'stages'}; cost model from {HERE_MODEL['source']} scaled to this config"
    measured: dict[str, str] = {}
    c_ft, measured["c_ft"] = _finetune_cost(root, config, counts, under, notes)
    c_pool, measured["c_pool"] = _pool_cost(root, config, counts, under, notes)
    c_cls, measured["c_cls"] = _classifier_cost(root, config, counts, under, notes)
    return UnitCosts(c_ft, c_pool, c_cls), measured


def _scaled(ratio: float, what: str) -> str:
    """The note's words for a record scaled by ``ratio`` to this config's ``what`` ("" when not scaled)."""
    return f", x {ratio:.3g} for this config's {what}" if abs(ratio - 1) > 1e-9 else ""


def _finetune_cost(root: Path, config, counts: Mapping[str, int], under: str, notes: list[str]) -> tuple[float, str]:
    """c_ft (seconds of one repeat's fine-tunes) and its status; ``under``: where the records were sought and
    the cost model, for an assumed status; ``notes`` gets the measured record's sentence."""
    d = config.diffusion
    ft_model = _model_seconds(config, "finetune", d.max_steps * d.global_batch_size, config.data.image_size)
    finetunes = [
        (f, r)
        for f, r in stage_records(root, "finetune")
        if any(k.endswith("_seconds") for k in r.get("summary") or {})
    ]
    picked = _pick(finetunes, config, FT_WORK)
    if isinstance(picked, str):
        return ft_model * counts["finetunes"], f"assumed: finetune: {picked} {under}"
    folder, rec, ratio = picked
    per = [float(v) for k, v in rec["summary"].items() if k.endswith("_seconds") and isinstance(v, (int, float))]
    wall = float(rec["seconds"]) / len(per)
    notes.append(
        f"fine-tune: {folder.name}, {rec['seconds']:.0f} s for {len(per)} fine-tunes at concurrency "
        f"{sum(per) / float(rec['seconds']):.2f}: {wall:.1f} s each{_scaled(ratio, 'steps x batch')}, "
        f"x {counts['finetunes']} per repeat"
    )
    return wall * ratio * counts["finetunes"], "measured"


def _pool_cost(root: Path, config, counts: Mapping[str, int], under: str, notes: list[str]) -> tuple[float, str]:
    """c_pool (generate + evaluate, per pool of the records, times the config's pools per (repeat, pool
    seed)) and its status; arguments as :func:`_finetune_cost`'s."""
    g = config.generation
    images = g.images_per_subclass * len(config.data.groups) * len(config.data.diseases)
    # mixed pools are made from two sampled ones: the model charges only the sampled share
    gen_model = (
        _model_seconds(config, "generate", images * g.inference_steps, config.data.image_size)
        * counts["sampled_pools"]
        / counts["pools"]
    )
    eval_model = _model_seconds(config, "evaluate", images, config.data.image_size)
    generates = [(f, r) for f, r in stage_records(root, "generate") if _n_generated(f, r)]
    parts, why = {}, {}
    picked = _pick(generates, config, GEN_WORK)
    if isinstance(picked, str):
        why["generate"] = picked
    else:
        folder, rec, ratio = picked
        n = _n_generated(folder, rec)
        parts["generate"] = float(rec["seconds"]) / n * ratio
        notes.append(
            f"pools: {folder.name}, {rec['seconds']:.0f} s for {n} pools: {rec['seconds'] / n:.1f} s each"
            f"{_scaled(ratio, 'images x steps')}"
        )

    def evaluated(folder: Path, rec: dict) -> tuple[Path, dict] | None:
        """The generate stage an evaluate record read (by its path), else None."""
        source = (rec.get("inputs") or {}).get("generate", {}).get("path")
        match = [(f, r) for f, r in generates if source and f.resolve() == Path(source).resolve()]
        return match[0] if match else None

    evaluates = [
        (f, r)
        for f, r in stage_records(root, "evaluate")
        if evaluated(f, r) and (r.get("summary") or {}).get("pools_scored", 1)
    ]
    picked = _pick(evaluates, config, EVAL_WORK, reads_of=lambda f, r: evaluated(f, r)[1].get("reads") or {})
    if isinstance(picked, str):
        why["evaluate"] = picked if picked != "no record" else "no record of the pools it read"
    else:
        folder, rec, ratio = picked
        # pools scored by this stage (others it reused from <runs root>/evaluations cost next to nothing)
        n = int((rec.get("summary") or {}).get("pools_scored", _n_pools(evaluated(folder, rec)[0])))
        parts["evaluate"] = float(rec["seconds"]) / n * ratio
        notes.append(
            f"evaluation: {folder.name}, {rec['seconds']:.0f} s for {n} pools: {rec['seconds'] / n:.1f} s "
            f"each{_scaled(ratio, 'images')}"
        )
    status = "measured"
    if why:
        status = (
            "assumed: "
            + "; ".join(f"{k}: {v}" for k, v in why.items())
            + f" {under}"
            + ("; the other part measured" if parts else "")
        )
    return (parts.get("generate", gen_model) + parts.get("evaluate", eval_model)) * counts["pools"], status


def _classifier_cost(root: Path, config, counts: Mapping[str, int], under: str, notes: list[str]) -> tuple[float, str]:
    """c_cls (one (repeat, pool, seed) cell's classifier trials) and its status; arguments as
    :func:`_finetune_cost`'s."""
    c = config.classifier
    trial_model = _model_seconds(config, "trial", c.epochs * config.tune.count_scale, c.image_size)
    tunes = [(f, r) for f, r in stage_records(root, "tune") if _trials_trained(r)]
    picked = _pick(tunes, config, CLS_WORK)
    if isinstance(picked, str):
        return trial_model * counts["trials"], f"assumed: tune: {picked} {under}"
    folder, rec, ratio = picked
    trials = _trials_trained(rec)
    seconds = float(rec["summary"].get("study_seconds") or rec["seconds"])
    notes.append(
        f"classifier: {folder.name}, study {seconds:.0f} s for {trials} trained trials: {seconds / trials:.1f} s "
        f"each{_scaled(ratio, 'epochs x count scale')}, x {counts['trials']} per (repeat, pool, seed)"
    )
    return seconds / trials * ratio * counts["trials"], "measured"


def _trials_trained(record: Mapping[str, Any]) -> int:
    """The trials a tune stage trained: those it replayed from earlier studies (``trials_trained``, recorded
    since trials are kept) cost next to nothing and are not counted."""
    summary = record.get("summary") or {}
    return int(summary.get("trials_trained", summary.get("trials")) or 0)
