"""How hard is the synthetic demo dataset? A fixed small CNN, trained on it, measured per group.

Acceptance for ``fairskin.data.synthetic`` (the generator is tuned, never this CNN):
- overall 5-class disease accuracy on a fresh held-out set between 60% and 90%
  (learnable, not trivial), and
- Caucasian accuracy at least 10 points above African accuracy
  (lesion colour is less visible on darker skin, and African subclasses are the rarest).

Protocol (fixed; change it and earlier numbers are no longer comparable)
- counts: the Fitzpatrick17k subclass count table (``--counts``), before splitting;
- split each subclass: test = val = max(1, n // 10), train = the rest, by a seeded
  permutation; the CNN trains on the train part only (val/test are not used here);
- held-out: ``generate_samples(namespace="heldout")``, ``--heldout`` images per subclass
  (balanced, so every group and disease weighs the same);
- CNN: conv3x3(3->16) BN ReLU maxpool2, conv3x3(16->32) BN ReLU maxpool2, conv3x3(32->64) BN ReLU,
  global average pool, linear(64->5); inputs pixel/255 - 0.5; Adam lr 1e-3, batch 64,
  15 epochs, cross-entropy, no augmentation, no class weighting;
- repeated for ``--seeds`` seeds (seed s: data seed s, split seed s, torch seed s) and averaged.

``--quick``: 0.4x counts (at least 12 per subclass), 100 held-out per subclass, 1 seed,
8 epochs; about a minute on 2 cores (a smoke check: its numbers are noisier and lower).

Prints a per-group table, then ONE JSON line, e.g.
``{"accuracy": 0.76, "accuracy_Caucasian": 0.83, "accuracy_Asian": 0.77,
"accuracy_African": 0.66, "gap_caucasian_african": 0.17, "seeds": 3}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairskin.data.synthetic import DISEASES, generate_samples, scaled_counts  # noqa: E402

DEFAULT_COUNTS = Path(__file__).resolve().parents[1] / "fairskin" / "data" / "fitzpatrick17k_counts.csv"  # shipped copy
GROUP_FST = {"Caucasian": [1, 2], "Asian": [3, 4], "African": [5, 6]}
LR, BATCH, EPOCHS = 1e-3, 64, 15
QUICK_SCALE, QUICK_EPOCHS = 0.4, 8


def read_counts(path: Path) -> dict[tuple[str, str], int]:
    """CSV with columns group, disease, count -> {(group, disease): count}."""
    with open(path, newline="") as f:
        return {(row["group"], row["disease"]): int(row["count"]) for row in csv.DictReader(f)}


def train_indices(counts: dict[tuple[str, str], int], seed: int) -> dict[tuple[str, str], set[int]]:
    """Indices of the train part of each subclass: test = val = max(1, n // 10), train = the rest."""
    out = {}
    for i, key in enumerate(sorted(counts)):
        n = counts[key]
        k = max(1, n // 10)
        perm = np.random.default_rng([seed, i]).permutation(n)
        out[key] = set(perm[2 * k :].tolist())
    return out


def load(counts, *, seed, size, namespace, keep=None):
    """Generate images -> (x uint8 (N, 3, H, W) tensor, disease labels (N,), group names, fst (N,))."""
    images, labels, groups, fsts = [], [], [], []
    index = {}
    for s in generate_samples(counts, GROUP_FST, seed=seed, size=size, namespace=namespace):
        i = index[(s.group, s.disease)] = index.get((s.group, s.disease), -1) + 1
        if keep is not None and i not in keep[(s.group, s.disease)]:
            continue
        images.append(s.image)
        labels.append(DISEASES.index(s.disease))
        groups.append(s.group)
        fsts.append(s.fst)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels), np.array(groups), np.array(fsts)


def make_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, len(DISEASES)),
    )


def as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 - 0.5


def train(x, y, *, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    model = make_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(BATCH):
            opt.zero_grad()
            loss_fn(model(as_float(x[idx])), y[idx]).backward()
            opt.step()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(as_float(b)).argmax(1) for b in x.split(512)]).numpy()


def run_seed(counts, *, seed, size, heldout, epochs) -> dict:
    keep = train_indices(counts, seed)
    x, y, _, _ = load(counts, seed=seed, size=size, namespace="train", keep=keep)
    model = train(x, y, seed=seed, epochs=epochs)
    held = {key: heldout for key in counts}
    hx, hy, hg, hf = load(held, seed=seed, size=size, namespace="heldout")
    correct = predict(model, hx) == hy.numpy()
    res = {"accuracy": correct.mean(), "n_train": len(x)}
    for group in GROUP_FST:
        res[f"accuracy_{group}"] = correct[hg == group].mean()
    for fst in range(1, 7):
        res[f"fst{fst}"] = correct[hf == fst].mean()
    for d, disease in enumerate(DISEASES):
        for group in GROUP_FST:
            res[(group, disease)] = correct[(hg == group) & (hy.numpy() == d)].mean()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="0.4x counts, 100 held-out per subclass, 1 seed, 8 epochs")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 1)")
    ap.add_argument("--counts", type=Path, default=DEFAULT_COUNTS, help="subclass count table CSV")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()

    counts = read_counts(args.counts)
    heldout, epochs, seeds = 300, EPOCHS, 3
    if args.quick:
        counts, heldout, epochs, seeds = scaled_counts(counts, QUICK_SCALE), 100, QUICK_EPOCHS, 1
    seeds = args.seeds if args.seeds is not None else seeds

    runs = []
    for seed in range(seeds):
        t = time.perf_counter()
        runs.append(run_seed(counts, seed=seed, size=args.size, heldout=heldout, epochs=epochs))
        print(
            f"seed {seed}: accuracy {runs[-1]['accuracy']:.3f}, {runs[-1]['n_train']} train images, "
            f"{time.perf_counter() - t:.0f} s",
            flush=True,
        )
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}

    print(f"\n{'group':<10} {'all':>6} " + " ".join(f"{d[:10]:>10}" for d in DISEASES))
    for group in GROUP_FST:
        print(
            f"{group:<10} {mean[f'accuracy_{group}']:6.3f} " + " ".join(f"{mean[(group, d)]:10.3f}" for d in DISEASES)
        )
    print("by FST:   " + "  ".join(f"{f}: {mean[f'fst{f}']:.3f}" for f in range(1, 7)))
    print(f"overall accuracy {mean['accuracy']:.3f} over {seeds} seed(s), {time.perf_counter() - start:.0f} s\n")

    line = {"accuracy": round(mean["accuracy"], 4)}
    for group in ("Caucasian", "Asian", "African"):
        line[f"accuracy_{group}"] = round(mean[f"accuracy_{group}"], 4)
    line["gap_caucasian_african"] = round(mean["accuracy_Caucasian"] - mean["accuracy_African"], 4)
    line["seeds"] = seeds
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
