"""The training-free baseline (``eval.baseline``) in the main table: its numbers are the
``baseline`` sections of the full model's metrics records, shown as a row of their own, and a
note says what the baseline is and which thresholds its cells chose."""

from __future__ import annotations

from collections.abc import Iterable

from hdmnet.report.collect import Cells, Metrics

NOTE = (
    "Training-free baseline ({method}): {what} (thresholds chosen: {thresholds}; "
    "eval.baseline). It learns nothing: HDMNet's row minus this one is what meta-training adds."
)


def cells(full: Cells) -> Cells:
    """The baseline sections of the full model's records in ``full``, each as a record of its
    own (mIoU, FB-IoU and method); a training seed whose records have none has no cells."""
    found: Cells = {}
    for seed, by_fold in full.items():
        sections = {
            f: (m, m.record["baseline"]) for f, m in by_fold.items() if "baseline" in m.record
        }
        found[seed] = {
            f: Metrics(m.run, m.path, {k: section[k] for k in ("miou", "fbiou", "method")})
            for f, (m, section) in sections.items()
        }
    return found


def label(found: Cells) -> str:
    """The Method cell of the baseline's row, from its cells (``cells``; not empty)."""
    method = next(m.record["method"] for c in found.values() for m in c.values())
    return f"Training-free baseline ({method})"


def notes(metrics: Iterable[Metrics]) -> list[str]:
    """What each baseline shown is, and the thresholds its cells chose."""
    what: dict[str, str] = {}
    chosen: dict[str, set[float]] = {}
    for item in metrics:
        section = item.record.get("baseline")
        if section is not None and item.run.variant == "full":
            what[section["method"]] = section["what"]
            chosen.setdefault(section["method"], set()).add(float(section["threshold"]))
    return [
        NOTE.format(
            method=method, what=what[method], thresholds=", ".join(f"{t:g}" for t in sorted(ts))
        )
        for method, ts in sorted(chosen.items())
    ]
