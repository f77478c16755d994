"""The classifier trainable: real training split + an augmentation plan drawn from a pool.

Per epoch: compose the training rows (real + pool rows; re-drawn in ``resample`` mode),
shuffle by (seed, epoch), train with per-sample loss weights (group weights in ``reweight``
mode), validate, report validation figures, and feed A_g to the rebalancer. Test figures
are computed once, after the last epoch, and never steer anything.

Used three ways: by the ``reference`` stage (no augmentation), standalone with MLflow
logging, and by Ray Tune (``report`` = a function that calls ``ray.tune.report``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fairskin.classify.augment import AugmentPlan, check_against_pool, draw_from_pool, plan_counts, pool_counts
from fairskin.classify.models import build_classifier, save_classifier
from fairskin.classify.reweight import Rebalancer
from fairskin.config import ClassifierConfig, ConfigError
from fairskin.data.stream import DecodedSet, decode_local
from fairskin.metrics.fairness import fairness_report

if TYPE_CHECKING:
    from fairskin.progress import StepProgress

Report = Callable[[dict[str, float]], None]


@dataclass
class ClassifierData:
    """Decoded splits (and optionally a synthetic pool), materialised once per trial."""

    train: DecodedSet
    val: DecodedSet
    test: DecodedSet
    pool: DecodedSet | None = None

    @property
    def groups(self) -> tuple[str, ...]:
        return self.train.groups

    @property
    def diseases(self) -> tuple[str, ...]:
        return self.train.diseases


def load_classifier_data(shard_dir: Path, pool_dir: Path | None = None, pool_split: str = "pool") -> ClassifierData:
    """Decode the real splits (and a pool) from shard folders, once."""
    pool = decode_local(pool_dir, splits=[pool_split]) if pool_dir is not None else None
    return ClassifierData(*(decode_local(shard_dir, splits=[s]) for s in ("train", "val", "test")), pool=pool)


@dataclass
class ClassifierResult:
    """Per-epoch validation figures, the final test report, and the trained model."""

    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    test_predictions: pd.DataFrame | None = None


def _to_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, size, size) in [-1, 1] (ViT's mean 0.5 / std 0.5 normalisation)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def classifier_device(cfg: ClassifierConfig) -> torch.device:
    """``cuda`` with ``classifier.use_gpu``, else ``cpu``; a clear error when CUDA is asked for but absent."""
    if not cfg.use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            "classifier.use_gpu = true but torch sees no CUDA device here (on a Ray cluster, give "
            "the job a GPU: ray job submit --entrypoint-num-gpus 1; trials: tune.gpus_per_trial)"
        )
    return torch.device("cuda")


@torch.no_grad()
def predict(model, data: DecodedSet, size: int, batch_size: int = 256) -> np.ndarray:
    """Predicted disease ids (N,) for a decoded set, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(data), batch_size):
        x = _to_input(data.pixels[i : i + batch_size], size).to(device)
        out.append(model(pixel_values=x).logits.argmax(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def _report(data: DecodedSet, pred: np.ndarray, bootstrap: int, seed: int) -> dict[str, Any]:
    return fairness_report(
        data.disease_id,
        pred,
        data.meta["group"].to_numpy(),
        classes=range(len(data.diseases)),
        groups=data.groups,
        bootstrap=bootstrap,
        seed=seed,
    )


class _Composer:
    """Which pool rows join the training set each epoch, per the plan and the downstream mode."""

    def __init__(self, data: ClassifierData, plan: AugmentPlan, rebalancer: Rebalancer, seed: int):
        self.data, self.plan, self.rebalancer, self.seed = data, plan, rebalancer, seed
        train_counts = {k: int(v) for k, v in data.train.meta.groupby(["group", "disease"]).size().items()}
        self.counts = plan_counts(plan, train_counts, data.groups, data.diseases)
        self.total = sum(self.counts.values())
        if self.total and data.pool is None:
            raise ValueError(f"the plan asks for {self.total} synthetic images but no pool was given")
        self.pool = pool_counts(data.pool.meta) if data.pool is not None else {}
        if self.total:
            check_against_pool(plan, self.counts, self.pool, data.diseases, train_counts)
        n_d = len(data.diseases)
        self.base = {
            g: sum(self.counts[(g, d)] for d in data.diseases) / self.total if self.total else 0.0 for g in data.groups
        }
        self.capacity = {g: n_d * min(self.pool.get((g, d), 0) for d in data.diseases) for g in data.groups}
        self._fixed = draw_from_pool(self.counts, data.pool.meta, seed) if self.total else np.zeros(0, np.int64)

    def pool_rows(self, epoch: int) -> tuple[np.ndarray, dict[str, float]]:
        """Pool row indices for ``epoch`` and the group proportions they follow."""
        if not self.total:
            return self._fixed, {}
        proportions = self.rebalancer.proportions(self.base, self.capacity, self.total)
        if self.rebalancer.mode != "resample" or not self.rebalancer.accuracy:
            return self._fixed, proportions
        plan = AugmentPlan(kind="group_proportions", total=self.total, proportions=_normalised(proportions))
        counts = plan_counts(plan, {}, self.data.groups, self.data.diseases)
        return draw_from_pool(counts, self.data.pool.meta, self.seed, epoch=epoch), proportions


def _normalised(p: Mapping[str, float]) -> dict[str, float]:
    total = sum(p.values())
    return {k: v / total for k, v in p.items()}


def train_classifier(
    data: ClassifierData,
    cfg: ClassifierConfig,
    *,
    plan: AugmentPlan | None = None,
    mode: str | None = None,
    seed: int = 0,
    report: Report | None = None,
    run=None,
    out_dir: Path | None = None,
    progress: bool = False,
    evaluate_test: bool = True,
    reporter: StepProgress | None = None,
) -> ClassifierResult:
    """Train and validate for ``cfg.epochs``; test once at the end.

    ``report(metrics)`` receives each epoch's ``val_*`` figures (Ray Tune's ``tune.report``).
    ``run`` (a tracking RunHandle) gets the same per epoch plus the test figures. With
    ``out_dir`` the model (safetensors), test predictions and the report are written there.

    ``reporter``: the training's progress in optimizer steps (batches) over all epochs: begun here with
    ``total`` = ``cfg.epochs * ceil(rows / cfg.batch_size)`` (re-estimated at each epoch from that epoch's
    rows), ``update(step, batch_loss=loss)`` after each batch (MLflow step: the batch's number counted
    from the first epoch, 1-based), closed after the last epoch. It changes no number.
    """
    plan = plan or AugmentPlan()
    mode = mode or cfg.downstream_mode
    torch.manual_seed(seed)
    device = classifier_device(cfg)
    model = build_classifier(cfg.model, data.diseases, cfg.image_size, cfg.allow_download).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    rebalancer = Rebalancer(mode, data.groups, cfg.accuracy_floor)  # type: ignore[arg-type]
    composer = _Composer(data, plan, rebalancer, seed)
    real, pool = data.train, data.pool
    result = ClassifierResult()
    batches_done = 0  # optimizer steps over all epochs (the reporter's steps)
    if reporter is not None:
        reporter.begin()
    try:
        for epoch in range(cfg.epochs):
            started = time.perf_counter()
            pool_rows, proportions = composer.pool_rows(epoch)
            rows = _epoch_rows(real, pool, pool_rows, rebalancer)
            if reporter is not None:  # the steps left, at this epoch's rows per epoch
                per_epoch = -(-len(rows.index) // cfg.batch_size)
                reporter.total = batches_done + (cfg.epochs - epoch) * per_epoch
            order = np.random.default_rng(np.random.SeedSequence([seed, epoch, 7])).permutation(len(rows.index))
            losses = _train_epoch(model, optimizer, real, pool, rows, order, cfg, device, reporter, batches_done)
            batches_done += len(losses)
            val = _report(data.val, predict(model, data.val, cfg.image_size), 0, seed)
            rebalancer.update({g: val[f"accuracy_{g}"] for g in data.groups})
            metrics = {f"val_{k}": float(v) for k, v in val.items()}
            metrics.update(
                epoch=epoch + 1,
                train_loss=float(np.mean(losses)),
                train_rows=len(rows.index),
                synthetic_rows=len(pool_rows),
                epoch_seconds=time.perf_counter() - started,
            )
            metrics.update({f"weight_{g}": float(w) for g, w in zip(data.groups, rows.group_weight)})
            metrics.update({f"proportion_{g}": float(p) for g, p in proportions.items()})
            result.history.append(metrics)
            if progress:
                print(
                    f"  epoch {epoch + 1}/{cfg.epochs}: loss {metrics['train_loss']:.3f}, "
                    f"val accuracy {metrics['val_accuracy']:.3f}, val ESSP(FairSeg) {metrics['val_essp_fairseg']:.3f}"
                )
            if run is not None:
                run.log_metrics(metrics, step=epoch + 1)
            if report is not None:
                report(metrics)
    finally:
        if reporter is not None:
            reporter.close()
    result.model = model
    if evaluate_test:
        _test(result, model, data, cfg, seed, run)
    if out_dir is not None:
        _save(result, Path(out_dir))
    return result


@dataclass
class _EpochRows:
    """One epoch's rows: ``source`` (0 real training split, 1 pool), ``index`` into that source, their group and
    disease ids, and the loss weight of each group (all (n,) but ``group_weight``, (G,))."""

    source: np.ndarray
    index: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    group_weight: np.ndarray


def _epoch_rows(real, pool, pool_rows: np.ndarray, rebalancer) -> _EpochRows:
    """The epoch's row table: every real training row (source 0), then the pool rows drawn for it (source 1),
    with the rebalancer's current loss weight per group."""
    source = np.concatenate([np.zeros(len(real), np.int64), np.ones(len(pool_rows), np.int64)])
    index = np.concatenate([np.arange(len(real)), pool_rows])
    empty = np.zeros(0, np.int64)
    groups = np.concatenate([real.group_id, pool.group_id[pool_rows] if len(pool_rows) else empty])
    labels = np.concatenate([real.disease_id, pool.disease_id[pool_rows] if len(pool_rows) else empty])
    return _EpochRows(source, index, groups, labels, rebalancer.loss_weights(groups))


def _train_epoch(model, optimizer, real, pool, rows: _EpochRows, order, cfg, device, reporter, before: int) -> list:
    """One epoch's optimizer steps over ``rows`` in ``order``, batches of ``cfg.batch_size``; the group-weighted
    cross-entropy. Returns each batch's loss (floats); ``reporter`` counts batches from ``before``."""
    model.train()
    losses = []
    for b in range(0, len(order), cfg.batch_size):
        sel = order[b : b + cfg.batch_size]
        pixels = np.empty((len(sel), *real.pixels.shape[1:]), np.uint8)
        from_real = rows.source[sel] == 0
        pixels[from_real] = real.pixels[rows.index[sel][from_real]]
        if (~from_real).any():
            pixels[~from_real] = pool.pixels[rows.index[sel][~from_real]]
        logits = model(pixel_values=_to_input(pixels, cfg.image_size).to(device)).logits
        per_sample = F.cross_entropy(logits, torch.from_numpy(rows.labels[sel]).to(device), reduction="none")
        loss = (per_sample * torch.from_numpy(rows.group_weight[rows.groups[sel]]).float().to(device)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if reporter is not None:
            reporter.update(before + len(losses), batch_loss=losses[-1])
    return losses


def _test(result: ClassifierResult, model, data: ClassifierData, cfg: ClassifierConfig, seed: int, run) -> None:
    """The test split once: its report (bootstrap intervals) and predictions into ``result``; to ``run``."""
    pred = predict(model, data.test, cfg.image_size)
    result.test = _report(data.test, pred, cfg.bootstrap_samples, seed)
    result.test_predictions = pd.DataFrame(
        {
            "id": data.test.meta["id"],
            "y_true": data.test.meta["disease"],
            "y_pred": [data.diseases[i] for i in pred],
            "group": data.test.meta["group"],
        }
    )
    if run is not None:
        run.log_metrics({f"test_{k}": v for k, v in result.test.items() if not k.endswith("_ci")})


def _save(result: ClassifierResult, out: Path) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    save_classifier(result.model, out / "model")
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    if result.test_predictions is not None:
        result.test_predictions.to_csv(out / "test_predictions.csv", index=False)
        (out / "test_report.json").write_text(json.dumps(result.test, indent=2))
