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

``row_values`` gives a table row these numbers: its values over the training seeds of its cells,
each delta with its spread and noise mark; ``seed_notes`` and ``delta_notes`` say under a table
how they were taken.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hdmnet.report.collect import Cells, Metrics
from hdmnet.report.paper import FOLDS

# Two-sided 95% quantiles of Student's t for 1-4 degrees of freedom; from 5 on the expansion in
# ``t_quantile`` is within 3e-4 of the exact value.
T975_SMALL = (12.7062, 4.3027, 3.1824, 2.7764)
Z975 = 1.959963984540054
TRAINING, TEST = "training seeds", "test seeds"
# The values of a row that have a delta, and the metric each one averages.
DELTA_KEYS = {**{f"fold{f}": "miou" for f in FOLDS}, "mean": "miou", "fbiou": "fbiou"}
# Frame columns of a whole row, after the cells' (kept only where a row has them): the number of
# training seeds behind the row, and over which seeds and how many a delta's spread is taken.
ROW_KEYS = ("train_seeds", "delta_spread", "delta_n")
# The notes under a table on its spreads (filled in with str.format).
NOTES = {
    "train_seeds": "Mean ± std over {n} training seeds ({seeds}): each cell averages one "
    "record per training seed (each a mean over the test seeds), ± the sample standard "
    "deviation over the training seeds; Mean and FB-IoU average the folds of each training seed "
    "first.",
    "delta_training": "± of a delta: the standard deviation of its {n} per-seed differences "
    "(variant - full model trained from the same seed). A delta is marked 'within noise', not "
    "an effect, when |delta| <= t × std / √{n}, t = {t:.2f} (two-sided 95% Student t, {dof}).",
    "delta_test": "± of a delta: its spread over the {n} test seeds, √(s_v² + s_f²) with s_v "
    "and s_f the standard deviations of the variant's and the full model's records over their "
    "test seeds (Mean and FB-IoU: the folds' spreads added in quadrature, over the number of "
    "folds). A delta is marked 'within noise', not an effect, when |delta| <= t × √(s_v² + "
    "s_f²) / √{n}, t = {t:.2f} (two-sided 95% Student t, {dof}).",
    "training_not_measured": "The training-seed spread was not measured in this run (one "
    "training seed, {seed}): the ± and the noise marks leave out how far another training seed "
    "moves a result, so a delta outside them may still be training noise. List several seeds "
    "in grid.train_seeds to measure it.",
}


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


def difference(a: float | None, b: float | None) -> float | None:
    """``a - b``, None if either is absent."""
    return None if a is None or b is None else a - b


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


def row_values(
    cells: Cells, full: Cells, several: bool = False, deltas: bool = False
) -> dict[str, Any]:
    """The values of one variant's row in one setting: each the mean over the training seeds of
    ``cells`` (see ``_seed_values``; a delta the mean of the per-seed differences to ``full``).
    ``several``: the grid has several training seeds, so every value gets its standard
    deviation over them (``key_std``) and the row its number of seeds; ``deltas``: each delta
    gets its spread and whether it is within noise (``key_delta_std``, ``key_delta_noise``)."""
    per_seed = [_seed_values(cells[s], full.get(s, {})) for s in cells] or [_seed_values({}, {})]
    values: dict[str, Any] = {}
    for key in per_seed[0]:
        values[key] = mean(v[key] for v in per_seed)
        if several and not key.endswith("_delta"):
            values[f"{key}_std"] = std(v[key] for v in per_seed)
    if several:
        values["train_seeds"] = sum(1 for c in cells.values() if c)
    if deltas:
        found = {key: _delta(key, values, per_seed, cells, full) for key in DELTA_KEYS}
        for key, delta in found.items():
            values[f"{key}_delta_std"] = None if delta is None else delta.spread
            values[f"{key}_delta_noise"] = None if delta is None else delta.noise
        known = [d for d in found.values() if d is not None]
        values["delta_spread"] = known[0].over if known else None
        values["delta_n"] = known[0].n if known else None
    return values


