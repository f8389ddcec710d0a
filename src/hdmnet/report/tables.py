"""Paper-style tables built from metrics records as pandas frames and rendered by pandas.

A ``Table`` is a DataFrame of raw values, one column per CSV column (a value with its delta to
the full model is two columns, ``key`` and ``key_delta``; a missing cell is NaN), and beside it
what a frame has no place for: the columns' labels and kinds, and per row its group, its role and
the runs each value is computed from (``provenance`` traces every cell to its records). Markdown,
LaTeX and the HTML report show numbers to one decimal, differences with a sign and "-" where the
grid has no such cell; the CSV keeps raw numbers so that pandas reads it without parsing strings.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tabulate import DataRow, TableFormat

from hdmnet.config import Params
from hdmnet.layout import Run
from hdmnet.report import paper
from hdmnet.report.collect import Metrics

MISSING = "-"
FOLDS = paper.FOLDS
PAPER_SOURCE = f"{paper.SOURCE} (spec/PAPER.md)"
SELECTION_TEXT = {
    "best_val": "the checkpoint with the best validation mIoU (best_val, the paper's practice)",
    "last": "the last checkpoint (last)",
}
# The notes under the tables, keyed by when they apply (filled in with str.format).
NOTES = {
    "main": "mIoU and FB-IoU in %, final (ensembled) output, mean over the test seeds; Mean and "
    "FB-IoU average the folds shown.",
    "partial": "Only folds {folds} are in the grid; '-' marks folds not run.",
    "paper_rows": f"Paper rows: {paper.SOURCE}; COCO-20i uses the FWB split. 'ours - paper' is "
    "our value minus the published one.",
    "coco_split": "data.coco_split is {split!r}: COCO differences are against the paper's FWB "
    "split and not like for like.",
    "mean_not_compared": "The mean is not compared: the paper's mean is over folds 0-3.",
    "main_embedded": "These runs use the embedded (generated) data set, not PASCAL-5i or "
    "COCO-20i: the paper's numbers (paper.md) are for the real data and are not compared.",
    "ablation": "mIoU (%) of the final output, mean over the test seeds; in parentheses the "
    "variant minus the full model on the same folds. Meta / Base mean: the meta learner's and "
    "the base learner's own outputs, averaged over the folds shown.",
    "missing_full": "The full model was not run on every ablation cell (not in the main grid), so "
    "some deltas are '-': {runs}.",
    "paper_mean": f"Paper mean: {paper.SOURCE}, where the paper gives the variant's number.",
    "ablation_embedded": "Embedded (generated) data set: no comparison with the paper's numbers.",
}


@dataclass(frozen=True)
class Column:
    """``kind``: text (left-aligned, ``show`` formats it), num, or pair (a value and its delta,
    frame columns ``key`` and ``key_delta``, shown as "70.1 (-1.1)")."""

    key: str
    label: str
    kind: str = "num"
    show: Callable[[Any], str] = str


@dataclass(frozen=True)
class Row:
    """A row beside its values: its group (rows of one setting are typeset together), its role
    ("ours", "paper", "diff" or a variant; a diff row's numbers carry their sign) and, per column
    key, the names of the runs the value is computed from."""

    group: str
    role: str = "ours"
    runs: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Table:
    """A paper-style table: the values in ``frame``, what each of its rows is in ``rows``."""

    name: str
    title: str
    columns: list[Column]
    frame: pd.DataFrame
    rows: list[Row]
    notes: list[str]


@dataclass(frozen=True)
class Cell:
    """A cell as shown: its ``text``, a pair's signed ``delta`` (None without one), and whether
    the text itself is a signed difference (the HTML report colours both by their sign)."""

    text: str
    delta: str | None = None
    signed: bool = False
    numeric: bool = True

    @property
    def missing(self) -> bool:
        return self.text == MISSING

    def __str__(self) -> str:
        return self.text if self.delta is None else f"{self.text} ({self.delta})"


def _table(name: str, title: str, columns: list[Column], rows: list, notes: list[str]) -> Table:
    """``rows``: (values by frame column, Row) pairs; values of no column are left out."""
    keys = [
        k for c in columns for k in ([c.key, f"{c.key}_delta"] if c.kind == "pair" else [c.key])
    ]
    frame = pd.DataFrame([values for values, _ in rows], columns=keys)
    return Table(name, title, columns, frame, [row for _, row in rows], notes)


def records(table: Table) -> list[dict[str, Any]]:
    """The frame's rows as plain Python values, None for a missing cell."""
    return table.frame.astype(object).where(table.frame.notna(), None).to_dict("records")


# --- building -------------------------------------------------------------------------------


def compare_with_paper(params: Params) -> bool:
    """The paper's numbers are for the real data sets: compare only runs on official data."""
    return params.data.source == "official"


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _value(item: Metrics | None, key: str = "miou", output: str | None = None) -> float | None:
    """A number of a metrics record (of one output's own results if given), None if absent."""
    record = {} if item is None else item.record
    if output is not None:
        record = record.get("outputs", {}).get(output, {})
    return None if record.get(key) is None else float(record[key])


def _settings(grid: Any, shots: Iterable[int]) -> list[dict[str, Any]]:
    """Dataset x backbone x shot of a grid, as the setting columns' values."""
    combos = itertools.product(grid.datasets, grid.backbones, shots)
    return [dict(zip(("dataset", "backbone", "shot"), c, strict=True)) for c in combos]


def _cells(metrics: dict[Run, Metrics], setting: dict, variant: str, folds: list[int]) -> dict:
    """Fold -> metrics of ``variant`` in one setting, for the folds that were run."""
    return {
        f: metrics[r] for f in folds if (r := Run(**setting, variant=variant, fold=f)) in metrics
    }


SETTING_COLUMNS = [
    Column("dataset", "Dataset", "text", paper.dataset_name),
    Column("backbone", "Backbone", "text", paper.backbone_name),
    Column("shot", "Shot", "text"),
]


def _result_columns(kind: str) -> list[Column]:
    folds = [Column(f"fold{f}", f"Fold {f}", kind) for f in FOLDS]
    return [*folds, Column("mean", "Mean", kind), Column("fbiou", "FB-IoU", kind)]


def selection_modes(metrics: Iterable[Metrics]) -> dict[str, list[str]]:
    """Checkpoint selection mode -> names of the runs evaluated with it."""
    modes: dict[str, list[str]] = {}
    for item in metrics:
        mode = str(item.record["checkpoint"].get("selection", "unknown"))
        modes.setdefault(mode, []).append(item.run.name)
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


def _variant_row(cells: dict, full: dict, group: str, role: str) -> tuple[dict, Row]:
    """Values and runs of one variant in one setting: per fold, mean and FB-IoU, each with its
    delta to ``full`` (the full model's cells; empty for the full model itself), and the mean
    mIoU of the meta and base outputs."""
    values: dict[str, Any] = {}
    runs: dict[str, list[str]] = {}
    for f in FOLDS:
        item, ref = cells.get(f), full.get(f)
        values |= {f"fold{f}": _value(item), f"fold{f}_delta": _sub(_value(item), _value(ref))}
        runs[f"fold{f}"] = [m.run.name for m in (item, ref) if m is not None]
    # The delta of a mean is only meaningful over the same folds.
    same_folds = bool(full) and set(cells) <= set(full)
    for key, name in (("mean", "miou"), ("fbiou", "fbiou")):
        values[key] = _mean(_value(m, name) for m in cells.values())
        ref_mean = _mean(_value(full[f], name) for f in cells if f in full)
        values[f"{key}_delta"] = _sub(values[key], ref_mean) if same_folds else None
    for output in ("meta", "base"):
        values[f"{output}_mean"] = _mean(_value(m, "miou", output) for m in cells.values())
    names = [m.run.name for m in cells.values()]
    runs |= {"meta_mean": names, "base_mean": names}
    runs["mean"] = runs["fbiou"] = names + [full[f].run.name for f in cells if f in full]
    return values, Row(group, role, runs)


def main_table(params: Params, metrics: dict[Run, Metrics]) -> Table:
    """Full model, rows dataset x backbone x shot, columns folds 0-3, mean and mean FB-IoU.

    With real data the paper's row and the difference (ours - paper) follow each of our rows
    that the paper also reports.
    """
    grid, compare = params.grid, compare_with_paper(params)
    partial = sorted(grid.folds) != list(FOLDS)
    source = [Column("source", "Source", "text")] if compare else []
    rows = []
    for setting in _settings(grid, grid.shots):
        group = "{dataset}/{backbone}/{shot}".format(**setting)
        cells = _cells(metrics, setting, "full", grid.folds)
        ours, row = _variant_row(cells, {}, group, "ours")
        rows.append(({**ours, **setting, "source": "ours"}, row))
        published = paper.paper_result(**setting) if compare else None
        if published is not None:
            theirs = dict(zip([f"fold{f}" for f in FOLDS], published.folds, strict=True))
            theirs |= {"mean": published.mean, "fbiou": published.fbiou}
            # Means over different fold sets are not comparable.
            keys = [f"fold{f}" for f in FOLDS] + ([] if partial else ["mean", "fbiou"])
            diff = {k: _sub(ours[k], theirs[k]) for k in keys}
            rows.append(({**theirs, **setting, "source": "paper"}, Row(group, "paper")))
            rows.append(
                ({**diff, **setting, "source": "ours - paper"}, Row(group, "diff", row.runs))
            )
    notes = [NOTES["main"], selection_note(metrics[r] for r in metrics if r.variant == "full")]
    split, folds = params.data.coco_split, ", ".join(map(str, grid.folds))
    wanted = {
        "partial": partial,
        "paper_rows": compare,
        "coco_split": compare and split != "fwb" and "coco" in grid.datasets,
        "mean_not_compared": compare and partial,
        "main_embedded": not compare,
    }
    notes += [NOTES[key].format(folds=folds, split=split) for key, on in wanted.items() if on]
    title = "Main results: mIoU (%) per fold, full model"
    return _table("main", title, [*SETTING_COLUMNS, *source, *_result_columns("num")], rows, notes)


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


def yaml_value(value: Any) -> str:
    """A parameter value as YAML spells it (true, null, 3)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def describe_variant(params: Params, variant: str) -> str:
    if variant == "full":
        return "(full model)"
    diff = config_diff(params, variant)
    return ", ".join(f"{key}: {yaml_value(a)} → {yaml_value(b)}" for key, a, b in diff)


def ablation_table(params: Params, metrics: dict[Run, Metrics]) -> Table:
    """Each variant against the full model on the ablation grid: per fold, mean and FB-IoU
    with the delta (variant - full) in parentheses; mean mIoU of the meta and base outputs."""
    ab, compare = params.ablation, compare_with_paper(params)
    rows, missing_full = [], []
    # Variants that act only with several supports run at their own shots (kshot_variants).
    shots = dict.fromkeys([*ab.shots, *(shot for _, shot in ab.settings())])
    for setting in _settings(ab, shots):
        group = "{dataset}/{backbone}/{shot}".format(**setting)
        full = _cells(metrics, setting, "full", ab.folds)
        missing_full += [
            Run(**setting, variant="full", fold=f).name for f in ab.folds if f not in full
        ]
        at_shot = [variant for variant, shot in ab.settings() if shot == setting["shot"]]
        for variant in ["full", *at_shot]:
            cells = _cells(metrics, setting, variant, ab.folds)
            values, row = _variant_row(cells, {} if variant == "full" else full, group, variant)
            values |= {"variant": variant, "change": describe_variant(params, variant), **setting}
            published = paper.paper_result(**setting, variant=variant) if compare else None
            rows.append((values | {"paper_mean": published and published.mean}, row))
    notes = [NOTES["ablation"], selection_note(metrics.values())]
    notes += [NOTES["missing_full"].format(runs=", ".join(missing_full))] if missing_full else []
    notes.append(NOTES["paper_mean" if compare else "ablation_embedded"])
    columns = [Column("variant", "Variant", "text"), Column("change", "Change", "text")]
    columns += [*SETTING_COLUMNS, *_result_columns("pair")]
    columns += [Column("meta_mean", "Meta mean"), Column("base_mean", "Base mean")]
    columns += [Column("paper_mean", "Paper mean")] if compare else []
    title = "Ablations: each variant against the full model"
    return _table("ablation", title, columns, rows, notes)


def paper_table() -> Table:
    """The published numbers: HDMNet's main table, its ensemble ablation and the baselines."""
    published = [("HDMNet", r) for r in paper.MAIN.values()]
    published += [(f"HDMNet ({variant})", r) for (variant, *_), r in paper.VARIANTS.items()]
    rows = []
    for method, r in published:
        values = {"method": method, "dataset": r.dataset, "backbone": r.backbone, "shot": r.shot}
        values |= dict(zip([f"fold{f}" for f in FOLDS], r.folds, strict=True))
        values |= {"mean": r.mean, "fbiou": r.fbiou}
        rows.append((values, Row(f"{method}/{r.dataset}", "paper")))
    for base, shot in itertools.product(paper.BASELINES, (1, 5)):
        values = {"method": base.method, "dataset": base.dataset, "backbone": "resnet50"}
        values |= {"shot": shot, "mean": base.shot1 if shot == 1 else base.shot5}
        rows.append((values, Row(f"baselines/{base.dataset}", "paper")))
    notes = [
        f"{paper.SOURCE}, as published; real PASCAL-5i and COCO-20i (FWB split), mIoU in %.",
        "HDMNet (no_ensemble): the meta output alone, without the base-learner ensemble.",
        "Baselines: ResNet-50, mean over the four folds only.",
    ]
    columns = [Column("method", "Method", "text"), *SETTING_COLUMNS, *_result_columns("num")]
    return _table("paper", "The paper's numbers (real data sets)", columns, rows, notes)


# --- rendering ------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def _signed(value: float | None) -> str:
    # round first so that -0.04 prints as +0.0, not -0.0
    return MISSING if value is None else f"{round(value, 1) or 0.0:+.1f}"


def cells(table: Table) -> list[list[Cell]]:
    """Each row's cells as the Markdown, LaTeX and HTML tables show them."""
    return [
        [_cell(column, values, row.role == "diff") for column in table.columns]
        for values, row in zip(records(table), table.rows, strict=True)
    ]


def _cell(column: Column, values: dict[str, Any], signed: bool) -> Cell:
    value = values[column.key]
    if column.kind == "text":
        return Cell(MISSING if value is None else column.show(value), numeric=False)
    if signed and column.kind == "num":
        return Cell(_signed(value), signed=True)
    delta = values.get(f"{column.key}_delta")
    return Cell(_num(value), None if value is None or delta is None else _signed(delta))


def _shown(table: Table, escape: Callable[[str], str] = str) -> pd.DataFrame:
    """The table as the strings it shows, labels as column names, ``escape`` applied to all."""
    rows = [[escape(str(cell)) for cell in row] for row in cells(table)]
    return pd.DataFrame(rows, columns=[escape(column.label) for column in table.columns])


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table with the title above and the notes below."""

    def escape(text: str) -> str:
        return text.replace("|", r"\|")

    # tabulate's pipe format pads every cell to its column's width; this one writes the cells
    # unpadded under fixed alignment markers, as the committed tables always were.
    rule = "|" + "|".join(":--" if c.kind == "text" else "--:" for c in table.columns) + "|"
    row = DataRow("|", "|", "|")
    layout = TableFormat(None, lambda *_: rule, None, None, row, row, 1, None)
    body = _shown(table, escape).to_markdown(
        index=False, tablefmt=layout, disable_numparse=True, stralign=None, numalign=None
    )
    notes = ["", *(f"- {escape(note)}" for note in table.notes)] if table.notes else []
    return "\n".join([f"### {table.title}", "", body, *notes]) + "\n"


def to_csv(table: Table) -> str:
    """One row per table row, raw values (4 decimals, missing cells empty); a pair column is
    two columns, ``key`` and ``key_delta``."""
    # Python's round (correctly rounded), not numpy's: the same text as the csv module wrote.
    rounded = table.frame.map(lambda v: round(float(v), 4) if isinstance(v, float) else v)
    return rounded.to_csv(index=False, lineterminator="\n")


def _latex_number(text: str) -> str:
    # Real minus and plus signs instead of hyphens, an en dash for a missing cell.
    return "--" if text == MISSING else re.sub(r"([+-])(?=\d)", r"$\1$", text)


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), ``\\midrule`` between groups."""
    text = [c.label for c in table.columns if c.kind == "text"]
    numbers = [c.label for c in table.columns if c.kind != "text"]
    styler = _shown(table).style.hide(axis="index").format_index(escape="latex", axis=1)
    styler.format(lambda s: s.replace("→", r"$\rightarrow$"), escape="latex", subset=text)
    styler.format(_latex_number, subset=numbers)
    spec = "".join("l" if c.kind == "text" else "r" for c in table.columns)
    lines = styler.to_latex(column_format=spec, hrules=True).splitlines()
    # pandas draws no rule between groups of rows: one before each group's first row.
    body = lines.index(r"\midrule") + 1
    for i in reversed(range(1, len(table.rows))):
        if table.rows[i].group != table.rows[i - 1].group:
            lines.insert(body + i, r"\midrule")
    head = [
        f"% {table.title}",
        "% Rendered by hdmnet from the metrics records (see provenance.json); do not edit.",
    ]
    return "\n".join([*head, *lines, *(f"% {note}" for note in table.notes)]) + "\n"


# --- provenance -----------------------------------------------------------------------------


def run_provenance(item: Metrics) -> dict[str, Any]:
    """What produced one metrics record: the fields a reader needs to trust or rerun a cell."""
    record, run = item.record, item.run
    git, checkpoint, timing = (record.get(key) or {} for key in ("git", "checkpoint", "timing"))
    kept = ("config_digest", "annotation", "split", "data_hash", "hardware", "mlflow_run_id")
    return {
        "record": str(item.path),
        **{key: getattr(run, key) for key in ("dataset", "backbone", "variant", "fold", "shot")},
        **{key: record[key] for key in ("miou", "fbiou", "seeds", "episodes_per_seed")},
        **{key: record.get(key) for key in kept},
        **{key: git.get(key) for key in ("git_commit", "git_dirty")},
        **{f"checkpoint_{key}": checkpoint.get(key) for key in ("path", "sha256", "epoch")},
        "selection": checkpoint.get("selection"),
        **{key: timing.get(key) for key in ("seconds", "ms_per_episode")},
    }


def provenance(params: Params, metrics: dict[Run, Metrics], tables: list[Table]) -> dict[str, Any]:
    """Every cell of every table with the runs it comes from, and every run's provenance."""
    cells = []
    for table in tables:
        keys = [c.key for c in table.columns if c.kind == "text"]
        for values, row in zip(records(table), table.rows, strict=True):
            for col in (c for c in table.columns if c.kind != "text"):
                value = values[col.key]
                if col.kind == "pair":
                    value = {"value": value, "delta": values[f"{col.key}_delta"]}
                paper_used = row.role in ("paper", "diff") or col.key == "paper_mean"
                cell = {"table": table.name, "row": {k: values[k] for k in keys}}
                cell |= {"column": col.key, "value": value, "runs": row.runs.get(col.key, [])}
                cells.append(cell | {"paper": PAPER_SOURCE if paper_used else None})
    return {
        "preset": params.preset,
        "data_source": params.data.source,
        "compared_with_paper": compare_with_paper(params),
        "selection": selection_modes(metrics.values()),
        "runs": {item.run.name: run_provenance(item) for item in metrics.values()},
        "cells": cells,
    }
