"""Entry points of the report stages: ``aggregate`` (tables) and ``build_report`` (figures and
the self-contained HTML ablation report). Both read records only (see ``hdmnet.records``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.fileio import write_text
from hdmnet.layout import Run
from hdmnet.progress import progress
from hdmnet.report import figures, html, tables
from hdmnet.report.collect import (
    Metrics,
    base_record_path,
    load_base_training,
    load_metrics,
    load_training,
    train_record_path,
)
from hdmnet.report.figures import EpisodeView
from hdmnet.report.paper import backbone_name, dataset_name

TABLE_FORMATS = {"md": tables.to_markdown, "csv": tables.to_csv, "tex": tables.to_latex}
# Episodes per qualitative grid: enough to see the behaviour, small enough for the HTML size.
QUALITATIVE_EPISODES = 4
# Missing training records named in the report before the rest are summarised.
LIST_MISSING = 10

Predictions = Callable[[Run, int], list[EpisodeView]]


def _tables(params: Params, metrics: dict[Run, Metrics]) -> list[tables.Table]:
    return [
        tables.main_table(params, metrics),
        tables.ablation_table(params, metrics),
        tables.paper_table(),
    ]


def render_tables(params: Params, metrics: dict[Run, Metrics]) -> dict[str, str]:
    """File name -> text of the main, ablation and paper tables (.md, .csv, .tex) and of
    provenance.json (formatted as ``write_json`` writes it)."""
    built = _tables(params, metrics)
    texts = {f"{t.name}.{ext}": render(t) for t in built for ext, render in TABLE_FORMATS.items()}
    document = tables.provenance(params, metrics, built)
    texts["provenance.json"] = json.dumps(document, indent=2, sort_keys=True) + "\n"
    return texts


def aggregate(params: Params) -> list[Path]:
    """Write the tables and provenance.json to the tables folder; return the paths written.
    Every metrics record of the grid must exist."""
    out = layout.tables_dir(params)
    written = []
    for name, text in render_tables(params, load_metrics(params)).items():
        write_text(out / name, text)
        written.append(out / name)
    return written


def render_main_markdown(params: Params) -> str:
    """The main table as Markdown (what ``hdmnet aggregate`` prints)."""
    return tables.to_markdown(tables.main_table(params, load_metrics(params)))


# --- the HTML report ------------------------------------------------------------------------


def build_report(params: Params, predictions: Predictions | None = None) -> Path:
    """Write the figures (PNG) and the self-contained HTML report; return the HTML path.

    ``predictions(run, n)`` returns up to ``n`` test episodes of a run for the qualitative grids
    and correlation maps; without it those figures are left out (the report says so).
    """
    metrics = load_metrics(params)
    main_runs = [r for r in layout.main_runs(params) if r in metrics]
    ab_runs = [r for r in layout.ablation_runs(params) if r in metrics]
    training = load_training(params, list(metrics))
    base_training = load_base_training(params, layout.base_learners(params))
    built = _tables(params, metrics)
    fig_dir = layout.figures_dir(params)

    figure_blocks = _figure_section(params, metrics, training, base_training, fig_dir)
    ablation_fig = _ablation_figures(params, metrics, training, fig_dir)
    qualitative = _qualitative_section(params, main_runs, predictions, fig_dir)
    sections = [
        html.Section("main", "Main results", _main_body(params, built)),
        html.Section("ablation", "Ablations", _ablation_body(params, built[1], ablation_fig)),
        html.Section("figures", "Training, per-class IoU and seed spread", figure_blocks),
        html.Section("qualitative", "Qualitative results and correlation maps", qualitative),
        html.Section(
            "provenance",
            "Provenance",
            _provenance_body(params, metrics, training, base_training, main_runs + ab_runs),
        ),
    ]
    document = html.page(
        f"HDMNet reproduction report ({params.preset})",
        _header(params, metrics),
        sections,
    )
    path = layout.report_file(params)
    write_text(path, document)
    return path


def _header(params: Params, metrics: dict[Run, Metrics]) -> str:
    commits: dict[str, bool] = {}
    for item in metrics.values():
        git = item.record.get("git") or {}
        commit = str(git.get("git_commit") or "unknown")
        commits[commit] = commits.get(commit, False) or _dirty(git.get("git_dirty"))
    commit_text = ", ".join(f"{c[:12]}{' (dirty)' if d else ''}" for c, d in commits.items())
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("preset", params.preset),
        ("data", params.data.source + ("" if tables.compare_with_paper(params) else " (embedded)")),
        ("date", now),
        ("commit", commit_text or "no runs"),
        ("parameters", f"digest {params.digest()}"),
        ("runs", f"{len(metrics)} evaluations"),
    ]
    meta = "".join(f"<dt>{html.esc(k)}</dt><dd>{html.esc(v)}</dd>" for k, v in rows)
    modes = tables.selection_modes(metrics.values())
    warn = " warn" if len(modes) != 1 else ""
    callouts = [f'<p class="callout{warn}">{html.esc(tables.selection_note(metrics.values()))}</p>']
    if len(commits) > 1 or any(commits.values()):
        callouts.append(
            '<p class="callout warn">The runs come from more than one commit or from a working '
            "tree with uncommitted changes; see the provenance section.</p>"
        )
    return (
        "<h1>HDMNet reproduction: results and ablations</h1>"
        f'<dl class="meta">{meta}</dl>' + "".join(callouts)
    )


def _main_body(params: Params, built: list[tables.Table]) -> str:
    main, _, reference = built
    parts = [html.table_html(main)]
    if tables.compare_with_paper(params):
        parts.append(
            "<details><summary>All of the paper's numbers and the baselines</summary>"
            f"{html.table_html(reference)}</details>"
        )
    else:
        parts.append(
            '<p class="callout">These runs use the embedded, generated data set, not PASCAL-5i or '
            "COCO-20i. The paper's numbers below are for the real data sets and are shown for "
            "reference only; they are not comparable with the table above.</p>"
        )
        parts.append(html.table_html(reference, caption=True))
    return "".join(parts)


def _ablation_body(params: Params, table: tables.Table, figures_html: str) -> str:
    parts = [html.table_html(table), figures_html, "<h3>Configuration of each variant</h3>"]
    if not params.ablation.variants:
        parts.append("<p>No ablation variants in <code>ablation.variants</code>.</p>")
    rows = []
    for variant in params.ablation.variants:
        for key, full, value in tables.config_diff(params, variant):
            rows.append((variant, key, _yaml(full), _yaml(value)))
    if rows:
        parts.append(
            html.simple_table(
                ["variant", "key", "full model", "variant"], rows, name="variant-config"
            )
        )
    return "".join(parts)


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _ablation_figures(
    params: Params,
    metrics: dict[Run, Metrics],
    training: dict[Run, dict[str, Any] | None],
    fig_dir: Path,
) -> str:
    """Per ablation setting: mean mIoU of each variant, and per fold the variants' curves."""
    ab = params.ablation
    variants = ["full", *ab.variants]
    parts = []
    settings = [(d, b, k) for d in ab.datasets for b in ab.backbones for k in ab.shots]
    for dataset, backbone, shot in settings:
        setting = _setting(dataset, backbone, shot)
        means: dict[str, float | None] = {}
        for variant in variants:
            values = [
                float(metrics[run].record["miou"])
                for f in ab.folds
                if (run := Run(dataset, backbone, variant, f, shot)) in metrics
            ]
            means[variant] = sum(values) / len(values) if values else None
        if means.get("full") is not None and len(means) > 1:
            title = f"{setting}, folds {_folds(ab.folds)}"
            path = fig_dir / f"ablation-{dataset}-{backbone}-shot{shot}.png"
            figures.save_figure(figures.ablation_bars(means, title), path)
            caption = "Mean mIoU per variant; labels: difference to the full model."
            parts.append(html.figure_html(path, f"ablation {title}", caption))
        for fold in ab.folds:
            curves = {
                variant: rec
                for variant in variants
                if (rec := training.get(Run(dataset, backbone, variant, fold, shot))) is not None
            }
            if len(curves) < 2:
                continue
            title = f"{setting}, fold {fold}"
            path = fig_dir / f"training-ablation-{dataset}-{backbone}-fold{fold}-shot{shot}.png"
            figures.save_figure(figures.training_curves(curves, title), path)
            caption = "Meta-training of each variant: loss and validation mIoU per epoch."
            parts.append(html.figure_html(path, f"ablation training {title}", caption))
    return "".join(parts)


