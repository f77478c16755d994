"""The report's metrics, by key: where each is read from, which way is better, and the primary declaration.

A *metric key* names one column of the report's per-repeat units (``repeats.csv``): a classifier
figure read from each trial's MLflow metrics, or a generation figure read from the evaluate run
that measured the trial's pool. ``direction`` is +1 when higher is better, -1 when lower is better,
0 when the metric is not ranked (demographic parity: a constant classifier has DP = 0).

**Primary endpoints** (:class:`Declaration`) are at most five of these keys, declared in the
configuration (``report.primary``) before any data, each with an equivalence margin and a
resolution in its own units. Only they are tested for a verdict, as one Holm family per compared
variant (:func:`fairskin.metrics.verdicts.family_verdicts`); every other metric is exploratory:
shown with its interval, never marked, never in a family.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# (column, MLflow metric, direction)
CLASSIFIER_COLUMNS = (
    ("accuracy", "test_accuracy", +1),
    ("worst_group_accuracy", "test_worst_group_accuracy", +1),
    ("dp", "test_dp", 0),
    ("essp", "test_essp", +1),
    ("essp_fairseg", "test_essp_fairseg", +1),
)
GENERATION_COLUMNS = (
    ("fid", "fid_mean", -1),
    ("fid_var_subclass", "fid_var_subclass", -1),
    ("fid_var_group", "fid_var_group", -1),
    ("kid", "kid_mean", -1),
    ("is", "is_mean", +1),
    ("skin_tone", "skin_tone_agreement", +1),
    ("skin_tone_worst", "skin_tone_agreement_worst_group", +1),
    # W1 of the pool's ITA against the real one per group, over the held-out real images' own W1 at the
    # same N (1 = as close as real; fairskin.metrics.skin_tone): a collapsed, one-colour pool scores high.
    ("skin_tone_w1_worst", "skin_tone_w1_ratio_worst_group", -1),
    ("disease_fidelity", "disease_fidelity", +1),
    ("disease_fidelity_worst", "disease_fidelity_worst_group", +1),
    ("fid_pooled", "fid_pooled_overall", -1),
    ("kid_floor", "kid_floor_mean", 0),
    ("fid_var_subclass_floor_corrected", "fid_var_subclass_floor_corrected", -1),
)
LABELS = {
    "accuracy": "accuracy",
    "worst_group_accuracy": "worst-group acc.",
    "dp": "DP (oracle floor)",
    "essp": "ESSP (paper)",
    "essp_fairseg": "ESSP (FairSeg)",
    "fid": "FID",
    "fid_var_subclass": "FID var (subclass)",
    "fid_var_group": "FID var (group)",
    "kid": "KID",
    "is": "IS",
    "skin_tone": "skin-tone agreement",
    "skin_tone_worst": "skin-tone agr. (worst group)",
    "skin_tone_w1_worst": "skin-tone W1 / real (worst group)",
    "disease_fidelity": "disease fidelity",
    "disease_fidelity_worst": "disease fid. (worst group)",
    "fid_pooled": "FID pooled (real mix)",
    "kid_floor": "KID floor (real vs real)",
    "fid_var_subclass_floor_corrected": "FID var (subclass, floor-corr.)",
}
DIRECTIONS = {c: d for c, _, d in CLASSIFIER_COLUMNS + GENERATION_COLUMNS}
CLASSIFIER_KEYS = frozenset(c for c, _, _ in CLASSIFIER_COLUMNS)
GENERATION_KEYS = frozenset(c for c, _, _ in GENERATION_COLUMNS)
# Metrics that cannot differ between two pools by construction (real vs real at a fixed seed and N):
# never an endpoint, since their difference is 0 with p = 1 whatever the generators do.
CONSTANT_BY_CONSTRUCTION = frozenset({"kid_floor"})
MODES = ("random", "resample", "reweight")

# Declared before any data (issue 26): the worst group's skin-tone distance, disease fidelity and
# accuracy, the floor-corrected FID spread over subclasses, and the paper's ESSP. Margins: the
# smallest difference that would matter, in each metric's units; resolutions: the spread of paired
# differences below which a difference is a tie in those units (a test image, a rounding), not a
# precisely measured effect (then the endpoint is untestable, never p = 0).
DEFAULT_PRIMARY = (
    "skin_tone_w1_worst",
    "disease_fidelity_worst",
    "fid_var_subclass_floor_corrected",
    "worst_group_accuracy",
    "essp",
)
DEFAULT_MARGINS = {
    "skin_tone_w1_worst": 0.5,
    "disease_fidelity_worst": 0.10,
    "fid_var_subclass_floor_corrected": 300.0,
    "worst_group_accuracy": 0.05,
    "essp": 0.05,
}
DEFAULT_RESOLUTIONS = {
    "skin_tone_w1_worst": 0.01,
    "disease_fidelity_worst": 0.001,
    "fid_var_subclass_floor_corrected": 1.0,
    "worst_group_accuracy": 0.001,
    "essp": 0.001,
}
DEFAULT_RESOLUTION = 1e-9  # any other metric: floating-point rounding, in its own units
MAX_PRIMARY = 5


def endpoint_problems(
    primary: list[str] | tuple[str, ...], margins: Mapping[str, float], resolutions: Mapping[str, float]
) -> list[str]:
    """What is wrong with a declaration, one sentence each (empty when it is valid)."""
    known = sorted(DIRECTIONS)
    problems = []
    if not 1 <= len(primary) <= MAX_PRIMARY:
        problems.append(f"report.primary declares {len(primary)} endpoints; declare 1 to {MAX_PRIMARY}")
    if len(set(primary)) != len(primary):
        problems.append(f"report.primary names an endpoint twice: {list(primary)}")
    for name in primary:
        if name not in DIRECTIONS:
            problems.append(f"report.primary: {name!r} is no report metric; choose from {known}")
        elif DIRECTIONS[name] == 0 or name in CONSTANT_BY_CONSTRUCTION:
            problems.append(
                f"report.primary: {name!r} is not ranked or constant by construction, so no verdict "
                "can be better or worse on it"
            )
        elif name not in margins:
            problems.append(f"report.margins has no margin for the primary endpoint {name!r}")
    for section, values in (("margins", margins), ("resolutions", resolutions)):
        for name, value in values.items():
            if name not in DIRECTIONS:
                problems.append(f"report.{section}: {name!r} is no report metric; choose from {known}")
            elif not (value >= 0 if section == "resolutions" else value > 0):
                problems.append(
                    f"report.{section}.{name} = {value}: must be "
                    + (">= 0" if section == "resolutions" else "> 0")
                    + " (in the metric's units)"
                )
    return problems


@dataclass(frozen=True)
class Declaration:
    """The primary endpoints and their margins, as declared before the data.

    primary: metric keys (at most five); margins / resolutions: key -> value in the metric's units;
    mode: the downstream mode whose classifier figures the classifier endpoints read; alpha: the
    family-wise error rate of each variant's family; power: for the minimum detectable effect;
    config_hash: the hash of the configuration that made the declaration (:func:`config_hash`).
    """

    primary: tuple[str, ...] = DEFAULT_PRIMARY
    margins: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    resolutions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RESOLUTIONS))
    mode: str = "random"
    alpha: float = 0.05
    power: float = 0.8
    config_hash: str = ""

    def resolution(self, key: str) -> float:
        """The declared resolution of ``key`` (metric units), else :data:`DEFAULT_RESOLUTION`."""
        return float(self.resolutions.get(key, DEFAULT_RESOLUTION))

    def as_dict(self) -> dict[str, Any]:
        return {
            "primary": list(self.primary),
            "margins": {k: self.margins[k] for k in self.primary},
            "resolutions": {k: self.resolution(k) for k in self.primary},
            "mode": self.mode,
            "alpha": self.alpha,
            "power": self.power,
            "config_hash": self.config_hash,
        }

    def markdown(self) -> str:
        """One line per endpoint: key, label, direction, margin and resolution; then the family's terms."""
        lines = ["| endpoint | metric | better | margin | resolution |", "|---|---|---|---|---|"]
        for key in self.primary:
            lines.append(
                f"| `{key}` | {LABELS.get(key, key)} | {'higher' if DIRECTIONS[key] > 0 else 'lower'} | "
                f"±{self.margins[key]:g} | {self.resolution(key):g} |"
            )
        return "\n".join(lines) + (
            f"\n\nClassifier endpoints read downstream mode `{self.mode}`; alpha {self.alpha} "
            f"per variant's family (Holm); MDE at power {self.power}. Declared by the "
            f"configuration with hash `{self.config_hash or 'not recorded'}`.\n"
        )


def config_hash(tree: Mapping[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of ``tree`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
