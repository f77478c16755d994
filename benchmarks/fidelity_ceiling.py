"""How much of the pools' fidelity can a generator keep through its VAE? The round-trip ceiling.

    python benchmarks/fidelity_ceiling.py --runs-root RUNS [--quick] [--base FOLDER] [--judge FOLDER]
                                          [--train-vae STEPS,STEPS,... [--vae-batch B] [--vae-lr LR]]

Every pool image is a decoded latent, so no generator built on a base's VAE can score better than
the VAE's own round trip of real images. On a runs root where ``prepare``, ``base`` and ``judge``
are done (e.g. the ``study`` preset's), this takes the held-out real images (val + test, never seen
by the base or the judge), encodes them with the base's VAE (posterior mean, as the fine-tune
caches latents), decodes them, and scores both sets with the evaluate stage's own code:

- the judge's disease accuracy, the unweighted mean over subclasses (as ``disease_fidelity`` uses);
- skin-tone agreement: each image's ITA (healthy skin) assigned to the group with the nearest real
  training median, the share assigned to its own group (the ``skin_tone_agreement`` rule).

If the round trip already loses most of the judge's accuracy, the VAE bounds disease fidelity and
the UNet is not the place to look; if it keeps it, the UNet (steps, width, conditioning) is.
``--train-vae 600,1500,3000``: instead of (besides) the base's VAE, train the base stage's tiny VAE
from the same initial weights (``build_tiny_sd``, seed 0) on the prepared train split and measure the
ceiling after each number of steps (``train_tiny_vae`` afresh for each count, seed 0, the learning rate
decaying over that count: each equals the base stage's training at ``runtime.seed=0`` when
``--vae-batch`` and ``--vae-lr`` are its batch and rate).
``--quick``: at most 20 held-out images per subclass. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairskin.classify.judge import load_judge  # noqa: E402
from fairskin.data.shards import load_decoded  # noqa: E402
from fairskin.data.stream import decode_local  # noqa: E402
from fairskin.diffusion.step import pixels_to_tensor  # noqa: E402
from fairskin.metrics.generation import judge_accuracy, judge_predictions  # noqa: E402
from fairskin.metrics.skin_tone import ReferenceBands, image_ita  # noqa: E402


def _one(root: Path, pattern: str, given: str | None, flag: str) -> Path:
    if given:
        return Path(given)
    found = sorted(p for p in (root / "stages").glob(pattern) if (p / "_stage.json").is_file())
    if len(found) != 1:
        raise SystemExit(
            f"{root / 'stages'}: expected one finished {pattern} folder, found "
            f"{[p.name for p in found]}; name one with {flag}"
        )
    return found[0]


@torch.no_grad()
def vae_round_trip(vae, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the VAE's decode of its posterior mean, uint8 (N, H, W, 3)."""
    out = []
    for lo in range(0, len(pixels), batch):
        x = pixels_to_tensor(pixels[lo : lo + batch])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def ceiling(
    vae, judge, image_size: int, diseases, held_pixels, held_meta, bands, groups, label: str
) -> dict[str, float]:
    """Judge accuracy (mean over subclasses) and skin-tone agreement of ``vae``'s round trip of the held-out
    images (or of the images themselves when ``vae`` is None), overall and per group, keyed ``*_<label>``."""
    pixels = held_pixels if vae is None else vae_round_trip(vae, held_pixels)
    accuracy = judge_accuracy(judge_predictions(judge, pixels, image_size, diseases), held_meta, groups, diseases)
    own = bands.assign(image_ita(pixels)) == held_meta["group"].to_numpy()
    out = {
        f"judge_accuracy_{label}": round(subclass_mean(accuracy), 4),
        f"skin_tone_agreement_{label}": round(float(own.mean()), 4),
    }
    for g in groups:
        rows = held_meta["group"].to_numpy() == g
        out[f"judge_accuracy_{label}_{g}"] = round(subclass_mean(accuracy[accuracy["group"] == g]), 4)
        out[f"skin_tone_agreement_{label}_{g}"] = round(float(own[rows].mean()), 4)
    return out


