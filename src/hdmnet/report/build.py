"""Entry points of the report stages: ``aggregate`` (tables) and ``build_report`` (figures and
the self-contained HTML ablation report). Both read records only (see ``hdmnet.records``)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.evaluate.views import EpisodeView
from hdmnet.fileio import write_text
from hdmnet.layout import Run
from hdmnet.progress import progress
from hdmnet.report import collect, figures, html, provenance, tables, variants
from hdmnet.report.collect import Metrics, load_external, load_metrics
from hdmnet.report.paper import backbone_name, compare_with_paper, data_name
from hdmnet.report.spread import mean
from hdmnet.report.table import FORMATS, Table, to_markdown

# Episodes per qualitative grid: enough to see the behaviour, small enough for the HTML size.
QUALITATIVE_EPISODES = 4
PHOTOS = {"qualitative", "correlation"}  # figures of images, embedded as JPEG

# The compact metrics file in the tables folder: dvc.yaml declares it as the one metrics file.
METRICS_FILE = "metrics.json"

Predictions = Callable[[Run, int], list[EpisodeView]]
Training = dict[Run, dict[str, Any] | None]
BaseTraining = dict[tuple[str, str, int], dict[str, Any] | None]


def _tables(
    params: Params,
    metrics: dict[Run, Metrics],
    external: Sequence[Metrics] = (),
    left_out: Sequence[str] = (),
) -> list[Table]:
    return [
        tables.main_table(params, metrics, external, left_out),
        tables.ablation_table(params, metrics),
        tables.paper_table(),
    ]


def render_tables(
    params: Params,
    metrics: dict[Run, Metrics],
    external: Sequence[Metrics] = (),
    left_out: Sequence[str] = (),
) -> dict[str, str]:
    """File name -> text of the main, ablation and paper tables (.md, .csv, .tex) and of
    provenance.json (formatted as ``write_json`` writes it). ``external`` and ``left_out``:
    the records of external checkpoints and the notes on those left out (``load_external``)."""
    built = _tables(params, metrics, external, left_out)
    texts = {f"{t.name}.{ext}": render(t) for t in built for ext, render in FORMATS.items()}
    runs = [*metrics.values(), *external]
    document = provenance.document(params, runs, built, left_out)
    texts["provenance.json"] = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return texts


def aggregate(params: Params) -> list[Path]:
    """Write the tables, provenance.json and the compact metrics file (``METRICS_FILE``, what
    DVC shows) to the tables folder; return the paths written. Every metrics record of the grid
    must exist; external checkpoints' records are added to the tables."""
    out = layout.tables_dir(params)
    metrics = load_metrics(params)
    texts = render_tables(params, metrics, *load_external(params))
    texts[METRICS_FILE] = json.dumps(metrics_summary(params, metrics), indent=2) + "\n"
    for name, text in texts.items():
        write_text(out / name, text)
    return [out / name for name in texts]


def metrics_summary(params: Params, metrics: dict[Run, Metrics]) -> dict[str, Any]:
    """The handful of numbers `dvc metrics show` and `dvc exp show` print (dvc.yaml's one
    ``metrics:`` file), instead of whole records (configuration, hashes, per-class IoUs: 169
    columns each). ``main``: per setting of the main table (``<dataset>-<backbone>-<k>shot``)
    the mean mIoU and FB-IoU of the final output, as the table has them, the meta output's
    mean mIoU, averaged the same way (over the folds, then the training seeds), and the
    training-free baseline's mean mIoU where the records carry it (``eval.baseline``). ``ablation``:
    per ablation setting and variant its mean mIoU and its delta to the full model, as in the
    ablation table. In %, rounded to 2 decimals; a value the grid does not have is left out."""
    main, ablation = tables.main_table(params, metrics), tables.ablation_table(params, metrics)
    summary: dict[str, dict[str, Any]] = {"main": {}, "ablation": {}}
    for values, row in zip(main.records(), main.rows, strict=True):
        if row.role == "ours":
            values["meta"] = _meta_mean(params, metrics, values)
            keys = {"miou": "mean", "fbiou": "fbiou", "meta_miou": "meta"}
            summary["main"][_setting_key(values)] = _rounded(values, keys)
        elif row.role == "baseline":  # follows its setting's own row
            baseline = _rounded(values, {"baseline_miou": "mean"})
            summary["main"][_setting_key(values)] |= baseline
    for values, row in zip(ablation.records(), ablation.rows, strict=True):
        if row.role != "full":
            found = _rounded(values, {"miou": "mean", "delta": "mean_delta"})
            summary["ablation"].setdefault(_setting_key(values), {})[row.role] = found
    return {part: found for part, found in summary.items() if found}


def _setting_key(values: dict[str, Any]) -> str:
    return "{dataset}-{backbone}-{shot}shot".format(**values)


