"""The ablation report on a made-up MLflow store with known effects: repeats, paired differences,
provenance joins, figures 3b and 5 from their studies, and marks that only significance earns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fairskin.metrics.endpoints import Declaration
from fairskin.metrics.paired import repeat_values
from fairskin.provenance import TAG_PIPELINE, TAG_POOL, TAG_REAL, TAG_STAGE_KEY, generator_id, generator_tags
from fairskin.report import build_report, latest_study, marks, paired_differences, table1, table1_markdown
from fairskin.tracking import Tracker

GROUPS = ["African", "Asian", "Caucasian"]
R, SEEDS = 6, 2
# Known effects: fairskin_s is +0.10 accuracy and -20 FID on every repeat (a real effect); cbdm is
# vanilla's distribution with its own noise (a null).
EFFECT = {"vanilla": (0.0, 0.0), "fairskin_s": (0.10, -20.0), "cbdm": (0.0, 0.0)}


def _pool(variant: str, repeat: int) -> str:
    return f"pool-{variant}-{repeat}"


def _classifier(acc: float, dp: float = 0.3) -> dict[str, float]:
    out = {
        "test_accuracy": acc,
        "test_worst_group_accuracy": acc - 0.05,
        "test_dp": dp,
        "test_dp_oracle_floor": 0.17,
        "test_essp": acc / (1 + dp),
        "test_essp_fairseg": acc - 0.1,
    }
    out.update({f"test_accuracy_{g}": acc - 0.01 * i for i, g in enumerate(GROUPS)})
    return out


def _trial(parent, tags, variant, repeat, seed, mode, metrics, params=None):
    gen = generator_id(variant, repeat)
    child = parent.child(
        f"trial-{gen}-{mode}-{seed}",
        tags={**tags, **generator_tags(gen), "fairskin.mode": mode, TAG_POOL: _pool(variant, repeat)},
    )
    child.log_params({"trial.seed": seed, "trial.variant": gen, "trial.mode": mode, **(params or {})})
    child.log_metrics(metrics)
    child.end()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A pipeline (reference + evaluate runs per generator), its ablation study (R=6 x S=2), an
    aug_count and an ethnic_ratio study on its pools, and decoys that must not be used."""
    tmp = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    expected: dict[tuple[str, int, int], float] = {}
    fids: dict[tuple[str, int], float] = {}
    pipe = Tracker(uri, "fairskin")
    with pipe.run("pipeline", tags={"fairskin.kind": "pipeline"}) as parent:
        parent.set_tags(
            {
                TAG_PIPELINE: parent.run_id,
                "fairskin.key.reference": "ref-key",
                "fairskin.key.evaluate": "eval-key",
                TAG_REAL: "real-1",
            }
        )
        pipeline_run = parent.run_id
        ref = parent.child(
            "reference", tags={"fairskin.stage": "reference", TAG_STAGE_KEY: "ref-key", TAG_REAL: "real-1"}
        )
        ref.log_metrics(_classifier(0.70))
        ref.end()
        for variant, (_, dfid) in EFFECT.items():
            for r in range(R):
                fid = 80.0 + dfid + rng.normal(0, 1.0)
                fids[(variant, r)] = fid
                gen = generator_id(variant, r)
                child = parent.child(
                    f"evaluate-{gen}",
                    tags={
                        "fairskin.stage": "evaluate",
                        **generator_tags(gen),
                        TAG_POOL: _pool(variant, r),
                        TAG_STAGE_KEY: "eval-key",
                    },
                )
                child.log_metrics(
                    {
                        "fid_mean": fid,
                        "fid_var_subclass": 10.0,
                        "fid_var_group": 2.0,
                        "kid_mean": 0.01,
                        "is_mean": 1.5,
                        **{f"fid_{g}": fid + i for i, g in enumerate(GROUPS)},
                    }
                )
                child.end()
    # Decoys, written later (the old report took "the latest"): another pipeline's evaluate run of
    # vanilla's repeat-0 pool under another evaluate key, a foreign pool, another reference run.
    with pipe.run("other-pipeline") as other:
        decoy = other.child(
            "evaluate-vanilla",
            tags={
                "fairskin.stage": "evaluate",
                **generator_tags("vanilla"),
                TAG_POOL: _pool("vanilla", 0),
                TAG_STAGE_KEY: "other-key",
            },
        )
        decoy.log_metrics({"fid_mean": 999.0})
        decoy.end()
        foreign = other.child(
            "evaluate-vanilla",
            tags={
                "fairskin.stage": "evaluate",
                **generator_tags("vanilla"),
                TAG_POOL: "pool-foreign",
                TAG_STAGE_KEY: "eval-key",
            },
        )
        foreign.log_metrics({"fid_mean": 555.0})
        foreign.end()
        wrong_ref = other.child(
            "reference", tags={"fairskin.stage": "reference", TAG_STAGE_KEY: "other-ref", TAG_REAL: "real-2"}
        )
        wrong_ref.log_metrics(_classifier(0.11))
        wrong_ref.end()

    study = Tracker(uri, "fairskin-tune-ablation-x")
    tags = {
        "fairskin.kind": "tune",
        "fairskin.study": "ablation-x",
        "fairskin.space": "ablation",
        TAG_PIPELINE: pipeline_run,
        TAG_REAL: "real-1",
    }
    with study.run("ablation-x", tags=tags) as parent:
        for variant, (dacc, _) in EFFECT.items():
            for r in range(R):
                repeat_effect = rng.normal(0, 0.02)  # a generator's own luck, shared by its seeds
                for seed in range(SEEDS):
                    acc = 0.6 + dacc + repeat_effect + rng.normal(0, 0.01)
                    expected[(variant, r, seed)] = acc
                    _trial(parent, tags, variant, r, seed, "random", _classifier(acc))
                    if variant == "fairskin_s":
                        _trial(parent, tags, variant, r, seed, "reweight", _classifier(acc - 0.01))

    def side_study(space: str, name: str, pool_variant: str, params_of) -> list[dict]:
        tracker = Tracker(uri, f"fairskin-tune-{name}")
        stags = {"fairskin.kind": "tune", "fairskin.study": name, "fairskin.space": space}
        rows = []
        with tracker.run(name, tags=stags) as p:
            for i in range(4):
                params = params_of(i)
                acc = 0.5 + 0.05 * i
                metrics = {**_classifier(acc), "test_essp_fairseg": acc - 0.2}
                pool = _pool(pool_variant, 0) if pool_variant != "foreign" else "pool-foreign"
                child = p.child(
                    f"{name}-{i}",
                    tags={**stags, **generator_tags("fairskin_s"), "fairskin.mode": "random", TAG_POOL: pool},
                )
                child.log_params({"trial.seed": 0, **params})
                child.log_metrics(metrics)
                child.end()
                rows.append({**params, **metrics})
        return rows

    aug = side_study("aug_count", "aug-own", "fairskin_s", lambda i: {"trial.per_subclass": 25 + 5 * i})
    side_study("aug_count", "aug-foreign", "foreign", lambda i: {"trial.per_subclass": 100 + i})
    shares = [(0.2, 0.3, 0.5), (0.5, 0.2, 0.3), (0.33, 0.33, 0.34), (0.6, 0.1, 0.3)]
    ratio = side_study(
        "ethnic_ratio",
        "ratio-own",
        "fairskin_s",
        lambda i: {f"trial.proportions.{g}": s for g, s in zip(GROUPS, shares[i])},
    )
    return {"uri": uri, "expected": expected, "fids": fids, "aug": aug, "ratio": ratio}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return build_report(store["uri"], tmp_path_factory.mktemp("report"), GROUPS)


