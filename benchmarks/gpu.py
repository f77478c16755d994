"""Paper-scale cost on one GPU: the engine's own training step, pool sampling and FID features, for
SD v1-4's architecture with random weights at 512 px.

    python benchmarks/gpu.py [--tiny | --quick] [--budget-s S] [--sections train,sample,fid,lora]

Prints one JSON line as each section ends (a run cut short still reports what it measured) and, last,
one line with every figure (``"section": "all"``). Sections:

env     torch / transformers / diffusers versions, where diffusers came from, the device, its bf16
        peak, and which of ray, mlflow, pydantic, optuna, torch_fidelity got imported (none may be).
train   ``fairskin.diffusion.step`` as the Ray Train worker runs it (float32 weights, bf16 autocast,
        the paper's batch of 8, AdamW, gradient clip): images/s, FLOP per step (counted with
        ``torch.utils.flop_counter.FlopCounterMode`` on one step) and MFU for vanilla, CBDM gamma > 0
        (FLOP floor 2.0x vanilla) and gamma = 0 (floor 1.33x), and vanilla with encode-every-step
        (``cache_latents=false``) against cached latents. Steps are timed round-robin.
sample  ``fairskin.diffusion.sampler.generate_images`` (the pool code) on a ``StableDiffusionPipeline``
        of the random parts, PNDM, guidance 7.5, batch 8: images/s at 50 and 25 steps, in fp32, bf16
        and fp16 weights, and the UNet FLOP per image-step.
fid     ``fairskin.metrics.features.classifier_forward`` (the FID feature path) of the paper's ViT-B/16
        (random weights, 224 px) on 512 px uint8 images: images/s in fp32 (the engine's) and bf16.
lora    the same step for the whole UNet and for LoRA adapters (rank 4 on to_k/to_q/to_v/to_out.0,
        the base frozen: ``fairskin.methods.lora``'s recipe, which is diffusers' example's) at the paper's
        shape: peak GPU memory during the steps (weights, gradients, AdamW moments, activations), step
        time and trainable parameters of each, and their ratios; whether LoRA fits a 24 GB GPU.

Goals the figures are read against: MFU >= 45 % for the vanilla step, a CBDM step within 5 % of its
FLOP floor. Without CUDA (or with ``--tiny``) every section runs at tiny size (an SD-shaped model of a
few channels at 64 px, a tiny ViT) through the same functions and dtypes, in about a minute on CPU.

The device machine has torch, transformers, safetensors and accelerate but no diffusers and no
network: when ``import diffusers`` fails, the wheels in ``benchmarks/wheels/`` (fetched beforehand by
``make gpu-wheels``: diffusers at the pinned version, with requests and Pillow that diffusers needs and
transformers does not, and peft for the lora section) are unpacked to a temporary folder and appended to
``sys.path``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

T0 = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
WHEELS = Path(__file__).resolve().with_name("wheels")
sys.path.insert(0, str(REPO))

FORBIDDEN = ("ray", "mlflow", "pydantic", "optuna", "torch_fidelity")  # absent on the device machine
PEAK_BF16_DENSE = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12}
GOAL_MFU = 0.45
GOAL_CBDM_GAP = 0.05
FLOOR_CBDM_GAMMA_POS = 2.0
FLOOR_CBDM_GAMMA0 = 4.0 / 3.0
FIGURES: dict = {}


def emit(section: str, figures: dict) -> None:
    """Print one section's JSON line (and keep its figures for the last line)."""
    FIGURES.update(figures)
    line = {"section": section, **figures, "elapsed_s": round(time.perf_counter() - T0, 1)}
    print(json.dumps(line, default=_jsonable), flush=True)


def _jsonable(value):
    return round(value, 6) if isinstance(value, float) else str(value)


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    return value


# --------------------------------------------------------------------------- diffusers from a wheel


