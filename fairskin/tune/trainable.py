"""The Tune trainable: one classifier run per trial, reporting to Tune only.

The driver decodes the real splits and each variant's pool once and puts them in the
object store (:func:`put_inputs`); a trial gets the refs through ``tune.with_parameters``
and reads zero-copy views. Each epoch's ``val_*`` figures go to ``ray.tune.report``; the
last epoch's report also carries the test figures, computed once after training, so they
are logged with the trial but never steer the search (the searcher and ASHA read val_*).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fairskin.config import ClassifierConfig
from fairskin.tune.spaces import ResolvedSpace
from fairskin.tune.trial_memo import REPLAYED, TrialMemo


@dataclass
class TrialInputs:
    """What every trial shares: object-store refs to the decoded data and the resolved space.

    ``real``: ref to (train, val, test) ``DecodedSet``s; ``pools``: variant -> ref to the pool's
    ``DecodedSet``; ``memo``: where finished trials are kept and replayed from (:mod:`fairskin.tune.trial_memo`),
    None: every trial trains.
    """

    real: Any
    pools: Mapping[str, Any]
    space: ResolvedSpace
    classifier: ClassifierConfig
    memo: TrialMemo | None = None


def put_inputs(
    real_shards,
    pools: Mapping[str, Any],
    space: ResolvedSpace,
    classifier: ClassifierConfig,
    memo: TrialMemo | None = None,
) -> TrialInputs:
    """Decode the real shards and the pools the space uses (once, here) and ``ray.put`` them."""
    import ray

    from fairskin.data.stream import decode_local

    real = tuple(decode_local(real_shards, splits=[s]) for s in ("train", "val", "test"))
    pool_refs = {}
    for variant in space.variants:
        pool_refs[variant] = ray.put(decode_local(pools[variant], splits=["pool"]))
    return TrialInputs(real=ray.put(real), pools=pool_refs, space=space, classifier=classifier, memo=memo)


def flat_test_figures(test: Mapping[str, Any]) -> dict[str, float]:
    """``{"accuracy": a, "accuracy_ci": [lo, hi]}`` -> ``{"test_accuracy": a, "test_accuracy_ci_low": lo, ...}``."""
    out: dict[str, float] = {}
    for key, value in test.items():
        if isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"test_{key}_low"], out[f"test_{key}_high"] = float(value[0]), float(value[1])
        elif isinstance(value, (int, float)):
            out[f"test_{key}"] = float(value)
    return out


def run_trial(
    config: Mapping[str, Any],
    data,
    space: ResolvedSpace,
    classifier: ClassifierConfig,
    report: Callable[[dict[str, float]], None],
    memo: TrialMemo | None = None,
) -> None:
    """Train one classifier for a trial config; ``report`` gets each epoch's figures, the last one
    with the test figures (computed once, after training) and ``trial_replayed``. ``data``: a ``ClassifierData``,
    or a callable that returns one (called only when the trial trains). With a ``memo`` holding this trial's
    reports, they are reported again instead; a trial that trains to its end is added to it."""
    from fairskin.classify.train import train_classifier

    plan = space.plan_for(config)
    cfg = classifier.model_copy(update={"downstream_mode": config["mode"], **space.classifier_overrides(config)})
    key, key_inputs = memo.key(config, plan, cfg) if memo is not None else (None, None)
    stored = memo.load(key) if memo is not None else None
    if stored is not None:
        for figures in stored[:-1]:
            report(dict(figures))
        report({**stored[-1], REPLAYED: 1.0})
        return
    plan_rows = {"plan_total": float(plan.total or 0)} if plan.kind == "group_proportions" else {}
    held: list[dict[str, float]] = []
    reported: list[dict[str, float]] = []

    def per_epoch(metrics: dict[str, float]) -> None:
        # Every epoch is reported at once, except the last: it waits for the test figures.
        if int(metrics["epoch"]) < cfg.epochs:
            reported.append({**metrics, **plan_rows})
            report(dict(reported[-1]))
        else:
            held.append(metrics)

    result = train_classifier(
        data() if callable(data) else data,
        cfg,
        plan=plan,
        mode=config["mode"],
        seed=int(config["seed"]),
        report=per_epoch,
        evaluate_test=True,
    )
    last = held[-1] if held else dict(result.history[-1])
    reported.append({**last, **plan_rows, **flat_test_figures(result.test)})
    if memo is not None:  # before the last report: Tune may end the trial there
        memo.save(key, key_inputs, reported)
    report({**reported[-1], REPLAYED: 0.0})


def load_trial_data(inputs: TrialInputs, variant: str):
    """The trial's ``ClassifierData``: zero-copy views of the object store's arrays."""
    import ray

    from fairskin.classify.train import ClassifierData

    train, val, test = ray.get(inputs.real)
    return ClassifierData(train, val, test, pool=ray.get(inputs.pools[variant]))


def classifier_trial(config: dict[str, Any], inputs: TrialInputs) -> None:
    """Tune function trainable: train one classifier with the trial's plan, mode, variant and seed."""
    import warnings

    from ray import tune

    from fairskin.runtime import configure_worker

    # Object-store arrays are read-only views; the classifier only reads them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    configure_worker(int(config["seed"]))  # torch threads from the CPUs this trial holds
    data = lambda: load_trial_data(inputs, config["variant"])  # noqa: E731  (not read when the trial is replayed)
    run_trial(config, data, inputs.space, inputs.classifier, tune.report, memo=inputs.memo)