def test_rows_state_repeats_and_take_intervals_over_repeat_means(store, report):
    assert latest_study(store["uri"]) == "ablation-x"
    t1 = report.table1.set_index(["variant", "mode"])
    assert set(t1.index) == {
        ("vanilla", "random"),
        ("fairskin_s", "random"),
        ("cbdm", "random"),
        ("fairskin_s", "reweight"),
    }
    assert (t1["R"] == R).all() and (t1["S"] == str(SEEDS)).all()
    for variant in EFFECT:
        per_repeat = [np.mean([store["expected"][(variant, r, s)] for s in range(SEEDS)]) for r in range(R)]
        low, high = stats.t.interval(0.95, R - 1, loc=np.mean(per_repeat), scale=stats.sem(per_repeat))
        row = t1.loc[(variant, "random")]
        assert row["accuracy"] == pytest.approx(np.mean(per_repeat))
        assert (row["accuracy_low"], row["accuracy_high"]) == pytest.approx((low, high))
        # generation figures: one per repeat, from the pipeline's own evaluate runs (not the decoys)
        fids = [store["fids"][(variant, r)] for r in range(R)]
        half = stats.t.ppf(0.975, R - 1) * np.std(fids, ddof=1) / np.sqrt(R)  # by hand
        assert row["fid"] == pytest.approx(np.mean(fids)) and row["fid_high"] == pytest.approx(np.mean(fids) + half)
    md = report.markdown.read_text()
    assert "| vanilla (baseline) | random | 6 x 2 |" in md


