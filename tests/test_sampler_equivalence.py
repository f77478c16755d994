"""benchmarks/sampler_equivalence.py: the pairing by generator and the declared margins, without Ray or torch."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location("sampler_equivalence", REPO / "benchmarks" / "sampler_equivalence.py")
se = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(se)


def _rows(shift: dict[str, dict[str, float]], generators=12, seed=0) -> pd.DataFrame:
    """A reference pool per generator and candidates whose metrics move by ``shift`` plus small noise."""
    rng = np.random.default_rng(seed)
    level = {
        "judge_accuracy_generated": rng.normal(0.25, 0.03, generators),
        "skin_tone_agreement": rng.normal(0.65, 0.1, generators),
        "fid_mean": rng.normal(65.0, 5.0, generators),
        "fid_var_subclass": rng.normal(1200, 250, generators),
        "disease_fidelity": rng.normal(0.3, 0.03, generators),
        "kid_mean": rng.normal(5.5, 0.5, generators),
    }
    noise = {
        "judge_accuracy_generated": 0.005,
        "skin_tone_agreement": 0.005,
        "fid_mean": 0.3,
        "fid_var_subclass": 10.0,
        "disease_fidelity": 0.005,
        "kid_mean": 0.05,
    }
    rows = []
    for setting in [se.REFERENCE, *shift]:
        for i in range(generators):
            row = {"setting": setting, "generator": f"vanilla-r{i}"}
            for metric, values in level.items():
                extra = (
                    0.0 if setting == se.REFERENCE else shift[setting].get(metric, 0.0) + rng.normal(0, noise[metric])
                )
                row[metric] = values[i] + extra
            rows.append(row)
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # order must not matter: pairing is by generator


def test_margins_are_resolved_from_the_declared_rules():
    rows = _rows({"same": {}})
    margins = se.resolve_margins(rows, floor=3.0)
    assert set(margins) == set(se.MARGINS)
    assert margins["judge_accuracy_generated"] == 0.05 and margins["skin_tone_agreement"] == 0.05
    assert margins["fid_mean"] == pytest.approx(3.0 * se.MARGINS["fid_mean"][1])
    ref = rows[rows["setting"] == se.REFERENCE]["fid_var_subclass"].mean()
    assert margins["fid_var_subclass"] == pytest.approx(se.MARGINS["fid_var_subclass"][1] * ref)


def test_equivalent_candidate_passes_and_a_shifted_one_fails():
    rows = _rows({"same": {}, "worse_fid": {"fid_mean": 8.0}, "worse_tone": {"skin_tone_agreement": -0.1}})
    margins = se.resolve_margins(rows, floor=3.0)
    results = se.equivalence(rows, margins, ["same", "worse_fid", "worse_tone"])
    assert results["same"]["equivalent"] and results["same"]["n"] == 12
    assert all(results["same"][m]["equivalent"] for m in se.MARGINS)
    assert not results["worse_fid"]["equivalent"] and not results["worse_fid"]["fid_mean"]["equivalent"]
    assert results["worse_fid"]["judge_accuracy_generated"]["equivalent"]  # the other metrics still are
    assert results["worse_fid"]["fid_mean"]["mean_diff"] == pytest.approx(8.0, abs=0.5)
    assert not results["worse_tone"]["equivalent"]
    # the differences are paired by generator: the shared per-generator level cancels
    same = results["same"]["fid_mean"]
    assert same["high90"] - same["low90"] < 1.0  # unpaired, the generators' spread (sd 5) would give ~+-4


def test_unpaired_generators_are_dropped_and_missing_settings_refused():
    rows = _rows({"same": {}})
    rows = rows[~((rows["setting"] == "same") & (rows["generator"] == "vanilla-r3"))]
    results = se.equivalence(rows, se.resolve_margins(rows, floor=3.0), ["same"])
    assert results["same"]["n"] == 11 and results["same"]["fid_mean"]["dropped"] == 1
    with pytest.raises(ValueError, match="candidate"):
        se.equivalence(rows, {"fid_mean": 3.0}, ["absent"])
    table = se.format_table(results, se.resolve_margins(rows, floor=3.0))
    assert "ALL (intersection-union)" in table and "n = 11 generators" in table
