"""Ray Tune + Optuna searches over the classifier, tracked in MLflow: ``python -m fairskin.tune --space NAME``.

* :mod:`fairskin.tune.spaces`: search spaces (YAML in ``tune_spaces/``) loaded and resolved, pool checks; their
  schema in :mod:`~fairskin.tune.space_schema`, the resolved form in :mod:`~fairskin.tune.resolved`, simplex
  sampling in :mod:`~fairskin.tune.simplex`;
* :mod:`fairskin.tune.trainable`: the trial function (reports to Tune only);
* :mod:`fairskin.tune.mlflow_callback`: child runs nested under the study's parent, stable across resume;
* :mod:`fairskin.tune.study`: :func:`run_study` -> :class:`StudyResult`, shared by the trial kinds
  (:mod:`fairskin.tune.kinds`); :mod:`fairskin.tune.tuner`: its Ray Tune pieces; :mod:`fairskin.tune.study_report`:
  its trials table and report folder;
* :mod:`fairskin.tune.classifier`: the classifier study's kind (the default; the pipeline's ``tune`` stage);
* :mod:`fairskin.tune.confirm`: confirmations of the chosen points under new seeds;
* :mod:`fairskin.tune.analysis`: best trial, Pareto front, plots;
* :mod:`fairskin.tune.generator`, :mod:`fairskin.tune.generator_study`: the generator study's trainable and
  kind (``trainable: generator``; above the pipeline, whose stages are its inputs); a trial's pool made, scored
  and saved in :mod:`fairskin.tune.generator_pool`;
* :mod:`fairskin.tune.inputs`: the pipeline stages a CLI study needs when no pools are given.

Layers: ``study``, ``classifier``, ``kinds``, ``tuner``, ``confirm`` and ``trainable`` sit below
:mod:`fairskin.pipeline` (which runs the classifier study) and never import it or the generator modules;
``generator``, ``generator_study``, ``inputs`` and the CLI (``__main__``) sit above it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562), not with the package: a trial's process unpickles
# fairskin.tune.trainable, and importing the package eagerly pulled in study -> mlflow_callback ->
# mlflow (about 2.5 s idle, 4 s on a busy 2-core machine) into every trial actor and Ray task.
_EXPORTS = {
    "SearchSpace": "spaces",
    "SpaceError": "spaces",
    "load_space": "spaces",
    "resolve_space": "spaces",
    "StudyError": "study",
    "StudyResult": "study",
    "run_study": "study",
    "study_name": "study",
}

__all__ = [
    "SearchSpace",
    "SpaceError",
    "StudyError",
    "StudyResult",
    "load_space",
    "resolve_space",
    "run_study",
    "study_name",
]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from fairskin.tune.spaces import SearchSpace, SpaceError, load_space, resolve_space
    from fairskin.tune.study import StudyError, StudyResult, run_study, study_name


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
