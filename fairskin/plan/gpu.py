"""GPU-hours at paper scale: from ``benchmarks/gpu.py``'s figures where a file of them is found, else the
README's FLOP cost model (40 % MFU on an H100, assumed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairskin.plan.cost_records import level_counts
from fairskin.plan.design import UnitCosts

GPU_FIGURES_FILE = "gpu_figures.jsonl"  # benchmarks/gpu.py's output saved under the runs root
# Paper-scale FLOP cost model (README, "Paper scale: cost and running on a GPU cluster").
PAPER_FLOP = {
    "train_per_image": 2.41e12,
    "sample_per_image_step": 2 * 0.80e12,
    "vit_forward": 35e9,
    "classifier_images": 9_600,
    "peak": 989e12,
    "mfu": 0.40,
}


def load_gpu_figures(path: Path | str) -> dict | None:
    """``benchmarks/gpu.py``'s figures from a file of its output (JSON lines): the ``"section": "all"``
    line, else every line merged. None when the file is missing or holds no JSON object."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    merged: dict = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            if value.get("section") == "all":
                return value
            merged.update(value)
    return merged or None


def gpu_costs(config, figures: Mapping[str, Any] | None) -> tuple[UnitCosts, str, list[str]]:
    """GPU-seconds per level unit at ``paper`` scale on one GPU (:class:`UnitCosts`), a status and notes.

    Sizes are the paper preset's (SD v1-4 at 512 px, steps x batch, 1,000 images per subclass at 50
    sampling steps, ViT-B/16 for 10 epochs on ~9,600 images); the variants, groups, diseases and
    tune space are ``config``'s (a CBDM-loss variant trains twice per step). From ``figures`` (a
    CUDA run of ``benchmarks/gpu.py``): train_images_per_s_vanilla / _cbdm, sample_images_per_s_fp32_50,
    fid_images_per_s_fp32 (a classifier trial: 3 x its forward per training image); each figure
    missing, and everything without ``figures``, from ``PAPER_FLOP`` at 40 % MFU of an H100's bf16
    peak (assumed). Status: "measured" or "assumed: <why>".
    """
    from fairskin.config import PRESETS, is_mix_control

    paper = PRESETS["paper"]()
    d, g, c = paper["diffusion"], paper["generation"], paper["classifier"]
    notes: list[str] = []
    usable = dict(figures or {})
    mode = str(usable.get("mode", ""))
    why = None
    if not figures:
        why = "no benchmarks/gpu.py figures"
    elif mode.startswith("tiny") or "cuda" not in mode:
        why = f"benchmarks/gpu.py figures are of its tiny mode ({mode or 'mode unknown'}), not paper scale"
        usable = {}
    rate = PAPER_FLOP["peak"] * PAPER_FLOP["mfu"]
    used, modelled = [], []

    def figure(key: str, flop_per_item: float) -> float:
        """Seconds per item: 1 / the measured items per second, else FLOP / (peak x MFU)."""
        value = usable.get(key)
        if isinstance(value, (int, float)) and value > 0:
            used.append(key)
            return 1.0 / float(value)
        modelled.append(key)
        return flop_per_item / rate

    counts = level_counts(config)
    images_ft = d["max_steps"] * d["global_batch_size"]
    c_ft = 0.0
    for name in config.diffusion.variants:
        if is_mix_control(name):
            continue
        cbdm = config.diffusion.variant(name).loss == "cbdm"
        c_ft += images_ft * figure(
            "train_images_per_s_cbdm" if cbdm else "train_images_per_s_vanilla",
            PAPER_FLOP["train_per_image"] * (2 if cbdm else 1),
        )
    images = g["images_per_subclass"] * len(config.data.groups) * len(config.data.diseases)
    sample = figure(
        f"sample_images_per_s_fp32_{g['inference_steps']}", PAPER_FLOP["sample_per_image_step"] * g["inference_steps"]
    )
    fid = figure("fid_images_per_s_fp32", PAPER_FLOP["vit_forward"])
    c_pool = images * (sample * counts["sampled_pools"] + fid * counts["pools"])
    c_cls = counts["trials"] * c["epochs"] * PAPER_FLOP["classifier_images"] * 3 * fid
    if why is None and modelled:
        why = f"benchmarks/gpu.py figures lack {sorted(set(modelled))}"
    status = (
        "measured"
        if why is None
        else (
            f"assumed: {why}; FLOP cost model (README 'Paper scale') at {PAPER_FLOP['mfu']:.0%} MFU of "
            f"{PAPER_FLOP['peak'] / 1e12:.0f} TFLOP/s bf16" + (f", measured {sorted(set(used))}" if used else "")
        )
    )
    if figures and not why:
        notes.append(
            f"GPU-hours from benchmarks/gpu.py on {usable.get('device', 'an unnamed GPU')}; a classifier "
            "trial as 3 x the ViT-B/16 forward of its fid section per training image"
        )
    return UnitCosts(c_ft, c_pool, c_cls), status, notes
