"""How far the tables' numbers move between seeds, and when a difference is only noise.

With several training seeds (``grid.train_seeds``) every cell is the mean over the trainings
and its spread the sample standard deviation over them (n - 1 in the denominator). A delta
(variant - full model) is paired by training seed, since the variant and the full model trained
from one seed share the base learner and the episodes: its spread is the standard deviation of
the per-seed differences. With one training seed the training spread is not measured; the delta's
spread is then its test-seed spread, the two records' standard deviations over their test seeds
combined as for independent samples (the same episodes make them positively correlated, so this
overstates the spread: it errs towards calling a delta noise).

A delta is *within noise* when ``|delta| <= t * se``: ``se`` its standard error (the spread over
the square root of the number of seeds) and ``t`` the two-sided 95% quantile of Student's t with
n - 1 degrees of freedom (2.26 at 10 seeds, about 2 for many). With 2 or 3 seeds t is 12.7 or
4.3: the standard deviation of two or three values says little, and a threshold of two standard
errors would call chance differences effects.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t for 1-4 degrees of freedom; from 5 on the expansion in
# ``t_quantile`` is within 3e-4 of the exact value.
T975_SMALL = (12.7062, 4.3027, 3.1824, 2.7764)
Z975 = 1.959963984540054
TRAINING, TEST = "training seeds", "test seeds"


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_quantile: {df} degrees of freedom, need at least 1")
    if df <= len(T975_SMALL):
        return T975_SMALL[df - 1]
    z = Z975  # Cornish-Fisher expansion (Abramowitz and Stegun 26.7.5)
    g = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values present, None without any."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def std(values: Iterable[float | None]) -> float | None:
    """The sample standard deviation of the values present, None with fewer than two."""
    present = [v for v in values if v is not None]
    return statistics.stdev(present) if len(present) >= 2 else None


@dataclass(frozen=True)
class Delta:
    """A difference with its uncertainty: ``value``, its ``spread`` over the seeds (a standard
    deviation), its standard error ``se``, the degrees of freedom ``df`` of that estimate, and
    over which seeds (``over``: ``TRAINING`` or ``TEST``) and how many (``n``)."""

    value: float
    spread: float
    se: float
    df: int
    over: str
    n: int

    @property
    def noise(self) -> bool:
        """Whether the delta lies within the noise: |value| <= t(df) * se."""
        return abs(self.value) <= t_quantile(self.df) * self.se


def paired(differences: Sequence[float]) -> Delta | None:
    """A delta from its per-training-seed differences (None with fewer than two)."""
    if len(differences) < 2:
        return None
    n, spread = len(differences), statistics.stdev(differences)
    return Delta(sum(differences) / n, spread, spread / math.sqrt(n), n - 1, TRAINING, n)


def unpaired(value: float, variant: Sequence[float], full: Sequence[float]) -> Delta | None:
    """A delta of one training seed from the two records' per-test-seed values (None unless
    each has at least two): spread sqrt(s_v^2 + s_f^2), standard error
    sqrt(s_v^2 / n_v + s_f^2 / n_f), degrees of freedom min(n_v, n_f) - 1."""
    if min(len(variant), len(full)) < 2:
        return None
    sv, sf = statistics.stdev(variant), statistics.stdev(full)
    n = min(len(variant), len(full))
    se = math.sqrt(sv**2 / len(variant) + sf**2 / len(full))
    return Delta(value, math.hypot(sv, sf), se, n - 1, TEST, n)


def fold_mean(value: float, deltas: Sequence[Delta | None]) -> Delta | None:
    """The delta of a mean over folds from the folds' independent test-seed deltas: spread and
    standard error add in quadrature and are divided by the number of folds."""
    if not deltas or any(d is None for d in deltas):
        return None
    known = [d for d in deltas if d is not None]
    k = len(known)
    spread = math.sqrt(sum(d.spread**2 for d in known)) / k
    se = math.sqrt(sum(d.se**2 for d in known)) / k
    return Delta(value, spread, se, min(d.df for d in known), TEST, min(d.n for d in known))
