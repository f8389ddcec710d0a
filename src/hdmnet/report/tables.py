"""Paper-style tables built from metrics records, rendered as Markdown, CSV and LaTeX.

A ``Table`` is plain data (columns, rows of raw values, notes); each row also remembers which runs
every value came from, so ``provenance`` can trace each cell to its record. The renderers only
format: numbers to one decimal, deltas with a sign, "-" where the grid has no such cell. The CSV
keeps raw numbers (missing cells empty) so that pandas reads it without parsing strings.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hdmnet.config import Params
from hdmnet.layout import Run
from hdmnet.report import paper
from hdmnet.report.collect import Metrics

MISSING = "-"
FOLDS = paper.FOLDS
PAPER_SOURCE = f"{paper.SOURCE} (spec/PAPER.md)"


@dataclass(frozen=True)
class Column:
    """``kind``: text (left-aligned, ``show`` formats it), num, delta (signed) or pair
    ((value, delta) shown as "70.1 (-1.1)"; CSV gets ``key`` and ``key_delta``)."""

    key: str
    label: str
    kind: str = "num"
    show: Callable[[Any], str] = str


@dataclass
class Row:
    values: dict[str, Any]
    # Column key -> names of the runs the value is computed from (provenance).
    runs: dict[str, list[str]] = field(default_factory=dict)
    # Rows of one group (one dataset/backbone/shot) are typeset together.
    group: str = ""
    # "ours", "paper", "diff" or a variant name: the HTML report styles rows by it.
    role: str = "ours"


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def column(self, key: str) -> Column:
        for col in self.columns:
            if col.key == key:
                return col
        raise KeyError(f"table {self.name!r} has no column {key!r}")


# --- building -------------------------------------------------------------------------------


def compare_with_paper(params: Params) -> bool:
    """The paper's numbers are for the real data sets: compare only runs on official data."""
    return params.data.source == "official"


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _output_miou(record: dict[str, Any], output: str) -> float | None:
    value = record.get("outputs", {}).get(output, {}).get("miou")
    return None if value is None else float(value)


def _setting_columns() -> list[Column]:
    return [
        Column("dataset", "Dataset", "text", paper.dataset_name),
        Column("backbone", "Backbone", "text", paper.backbone_name),
        Column("shot", "Shot", "text"),
    ]


def _fold_columns(kind: str) -> list[Column]:
    return [Column(f"fold{f}", f"Fold {f}", kind) for f in FOLDS]


def selection_modes(metrics: Iterable[Metrics]) -> dict[str, list[str]]:
    """Checkpoint selection mode -> names of the runs evaluated with it."""
    modes: dict[str, list[str]] = {}
    for item in metrics:
        mode = str(item.record["checkpoint"].get("selection", "unknown"))
        modes.setdefault(mode, []).append(item.run.name)
    return modes


SELECTION_TEXT = {
    "best_val": "the checkpoint with the best validation mIoU (best_val, the paper's practice)",
    "last": "the last checkpoint (last)",
}


def selection_note(metrics: Iterable[Metrics]) -> str:
    modes = selection_modes(metrics)
    if not modes:
        return "No runs."
    if len(modes) == 1:
        (mode,) = modes
        return f"Checkpoint selection: every run uses {SELECTION_TEXT.get(mode, mode)}."
    parts = [f"{SELECTION_TEXT.get(m, m)}: {len(names)} runs" for m, names in modes.items()]
    return "Checkpoint selection is MIXED: " + "; ".join(parts) + "."


