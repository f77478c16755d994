"""A latent set several times larger than the memory budget, streamed for one weighted epoch (issue 15, point 5).

    python benchmarks/latent_stream.py [--quick] [--budget-mb M] [--times X] [--batch-size B] [--scheme sqrs]
    python benchmarks/stream.py --large [--quick]          # the same

1. Writes a synthetic latent set of ``--times`` x the budget (SD v1 latents of 512 px images: (2, 4, 64, 64)
   float32 per row, 128 KB with both flips; 15 subclasses with skewed counts, 0.75^k) as parquet shards with
   :class:`fairskin.data.latent_shards.LatentShardWriter`, chunk by chunk (the writer holds one row group).
2. In a **fresh child process** (so the peak is the stream's, not the writer's), after imports and
   :func:`~fairskin.data.latent_shards.limit_allocator_slack`: resets the
   process's peak RSS (``/proc/self/clear_refs``), then streams one weighted epoch (rows / batch steps) with
   :class:`~fairskin.data.latent_shards.LatentStream` through the fine-tune's ``Prefetch`` thread, a null model
   consuming the steps, and reads the peak RSS (``VmHWM``) again.
3. Prints: peak RSS growth over the baseline against the budget; the module's own count of decoded bytes
   held at once; images/s; the chi-square test of the epoch's subclass frequencies against the weights
   (p > 0.001 passes); the batch-mixing test (each batch's subclass counts against independent weighted
   draws); and whether a stream resumed mid-epoch gives the full run's batches. A second child streams the same
   epoch with pyarrow's default allocator, for comparison (``large_peak_rss_mb_default_allocator``).

The last line printed is one JSON object of the figures (keys ``large_*``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SHAPE = (2, 4, 64, 64)  # both flips of a 512 px image's SD latents
SUBCLASSES = 15


def subclass_counts(rows: int, subclasses: int = SUBCLASSES) -> np.ndarray:
    """Skewed counts (share 0.75^k, at least 1 each) summing to ``rows``."""
    share = 0.75 ** np.arange(subclasses)
    counts = np.maximum(1, np.floor(rows * share / share.sum())).astype(np.int64)
    counts[0] += rows - counts.sum()
    return counts


def write_set(root: Path, rows: int, seed: int) -> None:
    """A synthetic latent set of ``rows`` rows (random normal latents), written chunk by chunk."""
    from fairskin.data.latent_shards import LatentShardWriter

    rng = np.random.default_rng(seed)
    counts = subclass_counts(rows)
    subclass = np.repeat(np.arange(len(counts)), counts)
    order = rng.permutation(rows)  # training-set row ids in any order; the cache stores them by subclass
    with LatentShardWriter(root, SHAPE) as writer:
        for lo in range(0, rows, 128):
            n = min(128, rows - lo)
            writer.add(order[lo : lo + n], subclass[lo : lo + n], rng.standard_normal((n, *SHAPE), dtype=np.float32))


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(root: str, budget_mb: float, batch: int, scheme: str, seed: int, default_allocator: bool) -> dict:
    """Stream one epoch of the set at ``root`` within ``budget_mb``; the figures (runs in its own process)."""
    import torch

    from fairskin.data.latent_stream import (
        LatentStream,
        batch_mixing_pvalue,
        budget_bytes,
        limit_allocator_slack,
        subclass_frequency_pvalue,
    )
    from fairskin.diffusion.feed import Prefetch

    torch.set_num_threads(1)
    allocator = {"arrow_pool": "default"} if default_allocator else limit_allocator_slack()
    stream = LatentStream(
        root, scheme=scheme, apply="sampler", seed=seed, global_batch=batch, budget_bytes=budget_bytes(budget_mb)
    )
    steps = stream.epoch_steps
    with open("/proc/self/clear_refs", "w") as fh:  # "5": reset the peak RSS to the current RSS
        fh.write("5")
    baseline_kb = _status_kb("VmRSS")
    counts = np.zeros((steps, len(stream.plan.counts)), np.int64)
    index_of = {s: i for i, s in enumerate(stream.shards.subclass_ids.tolist())}
    started = time.perf_counter()
    with Prefetch(stream.steps(0, steps), "cpu", depth=2) as feed:
        for inputs in feed:  # the null model: the step only counts its subclasses
            ids = np.array([index_of[s] for s in inputs.subclass.tolist()])
            counts[inputs.step] = np.bincount(ids, minlength=counts.shape[1])
    seconds = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM")
    probs = stream.plan.subclass_probabilities
    # Resume by position: half-way through the epoch, a new stream gives the full run's batches.
    k = steps // 2
    full = [
        b["row"]
        for b in LatentStream(
            root, scheme=scheme, seed=seed, global_batch=batch, budget_bytes=budget_bytes(budget_mb)
        ).batches(k, k + 5)
    ]
    resumed = [b["row"] for b in stream.batches(k, k + 5)]
    return {
        "large_rows": stream.shards.rows,
        "large_set_mb": stream.shards.nbytes / 2**20,
        "large_budget_mb": budget_mb,
        "large_rows_per_group": stream.shards.rows_per_group,
        "large_shards": len(stream.shards.files),
        "large_window_steps": stream.window_steps,
        "large_batch_size": batch,
        "large_scheme": scheme,
        "large_steps": steps,
        "large_seconds": seconds,
        "large_images_per_s": steps * batch / seconds,
        "large_baseline_rss_mb": baseline_kb / 1024,
        "large_peak_rss_mb": (peak_kb - baseline_kb) / 1024,
        "large_peak_held_mb": stream.reader.peak_held_bytes / 2**20,
        "large_cache_mb": stream.reader.cache_bytes / 2**20,
        "large_read_mb": stream.reader.bytes_read / 2**20,
        "large_groups_read": stream.reader.groups_read,
        "large_chi2_p": subclass_frequency_pvalue(counts.sum(0), probs),
        "large_mixing_p": batch_mixing_pvalue(counts, probs),
        "large_allocator": ",".join(f"{k}={v}" for k, v in allocator.items()),
        "large_resume_equal": all(np.array_equal(a, b) for a, b in zip(full, resumed)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="48 MB budget, 8x set (about 40 s)")
    parser.add_argument("--budget-mb", type=float, default=None, help="memory budget (default 64; quick 48)")
    parser.add_argument("--times", type=float, default=8.0, help="set size as a multiple of the budget")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scheme", default="sqrs", choices=["none", "cbrs", "sqrs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="where to write the set (default: a temporary folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--default-allocator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    budget = args.budget_mb or (48.0 if args.quick else 64.0)
    if args.child:
        print(json.dumps(child(args.child, budget, args.batch_size, args.scheme, args.seed, args.default_allocator)))
        return {}
    rows = int(args.times * budget * 2**20 // (np.prod(SHAPE) * 4))
    with tempfile.TemporaryDirectory(prefix="fsk-latents-", dir=args.root) as tmp:
        root = Path(tmp) / "latents"
        started = time.perf_counter()
        write_set(root, rows, args.seed)
        written_s = time.perf_counter() - started

        def stream(*extra: str) -> dict:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(root),
                    "--budget-mb",
                    str(budget),
                    "--batch-size",
                    str(args.batch_size),
                    "--scheme",
                    args.scheme,
                    "--seed",
                    str(args.seed),
                    *extra,
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            if out.returncode:
                sys.exit(f"stream child failed:\n{out.stderr}")
            return json.loads(out.stdout.strip().splitlines()[-1])

        figures = {**stream(), "large_write_seconds": written_s}
        # The same epoch with pyarrow's default allocator (mimalloc) and glibc's adaptive threshold: for comparison.
        figures["large_peak_rss_mb_default_allocator"] = stream("--default-allocator")["large_peak_rss_mb"]
    figures["large_within_budget"] = figures["large_peak_rss_mb"] <= budget
    f = figures
    print(
        f"set: {f['large_rows']} rows x {SHAPE} float32 = {f['large_set_mb']:.0f} MB "
        f"({f['large_set_mb'] / budget:.1f}x the {budget:.0f} MB budget), {f['large_shards']} shards, "
        f"row groups of {f['large_rows_per_group']} rows; written in {written_s:.1f} s"
    )
    print(
        f"one weighted epoch ({args.scheme}, batch {f['large_batch_size']}): {f['large_steps']} steps in "
        f"{f['large_seconds']:.1f} s = {f['large_images_per_s']:.0f} images/s; windows of {f['large_window_steps']} "
        f"steps; {f['large_read_mb']:.0f} MB decoded from {f['large_groups_read']} row-group reads"
    )
    print(
        f"peak RSS growth over the baseline ({f['large_baseline_rss_mb']:.0f} MB after imports): "
        f"{f['large_peak_rss_mb']:.1f} MB (budget {budget:.0f} MB: "
        f"{'within' if f['large_within_budget'] else 'OVER'}); decoded latents held at once (the module's "
        f"count): {f['large_peak_held_mb']:.1f} MB of a {f['large_cache_mb']:.1f} MB cache; allocator "
        f"{f['large_allocator']} (pyarrow's default allocator instead: {f['large_peak_rss_mb_default_allocator']:.1f} MB)"
    )
    print(
        f"subclass frequencies vs weights: chi-square p = {f['large_chi2_p']:.3g} (pass > 0.001); batches mixed "
        f"(per-batch dispersion vs independent draws): p = {f['large_mixing_p']:.3g}; resumed mid-epoch equals "
        f"the full run: {f['large_resume_equal']}"
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return figures


if __name__ == "__main__":
    main()
