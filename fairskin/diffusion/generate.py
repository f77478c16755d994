"""Pool generation: P images per subclass per variant, cut into work items, on a Ray actor pool.

A pool is generated once per variant and shared by every classifier trial (DESIGN.md).

* **Work items** are (variant, subclass, index range) with a fixed batch size. Each image's
  initial latent comes from its own ``torch.Generator`` seeded by :func:`image_seed`, a pure
  function of (generator seed, subclass, index). The generator seed is repeat r's seed for
  every variant (``diffusion.repeat_seeds``), so the variants of one repeat start from the same
  noise (common random numbers: their paired differences are not blurred by noise draws). With the batch size and thread count
  fixed, a work item regenerated alone is byte-identical to its copy in the pool (a single
  image at another batch size is not: CPU kernels differ by batch).
* **Resumable**: each item is written as one shard file (temporary name, then rename) in the
  variant's work folder; a restarted run skips the items whose file exists. ``index.json``
  is written once every item is there, which marks the pool complete.
* **Ray**: items run on an ``ActorPool`` of :class:`PoolWorker` actors (one per GPU, or CPU
  actors with ``generation.cpus_per_actor`` each); an actor loads each variant's pipeline once.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairskin.config import FairSkinConfig, GenerationConfig
from fairskin.data.shards import INDEX_FILE, Vocabulary, write_index, write_shard_file
from fairskin.diffusion.sampler import SCHEDULERS, generate_images, make_scheduler  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class WorkItem:
    """Images ``start`` .. ``stop - 1`` of one subclass's pool for one variant."""

    variant: str
    group: str
    disease: str
    start: int
    stop: int

    @property
    def file_name(self) -> str:
        """The item's shard file name, e.g. ``African-psoriasis-00016.parquet``."""
        slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{self.group}-{self.disease}")
        return f"{slug}-{self.start:05d}.parquet"

    @property
    def size(self) -> int:
        return self.stop - self.start


# Tests: seconds each work item sleeps (read on the driver, passed to the actors), so a node is lost mid-pool.
# Callables ``hook(item)`` every pool actor runs before each item (a profiler; a test's fault injection, which the
# tests register): shipped to the actors with their arguments, so they must pickle.
ITEM_HOOKS: list = []


def image_seed(base_seed: int, group: str, disease: str, index: int) -> int:
    """The seed (0 .. 2**63 - 1) of one pool image's initial latent noise; ``base_seed`` is the
    generator's seed (:func:`fairskin.diffusion.variants.generator_seed`)."""
    text = f"fairskin-pool|{base_seed}|{group}|{disease}|{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def image_id(variant: str, group: str, disease: str, index: int) -> str:
    """A pool image's id, unique over variants: ``gen-<variant>-<group>-<disease>-<index>``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{group}-{disease}")
    return f"gen-{variant}-{slug}-{index:05d}"


def work_items(
    variant: str, groups: Sequence[str], diseases: Sequence[str], per_subclass: int, batch_size: int
) -> list[WorkItem]:
    """All items of one variant's pool: every subclass cut into ranges of ``batch_size``."""
    return [
        WorkItem(variant, g, d, start, min(start + batch_size, per_subclass))
        for g in groups
        for d in diseases
        for start in range(0, per_subclass, batch_size)
    ]


