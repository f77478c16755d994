"""The fine-tune's feed vs a torch DataLoader, side by side, interleaved (issue 15).

    python benchmarks/stream.py [--quick] [--preset demo] [--repeats R] [--steps K] [--batch-size B]
    python benchmarks/stream.py --large [--quick] [...]   # a latent set larger than memory: benchmarks/latent_stream.py

Both paths feed the same cached latents (the tiny SD's VAE posterior means of the ``prepare``
stage's training images, both flips: what ``cache_training_set`` gives the fine-tune) with the
same weights (``--scheme``) and the same per-step random draws:

* **engine**: exactly the fine-tune's feed (``fairskin.diffusion.feed``): the weighted plan as a Ray
  Dataset (``WeightedStream.plan_dataset``) read with ``iter_batches`` (as a Ray Train worker reads
  its dataset shard), ``plan_steps`` (this rank's rows, weights, flips, gathered latents) and the
  step's draws, made two steps ahead in the ``Prefetch`` thread;
* **dataloader**: ``DataLoader`` + ``WeightedRandomSampler`` over the same rows, the gather and
  the draws in the training loop (torch's recipe, ``num_workers=0``).

Each is timed with (a) a **null model** (the loop does nothing with a step: the host's cost per
step outside the model, the gate is <= 2 ms for the engine) and (b) the engine's own training
step (``fairskin.diffusion.step.train_step``) on the tiny UNet. Timings are interleaved repeats
(engine, dataloader, dataloader, engine, ...: the order alternates) of ``--steps`` steps after a
warm-up, so slow drifts of a shared machine hit both; each ratio is the median of the per-repeat
ratios with a 95 % t-interval over them. Target: ratio >= 0.95 (the feed never slows training).

The last line printed is one JSON object of the figures.
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

from fairskin.config import build_config  # noqa: E402
from fairskin.data.sampling import WeightedSampler  # noqa: E402
from fairskin.data.stream import WeightedStream, decode_local  # noqa: E402
from fairskin.diffusion.feed import Prefetch, plan_read_rows, plan_steps, step_inputs  # noqa: E402
from fairskin.diffusion.step import draw_step_inputs, step_generator, step_latents, train_step  # noqa: E402
from fairskin.pipeline import run_pipeline  # noqa: E402
from fairskin.runtime import init_ray, set_thread_count  # noqa: E402

TARGET = 0.95
HOST_MS_GATE = 2.0


def cached_rows(shards: Path, seed: int):
    """(rows ArraySet with cached latents, prompt table (S + 1, L, D)) of the training split, from a tiny
    SD (random weights: the feed's cost does not depend on what the latents hold)."""
    from fairskin.diffusion.base import subclass_prompts
    from fairskin.diffusion.finetune import cache_training_set
    from fairskin.diffusion.models import build_tiny_sd

    train = decode_local(shards)
    parts = build_tiny_sd(image_size=train.pixels.shape[1], seed=seed)
    rows, cond = cache_training_set(
        parts, train, subclass_prompts("{group} people {disease}", train.groups, train.diseases)
    )
    return rows, torch.from_numpy(cond), parts


def drawer(cond, seed: int, use_cbdm: bool):
    def draw(inputs):
        return draw_step_inputs(
            cond,
            inputs.subclass,
            tuple(inputs.latents.shape),
            shared=step_generator(seed, inputs.step),
            local=step_generator(seed, inputs.step, 0),
            prompt_drop_prob=0.1,
            use_cbdm=use_cbdm,
            include_self=True,
            num_train_timesteps=1000,
            device="cpu",
        )

    return draw


def engine_feed(rows, scheme: str, seed: int, batch: int, steps: int, draw):
    """The fine-tune's feed (one rank of one): Ray Data plan -> plan_steps -> draws -> Prefetch."""
    stream = WeightedStream(rows, scheme, "sampler", seed=seed)
    plan = stream.plan_dataset(0, steps * batch).iter_batches(
        batch_size=plan_read_rows(batch), batch_format="numpy", prefetch_batches=2
    )

    def with_draws(source):
        for inputs in source:
            inputs.draws = draw(inputs)
            yield inputs

    return Prefetch(with_draws(plan_steps(plan, rows.columns, rank=0, world=1, seed=seed, global_batch=batch)), "cpu")


def dataloader_feed(rows, scheme: str, seed: int, batch: int, steps: int, draw):
    """torch's recipe: WeightedRandomSampler over the rows, gather and draws in the loop."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    weights = WeightedSampler(rows.subclass_id, scheme, "sampler", seed).weights
    sampler = WeightedRandomSampler(
        torch.as_tensor(weights), steps * batch, replacement=True, generator=torch.Generator().manual_seed(seed)
    )
    loader = DataLoader(
        range(len(rows)), batch_size=batch, sampler=sampler, num_workers=0, collate_fn=lambda picked: np.asarray(picked)
    )
    for step, picked in enumerate(loader):
        plan = {
            "position": np.arange(step * batch, step * batch + len(picked)),
            "row": picked,
            "weight": np.ones(len(picked), np.float32),
        }
        inputs = step_inputs(plan, rows.columns, rank=0, world=1, seed=seed, global_batch=batch)
        inputs.draws = draw(inputs)
        yield inputs


def tiny_step(parts, use_cbdm: bool):
    """The engine's training step on the tiny UNet (AdamW, clip 1.0, float32)."""
    unet = parts.unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def step(inputs):
        latents = step_latents(inputs, None, "cpu")
        train_step(
            unet,
            optimizer,
            None,
            parts.noise_scheduler,
            latents,
            inputs.draws,
            inputs.weights,
            use_cbdm=use_cbdm,
            tau=1.0,
            gamma=0.25,
            autocast=None,
            max_grad_norm=1.0,
        )

    return step


def time_feed(feed, step, steps: int, warmup: int) -> float:
    """Steps/s of ``step`` fed by ``feed`` over ``steps`` steps after ``warmup`` (data wait included)."""
    it = iter(feed)
    for _ in range(warmup):
        step(next(it))
    started = time.perf_counter()
    for _ in range(steps):
        step(next(it))
    rate = steps / (time.perf_counter() - started)
    if hasattr(feed, "close"):
        feed.close()
    return rate


def interval(ratios: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the median ratio and a 95 % t-interval of the mean ratio over the repeats."""
    from fairskin.metrics.paired import t_interval

    iv = t_interval(np.asarray(ratios, float), 0.95)
    return float(np.median(ratios)), float(iv.low), float(iv.high)


def main() -> None:
    if "--large" in sys.argv[1:]:  # the shard feed over a set several times its memory budget (issue 15, point 5)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from latent_stream import main as large

        large([a for a in sys.argv[1:] if a != "--large"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke data, few repeats (about a minute)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per comparison")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scheme", default="sqrs", choices=["none", "cbrs", "sqrs"])
    parser.add_argument("--cbdm", action="store_true", help="time the CBDM step (two UNet passes)")
    parser.add_argument("--runs-root", default="runs/bench")
    args = parser.parse_args()
    preset = args.preset or ("smoke" if args.quick else "demo")
    repeats = args.repeats or (3 if args.quick else 7)
    steps = args.steps or (20 if args.quick else 60)
    warmup = 5
    config = build_config(preset, overrides=[f"runtime.runs_root={args.runs_root}", "runtime.progress=false"])
    shards = run_pipeline(config, stages=["prepare"], echo=lambda *_: None).results["prepare"].path / "shards"
    threads = set_thread_count(2)
    init_ray(config)
    seed, bs = config.runtime.seed, args.batch_size
    rows, cond, parts = cached_rows(shards, seed)
    draw = drawer(cond, seed, args.cbdm)
    latent = tuple(rows.columns["latents"].shape[2:])
    print(
        f"{preset}: {len(rows)} training rows, latents {latent}, batch {bs}, weights {args.scheme}, "
        f"torch threads {threads}, {repeats} interleaved repeats x {steps} steps"
    )

    feeds = {
        "engine": lambda n: engine_feed(rows, args.scheme, seed, bs, n, draw),
        "dataloader": lambda n: dataloader_feed(rows, args.scheme, seed, bs, n, draw),
    }
    models = {"null": lambda: lambda inputs: None, "train": lambda: tiny_step(parts, args.cbdm)}
    rates: dict[tuple[str, str], list[float]] = {}
    for model in ("null", "train"):
        for r in range(repeats):
            order = ("engine", "dataloader") if r % 2 == 0 else ("dataloader", "engine")
            for name in order:
                rate = time_feed(feeds[name](steps + warmup), models[model](), steps, warmup)
                rates.setdefault((model, name), []).append(rate)
        for name in ("engine", "dataloader"):
            values = rates[(model, name)]
            print(
                f"({'a' if model == 'null' else 'b'}) {model:<5} {name:<10} median {np.median(values):8.1f} steps/s "
                f"({1000 / np.median(values):6.2f} ms/step) over {len(values)} repeats"
            )

    null_ratio = interval([e / d for e, d in zip(rates[("null", "engine")], rates[("null", "dataloader")])])
    train_ratio = interval([e / d for e, d in zip(rates[("train", "engine")], rates[("train", "dataloader")])])
    host_ms = 1000.0 / float(np.median(rates[("null", "engine")]))
    print(f"host ms per step outside the model (engine feed, null model): {host_ms:.3f} (gate <= {HOST_MS_GATE})")
    print(
        f"training steps/s, engine feed / DataLoader: median {train_ratio[0]:.3f} "
        f"[{train_ratio[1]:.3f}, {train_ratio[2]:.3f}] (target >= {TARGET})"
    )
    figures = {
        "preset": preset,
        "rows": len(rows),
        "batch_size": bs,
        "scheme": args.scheme,
        "cbdm": args.cbdm,
        "repeats": repeats,
        "steps_per_repeat": steps,
        "torch_threads": threads,
        "host_ms_per_step": host_ms,
        "host_ms_per_step_dataloader": 1000.0 / float(np.median(rates[("null", "dataloader")])),
        "ratio_null_model_stream_vs_dataloader": null_ratio[0],
        "ratio_null_model_low": null_ratio[1],
        "ratio_null_model_high": null_ratio[2],
        "ratio_train_steps_stream_vs_dataloader": train_ratio[0],
        "ratio_train_steps_low": train_ratio[1],
        "ratio_train_steps_high": train_ratio[2],
        "train_steps_per_s_stream": float(np.median(rates[("train", "engine")])),
        "train_steps_per_s_dataloader": float(np.median(rates[("train", "dataloader")])),
        "target_train_ratio": TARGET,
        "host_ms_gate": HOST_MS_GATE,
        "host_ms_gate_met": host_ms <= HOST_MS_GATE,
        "train_ratio_target_met": train_ratio[0] >= TARGET,
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
