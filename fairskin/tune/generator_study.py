"""The generator study's trial kind (``trainable: generator``, issue 17): :class:`GeneratorKind`.

One trial = one fine-tune from the pipeline's base, scored on a small pool at every checkpoint
(:func:`fairskin.tune.generator.generator_trial`). The kind takes no pools: its
:class:`~fairskin.tune.generator.GeneratorSources` name the shards, base, judge and reference it reads
(the pipeline's stages: :func:`fairskin.tune.generator.generator_sources`). Its report adds the
fidelity / tau trade-off and the Pareto plots and ``report/best_variant.yaml``; its confirmations
re-fine-tune the chosen points and vanilla under new generator seeds (:func:`confirm_generators`).

Above the pipeline (its inputs come from the pipeline's stages): the classifier study
(:mod:`fairskin.tune.study`, :mod:`fairskin.tune.classifier`), which the pipeline runs, never imports it.
:func:`run_study` picks the kind from the space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fairskin.config import FairSkinConfig
from fairskin.tune import generator
from fairskin.tune.generator import GeneratorSources, generator_trial
from fairskin.tune.kinds import REPORT_DIR, StudyError, StudyResult
from fairskin.tune.spaces import ResolvedSpace, SearchSpace, load_space

BEST_VARIANT_FILE = "best_variant.yaml"  # report/: the best generator trial's diffusion.custom_variants entry


def generator_reports(config: FairSkinConfig, space: ResolvedSpace) -> int:
    """The most reports (checkpoints) a generator trial of ``space`` can make: ASHA's max_t."""
    steps = config.diffusion.max_steps
    dim = space.dim("diffusion.max_steps") or space.dim("variant.max_steps")
    if dim is not None:
        steps = int(max(dim.values) if dim.kind == "choice" else dim.high)
    steps = int(space.fixed_generator.get("max_steps", steps))
    return len(generator.checkpoint_steps(steps, config.diffusion.checkpoint_every))


def copy_best_variant(folder: Path, trial_id: str) -> Path | None:
    """Copy the best generator trial's ``variant.yaml`` to ``report/best_variant.yaml`` and return it
    (None when that trial wrote none). The file is a config file: ``--config report/best_variant.yaml
    "diffusion.variants=[vanilla, ..., trial_<id>]"`` takes the generator into the pipeline's ablation."""
    import shutil

    source = folder / generator.GENERATORS_DIR / generator.trial_variant_name(trial_id) / "variant.yaml"
    if not source.is_file():
        return None
    target = folder / REPORT_DIR / BEST_VARIANT_FILE
    shutil.copyfile(source, target)
    return target


