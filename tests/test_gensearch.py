"""Generator studies (issue 17): a Tune trial fine-tunes a generator and scores its pool by fidelity."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow import MlflowClient

from fairskin.config import DiffusionConfig, VariantSpec, build_config
from fairskin.tracking import PARENT_TAG
from fairskin.tune.spaces import SpaceError, load_space, parse_space, resolve_space, variant_from_trial


def _space(**changes) -> dict:
    data = load_space("cbdm_strength").model_dump(mode="json")
    data.update(changes)
    return data


# --------------------------------------------------------------------------- no Ray


@pytest.mark.parametrize("change, field", [
    ({"name": "diffusion.cbdm_tau", "kind": "float", "low": -0.5, "high": 1.0}, "diffusion.cbdm_tau"),
    ({"name": "variant.weights", "kind": "choice", "values": ["none", "inverse"]}, "variant.weights"),
    ({"name": "diffusion.learning_rate", "kind": "float", "low": 0.0, "high": 1e-3}, "diffusion.learning_rate"),
])
def test_invalid_generator_value_fails_before_any_trial_naming_the_field(change, field):
    data = _space()
    data["parameters"] = [change if p["name"] == change["name"] else p for p in data["parameters"]]
    with pytest.raises(SpaceError, match=f"parameter '{field}'"):
        resolve_space(parse_space(data), build_config("smoke"), {}, {})


def test_generator_space_shape_is_checked():
    with pytest.raises(SpaceError, match="trainable: generator"):
        parse_space(_space(trainable="classifier", objectives=[{"metric": "val_accuracy"}]))
    with pytest.raises(SpaceError, match="unknown target"):
        parse_space(_space(parameters=[{"name": "diffusion.ema_decay", "kind": "float", "low": 0.1, "high": 0.2}]))
    resolved = resolve_space(load_space("cbdm_strength"), build_config("smoke"), {}, {})
    assert resolved.trainable == "generator" and resolved.dim("diffusion.max_steps").high == 6  # smoke's steps
    assert resolved.metrics == ("skin_tone_agreement_worst_group", "disease_fidelity_worst_group", "fid_var_group")


def test_trial_settings_become_a_valid_custom_variant():
    trial = {"diffusion.cbdm_tau": 0.05, "diffusion.cbdm_gamma": 0.1, "variant.weights": "sqrs",
             "diffusion.learning_rate": 3e-4, "diffusion.max_steps": 5, "seed": 0}
    spec = variant_from_trial(trial, "cbdm_tau_005", {"loss": "cbdm", "apply": "sampler"})
    entry = spec.model_dump(exclude_none=True)
    assert VariantSpec.model_validate(entry) == spec
    diffusion = build_config("smoke", overrides=[
        f"diffusion.custom_variants={json.dumps([entry])}", "diffusion.variants=[vanilla, cbdm_tau_005]"]).diffusion
    got = diffusion.for_variant(diffusion.variant("cbdm_tau_005"))
    assert (got.learning_rate, got.max_steps, diffusion.variant("cbdm_tau_005").cbdm_tau) == (3e-4, 5, 0.05)
    assert isinstance(got, DiffusionConfig)


# --------------------------------------------------------------------------- a study


def test_smoke_generator_study_three_trials_tracked(ray_session, tmp_path):
    from fairskin.tune.generator import generator_sources
    from fairskin.tune.study import run_study

    config = build_config("smoke", overrides=[f"runtime.runs_root={tmp_path / 'runs'}",
                                              "tune.generator_pool_per_subclass=2", "tune.num_trials=3"])
    sources = generator_sources(config, echo=lambda *_: None)
    result = run_study(config, "cbdm_strength", {}, sources.shards, sources=sources, echo=lambda *_: None)
    assert not result.interrupted and len(result.trials) == 3
    assert (result.trials["state"] == "finished").all()
    client = MlflowClient(config.tracking_uri())
    children = client.search_runs([result.experiment_id], f"tags.{PARENT_TAG} = '{result.parent_run_id}'")
    assert len(children) == 3
    for run in children:
        steps = int(run.data.params["trial.diffusion.max_steps"])
        reports = len({*range(3, steps + 1, 3), steps})  # smoke: checkpoint every 3 steps, and the last
        for metric in ("skin_tone_agreement_worst_group", "disease_fidelity_worst_group", "fid_var_group"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == reports, metric
        assert run.info.status == "FINISHED"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"pool", "generator"}
    # the trial's generator as a custom variant, its pipeline folder and pool under the study folder
    folders = sorted((result.path / "generators").iterdir())
    assert len(folders) == 3
    entry = yaml.safe_load((folders[0] / "variant.yaml").read_text())["diffusion"]["custom_variants"][0]
    VariantSpec.model_validate(entry)
    assert (folders[0] / "pipeline" / "unet").is_dir() and (folders[0] / "pool.npz").is_file()
    assert (result.path / "report" / "tradeoff_by_tau.png").is_file()
    assert (result.path / "report" / "pareto_front.png").is_file()
    parent = {a.path for a in client.list_artifacts(result.parent_run_id, "study")}
    assert {"study/tradeoff_by_tau.png", "study/pareto_front.png"} <= parent
    assert len(result.pareto) >= 1
