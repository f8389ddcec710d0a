"""Figures: panel layout, bars and points drawn from the records, non-blank PNGs written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.report.fixtures_records import SEEDS, episode, metrics_record, train_record

from hdmnet.layout import Run
from hdmnet.records import TRAIN_KIND
from hdmnet.report import figures


def _saved(fig, path: Path) -> np.ndarray:
    """Save, check it is a real PNG of non-trivial size and content, return its pixels."""
    figures.save_figure(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.std() > 5  # not a blank canvas
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left nothing behind
    return pixels


@pytest.mark.parametrize("shots", [1, 5])
def test_qualitative_grid_has_supports_query_truth_prediction_per_row(tmp_path, shots):
    episodes = [episode(shots, seed=i) for i in range(3)]
    fig = figures.qualitative_grid(episodes, "fold 0")
    assert len(fig.axes) == 3 * (shots + 3)
    titles = [ax.get_title() for ax in fig.axes[: shots + 3]]
    assert titles == [f"support {k + 1}" for k in range(shots)] + [
        "query",
        "ground truth",
        "prediction",
    ]
    assert fig.axes[shots + 2].get_xlabel() == "IoU 61.5"
    pixels = _saved(fig, tmp_path / "grid.png")
    assert pixels.shape[1] == pytest.approx(figures.PANEL * (shots + 3) * figures.DPI, abs=2)


def test_qualitative_grid_with_fewer_supports_in_one_row_leaves_panels_empty():
    fig = figures.qualitative_grid([episode(2, seed=0), episode(1, seed=1)])
    assert len(fig.axes) == 2 * 5
    second_row = fig.axes[5:]
    assert len(second_row[0].images) == 1 and len(second_row[1].images) == 0


def test_qualitative_grid_refuses_mismatched_arrays():
    bad = episode(1)
    bad.prediction = bad.prediction[:-1]
    with pytest.raises(ValueError, match=r"episode 0 \(class0\): prediction shape"):
        figures.qualitative_grid([bad])
    with pytest.raises(ValueError, match="no episodes"):
        figures.qualitative_grid([])


def test_overlay_tints_foreground_and_lightens_ignored_pixels():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    mask = np.array([[0, 1, 255], [0, 0, 1]], dtype=np.uint8)
    out = figures.overlay(image, mask, (1.0, 0.0, 0.0), alpha=0.5)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert out[0, 2].tolist() == pytest.approx([0.6, 0.6, 0.6])


def test_correlation_figure_has_the_query_and_one_panel_per_stage(tmp_path):
    episodes = [episode(1, seed=i) for i in range(2)]
    no_maps = episode(1, seed=9)
    no_maps.correlations = []
    fig = figures.correlation_figure([*episodes, no_maps])
    assert len(fig.axes) == 2 * 4  # the episode without maps is left out
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "query + truth",
        "stage 1 (4×4)",
        "stage 2 (8×8)",
        "stage 3 (16×16)",
    ]
    _saved(fig, tmp_path / "corr.png")
    with pytest.raises(ValueError, match="no episode has correlation maps"):
        figures.correlation_figure([no_maps])


def test_training_curves_draw_each_record_and_mark_the_selected_epoch(tmp_path):
    records = {f"fold {f}": train_record(TRAIN_KIND, {"fold": f}, epochs=4 + f) for f in range(2)}
    fig = figures.training_curves(records, "curves")
    loss_ax, val_ax = fig.axes[:2]
    assert [len(line.get_xdata()) for line in loss_ax.lines] == [4, 5]
    stars = [line for line in val_ax.lines if line.get_marker() == "*"]
    assert [(s.get_xdata()[0], s.get_ydata()[0]) for s in stars] == [(3, 39.0), (4, 42.0)]
    _saved(fig, tmp_path / "curves.png")


def test_class_iou_bars_one_bar_per_class_of_every_fold(tmp_path):
    records = [metrics_record(Run("pascal", "small", "full", f, 1, 321)) for f in range(2)]
    fig = figures.class_iou_bars(records, "per class")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 10
    assert heights[:5] == pytest.approx([40.0, 41.0, 42.0, 43.0, 44.0])  # fold 0 classes 1..5
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:2] == ["aeroplane", "bicycle"] and labels[5] == "bus"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fold 0", "fold 1"]
    _saved(fig, tmp_path / "classes.png")


def test_seed_spread_plots_every_seed_of_every_fold_and_shot(tmp_path):
    records = [
        metrics_record(Run("pascal", "small", "full", f, k, 321)) for k in (5, 1) for f in range(2)
    ]
    fig = figures.seed_spread(records, "spread")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["F0\n1-shot", "F1\n1-shot", "F0\n5-shot", "F1\n5-shot"]
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(points) == 4 and all(len(p.get_ydata()) == len(SEEDS) for p in points)
    assert sorted(points[1].get_ydata()) == pytest.approx([46.0, 47.0, 48.0])  # fold 1, 1-shot
    _saved(fig, tmp_path / "spread.png")


def test_ablation_bars_label_the_delta_to_the_full_model(tmp_path):
    fig = figures.ablation_bars({"full": 50.0, "stages_1": 47.5, "no_distill": None}, "ab")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["-2.5"]
    _saved(fig, tmp_path / "ablation.png")
    with pytest.raises(ValueError, match="full model"):
        figures.ablation_bars({"stages_1": 47.5})