def confirm_generators(
    config: FairSkinConfig,
    space: ResolvedSpace,
    folder: Path,
    points: list[dict[str, Any]],
    inputs,
    study: StudyResult,
    parent,
    tags: Mapping[str, str],
    pool_fps: Mapping[str, str],
    echo: Callable[[str], None],
) -> pd.DataFrame:
    """Re-fine-tune the chosen points (the best trial, the Pareto points) and vanilla under ``tune.confirm_seeds``
    new generator seeds (salts, :func:`fairskin.tune.confirm.confirm_salts`), score each on a pool of
    ``tune.confirm_pool_per_subclass`` images per subclass; write ``confirm/confirmed.csv`` and
    ``confirm/confirmed_tradeoff.png`` (also parent-run artifacts under ``confirm/``) and return the table
    (:func:`fairskin.tune.confirm.generator_confirmation_table`)."""
    from fairskin.config import VariantSpec
    from fairskin.diffusion.variants import salted_seed
    from fairskin.tune.confirm import (
        CONFIRM_DIR,
        confirm_salts,
        generator_confirmation_table,
        generator_points,
        run_confirmations,
    )

    tune_config, d = config.tune, config.diffusion
    per_subclass = tune_config.confirm_pool_per_subclass or tune_config.generator_pool_per_subclass
    out_dir = folder / CONFIRM_DIR
    _check_confirm_pool_size(out_dir, per_subclass)
    vanilla = d.variant("vanilla").model_dump(mode="json", exclude_none=True)
    jobs = generator_points(
        points, space.fixed_generator, vanilla, int(space.fixed.get("seed", 0)), generator.trial_variant_name
    )
    salts = confirm_salts(d.repeat_seeds, tune_config.confirm_seeds)
    seed_of = {s: salted_seed(d.repeat_seeds[0], s) for s in salts}
    resources = {"CPU": tune_config.cpus_per_trial, "GPU": tune_config.gpus_per_trial}
    records = run_confirmations(
        folder,
        jobs,
        salts,
        inputs,
        resources=resources,
        parent=parent,
        tags=tags,
        pool_fingerprints=pool_fps,
        echo=echo,
        train=generator.confirm_generator,
        seed_key="seed_salt",
        unit="generator seed",
        extra_params=lambda job, salt: {
            "generator_seed": seed_of[salt],
            "search_seed": d.repeat_seeds[0],
            "pool_per_subclass": per_subclass,
        },
    )
    wanted = {j["trial_id"] for j in jobs}
    records = [r for r in records if r["trial_id"] in wanted and r["seed"] in seed_of]  # this run's points, salts
    settings = {
        j["trial_id"]: generator.settings_line(VariantSpec.model_validate(j["config"]["generator"])) for j in jobs
    }
    table = generator_confirmation_table(records, study.trials, space.metrics, space.modes, settings, seed_of)
    _write_confirmed(table, out_dir, study, parent, len(salts), per_subclass, echo)
    return table


def _check_confirm_pool_size(out_dir: Path, per_subclass: int) -> None:
    """:class:`StudyError` when ``confirm/results.json`` holds confirmations scored on pools of another size."""
    from fairskin.tune.confirm import RESULTS_FILE
    from fairskin.tune.mlflow_callback import read_json

    earlier = read_json(out_dir / RESULTS_FILE, [])
    other = sorted({r.get("params", {}).get("pool_per_subclass") for r in earlier} - {per_subclass})
    if other:
        raise StudyError(
            f"tune.confirm_pool_per_subclass: this run scores confirmation pools of {per_subclass} "
            f"images per subclass, but {out_dir / RESULTS_FILE} holds confirmations at {other}; "
            f"set tune.confirm_pool_per_subclass={other[0]}, or move that file away to redo them"
        )


def _write_confirmed(
    table: pd.DataFrame,
    out_dir: Path,
    study: StudyResult,
    parent,
    seeds: int,
    per_subclass: int,
    echo: Callable[[str], None],
) -> None:
    """``confirm/confirmed.csv`` and ``confirm/confirmed_tradeoff.png`` from the confirmation table, logged to
    the parent run under ``confirm/`` and added to the study's artifacts."""
    from fairskin.io import atomic_write_text
    from fairskin.tune.confirm import CONFIRMED_CSV, CONFIRMED_PLOT, plot_generator_confirmations

    atomic_write_text(out_dir / CONFIRMED_CSV, table.to_csv(index=False))
    plot = plot_generator_confirmations(
        table,
        out_dir / CONFIRMED_PLOT,
        f"{study.name}: chosen generators and vanilla re-fine-tuned under "
        f"{seeds} new generator seed(s), pools of {per_subclass} per subclass (95% CI over those seeds)",
    )
    for path in (out_dir / CONFIRMED_CSV, plot):
        parent.log_artifact(path, "confirm")
        study.artifacts.append(path)
    echo(f"confirmations: {out_dir / CONFIRMED_CSV}, {plot}")  # the CLI summary prints confirmed_lines(table)