def test_only_primary_endpoints_get_verdicts_and_marks(report):
    """The declared primaries (worst-group accuracy and ESSP here; the store logs no W1, worst-group
    disease fidelity or floor-corrected FID variance) carry the verdicts; accuracy and FID, whose
    intervals also exclude 0, are exploratory: never marked, no Holm p."""
    p = report.paired.set_index(["block", "variant", "metric"])
    real = p.loc[("random", "fairskin_s", "worst_group_accuracy")]
    assert real["primary"] and real["verdict"] == "better" and real["better"] == 1 and real["low"] > 0
    assert p.loc[("random", "fairskin_s", "essp"), "verdict"] == "better"
    explored = p.loc[("random", "fairskin_s", "accuracy")]
    assert explored["low"] > 0 and explored["verdict"] == "exploratory" and explored["better"] == 0
    assert np.isnan(explored["p_holm"]) and p.loc[("generation", "fairskin_s", "fid"), "better"] == 0
    assert p.loc[("random", "cbdm", "worst_group_accuracy"), "verdict"] in ("equivalent", "inconclusive")
    assert (p.xs("dp", level="metric")["better"] == 0).all()  # DP is never ranked
    v = report.verdicts.set_index(["variant", "endpoint"])
    assert v.loc[("fairskin_s", "skin_tone_w1_worst"), "verdict"] == "untestable"
    assert v.loc[("fairskin_s", "skin_tone_w1_worst"), "reason"] == "not measured by this run"
    assert (v["m"] == 2).all()  # two testable endpoints per family: the unmeasured ones do not count
    md = report.markdown.read_text()
    assert "## Primary endpoints and verdicts" in md and "better ▲" in md and report.declaration.config_hash == ""
    header = next(x for x in md.splitlines() if x.startswith("| variant | mode |")).split(" | ")
    line = next(x for x in md.splitlines() if x.startswith("| fairskin_s | random |")).split(" | ")
    assert "▲" in line[header.index("worst-group acc.")] and "▲" not in line[header.index("accuracy")]
    assert "▲" not in next(x for x in md.splitlines() if x.startswith("| cbdm | random |"))


def test_holms_family_holds_the_declared_primary_endpoints_only():
    """Twelve exploratory metrics with tiny p beside two primaries: each primary's Holm p is its own
    paired t p times at most 2 (by hand), not times 14 as in one family over every test."""
    rng = np.random.default_rng(5)
    rows = []
    for r in range(5):
        shared = rng.normal(0, 0.05)
        for variant, shift in (("vanilla", 0.0), ("a", 0.04)):
            row = {
                "variant": variant,
                "mode": "random",
                "repeat": r,
                "pool": f"{variant}{r}",
                "seeds": 1,
                "trials": 1,
                "worst_group_accuracy": 0.4 + shared + shift + rng.normal(0, 0.02),
                "essp": 0.5 + shared + rng.normal(0, 0.02),
                "accuracy": 0.6 + shared + 5 * shift,
            }
            row.update(
                {
                    c: 10 + shared + (50 * shift) + rng.normal(0, 0.01)
                    for c in ("fid", "kid", "fid_var_group", "fid_var_subclass", "is", "fid_pooled")
                }
            )
            rows.append(row)
    units = pd.DataFrame(rows)
    declaration = Declaration(
        primary=("worst_group_accuracy", "essp"), margins={"worst_group_accuracy": 0.05, "essp": 0.05}
    )
    paired = paired_differences(units, "vanilla", declaration=declaration)
    primary = paired[paired["primary"]].set_index("metric")
    assert sorted(primary.index) == ["essp", "worst_group_accuracy"]
    d = {
        m: (units[units.variant == "a"][m].to_numpy() - units[units.variant == "vanilla"][m].to_numpy())
        for m in primary.index
    }
    p = {m: stats.ttest_1samp(d[m], 0).pvalue for m in d}
    low, high = sorted(p, key=p.get)
    assert primary.loc[low, "p_holm"] == pytest.approx(min(1, 2 * p[low]))
    assert primary.loc[high, "p_holm"] == pytest.approx(max(min(1, 2 * p[low]), p[high]))
    assert paired.loc[~paired["primary"], "p_holm"].isna().all()


