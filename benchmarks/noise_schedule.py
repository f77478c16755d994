"""Does the base follow the prompt? Noise schedules and loss weightings of the base UNet, side by side.

    python benchmarks/noise_schedule.py --runs-root RUNS [--base FOLDER] [--judge FOLDER] [--steps N]
                                        [--pool P] [--candidates sd,zero_snr,...] [--quick]

On a runs root where ``prepare``, ``base`` and ``judge`` are done (e.g. the ``study`` preset's), this
keeps the base's trained VAE and text encoder and trains a fresh base UNet twice, from the same initial
weights, on the same rows, noise and timesteps (the base stage's ``train_base_unet``, ``--steps`` steps),
once per candidate (default ``sd,zero_snr``):

- ``sd``: SD's scaled-linear betas, epsilon prediction (``diffusion.zero_terminal_snr = false``);
- ``zero_snr``: the betas rescaled to zero terminal SNR, v-prediction, trailing timesteps
  (``diffusion.zero_terminal_snr = true``; Lin et al. 2024);
- ``sd_min_snr5`` / ``zero_snr_min_snr5``: the same with Min-SNR-gamma loss weighting, gamma = 5
  (``diffusion.base_snr_gamma = 5``; Hang et al. 2023);
- ``base``: the base's own UNet as it is, not trained again (the reference a candidate must beat, when
  ``--steps`` is the base's own step count).

Each then samples a pool of P images per subclass (the pipeline's per-image seeds, the preset's sampler)
scored with the evaluate stage's code: skin-tone agreement (the share of images whose healthy-skin ITA is
nearest the prompted group's real median) and the judge's disease accuracy, overall and per group.

Why it matters: with SD's betas x_T keeps sqrt(alpha_bar_T) = 0.068 of the latent; for 16 x 16 latents
the noise's per-channel mean has std 1/16, so the latent's mean colour stays readable at every timestep,
the UNet learns to copy the skin tone from the noise, and sampling from pure noise draws a mid tone
whatever the prompt says. ``--quick``: 30 steps and P = 2 (a check that it runs, not a measurement).
The last line printed is one JSON object.
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
from fairskin.data.stream import decode_local  # noqa: E402
from fairskin.diffusion.base import subclass_prompts, train_base_unet  # noqa: E402
from fairskin.diffusion.models import build_tiny_sd, load_sd  # noqa: E402
from fairskin.tune.generator import generate_pool  # noqa: E402

# name -> (zero terminal SNR, Min-SNR gamma or None)
CANDIDATES = {
    "base": (None, None),
    "sd": (False, None),
    "zero_snr": (True, None),
    "sd_min_snr5": (False, 5.0),
    "zero_snr_min_snr5": (True, 5.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-root", required=True, type=Path)
    parser.add_argument("--preset", default="study", help="the sampler, prompts and sizes (default: study)")
    parser.add_argument("--base", help="a finished base stage folder (default: the only one under the root)")
    parser.add_argument("--judge", help="a finished judge stage folder (default: the only one under the root)")
    parser.add_argument("--steps", type=int, default=1000, help="base UNet steps per schedule")
    parser.add_argument("--pool", type=int, default=8, help="images per subclass in each pool")
    parser.add_argument(
        "--candidates",
        default="sd,zero_snr",
        help=f"comma-separated, from {', '.join(CANDIDATES)} (default: sd,zero_snr)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps, per_subclass = (30, 2) if args.quick else (args.steps, args.pool)
    chosen = [name.strip() for name in args.candidates.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(CANDIDATES))
    if unknown or not chosen:
        parser.error(f"--candidates: {unknown or 'none given'} not known; expected names from {sorted(CANDIDATES)}")
    torch.set_num_threads(args.threads)

    config = build_config(args.preset)
    d = config.diffusion
    shards = _one(args.runs_root, "prepare-*", None, "--runs-root") / "shards"
    base = _one(args.runs_root, "base-*", args.base, "--base") / "pipeline"
    scorer = PoolScorer.from_runs_root(args.runs_root, config, args.judge)
    train = decode_local(shards, splits=["train"])
    prompts = subclass_prompts(d.prompt_template, train.groups, train.diseases)

    figures: dict[str, float] = {"steps": steps, "pool_per_subclass": per_subclass}
    for label in chosen:
        parts = load_sd(str(base))  # the base's trained VAE (and its fitted scaling factor) and text encoder
        start = time.perf_counter()
        if label != "base":
            zero_snr, snr_gamma = CANDIDATES[label]
            fresh = build_tiny_sd(
                image_size=train.pixels.shape[1], seed=config.runtime.seed, zero_terminal_snr=zero_snr
            )
            parts.unet, parts.noise_scheduler = fresh.unet, fresh.noise_scheduler
            train_base_unet(
                parts,
                train,
                prompts,
                steps,
                d.global_batch_size,
                config.runtime.seed,
                lr=d.learning_rate,
                progress=True,
                snr_gamma=snr_gamma,
            )
        figures[f"train_seconds_{label}"] = round(time.perf_counter() - start, 1)
        pixels, meta = generate_pool(parts, parts.unet, config, per_subclass, config.runtime.seed, "cpu")
        for key, value in scorer.score(pixels, meta).items():
            figures[f"{key}_{label}"] = value
        print(
            f"{label:>17}: skin-tone agreement {figures[f'skin_tone_agreement_{label}']:.3f} "
            f"(worst group {figures[f'skin_tone_agreement_worst_group_{label}']:.3f}), judge accuracy "
            f"{figures[f'judge_accuracy_generated_{label}']:.3f}, "
            + (
                "the base's own UNet, not retrained"
                if label == "base"
                else f"{steps} steps in {figures[f'train_seconds_{label}']:.0f} s"
            ),
            flush=True,
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
