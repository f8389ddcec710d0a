"""A paper-style table as a pandas frame, and how it is shown: Markdown, CSV, LaTeX and cells.

A ``Table`` is a DataFrame of raw values, one column per CSV column (a value with its delta to
the full model is two columns, ``key`` and ``key_delta``; a missing cell is NaN), and beside it
what a frame has no place for: the shown columns' labels and kinds, and per row its group, its
role and the runs each value is computed from. Where the rows have them, a value's spread is a
column of its own (``key_std``; a delta's ``key_delta_std`` and ``key_delta_noise``, whether it
is within noise). Markdown, LaTeX and the HTML report show numbers to one decimal, a spread as
"± 1.2", differences with a sign, a delta within noise marked so, and "-" where the grid has no
such cell; the CSV keeps raw numbers (and any frame column that is not shown) so that pandas
reads it without parsing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tabulate import DataRow, TableFormat

MISSING = "-"
NOISE = "within noise"
# A value's companions in the frame, in their CSV order: its spread, and a pair column's delta
# (always), the delta's spread and whether the delta is within noise. A num column has only the
# spread. Each is a column where a row has it.
SUFFIXES = ("_std", "_delta", "_delta_std", "_delta_noise")


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
    ("ours", "paper", "diff", "external" or a variant; a diff row's numbers carry their sign)
    and, per column key, the names of the runs the value is computed from."""

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

    @classmethod
    def build(
        cls,
        name: str,
        title: str,
        columns: list[Column],
        rows: list,
        notes: list[str],
        extra: tuple[str, ...] = (),
    ) -> Table:
        """``rows``: (values by frame column, Row) pairs; values of no column are left out.
        A column's optional companions (``SUFFIXES``) and the ``extra`` row-wide keys (after
        the columns) are frame columns where any row has them; whole-number extras stay whole."""
        present = {key for values, _ in rows for key in values}
        keys = []
        for c in columns:
            keys.append(c.key)
            for suffix in {"num": SUFFIXES[:1], "pair": SUFFIXES}.get(c.kind, ()):
                wanted = suffix == "_delta" or c.key + suffix in present
                keys += [c.key + suffix] if wanted else []
        keys += [key for key in extra if key in present]
        frame = pd.DataFrame([values for values, _ in rows], columns=keys)
        for key in (key for key in extra if key in present):
            known = [values[key] for values, _ in rows if values.get(key) is not None]
            if known and all(type(v) is int for v in known):
                frame[key] = frame[key].astype("Int64")
        return cls(name, title, columns, frame, [row for _, row in rows], notes)

    def records(self) -> list[dict[str, Any]]:
        """The frame's rows as plain Python values, None for a missing cell."""
        return self.frame.astype(object).where(self.frame.notna(), None).to_dict("records")


@dataclass(frozen=True)
class Cell:
    """A cell as shown: its ``text``, a pair's signed ``delta`` (None without one), whether the
    text itself is a signed difference (the HTML report colours both by their sign), and
    whether the delta is within noise (``noise``: shown marked and uncoloured, never as an
    effect)."""

    text: str
    delta: str | None = None
    signed: bool = False
    numeric: bool = True
    noise: bool = False

    @property
    def missing(self) -> bool:
        return self.text == MISSING

    def __str__(self) -> str:
        if self.delta is None:
            return self.text
        return (
            f"{self.text} ({self.delta}, {NOISE})" if self.noise else f"{self.text} ({self.delta})"
        )


def _num(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def _pm(std: float | None) -> str:
    """A spread after its value, nothing without one."""
    return "" if std is None else f" ± {std:.1f}"


def _signed(value: float | None) -> str:
    # round first so that -0.04 prints as +0.0, not -0.0
    return MISSING if value is None else f"{round(value, 1) or 0.0:+.1f}"


def cells(table: Table) -> list[list[Cell]]:
    """Each row's cells as the Markdown, LaTeX and HTML tables show them."""
    return [
        [_cell(column, values, row.role == "diff") for column in table.columns]
        for values, row in zip(table.records(), table.rows, strict=True)
    ]


def _cell(column: Column, values: dict[str, Any], signed: bool) -> Cell:
    key = column.key
    value = values[key]
    if column.kind == "text":
        return Cell(MISSING if value is None else column.show(value), numeric=False)
    std = None if value is None else values.get(f"{key}_std")
    if signed and column.kind == "num":
        return Cell(_signed(value) + _pm(std), signed=True)
    text, delta = _num(value) + _pm(std), values.get(f"{key}_delta")
    if value is None or delta is None:
        return Cell(text)
    shown = _signed(delta) + _pm(values.get(f"{key}_delta_std"))
    return Cell(text, shown, noise=bool(values.get(f"{key}_delta_noise")))


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
    if text == MISSING:
        return "--"
    return re.sub(r"([+-])(?=\d)", r"$\1$", text).replace("±", r"$\pm$")


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), ``\\midrule`` between groups;
    the title (the caption) and the notes as comments."""
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


#: File extension -> renderer, the formats ``hdmnet aggregate`` writes.
FORMATS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