def subclass_mean(table) -> float:
    return float(table["accuracy"].dropna().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-root", required=True)
    parser.add_argument("--base", default=None, help="a base stage folder (default: the runs root's only one)")
    parser.add_argument("--judge", default=None, help="a judge stage folder (default: the runs root's only one)")
    parser.add_argument("--prepare", default=None, help="a prepare stage folder (default: the runs root's only one)")
    parser.add_argument(
        "--reference",
        default=None,
        help="a reference stage folder (default: the runs root's only one; the judge may reuse it)",
    )
    parser.add_argument("--quick", action="store_true", help="at most 20 held-out images per subclass")
    parser.add_argument("--train-vae", default="", help="comma-separated step counts: train a fresh tiny VAE")
    parser.add_argument("--vae-batch", type=int, default=16, help="batch of --train-vae (the demo/study base's)")
    parser.add_argument("--vae-lr", type=float, default=1e-3, help="learning rate of --train-vae (the base's)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    root = Path(args.runs_root)
    base = _one(root, "base-*", args.base, "--base")
    judge_folder = _one(root, "judge-*", args.judge, "--judge")
    prepare = _one(root, "prepare-*", args.prepare, "--prepare")
    reference = _one(root, "reference-*", args.reference, "--reference")

    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(base / "pipeline" / "vae", use_safetensors=True, local_files_only=True).eval()
    judge, info = load_judge(judge_folder, reference)
    diseases = [judge.config.id2label[i] for i in range(len(judge.config.id2label))]
    image_size = int(judge.config.image_size)

    train = decode_local(prepare / "shards")  # the split the base and its VAE trained on
    held_pixels, held_meta = load_decoded(prepare / "shards", splits=info.real_splits)
    if args.quick:
        keep = held_meta.groupby(["group", "disease"]).head(20).index.to_numpy()
        held_pixels, held_meta = held_pixels[keep], held_meta.loc[keep].reset_index(drop=True)
    groups = sorted(held_meta["group"].unique())
    bands = ReferenceBands.from_real(image_ita(train.pixels), train.meta["group"].to_numpy())
    figures: dict[str, float | int | str] = {
        "base": base.name,
        "judge": judge_folder.name,
        "heldout_images": int(len(held_pixels)),
    }
    measured = ["real", "vae_roundtrip"]
    figures.update(ceiling(None, judge, image_size, diseases, held_pixels, held_meta, bands, groups, "real"))
    figures.update(ceiling(vae, judge, image_size, diseases, held_pixels, held_meta, bands, groups, "vae_roundtrip"))
    if args.train_vae:
        from fairskin.diffusion.base import train_tiny_vae
        from fairskin.diffusion.models import build_tiny_sd

        for target in (int(n) for n in args.train_vae.split(",")):
            # Fresh each time: the rate decays over the whole run, so a longer run is not a continued shorter one.
            fresh = build_tiny_sd(image_size=train.pixels.shape[1], seed=0).vae
            tic = time.time()
            train_tiny_vae(fresh, train, target, args.vae_batch, seed=0, lr=args.vae_lr)
            label = f"vae{target}"
            figures.update(ceiling(fresh, judge, image_size, diseases, held_pixels, held_meta, bands, groups, label))
            figures[f"{label}_train_s"] = round(time.time() - tic, 1)
            measured.append(label)
            print(f"trained {target} steps: judge accuracy {figures[f'judge_accuracy_{label}']:.3f}", flush=True)
    figures["judge_kept_by_vae"] = round(figures["judge_accuracy_vae_roundtrip"] / figures["judge_accuracy_real"], 4)
    print(f"held-out real images: {len(held_pixels)} ({info.description})")
    for label in measured:
        per_group = ", ".join(f"{g} {figures[f'judge_accuracy_{label}_{g}']:.3f}" for g in groups)
        tone = ", ".join(f"{g} {figures[f'skin_tone_agreement_{label}_{g}']:.3f}" for g in groups)
        print(
            f"{label:>14}: judge accuracy {figures[f'judge_accuracy_{label}']:.3f} ({per_group}); "
            f"skin-tone agreement {figures[f'skin_tone_agreement_{label}']:.3f} ({tone})"
        )
    print(f"the base's VAE keeps {figures['judge_kept_by_vae']:.0%} of the judge's accuracy on real images")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
