"""The lora method (fairskin.methods.lora) through the engine's one fine-tune loop, on a tiny SD on CPU: what
trains, what is saved, how diffusers loads it, and how the pool actors swap adapters on one base."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_fit import DISEASES, GROUPS, diffusion_settings, fit, tiny_set

from fairskin.config import GenerationConfig
from fairskin.diffusion.loop import save_checkpoint, save_result
from fairskin.diffusion.models import ADAPTER_FILE, load_sd
from fairskin.methods import check_hooks, get_method
from fairskin.methods.lora import DEFAULT_TARGETS
from fairskin.methods.spec import VariantSpec

TEMPLATE = "{group} people {disease}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_set(tmp_path_factory.mktemp("lora"))


def _lora(rank: int = 4, **spec) -> dict:
    return check_hooks(VariantSpec(name="lora_test", hooks={"lora": {"rank": rank}}, **spec)).model_dump(mode="json")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Six steps of lora (rank 4) and of a rank-8 twin on the same base, saved as the engine saves a result."""
    d = diffusion_settings(max_steps=6)
    out = {}
    for name, variant in (("a", get_method("lora").spec.model_dump(mode="json")), ("b", _lora(8))):
        trainee, _ = fit(data, variant, d, seed=7 if name == "a" else 8)
        folder = save_result(load_sd(str(data.base)), trainee, tmp_path_factory.mktemp(name) / "pipeline")
        out[name] = (trainee, folder)
    return out


def test_only_the_adapters_train_and_they_are_the_rank_r_factors_of_each_target(data, trained):
    """The base UNet's weights stay bit-equal; every other parameter is an adapter factor, and their count is
    r * (in + out) for each attention projection named by the targets (counted here from the base UNet's own
    Linear layers, not through peft)."""
    base = load_sd(str(data.base)).unet
    trainee, _ = trained["a"]
    after = trainee.unet.state_dict()
    lora_keys = [k for k in after if "lora_" in k]
    for key, value in base.state_dict().items():
        peft_key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        got = after.get(key, after.get(peft_key))
        assert got is not None, key
        assert torch.equal(got, value), f"base weight {key} changed"
    expected = sum(
        4 * (m.in_features + m.out_features)
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in DEFAULT_TARGETS)
    )
    trained_params = [p for group in trainee.optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in trained_params) == expected > 0
    assert sum(after[k].numel() for k in lora_keys) == expected
    ups = [k for k in lora_keys if "lora_B" in k]
    assert any(after[k].abs().max() > 0 for k in ups), "the B factors start at zero and must have moved"
    # diffusers' LoRA learning rate: 10x the variant's (smoke: 1e-3)
    assert trainee.optimizer.param_groups[0]["lr"] == pytest.approx(10 * diffusion_settings()["learning_rate"])


def test_the_result_is_the_base_pipeline_plus_diffusers_adapter_file_and_loads_with_load_lora_weights(data, trained):
    """The result folder is a loadable base pipeline whose UNet is the base's, with ``pytorch_lora_weights.
    safetensors`` beside it; diffusers' own ``load_lora_weights`` on it gives the images (same seeds) of the UNet
    that trained (the trial's in-memory generation), and they differ from the base's."""
    from diffusers import StableDiffusionPipeline

    from fairskin.diffusion.generate import subclass_images

    trainee, folder = trained["a"]
    assert (folder / ADAPTER_FILE).is_file() and (folder / ADAPTER_FILE).stat().st_size < 5_000_000
    assert torch.equal(load_sd(str(folder)).unet.conv_in.weight, load_sd(str(data.base)).unet.conv_in.weight), (
        "the result's UNet must be the base's"
    )
    cfg = GenerationConfig(inference_steps=4, guidance_scale=3.0)

    def images(pipe):
        pipe.set_progress_bar_config(disable=True)
        return subclass_images(pipe, TEMPLATE, GROUPS[1], DISEASES[0], range(2), 11, cfg, 32)[0]

    plain = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    base_images = images(plain)
    plain.load_lora_weights(folder)
    loaded = images(plain)
    parts = load_sd(str(data.base))
    parts.unet = trainee.unet.eval()
    in_memory = images(parts.pipeline())
    trainee.unet.train()
    np.testing.assert_array_equal(loaded, in_memory)
    assert np.abs(loaded.astype(int) - base_images.astype(int)).max() > 0


