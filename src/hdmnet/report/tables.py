"""The paper-style tables, built from metrics records (``hdmnet.report.table`` holds the Table
type and renders it): the main table (the full model on the grid; on real data the paper's row
and the difference beside each of ours; rows of external checkpoints, marked so), the ablation
table (each variant against the full model) and the paper's own numbers.

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
from hdmnet.report import paper, spread
from hdmnet.report.collect import Metrics
from hdmnet.report.paper import compare_with_paper
from hdmnet.report.provenance import run_name, selection_note
from hdmnet.report.spread import Delta
from hdmnet.report.table import Column, Row, Table
from hdmnet.report.variants import describe

FOLDS = paper.FOLDS
# Training seed (None: an external checkpoint) -> fold -> the record of that cell.
Cells = dict[int | None, dict[int, Metrics]]
# The values that have a delta in the ablation table, and the metric each one averages.
DELTA_KEYS = {**{f"fold{f}": "miou" for f in FOLDS}, "mean": "miou", "fbiou": "fbiou"}
# Frame columns of a whole row, after the cells' (kept only where a row has them): the number of
# training seeds behind the row, and over which seeds and how many a delta's spread is taken.
ROW_KEYS = ("train_seeds", "delta_spread", "delta_n")
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
    "baseline": "Training-free baseline ({method}): {what} (thresholds chosen: {thresholds}; "
    "eval.baseline). It learns nothing: HDMNet's row minus this one is what meta-training adds.",
    "outside_grid": "{path} left out: its dataset, backbone or shot is not in the grid.",
    "ablation": "mIoU (%) of the final output, mean over the test seeds; in parentheses the "
    "variant minus the full model on the same folds, ± its spread. Meta / Base mean: the meta "
    "learner's and the base learner's own outputs, averaged over the folds shown.",
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
    "missing_full": "The full model was not run on every ablation cell (not in the main grid), so "
    "some deltas are '-': {runs}.",
    "paper_mean": f"Paper mean: {paper.SOURCE}, where the paper gives the variant's number.",
    "ablation_embedded": "Embedded (generated) data set: no comparison with the paper's numbers.",
    "train_seeds": "Mean ± std over {n} training seeds ({seeds}): each cell averages one "
    "record per training seed (each a mean over the test seeds), ± the sample standard "
    "deviation over the training seeds; Mean and FB-IoU average the folds of each training seed "
    "first.",
}
_mean = spread.mean


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


def _cells(
    metrics: dict[Run, Metrics], setting: dict, variant: str, folds: list[int], seeds: list[int]
) -> Cells:
    """Training seed -> fold -> metrics of ``variant`` in one setting, for the folds run."""
    found: Cells = {}
    for seed in seeds:
        runs = (Run(**setting, variant=variant, fold=f, seed=seed) for f in folds)
        found[seed] = {run.fold: metrics[run] for run in runs if run in metrics}
    return found


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


def _seed_notes(params: Params) -> list[str]:
    """With several training seeds in the grid: what a cell's mean and ± are."""
    seeds = params.grid.train_seeds
    if len(seeds) < 2:
        return []
    return [NOTES["train_seeds"].format(n=len(seeds), seeds=", ".join(map(str, seeds)))]


def _seed_values(cells: dict[int, Metrics], full: dict[int, Metrics]) -> dict[str, Any]:
    """The values of one training seed's row: per fold, mean and FB-IoU, each with its delta to
    ``full`` (the full model's cells; empty for the full model itself), and the mean mIoU of the
    meta and base outputs."""
    values: dict[str, Any] = {}
    for f in FOLDS:
        item, ref = cells.get(f), full.get(f)
        values |= {f"fold{f}": _value(item), f"fold{f}_delta": _sub(_value(item), _value(ref))}
    # The delta of a mean is only meaningful over the same folds.
    same_folds = bool(full) and set(cells) <= set(full)
    for key, name in (("mean", "miou"), ("fbiou", "fbiou")):
        values[key] = _mean(_value(m, name) for m in cells.values())
        ref_mean = _mean(_value(full[f], name) for f in cells if f in full)
        values[f"{key}_delta"] = _sub(values[key], ref_mean) if same_folds else None
    for output in ("meta", "base"):
        values[f"{output}_mean"] = _mean(_value(m, "miou", output) for m in cells.values())
    return values


def _variant_row(
    cells: Cells, full: Cells, group: str, role: str, several: bool = False, deltas: bool = False
) -> tuple[dict, Row]:
    """Values and runs of one variant in one setting: each value the mean over the training
    seeds of ``cells`` (see ``_seed_values``; a delta the mean of the per-seed differences to
    ``full``). ``several``: the grid has several training seeds, so every value gets its
    standard deviation over them (``key_std``) and the row its number of seeds; ``deltas``:
    each delta gets its spread and whether it is within noise (``hdmnet.report.spread``)."""
    per_seed = [_seed_values(cells[s], full.get(s, {})) for s in cells] or [_seed_values({}, {})]
    values: dict[str, Any] = {}
    for key in per_seed[0]:
        values[key] = _mean(v[key] for v in per_seed)
        if several and not key.endswith("_delta"):
            values[f"{key}_std"] = spread.std(v[key] for v in per_seed)
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
    return values, Row(group, role, _runs(cells, full))


def _delta(key: str, values: dict, per_seed: list[dict], cells: Cells, full: Cells) -> Delta | None:
    """The uncertainty of the delta ``key``: over the training seeds where there are several,
    else over the test seeds of the one training seed's records."""
    if values[f"{key}_delta"] is None:
        return None
    if len(per_seed) > 1:
        return spread.paired([v[f"{key}_delta"] for v in per_seed if v[f"{key}_delta"] is not None])
    ((seed, items),) = cells.items()
    refs, metric = full.get(seed, {}), DELTA_KEYS[key]
    if key.startswith("fold"):
        fold = int(key.removeprefix("fold"))
        return _test_delta(items[fold], refs[fold], metric)
    folds = [_test_delta(items[f], refs[f], metric) for f in items]
    return spread.fold_mean(values[f"{key}_delta"], folds)


