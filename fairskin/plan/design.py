"""The nested design's parts: the variance components, the unit costs, an integer design, and power.

A repeat's averaged difference has variance v(K, S) = sigma2_ft + sigma2_pool / K + sigma2_cls / (K S)
(:class:`Components`); the study costs R (c_ft + K (c_pool + S c_cls)) seconds (:class:`UnitCosts`);
:func:`design_mde` and :func:`repeats_needed` relate R to the MDE a paired t-test (or its normal
approximation) detects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MIN_R = 3  # fewest repeats with a paired t-test (fairskin.metrics.paired.MIN_N_TTEST)
MAX_R = 1000  # most repeats the plan considers (verdicts.repeats_for's default bound)
MAX_LEVEL = 1000  # most pools per repeat, or seeds per pool, the plan considers
Method = Literal["t", "normal"]


@dataclass(frozen=True)
class Components:
    """Variance components of one endpoint's paired difference, in the endpoint's units squared.

    sigma2_ft: between generator repeats (fine-tunes); sigma2_pool: between pools within a repeat;
    sigma2_cls: between classifier seeds within a pool (0 for generation endpoints). Each finite
    and >= 0 (:meth:`clean` maps NaN, a level merged into the one above, and negative estimates to
    0). R, K, S: the design they were measured on (None when unknown); source: where from.
    """

    sigma2_ft: float
    sigma2_pool: float = 0.0
    sigma2_cls: float = 0.0
    R: int | None = None
    K: int | None = None
    S: int | None = None
    source: str = ""

    def clean(self) -> Components:
        """The same with NaN and negative components set to 0."""
        fix = {k: (0.0 if not (v >= 0) else float(v)) for k, v in self.parts().items()}
        return Components(**fix, R=self.R, K=self.K, S=self.S, source=self.source)

    def parts(self) -> dict[str, float]:
        """The three components by name: sigma2_ft, sigma2_pool, sigma2_cls."""
        return {"sigma2_ft": self.sigma2_ft, "sigma2_pool": self.sigma2_pool, "sigma2_cls": self.sigma2_cls}

    def per_repeat(self, K: float, S: float) -> float:
        """v(K, S) = sigma2_ft + sigma2_pool / K + sigma2_cls / (K S): the variance of one repeat's
        averaged difference (endpoint units squared)."""
        return self.sigma2_ft + self.sigma2_pool / K + self.sigma2_cls / (K * S)

    def sd_per_repeat(self, K: float, S: float) -> float:
        """sqrt(v(K, S)), endpoint units: the spread the paired t-test over R repeats sees."""
        return math.sqrt(self.per_repeat(K, S))


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of each level of the design, over all of a study's variants.

    c_ft: one generator repeat's fine-tunes; c_pool: one pool per variant (generate + evaluate),
    its classifiers excluded; c_cls: one classifier seed of one pool (every variant x downstream
    mode). All > 0 (wall seconds here, or GPU-seconds at paper scale).
    """

    c_ft: float
    c_pool: float
    c_cls: float

    def __post_init__(self):
        for name in ("c_ft", "c_pool", "c_cls"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0 seconds, got {value}")

    def per_repeat(self, K: float, S: float) -> float:
        """Seconds of one repeat: c_ft + K (c_pool + S c_cls)."""
        return self.c_ft + K * (self.c_pool + S * self.c_cls)

    def total(self, R: float, K: float, S: float) -> float:
        """Seconds of the whole design: R (c_ft + K (c_pool + S c_cls))."""
        return R * self.per_repeat(K, S)


@dataclass(frozen=True)
class Design:
    """An integer design: R repeats, K pools per repeat, S seeds per pool; cost_seconds (in the
    costs' units); mde: the MDE it reaches (endpoint units) at the given alpha and power."""

    R: int
    K: int
    S: int
    cost_seconds: float
    mde: float


# --------------------------------------------------------------------------- power


def z_sum(alpha: float, power: float) -> float:
    """z_{1 - alpha/2} + z_{power}: the standardised MDE of a two-sided z-test (dimensionless)."""
    from scipy import stats  # here, so that `python -m fairskin` imports this module cheaply

    if not (0 < alpha < 1 and alpha < power < 1):
        raise ValueError(f"need 0 < alpha < power < 1, got alpha {alpha}, power {power}")
    return float(stats.norm.isf(alpha / 2) + stats.norm.ppf(power))


def target_variance(mde: float, alpha: float, power: float) -> float:
    """V0 = (mde / (z_{1-alpha/2} + z_power))^2: the largest var_of_mean that detects ``mde`` (endpoint
    units) in the normal approximation (endpoint units squared)."""
    if not (math.isfinite(mde) and mde > 0):
        raise ValueError(f"mde must be finite and > 0, got {mde}")
    return (mde / z_sum(alpha, power)) ** 2


def design_mde(
    components: Components, R: int, K: int, S: int, alpha: float, power: float, method: Method = "t"
) -> float:
    """MDE (endpoint units) of the design: ``verdicts.mde(sd_per_repeat(K, S), R, alpha, power)`` for
    ``method="t"`` (two-sided paired t over R repeats), sd / sqrt(R) x z-sum for ``"normal"``."""
    sd = components.sd_per_repeat(K, S)
    if method == "normal":
        return z_sum(alpha, power) * sd / math.sqrt(R)
    from fairskin.metrics.verdicts import mde

    return mde(sd, R, alpha, power)


def repeats_needed(
    components: Components,
    K: int,
    S: int,
    mde: float,
    alpha: float,
    power: float,
    method: Method = "t",
    r_min: int = MIN_R,
    max_R: int = MAX_R,
) -> int | None:
    """Smallest R in [r_min, max_R] whose design (R, K, S) reaches ``mde`` (endpoint units); None if none.

    ``"t"``: ``verdicts.repeats_for`` (smallest n with the paired t-test's MDE <= mde); ``"normal"``:
    ceil(v(K, S) / V0).
    """
    if method == "normal":
        need = components.per_repeat(K, S) / target_variance(mde, alpha, power)
        R = max(r_min, math.ceil(need * (1 - 1e-12)))
        return R if R <= max_R else None
    from fairskin.metrics.verdicts import repeats_for

    R = repeats_for(components.sd_per_repeat(K, S), mde, alpha, power, max_n=max_R)
    return None if R is None else max(r_min, R)
