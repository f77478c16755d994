"""Level-1 weighted stream: Ray Data vs a torch DataLoader, side by side in one run.

    python benchmarks/stream.py [--quick] [--preset demo] [--epochs N] [--batch-size B]

(a) raw images/s of the weighted stream as a Ray Train worker reads it (``iter_torch_batches``
    over the run-long dataset) vs ``DataLoader`` + ``WeightedRandomSampler`` over the same
    shards and batch size. Both decode the PNG shards once and keep the decoded arrays in
    memory (the same caching); "epoch 1" includes decoding and start-up, "steady" is the mean
    rate over the later epochs.
(b) end-to-end steps/s of a tiny diffusion training step (the tiny UNet on the pixels)
    fed by each. Target: ratio >= 0.9 (the stream must never be the bottleneck).

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
from fairskin.data.stream import WeightedStream, decode_local, decode_with_ray, to_model_batch  # noqa: E402
from fairskin.pipeline import run_pipeline  # noqa: E402
from fairskin.runtime import init_ray, set_thread_count  # noqa: E402


def dataloader_batches(decoded, scheme: str, seed: int, batch_size: int, epochs: int):
    """torch's recipe: WeightedRandomSampler (with replacement, N per epoch) over an in-memory set."""
    from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

    arrays = decoded.arrays()
    weights = WeightedSampler(decoded.subclass_id, scheme, "sampler", seed).weights

    class Decoded(Dataset):
        def __len__(self):
            return len(decoded)

        def __getitem__(self, i):
            return i

    def collate(rows):
        rows = np.asarray(rows)
        batch = {name: values[rows] for name, values in arrays.items()}
        batch.update(row=rows, weight=np.ones(len(rows), np.float32), position=rows)
        return to_model_batch(batch)

    generator = torch.Generator().manual_seed(seed)
    sampler = WeightedRandomSampler(torch.as_tensor(weights), len(decoded), replacement=True, generator=generator)
    loader = DataLoader(Decoded(), batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=0)
    for _ in range(epochs):
        yield from loader


def stream_batches(decoded, scheme: str, seed: int, batch_size: int, epochs: int):
    stream = WeightedStream(decoded, scheme, "sampler", seed)
    yield from stream.iter_batches(batch_size, start=0, stop=epochs * stream.epoch_size)