def _setting(dataset: str, backbone: str, shot: int) -> str:
    return f"{dataset_name(dataset)}, {backbone_name(backbone)}, {shot}-shot"


def _folds(folds: list[int]) -> str:
    return ", ".join(map(str, folds))


def _figure_section(
    params: Params,
    metrics: dict[Run, Metrics],
    training: dict[Run, dict[str, Any] | None],
    base_training: dict[tuple[str, str, int], dict[str, Any] | None],
    fig_dir: Path,
) -> str:
    grid = params.grid
    parts: list[str] = []
    pairs = [(d, b) for d in grid.datasets for b in grid.backbones]
    for dataset, backbone in progress(pairs, desc="report figures"):
        setting = f"{dataset_name(dataset)}, {backbone_name(backbone)}"
        parts.append(f"<h3>{html.esc(setting)}</h3>")
        full = [
            r
            for r in metrics
            if r.variant == "full" and (r.dataset, r.backbone) == (dataset, backbone)
        ]
        curves = {
            f"fold {r.fold}, {r.shot}-shot": rec
            for r in sorted(full, key=lambda r: (r.shot, r.fold))
            if (rec := training.get(r)) is not None
        }
        if curves:
            path = fig_dir / f"training-meta-{dataset}-{backbone}.png"
            figures.save_figure(figures.training_curves(curves, f"HDMNet, {setting}"), path)
            parts.append(
                html.figure_html(
                    path,
                    f"training {setting}",
                    "Meta-training: loss and validation mIoU per epoch; ★ the selected epoch.",
                )
            )
        base = {
            f"fold {fold}": rec
            for (d, b, fold), rec in sorted(base_training.items())
            if (d, b) == (dataset, backbone) and rec is not None
        }
        if base:
            path = fig_dir / f"training-base-{dataset}-{backbone}.png"
            figures.save_figure(figures.training_curves(base, f"PSPNet, {setting}"), path)
            parts.append(
                html.figure_html(
                    path,
                    f"base training {setting}",
                    "Base learner: loss and validation mIoU on base classes per epoch.",
                )
            )
        for shot in grid.shots:
            records = [metrics[r].record for r in full if r.shot == shot]
            if any(rec["outputs"]["final"].get("class_iou") for rec in records):
                path = fig_dir / f"class-iou-{dataset}-{backbone}-shot{shot}.png"
                title = _setting(dataset, backbone, shot)
                figures.save_figure(figures.class_iou_bars(records, title), path)
                parts.append(
                    html.figure_html(
                        path,
                        f"class IoU {title}",
                        "IoU per novel class (final output, mean over seeds), by fold.",
                    )
                )
        records = [metrics[r].record for r in full]
        if any(rec["outputs"]["final"].get("per_seed") for rec in records):
            path = fig_dir / f"seed-spread-{dataset}-{backbone}.png"
            figures.save_figure(figures.seed_spread(records, setting), path)
            parts.append(
                html.figure_html(
                    path,
                    f"seed spread {setting}",
                    "mIoU of each test seed per fold and shot: box (quartiles) and points.",
                )
            )
    missing = [str(train_record_path(params, r)) for r, rec in training.items() if rec is None]
    missing += [
        str(base_record_path(params, *key)) for key, rec in base_training.items() if rec is None
    ]
    if missing:
        more = len(missing) - LIST_MISSING
        shown = missing[:LIST_MISSING] + ([f"and {more} more"] if more > 0 else [])
        parts.append(
            '<p class="callout warn">No training record (e.g. an evaluated official checkpoint), '
            "so no curve for: " + ", ".join(html.esc(m) for m in shown) + "</p>"
        )
    return "".join(parts)


