"""Generator methods as plug-ins (issue 28): the registry, stage keys that follow a method's spec and version,
and a method from an installed package (a ``fairskin.methods`` entry point) run through the whole pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fairskin.config import build_config
from fairskin.methods import ENTRY_POINT_GROUP, Method, MethodError, _Registry, get_method, method_names

REPO = Path(__file__).resolve().parents[1]
PAPER_VARIANTS = {"vanilla", "cbrs", "sqrs", "cbdm", "fairskin_c", "fairskin_s"}


def test_the_paper_variants_are_methods_with_the_papers_settings():
    competitors = {"lora", "cbdm_lora", "fairskin_c_lora", "fairskin_s_lora", "fairdiffusion"}
    assert PAPER_VARIANTS | {"vanilla_twin"} | competitors == set(method_names())
    # The paper's table: level-1 weights and loss of each variant (FairSkin-C = CBRS + CBDM, FairSkin-S = SQRS + CBDM).
    expected = {
        "vanilla": ("none", "dm"),
        "cbrs": ("cbrs", "dm"),
        "sqrs": ("sqrs", "dm"),
        "cbdm": ("none", "cbdm"),
        "fairskin_c": ("cbrs", "cbdm"),
        "fairskin_s": ("sqrs", "cbdm"),
    }
    assert {n: (get_method(n).spec.weights, get_method(n).spec.loss) for n in expected} == expected
    assert get_method("fairskin_s").module == "fairskin.methods.fairskin"
    drop = get_method("control_drop_african")  # a family member, resolved by the controls module
    assert (drop.spec.drop_group, drop.module) == ("african", "fairskin.methods.controls")
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        get_method("nope")


def _keys(config) -> dict[str, str]:
    from fairskin.housekeeping import current_keys

    keys, unknown = current_keys(config)
    assert "finetune" in keys and "generate" in keys, unknown
    return keys


def test_editing_a_methods_spec_or_its_version_rekeys_its_finetune_and_generate(tmp_path, monkeypatch):
    from fairskin import methods

    config = build_config("smoke", overrides=[f"runtime.runs_root={tmp_path}"])
    before = _keys(config)
    assert _keys(build_config("smoke", overrides=[f"runtime.runs_root={tmp_path}"])) == before  # stable
    registry = methods._REGISTRY
    registry.load()
    original = registry.methods["fairskin_s"]
    edited = Method(original.spec.model_copy(update={"cbdm_gamma": 0.5}), original.module, original.version)
    monkeypatch.setitem(registry.methods, "fairskin_s", edited)
    after_edit = _keys(config)
    monkeypatch.setitem(registry.methods, "fairskin_s", Method(original.spec, original.module, original.version + 1))
    after_bump = _keys(config)
    for changed in (after_edit, after_bump):
        assert changed["finetune"] != before["finetune"] and changed["generate"] != before["generate"]
        assert changed["prepare"] == before["prepare"] and changed["base"] == before["base"]  # upstream untouched
    assert after_edit["finetune"] != after_bump["finetune"]
    monkeypatch.setitem(registry.methods, "fairskin_s", original)
    assert _keys(config) == before


def _write_plugin(root: Path, name: str = "fskplug") -> Path:
    """A tiny out-of-tree package that registers a method through the ``fairskin.methods`` entry point."""
    package = root / name
    (package / name).mkdir(parents=True)
    (package / name / "__init__.py").write_text("")
    (package / name / "sqrs_in_loss.py").write_text(
        textwrap.dedent(
            '''
            """The paper's literal level 1: square-root weights applied in the loss, not by the sampler."""
            from fairskin.methods.spec import VariantSpec

            VERSION = 1
            METHODS = [VariantSpec(name="sqrs_in_loss", weights="sqrs", apply="loss", loss="dm")]
            '''
        )
    )
    (package / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "0.1.0"

            [project.entry-points."{ENTRY_POINT_GROUP}"]
            sqrs_in_loss = "{name}.sqrs_in_loss"

            [tool.setuptools]
            packages = ["{name}"]
            """
        )
    )
    return package


def _install(package: Path, target: Path) -> dict[str, str]:
    """``pip install --no-deps`` into ``target``; the environment that sees it (entry points included)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
        timeout=300,
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}


def test_a_broken_plugin_module_is_named_in_the_error(tmp_path):
    registry = _Registry()
    bad = type(sys)("bad_plugin")
    bad.VERSION = "1"
    with pytest.raises(MethodError, match="bad_plugin: VERSION must be an int"):
        registry.add_module(bad)
    bad.VERSION, bad.METHODS = 1, ["vanilla"]
    with pytest.raises(MethodError, match="bad_plugin: METHODS holds 'vanilla', not a VariantSpec"):
        registry.add_module(bad)


def test_the_methods_preset_reuses_the_study_presets_upstream_stages():
    """A runs root that ran `study` holds the `methods` preset's prepare, vae, base, reference and judge stages:
    their keys are the same; the fine-tunes differ (other variants), and the competitors are all there."""
    from fairskin.config import build_config

    study, methods = (_keys(build_config(p)) for p in ("study", "methods"))
    for stage in ("prepare", "vae", "base", "reference", "judge"):
        assert study[stage] == methods[stage], stage
    assert study["finetune"] != methods["finetune"]
    variants = build_config("methods").diffusion.variants
    assert {"vanilla", "fairskin_s", "lora", "fairskin_s_lora", "fairdiffusion", "vanilla_twin"} == set(variants)