def _wheel_fits(wheel: Path) -> bool:
    """A pure-Python wheel, or a binary one built for this interpreter (cpXY)."""
    tags = wheel.stem.split("-")[-3:]
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return tags[0] in ("py3", f"py{sys.version_info.major}{sys.version_info.minor}", py) and (
        tags[1] in ("none", "abi3", py)
    )


def import_diffusers() -> str:
    """Import diffusers; when that fails, unpack ``benchmarks/wheels/*.whl`` and try again. Returns
    where it came from."""
    try:
        import diffusers  # noqa: F401

        return "installed"
    except ImportError as exc:
        first = exc
    for name in [m for m in sys.modules if m == "diffusers" or m.startswith("diffusers.")]:
        del sys.modules[name]
    wheels = sorted(w for w in WHEELS.glob("*.whl") if _wheel_fits(w))
    if not any(w.name.startswith("diffusers-") for w in wheels):
        raise SystemExit(
            f"diffusers cannot be imported ({first}) and {WHEELS} holds no diffusers wheel: "
            "run `make gpu-wheels` where pip reaches PyPI and carry benchmarks/wheels/ along"
        )
    target = Path(tempfile.mkdtemp(prefix="fairskin-wheels-"))
    atexit.register(shutil.rmtree, target, True)
    used = []
    for wheel in wheels:
        if wheel.name.lower().startswith("pillow-") and importlib.util.find_spec("PIL") is not None:
            continue  # the machine's own Pillow
        folder = target / wheel.stem
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
        sys.path.append(str(folder))  # appended: a package the machine has wins over the wheel's
        used.append(wheel.name)
    importlib.invalidate_caches()
    import diffusers  # noqa: F811

    origin = Path(diffusers.__file__).resolve()
    came_from = next((w for w in used if (target / Path(w).stem).resolve() in origin.parents), "installed")
    return f"{came_from} (unpacked: {' '.join(used)})"