def _value(item: Metrics | None, key: str = "miou", output: str | None = None) -> float | None:
    """A number of a metrics record (of one output's own results if given), None if absent."""
    record = {} if item is None else item.record
    if output is not None:
        record = record.get("outputs", {}).get(output, {})
    return None if record.get(key) is None else float(record[key])


def _seed_values(cells: dict[int, Metrics], full: dict[int, Metrics]) -> dict[str, Any]:
    """The values of one training seed's row: per fold, mean and FB-IoU, each with its delta to
    ``full`` (the full model's cells; empty for the full model itself), and the mean mIoU of the
    meta and base outputs."""
    values: dict[str, Any] = {}
    for f in FOLDS:
        item, ref = _value(cells.get(f)), _value(full.get(f))
        values |= {f"fold{f}": item, f"fold{f}_delta": difference(item, ref)}
    # The delta of a mean is only meaningful over the same folds.
    same_folds = bool(full) and set(cells) <= set(full)
    for key, name in (("mean", "miou"), ("fbiou", "fbiou")):
        values[key] = mean(_value(m, name) for m in cells.values())
        ref_mean = mean(_value(full[f], name) for f in cells if f in full)
        values[f"{key}_delta"] = difference(values[key], ref_mean) if same_folds else None
    for output in ("meta", "base"):
        values[f"{output}_mean"] = mean(_value(m, "miou", output) for m in cells.values())
    return values


def _delta(key: str, values: dict, per_seed: list[dict], cells: Cells, full: Cells) -> Delta | None:
    """The uncertainty of the delta ``key``: over the training seeds where there are several,
    else over the test seeds of the one training seed's records."""
    if values[f"{key}_delta"] is None:
        return None
    if len(per_seed) > 1:
        return paired([v[f"{key}_delta"] for v in per_seed if v[f"{key}_delta"] is not None])
    ((seed, items),) = cells.items()
    refs, metric = full.get(seed, {}), DELTA_KEYS[key]
    if key.startswith("fold"):
        fold = int(key.removeprefix("fold"))
        return _test_delta(items[fold], refs[fold], metric)
    folds = [_test_delta(items[f], refs[f], metric) for f in items]
    return fold_mean(values[f"{key}_delta"], folds)


def _test_delta(item: Metrics, ref: Metrics, metric: str) -> Delta | None:
    """``metric`` of ``item`` minus that of ``ref`` (records of one training seed), with its
    spread over their test seeds."""

    def per_test_seed(m: Metrics) -> list[float]:
        rows = m.record["outputs"]["final"]["per_seed"]
        return [float(r[metric]) for r in rows if r.get(metric) is not None]

    value = float(item.record[metric]) - float(ref.record[metric])
    return unpaired(value, per_test_seed(item), per_test_seed(ref))


def seed_notes(seeds: Sequence[int]) -> list[str]:
    """With several training seeds in the grid: what a cell's mean and ± are."""
    if len(seeds) < 2:
        return []
    return [NOTES["train_seeds"].format(n=len(seeds), seeds=", ".join(map(str, seeds)))]


def delta_notes(rows: Iterable[dict[str, Any]], seeds: Sequence[int]) -> list[str]:
    """How the deltas of rows (``row_values``' with deltas) get their ± and noise marks; with
    one training seed (of ``seeds``), that the training-seed spread was not measured."""
    measured = {(v["delta_spread"], v["delta_n"]) for v in rows if v["delta_spread"]}
    if not measured:
        return []
    over, n = min(measured, key=lambda m: m[1])
    key = "delta_training" if over == TRAINING else "delta_test"
    dof = f"{n - 1} degree{'' if n == 2 else 's'} of freedom"
    notes = [NOTES[key].format(n=n, t=t_quantile(n - 1), dof=dof)]
    if over == TEST:
        notes.append(NOTES["training_not_measured"].format(seed=seeds[0]))
    return notes
