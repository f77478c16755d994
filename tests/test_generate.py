"""Pool generation: per-image seeds, byte-identical pools, single-item regeneration, resume, Ray actors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fairskin.data.shards import load_decoded, read_index, read_metadata
from fairskin.diffusion.generate import ItemGenerator, WorkItem, generate_pools, image_seed, plan_pools, work_items


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """A tiny random SD pipeline folder at 32 px (sampling only needs it to be deterministic)."""
    from fairskin.diffusion.models import build_tiny_sd, save_sd

    return save_sd(build_tiny_sd(image_size=32, seed=3), tmp_path_factory.mktemp("sd") / "pipeline")


@pytest.fixture()
def gen_config(smoke_config):
    from fairskin.config import build_config

    return build_config(
        "smoke",
        overrides=[
            f"runtime.runs_root={smoke_config.runtime.runs_root}",
            "generation.images_per_subclass=3",
            "generation.batch_size=2",
        ],
    )


def _generator(config, pipelines):
    d = config.data
    return ItemGenerator(
        {k: str(v) for k, v in pipelines.items()},
        config.generation.model_dump(mode="json"),
        config.diffusion.prompt_template,
        config.runtime.seed,
        d.image_size,
        (tuple(d.group_names), tuple(d.diseases)),
        threads=1,
    )


def test_work_items_cover_every_subclass_once():
    items = work_items("v", ["A", "B"], ["x", "y", "z"], per_subclass=5, batch_size=2)
    assert len(items) == 2 * 3 * 3
    per_subclass = {}
    for it in items:
        per_subclass.setdefault((it.group, it.disease), []).extend(range(it.start, it.stop))
    assert all(sorted(v) == list(range(5)) for v in per_subclass.values())
    assert len({it.file_name for it in items}) == len(items)


def test_image_seed_is_a_pure_function_of_its_inputs():
    assert image_seed(0, "Asian", "psoriasis", 4) == image_seed(0, "Asian", "psoriasis", 4)
    others = {
        image_seed(1, "Asian", "psoriasis", 4),
        image_seed(0, "African", "psoriasis", 4),
        image_seed(0, "Asian", "psoriasis", 5),
        image_seed(0, "Asian", "lichen planus", 4),
    }
    assert image_seed(0, "Asian", "psoriasis", 4) not in others and len(others) == 4


def test_generator_seeds_pair_variants_by_repeat():
    """Repeat r of every variant shares repeat r's seed (common noise); a salted twin does not."""
    from fairskin.config import build_config
    from fairskin.diffusion.variants import generator_seed, generators

    config = build_config(
        "smoke",
        overrides=[
            "diffusion.repeat_seeds=[5, 9]",
            "diffusion.custom_variants=[{name: twin, seed_salt: 1}]",
            "diffusion.variants=[vanilla, fairskin_s, twin]",
        ],
    )
    d = config.diffusion
    assert generators(d) == ["vanilla", "vanilla-r1", "fairskin_s", "fairskin_s-r1", "twin", "twin-r1"]
    assert generator_seed(d, "vanilla") == generator_seed(d, "fairskin_s") == 5
    assert generator_seed(d, "vanilla-r1") == generator_seed(d, "fairskin_s-r1") == 9
    assert generator_seed(d, "twin") not in (5, 9) and generator_seed(d, "twin") != generator_seed(d, "twin-r1")
    with pytest.raises(ValueError, match="repeat 2"):
        generator_seed(d, "vanilla-r2")


def test_pool_is_byte_identical_and_items_regenerate_alone(gen_config, tiny_pipeline, tmp_path):
    pipelines = {"vanilla": tiny_pipeline}
    first = generate_pools(gen_config, pipelines, tmp_path / "a", local=True)["vanilla"]
    second = generate_pools(gen_config, pipelines, tmp_path / "b", local=True)["vanilla"]
    meta_a, meta_b = read_metadata(first), read_metadata(second)
    assert len(meta_a) == 15 * 3 and set(meta_a["split"]) == {"pool"} and set(meta_a["variant"]) == {"vanilla"}
    assert meta_a["sha256"].tolist() == meta_b["sha256"].tolist()
    assert meta_a["id"].is_unique and meta_a.groupby(["group", "disease"]).size().eq(3).all()
    assert read_index(first)["images_per_subclass"] == 3
    # Distinct seeds give distinct images (a constant image would pass the equality above).
    assert meta_a["sha256"].nunique() == len(meta_a)

    pixels, meta = load_decoded(first)
    item = WorkItem("vanilla", "Asian", "psoriasis", 2, 3)
    alone, seeds = _generator(gen_config, pipelines).images(item)
    row = meta.index[meta["id"] == "gen-vanilla-Asian_psoriasis-00002"][0]
    assert seeds == [int(meta.loc[row, "seed"])]
    np.testing.assert_array_equal(alone[0], pixels[row])


