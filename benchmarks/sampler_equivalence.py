"""Sampler equivalence: may a cheaper sampling setting replace the default? (issue 15, point 3)

    python benchmarks/sampler_equivalence.py [--runs-root DIR] [--out DIR] [--candidates NAME ...]
                                             [--images-per-subclass P] [--local] [--quick]

For a **reference** setting (the runs root's own ``generation.scheduler`` / ``inference_steps``, fp32,
contiguous memory) and each **candidate** (``dpm_half``: DPM-Solver++ at half the steps; ``dpm``: at the
same steps; ``channels_last``; ``bf16``), pools are generated from the SAME fine-tuned generators with the
SAME per-image initial latents (the engine seeds image i of a subclass from (generator seed, group,
disease, i), :func:`fairskin.diffusion.generate.image_seed`), so two settings' pools are paired image by
image. Each pool is measured as the ``evaluate`` stage measures it (the judge's disease accuracy,
skin-tone agreement, FID per subclass -> mean and variance over subclasses, through
``fairskin.metrics``), and each candidate is tested for **equivalence** with the reference by TOST
(:func:`fairskin.metrics.paired.tost_paired`) within the margins declared below, before any data.

**Paired unit: the generator** (one fine-tune, i.e. one (variant, repeat) of the runs root: 12 on
``study``). The question is whether a setting changes what *a generator's pool* scores, so the unit is
what the setting is applied to; generators are separate fine-tunes with their own weights, and FID
variance exists only per generator (it is a spread over subclasses), so subclasses cannot be the unit
for it. Pooling the variants (not only vanilla's R repeats) gives n = 12 instead of 3: TOST with 2
degrees of freedom cannot show equivalence at any useful margin. Caveat: the variants of one repeat
share the repeat's noise seed, so they are not fully independent units.

Inputs: ``--runs-root`` names a runs root with finished ``prepare``, ``reference``, ``finetune`` and
``judge`` stages (read only: every pool, cache and table goes under ``--out``); without it the script
runs the ``demo`` preset (R = 3 repeats) up to those stages under ``--out``. ``--quick``: the ``smoke``
preset, 2 images per subclass (a check that the script works, not a measurement). ``--local``
generates in this process with one thread (``generation.cpus_per_actor``) and starts no Ray with
``--runs-root``; else the pools run on the engine's Ray actor pool. Commands that start Ray on a shared
machine: wrap them in ``flock /tmp/raytests.lock``. Pools are kept under ``--out``: a rerun regenerates
only what is missing (so candidates can be added later against the same reference pools). The last line printed is one JSON
object: per candidate and metric the difference, its 90 % interval, the TOST p-values, and
``equivalent_<candidate>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairskin.io import atomic_write_text  # noqa: E402
from fairskin.metrics.paired import tost_paired  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# Declared before any data (issue 15): the margins, alpha and the decision rule.
# ----------------------------------------------------------------------------------------------------------
ALPHA = 0.05
# metric -> (kind, value). "absolute": +-value in the metric's units; "floor": +-value x the real-vs-real
# FID floor at the same N (fid_floor_mean: the FID of held-out real images against the same reference, what
# a perfect generator scores; a change smaller than it is smaller than redrawing the real images);
# "relative": +-value x the reference setting's mean over generators.
MARGINS: dict[str, tuple[str, float]] = {
    "judge_accuracy_generated": ("absolute", 0.05),
    "skin_tone_agreement": ("absolute", 0.05),
    "fid_mean": ("floor", 1.0),
    "fid_var_subclass": ("relative", 0.10),
}
# A candidate is equivalent when EVERY metric's TOST rejects at ALPHA (an intersection-union test: its
# level is ALPHA without any multiplicity adjustment, Berger 1982).
REPORTED = ("disease_fidelity", "kid_mean")  # shown, not tested

# name -> the generation settings it changes, given the reference's generation config.
CANDIDATES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "dpm_half": lambda g: {"scheduler": "dpm", "inference_steps": max(1, g.inference_steps // 2)},
    "dpm": lambda g: {"scheduler": "dpm"},
    "channels_last": lambda g: {"channels_last": True},
    "bf16": lambda g: {"dtype": "bf16"},
}
REFERENCE = "reference"
DEFAULT_CANDIDATES = ("dpm_half", "channels_last")


# ----------------------------------------------------------------------------------------------------------
# Pairing and tests (pure: no Ray, no torch)
# ----------------------------------------------------------------------------------------------------------


def resolve_margins(
    rows: pd.DataFrame, floor: float, margins: Mapping[str, tuple[str, float]] = MARGINS, reference: str = REFERENCE
) -> dict[str, float]:
    """Each metric's margin in its own units: from ``margins`` (declared), the real-vs-real FID ``floor``
    and, for "relative" margins, the reference setting's mean over generators in ``rows``."""
    ref = rows[rows["setting"] == reference]
    out = {}
    for metric, (kind, value) in margins.items():
        if kind == "absolute":
            out[metric] = float(value)
        elif kind == "floor":
            out[metric] = float(value) * float(floor)
        elif kind == "relative":
            out[metric] = float(value) * abs(float(ref[metric].mean()))
        else:
            raise ValueError(f"unknown margin kind {kind!r} for {metric}")
    return out