def test_report_joins_by_provenance_not_by_latest(store, report):
    assert report.fingerprints["vanilla repeat 0"] == "pool-vanilla-0"
    assert 999.0 not in report.units["fid"].tolist() and 555.0 not in report.units["fid"].tolist()
    assert "accuracy 0.700" in report.markdown.read_text()  # the pipeline's reference, not the later decoy


def test_figures_3b_and_5_are_drawn_from_the_studies_on_the_reports_pools(store, report):
    assert set(report.figures) == {
        "figure3a_baseline_vs_variants",
        "figure3b_augmentation_count",
        "figure4_group_accuracy",
        "figure5_proportion_search",
        "figure6_downstream_modes",
    }
    assert not report.missing
    plotted = pd.read_csv(report.folder / "figure3b_augmentation_count.csv")
    assert set(plotted["study"]) == {"aug-own"}  # the study on a foreign pool is left out
    want = sorted((row["trial.per_subclass"], row["test_accuracy"]) for row in store["aug"])
    np.testing.assert_allclose(sorted(zip(plotted["count"], plotted["test_accuracy"])), want)
    ratio = pd.read_csv(report.folder / "figure5_proportion_search.csv")
    want = sorted((row["trial.proportions.African"], row["test_essp_fairseg"]) for row in store["ratio"])
    np.testing.assert_allclose(sorted(zip(ratio["African"], ratio["test_essp_fairseg"])), want)


def _units(values: dict[str, list[float]], dp: dict[str, list[float]] | None = None) -> pd.DataFrame:
    rows = []
    for variant, accs in values.items():
        for r, acc in enumerate(accs):
            rows.append(
                {
                    "variant": variant,
                    "mode": "random",
                    "repeat": r,
                    "pool": f"{variant}{r}",
                    "seeds": 1,
                    "trials": 1,
                    "worst_group_accuracy": acc,
                    "dp": (dp or {}).get(variant, [0.3] * len(accs))[r],
                    "dp_oracle_floor": 0.2,
                }
            )
    return pd.DataFrame(rows)


def test_tied_rows_get_the_same_mark_and_dp_is_never_marked_best():
    base = [0.60, 0.62, 0.61, 0.63, 0.60, 0.62]
    better = [v + 0.1 + 0.001 * i for i, v in enumerate(base)]
    units = _units(
        {"vanilla": base, "a": better, "b": list(better)}, dp={"vanilla": [0.3] * 6, "a": [0.3] * 6, "b": [0.0] * 6}
    )  # b: a constant classifier's DP
    paired = paired_differences(units, "vanilla")
    t1 = table1(units)
    m = marks(t1, paired)
    assert m[("a", "random", "worst_group_accuracy")] == m[("b", "random", "worst_group_accuracy")] == "▲"
    assert not any(col == "dp" for (_, _, col) in m)
    md = table1_markdown(t1, paired, "vanilla")
    assert md.count("▲") == 2


def test_one_repeat_reports_no_interval(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "fairskin-tune-one")
    tags = {"fairskin.kind": "tune", "fairskin.study": "one", "fairskin.space": "ablation"}
    with tracker.run("one", tags=tags) as parent:
        for variant, acc in (("vanilla", 0.6), ("fairskin_s", 0.7)):
            for seed in range(3):
                _trial(parent, tags, variant, 0, seed, "random", _classifier(acc + 0.01 * seed))
    report = build_report(uri, tmp_path / "r", GROUPS, study="one")
    t1 = report.table1
    assert (t1["R"] == 1).all() and (t1["S"] == "3").all()
    assert t1["accuracy_low"].isna().all()  # three classifier seeds are not three generators
    md = report.markdown.read_text()
    assert "**1 repeat: no interval.**" in md
    assert not [line for line in md.splitlines() if line.startswith("| ") and "▲" in line]


def test_repeat_values_average_seeds_before_the_interval():
    frame = pd.DataFrame({"repeat": [0, 0, 1, 1], "seed": [0, 1, 0, 1], "m": [1.0, 3.0, 5.0, math.nan]})
    assert repeat_values(frame, "m").tolist() == [2.0, 5.0]