def _rounded(values: dict[str, Any], keys: dict[str, str]) -> dict[str, float]:
    """``name: values[key]`` for each ``keys`` item whose value is present, to 2 decimals."""
    return {
        name: round(float(values[key]), 2) for name, key in keys.items() if values[key] is not None
    }


def _meta_mean(
    params: Params, metrics: dict[Run, Metrics], setting: dict[str, Any]
) -> float | None:
    """The full model's meta-output mIoU in one main-table setting: per training seed the mean
    over the folds run, then over the seeds (how the main table averages the final output)."""
    cell = {key: setting[key] for key in ("dataset", "backbone", "shot")}
    per_seed = []
    for seed in params.grid.train_seeds:
        runs = (Run(**cell, variant="full", fold=fold, seed=seed) for fold in params.grid.folds)
        found = [metrics[run].record for run in runs if run in metrics]
        per_seed.append(mean(rec.get("outputs", {}).get("meta", {}).get("miou") for rec in found))
    return mean(per_seed)


def render_main_markdown(params: Params) -> str:
    """The main table as Markdown (what ``hdmnet aggregate`` prints)."""
    return to_markdown(tables.main_table(params, load_metrics(params), *load_external(params)))


# --- the HTML report ------------------------------------------------------------------------


def build_report(params: Params, predictions: Predictions | None = None) -> Path:
    """Write the figures (PNG) and the self-contained HTML report; return the HTML path.

    ``predictions(run, n)`` returns up to ``n`` test episodes of a run for the qualitative grids
    and correlation maps; without it those figures are left out (the report says so).
    """
    metrics = load_metrics(params)
    external, left_out = load_external(params)
    main_runs = [r for r in layout.main_runs(params) if r in metrics]
    runs = main_runs + [r for r in layout.ablation_runs(params) if r in metrics]
    training = collect.load_training(params, list(metrics))
    base_training = collect.load_base_training(params, layout.base_learners(params))
    main, ablation, reference = _tables(params, metrics, external, left_out)
    out = layout.figures_dir(params)
    missing = [collect.train_record_path(params, r) for r, rec in training.items() if not rec]
    missing += [collect.base_record_path(params, k) for k, rec in base_training.items() if not rec]
    shown = collect.LIST_MISSING
    more = [f"and {len(missing) - shown} more"] if len(missing) > shown else []
    commits, mixed_commits = provenance.commits(metrics.values())
    qualitative = None if predictions is None else _qualitative(params, main_runs, predictions, out)
    document = html.render(
        params=params,
        compared=compare_with_paper(params),
        data_names=", ".join(data_name(params, d) for d in params.grid.datasets),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        train_seeds=params.grid.train_seeds,
        commits=commits,
        mixed_commits=mixed_commits,
        selection_note=provenance.selection_note(metrics.values()),
        mixed_selection=len(provenance.selection_modes(metrics.values())) != 1,
        evaluations=len(metrics),
        external=len(external),
        main=main,
        ablation=ablation,
        reference=reference,
        ablation_figures=_ablation_figures(params, ablation, training, out),
        variant_config=variants.configuration(params),
        training_figures=_training_figures(params, metrics, training, base_training, out),
        missing_training=[*map(str, missing[:shown]), *more],
        qualitative=qualitative,
        provenance=[
            *((r.name, provenance.run_provenance(metrics[r]), training.get(r) or {}) for r in runs),
            *((provenance.run_name(m), provenance.run_provenance(m), {}) for m in external),
        ],
        base_provenance=[
            (k.name.removeprefix("base-"), rec) for k, rec in base_training.items() if rec
        ],
    )
    path = layout.report_file(params)
    write_text(path, document)
    return path


def _figure(fig: Any, out: Path, kind: str, stem: str, title: str) -> html.Figure:
    """Save ``fig`` as ``<kind>-<stem>.png`` in ``out`` and embed it (image grids as JPEG)."""
    path = figures.save_figure(fig, out / f"{kind}-{stem}.png")
    return html.Figure(kind, title, html.data_uri(path, photo=kind in PHOTOS))


def _setting(params: Params, dataset: str, backbone: str, shot: int | None = None) -> str:
    """A setting as figure titles and headings name it (the data as ``data_name`` does)."""
    names = [data_name(params, dataset), backbone_name(backbone)]
    return ", ".join([*names, *([f"{shot}-shot"] if shot else [])])