def equivalence(
    rows: pd.DataFrame,
    margins: Mapping[str, float],
    candidates: Sequence[str],
    reference: str = REFERENCE,
    alpha: float = ALPHA,
) -> dict[str, dict[str, Any]]:
    """TOST of every candidate against ``reference``, paired by generator.

    ``rows``: one row per (setting, generator) with the metric columns. Returns candidate -> {metric ->
    the test's figures (n, mean_diff, low90, high90, margin, p_lower, p_upper, p_tost, equivalent,
    reference_mean)} plus ``equivalent`` (all metrics) and ``n``.
    """
    by_setting = {s: part.set_index("generator") for s, part in rows.groupby("setting")}
    if reference not in by_setting:
        raise ValueError(f"no rows for the reference setting {reference!r}")
    if by_setting[reference].index.duplicated().any():
        raise ValueError("more than one row per (setting, generator)")
    results: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        if candidate not in by_setting:
            raise ValueError(f"no rows for candidate {candidate!r}")
        figures: dict[str, Any] = {}
        for metric, margin in margins.items():
            test = tost_paired(by_setting[candidate][metric], by_setting[reference][metric], margin, alpha=alpha)
            figures[metric] = {
                "n": test.n,
                "dropped": test.dropped,
                "mean_diff": test.mean,
                "low90": test.low,
                "high90": test.high,
                "margin": margin,
                "p_lower": test.p_lower,
                "p_upper": test.p_upper,
                "p_tost": test.p,
                "equivalent": test.equivalent,
                "reference_mean": float(by_setting[reference][metric].loc[list(test.keys)].mean()),
            }
        figures["equivalent"] = all(figures[m]["equivalent"] for m in margins)
        figures["n"] = min(figures[m]["n"] for m in margins)
        results[candidate] = figures
    return results


