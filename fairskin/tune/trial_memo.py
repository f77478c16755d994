"""Finished classifier trials kept by what they depend on, so that a later study on the same runs root replays them.

On the CPU a classifier trial is a pure function of its inputs (same data, settings and seed: the same figures),
and some studies ask for trials that an earlier study finished. Each look of a run until conclusive is one: its
``tune`` stage is keyed by the whole set of pools, so it is a new study at every look, yet all but the new batch's
trials were trained at the look before. A trial whose inputs match a finished one's reports the stored figures,
epoch by epoch, instead of training again:

    <runs root>/trials/<key>.json     {"inputs": what the key hashes, "reports": every report, in order}

The key hashes the content fingerprints of the trial's pool and of the real shards (not their names or places),
the trial's settings but its pool id (mode, seed, searched parameters), the resolved classifier settings and
augmentation plan, the CPUs and GPUs a trial holds (torch's threads follow them), the torch version and
``MEMO_VERSION`` (bumped when the classifier's training changes what a trial reports). Only a trial that ran to its
end is kept: one that ASHA stopped, that failed or was killed leaves nothing. Each trial's last report carries
``trial_replayed`` (1: replayed, 0: trained), so the MLflow child run says which it was and the planner's unit
costs count trained trials only. A file is written under a temporary name and renamed; one that cannot be read
is trained again (and rewritten).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMO_DIR = "trials"
MEMO_VERSION = 1
REPLAYED = "trial_replayed"  # metric of a trial's last report: 1.0 replayed, 0.0 trained


@dataclass(frozen=True)
class TrialMemo:
    """Where a study's finished trials are kept and what their pools hold.

    ``folder``: ``<runs root>/trials``; ``pools``: pool id -> content fingerprint of its shards; ``real``: the real
    shards' fingerprint; ``resources``: what each trial holds (``{"CPU": 0.5, "GPU": 0.0}``)."""

    folder: str
    pools: Mapping[str, str]
    real: str
    resources: Mapping[str, float]

    def key(self, trial: Mapping[str, Any], plan: Any, classifier: Any) -> tuple[str, dict[str, Any]]:
        """(64-hex key, the inputs it hashes) of a trial: ``trial`` is Tune's trial config (``variant`` names the
        pool), ``plan`` its resolved ``AugmentPlan``, ``classifier`` its resolved ``ClassifierConfig``."""
        import torch

        inputs = {
            "version": MEMO_VERSION,
            "pool": self.pools[trial["variant"]],
            "real": self.real,
            "trial": {k: v for k, v in sorted(trial.items()) if k != "variant"},
            "plan": plan.model_dump(mode="json"),
            "classifier": classifier.model_dump(mode="json"),
            "resources": dict(sorted(self.resources.items())),
            "torch": torch.__version__,
        }
        blob = json.dumps(inputs, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest(), inputs

    def load(self, key: str) -> list[dict[str, float]] | None:
        """The stored reports of trial ``key`` (each epoch's figures, the last with the test figures); None when
        there is none or it cannot be read."""
        try:
            reports = json.loads((Path(self.folder) / f"{key}.json").read_text())["reports"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return reports if isinstance(reports, list) and reports else None

    def save(self, key: str, inputs: Mapping[str, Any], reports: list[dict[str, float]]) -> None:
        """Keep a finished trial's reports (temporary name, then rename)."""
        from fairskin.io import atomic_write_json, plain_number

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        plain = [{k: plain_number(v) for k, v in figures.items()} for figures in reports]
        atomic_write_json(Path(self.folder) / f"{key}.json", {"inputs": dict(inputs), "reports": plain})


def memo_for(runs_root: Path, pools: Mapping[str, str], real: str, resources: Mapping[str, float]) -> TrialMemo:
    """The memo of a classifier study on ``runs_root``: ``pools``: pool id -> the content fingerprint of its shards,
    ``real``: the real shards' (:func:`fairskin.provenance.shard_fingerprint`, as the study's runs are tagged)."""
    return TrialMemo(
        folder=str(Path(runs_root) / MEMO_DIR),
        pools=dict(pools),
        real=real,
        resources={k: float(v) for k, v in resources.items()},
    )
