"""Figures of the report (matplotlib, rendered off screen), and which of them the report shows.

Every drawing function returns a ``matplotlib.figure.Figure`` built without pyplot, so no global
backend or figure registry is touched (the PNG is drawn by Agg) and tests can inspect the axes
before ``save_figure`` writes it. Inputs are records and ``EpisodeView``s (numpy arrays, made by
``hdmnet.evaluate.examples``), never the model: drawing the report needs no torch.

``ablation_figures``, ``training_figures`` and ``qualitative_figures`` choose the report's
figures from its tables and records, draw them, save each as a PNG in the figures folder and
embed it for the page (``hdmnet.report.html``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hdmnet.config import Params
from hdmnet.evaluate.views import EpisodeView
from hdmnet.fileio import atomic_path
from hdmnet.layout import BaseRun, Run
from hdmnet.progress import progress
from hdmnet.report import html
from hdmnet.report.collect import Metrics
from hdmnet.report.paper import backbone_name, data_name
from hdmnet.report.table import NOISE, Table

DPI = 100
IGNORE = 255
# Overlay colours (RGB 0-1): supports blue, ground truth green, prediction red.
SUPPORT_COLOUR = (0.15, 0.35, 1.0)
TRUTH_COLOUR = (0.1, 0.8, 0.2)
PREDICTION_COLOUR = (1.0, 0.15, 0.1)
IGNORE_COLOUR = (1.0, 1.0, 1.0)
PANEL = 1.5  # inches per image panel
FOLD_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def overlay(
    image: np.ndarray, mask: np.ndarray, colour: Sequence[float], alpha: float = 0.5
) -> np.ndarray:
    """``image`` with mask==1 tinted by ``colour`` and ignored pixels (255) lightened."""
    out = image.astype(np.float32) / 255.0
    fg = mask == 1
    out[fg] = (1 - alpha) * out[fg] + alpha * np.asarray(colour, dtype=np.float32)
    ignored = mask == IGNORE
    out[ignored] = 0.4 * out[ignored] + 0.6 * np.asarray(IGNORE_COLOUR, dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def _blank(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def qualitative_grid(episodes: Sequence[EpisodeView], title: str = "") -> Figure:
    """One row per episode: the K supports with their masks, the query, ground truth and
    prediction (K + 3 panels per row; K is the largest shot among the episodes)."""
    if not episodes:
        raise ValueError("qualitative_grid: no episodes to draw")
    for i, episode in enumerate(episodes):
        episode.check(f"episode {i} ({episode.class_name})")
    shots = max(len(e.supports) for e in episodes)
    ncols, nrows = shots + 3, len(episodes)
    fig = Figure(figsize=(PANEL * ncols, PANEL * nrows + 0.5), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    heads = [f"support {k + 1}" for k in range(shots)] + ["query", "ground truth", "prediction"]
    for col, head in enumerate(heads):
        axes[0, col].set_title(head, fontsize=9)
    for row, episode in enumerate(episodes):
        for k in range(shots):
            ax = axes[row, k]
            if k < len(episode.supports):
                ax.imshow(overlay(episode.supports[k], episode.support_masks[k], SUPPORT_COLOUR))
            _blank(ax)
        ax = axes[row, shots]
        ax.imshow(episode.query)
        _blank(ax)
        axes[row, shots + 1].imshow(overlay(episode.query, episode.label, TRUTH_COLOUR))
        _blank(axes[row, shots + 1])
        ax = axes[row, shots + 2]
        ax.imshow(overlay(episode.query, episode.prediction, PREDICTION_COLOUR))
        if episode.iou is not None:
            ax.set_xlabel(f"IoU {episode.iou:.1f}", fontsize=8)
        _blank(ax)
        # The class is the row's label; put it on the first panel where it is readable.
        axes[row, 0].set_ylabel(episode.class_name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def correlation_figure(episodes: Sequence[EpisodeView], title: str = "") -> Figure:
    """Per episode: the query with its ground truth, then each stage's correlation map over the
    query (coarse to fine), as in the paper's Figure 1. Episodes without maps are skipped."""
    chosen = [e for e in episodes if e.correlations]
    if not chosen:
        raise ValueError("correlation_figure: no episode has correlation maps")
    stages = max(len(e.correlations) for e in chosen)
    ncols, nrows = stages + 1, len(chosen)
    fig = Figure(figsize=(PANEL * ncols, PANEL * nrows + 0.5), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    axes[0, 0].set_title("query + truth", fontsize=9)
    for row, episode in enumerate(chosen):
        height, width = episode.query.shape[:2]
        axes[row, 0].imshow(overlay(episode.query, episode.label, TRUTH_COLOUR))
        axes[row, 0].set_ylabel(episode.class_name, fontsize=9)
        _blank(axes[row, 0])
        grey = episode.query.astype(np.float32).mean(axis=2) / 255.0
        for stage in range(stages):
            ax = axes[row, stage + 1]
            _blank(ax)
            if stage >= len(episode.correlations):
                continue
            corr = np.asarray(episode.correlations[stage], dtype=np.float32)
            if corr.ndim != 2:
                raise ValueError(
                    f"correlation_figure: {episode.class_name} stage {stage + 1} map has shape "
                    f"{corr.shape}, expected 2-D"
                )
            lo, hi = float(np.nanmin(corr)), float(np.nanmax(corr))
            norm = (corr - lo) / (hi - lo) if hi > lo else np.zeros_like(corr)
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            ax.imshow(
                norm,
                cmap="jet",
                alpha=0.55,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                interpolation="bilinear",
            )
            if row == 0 or stage >= len(chosen[0].correlations):
                ax.set_title(f"stage {stage + 1} ({corr.shape[0]}×{corr.shape[1]})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def training_curves(records: Mapping[str, dict[str, Any]], title: str = "") -> Figure:
    """Loss and validation mIoU per epoch, one line per training record (label -> record);
    the selected (best) epoch is marked."""
    if not records:
        raise ValueError("training_curves: no training records")
    fig = Figure(figsize=(9.0, 3.4), dpi=DPI)
    loss_ax, val_ax = fig.subplots(1, 2)
    for i, (label, record) in enumerate(records.items()):
        epochs = record.get("epochs") or []
        colour = f"C{i % 10}"
        xs = [e["epoch"] for e in epochs if e.get("loss") is not None]
        loss_ax.plot(xs, [e["loss"] for e in epochs if e.get("loss") is not None], color=colour)
        val = [(e["epoch"], e["val_miou"]) for e in epochs if e.get("val_miou") is not None]
        if val:
            val_ax.plot(*zip(*val, strict=True), color=colour, label=label, marker=".")
        best = record.get("best_epoch")
        if best is not None and record.get("best_val_miou") is not None:
            val_ax.plot([best], [record["best_val_miou"]], marker="*", ms=11, color=colour)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    val_ax.set(xlabel="epoch", ylabel="validation mIoU (%)", title="validation (★ selected)")
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
    if val_ax.get_legend_handles_labels()[0]:
        val_ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def class_iou_bars(records: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Per novel class IoU (final output, mean over the test seeds), coloured by fold. With
    several records of one fold (training seeds) a bar is their mean and an error bar their
    standard deviation."""
    found: dict[tuple[int, int], list[float]] = {}
    names: dict[int, str] = {}
    for record in records:
        names |= dict(zip(record["classes"], record.get("class_names") or [], strict=False))
        class_iou = record["outputs"]["final"].get("class_iou") or {}
        for key, value in class_iou.items():
            found.setdefault((int(key), int(record["fold"])), []).append(float(value))
    if not found:
        raise ValueError("class_iou_bars: the records have no per-class IoU")
    bars = sorted(
        (cls, names.get(cls, str(cls)), values, fold) for (cls, fold), values in found.items()
    )
    width = max(5.0, 0.28 * len(bars) + 1.5)
    fig = Figure(figsize=(width, 3.4), dpi=DPI)
    ax = fig.subplots()
    xs = np.arange(len(bars))
    colours = [FOLD_COLOURS[fold % len(FOLD_COLOURS)] for *_, fold in bars]
    heights = [float(np.mean(values)) for _, _, values, _ in bars]
    spread = [_std(values) for _, _, values, _ in bars]
    several = any(len(values) > 1 for _, _, values, _ in bars)
    ax.bar(xs, heights, color=colours, yerr=spread if several else None, capsize=2)
    ax.set_xticks(xs, [b[1] for b in bars], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(color=FOLD_COLOURS[fold % len(FOLD_COLOURS)], label=f"fold {fold}")
        for fold in sorted({b[3] for b in bars})
    ]
    ax.legend(handles=handles, fontsize=7, ncols=4, loc="upper right", frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _std(values: Sequence[float]) -> float:
    """The sample standard deviation, 0 for a single value (no error bar)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def seed_spread(records: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Box and strip plot of the per-test-seed mIoU of each fold and shot (final output). With
    several training seeds a fold and shot has a box per training seed, side by side in the
    seed's colour, and between them the mean over training seeds with an error bar of their
    standard deviation."""
    groups: dict[tuple[int, int], list[tuple[Any, list[float]]]] = {}
    for record in sorted(records, key=lambda r: (r["shot"], r["fold"])):
        per_seed = record["outputs"]["final"].get("per_seed") or []
        values = [float(s["miou"]) for s in per_seed]
        if values:
            trained = (record.get("train_seed"), values)
            groups.setdefault((record["shot"], record["fold"]), []).append(trained)
    if not groups:
        raise ValueError("seed_spread: the records have no per-seed results")
    fig = Figure(figsize=(max(4.0, 0.8 * len(groups) + 1.5), 3.2), dpi=DPI)
    ax = fig.subplots()
    positions = np.arange(1, len(groups) + 1)
    trainings = sorted({seed for runs in groups.values() for seed, _ in runs}, key=str)
    colour = {seed: f"C{i % 10}" for i, seed in enumerate(trainings)}
    rng = np.random.default_rng(0)  # fixed jitter: the same records give the same picture
    for pos, runs in zip(positions, groups.values(), strict=True):
        k = len(runs)
        offsets = (np.arange(k) - (k - 1) / 2) * (0.7 / k) if k > 1 else np.zeros(1)
        width = 0.5 if k == 1 else 0.6 / k
        ax.boxplot([v for _, v in runs], positions=pos + offsets, widths=width, showfliers=False)
        for offset, (seed, values) in zip(offsets, runs, strict=True):
            jitter = rng.uniform(-0.24 * width, 0.24 * width, size=len(values))
            ax.plot(pos + offset + jitter, values, "o", ms=3, alpha=0.7, color=colour[seed])
        if k > 1:
            means = [float(np.mean(v)) for _, v in runs]
            ax.errorbar(
                [pos],
                [np.mean(means)],
                yerr=[_std(means)],
                fmt="D",
                color="black",
                ms=4,
                capsize=3,
                zorder=3,
            )
    ax.set_xticks(positions, [f"F{fold}\n{shot}-shot" for shot, fold in groups], fontsize=8)
    ax.set_ylabel("mIoU per seed (%)")
    ax.grid(axis="y", alpha=0.3)
    if len(trainings) > 1:
        handles = [Patch(color=colour[s], label=f"training seed {s}") for s in trainings]
        handles.append(Patch(color="black", label="mean ± std over training seeds"))
        ax.legend(handles=handles, fontsize=7, loc="best", frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def ablation_bars(
    means: Mapping[str, float | None],
    title: str = "",
    errors: Mapping[str, float | None] | None = None,
    deltas: Mapping[str, tuple[float, float | None, bool]] | None = None,
) -> Figure:
    """Mean mIoU per variant, the full model first, each bar labelled with its delta.

    ``errors``: variant -> standard deviation over training seeds, drawn as error bars.
    ``deltas``: variant -> (delta, its spread or None, within noise), the ablation table's; the
    label shows the spread, and a delta within noise is labelled so, in grey. Without it the
    label is the difference of the bars."""
    if "full" not in means or means["full"] is None:
        raise ValueError("ablation_bars: the full model's mean is needed as the reference")
    names = list(means)
    fig = Figure(figsize=(max(4.5, 0.95 * len(names) + 1.5), 3.4), dpi=DPI)
    ax = fig.subplots()
    reference = float(means["full"])
    heights = [float("nan") if means[n] is None else float(means[n]) for n in names]
    spread = [float((errors or {}).get(n) or 0.0) for n in names]
    colours = ["#555555" if n == "full" else "#4c72b0" for n in names]
    bars = {"yerr": spread, "capsize": 3} if any(spread) else {}
    ax.bar(range(len(names)), heights, color=colours, **bars)
    ax.axhline(reference, color="#555555", lw=0.8, ls="--")
    for x, (name, h) in enumerate(zip(names, heights, strict=True)):
        if name == "full" or np.isnan(h):
            continue
        label, colour = f"{h - reference:+.1f}", "black"
        if deltas is not None and name in deltas:
            delta, delta_spread, noise = deltas[name]
            label = f"{delta:+.1f}" + ("" if delta_spread is None else f" ± {delta_spread:.1f}")
            label, colour = (f"{label}\n({NOISE})", "#8a8f96") if noise else (label, "black")
        top = h + spread[x]
        ax.annotate(label, (x, top), ha="center", va="bottom", fontsize=7, color=colour)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean mIoU (%)")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


# --- the report's figures: chosen from the tables and records, drawn, saved and embedded -----

# Episodes per qualitative grid: enough to see the behaviour, small enough for the HTML size.
QUALITATIVE_EPISODES = 4
PHOTOS = {"qualitative", "correlation"}  # figures of images, embedded as JPEG

Predictions = Callable[[Run, int], list[EpisodeView]]
Training = dict[Run, dict[str, Any] | None]
BaseTraining = dict[BaseRun, dict[str, Any] | None]


def _embed(fig: Any, out: Path, kind: str, stem: str, title: str) -> html.Figure:
    """Save ``fig`` as ``<kind>-<stem>.png`` in ``out`` and embed it (image grids as JPEG)."""
    path = save_figure(fig, out / f"{kind}-{stem}.png")
    return html.Figure(kind, title, html.data_uri(path, photo=kind in PHOTOS))


def _setting(params: Params, dataset: str, backbone: str, shot: int | None = None) -> str:
    """A setting as figure titles and headings name it (the data as ``data_name`` does)."""
    names = [data_name(params, dataset), backbone_name(backbone)]
    return ", ".join([*names, *([f"{shot}-shot"] if shot else [])])


def ablation_figures(
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
            bars = ablation_bars(by_variant, title, errors, deltas)
            shown.append(_embed(bars, out, "ablation", stem, title))
        for fold in ab.folds:
            runs = {v: Run(dataset, backbone, v, fold, shot, seeds[0]) for v in by_variant}
            curves = {v: training[run] for v, run in runs.items() if training.get(run) is not None}
            if len(curves) >= 2:
                title = f"{_setting(params, dataset, backbone, shot)}, fold {fold}"
                title += f", training seed {seeds[0]}" if len(seeds) > 1 else ""
                stem = f"{dataset}-{backbone}-fold{fold}-shot{shot}"
                curves_fig = training_curves(curves, title)
                shown.append(_embed(curves_fig, out, "training-ablation", stem, title))
    return shown


def training_figures(
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
            fig = training_curves(curves, f"HDMNet, {setting}")
            shown.append(_embed(fig, out, "training-meta", stem, setting))
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
            fig = training_curves(base, f"PSPNet, {setting}")
            shown.append(_embed(fig, out, "training-base", stem, setting))
        for shot in grid.shots:
            records = [metrics[r].record for r in full if r.shot == shot]
            if any(rec["outputs"]["final"].get("class_iou") for rec in records):
                title = _setting(params, dataset, backbone, shot)
                fig = class_iou_bars(records, title)
                shown.append(_embed(fig, out, "class-iou", f"{stem}-shot{shot}", title))
        records = [metrics[r].record for r in full]
        if any(rec["outputs"]["final"].get("per_seed") for rec in records):
            fig = seed_spread(records, setting)
            shown.append(_embed(fig, out, "seed-spread", stem, setting))
        blocks.append((setting, shown))
    return blocks


def qualitative_figures(
    params: Params, runs: list[Run], predictions: Predictions, out: Path
) -> list[html.Figure]:
    """The qualitative grid and correlation maps of ``predictions(run, QUALITATIVE_EPISODES)``
    per dataset and fold of ``runs``, at the first backbone and the smallest shot: what the
    paper's figures show, and few enough model runs and images to keep the page a few MB."""
    backbone, shot = params.grid.backbones[0], min(params.grid.shots)
    shown = []
    chosen = [r for r in runs if (r.backbone, r.shot) == (backbone, shot)]
    for run in progress(chosen, desc="qualitative figures"):
        episodes = predictions(run, QUALITATIVE_EPISODES)
        if not episodes:
            continue
        title = f"{_setting(params, run.dataset, run.backbone, run.shot)}, fold {run.fold}"
        stem = f"{run.dataset}-{run.backbone}-fold{run.fold}-shot{run.shot}"
        grid = qualitative_grid(episodes, title)
        shown.append(_embed(grid, out, "qualitative", stem, title))
        if any(e.correlations for e in episodes):
            maps = correlation_figure(episodes, title)
            shown.append(_embed(maps, out, "correlation", stem, title))
    return shown
