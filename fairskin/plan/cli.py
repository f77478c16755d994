"""Plan the compute a claim needs: the (R, K, S) that detects a given effect at least cost.

    python -m fairskin plan [--preset P] [--config FILE] [key=value ...] --endpoint E --mde M
        [--power 0.8] [--budget-hours H] [--gpus N] [--gpu-figures FILE] [--method t|normal] [--json]

The command line of :mod:`fairskin.plan`: its options, the run (inputs read, the plan made, printed as
text and optionally one JSON line) and its exit codes.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fairskin.plan.components import COMPONENTS_FILE, components_status, measured_components
from fairskin.plan.cost_records import measured_costs
from fairskin.plan.design import Components, UnitCosts
from fairskin.plan.gpu import GPU_FIGURES_FILE, gpu_costs, load_gpu_figures
from fairskin.plan.optimum import Plan, plan


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The plan's options (with --preset / --config / key=value / --debug) on ``parser``."""
    from fairskin.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--endpoint", required=True, help="the report metric key to plan for, e.g. worst_group_accuracy"
    )
    parser.add_argument(
        "--mde", required=True, type=_positive(float), help="the effect to detect, in the endpoint's units"
    )
    parser.add_argument("--power", type=float, default=None, help="power at the MDE (default: report.power)")
    parser.add_argument(
        "--budget-hours",
        type=_positive(float),
        default=None,
        help="also the smallest MDE within this many wall hours on this machine (with --gpus: wall "
        "hours on that many GPUs at paper scale)",
    )
    parser.add_argument(
        "--gpus",
        type=_positive(int),
        default=None,
        help="GPUs for the paper-scale wall time (GPU-hours / N, perfect scaling assumed)",
    )
    parser.add_argument(
        "--gpu-figures",
        default=None,
        help=f"a file of benchmarks/gpu.py's output (default <runs root>/{GPU_FIGURES_FILE})",
    )
    parser.add_argument(
        "--method",
        choices=["t", "normal"],
        default="t",
        help="t: exact paired t-test over R repeats (default); normal: the z approximation",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="end with one JSON line (keys R, K, S, mde, power, cost_hours_here, cost_gpu_hours, "
        "measured, ...); the text goes to stderr",
    )


def first_run_command(args: argparse.Namespace) -> str:
    """The pipeline run that measures every component: R repeats, K = 2 pools per generator
    (``generation.pool_seeds``) and S = 2 classifier seeds per pool."""
    parts = ["python", "jobs/full_pipeline.py", "--preset", args.preset]
    if args.config_file:
        parts += ["--config", args.config_file]
    parts += list(args.overrides) + ["generation.pool_seeds=[0,1]", "tune.train_seeds=2"]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    """``python -m fairskin plan`` on parsed arguments; the exit code (0 planned, 1 no design reaches the
    MDE within the repeat limit, 2 an input error or no measured components)."""
    from fairskin.cli import config_from_args
    from fairskin.metrics.endpoints import CLASSIFIER_KEYS

    config = config_from_args(args)
    out = sys.stderr if args.json else sys.stdout
    endpoint = args.endpoint
    if not _ranked_endpoint(endpoint):
        return 2
    power = config.report.power if args.power is None else args.power
    m = len(config.report.primary)
    alpha = config.report.alpha / m
    if not alpha < power < 1:
        print(f"error: --power must lie in ({alpha:g}, 1), got {power}", file=sys.stderr)
        return 2
    root = config.runtime.runs_root
    components = _usable_components(args, root, endpoint)
    if components is None:
        return 2
    classifier_level = endpoint in CLASSIFIER_KEYS  # generation endpoints have no classifier seed level
    notes = _input_notes(config, endpoint, alpha, m, components)
    measured = components_status(components, classifier_level)
    costs, cost_status = measured_costs(root, config, notes)
    measured.update(cost_status)
    figures_path = Path(args.gpu_figures) if args.gpu_figures else root / GPU_FIGURES_FILE
    figures = load_gpu_figures(figures_path)
    if args.gpu_figures and figures is None:
        print(f"error: --gpu-figures {figures_path}: no benchmarks/gpu.py JSON lines there", file=sys.stderr)
        return 2
    gpu, gpu_status, gpu_notes = gpu_costs(config, figures)
    measured["gpu"] = gpu_status
    notes += gpu_notes
    budget_seconds, budget_costs, budget_on = _budget(args, costs, gpu)
    result = plan(
        components,
        costs,
        args.mde,
        alpha,
        power,
        budget_seconds,
        gpu,
        method=args.method,
        classifier_level=classifier_level,
        budget_costs=budget_costs,
        budget_on=budget_on,
    )
    result.measured = measured
    result.notes = notes + result.notes
    payload = plan_json(
        result,
        endpoint,
        components,
        costs,
        gpus=args.gpus,
        budget_hours=args.budget_hours,
        family={"alpha": config.report.alpha, "m": m},
    )
    for line in plan_lines(result, endpoint, args.gpus):
        print(line, file=out)
    if args.json:
        print(json.dumps(payload), flush=True)
    return 0 if result.R is not None else 1