def confirmed_lines(table: pd.DataFrame) -> list[str]:
    """One line per confirmed point of a generator study's confirmation table: each objective's
    confirmed mean [95% CI] (search-time value), and its paired difference from vanilla [95% CI]."""
    lines = []
    for point, part in table.groupby("point", sort=False):
        first = part.iloc[0]
        bits = []
        for _, row in part.iterrows():
            text = f"{row['metric']} {row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
            if pd.notna(row["search"]):
                text += f" (search {row['search']:.3f})"
            if pd.notna(row["diff_vs_vanilla"]):
                text += (
                    f", vs vanilla {row['diff_vs_vanilla']:+.3f} [{row['diff_low']:+.3f}, "
                    f"{row['diff_high']:+.3f}] {row['vs_vanilla']}"
                )
                if pd.notna(row["p_holm"]):
                    text += f" (p {row['p']:.3g}, Holm over the points {row['p_holm']:.3g})"
            bits.append(text)
        lines.append(
            f"confirmed {point} ({first['role']}; {first['settings']}; n={int(part['n'].max())} "
            f"generator seeds {first['generator_seeds']}): " + "; ".join(bits)
        )
    return lines


@dataclass(frozen=True)
class GeneratorKind:
    """The generator study's :class:`~fairskin.tune.kinds.TrialKind`, reading ``sources``."""

    sources: GeneratorSources

    name = "generator"
    trainable = staticmethod(generator_trial)
    keep_checkpoint = True  # a retried or restored trial continues from its last checkpoint
    confirm_grids = True  # every trial ran on one generator seed, grids included

    def resolve(self, config, spec, pools, real_shards, variant, trials):
        """The space checked through the typed config; no pools, the sources' shards (``pools``,
        ``real_shards`` and ``variant`` do not apply)."""
        from fairskin.tune.spaces import resolve_generator_space

        return resolve_generator_space(spec, config, trials=trials), {}, Path(self.sources.shards)

    def record(self) -> dict[str, Any]:
        return {"sources": {k: str(v) for k, v in vars(self.sources).items()}}

    def put_inputs(self, config, space, pools, real_shards, folder, fingerprints):
        return generator.put_generator_inputs(config, space, self.sources, folder)

    def reports(self, config: FairSkinConfig, space: ResolvedSpace) -> int:
        return generator_reports(config, space)

    def completed(self, trials: pd.DataFrame, config: FairSkinConfig) -> pd.DataFrame:
        return trials[trials["complete"].fillna(0) >= 1] if "complete" in trials else trials.iloc[0:0]

    def plots(self, config, name, report, space, done, front) -> list[Path]:
        if done.empty:
            return []
        from fairskin.tune.analysis import plot_generator_tradeoff, plot_pareto

        metrics, modes = list(space.metrics), list(space.modes)
        paths = [
            plot_generator_tradeoff(
                done,
                config.data.group_names,
                report / "tradeoff_by_tau.png",
                title=f"{name}: per-group fidelity against CBDM tau",
            )
        ]
        if len(metrics) >= 2:
            paths.append(
                plot_pareto(done, front, metrics, modes, report / "pareto_front.png", title=f"{name}: Pareto front")
            )
        return paths

    def best_variant(self, folder: Path, trial_id: str) -> Path | None:
        return copy_best_variant(folder, trial_id)

    confirm = staticmethod(confirm_generators)


def run_study(
    config: FairSkinConfig,
    space: str | Path | SearchSpace,
    pools: Mapping[str, Path],
    real_shards: Path,
    *,
    sources: GeneratorSources | None = None,
    **options,
) -> StudyResult:
    """:func:`fairskin.tune.study.run_study` of any space, with the kind the space names: a generator space
    (``trainable: generator``) runs :class:`GeneratorKind` over ``sources`` (required; ``pools`` and
    ``real_shards`` are ignored: the sources' shards are used), any other the classifier study.
    ``options``: :func:`fairskin.tune.study.run_study`'s keywords."""
    from fairskin.tune import study

    spec = space if isinstance(space, SearchSpace) else load_space(space)
    kind = None
    if spec.trainable == "generator":
        if sources is None:
            raise StudyError(
                f"space {spec.name!r} trains generators: pass the pipeline's sources "
                "(fairskin.tune.generator.generator_sources)"
            )
        kind = GeneratorKind(sources)
    return study.run_study(config, spec, pools, real_shards, kind=kind, **options)
