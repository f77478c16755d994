"""Controls: does the engine see a known effect, and does it invent none? (issue 13)

    python benchmarks/controls.py [--preset study] [--runs-root DIR] [--quick] [key=value ...]

Runs the pipeline of ``--preset`` (default ``study``: vanilla, FairSkin-S, ``vanilla_twin`` and
``control_drop_african``, R = 3 generator repeats, the classifier in mode random with S = 2
seeds; stages already done under the runs root are skipped), then applies the tests declared
in :mod:`fairskin.controls` to the report's per-repeat values:

* ``control_drop_<group>``: one metric (the group's skin-tone agreement), one-sided paired t-test
  against vanilla at alpha = 0.05; ``drop_detected``;
* ``vanilla_twin``: accuracy, worst-group accuracy, FID variance, skin-tone agreement and disease
  fidelity, two-sided paired t-tests, Holm across them; ``twin_not_flagged`` (by construction
  this fails about 5 % of the time on a correct engine);

and prints the pools' fidelity against the ``study`` targets (the judge's disease accuracy on the
vanilla pool >= 0.5, skin-tone agreement >= 0.7) and FairSkin-S's paired differences against
vanilla (the finding). ``--quick``: the ``smoke`` preset with the controls and R = 3, up to the
evaluate stage (generation metrics only; a check that the script works, not a measurement).
The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairskin.config import build_config  # noqa: E402
from fairskin.controls import ALPHA, controls_report, generation_units  # noqa: E402
from fairskin.pipeline import run_pipeline  # noqa: E402
from fairskin.runtime import quiet_console  # noqa: E402

TARGETS = {"judge_accuracy_generated": 0.5, "skin_tone_agreement": 0.7}  # on the vanilla pools, issue 13
QUICK = ["diffusion.variants=[vanilla,vanilla_twin,control_drop_african]", "diffusion.repeat_seeds=[0,1,2]"]


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(row: dict) -> str:
    return (f"{row['mean_diff']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] n={row['n']} "
            f"p={row['p']:.3g}" + (f" p_holm={row['p_holm']:.3g}" if "p_holm" in row else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="study")
    parser.add_argument("--runs-root", default=None, help="default: ./runs-<preset>")
    parser.add_argument("--quick", action="store_true", help="smoke preset with the controls, up to evaluate")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    quiet_console()  # as the job entry point: no library progress bars or INFO logs on the console
    preset = "smoke" if args.quick else args.preset
    root = Path(args.runs_root or f"runs-{preset}{'-controls' if args.quick else ''}").resolve()
    overrides = (QUICK if args.quick else []) + list(args.overrides) + [f"runtime.runs_root={root}"]
    config = build_config(preset, overrides=overrides)

    started = time.time()
    outcome = run_pipeline(config, stages=["evaluate"] if args.quick else None)
    pipeline_seconds = time.time() - started
    results = outcome.results
    table = pd.read_csv(results["evaluate"].path / "generation_table.csv")
    generation = generation_units(table)
    if "report" in results:
        units = pd.read_csv(results["report"].path / "repeats.csv")
        # per-group generation figures come with the units; the evaluate table fills what they lack
        extra = [c for c in generation.columns if c not in units.columns]
        units = units.merge(generation[["variant", "repeat", *extra]], on=["variant", "repeat"], how="left")
    else:
        units = generation
    report = controls_report(units, config.data.group_names, baseline=config.report.baseline, alpha=ALPHA)

    vanilla = generation[generation["variant"] == config.report.baseline]
    fidelity = {k: float(vanilla[k].mean()) for k in TARGETS if k in vanilla}
    fidelity.update({f"{k}_{g}": float(vanilla[f"{k}_{g}"].mean()) for k in ("skin_tone_agreement",)
                     for g in config.data.group_names if f"{k}_{g}" in vanilla})
    targets_met = all(fidelity.get(k, -1.0) >= v for k, v in TARGETS.items())

    print(f"\npipeline ({preset}, runs root {root}): {pipeline_seconds:.0f} s "
          f"({sum(r.skipped for r in results.values())} of {len(results)} stages already done)")
    print(f"vanilla pools, mean over {len(vanilla)} repeat(s): " + ", ".join(f"{k} {v:.3f}" for k, v in fidelity.items())
          + f"  (targets: {TARGETS}; met: {targets_met})")
    for drop in report["drop"]:
        print(f"{drop['control']}: {drop['metric']} vs {report['baseline']} {_fmt(drop)} "
              f"(one-sided, alpha {ALPHA}) -> detected: {drop['detected']} {drop['why']}")
    if report["twin"]:
        for test in report["twin"]["tests"]:
            print(f"vanilla_twin: {test['label']:<32} {_fmt(test)}")
        print(f"vanilla_twin flagged: {report['twin']['flagged']} (not tested: {report['twin']['missing']})")
    finding = []
    delta = results["report"].path / f"delta_vs_{config.report.baseline}.csv" if "report" in results else None
    if delta is not None and delta.exists():
        frame = pd.read_csv(delta)
        for row in frame[frame["variant"] == "fairskin_s"].to_dict("records"):
            finding.append({k: row.get(k) for k in ("block", "metric", "n", "mean_diff", "low", "high", "p_t",
                                                    "p_holm", "significant", "better")})
            print(f"fairskin_s - {config.report.baseline} [{row['block']}] {row['metric']}: {row['mean_diff']:+.4f} "
                  f"[{row['low']:+.4f}, {row['high']:+.4f}] p_holm={row['p_holm']:.3g}")
    figures = {"preset": preset, "repeats": report["repeats"], "pipeline_seconds": round(pipeline_seconds, 1),
               "targets_met": targets_met, "vanilla_fidelity": fidelity,
               "drop": report["drop"], "twin": report["twin"], "fairskin_s_vs_vanilla": finding,
               "drop_detected": report["drop_detected"], "twin_not_flagged": report["twin_not_flagged"]}
    print(json.dumps(_clean(figures), default=str))


if __name__ == "__main__":
    main()
