"""Ray Tune + Optuna searches over the classifier, tracked in MLflow: ``python -m fairskin.tune --space NAME``.

* :mod:`fairskin.tune.spaces`: search spaces (YAML in ``tune_spaces/``), scaling, pool checks, simplex sampling;
* :mod:`fairskin.tune.trainable`: the trial function (reports to Tune only);
* :mod:`fairskin.tune.mlflow_callback`: child runs nested under the study's parent, stable across resume;
* :mod:`fairskin.tune.study`: :func:`run_study` -> :class:`StudyResult`;
* :mod:`fairskin.tune.analysis`: best trial, Pareto front, plots;
* :mod:`fairskin.tune.inputs`: the pipeline stages a CLI study needs when no pools are given.
"""

from fairskin.tune.spaces import SearchSpace, SpaceError, load_space, resolve_space
from fairskin.tune.study import StudyError, StudyResult, run_study, study_name

__all__ = ["SearchSpace", "SpaceError", "StudyError", "StudyResult", "load_space", "resolve_space", "run_study",
           "study_name"]
