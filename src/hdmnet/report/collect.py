"""Read the records that tables, figures and the report are rendered from.

Metrics records are required: a table with a silently missing cell would misreport the grid, so
a missing one is an error naming the file and the command that makes it. Training records are
optional (a base learner imported from elsewhere may have none); the report says which ones are
absent.

Every record must be the one the current parameters produce: its ``config_digest`` is compared
with the job identity (``hdmnet.identity``) of its cell, and a record made under other
parameters (stale, or copied from another project) is refused with the list of such files, so a
table never mixes parameter sets. Records of external checkpoints (``hdmnet evaluate
--checkpoint``) are found in their own folder; a stale one is left out with a note.

``cells`` groups the records of one variant in one setting by training seed and fold, as a table
row averages them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdmnet import commands, identity, layout
from hdmnet.config import Params
from hdmnet.layout import BaseRun, Run
from hdmnet.records import BASE_KIND, TRAIN_KIND, RecordError, read_metrics, read_record

# How many missing records an error lists before summarising the rest.
LIST_MISSING = 8


@dataclass(frozen=True)
class Metrics:
    """One evaluation: the run, where its record lives and the record itself; ``external``
    names the checkpoint for records of checkpoints made outside the pipeline."""

    run: Run
    path: Path
    record: dict[str, Any]
    external: str | None = None


# Training seed (None: an external checkpoint) -> fold -> the record of that cell.
Cells = dict[int | None, dict[int, Metrics]]
CELL_KEYS = ("dataset", "backbone", "variant", "fold", "shot")


class StaleRecordError(RecordError):
    """Records that the current parameters did not produce (the message lists them)."""


def load_metrics(params: Params, runs: list[Run] | None = None) -> dict[Run, Metrics]:
    """The metrics record of every run (default: ``layout.all_runs``), checked against its run.

    Raises RecordError listing every missing file with the command that makes it.
    """
    runs = layout.all_runs(params) if runs is None else runs
    found: dict[Run, Metrics] = {}
    missing: list[str] = []
    stale: list[str] = []
    for run in runs:
        path = layout.metrics_file(params, run)
        if not path.exists():
            missing.append(f"{path} (made by: {commands.evaluate(run, params)})")
            continue
        record = read_metrics(path)
        _check_place(path, record, run)
        if record.get("config_digest") != identity.evaluation(params, run):
            stale.append(
                f"{path} (remade by: {commands.evaluate(run, params)}, after its training)"
            )
        found[run] = Metrics(run, path, record)
    if missing:
        raise RecordError(f"{len(missing)} metrics record(s) missing:\n  {_listing(missing)}")
    _refuse_stale(stale, "metrics")
    return found


def cells(
    metrics: dict[Run, Metrics], setting: dict, variant: str, folds: list[int], seeds: list[int]
) -> Cells:
    """Training seed -> fold -> metrics of ``variant`` in one setting, for the folds run."""
    found: Cells = {}
    for seed in seeds:
        runs = (Run(**setting, variant=variant, fold=f, seed=seed) for f in folds)
        found[seed] = {run.fold: metrics[run] for run in runs if run in metrics}
    return found


def load_external(params: Params) -> tuple[list[Metrics], list[str]]:
    """Records of external checkpoints on the grid's datasets and backbones, and a note for
    each one left out because the current protocol settings did not produce it."""
    found: list[Metrics] = []
    notes: list[str] = []
    root = layout.external_dir(params)
    for path in sorted(root.glob("*/*/*/*/fold*-shot*.json")):
        record = read_metrics(path)
        run = Run(
            record["dataset"],
            record["backbone"],
            record["variant"],
            record["fold"],
            record["shot"],
            None,  # trained elsewhere: no training seed of ours
        )
        name = path.relative_to(root).parts[0]
        _check_place(path, record, run)
        if path != layout.external_metrics_file(params, name, run):
            raise RecordError(f"{path}: not where a record of external checkpoint {name} goes")
        sha256 = record["checkpoint"]["sha256"]
        if record.get("config_digest") != identity.external_evaluation(params, run, sha256):
            notes.append(
                f"{path} left out: made with other evaluation settings than the current ones "
                "(evaluate the checkpoint again)"
            )
            continue
        found.append(Metrics(run, path, record, external=name))
    return found, notes


def _refuse_stale(stale: list[str], kind: str) -> None:
    if stale:
        raise StaleRecordError(
            f"{len(stale)} {kind} record(s) were made with other parameters than the current "
            f"ones, and a table never mixes parameter sets:\n  {_listing(stale)}\n"
            "Rerun the pipeline (hdmnet demo, or snakemake): it remakes exactly these."
        )


def _listing(lines: list[str]) -> str:
    shown = lines[:LIST_MISSING]
    more = len(lines) - len(shown)
    return "\n  ".join(shown + ([f"... and {more} more"] if more else []))


def _check_place(path: Path, record: dict[str, Any], run: Run) -> None:
    # A record copied to the wrong place would put its numbers in another cell of the table.
    for key, field in (*((k, k) for k in CELL_KEYS), ("train_seed", "seed")):
        if record.get(key) != getattr(run, field):
            raise RecordError(
                f"{path}: {key} is {record.get(key)!r} but the file's place says "
                f"{getattr(run, field)!r}"
            )


def train_record_path(params: Params, run: Run) -> Path:
    return layout.meta_dir(params, run) / "record.json"


def base_record_path(params: Params, base: BaseRun) -> Path:
    return layout.base_dir(params, base) / "record.json"


def load_training(params: Params, runs: list[Run]) -> dict[Run, dict[str, Any] | None]:
    """The meta-learner training record of each run, None where there is none."""
    stale: list[str] = []
    records = {
        run: _optional(
            train_record_path(params, run), TRAIN_KIND, identity.meta_learner(params, run), stale
        )
        for run in runs
    }
    _refuse_stale(stale, "training")
    return records


def load_base_training(
    params: Params, learners: list[BaseRun]
) -> dict[BaseRun, dict[str, Any] | None]:
    """The training record of each base learner, None where absent."""
    stale: list[str] = []
    records = {
        base: _optional(
            base_record_path(params, base), BASE_KIND, identity.base_learner(params, base), stale
        )
        for base in learners
    }
    _refuse_stale(stale, "base-learner training")
    return records


def _optional(path: Path, kind: str, expected: str, stale: list[str]) -> dict[str, Any] | None:
    # Only absence is tolerated: a present but broken record raises (read_record names it).
    if not path.exists():
        return None
    record = read_record(path, kind)
    if record.get("config_digest") != expected:
        stale.append(str(path))
    return record
