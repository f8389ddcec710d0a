"""Entry points of the report stages: ``aggregate`` (tables) and ``build_report`` (figures and
the self-contained HTML ablation report). Both read records only (see ``hdmnet.records``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.fileio import write_text
from hdmnet.layout import Run
from hdmnet.report import collect, figures, html, provenance, spread, tables, variants
from hdmnet.report.collect import Metrics, load_external, load_metrics
from hdmnet.report.figures import Predictions
from hdmnet.report.paper import compare_with_paper, data_name
from hdmnet.report.table import FORMATS, Table, to_markdown

# The compact metrics file in the tables folder: dvc.yaml declares it as the one metrics file.
METRICS_FILE = "metrics.json"


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
    """The full model's meta-output mIoU in one main-table setting, averaged as the table
    averages the final output (``spread.row_values``: over the folds run, then the seeds)."""
    cell = {key: setting[key] for key in ("dataset", "backbone", "shot")}
    cells = collect.cells(metrics, cell, "full", params.grid.folds, params.grid.train_seeds)
    return spread.row_values(cells, {})["meta_mean"]


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
    qualitative = None
    if predictions is not None:
        qualitative = figures.qualitative_figures(params, main_runs, predictions, out)
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
        ablation_figures=figures.ablation_figures(params, ablation, training, out),
        variant_config=variants.configuration(params),
        training_figures=figures.training_figures(params, metrics, training, base_training, out),
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