def _ranked_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` is a ranked report metric; if not, says so on stderr."""
    from fairskin.metrics.endpoints import DIRECTIONS

    if endpoint not in DIRECTIONS or DIRECTIONS[endpoint] == 0:
        print(
            f"error: --endpoint {endpoint!r} is no ranked report metric; choose from "
            f"{sorted(k for k, v in DIRECTIONS.items() if v)}",
            file=sys.stderr,
        )
        return False
    return True


def _usable_components(args: argparse.Namespace, root: Path, endpoint: str) -> Components | None:
    """The endpoint's measured components under ``root`` with a usable sigma2_ft; else None, having said on
    stderr why and which run measures them."""
    components = measured_components(root, endpoint)
    if components is not None and not (math.isfinite(components.sigma2_ft) and components.sigma2_ft >= 0):
        print(
            f"error: {components.source} has no usable sigma2_ft for {endpoint} ({components.sigma2_ft}): "
            "too few repeats to separate the fine-tune level",
            file=sys.stderr,
        )
        components = None
    if components is None:
        print(
            f"error: no measured variance components of {endpoint} under {root} (no {COMPONENTS_FILE} with a "
            f"row for it): the plan needs them. Make the run that measures them first (K = 2 pools per "
            f"generator, S = 2 classifier seeds per pool):\n  {first_run_command(args)}\nthen plan again with the same "
            "runs root.",
            file=sys.stderr,
        )
    return components


def _input_notes(config, endpoint: str, alpha: float, m: int, components: Components) -> list[str]:
    """The plan's first notes: the test level, whether ``endpoint`` is primary, where the components come from."""
    notes = [
        f"alpha {alpha:.4g} = report.alpha {config.report.alpha:g} / m = {m} primary endpoints (the family's "
        "first Holm level)"
    ]
    if endpoint not in config.report.primary:
        notes.append(
            f"{endpoint} is not a declared primary endpoint (report.primary): exploratory metrics get no "
            "verdict; planned at the family's level anyway"
        )
    notes.append(
        f"components from {components.source}"
        + (f", measured at R = {components.R}, K = {components.K}, S = {components.S}" if components.R else "")
    )
    return notes


def _budget(args: argparse.Namespace, costs: UnitCosts, gpu: UnitCosts) -> tuple[float | None, UnitCosts | None, str]:
    """(budget seconds, the costs they are in, what its hours are) from --budget-hours and --gpus."""
    budget_seconds = budget_costs = None
    budget_on = "wall hours here"
    if args.budget_hours is not None:
        # with --gpus the budget is wall hours on that many GPUs at paper scale: N x H GPU-hours
        budget_seconds = args.budget_hours * 3600 * (args.gpus or 1)
        budget_costs = gpu if args.gpus else costs
        budget_on = "GPU-hours at paper scale" if args.gpus else budget_on
    return budget_seconds, budget_costs, budget_on


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def plan_json(
    result: Plan,
    endpoint: str,
    components: Components,
    costs: UnitCosts,
    *,
    gpus: int | None = None,
    budget_hours: float | None = None,
    family: Mapping[str, Any] | None = None,
) -> dict:
    """The JSON object of a plan: R, K, S, mde (reached, endpoint units), power, cost_hours_here,
    cost_gpu_hours, measured, then endpoint, mde_target, alpha, family, method, cost_gpu_wall_hours (on
    ``gpus`` GPUs), closed_form, budget_hours, budget_mde, components, unit_costs_seconds, notes. Non-finite
    floats become null."""
    return _finite(
        {
            "R": result.R,
            "K": result.K,
            "S": result.S,
            "mde": result.mde_achieved,
            "power": result.power,
            "cost_hours_here": result.cost_hours_here,
            "cost_gpu_hours": result.cost_gpu_hours,
            "measured": result.measured,
            "endpoint": endpoint,
            "mde_target": result.mde_target,
            "alpha": result.alpha,
            "family": dict(family or {}),
            "method": result.method,
            "gpus": gpus,
            "cost_gpu_wall_hours": (
                result.cost_gpu_hours / gpus if gpus and result.cost_gpu_hours is not None else None
            ),
            "closed_form": result.closed_form,
            "r_only": result.r_only,
            "efficiency": result.efficiency,
            "budget_hours": budget_hours,
            "budget_mde": result.budget_mde,
            "components": {k: v for k, v in asdict(components).items()},
            "unit_costs_seconds": asdict(costs),
            "notes": list(result.notes),
        }
    )


def plan_lines(result: Plan, endpoint: str, gpus: int | None = None) -> list[str]:
    """The plan as a few lines of text."""
    cf = result.closed_form
    lines = []
    if result.R is None:
        lines.append(
            f"{endpoint}: no design reaches MDE {result.mde_target:g} (power {result.power:g}, "
            f"alpha {result.alpha:.4g})"
        )
    else:
        gpu = (
            ""
            if result.cost_gpu_hours is None
            else f"; at paper scale {result.cost_gpu_hours:.3g} GPU-hours"
            + (f" ({result.cost_gpu_hours / gpus:.3g} h on {gpus} GPUs)" if gpus else "")
        )
        lines.append(
            f"{endpoint}: R = {result.R} repeats x K = {result.K} pools x S = {result.S} seeds reaches MDE "
            f"{result.mde_achieved:.4g} (target {result.mde_target:g}, power {result.power:g}, alpha "
            f"{result.alpha:.4g}, {'paired t' if result.method == 't' else 'normal approximation'}); "
            f"{result.cost_hours_here:.3g} h here{gpu}"
        )
    lines.append(f"closed form (normal approximation): R = {cf['R']:.2f}, K = {cf['K']:.2f}, S = {cf['S']:.2f}")
    if result.r_only:
        only, eff = result.r_only, result.efficiency or {}
        gpu = "" if only["cost_gpu_hours"] is None else f", {only['cost_gpu_hours']:.3g} GPU-hours at paper scale"
        ratio = "" if eff.get("here") is None else f": x {eff['here']:.3g} the plan's cost here"
        ratio += "" if eff.get("gpu") is None else f", x {eff['gpu']:.3g} in GPU-hours"
        lines.append(
            f"only R growing (K = S = 1): R = {only['R']} reaches MDE {only['mde']:.4g} in "
            f"{only['cost_hours_here']:.3g} h here{gpu}{ratio}"
        )
    if result.budget_mde:
        b = result.budget_mde
        lines.append(
            f"within the budget: MDE {b['mde']:.4g} with R = {b['R']}, K = {b['K']}, S = {b['S']} "
            f"({b['cost_hours']:.3g} {b['on']})"
        )
    lines += [f"{name}: {status}" for name, status in result.measured.items()]
    lines += [f"note: {n}" for n in result.notes]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fairskin.plan``: see the module docstring; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m fairskin plan",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