# --------------------------------------------------------------------------- helpers


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> float:
    """FLOP of one call of ``fn`` (matmuls, convolutions and attention, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def peak_flops(device) -> tuple[str, float | None]:
    import torch

    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in sorted(PEAK_BF16_DENSE.items(), key=lambda kv: -len(kv[0])) if k in name), None)


class Budget:
    """Seconds left of the run; a measurement that would not fit is skipped and said so."""

    def __init__(self, seconds: float):
        self.deadline = T0 + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


# --------------------------------------------------------------------------- sizes


def sizes(tiny: bool) -> SimpleNamespace:
    if tiny:
        return SimpleNamespace(
            image=64,
            batch=4,
            rows=8,
            warmup=0,
            rounds=3,
            sample_batch=2,
            sample_steps=(50, 25),
            fid_images=64,
            fid_batch=32,
            vit_image=32,
        )
    return SimpleNamespace(
        image=512,
        batch=8,
        rows=32,
        warmup=3,
        rounds=10,
        sample_batch=8,
        sample_steps=(50, 25),
        fid_images=1024,
        fid_batch=256,
        vit_image=224,
    )


def build_parts(tiny: bool, image: int, device):
    from fairskin.diffusion.models import build_sd, sd14_configs, sd_shaped_tiny_configs

    configs = sd_shaped_tiny_configs(image) if tiny else sd14_configs()
    return build_sd(configs, seed=0, device=device)


# --------------------------------------------------------------------------- sections


def train_section(parts, sz, device, peak, budget: Budget) -> dict:
    """The worker's step (``gather_latents`` -> ``draw_step_inputs`` -> ``train_step``), paper settings."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler

    from fairskin.diffusion.models import encode_prompts
    from fairskin.diffusion.step import autocast_dtype, draw_step_inputs, gather_latents, step_generator, train_step

    scheduler = DDPMScheduler.from_config(parts.noise_scheduler.config)  # as the worker reads the SD folder's
    unet = parts.unet.to(device).train()
    vae = parts.vae.to(device).eval().requires_grad_(False)
    text_encoder = parts.text_encoder.to(device)
    cond_table = encode_prompts(
        parts.tokenizer, text_encoder, [f"group{g} people disease{d}" for g in range(3) for d in range(5)] + [""]
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-7)  # the paper's lr; constant schedule
    autocast = autocast_dtype("bf16")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (sz.rows, sz.image, sz.image, 3), dtype=np.uint8)
    # The driver's cache: both flips of every image, as cache_training_set makes them (float32 on the host).
    with torch.no_grad():
        from fairskin.diffusion.step import encode_latents, pixels_to_tensor

        chunks = []
        for i in range(0, sz.rows, sz.batch):
            x = pixels_to_tensor(pixels[i : i + sz.batch]).to(device)
            z = encode_latents(vae, torch.stack([x, x.flip(-1)], 1).flatten(0, 1))
            chunks.append(z.unflatten(0, (len(x), 2)).float().cpu().numpy())
    cached = {"latents": np.concatenate(chunks)}
    raw = {"pixels": pixels}
    subclass_of_row = torch.from_numpy(rng.integers(0, 15, sz.rows))
    weights = torch.ones(sz.batch, device=device)
    kinds = {
        "vanilla": (cached, False, 0.25),
        "cbdm": (cached, True, 0.25),
        "cbdm_g0": (cached, True, 0.0),
        "encode": (raw, False, 0.25),
    }
    counter = {"step": 0}

    def step(kind: str):
        arrays, use_cbdm, gamma = kinds[kind]
        counter["step"] += 1
        rows = rng.integers(0, sz.rows, sz.batch)
        flips = rng.integers(0, 2, sz.batch)
        latents = gather_latents(arrays, rows, flips, vae if arrays is raw else None, device)
        draws = draw_step_inputs(
            cond_table,
            subclass_of_row[rows],
            latents.shape,
            shared=step_generator(0, counter["step"]),
            local=step_generator(0, counter["step"], 0),
            prompt_drop_prob=0.0,  # a dropped prompt skips the regulariser: time CBDM itself
            use_cbdm=use_cbdm,
            include_self=True,
            num_train_timesteps=scheduler.config.num_train_timesteps,
            device=device,
        )
        out, _, _ = train_step(
            unet,
            optimizer,
            None,
            scheduler,
            latents,
            draws,
            weights,
            use_cbdm=use_cbdm,
            tau=1.0,
            gamma=gamma,
            autocast=autocast,
            max_grad_norm=1.0,
        )
        if not math.isfinite(out.noise):
            raise FloatingPointError(f"{kind}: non-finite loss")

    figures: dict = {
        "train_batch": sz.batch,
        "train_image_size": sz.image,
        "train_setup": "fp32 weights, bf16 autocast, AdamW, clip 1.0, no EMA, no grad checkpointing",
    }
    flops = {}
    for kind in kinds:
        step(kind)  # warm-up (kernels, allocator), then one counted step
        flops[kind] = count_flops(lambda: step(kind))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(sz.warmup):
        for kind in kinds:
            step(kind)
    times: dict = {k: [] for k in kinds}
    for r in range(sz.rounds):
        if r and budget.left() < 60:
            figures["train_rounds_cut_by_budget"] = r
            break
        for kind in kinds:
            sync(device)
            t = time.perf_counter()
            step(kind)
            sync(device)
            times[kind].append(time.perf_counter() - t)
    per = {k: median(v) for k, v in times.items()}
    for kind in kinds:
        figures[f"train_images_per_s_{kind}"] = sz.batch / per[kind]
        figures[f"train_step_s_{kind}"] = per[kind]
        figures[f"train_tflop_per_step_{kind}"] = flops[kind] / 1e12
        figures[f"train_mfu_{kind}"] = flops[kind] / per[kind] / peak if peak else None
    figures["train_tflop_per_image_vanilla"] = flops["vanilla"] / sz.batch / 1e12
    for kind, floor, key in (("cbdm", FLOOR_CBDM_GAMMA_POS, "gamma_pos"), ("cbdm_g0", FLOOR_CBDM_GAMMA0, "gamma0")):
        ratio = per[kind] / per["vanilla"]
        figures[f"ratio_cbdm_vs_vanilla_{key}"] = ratio
        figures[f"floor_cbdm_{key}"] = floor
        figures[f"flop_ratio_cbdm_vs_vanilla_{key}"] = flops[kind] / flops["vanilla"]
        figures[f"gap_cbdm_{key}_vs_floor"] = ratio / floor - 1.0
    figures["ratio_encode_vs_cached"] = per["encode"] / per["vanilla"]
    figures["flop_ratio_encode_vs_cached"] = flops["encode"] / flops["vanilla"]
    figures["goal_mfu"], figures["goal_cbdm_gap"] = GOAL_MFU, GOAL_CBDM_GAP
    if device.type == "cuda":
        figures["train_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    optimizer.state.clear()  # free the Adam moments before the sampling section (step() still closes over it)
    unet.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {k: _round(v) for k, v in figures.items()}


def sample_section(parts, sz, device, peak, budget: Budget) -> dict:
    """``generate_images`` (the pool code) with PNDM + CFG 7.5 in fp32, bf16 and fp16 weights."""
    import torch

    from fairskin.diffusion.sampler import generate_images, make_scheduler

    pipe = parts.pipeline(scheduler=make_scheduler("pndm", parts.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.eval()
    prompt = "group0 people disease0"
    seeds = list(range(sz.sample_batch))

    def run(steps: int):
        cfg = SimpleNamespace(inference_steps=steps, guidance_scale=7.5)
        return generate_images(pipe, prompt, seeds, cfg, sz.image, sz.image)

    figures: dict = {"sample_batch": sz.sample_batch, "sample_scheduler": "pndm", "sample_guidance": 7.5}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        pipe.to(device=device, dtype=dtype)
        if name == "fp32":  # FLOP per image-step of the UNet with CFG (2 UNet images), and per image otherwise
            one, two = count_flops(lambda: run(1)), count_flops(lambda: run(2))
            per_step = (two - one) / sz.sample_batch
            figures["sample_tflop_per_image_step"] = per_step / 1e12
            figures["sample_tflop_per_image_fixed"] = (one / sz.sample_batch - per_step) / 1e12
        run(2)  # warm-up
        for steps in sz.sample_steps:
            key = f"{name}_{steps}"
            if budget.left() < 30:
                figures[f"sample_images_per_s_{key}"] = None
                figures.setdefault("sample_skipped_by_budget", []).append(key)
                continue
            sync(device)
            t = time.perf_counter()
            images = run(steps)
            sync(device)
            seconds = time.perf_counter() - t
            figures[f"sample_images_per_s_{key}"] = sz.sample_batch / seconds
            figures[f"sample_blank_images_{key}"] = int(sum(float(im.std()) == 0.0 for im in images))
            if peak and "sample_tflop_per_image_step" in figures:
                flop = (
                    sz.sample_batch
                    * (steps * figures["sample_tflop_per_image_step"] + figures["sample_tflop_per_image_fixed"])
                    * 1e12
                )
                figures[f"sample_mfu_vs_bf16_peak_{key}"] = flop / seconds / peak
    pipe.to(device=device, dtype=torch.float32)
    return {k: _round(v) for k, v in figures.items()}


def fid_section(sz, device, budget: Budget) -> dict:
    """The FID feature path (``classifier_forward``) of the paper's ViT-B/16 on 512 px uint8 images."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from fairskin.metrics.features import classifier_forward

    labels = 5
    if sz.vit_image == 224:
        config = ViTConfig(image_size=224, num_labels=labels)  # ViT-B/16 (google/vit-base-patch16-224's shape)
    else:
        from fairskin.classify.models import TINY_VIT

        config = ViTConfig(image_size=sz.vit_image, num_labels=labels, **TINY_VIT)
    torch.manual_seed(0)
    with torch.device(device):
        model = ViTForImageClassification(config)
    model.eval()
    figures: dict = {
        "fid_model": f"ViT {config.hidden_size}x{config.num_hidden_layers} at {sz.vit_image} px",
        "fid_input_px": sz.image,
        "fid_batch": sz.fid_batch,
    }
    batches = [
        torch.randint(0, 256, (sz.fid_batch, 3, sz.image, sz.image), dtype=torch.uint8)
        for _ in range(max(1, sz.fid_images // sz.fid_batch))
    ]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(dtype=dtype)
        if budget.left() < 15:
            figures[f"fid_images_per_s_{name}"] = None
            continue
        classifier_forward(model, batches[0], sz.vit_image)  # warm-up
        sync(device)
        t = time.perf_counter()
        for batch in batches:
            features, _ = classifier_forward(model, batch, sz.vit_image)
        sync(device)
        figures[f"fid_images_per_s_{name}"] = len(batches) * sz.fid_batch / (time.perf_counter() - t)
        figures["fid_feature_dim"] = int(features.shape[1])
    return {k: _round(v) for k, v in figures.items()}


# --------------------------------------------------------------------------- main


def lora_section(parts, sz, device, peak, budget: Budget) -> dict:
    """The training step of the whole UNet against LoRA adapters on it, one after the other on the same UNet,
    each with its own AdamW (the full one's moments freed first), peak memory reset before each."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from fairskin.diffusion.models import encode_prompts
    from fairskin.diffusion.step import autocast_dtype, draw_step_inputs, step_generator, train_step

    scheduler = DDPMScheduler.from_config(parts.noise_scheduler.config)
    unet = parts.unet.to(device).train()
    text_encoder = parts.text_encoder.to(device)
    cond_table = encode_prompts(
        parts.tokenizer, text_encoder, [f"group{g} disease{d}" for g in range(3) for d in range(5)] + [""]
    )
    latent = (unet.config.in_channels, sz.image // 8, sz.image // 8)
    rng = np.random.default_rng(0)
    latents = torch.randn((sz.batch, *latent), generator=torch.Generator().manual_seed(0)).to(device)
    weights = torch.ones(sz.batch, device=device)
    counter = {"step": 0}

    def step(optimizer) -> None:
        counter["step"] += 1
        draws = draw_step_inputs(
            cond_table,
            torch.from_numpy(rng.integers(0, 15, sz.batch)),
            latents.shape,
            shared=step_generator(0, counter["step"]),
            local=step_generator(0, counter["step"], 0),
            prompt_drop_prob=0.0,
            use_cbdm=False,
            include_self=True,
            num_train_timesteps=scheduler.config.num_train_timesteps,
            device=device,
        )
        out, _, _ = train_step(
            unet, optimizer, None, scheduler, latents, draws, weights,
            use_cbdm=False, tau=1.0, gamma=0.0, autocast=autocast_dtype("bf16"), max_grad_norm=1.0,
        )  # fmt: skip
        if not math.isfinite(out.noise):
            raise FloatingPointError("lora section: non-finite loss")

    def measure(kind: str) -> None:
        trainable = [p for p in unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        step(optimizer)  # warm-up; AdamW's moments exist from here
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for r in range(sz.rounds):
            if r and budget.left() < 30:
                figures[f"lora_rounds_cut_by_budget_{kind}"] = r
                break
            sync(device)
            t = time.perf_counter()
            step(optimizer)
            sync(device)
            times.append(time.perf_counter() - t)
        figures[f"lora_step_s_{kind}"] = median(times)
        figures[f"lora_trainable_parameters_m_{kind}"] = sum(p.numel() for p in trainable) / 1e6
        figures[f"lora_peak_memory_gb_{kind}"] = (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        )
        optimizer.state.clear()
        unet.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    figures: dict = {
        "lora_setup": f"batch {sz.batch}, {sz.image} px, fp32 weights, bf16 autocast, AdamW, no grad checkpointing",
        "lora_rank": 4,
    }
    unet.requires_grad_(True)
    measure("full")
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    measure("lora")
    figures["ratio_lora_vs_full_step_s"] = figures["lora_step_s_lora"] / figures["lora_step_s_full"]
    if device.type == "cuda":
        figures["ratio_lora_vs_full_peak_memory"] = (
            figures["lora_peak_memory_gb_lora"] / figures["lora_peak_memory_gb_full"]
        )
        figures["lora_fits_24gb"] = figures["lora_peak_memory_gb_lora"] < 24
    return {k: _round(v) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tiny", "--quick", action="store_true", dest="tiny", help="tiny sizes on any device (implied without CUDA)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds for the whole run (default 200 on a GPU, 300 tiny); measurements that would "
        "not fit are skipped and named",
    )
    parser.add_argument("--sections", default="train,sample,fid,lora")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: 1 without CUDA, where the tiny model's small ops gain nothing "
        "from more and a shared machine's load makes several threads slow; else torch's)",
    )
    args = parser.parse_args()
    wanted = [s for s in args.sections.split(",") if s]
    unknown = set(wanted) - {"train", "sample", "fid", "lora"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")

    env: dict = {"python": sys.version.split()[0]}
    try:  # a machine that cannot even build the model still gets its JSON lines, saying why
        import torch
        import transformers

        env.update(torch=torch.__version__, transformers=transformers.__version__)
        env["diffusers_source"] = import_diffusers()
        import diffusers

        diffusers.utils.logging.set_verbosity_error()  # dtype-cast advice, once per .to(): not figures
        env["diffusers"] = diffusers.__version__
        cuda = torch.cuda.is_available()
        if args.threads or not cuda:
            torch.set_num_threads(args.threads or 1)
        tiny = args.tiny or not cuda
        device = torch.device("cuda" if cuda else "cpu")
        budget = Budget(args.budget_s or (300 if tiny else 200))  # tiny: nothing to cut, only a guard
        name, peak = peak_flops(device)
        sz = sizes(tiny)
        env.update(
            {
                "mode": ("tiny " if tiny else "") + ("cuda" if cuda else "cpu"),
                "device": name,
                "note": None
                if cuda
                else "no CUDA device: the tiny CPU version of every section (same functions, dtypes)",
                "peak_bf16_flops": peak,
                "threads": torch.get_num_threads(),
            }
        )
        parts = build_parts(tiny, sz.image, device)
        env["unet_parameters_m"] = round(sum(p.numel() for p in parts.unet.parameters()) / 1e6, 2)
    except (Exception, SystemExit) as exc:
        env["env_error"] = f"{type(exc).__name__}: {exc}"[:500]
        env["forbidden_modules_imported"] = [m for m in FORBIDDEN if m in sys.modules]
        emit("env", env)
        emit("all", dict(FIGURES))
        sys.exit(1)
    env["forbidden_modules_imported"] = [m for m in FORBIDDEN if m in sys.modules]
    emit("env", env)
    sections = {
        "train": lambda: train_section(parts, sz, device, peak, budget),
        "sample": lambda: sample_section(parts, sz, device, peak, budget),
        "fid": lambda: fid_section(sz, device, budget),
        "lora": lambda: lora_section(parts, sz, device, peak, budget),
    }
    for section in wanted:
        if budget.left() < 20:
            emit(section, {f"{section}_skipped": "budget"})
            continue
        started = time.perf_counter()
        try:
            figures = sections[section]()
        except Exception as exc:  # report and go on: a later section may still measure
            figures = {f"{section}_error": f"{type(exc).__name__}: {exc}"[:500]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        figures[f"{section}_seconds"] = round(time.perf_counter() - started, 1)
        emit(section, figures)
    FIGURES["forbidden_modules_imported"] = [m for m in FORBIDDEN if m in sys.modules]
    emit("all", dict(FIGURES))
    if any(k.endswith("_error") for k in FIGURES):
        sys.exit(1)


if __name__ == "__main__":
    main()
