"""Read the records that tables, figures and the report are rendered from.

Metrics records are required: a table with a silently missing cell would misreport the grid, so
a missing one is an error naming the file and the command that makes it. Training records are
optional (an official checkpoint evaluated with ``--checkpoint`` has none); the report says which
ones are absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.layout import Run
from hdmnet.records import BASE_KIND, TRAIN_KIND, RecordError, read_metrics, read_record

# How many missing records an error lists before summarising the rest.
LIST_MISSING = 8


@dataclass(frozen=True)
class Metrics:
    """One evaluation: the run, where its record lives and the record itself."""

    run: Run
    path: Path
    record: dict[str, Any]


def evaluate_command(run: Run) -> str:
    """The CLI call that writes the metrics record of ``run``."""
    return (
        f"hdmnet evaluate --dataset {run.dataset} --backbone {run.backbone} "
        f"--fold {run.fold} --shot {run.shot} --variant {run.variant}"
    )


def load_metrics(params: Params, runs: list[Run] | None = None) -> dict[Run, Metrics]:
    """The metrics record of every run (default: ``layout.all_runs``), checked against its run.

    Raises RecordError listing every missing file with the command that makes it.
    """
    runs = layout.all_runs(params) if runs is None else runs
    found: dict[Run, Metrics] = {}
    missing: list[str] = []
    for run in runs:
        path = layout.metrics_file(params, run)
        if not path.exists():
            missing.append(f"{path} (made by: {evaluate_command(run)})")
            continue
        record = read_metrics(path)
        _check_identity(path, record, run)
        found[run] = Metrics(run, path, record)
    if missing:
        shown = missing[:LIST_MISSING]
        more = len(missing) - len(shown)
        lines = "\n  ".join(shown + ([f"... and {more} more"] if more else []))
        raise RecordError(f"{len(missing)} metrics record(s) missing:\n  {lines}")
    return found


def _check_identity(path: Path, record: dict[str, Any], run: Run) -> None:
    # A record copied to the wrong place would put its numbers in another cell of the table.
    for key in ("dataset", "backbone", "variant", "fold", "shot"):
        if record[key] != getattr(run, key):
            raise RecordError(
                f"{path}: {key} is {record[key]!r} but the file's place says {getattr(run, key)!r}"
            )


def train_record_path(params: Params, run: Run) -> Path:
    return layout.meta_dir(params, run) / "record.json"


def base_record_path(params: Params, dataset: str, backbone: str, fold: int) -> Path:
    return layout.base_dir(params, dataset, backbone, fold) / "record.json"


def load_training(params: Params, runs: list[Run]) -> dict[Run, dict[str, Any] | None]:
    """The meta-learner training record of each run, None where there is none."""
    return {run: _optional(train_record_path(params, run), TRAIN_KIND) for run in runs}


def load_base_training(
    params: Params, learners: list[tuple[str, str, int]]
) -> dict[tuple[str, str, int], dict[str, Any] | None]:
    """The base-learner training record of each (dataset, backbone, fold), None where absent."""
    return {key: _optional(base_record_path(params, *key), BASE_KIND) for key in learners}


def _optional(path: Path, kind: str) -> dict[str, Any] | None:
    # Only absence is tolerated: a present but broken record raises (read_record names it).
    return read_record(path, kind) if path.exists() else None