def test_pool_actors_swap_adapters_on_one_base_as_fused_pipelines_would(data, trained):
    """The engine's pool generator loads the base once and swaps the two variants' adapters (a, b, a); each
    variant's images equal those of a pipeline with that adapter fused into its weights (``fuse_lora``), within one
    grey level."""
    from diffusers import StableDiffusionPipeline

    from fairskin.diffusion.generate import ItemGenerator, WorkItem

    cfg = GenerationConfig(inference_steps=4, guidance_scale=3.0)
    folders = {"lora_a": trained["a"][1], "lora_b": trained["b"][1]}
    actor = ItemGenerator(
        {k: str(v) for k, v in folders.items()},
        cfg.model_dump(mode="json"),
        TEMPLATE,
        5,
        32,
        (GROUPS, DISEASES),
        threads=1,
    )
    items = {v: WorkItem(v, GROUPS[0], DISEASES[1], 0, 2) for v in folders}
    swapped = [(v, actor.images(items[v])[0]) for v in ("lora_a", "lora_b", "lora_a")]
    assert len(actor._loaded) == 1, "one base pipeline for both adapters"
    for variant, got in swapped:
        fused = StableDiffusionPipeline.from_pretrained(
            folders[variant], safety_checker=None, requires_safety_checker=False
        )
        fused.scheduler = actor._pipe(variant).scheduler  # the engine's sampler
        fused.load_lora_weights(folders[variant])
        fused.fuse_lora()
        fused.unload_lora_weights()  # the fused weights stay; no adapter layers left
        from fairskin.diffusion.generate import subclass_images

        fused.set_progress_bar_config(disable=True)
        want = subclass_images(fused, TEMPLATE, GROUPS[0], DISEASES[1], range(2), 5, cfg, 32)[0]
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, variant
    assert np.abs(swapped[0][1].astype(int) - swapped[1][1].astype(int)).max() > 0, "the two adapters differ"
    np.testing.assert_array_equal(swapped[0][1], swapped[2][1])


def test_a_lora_fine_tune_stopped_after_a_checkpoint_resumes_bit_equal(data, tmp_path):
    """Four steps, a checkpoint (the adapter file, AdamW's state over the adapters only, the step), a fresh process
    state from it, two more steps: the adapters equal an uninterrupted six-step run's, bit for bit."""
    variant = _lora(4, weights="sqrs", loss="cbdm")
    d = diffusion_settings(max_steps=6)
    straight, _ = fit(data, variant, d, seed=3)
    first, _ = fit(data, variant, d, seed=3, until=4)
    save_checkpoint(tmp_path, first, {"step": 4})
    assert (tmp_path / "lora" / ADAPTER_FILE).is_file() and not (tmp_path / "unet").exists()
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 4
    resumed, metrics = fit(data, variant, d, seed=3, checkpoint=tmp_path)
    assert [m["step"] for m in metrics] == [5, 6]
    want, got = straight.unet.state_dict(), resumed.unet.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_lora_settings_are_checked_and_re_key_the_method():
    """Hook settings are validated by the hook (an unknown field and a bad rank are named) and are part of the
    method's fingerprint, so another rank is another generator."""
    with pytest.raises(ValueError, match="rnak"):
        check_hooks(VariantSpec(name="bad", hooks={"lora": {"rnak": 4}}))
    with pytest.raises(ValueError, match="rank"):
        check_hooks(VariantSpec(name="bad", hooks={"lora": {"rank": 0}}))
    with pytest.raises(ValueError, match="unknown method hook 'lorra'"):
        check_hooks(VariantSpec(name="bad", hooks={"lorra": {}}))
    from fairskin.methods import Method, methods_fingerprint

    spec = get_method("lora").spec
    other = spec.model_copy(update={"hooks": {"lora": {**spec.hooks["lora"], "rank": 8}}})
    assert methods_fingerprint([get_method("lora")]) != methods_fingerprint([Method(other, "fairskin.methods.lora", 1)])


def test_the_lora_search_space_sets_the_adapters_settings_of_each_trial(tmp_path):
    """tune_spaces/lora.yaml resolves on smoke; a trial's ``hook.lora.*`` values land in the variant's hooks (the rest
    of the adapter settings at their defaults); a rank the hook refuses is named before Ray starts."""
    import yaml

    from fairskin.config import build_config
    from fairskin.tune.spaces import SpaceError, load_space, resolve_generator_space, variant_from_trial

    config = build_config("smoke")
    resolved = resolve_generator_space(load_space("lora"), config)
    spec = variant_from_trial(
        {"hook.lora.rank": 16, "hook.lora.alpha": 8.0, "diffusion.learning_rate": 1e-3}, "t1", resolved.fixed_generator
    )
    assert spec.hooks["lora"]["rank"] == 16 and spec.hooks["lora"]["alpha"] == 8.0
    assert spec.hooks["lora"]["target_modules"] == list(DEFAULT_TARGETS) and spec.learning_rate == 1e-3
    text = yaml.safe_load(open("tune_spaces/lora.yaml"))
    text["parameters"][0] = {"name": "hook.lora.rank", "kind": "int", "low": 0, "high": 8}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**text, "name": "bad"}))
    with pytest.raises(SpaceError, match=r"hook\.lora\.rank"):
        resolve_generator_space(load_space(str(tmp_path / "bad.yaml")), config)


def test_two_adapters_on_one_base_are_two_trained_generators_in_the_provenance(data, trained):
    """The fine-tune stage's fingerprint of a result: the UNet's for a whole-UNet fine-tune (as before adapters),
    and, for an adapter, the base's UNet with the adapter file's hash, so two LoRA generators on one base differ."""
    from fairskin.diffusion.models import trained_fingerprint
    from fairskin.provenance import folder_fingerprint

    a, b = (trained_fingerprint(trained[k][1]) for k in ("a", "b"))
    base_unet = folder_fingerprint(data.base / "unet")
    assert trained_fingerprint(data.base) == base_unet
    assert a != b and a.startswith(base_unet + ":") and b.startswith(base_unet + ":")
