"""The paper-style tables, built from metrics records (``hdmnet.report.table`` holds the Table
type and renders it): the main table (the full model on the grid; on real data the paper's row
and the difference beside each of ours; rows of the training-free baseline and of external
checkpoints, marked so), the ablation table (each variant against the full model) and the
paper's own numbers. A row's numbers over training seeds, and its deltas with their spread, come
from ``hdmnet.report.spread``; the baseline's from ``hdmnet.report.baseline``.

Runs on the embedded (generated) data are never shown under a real benchmark's name: their
titles, dataset cells and CSV rows say "embedded PASCAL-like" / "embedded COCO-like", and the
paper's numbers, which are for the real data sets, are not compared with them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from hdmnet.config import Params
from hdmnet.layout import Run
from hdmnet.report import baseline, collect, paper, spread
from hdmnet.report.collect import Cells, Metrics
from hdmnet.report.paper import compare_with_paper
from hdmnet.report.provenance import column_runs, selection_note
from hdmnet.report.spread import ROW_KEYS, difference
from hdmnet.report.table import Column, Row, Table
from hdmnet.report.variants import describe

FOLDS = paper.FOLDS
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
    "external": "HDMNet (external: {name}): a checkpoint made outside this pipeline, tested with "
    "the same protocol and episodes (hdmnet evaluate --checkpoint FILE --name {name}); its "
    "records are in results/external/{name}/.",
    "outside_grid": "{path} left out: its dataset, backbone or shot is not in the grid.",
    "ablation": "mIoU (%) of the final output, mean over the test seeds; in parentheses the "
    "variant minus the full model on the same folds, ± its spread. Meta / Base mean: the meta "
    "learner's and the base learner's own outputs, averaged over the folds shown.",
    "missing_full": "The full model was not run on every ablation cell (not in the main grid), so "
    "some deltas are '-': {runs}.",
    "paper_mean": f"Paper mean: {paper.SOURCE}, where the paper gives the variant's number.",
    "ablation_embedded": "Embedded (generated) data set: no comparison with the paper's numbers.",
}


def _settings(grid: Any, shots: Iterable[int]) -> list[dict[str, Any]]:
    """Dataset x backbone x shot of a grid, as the setting columns' values."""
    combos = itertools.product(grid.datasets, grid.backbones, shots)
    return [dict(zip(("dataset", "backbone", "shot"), c, strict=True)) for c in combos]


def _setting_columns(embedded: bool) -> list[Column]:
    return [
        Column("dataset", "Dataset", "text", lambda d: paper.dataset_name(d, embedded)),
        Column("backbone", "Backbone", "text", paper.backbone_name),
        Column("shot", "Shot", "text"),
    ]


def _result_columns(kind: str) -> list[Column]:
    folds = [Column(f"fold{f}", f"Fold {f}", kind) for f in FOLDS]
    return [*folds, Column("mean", "Mean", kind), Column("fbiou", "FB-IoU", kind)]


def _on_data(params: Params, datasets: Iterable[str]) -> str:
    """A title's mention of the data: none for the real benchmarks, the stand-in's name else."""
    names = " and ".join(paper.data_name(params, d) for d in datasets)
    return "" if compare_with_paper(params) else f" on the {names} data"


def _named_data(params: Params, table: Table) -> Table:
    """On the embedded data, the CSV names it in a first column ``data`` (``dataset`` keeps the
    key the records and paths use)."""
    if not compare_with_paper(params):
        table.frame.insert(0, "data", [paper.data_name(params, d) for d in table.frame["dataset"]])
    return table


def _variant_row(
    cells: Cells, full: Cells, group: str, role: str, several: bool = False, deltas: bool = False
) -> tuple[dict, Row]:
    """Values and runs of one variant in one setting: its values over the training seeds of
    ``cells``, deltas to ``full`` (``spread.row_values``, which says what ``several`` and
    ``deltas`` add), and per value the runs it comes from (``provenance.column_runs``)."""
    values = spread.row_values(cells, full, several, deltas)
    return values, Row(group, role, column_runs(cells, full))