def _test_delta(item: Metrics, ref: Metrics, metric: str) -> Delta | None:
    """``metric`` of ``item`` minus that of ``ref`` (records of one training seed), with its
    spread over their test seeds."""

    def per_test_seed(m: Metrics) -> list[float]:
        rows = m.record["outputs"]["final"]["per_seed"]
        return [float(r[metric]) for r in rows if r.get(metric) is not None]

    value = float(item.record[metric]) - float(ref.record[metric])
    return spread.unpaired(value, per_test_seed(item), per_test_seed(ref))


def _runs(cells: Cells, full: Cells) -> dict[str, list[str]]:
    """Per column key, the names of the runs (every training seed's) its value comes from."""

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


def _delta_notes(params: Params, rows: list[tuple[dict, Row]]) -> list[str]:
    """How the ablation table's deltas get their ± and noise marks; with one training seed,
    that the training-seed spread was not measured."""
    measured = {(v["delta_spread"], v["delta_n"]) for v, _ in rows if v["delta_spread"]}
    if not measured:
        return []
    over, n = min(measured, key=lambda m: m[1])
    key = "delta_training" if over == spread.TRAINING else "delta_test"
    dof = f"{n - 1} degree{'' if n == 2 else 's'} of freedom"
    notes = [NOTES[key].format(n=n, t=spread.t_quantile(n - 1), dof=dof)]
    if over == spread.TEST:
        notes.append(NOTES["training_not_measured"].format(seed=params.grid.train_seeds[0]))
    return notes


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


def _baseline_rows(cells: Cells, setting: dict, group: str, several: bool) -> list:
    """The row of the training-free baseline that ``cells``' records carry (none without)."""
    found: Cells = {}
    for seed, by_fold in cells.items():
        sections = {
            f: (m, m.record["baseline"]) for f, m in by_fold.items() if "baseline" in m.record
        }
        found[seed] = {
            f: Metrics(m.run, m.path, {k: section[k] for k in ("miou", "fbiou", "method")})
            for f, (m, section) in sections.items()
        }
    if not any(found.values()):
        return []
    values, row = _variant_row(found, {}, group, "baseline", several)
    method = next(m.record["method"] for c in found.values() for m in c.values())
    values |= {**setting, "method": f"Training-free baseline ({method})", "source": "baseline"}
    return [(values, row)]


def _baseline_notes(metrics: dict[Run, Metrics]) -> list[str]:
    """What each baseline shown is, and the thresholds its cells chose."""
    what: dict[str, str] = {}
    chosen: dict[str, set[float]] = {}
    for item in metrics.values():
        section = item.record.get("baseline")
        if section is not None and item.run.variant == "full":
            what[section["method"]] = section["what"]
            chosen.setdefault(section["method"], set()).add(float(section["threshold"]))
    return [
        NOTES["baseline"].format(
            method=method, what=what[method], thresholds=", ".join(f"{t:g}" for t in sorted(ts))
        )
        for method, ts in sorted(chosen.items())
    ]


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
        cells = _cells(metrics, setting, "full", grid.folds, grid.train_seeds)
        ours, row = _variant_row(cells, {}, group, "ours", several)
        rows.append(({**ours, **setting, "method": "HDMNet", "source": "ours"}, row))
        published = paper.paper_result(**setting) if compare else None
        if published is not None:
            theirs = dict(zip([f"fold{f}" for f in FOLDS], published.folds, strict=True))
            theirs |= {"mean": published.mean, "fbiou": published.fbiou, "method": "HDMNet"}
            # Means over different fold sets are not comparable.
            keys = [f"fold{f}" for f in FOLDS] + ([] if partial else ["mean", "fbiou"])
            diff = {k: _sub(ours[k], theirs[k]) for k in keys} | {"method": "HDMNet"}
            # The published number is a constant: the difference spreads as ours does.
            diff |= {f"{k}_std": ours[f"{k}_std"] for k in keys if f"{k}_std" in ours}
            rows.append(({**theirs, **setting, "source": "paper"}, Row(group, "paper")))
            rows.append(
                ({**diff, **setting, "source": "ours - paper"}, Row(group, "diff", row.runs))
            )
        baseline = _baseline_rows(cells, setting, group, several)
        rows += baseline + _external_rows(external, setting, group, several)
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
    notes += _baseline_notes(metrics) + _seed_notes(params)
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
        full = _cells(metrics, setting, "full", ab.folds, seeds)
        missing_full += [
            Run(**setting, variant="full", fold=f, seed=seed).name
            for seed in seeds
            for f in ab.folds
            if f not in full[seed]
        ]
        at_shot = [variant for variant, shot in ab.settings() if shot == setting["shot"]]
        for variant in ["full", *at_shot]:
            cells = _cells(metrics, setting, variant, ab.folds, seeds)
            reference = {} if variant == "full" else full
            values, row = _variant_row(cells, reference, group, variant, len(seeds) > 1, True)
            values |= {"variant": variant, "change": describe(params, variant), **setting}
            published = paper.paper_result(**setting, variant=variant) if compare else None
            rows.append((values | {"paper_mean": published and published.mean}, row))
    notes = [NOTES["ablation"], selection_note(metrics.values())]
    notes += [NOTES["missing_full"].format(runs=", ".join(missing_full))] if missing_full else []
    notes += [*_seed_notes(params), *_delta_notes(params, rows)]
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