def _ablation_figures(
    params: Params, table: Table, training: Training, out: Path
) -> list[html.Figure]:
    """Per ablation setting: mean mIoU of each variant with its delta, its spread and whether it
    is within noise (from the ablation table; error bars: the spread over training seeds), and
    per fold the training curves of the variants (of the first training seed)."""
    ab, seeds = params.ablation, params.grid.train_seeds
    rows: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in table.records():
        rows.setdefault((row["dataset"], row["backbone"], row["shot"]), []).append(row)
    shown, folds = [], ", ".join(map(str, ab.folds))
    for (dataset, backbone, shot), found in rows.items():
        by_variant = {row["variant"]: row["mean"] for row in found}
        stem = f"{dataset}-{backbone}-shot{shot}"
        if by_variant.get("full") is not None and len(by_variant) > 1:
            title = f"{_setting(params, dataset, backbone, shot)}, folds {folds}"
            errors = {row["variant"]: row.get("mean_std") for row in found}
            deltas = {
                row["variant"]: (row["mean_delta"], row["mean_delta_std"], row["mean_delta_noise"])
                for row in found
                if row["mean_delta"] is not None
            }
            bars = figures.ablation_bars(by_variant, title, errors, deltas)
            shown.append(_figure(bars, out, "ablation", stem, title))
        for fold in ab.folds:
            runs = {v: Run(dataset, backbone, v, fold, shot, seeds[0]) for v in by_variant}
            curves = {v: training[run] for v, run in runs.items() if training.get(run) is not None}
            if len(curves) >= 2:
                title = f"{_setting(params, dataset, backbone, shot)}, fold {fold}"
                title += f", training seed {seeds[0]}" if len(seeds) > 1 else ""
                stem = f"{dataset}-{backbone}-fold{fold}-shot{shot}"
                curves_fig = figures.training_curves(curves, title)
                shown.append(_figure(curves_fig, out, "training-ablation", stem, title))
    return shown


def _training_figures(
    params: Params,
    metrics: dict[Run, Metrics],
    training: Training,
    base_training: BaseTraining,
    out: Path,
) -> list[tuple[str, list[html.Figure]]]:
    """Per dataset and backbone of the grid: the training curves of the meta and base learners
    (each training seed's), the IoU per class (per shot) and the spread over test seeds of the
    full model (with several training seeds, over training seeds too)."""
    grid = params.grid
    several = len(grid.train_seeds) > 1

    def seed(value: int | None) -> str:
        return f", seed {value}" if several else ""

    blocks = []
    pairs = list(itertools.product(grid.datasets, grid.backbones))
    for dataset, backbone in progress(pairs, desc="report figures"):
        setting, stem = _setting(params, dataset, backbone), f"{dataset}-{backbone}"
        cell = (dataset, backbone, "full")
        full = [r for r in metrics if (r.dataset, r.backbone, r.variant) == cell]
        full.sort(key=lambda r: (r.shot, r.fold, r.seed or 0))
        shown = []
        curves = {f"fold {r.fold}, {r.shot}-shot{seed(r.seed)}": training.get(r) for r in full}
        curves = {label: rec for label, rec in curves.items() if rec is not None}
        if curves:
            fig = figures.training_curves(curves, f"HDMNet, {setting}")
            shown.append(_figure(fig, out, "training-meta", stem, setting))
        learners = {
            (k.fold, k.seed): rec
            for k, rec in base_training.items()
            if (k.dataset, k.backbone) == (dataset, backbone)
        }
        base = {
            f"fold {fold}{seed(s)}": learners[fold, s]
            for fold, s in sorted(learners)
            if learners[fold, s] is not None
        }
        if base:
            fig = figures.training_curves(base, f"PSPNet, {setting}")
            shown.append(_figure(fig, out, "training-base", stem, setting))
        for shot in grid.shots:
            records = [metrics[r].record for r in full if r.shot == shot]
            if any(rec["outputs"]["final"].get("class_iou") for rec in records):
                title = _setting(params, dataset, backbone, shot)
                fig = figures.class_iou_bars(records, title)
                shown.append(_figure(fig, out, "class-iou", f"{stem}-shot{shot}", title))
        records = [metrics[r].record for r in full]
        if any(rec["outputs"]["final"].get("per_seed") for rec in records):
            fig = figures.seed_spread(records, setting)
            shown.append(_figure(fig, out, "seed-spread", stem, setting))
        blocks.append((setting, shown))
    return blocks


def _qualitative(
    params: Params, runs: list[Run], predictions: Predictions, out: Path
) -> list[html.Figure]:
    # Per dataset and fold, the first backbone at the smallest shot: what the paper's figures
    # show, and few enough model runs and images to keep the page a few MB.
    backbone, shot = params.grid.backbones[0], min(params.grid.shots)
    shown = []
    chosen = [r for r in runs if (r.backbone, r.shot) == (backbone, shot)]
    for run in progress(chosen, desc="qualitative figures"):
        episodes = predictions(run, QUALITATIVE_EPISODES)
        if not episodes:
            continue
        title = f"{_setting(params, run.dataset, run.backbone, run.shot)}, fold {run.fold}"
        stem = f"{run.dataset}-{run.backbone}-fold{run.fold}-shot{run.shot}"
        grid = figures.qualitative_grid(episodes, title)
        shown.append(_figure(grid, out, "qualitative", stem, title))
        if any(e.correlations for e in episodes):
            maps = figures.correlation_figure(episodes, title)
            shown.append(_figure(maps, out, "correlation", stem, title))
    return shown
