from pathlib import Path

import numpy as np
import pytest

from fairskin.config import PRESETS, ConfigError, build_config, dump_config, flatten


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_validates(preset):
    config = build_config(preset)
    assert config.preset == preset
    assert config.runtime.runs_root.is_absolute()


def test_presets_differ_where_the_paper_says():
    paper, demo = build_config("paper"), build_config("demo")
    assert (paper.diffusion.global_batch_size, paper.diffusion.learning_rate, paper.diffusion.max_steps) == (
        8,
        3e-7,
        12_000,
    )
    assert paper.generation.images_per_subclass == 1000
    assert (paper.classifier.learning_rate, paper.classifier.epochs, paper.classifier.image_size) == (1e-4, 10, 224)
    assert demo.data.source == "synthetic" and demo.diffusion.model == "tiny"


def test_overrides_are_typed_and_applied_last(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data:\n  image_size: 48\nruntime:\n  seed: 5\n")
    config = build_config(
        "smoke",
        yaml_file,
        [
            "runtime.seed=7",
            "diffusion.cbdm_tau=0.5",
            "data.groups=[{name: Dark, fst: [4,5,6]}, {name: Light, fst: [1,2,3]}]",
        ],
    )
    assert config.data.image_size == 48  # from YAML
    assert config.runtime.seed == 7  # override beats YAML
    assert config.diffusion.cbdm_tau == 0.5
    assert config.data.group_names == ["Dark", "Light"]


def test_invalid_value_names_field_value_and_allowed():
    with pytest.raises(ConfigError) as err:
        build_config("demo", overrides=["diffusion.custom_variants=[{name: x, weights: cbr}]"])
    text = str(err.value)
    assert "diffusion.custom_variants.0.weights" in text and '"cbr"' in text and "'cbrs'" in text and "'sqrs'" in text


def test_weights_belong_to_variants_and_loss_weighting_reaches_the_finetune():
    """`sampling.*` did nothing; a variant (registered or custom) now carries weights and apply."""
    from fairskin.data.stream import ArraySet, WeightedStream
    from fairskin.pipeline import STAGES
    from fairskin.pipeline.keyed import stage_key

    with pytest.raises(ConfigError, match="sampling"):
        build_config("smoke", overrides=["sampling.apply=loss"])
    literal = build_config(
        "smoke",
        overrides=[
            "diffusion.custom_variants=[{name: sqrs_loss, weights: sqrs, apply: loss}]",
            "diffusion.variants=[vanilla, sqrs_loss]",
        ],
    )
    plain = build_config("smoke", overrides=["diffusion.variants=[vanilla, sqrs]"])
    spec = literal.diffusion.variant("sqrs_loss")
    assert (spec.weights, spec.apply, spec.loss) == ("sqrs", "loss", "dm")
    finetune = STAGES["finetune"]
    assert stage_key("finetune", literal, finetune.reads, version=finetune.version) != stage_key(
        "finetune", plain, finetune.reads, version=finetune.version
    )
    # the fine-tune's stream applies the spec: loss weights on a plain shuffle, not a weighted draw
    subclass = np.repeat(np.arange(3), [50, 10, 5])
    rows = ArraySet(subclass, {"subclass": subclass})
    by_loss = WeightedStream(rows, spec.weights, spec.apply, seed=0).plan_table(0, 65)
    by_sampler = WeightedStream(rows, "sqrs", "sampler", seed=0).plan_table(0, 65)
    assert by_loss["weight"].nunique() == 3 and sorted(by_loss["row"]) == list(range(65))
    assert (by_sampler["weight"] == 1).all()


def test_variants_are_checked_against_the_registry_before_anything_runs():
    with pytest.raises(ConfigError, match="unknown variant"):
        build_config("smoke", overrides=["diffusion.variants=[vanilla, fairskin_x]"])
    with pytest.raises(ConfigError, match="more than once"):
        build_config("smoke", overrides=["diffusion.variants=[vanilla, vanilla]"])
    with pytest.raises(ConfigError, match="already registered"):
        build_config("smoke", overrides=["diffusion.custom_variants=[{name: vanilla}]"])
    with pytest.raises(ConfigError, match="custom_variants.0.name"):
        build_config("smoke", overrides=["diffusion.custom_variants=[{name: ../x}]"])


def test_out_of_range_and_unknown_fields_are_reported_together():
    with pytest.raises(ConfigError) as err:
        build_config("demo", overrides=["data.image_size=4", "data.colour=red"])
    text = str(err.value)
    assert "data.image_size = 4" in text and "greater than or equal to 8" in text
    assert "data.colour" in text and "unknown field" in text


def test_overlapping_group_bins_are_rejected():
    with pytest.raises(ConfigError, match="FST 3 is in both groups"):
        build_config("demo", overrides=["data.groups=[{name: A, fst: [1,2,3]}, {name: B, fst: [3,4]}]"])


def test_unknown_preset_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        build_config("fast")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        build_config("demo", overrides=["runtime.seed"])


def test_dump_round_trips(tmp_path):
    config = build_config("smoke", overrides=["runtime.seed=11"])
    path = tmp_path / "resolved.yaml"
    dump_config(config, path)
    again = build_config("demo", path)  # the dump is complete: it fully determines the config
    assert again.model_dump() == config.model_dump()


def test_flatten_gives_dotted_keys():
    flat = flatten(build_config("smoke").model_dump(mode="json"))
    assert flat["data.image_size"] == 32
    assert flat["data.groups"].startswith("[{")
    assert Path(flat["runtime.runs_root"]).is_absolute()