def _clean(value):
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def format_table(results: Mapping[str, Mapping[str, Any]], margins: Mapping[str, float]) -> str:
    lines = [
        f"{'candidate':<14} {'metric':<26} {'ref mean':>9} {'diff':>9} {'90% interval':>22} {'margin':>9} "
        f"{'p_TOST':>8}  equivalent"
    ]
    for candidate, figures in results.items():
        for metric in margins:
            f = figures[metric]
            lines.append(
                f"{candidate:<14} {metric:<26} {f['reference_mean']:9.4g} {f['mean_diff']:+9.4f} "
                f"[{f['low90']:+9.4f}, {f['high90']:+9.4f}] {f['margin']:9.4g} {f['p_tost']:8.3g}  "
                f"{f['equivalent']}"
            )
        lines.append(
            f"{candidate:<14} {'ALL (intersection-union)':<26} {'':>9} {'':>9} {'':>22} {'':>9} {'':>8}  "
            f"{figures['equivalent']}  (n = {figures['n']} generators)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Runs root: which stages, which generators
# ----------------------------------------------------------------------------------------------------------


def _stage_inputs(folder: Path) -> dict[str, Path]:
    return {k: Path(v["path"]) for k, v in json.loads((folder / "_stage.json").read_text())["inputs"].items()}


def resolve_stages(root: Path) -> dict[str, Path]:
    """prepare / reference / judge / finetune stage folders of a finished runs root (read only).

    The newest finished ``evaluate`` stage names them (through its ``generate`` input); without one, each
    must be the only finished stage of its name."""
    from fairskin.pipeline.keyed import is_finished

    stages = Path(root) / "stages"
    evaluates = sorted((p for p in stages.glob("evaluate-*") if is_finished(p)), key=lambda p: p.stat().st_mtime)
    if evaluates:
        inputs = _stage_inputs(evaluates[-1])
        inputs["finetune"] = _stage_inputs(inputs["generate"])["finetune"]
        return {k: inputs[k] for k in ("prepare", "reference", "judge", "finetune") if k in inputs}
    found = {}
    for name in ("prepare", "reference", "judge", "finetune"):
        done = [p for p in stages.glob(f"{name}-*") if is_finished(p)]
        if name == "reference" and not done:
            continue  # synthetic data: the judge is its own model
        if len(done) != 1:
            raise SystemExit(
                f"{stages}: {len(done)} finished {name} stage(s) and no finished evaluate stage to choose between them"
            )
        found[name] = done[0]
    return found


# ----------------------------------------------------------------------------------------------------------
# Generation and measurement (the evaluate stage's functions)
# ----------------------------------------------------------------------------------------------------------


class Measure:
    """What the ``evaluate`` stage loads once (judge, feature space, real images, skin-tone bands), then
    :meth:`__call__` measures one pool folder the way it does (without IS, pooled FIDs, memorisation)."""

    def __init__(self, config, stages: Mapping[str, Path], cache: Path):
        from fairskin.classify.judge import load_judge
        from fairskin.classify.models import load_saved_classifier
        from fairskin.data.shards import load_decoded
        from fairskin.metrics.generation import feature_space, judge_accuracy, judge_predictions
        from fairskin.metrics.skin_tone import ReferenceBands, image_ita

        g, c = config.generation, config.classifier
        self.config, self.cache = config, cache
        self.groups, self.diseases = config.data.group_names, config.data.diseases
        shards = stages["prepare"] / "shards"
        self.judge, info = load_judge(stages["judge"], stages.get("reference"))
        model = self.judge if info.kind == "independent" else load_saved_classifier(stages["reference"] / "model")
        self.space = feature_space(
            model.eval(),
            c.image_size,
            g.inception_weights_path,
            kind="judge-classifier" if info.kind == "independent" else "reference-classifier",
        )
        train_pixels, train_meta = load_decoded(shards, splits=["train"])
        self.real = (
            (train_pixels, train_meta) if g.real_split == "train" else load_decoded(shards, splits=[g.real_split])
        )
        held_pixels, held_meta = load_decoded(shards, splits=["val", "test"])
        floor_rows = held_meta["split"].isin([s for s in ("val", "test") if s != g.real_split]).to_numpy()
        self.floor = (held_pixels[floor_rows], held_meta[floor_rows].reset_index(drop=True))
        judge_rows = held_meta["split"].isin(info.real_splits).to_numpy()
        self.judge_real = judge_accuracy(
            judge_predictions(self.judge, held_pixels[judge_rows], c.image_size, self.diseases),
            held_meta[judge_rows],
            self.groups,
            self.diseases,
        )
        self.bands = ReferenceBands.from_real(image_ita(train_pixels), train_meta["group"].to_numpy())
        self.held_ita, self.held_group = image_ita(held_pixels), held_meta["group"].to_numpy()
        self.fid_floor: float | None = None

    def __call__(self, folder: Path) -> dict[str, float]:
        from fairskin.data.shards import load_decoded
        from fairskin.metrics.generation import disease_fidelity, generation_report, judge_accuracy, judge_predictions
        from fairskin.metrics.skin_tone import image_ita, skin_tone_report

        pixels, meta = load_decoded(folder)
        floor = {} if self.fid_floor is not None else {"floor_pixels": self.floor[0], "floor_meta": self.floor[1]}
        report = generation_report(
            pixels,
            meta,
            *self.real,
            self.groups,
            self.diseases,
            self.space,
            cache_root=self.cache,
            isc=False,
            pooled=False,
            seed=self.config.runtime.seed,
            **floor,
        )
        if self.fid_floor is None:  # the same for every pool of this size: measured once
            self.fid_floor = float(report.summary["fid_floor_mean"])
        _, fidelity = disease_fidelity(
            judge_accuracy(
                judge_predictions(self.judge, pixels, self.config.classifier.image_size, self.diseases),
                meta,
                self.groups,
                self.diseases,
            ),
            self.judge_real,
            self.groups,
        )
        _, _, tone, _ = skin_tone_report(
            image_ita(pixels),
            meta["group"].to_numpy(),
            meta["disease"].to_numpy(),
            self.bands,
            self.held_ita,
            self.held_group,
        )
        figures = {**report.summary, **fidelity, **tone}
        return {m: float(figures[m]) for m in (*MARGINS, *REPORTED)}


def setting_config(base_preset: str, yaml_path: Path | None, overrides: Sequence[str], changes: Mapping[str, Any]):
    from fairskin.config import build_config

    extra = [f"generation.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changes.items()]
    return build_config(base_preset, yaml_path=yaml_path, overrides=[*overrides, *extra])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-root", default=None, help="a finished runs root (read only); default: run demo")
    parser.add_argument(
        "--out", default=None, help="where pools, caches and tables go (default ./runs-sampler-equiv[-quick])"
    )
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES), choices=sorted(CANDIDATES))
    parser.add_argument(
        "--images-per-subclass",
        type=int,
        default=None,
        help="P per subclass in every pool (default 8; --quick 2); images 0..P-1 of each subclass",
    )
    parser.add_argument("--generators", type=int, default=None, help="use only the first N generators")
    parser.add_argument("--local", action="store_true", help="generate in this process (no Ray)")
    parser.add_argument("--quick", action="store_true", help="smoke preset, 2 images per subclass: a script check")
    args = parser.parse_args(argv)

    from fairskin.config import build_config
    from fairskin.diffusion.generate import generate_pools
    from fairskin.runtime import quiet_console

    quiet_console()
    started = time.time()
    out = Path(args.out or f"runs-sampler-equiv{'-quick' if args.quick else ''}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    per_subclass = args.images_per_subclass or (2 if args.quick else 8)
    if per_subclass < 2:
        parser.error("--images-per-subclass must be >= 2 (FID and the real-vs-real floor need 2 images a subclass)")
    pipeline_seconds = 0.0
    if args.runs_root:
        root = Path(args.runs_root).resolve()
        if out == root or root in out.parents:
            raise SystemExit(f"--out {out} lies inside the read-only runs root {root}")
        yaml_path = root / "last_config.yaml"
        import yaml

        preset = yaml.safe_load(yaml_path.read_text()).get("preset", "demo")
        base_overrides = [f"runtime.runs_root={out / 'runs-unused'}"]
        stages = resolve_stages(root)
    else:
        from fairskin.pipeline import run_pipeline

        preset, yaml_path = ("smoke" if args.quick else "demo"), None
        root = out / f"runs-{preset}"
        base_overrides = ["diffusion.repeat_seeds=[0,1,2]", f"runtime.runs_root={root}"]
        config = build_config(preset, overrides=base_overrides)
        t0 = time.time()
        # the reference classifier is the judge only on real data (synthetic data has its own judge)
        wanted = ["finetune", "judge"] + (["reference"] if config.data.source != "synthetic" else [])
        outcome = run_pipeline(config, stages=wanted, echo=lambda s: None)
        pipeline_seconds = time.time() - t0
        stages = {
            k: outcome.results[k].path for k in ("prepare", "reference", "judge", "finetune") if k in outcome.results
        }

    reference_config = build_config(preset, yaml_path=yaml_path, overrides=base_overrides)
    g0 = reference_config.generation
    settings = {REFERENCE: {"dtype": "fp32", "channels_last": False}}
    settings.update({c: CANDIDATES[c](g0) for c in args.candidates})
    batch = min(per_subclass, g0.batch_size)
    from fairskin.diffusion.variants import generators

    ids = [gid for gid in generators(reference_config.diffusion) if (stages["finetune"] / gid / "pipeline").is_dir()]
    ids = ids[: args.generators] if args.generators else ids
    pipelines = {gid: stages["finetune"] / gid / "pipeline" for gid in ids}
    print(
        f"runs root {root} ({preset}); {len(ids)} generators; P = {per_subclass} images per subclass, batch "
        f"{batch}; reference {g0.scheduler} x {g0.inference_steps} steps fp32; out {out}",
        flush=True,
    )

    use_ray = not args.local
    if use_ray:
        from fairskin.runtime import init_ray

        init_ray(reference_config)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    try:
        for name, changes in settings.items():
            cfg = setting_config(
                preset, yaml_path, base_overrides, {**changes, "images_per_subclass": per_subclass, "batch_size": batch}
            )
            images = {"count": 0}
            t0 = time.time()
            generate_pools(
                cfg,
                pipelines,
                out / "pools" / name,
                local=not use_ray,
                on_item=lambda e: images.__setitem__("count", images["count"] + e["rows"]),
            )
            seconds = time.time() - t0
            if images["count"]:
                timings[name] = {
                    "seconds": seconds,
                    "images": images["count"],
                    "s_per_image": seconds / images["count"],
                    "changes": changes,
                    "load_avg": os.getloadavg()[0],
                }
                atomic_write_text(timings_path, json.dumps(timings, indent=2))
            print(f"[{name}] {changes}: {images['count']} images in {seconds:.0f} s", flush=True)
    finally:
        if use_ray:
            import ray

            ray.shutdown()

    t0 = time.time()
    measure = Measure(reference_config, stages, out / "cache")
    rows = [
        {"setting": name, "generator": gid, **measure(out / "pools" / name / gid)} for name in settings for gid in ids
    ]
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "per_generator.csv", frame.to_csv(index=False))
    measure_seconds = time.time() - t0
    margins = resolve_margins(frame, measure.fid_floor)
    results = equivalence(frame, margins, args.candidates)
    print()
    print(format_table(results, margins))
    ref_cost = timings.get(REFERENCE, {}).get("s_per_image")
    for name in settings:
        t = timings.get(name)
        if t:
            ratio = f", {t['s_per_image'] / ref_cost:.2f} x the reference's time per image" if ref_cost else ""
            print(
                f"time [{name}]: {t['seconds']:.0f} s for {t['images']} images ({t['s_per_image']:.3f} s/image"
                f"{ratio}; load average {t['load_avg']:.1f})"
            )
    summary = {
        "runs_root": str(root),
        "preset": preset,
        "unit": "generator",
        "n_generators": len(ids),
        "images_per_subclass": per_subclass,
        "alpha": ALPHA,
        "margins_declared": MARGINS,
        "margins": margins,
        "fid_floor_mean": measure.fid_floor,
        "reference": {"scheduler": g0.scheduler, "inference_steps": g0.inference_steps, "dtype": "fp32"},
        "timings": timings,
        "pipeline_seconds": pipeline_seconds,
        "measure_seconds": measure_seconds,
        "wall_seconds": time.time() - started,
        "candidates": results,
        **{f"equivalent_{c}": results[c]["equivalent"] for c in args.candidates},
    }
    atomic_write_text(out / "equivalence.json", json.dumps(_clean(summary), indent=2))
    print(json.dumps(_clean(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