def time_epochs(make_batches, decode, epoch_size: int, batch_size: int, epochs: int, step=None):
    """Seconds to the end of epoch 1 (decode included) and mean images/s over epochs 2..E."""
    started = time.perf_counter()
    decoded = decode()
    batches_per_epoch = -(-epoch_size // batch_size)
    marks, seen = [], 0
    for i, batch in enumerate(make_batches(decoded)):
        if step is not None:
            step(batch)
        seen += len(batch["row"])
        if (i + 1) % batches_per_epoch == 0:
            marks.append((time.perf_counter(), seen))
    first_t, first_n = marks[0]
    last_t, last_n = marks[-1]
    return {"epoch1_seconds": first_t - started, "epoch1_images_per_s": first_n / (first_t - started),
            "steady_images_per_s": (last_n - first_n) / (last_t - first_t),
            "steady_steps_per_s": (len(marks) - 1) * batches_per_epoch / (last_t - first_t)}


def time_train_steps(batches, step, steps: int, warmup: int = 5) -> dict:
    """Steps/s of ``step`` fed by ``batches`` over ``steps`` steps after ``warmup`` (data wait included)."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    started = time.perf_counter()
    for _ in range(steps):
        step(next(it))
    return {"steady_steps_per_s": steps / (time.perf_counter() - started)}


def tiny_train_step(image_size: int, num_subclasses: int, seed: int):
    """A tiny conditional UNet step on the pixel batch: noise, predict, MSE, AdamW."""
    from diffusers import DDPMScheduler

    from fairskin.diffusion.models import TINY_TEXT_DIM, build_tiny_unet

    torch.manual_seed(seed)
    unet = build_tiny_unet(sample_size=image_size, in_channels=3)
    prompt = torch.nn.Embedding(num_subclasses, TINY_TEXT_DIM)
    optim = torch.optim.AdamW([*unet.parameters(), *prompt.parameters()], lr=1e-4)
    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def step(batch):
        x = batch["pixels"]
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (x.shape[0],))
        cond = prompt(batch["subclass"]).unsqueeze(1)
        pred = unet(scheduler.add_noise(x, noise, t), t, encoder_hidden_states=cond).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).mul(batch["weight"]).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small: smoke data, few epochs (about a minute)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-steps", type=int, default=None, help="timed steps for (b)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scheme", default="sqrs", choices=["none", "cbrs", "sqrs"])
    parser.add_argument("--runs-root", default="runs/bench")
    args = parser.parse_args()
    preset = args.preset or ("smoke" if args.quick else "demo")
    epochs = args.epochs or (3 if args.quick else 6)
    train_steps = args.train_steps or (10 if args.quick else 40)
    config = build_config(preset, overrides=[f"runtime.runs_root={args.runs_root}", "runtime.progress=false"])
    shards = run_pipeline(config, stages=["prepare"], echo=lambda *_: None).results["prepare"].path / "shards"
    threads = set_thread_count(2)
    init_ray(config)
    seed, bs = config.runtime.seed, args.batch_size
    probe = decode_local(shards)
    n, size = len(probe), probe.pixels.shape[1]
    print(f"{preset}: {n} training images at {size} px, batch {bs}, weights {args.scheme}, torch threads {threads}")

    def ray_decode():
        return decode_with_ray(shards)

    def local_decode():
        return decode_local(shards)

    raw = {}
    for name, decode, batches in (("stream", ray_decode, stream_batches), ("dataloader", local_decode,
                                                                            dataloader_batches)):
        raw[name] = time_epochs(lambda d, b=batches: b(d, args.scheme, seed, bs, epochs), decode, n, bs, epochs)
        print(f"(a) {name:<10} epoch 1 {raw[name]['epoch1_seconds']:6.2f} s "
              f"({raw[name]['epoch1_images_per_s']:8.0f} img/s)  steady {raw[name]['steady_images_per_s']:8.0f} img/s")

    train = {}
    train_epochs = 1 + (train_steps + 5) * bs // n  # enough rows for the warm-up and timed steps
    for name, decode, batches in (("dataloader", local_decode, dataloader_batches), ("stream", ray_decode,
                                                                                    stream_batches)):
        step = tiny_train_step(size, len(probe.groups) * len(probe.diseases), seed)
        train[name] = time_train_steps(batches(decode(), args.scheme, seed, bs, train_epochs), step, train_steps)
        print(f"(b) {name:<10} steady {train[name]['steady_steps_per_s']:6.2f} steps/s")

    figures = {
        "preset": preset, "images": n, "image_size": size, "batch_size": bs, "epochs": epochs,
        "ratio_stream_vs_dataloader_steady": raw["stream"]["steady_images_per_s"] / raw["dataloader"][
            "steady_images_per_s"],
        "ratio_stream_vs_dataloader_epoch1": raw["stream"]["epoch1_images_per_s"] / raw["dataloader"][
            "epoch1_images_per_s"],
        "stream_steady_images_per_s": raw["stream"]["steady_images_per_s"],
        "dataloader_steady_images_per_s": raw["dataloader"]["steady_images_per_s"],
        "stream_epoch1_seconds": raw["stream"]["epoch1_seconds"],
        "dataloader_epoch1_seconds": raw["dataloader"]["epoch1_seconds"],
        "train_steps_per_s_stream": train["stream"]["steady_steps_per_s"],
        "train_steps_per_s_dataloader": train["dataloader"]["steady_steps_per_s"],
        "ratio_train_steps_stream_vs_dataloader": train["stream"]["steady_steps_per_s"] / train["dataloader"][
            "steady_steps_per_s"],
        "target_train_ratio": 0.9,
    }
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
