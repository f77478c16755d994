"""Fine-tune step costs, side by side in one run, each ratio beside its FLOP floor.

    python benchmarks/finetune_step.py [--quick] [--steps N] [--batch B] [--sd14] [--no-ray]

(a) CBDM step / vanilla step: gamma > 0 (h and h' both need gradients: floor 2.0 when
    compute-bound) and gamma = 0 (h' under no_grad: floor 1 + 1/3 = 1.33);
(b) Ray Train TorchTrainer steady-state throughput / a plain in-process loop (same tiny model,
    batch, threads), as interleaved repeats: median ratio with a 95 % t-interval; target >= 0.95;
(c) encode-every-step step / cached-latent step (at 512 px the VAE encoder costs 1.12 TFLOP per
    image against 2.41 TFLOP for a UNet training step: limit (1.12 + 2.41) / 2.41 = 1.47x).
(d) the tiny base UNet's step before base v3 / now: it encoded its batch every step with the VAE's
    weights still trainable (so the encoder's backward ran too) / it reads the once-encoded latents
    (``fairskin.diffusion.base.encode_training_latents``); the same as the cached step of (c).
(e) the base and a control base UNet (the ``study`` preset's two, batch 16, 64 px) trained one after the
    other on two threads (base v3, in-process) / side by side on one thread each (base v4: two processes,
    as the stages' Ray tasks run them): the time of N steps of both. A tiny UNet's step barely uses a
    second thread, so the ratio approaches 2 when the two processes do not slow each other.

CPU: the tiny SD. SD v1-4 at 512 px on a GPU (images/s, FLOP counted per step, MFU, the same
ratios) is ``benchmarks/gpu.py``, which times the engine's own step (``fairskin.diffusion.step``) with
float32 weights under bf16 autocast, as the fine-tune runs it. The last line printed is one JSON
object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fairskin.diffusion.step import StepDraws, train_step  # noqa: E402

UNET_TRAIN_FLOP_512 = 2.41e12
VAE_ENCODE_FLOP_512 = 1.12e12


def time_steps(step, n: int, warmup: int = 2, sync=lambda: None) -> float:
    """Median seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def time_interleaved(steps: dict, n: int, warmup: int = 2, sync=lambda: None) -> dict:
    """Median seconds per call of each step, measured round-robin (A, B, C, A, B, C, ...) so
    that drift in machine load hits every variant alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict = {k: [] for k in steps}
    for _ in range(n):
        for k, step in steps.items():
            sync()
            t = time.perf_counter()
            step()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def make_step(unet, scheduler, latents, cond, cond_other, kind: str, encode=None):
    """A closure running one optimizer step of ``kind`` in {vanilla, cbdm, cbdm_g0}: the fine-tune's own
    ``train_step`` (no autocast on CPU, as the smoke and demo presets)."""
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    b = latents.shape[0]
    use_cbdm = kind != "vanilla"

    def step():
        x = encode() if encode is not None else latents
        draws = StepDraws(
            False,
            cond,
            cond_other if use_cbdm else None,
            torch.randn(x.shape, generator=g).to(x.device),
            torch.randint(0, 1000, (b,), generator=g).to(x.device),
        )
        train_step(
            unet,
            optimizer,
            None,
            scheduler,
            x,
            draws,
            torch.ones(b, device=x.device),
            use_cbdm=use_cbdm,
            tau=1.0,
            gamma=0.0 if kind == "cbdm_g0" else 0.25,
            autocast=None,
            max_grad_norm=1.0,
        )

    return step


def cpu_figures(steps: int, batch: int) -> dict:
    from fairskin.diffusion.models import build_tiny_sd, encode_prompts

    parts = build_tiny_sd(64)
    cond_all = encode_prompts(parts.tokenizer, parts.text_encoder, ["a", "b"])
    cond, cond_other = cond_all[:1].expand(batch, -1, -1), cond_all[1:].expand(batch, -1, -1)
    pixels = torch.rand(batch, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor

    def encode():
        with torch.no_grad():
            return parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor

    kinds = {
        k: make_step(parts.unet, parts.noise_scheduler, latents, cond, cond_other, k)
        for k in ("vanilla", "cbdm", "cbdm_g0")
    }
    kinds["encoded"] = make_step(parts.unet, parts.noise_scheduler, latents, cond, cond_other, "vanilla", encode=encode)
    kinds["encoded_with_grad"] = make_step(
        parts.unet,
        parts.noise_scheduler,
        latents,
        cond,
        cond_other,
        "vanilla",
        encode=lambda: parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor,
    )
    per = time_interleaved(kinds, steps)
    encoded = per["encoded"]
    return {
        "cpu_vanilla_step_s": per["vanilla"],
        "cpu_cbdm_step_s": per["cbdm"],
        "ratio_cbdm_vs_vanilla_gamma_pos": per["cbdm"] / per["vanilla"],
        "floor_cbdm_gamma_pos": 2.0,
        "ratio_cbdm_vs_vanilla_gamma0": per["cbdm_g0"] / per["vanilla"],
        "floor_cbdm_gamma0": 4 / 3,
        "ratio_encode_every_step_vs_cached": encoded / per["vanilla"],
        "ratio_base_step_before_v3_vs_now": per["encoded_with_grad"] / per["vanilla"],
        "limit_encode_vs_cached_512px": (VAE_ENCODE_FLOP_512 + UNET_TRAIN_FLOP_512) / UNET_TRAIN_FLOP_512,
    }


def ray_vs_plain(steps: int, batch: int, runs_root: str, repeats: int) -> dict:
    """Steady-state images/s of the real fine-tune under TorchTrainer vs the same model's steps in-process,
    as ``repeats`` interleaved pairs (Ray, plain, then plain, Ray, ...: a slow drift of a shared machine hits
    both, after one uncounted warm-up pair); the ratio is the median of the per-pair ratios with a 95 %
    t-interval over them."""
    import shutil

    from fairskin.config import build_config
    from fairskin.data.stream import decode_local
    from fairskin.diffusion.base import subclass_prompts
    from fairskin.diffusion.finetune import cache_training_set, finetune_variant
    from fairskin.diffusion.models import build_tiny_sd, load_sd, save_sd
    from fairskin.methods import method_spec as get_variant
    from fairskin.metrics.paired import t_interval
    from fairskin.pipeline import run_pipeline
    from fairskin.runtime import init_ray, set_thread_count

    config = build_config(
        "smoke",
        overrides=[
            f"runtime.runs_root={runs_root}",
            f"diffusion.max_steps={steps}",
            f"diffusion.checkpoint_every={max(1, steps // 2)}",
            f"diffusion.global_batch_size={batch}",
            "diffusion.cpus_per_worker=1",
            "data.image_size=64",
        ],
    )
    shards = run_pipeline(config, ["prepare"], echo=lambda *_: None).results["prepare"].path / "shards"
    train = decode_local(shards)
    base = Path(runs_root) / "bench-base"
    if not base.exists():
        save_sd(build_tiny_sd(64), base)
    init_ray(config)
    out = Path(runs_root) / "bench-ft"
    parts = load_sd(str(base))
    rows, cond = cache_training_set(
        parts, train, subclass_prompts(config.diffusion.prompt_template, train.groups, train.diseases)
    )
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(train), (batch,), generator=g).numpy()
    latents = torch.from_numpy(rows.columns["latents"][idx, 0])
    c = torch.from_numpy(cond)[train.subclass_id[idx]]
    plain_step = make_step(parts.unet, parts.noise_scheduler, latents, c, None, "vanilla")

    def ray_rate() -> float:
        shutil.rmtree(out, ignore_errors=True)
        summary = finetune_variant(config, get_variant("vanilla"), base, train, out / "vanilla", num_workers=1)
        return summary["window_images_per_s"]

    def plain_rate() -> float:
        set_thread_count(1)  # the worker holds one CPU
        return batch / time_steps(plain_step, steps // 2)

    ray_rate(), plain_rate()  # warm-up pair, not counted (the first fit pays for cold caches and imports)
    ray_rates, plain_rates = [], []
    for r in range(repeats):
        for kind in ("ray", "plain") if r % 2 == 0 else ("plain", "ray"):
            (ray_rates if kind == "ray" else plain_rates).append(ray_rate() if kind == "ray" else plain_rate())
        print(
            f"  repeat {r + 1}/{repeats}: Ray Train {ray_rates[-1]:.1f} img/s, plain {plain_rates[-1]:.1f} img/s",
            flush=True,
        )
    ratios = np.asarray(ray_rates) / np.asarray(plain_rates)
    iv = t_interval(ratios, 0.95)
    return {
        "ray_train_images_per_s": float(np.median(ray_rates)),
        "plain_loop_images_per_s": float(np.median(plain_rates)),
        "ratio_ray_train_vs_plain": float(np.median(ratios)),
        "ratio_ray_train_vs_plain_low": float(iv.low),
        "ratio_ray_train_vs_plain_high": float(iv.high),
        "ray_vs_plain_repeats": repeats,
        "target_ray_vs_plain": 0.95,
    }


def _base_unet_seconds(steps: int, threads: int, seed: int = 0) -> float:
    """Seconds for ``steps`` base UNet steps (``fairskin.diffusion.base.unet_training_steps``, batch 16, 64 px
    tiny SD, zero-terminal-SNR with Min-SNR-5 as ``study``) on ``threads`` threads, after 3 warm-up steps."""
    import dataclasses

    from fairskin.diffusion.base import UnetJob, unet_training_steps
    from fairskin.diffusion.models import build_tiny_sd, encode_prompts

    torch.set_num_threads(threads)
    parts = build_tiny_sd(image_size=64, seed=seed, zero_terminal_snr=True)
    with torch.no_grad():
        latents = parts.vae.encode(torch.rand(64, 3, 64, 64) * 2 - 1).latent_dist.mode()
        cond = encode_prompts(parts.tokenizer, parts.text_encoder, [f"prompt {k}" for k in range(16)])
    job = UnetJob(parts.unet, parts.noise_scheduler, latents, torch.arange(64) % 15, cond, 3, 16, seed, 1e-3, 5.0)
    for _ in unet_training_steps(job):
        pass
    started = time.perf_counter()
    for _ in unet_training_steps(dataclasses.replace(job, steps=steps)):
        pass
    return time.perf_counter() - started


def _base_unet_worker(steps: int, seed: int, out) -> None:
    out.put(_base_unet_seconds(steps, threads=1, seed=seed))


def side_by_side_figures(steps: int) -> dict:
    """(e): two base UNets' ``steps`` steps one after the other (two threads) and side by side (one each)."""
    import multiprocessing

    one_after_other = _base_unet_seconds(steps, threads=2, seed=0) + _base_unet_seconds(steps, threads=2, seed=1)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_base_unet_worker, args=(steps, seed, queue)) for seed in (0, 1)]
    for proc in procs:
        proc.start()
    each = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    torch.set_num_threads(2)
    side_by_side = max(each)
    return {
        "base_unet_steps_timed": steps,
        "base_unets_one_after_other_s": one_after_other,
        "base_unets_side_by_side_s": side_by_side,
        "ratio_base_unets_one_after_other_vs_side_by_side": one_after_other / side_by_side,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true", help="skip (b)")
    parser.add_argument("--runs-root", default="runs/bench")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved (Ray, plain) pairs of (b): 5, 3 quick")
    args = parser.parse_args()
    from fairskin.runtime import quiet_console

    quiet_console()
    steps = args.steps or (6 if args.quick else 20)
    torch.set_num_threads(2)
    figures: dict = {"batch": args.batch, "steps_timed": steps}
    figures.update(cpu_figures(steps, args.batch))
    print(
        f"(a) CBDM/vanilla: gamma>0 {figures['ratio_cbdm_vs_vanilla_gamma_pos']:.2f} (floor 2.00), "
        f"gamma=0 {figures['ratio_cbdm_vs_vanilla_gamma0']:.2f} (floor 1.33)"
    )
    print(
        f"(c) encode every step / cached latents: {figures['ratio_encode_every_step_vs_cached']:.2f} "
        f"(512 px FLOP limit {figures['limit_encode_vs_cached_512px']:.2f})"
    )
    print(
        f"(d) base UNet step before base v3 (encoder forward and backward) / now (latents encoded once): "
        f"{figures['ratio_base_step_before_v3_vs_now']:.2f}"
    )
    figures.update(side_by_side_figures(30 if args.quick else 150))
    print(
        f"(e) base + control base UNets, one after the other on 2 threads / side by side on 1 each: "
        f"{figures['ratio_base_unets_one_after_other_vs_side_by_side']:.2f} "
        f"({figures['base_unets_one_after_other_s']:.1f} s / {figures['base_unets_side_by_side_s']:.1f} s for "
        f"{figures['base_unet_steps_timed']} steps of each)"
    )
    if not args.no_ray:
        repeats = args.repeats or (3 if args.quick else 5)
        figures.update(ray_vs_plain(max(8, steps * 2), args.batch, args.runs_root, repeats))
        print(
            f"(b) Ray Train / plain loop: median {figures['ratio_ray_train_vs_plain']:.3f} "
            f"[{figures['ratio_ray_train_vs_plain_low']:.3f}, {figures['ratio_ray_train_vs_plain_high']:.3f}] over "
            f"{repeats} interleaved pairs (target >= 0.95)"
        )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