def test_restart_writes_only_missing_items(gen_config, tiny_pipeline, tmp_path):
    pipelines = {"vanilla": tiny_pipeline}
    folder = generate_pools(gen_config, pipelines, tmp_path / "pool", local=True)["vanilla"]
    before = read_metadata(folder)["sha256"].tolist()
    plan = plan_pools(gen_config, tmp_path / "pool", ["vanilla"])
    lost = [plan.items[0], plan.items[7]]
    for it in lost:
        (folder / it.file_name).unlink()
    (folder / "index.json").unlink()  # as if the run died before finishing
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    written = []
    generate_pools(gen_config, pipelines, tmp_path / "pool", on_item=written.append, local=True)
    assert sorted(e["file"] for e in written) == sorted(it.file_name for it in lost)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet") if p.name in kept} == kept
    assert read_metadata(folder)["sha256"].tolist() == before


def test_ray_actor_pool_matches_in_process_bytes(ray_session, gen_config, tiny_pipeline, tmp_path, monkeypatch):
    """Two actors and ``generation.executor = in_process`` write the same images; the in-process run starts no
    actor and leaves the driver's thread count (2 here, 1 an item: cpus_per_actor 0.5) as it found it."""
    import torch

    from fairskin.config import build_config
    from fairskin.diffusion import generate

    settings = [
        f"runtime.runs_root={gen_config.runtime.runs_root}",
        "generation.images_per_subclass=2",
        "generation.batch_size=2",
        "generation.cpus_per_actor=0.5",
        "generation.num_actors=2",
        "diffusion.repeat_seeds=[0, 1]",
    ]
    config = build_config("smoke", overrides=settings)
    pipelines = {"vanilla": tiny_pipeline, "cbdm": tiny_pipeline, "vanilla-r1": tiny_pipeline}
    on_ray = generate_pools(config, pipelines, tmp_path / "ray")
    in_process = build_config("smoke", overrides=[*settings, "generation.executor=in_process"])
    monkeypatch.setattr(generate, "_actor_count", lambda *_: pytest.fail("an actor pool was sized"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        local = generate_pools(in_process, pipelines, tmp_path / "local")
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(threads)
    for variant in pipelines:
        assert read_metadata(on_ray[variant])["sha256"].tolist() == read_metadata(local[variant])["sha256"].tolist()
    # Variants of one repeat share its noise (common random numbers: same weights give the same images);
    # another repeat draws other noise.
    assert read_metadata(on_ray["vanilla"])["sha256"].tolist() == read_metadata(on_ray["cbdm"])["sha256"].tolist()
    assert set(read_metadata(on_ray["vanilla"])["sha256"]).isdisjoint(read_metadata(on_ray["vanilla-r1"])["sha256"])


def test_sampling_dtype_and_memory_format_are_applied_and_stay_deterministic(gen_config, tiny_pipeline):
    """generation.dtype=bf16 samples with bf16 weights (channels-last UNet), byte-identical twice, valid
    images close to the fp32 ones; fp16 without a GPU is refused at configuration time."""
    import torch

    from fairskin.config import ConfigError, build_config

    item = WorkItem("vanilla", "African", gen_config.data.diseases[0], 0, 2)
    fp32 = _generator(gen_config, {"vanilla": tiny_pipeline})
    bf16_config = gen_config.model_copy(
        update={"generation": gen_config.generation.model_copy(update={"dtype": "bf16", "channels_last": True})}
    )
    bf16 = _generator(bf16_config, {"vanilla": tiny_pipeline})
    first, _ = bf16.images(item)
    again, _ = _generator(bf16_config, {"vanilla": tiny_pipeline}).images(item)
    unet = bf16._pipe("vanilla").unet
    assert next(unet.parameters()).dtype == torch.bfloat16
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(first, again) and first.dtype == np.uint8 and first.std() > 0
    reference, _ = fp32.images(item)
    assert next(fp32._pipe("vanilla").unet.parameters()).dtype == torch.float32
    assert np.abs(first.astype(int) - reference.astype(int)).mean() < 40  # same images, bf16 rounding
    with pytest.raises(ConfigError, match="fp16 needs generation.use_gpu"):
        build_config("smoke", overrides=["generation.dtype=fp16"])