def item_records(item: WorkItem, images: np.ndarray, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Shard rows (split ``pool``, source ``generated``) for one item's images."""
    from fairskin.data.images import encode_png

    return [
        {
            "id": image_id(item.variant, item.group, item.disease, item.start + i),
            "image": encode_png(img),
            "group": item.group,
            "disease": item.disease,
            "split": "pool",
            "fst": None,
            "source": "generated",
            "seed": int(seed),
            "variant": item.variant,
        }
        for i, (img, seed) in enumerate(zip(images, seeds))
    ]


def _dtype(name: str):
    def get():
        import torch

        return getattr(torch, name)

    return get


# generation.dtype -> torch dtype (resolved lazily: this module is imported without torch on the driver)
SAMPLING_DTYPES = {"fp32": _dtype("float32"), "bf16": _dtype("bfloat16"), "fp16": _dtype("float16")}


class ItemGenerator:
    """Generates work items into pool folders; holds one loaded pipeline per variant.

    The same object runs in the driver (``generation.executor = in_process``) or inside a Ray actor.
    """

    def __init__(
        self,
        pipelines: Mapping[str, str],
        cfg: dict,
        prompt_template: str,
        seeds: Mapping[str, int] | int,
        image_size: int,
        vocab: tuple[tuple[str, ...], tuple[str, ...]],
        threads: int | None = None,
        device: str = "cpu",
        item_hooks: tuple = (),
    ):
        import diffusers.utils.logging
        import transformers.utils.logging

        from fairskin.runtime import configure_worker, set_thread_count

        diffusers.utils.logging.disable_progress_bar()  # one "Loading pipeline" bar per actor and variant
        transformers.utils.logging.disable_progress_bar()
        self.threads = set_thread_count(threads) if threads else configure_worker()
        self.pipelines = dict(pipelines)
        self.cfg = GenerationConfig(**cfg)
        self.template = prompt_template
        # generator id -> its seed (one int: the same seed for every pipeline)
        self.seeds = dict(seeds) if isinstance(seeds, Mapping) else dict.fromkeys(self.pipelines, int(seeds))
        self.image_size = image_size
        self.vocab = Vocabulary(*vocab)
        self.device = device
        self.item_hooks = tuple(item_hooks)  # see ITEM_HOOKS
        self._loaded: dict[str, Any] = {}  # pipeline folder (or an adapters' base fingerprint) -> pipeline
        self._bases: dict[str, str] = {}  # adapter variant -> its base's fingerprint
        self._adapters: dict[str, str | None] = {}  # base fingerprint -> the variant whose adapter is loaded

    def _pipe(self, variant: str):
        """The variant's loaded pipeline: its own, or, for an adapter on a base (a LoRA result), the base loaded once
        per actor with this variant's adapter swapped in (``unload_lora_weights`` / ``load_lora_weights``)."""
        from fairskin.diffusion.models import base_fingerprint, has_adapter

        folder = Path(self.pipelines[variant])
        if not has_adapter(folder):  # by folder: the K pools of one generator (generation.pool_seeds) share it
            if str(folder) not in self._loaded:
                self._loaded[str(folder)] = self._load(folder)
            return self._loaded[str(folder)]
        if variant not in self._bases:
            self._bases[variant] = base_fingerprint(folder)
        base = self._bases[variant]
        if base not in self._loaded:
            self._loaded[base] = self._load(folder)  # from_pretrained reads the base's parts, not the adapter
            self._adapters[base] = None
        pipe = self._loaded[base]
        if self._adapters[base] != variant:
            if self._adapters[base] is not None:
                pipe.unload_lora_weights()
            pipe.load_lora_weights(folder)
            pipe.to(self.device, SAMPLING_DTYPES[self.cfg.dtype]())
            self._adapters[base] = variant
        return pipe

    def _load(self, folder: Path):
        from fairskin.diffusion.models import load_pipeline

        pipe = load_pipeline(folder)
        pipe.scheduler = make_scheduler(self.cfg.scheduler, pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(self.device, SAMPLING_DTYPES[self.cfg.dtype]())
        if self.cfg.channels_last:
            import torch

            pipe.unet.to(memory_format=torch.channels_last)
        return pipe

    def images(self, item: WorkItem) -> tuple[np.ndarray, list[int]]:
        """The item's images uint8 (n, H, W, 3) and their seeds, without writing anything."""
        return subclass_images(
            self._pipe(item.variant),
            self.template,
            item.group,
            item.disease,
            range(item.start, item.stop),
            self.seeds[item.variant],
            self.cfg,
            self.image_size,
        )

    def run(self, item: WorkItem, folder: str) -> dict[str, Any]:
        """Generate one item and write it as ``folder/<item.file_name>``; returns its entry."""
        started = time.perf_counter()
        for hook in self.item_hooks:
            hook(item)
        images, seeds = self.images(item)
        rows = write_shard_file(item_records(item, images, seeds), Path(folder) / item.file_name, self.vocab)
        return {"file": item.file_name, "rows": rows, "seconds": time.perf_counter() - started, "item": asdict(item)}


def subclass_images(
    pipe, template: str, group: str, disease: str, indices: Sequence[int], seed: int, cfg: GenerationConfig, size: int
) -> tuple[np.ndarray, list[int]]:
    """Images ``indices`` of one (group, disease) subclass of a generator's pool, uint8 (n, size, size, 3), and
    their seeds: image i is drawn from :func:`image_seed` (seed, group, disease, i) whoever draws it (a pool actor's
    item, or a generator trial's pool in memory), so the same generator gives the same images."""
    from fairskin.diffusion.models import prompt_for

    seeds = [image_seed(seed, group, disease, i) for i in indices]
    prompt = prompt_for(template, group, disease)
    return generate_images(pipe, prompt, seeds, cfg, size, size), seeds


def pool_in_memory(
    pipe, template: str, groups: Sequence[str], diseases: Sequence[str], per_subclass: int, seed: int, cfg, size: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """A whole pool of ``pipe`` in memory: P = ``per_subclass`` images of every (group, disease), uint8
    (len(groups) * len(diseases) * P, size, size, 3), and its meta (group, disease, index, seed), each image the
    one the pipeline's pool of that generator holds (:func:`subclass_images`)."""
    images, rows = [], []
    for group in groups:
        for disease in diseases:
            pixels, seeds = subclass_images(pipe, template, group, disease, range(per_subclass), seed, cfg, size)
            images.append(pixels)
            rows += [{"group": group, "disease": disease, "index": i, "seed": s} for i, s in enumerate(seeds)]
    return np.concatenate(images), pd.DataFrame(rows)


@dataclass
class PoolPlan:
    """What :func:`generate_pools` will do: every item, and which are already written."""

    items: list[WorkItem]
    folders: dict[str, Path]

    def missing(self) -> list[WorkItem]:
        return [it for it in self.items if not (self.folders[it.variant] / it.file_name).is_file()]


def plan_pools(config: FairSkinConfig, work_root: Path, variants: Sequence[str]) -> PoolPlan:
    """Items of every variant's pool; each variant's items go to ``work_root/<variant>``."""
    g, d = config.generation, config.data
    folders = {v: Path(work_root) / v for v in variants}
    items = [
        it for v in variants for it in work_items(v, d.group_names, d.diseases, g.images_per_subclass, g.batch_size)
    ]
    return PoolPlan(items, folders)


def _actor_count(config: FairSkinConfig, missing: int) -> tuple[int, dict[str, float]]:
    """How many actors, and the resources each holds, from config and the cluster."""
    import ray

    g = config.generation
    resources = ray.cluster_resources()
    if g.use_gpu:
        fits = int(resources.get("GPU", 0))
        if fits < 1:
            raise RuntimeError("generation.use_gpu is set but the Ray cluster has no GPU")
        per_actor = {"num_gpus": 1.0, "num_cpus": g.cpus_per_actor}
    else:
        fits = max(1, int(resources.get("CPU", 1) // g.cpus_per_actor))
        per_actor = {"num_cpus": g.cpus_per_actor}
    wanted = g.num_actors or fits
    return max(1, min(wanted, fits, missing)), per_actor


def generate_pools(
    config: FairSkinConfig,
    pipelines: Mapping[str, Path],
    work_root: Path,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    local: bool | None = None,
    reporter=None,
) -> dict[str, Path]:
    """Generate (or finish) every generator's pool under ``work_root/<generator id>``; returns the folders.

    ``pipelines``: pool id (``vanilla``, ``vanilla-r1``, ``vanilla-r1-p1``, ...) -> its generator's pipeline folder;
    each pool's noise is seeded by :func:`~fairskin.diffusion.variants.pool_noise_seed` (the generator's seed for
    pool seed 0).

    Items already written are skipped. ``local=True`` runs in this process (no Ray), ``False`` on a Ray actor pool
    sized by :func:`_actor_count`; ``None``: ``generation.executor`` decides. Each item's thread count is
    ``ceil(generation.cpus_per_actor)`` either way, so both give the same bytes on CPU.
    ``reporter`` (a :class:`~fairskin.progress.StepProgress`): one step per item written, with the item's
    ``item_seconds``, instead of the console bar.
    """
    import math

    from fairskin.progress import progress_bar

    if local is None:
        local = config.generation.executor == "in_process"
    plan = plan_pools(config, work_root, list(pipelines))
    for folder in plan.folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    missing = plan.missing()
    g, d = config.generation, config.data
    threads = max(1, math.ceil(g.cpus_per_actor))
    from fairskin.diffusion.variants import pool_noise_seed

    seeds = {v: pool_noise_seed(config.diffusion, v) for v in pipelines}
    args = (
        {v: str(p) for v, p in pipelines.items()},
        g.model_dump(mode="json"),
        config.diffusion.prompt_template,
        seeds,
        d.image_size,
        (tuple(d.group_names), tuple(d.diseases)),
        threads,
        "cuda" if g.use_gpu else "cpu",
        tuple(ITEM_HOOKS),
    )
    total = sum(it.size for it in missing)
    bar = progress_bar(
        _run_items(missing, plan, args, config, local),
        total=len(missing),
        description=f"generate: {total} images in {len(missing)} items",
        enabled=config.runtime.progress and reporter is None,
    )
    if reporter is not None:
        reporter.begin(total=len(missing))
    for done, entry in enumerate(bar, start=1):
        if on_item is not None:
            on_item(entry)
        if reporter is not None:
            reporter.update(done, item_seconds=entry["seconds"])
    if reporter is not None:
        reporter.close()
    for variant, folder in plan.folders.items():
        _finish_pool(folder, [it for it in plan.items if it.variant == variant], config, variant, seeds[variant])
    return dict(plan.folders)


def _run_items(
    missing: list[WorkItem], plan: PoolPlan, args: tuple, config: FairSkinConfig, local: bool
) -> Iterable[dict[str, Any]]:
    if not missing:
        return
    if local:
        from fairskin.runtime import thread_count_restored

        with thread_count_restored():  # an item's thread count, as an actor's, for this generator only
            worker = ItemGenerator(*args)
            for item in missing:
                yield worker.run(item, str(plan.folders[item.variant]))
        return
    import collections

    import ray
    from ray.exceptions import RayActorError

    count, per_actor = _actor_count(config, len(missing))
    actor_cls = ray.remote(**per_actor)(ItemGenerator)
    actors = [actor_cls.remote(*args) for _ in range(count)]
    # An actor pool that survives a lost actor (its node lost, the process killed): the item it held goes
    # back to the queue for the other actors, and a replacement actor is started; it joins once Ray has
    # placed it (on a node that comes back or frees room). Items are idempotent (temporary name, then
    # rename), so one redone gives the same bytes. Errors of the item's own code still raise.
    todo = collections.deque(missing)
    idle = list(actors)
    busy: dict[Any, tuple[Any, WorkItem]] = {}  # task ref -> (actor, item)
    starting: dict[Any, Any] = {}  # readiness ref of a replacement actor -> the actor
    lost: collections.Counter = collections.Counter()
    try:
        while todo or busy:
            while idle and todo:
                actor, item = idle.pop(), todo.popleft()
                busy[actor.run.remote(item, str(plan.folders[item.variant]))] = (actor, item)
            if not busy and not starting:
                raise RuntimeError("generate: every actor of the pool was lost")
            ready, _ = ray.wait([*busy, *starting], num_returns=1)
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(actor)
                except RayActorError:  # lost before it started: try again
                    starting[_replacement(actor_cls, args, actors)] = actors[-1]
                continue
            actor, item = busy.pop(ref)
            try:
                entry = ray.get(ref)
            except RayActorError:
                lost[item.file_name] += 1
                if lost[item.file_name] > 3:
                    raise
                todo.appendleft(item)
                starting[_replacement(actor_cls, args, actors)] = actors[-1]
                continue
            idle.append(actor)
            yield entry
    finally:
        for actor in actors:
            ray.kill(actor)


def _replacement(actor_cls, args: tuple, actors: list) -> Any:
    """Start one more pool actor (appended to ``actors``); returns a ref that resolves once it is up."""
    actor = actor_cls.remote(*args)
    actors.append(actor)
    return actor.__ray_ready__.remote()


def _finish_pool(folder: Path, items: list[WorkItem], config: FairSkinConfig, variant: str, seed: int) -> None:
    """Write ``index.json`` (items in subclass order) once every item's file exists."""
    import pyarrow.parquet as pq

    absent = [it.file_name for it in items if not (folder / it.file_name).is_file()]
    if absent:
        raise RuntimeError(f"{folder}: {len(absent)} work item(s) missing after generation, e.g. {absent[:3]}")
    entries = [{"file": it.file_name, "rows": pq.ParquetFile(folder / it.file_name).metadata.num_rows} for it in items]
    g = config.generation
    write_index(
        folder,
        entries,
        Vocabulary(tuple(config.data.group_names), tuple(config.data.diseases)),
        {
            "source": "generated",
            "variant": variant,
            "image_size": config.data.image_size,
            "images_per_subclass": g.images_per_subclass,
            "generation": g.model_dump(mode="json"),
            "prompt_template": config.diffusion.prompt_template,
            "seed": seed,
        },
    )


def pool_is_complete(folder: Path) -> bool:
    """True when the pool folder's ``index.json`` exists (written after the last item)."""
    return (Path(folder) / INDEX_FILE).is_file()