def test_confirmation_points_are_distinct_settings():
    from fairskin.tune.confirm import chosen_points

    configs = {
        "a": {"per_subclass": 30, "seed": 0},
        "b": {"per_subclass": 30, "seed": 0},
        "c": {"per_subclass": 40, "seed": 0},
    }
    front = pd.DataFrame({"trial_id": ["a", "b", "c"]})
    points = chosen_points({"trial_id": "b"}, front, configs)
    assert [(p["trial_id"], p["role"]) for p in points] == [("b", "best, pareto"), ("c", "pareto")]


def test_a_confirmation_cap_keeps_the_best_and_each_objectives_end_of_the_front():
    from fairskin.tune.confirm import chosen_points, front_order

    # A front over skin tone (max) and FID variance (min): w is the tone end, z the variance end.
    front = pd.DataFrame(
        {"trial_id": ["x", "w", "y", "z"], "tone": [0.9, 1.0, 0.8, 0.7], "fid_var": [50.0, 90.0, 40.0, 10.0]}
    )
    assert front_order(front, ["tone", "fid_var"], ["max", "min"]) == ["w", "z", "x", "y"]
    assert front_order(front) == ["x", "w", "y", "z"]  # no objectives: the front's own order
    configs = {tid: {"tau": i, "seed": 0} for i, tid in enumerate("wxyz")}
    capped = chosen_points(
        {"trial_id": "y"}, front, configs, limit=3, metrics=["tone", "fid_var"], modes=["max", "min"]
    )
    assert [(p["trial_id"], p["role"]) for p in capped] == [("y", "best, pareto"), ("w", "pareto"), ("z", "pareto")]
    assert len(chosen_points({"trial_id": "y"}, front, configs)) == 4  # no cap: the whole front


def test_the_confirmation_cap_is_validated_and_keys_the_tune_stage_only_when_set():
    from fairskin.config import ConfigError, build_config
    from fairskin.pipeline import STAGES
    from fairskin.pipeline.keyed import stage_key

    config = build_config("smoke")
    assert config.tune.confirm_max_points is None
    assert "tune.confirm_max_points" not in STAGES["tune"].reads_for(config)
    capped = build_config("smoke", overrides=["tune.confirm_max_points=3"])
    assert stage_key("tune", capped, STAGES["tune"].reads_for(capped)) != stage_key(
        "tune", config, STAGES["tune"].reads_for(config)
    )
    with pytest.raises(ConfigError, match="tune.confirm_max_points"):
        build_config("smoke", overrides=["tune.confirm_max_points=0"])


def test_variance_components_of_the_primary_differences_match_a_hand_worked_nested_anova(store, report):
    """worst-group accuracy = accuracy - 0.05 in the store, so its paired differences are the accuracy
    differences of the same (repeat, seed): the classifier component is the within-repeat mean square,
    the fine-tune one (pool merged into it, K = 1) the between-repeat excess over it divided by S."""
    comp = pd.read_csv(report.folder / "variance_components.csv").set_index(["variant", "endpoint"])
    row = comp.loc[("fairskin_s", "worst_group_accuracy")]
    assert (row["R"], row["K"], row["S"]) == (R, 1, SEEDS) and "K = 1" in row["notes"]
    d = np.array(
        [
            [store["expected"][("fairskin_s", r, s)] - store["expected"][("vanilla", r, s)] for s in range(SEEDS)]
            for r in range(R)
        ]
    )
    ms_within = ((d - d.mean(axis=1, keepdims=True)) ** 2).sum() / (R * (SEEDS - 1))
    ms_between = SEEDS * ((d.mean(axis=1) - d.mean()) ** 2).sum() / (R - 1)
    assert row["sigma2_cls"] == pytest.approx(ms_within, rel=1e-6)
    assert row["sigma2_ft"] == pytest.approx(max(0.0, (ms_between - ms_within) / SEEDS), rel=1e-6, abs=1e-12)
    assert row["sigma2_ft_low"] <= row["sigma2_ft"] <= row["sigma2_ft_high"]
    generation = (
        comp.loc[("fairskin_s", "skin_tone_w1_worst")] if ("fairskin_s", "skin_tone_w1_worst") in comp.index else None
    )
    assert generation is None  # not measured by the store: no row invented