def main_table(params: Params, metrics: dict[Run, Metrics]) -> Table:
    """Full model, rows dataset x backbone x shot, columns folds 0-3, mean and mean FB-IoU.

    With real data the paper's row and the difference (ours - paper) follow each of our rows
    that the paper also reports.
    """
    grid = params.grid
    compare = compare_with_paper(params)
    columns = _setting_columns()
    if compare:
        columns.append(Column("source", "Source", "text"))
    columns += [*_fold_columns("num"), Column("mean", "Mean"), Column("fbiou", "FB-IoU")]
    rows: list[Row] = []
    partial_folds = sorted(grid.folds) != list(FOLDS)
    for dataset in grid.datasets:
        for backbone in grid.backbones:
            for shot in grid.shots:
                group = f"{dataset}/{backbone}/{shot}"
                cells = {
                    f: metrics[run]
                    for f in grid.folds
                    if (run := Run(dataset, backbone, "full", f, shot)) in metrics
                }
                setting = {"dataset": dataset, "backbone": backbone, "shot": shot}
                ours = _ours_row(setting, cells, group)
                rows.append(ours)
                if not compare:
                    continue
                ours.values["source"] = "ours"
                published = paper.paper_result(dataset, backbone, shot)
                if published is not None:
                    rows += _paper_rows(setting, published, ours, group, complete=not partial_folds)
    notes = [
        "mIoU and FB-IoU in %, final (ensembled) output, mean over the test seeds; "
        "Mean and FB-IoU average the folds shown.",
        selection_note(metrics[r] for r in metrics if r.variant == "full"),
    ]
    if partial_folds:
        shown = ", ".join(map(str, grid.folds))
        notes.append(f"Only folds {shown} are in the grid; '-' marks folds not run.")
    if compare:
        notes.append(
            f"Paper rows: {paper.SOURCE}; COCO-20i uses the FWB split. "
            "'ours - paper' is our value minus the published one."
        )
        if params.data.coco_split != "fwb" and "coco" in grid.datasets:
            notes.append(
                f"data.coco_split is {params.data.coco_split!r}: COCO differences are against "
                "the paper's FWB split and not like for like."
            )
        if partial_folds:
            notes.append("The mean is not compared: the paper's mean is over folds 0-3.")
    else:
        notes.append(
            "These runs use the embedded (generated) data set, not PASCAL-5i or COCO-20i: "
            "the paper's numbers (paper.md) are for the real data and are not compared."
        )
    return Table("main", "Main results: mIoU (%) per fold, full model", columns, rows, notes)


def _ours_row(setting: dict[str, Any], cells: dict[int, Metrics], group: str) -> Row:
    values: dict[str, Any] = dict(setting)
    runs: dict[str, list[str]] = {}
    for f in FOLDS:
        item = cells.get(f)
        values[f"fold{f}"] = None if item is None else float(item.record["miou"])
        if item is not None:
            runs[f"fold{f}"] = [item.run.name]
    names = [item.run.name for item in cells.values()]
    values["mean"] = _mean(float(item.record["miou"]) for item in cells.values())
    values["fbiou"] = _mean(float(item.record["fbiou"]) for item in cells.values())
    runs["mean"] = runs["fbiou"] = names
    return Row(values, runs, group, "ours")


def _paper_rows(
    setting: dict[str, Any],
    published: paper.PaperResult,
    ours: Row,
    group: str,
    complete: bool,
) -> list[Row]:
    theirs: dict[str, Any] = {**setting, "source": "paper"}
    for f, value in zip(FOLDS, published.folds, strict=True):
        theirs[f"fold{f}"] = value
    theirs["mean"] = published.mean
    theirs["fbiou"] = published.fbiou
    diff: dict[str, Any] = {**setting, "source": "ours - paper"}
    for f in FOLDS:
        diff[f"fold{f}"] = _sub(ours.values[f"fold{f}"], theirs[f"fold{f}"])
    # Means over different fold sets are not comparable.
    diff["mean"] = _sub(ours.values["mean"], published.mean) if complete else None
    diff["fbiou"] = _sub(ours.values["fbiou"], published.fbiou) if complete else None
    return [Row(theirs, {}, group, "paper"), Row(diff, dict(ours.runs), group, "diff")]