def _external_rows(
    external: Sequence[Metrics], setting: dict, group: str, several: bool = False
) -> list:
    """One row per external checkpoint (and variant) evaluated in ``setting``."""
    found: dict[tuple[str, str], dict[int, Metrics]] = {}
    for item in external:
        if _setting_of(item) == setting:
            found.setdefault((str(item.external), item.run.variant), {})[item.run.fold] = item
    rows = []
    for (name, variant), cells in sorted(found.items()):
        values, row = _variant_row({None: cells}, {}, group, "external", several)
        label = name if variant == "full" else f"{name}, variant {variant}"
        values |= {**setting, "method": f"HDMNet (external: {label})", "source": "external"}
        rows.append((values, row))
    return rows


def _baseline_rows(full: Cells, setting: dict, group: str, several: bool) -> list:
    """The row of the training-free baseline that the full model's records carry (none
    without)."""
    found = baseline.cells(full)
    if not any(found.values()):
        return []
    values, row = _variant_row(found, {}, group, "baseline", several)
    values |= {**setting, "method": baseline.label(found), "source": "baseline"}
    return [(values, row)]


def _setting_of(item: Metrics) -> dict[str, Any]:
    return {"dataset": item.run.dataset, "backbone": item.run.backbone, "shot": item.run.shot}


def _external_shown(
    external: Sequence[Metrics], settings: list[dict]
) -> tuple[list[str], list[Metrics]]:
    """The names of the external checkpoints with rows, and the records left out because their
    setting is not in the grid."""
    inside = [item for item in external if _setting_of(item) in settings]
    outside = [item for item in external if item not in inside]
    return sorted({str(item.external) for item in inside}), outside


def main_table(
    params: Params,
    metrics: dict[Run, Metrics],
    external: Sequence[Metrics] = (),
    left_out: Sequence[str] = (),
) -> Table:
    """Full model, rows dataset x backbone x shot, columns folds 0-3, mean and mean FB-IoU.

    With real data the paper's row and the difference (ours - paper) follow each of our rows
    that the paper also reports. ``external``: records of checkpoints made elsewhere
    (``collect.load_external``), a row each after the setting's own, with a Method column that
    marks them; ``left_out``: notes on the external records not shown.
    """
    grid, compare = params.grid, compare_with_paper(params)
    several = len(grid.train_seeds) > 1
    partial = sorted(grid.folds) != list(FOLDS)
    source = [Column("source", "Source", "text")] if compare else []
    rows, settings = [], _settings(grid, grid.shots)
    for setting in settings:
        group = "{dataset}/{backbone}/{shot}".format(**setting)
        cells = collect.cells(metrics, setting, "full", grid.folds, grid.train_seeds)
        ours, row = _variant_row(cells, {}, group, "ours", several)
        rows.append(({**ours, **setting, "method": "HDMNet", "source": "ours"}, row))
        published = paper.paper_result(**setting) if compare else None
        if published is not None:
            theirs = dict(zip([f"fold{f}" for f in FOLDS], published.folds, strict=True))
            theirs |= {"mean": published.mean, "fbiou": published.fbiou, "method": "HDMNet"}
            # Means over different fold sets are not comparable.
            keys = [f"fold{f}" for f in FOLDS] + ([] if partial else ["mean", "fbiou"])
            diff = {k: difference(ours[k], theirs[k]) for k in keys} | {"method": "HDMNet"}
            # The published number is a constant: the difference spreads as ours does.
            diff |= {f"{k}_std": ours[f"{k}_std"] for k in keys if f"{k}_std" in ours}
            rows.append(({**theirs, **setting, "source": "paper"}, Row(group, "paper")))
            rows.append(
                ({**diff, **setting, "source": "ours - paper"}, Row(group, "diff", row.runs))
            )
        rows += _baseline_rows(cells, setting, group, several)
        rows += _external_rows(external, setting, group, several)
    notes = [NOTES["main"], selection_note(metrics[r] for r in metrics if r.variant == "full")]
    shown, outside = _external_shown(external, settings)
    split = params.data.coco_split
    wanted = {
        "partial": partial,
        "paper_rows": compare,
        "coco_split": compare and split != "fwb" and "coco" in grid.datasets,
        "mean_not_compared": compare and partial,
        "main_embedded": not compare,
    }
    values = {"folds": ", ".join(map(str, grid.folds)), "split": split}
    notes += [NOTES[key].format(**values) for key, on in wanted.items() if on]
    notes += [NOTES["external"].format(name=name) for name in shown]
    notes += [*left_out, *(NOTES["outside_grid"].format(path=m.path) for m in outside)]
    notes += baseline.notes(metrics.values()) + spread.seed_notes(grid.train_seeds)
    has_baseline = any(row.role == "baseline" for _, row in rows)
    marked = [Column("method", "Method", "text")] if shown or has_baseline else []
    columns = [*marked, *_setting_columns(not compare), *source, *_result_columns("num")]
    title = f"Main results{_on_data(params, grid.datasets)}: mIoU (%) per fold, full model"
    table = Table.build("main", title, columns, rows, notes, ROW_KEYS)
    return _named_data(params, table)


