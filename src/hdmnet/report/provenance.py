"""What produced each number: per run the fields a reader needs to trust or rerun it (record,
checkpoint and how it was selected, commit, data, timing), and per table cell the runs it is
computed from. ``provenance.json`` is this document; the HTML report shows the same fields."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hdmnet.config import Params
from hdmnet.report.collect import Cells, Metrics
from hdmnet.report.paper import FOLDS, SOURCE, compare_with_paper
from hdmnet.report.spread import ROW_KEYS
from hdmnet.report.table import Table

PAPER_SOURCE = f"{SOURCE} (spec/PAPER.md)"
SELECTION_TEXT = {
    "best_val": "the checkpoint with the best validation mIoU (best_val, the paper's practice)",
    "last": "the last checkpoint (last)",
}


def run_name(item: Metrics) -> str:
    """The name of a record's run; an external checkpoint's is prefixed with its name, so that
    it never collides with the pipeline's run of the same cell."""
    return item.run.name if item.external is None else f"external:{item.external}/{item.run.name}"


def selection_modes(metrics: Iterable[Metrics]) -> dict[str, list[str]]:
    """Checkpoint selection mode -> names of the runs evaluated with it."""
    modes: dict[str, list[str]] = {}
    for item in metrics:
        mode = str(item.record["checkpoint"].get("selection", "unknown"))
        modes.setdefault(mode, []).append(run_name(item))
    return modes


def selection_note(metrics: Iterable[Metrics]) -> str:
    """How the runs' checkpoints were selected, in words; a mix of modes is flagged."""
    modes = selection_modes(metrics)
    if not modes:
        return "No runs."
    if len(modes) == 1:
        (mode,) = modes
        return f"Checkpoint selection: every run uses {SELECTION_TEXT.get(mode, mode)}."
    parts = [f"{SELECTION_TEXT.get(m, m)}: {len(names)} runs" for m, names in modes.items()]
    return "Checkpoint selection is MIXED: " + "; ".join(parts) + "."


def commits(metrics: Iterable[Metrics]) -> tuple[str, bool]:
    """The runs' commits ("(dirty)": with uncommitted changes), and whether to warn about them."""
    found: dict[str, bool] = {}
    for item in metrics:
        git = item.record.get("git") or {}
        commit = str(git.get("git_commit") or "unknown")
        found[commit] = found.get(commit, False) or git.get("git_dirty") is True
    text = ", ".join(f"{c[:12]}{' (dirty)' if dirty else ''}" for c, dirty in found.items())
    return text or "no runs", len(found) > 1 or any(found.values())


def run_provenance(item: Metrics) -> dict[str, Any]:
    """What produced one metrics record: the fields a reader needs to trust or rerun a cell."""
    record, run = item.record, item.run
    git, checkpoint, timing = (record.get(key) or {} for key in ("git", "checkpoint", "timing"))
    kept = ("config_digest", "annotation", "split", "data_hash", "hardware", "mlflow_run_id")
    return {
        "record": str(item.path),
        **({} if item.external is None else {"external": item.external}),
        **{key: getattr(run, key) for key in ("dataset", "backbone", "variant", "fold", "shot")},
        **{key: record[key] for key in ("miou", "fbiou", "seeds", "episodes_per_seed")},
        **{key: record.get(key) for key in kept},
        **{key: git.get(key) for key in ("git_commit", "git_dirty")},
        **{f"checkpoint_{key}": checkpoint.get(key) for key in ("path", "sha256", "epoch")},
        "selection": checkpoint.get("selection"),
        **{key: timing.get(key) for key in ("seconds", "ms_per_episode")},
    }


def column_runs(cells: Cells, full: Cells) -> dict[str, list[str]]:
    """Per column key of a variant's row, the names of the runs (every training seed's) its
    value comes from: the variant's ``cells`` and, for a delta, the full model's ``full``."""

    def names(source: Cells, fold: int | None = None, of: Cells | None = None) -> list[str]:
        return [
            run_name(m)
            for seed, by_fold in source.items()
            for f, m in by_fold.items()
            if (fold is None or f == fold) and (of is None or f in of.get(seed, {}))
        ]

    runs = {f"fold{f}": names(cells, f) + names(full, f) for f in FOLDS}
    variant = names(cells)
    runs |= {"meta_mean": variant, "base_mean": variant}
    runs["mean"] = runs["fbiou"] = variant + names(full, of=cells)
    return runs


# A cell's spread in provenance.json: name -> frame column (after the cell's key); the row-wide
# keys (``spread.ROW_KEYS``) follow.
SPREAD = {"std": "_std", "delta_std": "_delta_std", "delta_noise": "_delta_noise"}


def cell_provenance(table: Table) -> list[dict[str, Any]]:
    """Every number of ``table`` with its row's text, its value, the runs it comes from (every
    training seed's) and, where the table has one, its spread (``spread``: the standard
    deviation over training seeds, the delta's spread and whether it is within noise, over
    which seeds and how many)."""
    cells = []
    keys = [c.key for c in table.columns if c.kind == "text"]
    for values, row in zip(table.records(), table.rows, strict=True):
        for col in (c for c in table.columns if c.kind != "text"):
            value = values[col.key]
            if col.kind == "pair":
                value = {"value": value, "delta": values[f"{col.key}_delta"]}
            paper_used = row.role in ("paper", "diff") or col.key == "paper_mean"
            cell = {"table": table.name, "row": {k: values[k] for k in keys}}
            cell |= {"column": col.key, "value": value, "runs": row.runs.get(col.key, [])}
            spread = {k: values.get(col.key + s) for k, s in SPREAD.items()}
            spread |= {k: values.get(k) for k in ROW_KEYS}
            if spread["std"] is not None or spread["delta_std"] is not None:
                cell["spread"] = {k: v for k, v in spread.items() if v is not None}
            cells.append(cell | {"paper": PAPER_SOURCE if paper_used else None})
    return cells


def document(
    params: Params,
    metrics: Sequence[Metrics],
    tables: Sequence[Table],
    left_out: Sequence[str] = (),
) -> dict[str, Any]:
    """``provenance.json``: every run's provenance (external checkpoints' records included) and
    every cell of every table with the runs it comes from; ``left_out``: the external records
    not shown, and why."""
    pipeline = [item for item in metrics if item.external is None]
    return {
        "preset": params.preset,
        "data_source": params.data.source,
        "compared_with_paper": compare_with_paper(params),
        "selection": selection_modes(pipeline),
        "runs": {run_name(item): run_provenance(item) for item in metrics},
        "cells": [cell for table in tables for cell in cell_provenance(table)],
        **({"external_left_out": list(left_out)} if left_out else {}),
    }
