"""Real ITA per group: the median, the central 90 % band and the nearest-median assignment.

:class:`ReferenceBands` holds each group's real ITAs (degrees) and assigns an ITA to the group
whose real median is nearest; :mod:`fairskin.metrics.skin_tone` scores agreement (share assigned
to the prompted group) and in-band share with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fairskin.metrics.ita import check_labelled


@dataclass(frozen=True)
class ReferenceBands:
    """Real ITA per group: median, central 90 % band, and the nearest-median assignment.

    ``groups`` are ordered by real median ITA, ascending (darkest first); ``median``,
    ``p05``, ``p95`` map group -> degrees; ``samples`` group -> the real ITAs (float64, sorted);
    ``thresholds`` ``(G - 1,)`` are the midpoints between consecutive medians: an ITA below
    ``thresholds[0]`` is assigned to ``groups[0]``, between ``thresholds[j - 1]`` and
    ``thresholds[j]`` to ``groups[j]`` (a tie at a midpoint goes to the lighter group).
    """

    groups: tuple[str, ...]
    median: dict[str, float]
    p05: dict[str, float]
    p95: dict[str, float]
    thresholds: np.ndarray
    samples: dict[str, np.ndarray] = field(repr=False)

    @classmethod
    def from_real(cls, ita: np.ndarray, groups: np.ndarray) -> ReferenceBands:
        """From real images' ITA ``(N,)`` in degrees and their group labels ``(N,)``."""
        ita, groups = check_labelled(ita, groups, "ita", "groups")
        if len(ita) == 0:
            raise ValueError("no real ITA values")
        names = sorted(set(groups.tolist()))
        samples = {g: np.sort(ita[groups == g]) for g in names}
        median = {g: float(np.median(v)) for g, v in samples.items()}
        order = tuple(sorted(names, key=lambda g: (median[g], g)))
        meds = np.array([median[g] for g in order])
        return cls(
            groups=order,
            median={g: median[g] for g in order},
            p05={g: float(np.percentile(samples[g], 5)) for g in order},
            p95={g: float(np.percentile(samples[g], 95)) for g in order},
            thresholds=(meds[:-1] + meds[1:]) / 2.0,
            samples={g: samples[g] for g in order},
        )

    def assign(self, ita: np.ndarray) -> np.ndarray:
        """The group of nearest real median for each ITA ``(N,)``: object array of group names ``(N,)``."""
        ita = np.asarray(ita, dtype=np.float64)
        idx = np.searchsorted(self.thresholds, ita, side="right")
        return np.asarray(self.groups, dtype=object)[idx]

    def in_band(self, ita: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Bool ``(N,)``: each ITA inside its group's real 5th..95th percentile band (inclusive)."""
        ita, groups = check_labelled(ita, groups, "ita", "groups")
        self._check_known(groups)
        lo = np.array([self.p05[g] for g in groups.tolist()], dtype=np.float64)
        hi = np.array([self.p95[g] for g in groups.tolist()], dtype=np.float64)
        return (ita >= lo) & (ita <= hi)

    def _check_known(self, groups: np.ndarray) -> None:
        unknown = sorted(set(groups.tolist()) - set(self.groups))
        if unknown:
            raise ValueError(f"groups {unknown} have no real reference; known: {list(self.groups)}")
