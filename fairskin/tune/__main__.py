"""``python -m fairskin.tune --space NAME [--preset P] [--variant V] [--trials N] [--resume] [key=value ...]``

Without ``--pool`` / ``--real-shards`` the pipeline stages the study needs are run first
(see :mod:`fairskin.tune.inputs`). Exit codes: 0 done, 1 no trial finished (the message quotes
the first trials' errors), 2 invalid input (space, pool, config, a flag such as ``--trials 0``
or an unsafe ``--study`` name: flags are checked before any stage or Ray starts) or a runs root
in use by another process, 130 interrupted (resume with ``--resume``). ``--debug`` shows the
traceback of an input error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fairskin.cli import add_config_arguments, add_lock_argument, config_from_args, input_errors


def _pools(values: list[str]) -> dict[str, Path]:
    """``VARIANT=PATH`` items -> {variant: absolute path}; ValueError names the bad item."""
    pools = {}
    for text in values:
        if "=" not in text:
            raise ValueError(f"--pool {text!r}: expected VARIANT=PATH")
        variant, path = text.split("=", 1)
        pools[variant.strip()] = Path(path).expanduser().resolve()
    return pools


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad flags before anything is built, written or started (exit 2 naming the flag)."""
    from fairskin.names import name_problem

    if args.trials is not None and args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    for flag, value in (("--study", args.study), ("--variant", args.variant)):
        if value is not None and name_problem(value):  # both name <runs root>/tune/<study>
            parser.error(f"{flag}: {name_problem(value)}")
    try:
        args.pools = _pools(args.pool)
    except ValueError as exc:
        parser.error(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fairskin.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, help="search space: tune_spaces/NAME.yaml or a YAML path")
    parser.add_argument("--variant", default=None, help="the pool's variant, when the space does not search it")
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="number of trials (default: tune.num_trials, else the space's; a grid runs its grid)",
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study")
    parser.add_argument("--study", default=None, help="study name (default: SPACE-VARIANT|all-PRESET)")
    parser.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="VARIANT=PATH",
        help="a pool shard folder per variant (repeatable)",
    )
    parser.add_argument("--real-shards", default=None, help="the prepare stage's shard folder")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_config_arguments(parser)
    add_lock_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    config = config_from_args(args)
    from fairskin.lock import runs_root_lock
    from fairskin.runtime import quiet_console

    quiet_console(config.runtime.verbose)  # as the pipeline job: no library progress bars or INFO logs

    with input_errors(args.debug), runs_root_lock(config.runtime.runs_root, break_lock=args.break_lock):
        return _study(args, config)


def _study(args: argparse.Namespace, config) -> int:
    """The study of ``--space``, of the kind its ``trainable`` names: the classifier study (here) or a
    generator study (:func:`_generator_study`)."""
    from fairskin.tune.spaces import load_space
    from fairskin.tune.study import run_study

    space = load_space(args.space)  # validated, its name included, before any stage runs
    if space.trainable == "generator":
        return _generator_study(args, config, space)
    pools = args.pools
    real = Path(args.real_shards).expanduser().resolve() if args.real_shards else None
    if not pools or real is None:
        from fairskin.tune.inputs import pipeline_inputs

        wanted = [args.variant] if args.variant else list(config.diffusion.variants)
        real_default, pool_default = pipeline_inputs(config, wanted)
        real = real or real_default
        pools = pools or pool_default
    if space.parameter("variant") is None and not args.variant and len(pools) > 1:
        # One pool per study when the space does not search the variant: the space's, else the
        # last configured variant (the paper's method, fairskin_s, in the presets).
        args.variant = space.fixed.variant or config.diffusion.variants[-1]
    result = run_study(
        config, space, pools, real, variant=args.variant, trials=args.trials, resume=args.resume, name=args.study
    )
    return _print_summary(args, result)


def _generator_study(args: argparse.Namespace, config, space) -> int:
    """A generator study: check the space through the typed config, run (or skip) the stages it reads
    (prepare, base, judge, reference), then the study with the generator kind over them."""
    from fairskin.tune.generator import generator_sources
    from fairskin.tune.generator_study import GeneratorKind
    from fairskin.tune.spaces import resolve_generator_space
    from fairskin.tune.study import run_study

    if args.pool or args.real_shards or args.variant:
        raise ValueError(f"space {space.name!r} trains generators: --pool, --real-shards and --variant do not apply")
    resolve_generator_space(space, config, trials=args.trials)  # fail before any stage runs
    sources = generator_sources(config)
    result = run_study(
        config,
        space,
        {},
        sources.shards,
        trials=args.trials,
        resume=args.resume,
        name=args.study,
        kind=GeneratorKind(sources),
    )
    return _print_summary(args, result)


def _print_summary(args: argparse.Namespace, result) -> int:
    summary = {
        "study": result.name,
        "path": str(result.path),
        "experiment_id": result.experiment_id,
        "parent_run_id": result.parent_run_id,
        "trials": len(result.trials),
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 1),
        "best": {k: result.best.get(k) for k in ("trial_id", "run_id", *result.space.metrics)} if result.best else None,
        "pareto_size": len(result.pareto),
        "confirmed": json.loads(result.confirmed.to_json(orient="records")) if len(result.confirmed) else [],
        "best_variant": str(result.best_variant) if result.best_variant else None,
    }
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(
            f"study {result.name}: {summary['trials']} trial(s) in {summary['seconds']} s; "
            f"best {summary['best']}; Pareto front of {summary['pareto_size']}; report in {result.path / 'report'}"
        )
        if len(result.confirmed) and "metric" in result.confirmed:  # a generator study's confirmations
            from fairskin.tune.generator_study import confirmed_lines

            for line in confirmed_lines(result.confirmed):
                print(line)
        if result.best_variant:
            name = _variant_name(result.best_variant)
            print(
                f"best generator as a variant: {result.best_variant}\n  python jobs/full_pipeline.py --preset "
                f'{args.preset} --config {result.best_variant} "diffusion.variants=[vanilla, fairskin_s, {name}]"'
            )
    if result.interrupted:
        print(
            f"interrupted: continue with `python -m fairskin.tune --space {args.space} --preset {args.preset} "
            f"--study {result.name} --resume ...`",
            file=sys.stderr,
        )
        return 130
    return 0


def _variant_name(path: Path) -> str:
    """The name of the one custom variant in a generator trial's ``variant.yaml``."""
    import yaml

    return yaml.safe_load(Path(path).read_text())["diffusion"]["custom_variants"][0]["name"]


if __name__ == "__main__":
    sys.exit(main())
