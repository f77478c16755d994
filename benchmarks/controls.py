"""Controls: does the engine see a known effect of a relevant size, and does it invent none? (issues 13, 26)

    python benchmarks/controls.py [--preset study] [--runs-root DIR] [--quick] [key=value ...]

Runs the pipeline of ``--preset`` (default ``study``: vanilla, FairSkin-S, ``vanilla_twin``,
``control_drop_african`` and the graded ``control_mix_african_50`` / ``_20``, R = 3 generator
repeats, the classifier in mode random; stages already done under the runs root are skipped), then
applies the tests declared in :mod:`fairskin.controls` with the configuration's primary endpoints
(``report.primary``):

* the verdict of every primary endpoint of every variant against vanilla, with its minimum
  detectable effect (better / worse / equivalent / inconclusive / untestable);
* ``control_drop_<group>``: the group's skin-tone agreement, one-sided paired t-test; ``drop_detected``;
* the sensitivity curve: the drop (fraction 1.0) and each ``control_mix_<group>_<pct>``, measured
  effect with interval against the expected one, detected or not (``sensitivity.png``); the smallest
  detected fraction is the engine's stated sensitivity on the preset;
* ``vanilla_twin``: the primary endpoints' verdicts (one Holm family); ``twin_not_flagged``; its
  family-wise false-positive rate by simulation calibrated to its own spread (Clopper-Pearson);
  ``twin_pools_differ``: its pools' fingerprints differ from vanilla's in every repeat.

Exits 1 (after printing its JSON line) when the twin's pools equal vanilla's or every per-repeat
difference on every primary endpoint is exactly zero: such a twin passes by accident.
``--quick``: the ``smoke`` preset with the controls and R = 3, up to the evaluate stage (generation
endpoints only; a check that the script works, not a measurement). The last line printed is one
JSON object of the figures.
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
from fairskin.controls import controls_report, generation_units  # noqa: E402
from fairskin.pipeline import run_pipeline  # noqa: E402
from fairskin.pipeline.stages.generate import pool_provenance  # noqa: E402
from fairskin.provenance import split_generator_id  # noqa: E402
from fairskin.report import primary_verdicts  # noqa: E402
from fairskin.runtime import quiet_console  # noqa: E402

TARGETS = {"judge_accuracy_generated": 0.5, "skin_tone_agreement": 0.7}  # on the vanilla pools, issue 13
QUICK = [
    "diffusion.variants=[vanilla,vanilla_twin,control_drop_african,control_mix_african_50,control_mix_african_20]",
    "diffusion.repeat_seeds=[0,1,2]",
]


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(row: dict) -> str:
    return f"{row['mean_diff']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] n={row['n']} p={row['p']:.3g}" + (
        f" p_holm={row['p_holm']:.3g}" if "p_holm" in row else ""
    )


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
    declaration = config.declaration()
    baseline = config.report.baseline
    report = controls_report(units, config.data.group_names, baseline=baseline, declaration=declaration)
    verdicts = (
        pd.read_csv(results["report"].path / "verdicts.csv")
        if "report" in results
        else primary_verdicts(units, baseline, declaration, config.report.level)
    )
    pools = pool_provenance(results["generate"])
    twin_pools_differ = twin_pools_differ_from(pools, "vanilla_twin", baseline)

    vanilla = generation[generation["variant"] == config.report.baseline]
    fidelity = {k: float(vanilla[k].mean()) for k in TARGETS if k in vanilla}
    fidelity.update(
        {
            f"{k}_{g}": float(vanilla[f"{k}_{g}"].mean())
            for k in ("skin_tone_agreement",)
            for g in config.data.group_names
            if f"{k}_{g}" in vanilla
        }
    )
    targets_met = all(fidelity.get(k, -1.0) >= v for k, v in TARGETS.items())

    print(
        f"\npipeline ({preset}, runs root {root}): {pipeline_seconds:.0f} s "
        f"({sum(r.skipped for r in results.values())} of {len(results)} stages already done)"
    )
    print(
        f"vanilla pools, mean over {len(vanilla)} repeat(s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in fidelity.items())
        + f"  (targets: {TARGETS}; met: {targets_met})"
    )
    print(f"declared primary endpoints (config hash {declaration.config_hash}): {list(declaration.primary)}")
    for row in verdicts.to_dict("records"):
        print(
            f"{row['variant']:>24} {row['endpoint']:<34} {row['verdict']:<12} {row['mean_diff']:+.4g} "
            f"[{row['low']:+.4g}, {row['high']:+.4g}] MDE {row['mde']:.4g} (sd upper 80 %: "
            f"{row['mde_sd_upper80']:.4g}) {row['reason'] if isinstance(row['reason'], str) else ''}"
        )
    for row in report["sensitivity"]:
        print(
            f"sensitivity {row['control']:<24} fraction {row['fraction']:.2f} {row['endpoint']:<30} effect "
            f"{row['effect']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] expected {row['expected']:+.3f} "
            f"detected {row['detected']}"
        )
    print(f"stated sensitivity: smallest detected fraction {report['stated_sensitivity']}")
    if report["sensitivity"]:
        plot_sensitivity(report["sensitivity"], root / "sensitivity.png")
        print(f"sensitivity curve: {root / 'sensitivity.png'}")
    for drop in report["drop"]:
        print(
            f"{drop['control']}: {drop['metric']} vs {report['baseline']} {_fmt(drop)} "
            f"(one-sided, alpha {declaration.alpha}) -> detected: {drop['detected']} {drop['why']}"
        )
    if report["twin"]:
        fpr = report["twin"]["false_positive_rate"]
        print(
            f"vanilla_twin flagged: {report['twin']['flagged']} (not measured: {report['twin']['missing']}); "
            f"pools differ from vanilla's: {twin_pools_differ}; every primary difference exactly 0: "
            f"{report['twin']['all_zero']}; simulated family-wise false-positive rate {fpr['rate']:.3f} "
            f"[{fpr['low']:.3f}, {fpr['high']:.3f}] ({fpr['n_studies']} studies at R = {fpr['n']})"
        )
    finding = [r for r in verdicts.to_dict("records") if r["variant"] == "fairskin_s"]
    figures = {
        "preset": preset,
        "repeats": report["repeats"],
        "pipeline_seconds": round(pipeline_seconds, 1),
        "targets_met": targets_met,
        "vanilla_fidelity": fidelity,
        "drop": report["drop"],
        "twin": report["twin"],
        "fairskin_s_vs_vanilla": finding,
        "drop_detected": report["drop_detected"],
        "twin_not_flagged": report["twin_not_flagged"],
        "verdicts": {f"{r['variant']}:{r['endpoint']}": r["verdict"] for r in verdicts.to_dict("records")},
        "mde": {f"{r['variant']}:{r['endpoint']}": r["mde"] for r in verdicts.to_dict("records")},
        "sensitivity": [
            {k: r[k] for k in ("control", "fraction", "endpoint", "effect", "low", "high", "detected", "expected")}
            for r in report["sensitivity"]
        ],
        "stated_sensitivity": report["stated_sensitivity"],
        "twin_pools_differ": twin_pools_differ,
        "twin_all_zero": bool(report["twin"]["all_zero"]) if report["twin"] else None,
        "twin_false_positive_rate": report["twin"]["false_positive_rate"]["rate"] if report["twin"] else None,
        "twin_false_positive_rate_ci": (
            [report["twin"]["false_positive_rate"]["low"], report["twin"]["false_positive_rate"]["high"]]
            if report["twin"]
            else None
        ),
        "declaration": declaration.as_dict(),
    }
    print(json.dumps(_clean(figures), default=str))
    problem = twin_passes_by_accident(report["twin"], twin_pools_differ)
    if problem:
        print(f"the twin passes by accident: {problem}", file=sys.stderr)
        sys.exit(1)


def twin_passes_by_accident(twin: dict | None, pools_differ: bool | None) -> str:
    """Why the twin's pass means nothing ("" when it means something): its pools are vanilla's in
    some repeat, or every per-repeat difference on every primary endpoint is exactly 0."""
    if twin is None:
        return ""
    if pools_differ is False:
        return "its pool fingerprints equal vanilla's (a cache collision or an ignored seed salt)"
    if twin["all_zero"]:
        return "every per-repeat difference on every primary endpoint is exactly 0"
    return ""


def twin_pools_differ_from(pools: dict, twin: str, baseline: str) -> bool | None:
    """Whether the twin's pool fingerprint differs from the baseline's in every repeat both have
    (``pools``: generator id -> {"pool": fingerprint, ...}); None without a twin."""
    by = {}
    for generator, record in pools.items():
        variant, repeat = split_generator_id(generator)
        by[(variant, repeat)] = record["pool"]
    repeats = sorted(r for (v, r) in by if v == twin and (baseline, r) in by)
    if not repeats:
        return None
    return all(by[(twin, r)] != by[(baseline, r)] for r in repeats)


def plot_sensitivity(curve: list, path: Path) -> Path:
    """Measured effect (with its 95 % interval) against the mixed fraction, per endpoint; the
    expected line (fraction x the drop's effect) on share-type endpoints; filled = detected."""
    from fairskin.metrics.plots import _pyplot

    plt = _pyplot()
    endpoints = sorted({r["endpoint"] for r in curve})
    fig, axes = plt.subplots(1, len(endpoints), figsize=(4.2 * len(endpoints), 3.4), squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints):
        rows = sorted((r for r in curve if r["endpoint"] == endpoint), key=lambda r: r["fraction"])
        x = [r["fraction"] for r in rows]
        y = [r["effect"] for r in rows]
        err = [[r["effect"] - r["low"] for r in rows], [r["high"] - r["effect"] for r in rows]]
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor="grey", capsize=3)
        for r in rows:
            ax.plot(r["fraction"], r["effect"], "o", color="C0", mfc="C0" if r["detected"] else "white")
        expected = [(r["fraction"], r["expected"]) for r in rows if math.isfinite(r["expected"])]
        if expected:
            ax.plot(
                [0] + [e[0] for e in expected],
                [0] + [e[1] for e in expected],
                "--",
                color="C1",
                label="expected (fraction x drop)",
            )
            ax.legend(fontsize=7)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("fraction of the group's images from the drop control")
        ax.set_ylabel("control - vanilla (endpoint units)")
        ax.set_title(endpoint, fontsize=8)
    fig.suptitle("Sensitivity: measured effect [95 % CI] vs mixed fraction (filled = detected)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