def ablation_table(params: Params, metrics: dict[Run, Metrics]) -> Table:
    """Each variant against the full model on the ablation grid: per fold, mean and FB-IoU
    with the delta (variant - full) and its spread in parentheses, marked where it is within
    noise (``hdmnet.report.spread``); mean mIoU of the meta and base outputs. With several
    training seeds every value is their mean, with its standard deviation."""
    ab, compare, seeds = params.ablation, compare_with_paper(params), params.grid.train_seeds
    rows, missing_full = [], []
    # Variants that act only with several supports run at their own shots (kshot_variants).
    shots = dict.fromkeys([*ab.shots, *(shot for _, shot in ab.settings())])
    for setting in _settings(ab, shots):
        group = "{dataset}/{backbone}/{shot}".format(**setting)
        full = collect.cells(metrics, setting, "full", ab.folds, seeds)
        missing_full += [
            Run(**setting, variant="full", fold=f, seed=seed).name
            for seed in seeds
            for f in ab.folds
            if f not in full[seed]
        ]
        at_shot = [variant for variant, shot in ab.settings() if shot == setting["shot"]]
        for variant in ["full", *at_shot]:
            cells = collect.cells(metrics, setting, variant, ab.folds, seeds)
            reference = {} if variant == "full" else full
            values, row = _variant_row(cells, reference, group, variant, len(seeds) > 1, True)
            values |= {"variant": variant, "change": describe(params, variant), **setting}
            published = paper.paper_result(**setting, variant=variant) if compare else None
            rows.append((values | {"paper_mean": published and published.mean}, row))
    notes = [NOTES["ablation"], selection_note(metrics.values())]
    notes += [NOTES["missing_full"].format(runs=", ".join(missing_full))] if missing_full else []
    notes += spread.seed_notes(seeds) + spread.delta_notes([v for v, _ in rows], seeds)
    notes += [NOTES["paper_mean" if compare else "ablation_embedded"]]
    columns = [Column("variant", "Variant", "text"), Column("change", "Change", "text")]
    columns += [*_setting_columns(not compare), *_result_columns("pair")]
    columns += [Column("meta_mean", "Meta mean"), Column("base_mean", "Base mean")]
    columns += [Column("paper_mean", "Paper mean")] if compare else []
    title = f"Ablations{_on_data(params, ab.datasets)}: each variant against the full model"
    table = Table.build("ablation", title, columns, rows, notes, ROW_KEYS)
    return _named_data(params, table)


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
    columns = [Column("method", "Method", "text"), *_setting_columns(False)]
    columns += _result_columns("num")
    return Table.build("paper", "The paper's numbers (real data sets)", columns, rows, notes)