def _qualitative_section(
    params: Params, runs: list[Run], predictions: Predictions | None, fig_dir: Path
) -> str:
    if predictions is None:
        return (
            "<p>Not drawn: the report was built without model predictions "
            "(<code>build_report(params, predictions=None)</code>).</p>"
        )
    # Per dataset and fold, the first backbone at the smallest shot: what the paper's figures
    # show, and few enough model runs and images to keep the page a few MB.
    backbone, shot = params.grid.backbones[0], min(params.grid.shots)
    chosen = [r for r in runs if r.backbone == backbone and r.shot == shot]
    parts: list[str] = []
    for run in progress(chosen, desc="qualitative figures"):
        episodes = predictions(run, QUALITATIVE_EPISODES)
        if not episodes:
            continue
        title = f"{_setting(run.dataset, run.backbone, run.shot)}, fold {run.fold}"
        stem = f"{run.dataset}-{run.backbone}-fold{run.fold}-shot{run.shot}"
        path = fig_dir / f"qualitative-{stem}.png"
        figures.save_figure(figures.qualitative_grid(episodes, title), path)
        caption = "Supports with their masks (blue), query, ground truth (green), prediction (red)."
        parts.append(html.figure_html(path, f"qualitative {title}", caption, photo=True))
        if any(e.correlations for e in episodes):
            path = fig_dir / f"correlation-{stem}.png"
            figures.save_figure(figures.correlation_figure(episodes, title), path)
            caption = "Correlation maps of the matching module per stage, coarse to fine."
            parts.append(html.figure_html(path, f"correlation {title}", caption, photo=True))
    return "".join(parts) or "<p>The prediction function returned no episodes.</p>"