def config_diff(params: Params, variant: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, full model's value, variant's value) for each override of ``variant``."""
    if variant == "full":
        return []
    rows = []
    for key, value in params.variants[variant].items():
        node: Any = params.raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        rows.append((key, node, value))
    return rows


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def describe_variant(params: Params, variant: str) -> str:
    if variant == "full":
        return "(full model)"
    return ", ".join(
        f"{key}: {_yaml_value(a)} → {_yaml_value(b)}" for key, a, b in config_diff(params, variant)
    )


def ablation_table(params: Params, metrics: dict[Run, Metrics]) -> Table:
    """Each variant against the full model on the ablation grid: per fold, mean and FB-IoU
    with the delta (variant - full) in parentheses; mean mIoU of the meta and base outputs."""
    ab = params.ablation
    compare = compare_with_paper(params)
    columns = [
        Column("variant", "Variant", "text"),
        Column("change", "Change", "text"),
        *_setting_columns(),
        *_fold_columns("pair"),
        Column("mean", "Mean", "pair"),
        Column("fbiou", "FB-IoU", "pair"),
        Column("meta_mean", "Meta mean"),
        Column("base_mean", "Base mean"),
    ]
    if compare:
        columns.append(Column("paper_mean", "Paper mean"))
    rows: list[Row] = []
    missing_full: list[str] = []
    for dataset in ab.datasets:
        for backbone in ab.backbones:
            for shot in ab.shots:
                group = f"{dataset}/{backbone}/{shot}"
                setting = {"dataset": dataset, "backbone": backbone, "shot": shot}
                full = _cells(metrics, dataset, backbone, "full", shot, ab.folds)
                missing_full += [
                    Run(dataset, backbone, "full", f, shot).name for f in ab.folds if f not in full
                ]
                for variant in ["full", *ab.variants]:
                    cells = _cells(metrics, dataset, backbone, variant, shot, ab.folds)
                    row = _ablation_row(params, setting, variant, cells, full, group)
                    if compare:
                        published = paper.paper_result(dataset, backbone, shot, variant)
                        row.values["paper_mean"] = None if published is None else published.mean
                    rows.append(row)
    notes = [
        "mIoU (%) of the final output, mean over the test seeds; in parentheses the variant "
        "minus the full model on the same folds. Meta / Base mean: the meta learner's and the "
        "base learner's own outputs, averaged over the folds shown.",
        selection_note(metrics.values()),
    ]
    if missing_full:
        notes.append(
            "The full model was not run on every ablation cell (not in the main grid), so some "
            "deltas are '-': " + ", ".join(missing_full) + "."
        )
    if compare:
        notes.append(f"Paper mean: {paper.SOURCE}, where the paper gives the variant's number.")
    else:
        notes.append("Embedded (generated) data set: no comparison with the paper's numbers.")
    title = "Ablations: each variant against the full model"
    return Table("ablation", title, columns, rows, notes)


def _cells(
    metrics: dict[Run, Metrics],
    dataset: str,
    backbone: str,
    variant: str,
    shot: int,
    folds: Iterable[int],
) -> dict[int, Metrics]:
    return {
        f: metrics[run]
        for f in folds
        if (run := Run(dataset, backbone, variant, f, shot)) in metrics
    }


def _ablation_row(
    params: Params,
    setting: dict[str, Any],
    variant: str,
    cells: dict[int, Metrics],
    full: dict[int, Metrics],
    group: str,
) -> Row:
    values: dict[str, Any] = {
        "variant": variant,
        "change": describe_variant(params, variant),
        **setting,
    }
    runs: dict[str, list[str]] = {}
    is_full = variant == "full"
    for f in FOLDS:
        key = f"fold{f}"
        item, ref = cells.get(f), full.get(f)
        value = None if item is None else float(item.record["miou"])
        delta = None if is_full or ref is None else _sub(value, float(ref.record["miou"]))
        values[key] = (value, delta)
        runs[key] = [m.run.name for m in (item, None if is_full else ref) if m is not None]
    # The delta of a mean is only meaningful over the same folds.
    same_folds = not is_full and set(cells) <= set(full)
    for key, field_name in (("mean", "miou"), ("fbiou", "fbiou")):
        value = _mean(float(m.record[field_name]) for m in cells.values())
        ref_mean = _mean(float(full[f].record[field_name]) for f in cells if f in full)
        values[key] = (value, _sub(value, ref_mean) if same_folds else None)
    values["meta_mean"] = _mean(_output_miou(m.record, "meta") for m in cells.values())
    values["base_mean"] = _mean(_output_miou(m.record, "base") for m in cells.values())
    names = [m.run.name for m in cells.values()]
    ref_names = [] if is_full else [full[f].run.name for f in cells if f in full]
    runs["mean"] = runs["fbiou"] = names + ref_names
    runs["meta_mean"] = runs["base_mean"] = names
    return Row(values, runs, group, variant)


def paper_table() -> Table:
    """The published numbers: HDMNet's main table, its ensemble ablation and the baselines."""
    columns = [
        Column("method", "Method", "text"),
        *_setting_columns(),
        *_fold_columns("num"),
        Column("mean", "Mean"),
        Column("fbiou", "FB-IoU"),
    ]
    rows: list[Row] = []

    def add(method: str, result: paper.PaperResult) -> None:
        values: dict[str, Any] = {
            "method": method,
            "dataset": result.dataset,
            "backbone": result.backbone,
            "shot": result.shot,
            "mean": result.mean,
            "fbiou": result.fbiou,
        }
        values.update({f"fold{f}": v for f, v in zip(FOLDS, result.folds, strict=True)})
        rows.append(Row(values, {}, f"{method}/{result.dataset}", "paper"))

    for result in paper.MAIN.values():
        add("HDMNet", result)
    for (variant, *_), result in paper.VARIANTS.items():
        add(f"HDMNet ({variant})", result)
    for base in paper.BASELINES:
        for shot, mean in ((1, base.shot1), (5, base.shot5)):
            values = {"method": base.method, "dataset": base.dataset, "backbone": "resnet50"}
            values.update({"shot": shot, "mean": mean, "fbiou": None})
            values.update({f"fold{f}": None for f in FOLDS})
            rows.append(Row(values, {}, f"baselines/{base.dataset}", "paper"))
    notes = [
        f"{paper.SOURCE}, as published; real PASCAL-5i and COCO-20i (FWB split), mIoU in %.",
        "HDMNet (no_ensemble): the meta output alone, without the base-learner ensemble.",
        "Baselines: ResNet-50, mean over the four folds only.",
    ]
    return Table("paper", "The paper's numbers (real data sets)", columns, rows, notes)


