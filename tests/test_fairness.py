"""Fairness metrics against values worked out by hand (see the comments)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

from fairskin.metrics.fairness import fairness_report

# Group A: y=[0,0,1,1], y_hat=[0,1,1,1] -> A_A = 3/4.  Group B: y=[0,0,0,1], y_hat=[0,0,1,0] -> A_B = 2/4.
Y_TRUE = [0, 0, 1, 1, 0, 0, 0, 1]
Y_PRED = [0, 1, 1, 1, 0, 0, 1, 0]
GROUP = ["A"] * 4 + ["B"] * 4


def test_hand_worked_two_group_example():
    r = fairness_report(Y_TRUE, Y_PRED, GROUP, bootstrap=0)
    assert r["accuracy"] == pytest.approx(5 / 8)
    assert (r["accuracy_A"], r["accuracy_B"], r["worst_group_accuracy"]) == (0.75, 0.5, 0.5)
    # P(y_hat=1) = 4/8; P(y_hat=1|A) = 3/4, P(y_hat=1|B) = 1/4 -> |.5-.75| + |.5-.25| = 0.5 (class 0 alike)
    assert r["dp"] == pytest.approx(0.5)
    assert r["dp_maxmin"] == pytest.approx(0.5)  # 0.75 - 0.25
    # Oracle: P(y=1) = 3/8, P(y=1|A) = 1/2, P(y=1|B) = 1/4 -> 1/8 + 1/8 = 0.25 (class 0 alike)
    assert r["dp_oracle_floor"] == pytest.approx(0.25)
    assert r["essp"] == pytest.approx(0.625 / 1.5)
    assert r["essp_fairseg"] == pytest.approx(0.625 / (1 + 0.125 + 0.125))
    # Class 1: TPR_A = 1, TPR_B = 0 -> 1.0. Class 0: FPR_A = 0, FPR_B = 1 -> 1.0. Mean 1.0.
    assert r["eo_gap"] == pytest.approx(1.0)


def test_three_classes_string_labels():
    # g1: truth a,b,c predicted a,b,b; g2: truth a,a,c predicted a,c,c.
    y_true = ["a", "b", "c", "a", "a", "c"]
    y_pred = ["a", "b", "b", "a", "c", "c"]
    group = ["g1"] * 3 + ["g2"] * 3
    r = fairness_report(y_true, y_pred, group, bootstrap=0)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert (r["accuracy_g1"], r["accuracy_g2"]) == pytest.approx((2 / 3, 2 / 3))
    # Overall P(a,b,c) = (2,2,2)/6; g1 (1,2,0)/3; g2 (1,0,2)/3.
    # a: |1/3-1/3|*2 = 0; b: |1/3-2/3| + |1/3-0| = 2/3; c: same 2/3 -> mean 4/9.
    assert r["dp"] == pytest.approx(4 / 9)
    assert r["dp_maxmin"] == pytest.approx((0 + 2 / 3 + 2 / 3) / 3)
    # Oracle: P(a,b,c) = (3,1,2)/6; g1 (1,1,1)/3; g2 (2,0,1)/3.
    # a: |1/2-1/3| + |1/2-2/3| = 1/3; b: |1/6-1/3| + |1/6-0| = 1/3; c: |1/3-1/3| + |1/3-1/3| = 0 -> 2/9.
    assert r["dp_oracle_floor"] == pytest.approx(2 / 9)
    assert r["essp_fairseg"] == pytest.approx(4 / 6)  # equal group accuracies: no penalty
    # a: TPR g1 1, g2 1/2 -> 1/2; FPR g1 0, g2 0 (g2 has c only as negative: predicted c) -> max 1/2.
    # b: TPR only g1 (1) -> none; FPR g1 (c->b) 1/2, g2 0 -> 1/2. c: TPR g1 0, g2 1 -> 1; FPR g1 0, g2 1/2 -> 1.
    assert r["eo_gap"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_a_perfect_classifier_sits_on_the_oracle_floor():
    r = fairness_report(Y_TRUE, Y_TRUE, GROUP, bootstrap=0)
    assert r["accuracy"] == 1.0 and r["eo_gap"] == 0.0 and r["essp_fairseg"] == 1.0
    assert r["dp"] == pytest.approx(r["dp_oracle_floor"]) and r["dp"] > 0  # mixes differ by group


def test_bootstrap_intervals_are_seeded_and_resample_within_groups():
    y_true = [0, 1] * 20 + [0, 1] * 20
    y_pred = [0, 1] * 20 + [0, 0, 1, 1] * 10
    group = ["A"] * 40 + ["B"] * 40
    r1 = fairness_report(y_true, y_pred, group, bootstrap=300, seed=1)
    r2 = fairness_report(y_true, y_pred, group, bootstrap=300, seed=1)
    r3 = fairness_report(y_true, y_pred, group, bootstrap=300, seed=2)
    assert r1 == r2 and r1["accuracy_ci"] != r3["accuracy_ci"]
    assert r1["accuracy_A_ci"] == [1.0, 1.0]  # group A is always perfect, whatever the resample
    low, high = r1["accuracy_B_ci"]
    assert low < r1["accuracy_B"] < high and high - low > 0.1
    for key in ("accuracy", "dp", "essp", "essp_fairseg", "eo_gap", "worst_group_accuracy"):
        assert r1[f"{key}_ci"][0] <= r1[key] <= r1[f"{key}_ci"][1]


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        fairness_report([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match="no samples"):
        fairness_report([], [], [])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fairskin.metrics", "fairness", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_on_a_csv_written_here(tmp_path):
    path = tmp_path / "pred.csv"
    path.write_text(
        "id,y_true,y_pred,group\n"
        + "".join(f"{i},{t},{p},{g}\n" for i, (t, p, g) in enumerate(zip(Y_TRUE, Y_PRED, GROUP)))
    )
    out = _cli(path, "--json", "--bootstrap", "50")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["accuracy"] == pytest.approx(5 / 8) and report["dp"] == pytest.approx(0.5)
    assert report["dp_oracle_floor"] == pytest.approx(0.25) and len(report["essp_ci"]) == 2
    assert {"accuracy_A", "accuracy_B", "worst_group_accuracy", "dp_maxmin", "essp", "essp_fairseg", "eo_gap"} <= set(
        report
    )
    text = _cli(path, "--bootstrap", "20")
    assert text.returncode == 0 and "essp_fairseg" in text.stdout and "[" in text.stdout


@pytest.mark.parametrize(
    "content,message",
    [
        ("y_true,y_pred\n1,0\n", "line 1: missing column(s) ['group']"),
        ("y_true,y_pred,group\n1,0,A\n1,0\n", "line 3: 2 fields, expected 3"),
        ("y_true,y_pred,group\n1,0,A\n1,,B\n", "line 3, column y_pred: empty value"),
        ("", "empty file"),
        ("y_true,y_pred,group\n", "no data rows"),
    ],
)
def test_cli_names_the_line_and_column_of_a_malformed_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    out = _cli(path)
    assert out.returncode == 2 and message in out.stderr and str(path) in out.stderr