def _dirty(value: Any) -> bool:
    """Records say True/False (older ones the strings "true"/"false"; None when unknown)."""
    return value is True or value == "true"


def _short(value: Any, n: int = 12) -> str:
    return "-" if value is None else str(value)[:n]


def _provenance_body(
    params: Params,
    metrics: dict[Run, Metrics],
    training: dict[Run, dict[str, Any] | None],
    base_training: dict[tuple[str, str, int], dict[str, Any] | None],
    runs: list[Run],
) -> str:
    rows = []
    for run in runs:
        prov = tables.run_provenance(metrics[run])
        train = training.get(run) or {}
        seeds = prov["seeds"]
        rows.append(
            (
                run.name,
                prov["selection"] or "-",
                _short(prov["checkpoint_epoch"]),
                _short(prov["checkpoint_sha256"]),
                f"{len(seeds)}: {', '.join(map(str, seeds))}",
                prov["episodes_per_seed"],
                _short(prov["git_commit"]) + (" (dirty)" if _dirty(prov["git_dirty"]) else ""),
                _short(prov["config_digest"]),
                _short(prov["data_hash"]),
                _seconds(train.get("seconds")),
                _seconds(prov["seconds"]),
                prov["record"],
            )
        )
    headers = [
        "run", "selection", "epoch", "checkpoint sha256", "seeds", "episodes/seed", "commit",
        "config", "data", "train time", "eval time", "record",
    ]  # fmt: skip
    parts = [
        "<p>Every number above comes from these metrics records; "
        "<code>tables/provenance.json</code> maps each table cell to its runs.</p>",
        html.simple_table(headers, rows, name="provenance"),
    ]
    base_rows = [
        (
            f"{d}-{b}-fold{f}",
            rec.get("selection", "-"),
            _short(rec.get("best_epoch")),
            _short((rec.get("checkpoints") or {}).get("best", {}).get("sha256")),
            _short((rec.get("git") or {}).get("git_commit")),
            _short(rec.get("config_digest")),
            _seconds(rec.get("seconds")),
        )
        for (d, b, f), rec in base_training.items()
        if rec is not None
    ]
    if base_rows:
        parts.append("<h3>Base learners</h3>")
        parts.append(
            html.simple_table(
                [
                    "base learner",
                    "selection",
                    "best epoch",
                    "best sha256",
                    "commit",
                    "config",
                    "train time",
                ],
                base_rows,
                name="base-provenance",
            )
        )
    return "".join(parts)


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value)
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"