# --- formatting -----------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return MISSING if value is None or math.isnan(value) else f"{value:.1f}"


def _signed(value: float | None) -> str:
    if value is None or math.isnan(value):
        return MISSING
    # round first so that -0.04 prints as +0.0, not -0.0
    return f"{round(value, 1) or 0.0:+.1f}"


def format_cell(column: Column, value: Any, signed: bool = False) -> str:
    """The text of one cell as the Markdown and HTML tables show it (``signed``: a row of
    differences, numbers with their sign)."""
    if column.kind == "text":
        return MISSING if value is None else column.show(value)
    if column.kind == "delta" or (signed and column.kind == "num"):
        return _signed(value)
    if column.kind == "pair":
        number, delta = value
        if number is None:
            return MISSING
        return _num(number) if delta is None else f"{_num(number)} ({_signed(delta)})"
    return _num(value)


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table with the title above and the notes below."""

    def esc(text: str) -> str:
        return text.replace("|", r"\|")

    align = [":--" if col.kind == "text" else "--:" for col in table.columns]
    lines = [
        f"### {table.title}",
        "",
        "| " + " | ".join(esc(col.label) for col in table.columns) + " |",
        "|" + "|".join(align) + "|",
    ]
    for row in table.rows:
        signed = row.role == "diff"
        cells = [esc(format_cell(c, row.values.get(c.key), signed)) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    if table.notes:
        lines += ["", *(f"- {esc(note)}" for note in table.notes)]
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 4)
    return value


def to_csv(table: Table) -> str:
    """One row per table row, raw values (4 decimals); pair columns split into value and delta."""
    header: list[str] = []
    for col in table.columns:
        header += [col.key, f"{col.key}_delta"] if col.kind == "pair" else [col.key]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        line: list[Any] = []
        for col in table.columns:
            value = row.values.get(col.key)
            if col.kind == "pair":
                line += [_csv_value(value[0]), _csv_value(value[1])]
            else:
                line.append(_csv_value(value))
        writer.writerow(line)
    return out.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
    "Δ": r"$\Delta$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_number(text: str) -> str:
    if text == MISSING:
        return "--"
    # Real minus and plus signs instead of hyphens.
    return re.sub(r"([+-])(?=\d)", r"$\1$", text)


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), ``\\midrule`` between groups."""
    spec = "".join("l" if col.kind == "text" else "r" for col in table.columns)
    lines = [
        f"% {table.title}",
        "% Rendered by hdmnet from the metrics records (see provenance.json); do not edit.",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(col.label) for col in table.columns) + r" \\",
        r"\midrule",
    ]
    previous: str | None = None
    for row in table.rows:
        if previous is not None and row.group != previous:
            lines.append(r"\midrule")
        previous = row.group
        cells = []
        for col in table.columns:
            text = format_cell(col, row.values.get(col.key), row.role == "diff")
            cells.append(latex_escape(text) if col.kind == "text" else _latex_number(text))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


