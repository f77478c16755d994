"""Does sampling move fidelity? One finished generator's pools under several sampling settings, same seeds.

    python benchmarks/sampling_settings.py --runs-root RUNS [--generator vanilla] [--pool P]
                                           [--settings "generation.guidance_scale=5;generation.scheduler=dpm"]
                                           [--quick]

On a runs root where ``prepare``, ``finetune`` and ``judge`` are done (e.g. the ``study`` preset's, after
``benchmarks/controls.py``), this loads one fine-tuned generator (``<finetune stage>/<generator>/pipeline``)
and samples a pool of P images per subclass under each setting: the preset's own sampling first, then each
``;``-separated setting (space-separated ``generation.*`` overrides of the preset). Every pool uses the same
per-image seeds (:func:`fairskin.tune.generator.generate_pool`), so the settings differ only in how they
sample. Each is scored as ``benchmarks/noise_schedule.py`` scores its candidates: skin-tone agreement and
the judge's disease accuracy, overall and per group.

Why: issue 13's disease target (the judge's accuracy on vanilla's pools >= 0.5) missed by 0.02 in the
study's run 4; guidance, steps and sampler are free at training time, so they are checked before the base.
A pool's share has a standard error of about sqrt(0.25 / (15 P)) (0.03 at P = 16): these rank settings.
``--quick``: P = 2, the preset's sampling and the first two settings (a check that it runs, not a
measurement). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity_ceiling import _one  # noqa: E402
from pool_scores import PoolScorer  # noqa: E402

from fairskin.config import build_config  # noqa: E402
from fairskin.diffusion.models import load_sd  # noqa: E402
from fairskin.tune.generator import generate_pool  # noqa: E402

DEFAULT_SETTINGS = (
    "generation.guidance_scale=5",
    "generation.guidance_scale=7.5",
    "generation.inference_steps=40",
    "generation.scheduler=dpm",
    "generation.scheduler=dpm generation.inference_steps=40",
    "generation.scheduler=euler",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-root", required=True, type=Path)
    parser.add_argument("--preset", default="study", help="the sampling the settings override (default: study)")
    parser.add_argument("--finetune", help="a finished finetune stage folder (default: the only one under the root)")
    parser.add_argument("--judge", help="a finished judge stage folder (default: the only one under the root)")
    parser.add_argument("--generator", default="vanilla", help="a generator folder in the finetune stage")
    parser.add_argument("--pool", type=int, default=16, help="images per subclass in each pool")
    parser.add_argument(
        "--settings",
        default=";".join(DEFAULT_SETTINGS),
        help="';'-separated settings, each space-separated generation.* overrides",
    )
    parser.add_argument("--seed", type=int, default=1234, help="the pools' seed (the same for every setting)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(";") if s.strip()]
    per_subclass = 2 if args.quick else args.pool
    if args.quick:
        settings = settings[:2]
    bad = [o for s in settings for o in s.split() if not o.startswith("generation.") or "=" not in o]
    if bad:
        parser.error(f"--settings: {bad} are not generation.<field>=<value> overrides")
    torch.set_num_threads(args.threads)

    config = build_config(args.preset)
    configs = {"preset": config, **{s: build_config(args.preset, overrides=s.split()) for s in settings}}
    folder = _one(args.runs_root, "finetune-*", args.finetune, "--finetune") / args.generator / "pipeline"
    if not folder.is_dir():
        parser.error(f"--generator: no pipeline at {folder}; expected one of the finetune stage's generator folders")
    scorer = PoolScorer.from_runs_root(args.runs_root, config, args.judge)
    parts = load_sd(str(folder))

    figures: dict[str, object] = {"generator": args.generator, "pool_per_subclass": per_subclass}
    for label, setting in configs.items():
        start = time.perf_counter()
        pixels, meta = generate_pool(parts, parts.unet, setting, per_subclass, args.seed, "cpu")
        seconds = time.perf_counter() - start
        kept = scorer.score(pixels, meta)
        figures[label] = {**kept, "seconds": round(seconds, 1)}
        per_group = " / ".join(f"{kept.get(f'judge_accuracy_generated_{g}', float('nan')):.3f}" for g in scorer.groups)
        print(
            f"{label:>55}: judge accuracy {kept['judge_accuracy_generated']:.3f} ({per_group}), skin-tone "
            f"agreement {kept['skin_tone_agreement']:.3f}, {seconds:.0f} s",
            flush=True,
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
