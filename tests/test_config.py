from pathlib import Path

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
        8, 3e-7, 12_000)
    assert paper.generation.images_per_subclass == 1000
    assert (paper.classifier.learning_rate, paper.classifier.epochs, paper.classifier.image_size) == (1e-4, 10, 224)
    assert demo.data.source == "synthetic" and demo.diffusion.model == "tiny"


def test_overrides_are_typed_and_applied_last(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data:\n  image_size: 48\nruntime:\n  seed: 5\n")
    config = build_config("smoke", yaml_file, ["runtime.seed=7", "sampling.weights=sqrs", "data.groups="
                          "[{name: Dark, fst: [4,5,6]}, {name: Light, fst: [1,2,3]}]"])
    assert config.data.image_size == 48          # from YAML
    assert config.runtime.seed == 7              # override beats YAML
    assert config.sampling.weights == "sqrs"
    assert config.data.group_names == ["Dark", "Light"]


def test_invalid_value_names_field_value_and_allowed():
    with pytest.raises(ConfigError) as err:
        build_config("demo", overrides=["sampling.weights=cbr"])
    text = str(err.value)
    assert "sampling.weights" in text and '"cbr"' in text and "'cbrs'" in text and "'sqrs'" in text


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