# --- provenance -----------------------------------------------------------------------------


def run_provenance(item: Metrics) -> dict[str, Any]:
    """What produced one metrics record: the fields a reader needs to trust or rerun a cell."""
    record = item.record
    git = record.get("git") or {}
    checkpoint = record.get("checkpoint") or {}
    timing = record.get("timing") or {}
    return {
        "record": str(item.path),
        "dataset": item.run.dataset,
        "backbone": item.run.backbone,
        "variant": item.run.variant,
        "fold": item.run.fold,
        "shot": item.run.shot,
        "miou": record["miou"],
        "fbiou": record["fbiou"],
        "config_digest": record.get("config_digest"),
        "git_commit": git.get("git_commit"),
        "git_dirty": git.get("git_dirty"),
        "checkpoint_path": checkpoint.get("path"),
        "checkpoint_sha256": checkpoint.get("sha256"),
        "checkpoint_epoch": checkpoint.get("epoch"),
        "selection": checkpoint.get("selection"),
        "seeds": record["seeds"],
        "episodes_per_seed": record["episodes_per_seed"],
        "annotation": record.get("annotation"),
        "split": record.get("split"),
        "data_hash": record.get("data_hash"),
        "hardware": record.get("hardware"),
        "seconds": timing.get("seconds"),
        "ms_per_episode": timing.get("ms_per_episode"),
        "mlflow_run_id": record.get("mlflow_run_id"),
    }


def provenance(params: Params, metrics: dict[Run, Metrics], tables: list[Table]) -> dict[str, Any]:
    """Every cell of every table with the runs it comes from, and every run's provenance."""
    cells = []
    for table in tables:
        keys = [col.key for col in table.columns if col.kind == "text"]
        for row in table.rows:
            where = {key: row.values.get(key) for key in keys}
            for col in table.columns:
                if col.kind == "text":
                    continue
                value = row.values.get(col.key)
                if col.kind == "pair":
                    value = {"value": value[0], "delta": value[1]}
                uses_paper = row.role in ("paper", "diff") or col.key == "paper_mean"
                cells.append(
                    {
                        "table": table.name,
                        "row": where,
                        "column": col.key,
                        "value": value,
                        "runs": row.runs.get(col.key, []),
                        "paper": PAPER_SOURCE if uses_paper else None,
                    }
                )
    return {
        "preset": params.preset,
        "data_source": params.data.source,
        "compared_with_paper": compare_with_paper(params),
        "selection": {mode: names for mode, names in selection_modes(metrics.values()).items()},
        "runs": {item.run.name: run_provenance(item) for item in metrics.values()},
        "cells": cells,
    }
