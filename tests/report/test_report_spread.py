"""Training seeds in the tables, figures and report: mean ± std over training seeds, deltas with
their spread (over training seeds where measured, else over test seeds, with a statement that the
training-seed spread was not measured), and deltas within noise never shown as effects."""

from __future__ import annotations

import io
import json
import math
import statistics

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from scipy import stats
from tests.report.fixtures_records import (
    TRAIN_SEED_OFFSET,
    VARIANT_SEED_JITTER,
    default_params,
    expected_miou,
    metrics_record,
    write_grid,
)

from hdmnet import identity, layout
from hdmnet.layout import Run
from hdmnet.records import write_record
from hdmnet.report import figures, spread, tables
from hdmnet.report.build import build_report, render_tables
from hdmnet.report.collect import Metrics
from hdmnet.report.table import cells, to_markdown

SEEDS = [321, 322, 323]
SMALL = ("grid.folds=[0, 1]", "grid.shots=[1]", "ablation.kshot_variants=[]")


def _metrics(params, record=metrics_record) -> dict[Run, Metrics]:
    return {
        run: Metrics(run, layout.metrics_file(params, run), record(run))
        for run in layout.all_runs(params)
    }


def _row(table, **where) -> dict:
    (found,) = [r for r in table.records() if all(r[k] == v for k, v in where.items())]
    return found


def _cell(table, column: str, **where):
    index = next(
        i for i, r in enumerate(table.records()) if all(r[k] == v for k, v in where.items())
    )
    keys = [c.key for c in table.columns]
    return cells(table)[index][keys.index(column)]


# --- the statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize("df", [*range(1, 41), 60, 100, 1000])
def test_t_quantile_is_students(df):
    assert spread.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)


def test_paired_delta_by_hand():
    delta = spread.paired([-2.0, -1.4, -2.3])
    assert delta.value == pytest.approx(-1.9)
    assert delta.spread == pytest.approx(statistics.stdev([-2.0, -1.4, -2.3]))
    assert delta.se == pytest.approx(delta.spread / math.sqrt(3))
    assert (delta.df, delta.over, delta.n) == (2, spread.TRAINING, 3)
    # within noise up to t(2) * se = 4.303 * 0.265 = 1.14
    assert not delta.noise
    assert spread.paired([-0.9, -0.3, -1.2]).noise
    assert spread.paired([-2.0]) is None  # one seed measures no spread


def test_unpaired_delta_and_fold_mean_by_hand():
    delta = spread.unpaired(-2.0, [39.0, 40.0, 41.0], [41.0, 42.0, 43.0])
    assert delta.spread == pytest.approx(math.sqrt(2))
    assert delta.se == pytest.approx(math.sqrt(2 / 3))
    assert (delta.df, delta.over, delta.n) == (2, spread.TEST, 3)
    assert delta.noise  # 2.0 <= 4.303 * 0.816
    four = spread.fold_mean(-3.0, [delta] * 4)
    assert four.spread == pytest.approx(math.sqrt(2) / 2)
    assert four.se == pytest.approx(math.sqrt(2 / 3) / 2)
    assert not four.noise  # 3.0 > 4.303 * 0.408
    assert spread.unpaired(-2.0, [40.0], [42.0, 43.0]) is None
    assert spread.fold_mean(-2.0, [delta, None]) is None


# --- tables over training seeds ----------------------------------------------------------------


def test_main_table_cells_are_mean_and_std_over_training_seeds(project_root, tmp_path):
    params = default_params(project_root, tmp_path, f"grid.train_seeds={SEEDS}", *SMALL)
    metrics = _metrics(params)
    table = tables.main_table(params, metrics)
    row = _row(table, shot=1)
    offsets = [TRAIN_SEED_OFFSET[s] for s in SEEDS]
    for fold in (0, 1):
        values = [expected_miou(Run("pascal", "small", "full", fold, 1, s)) for s in SEEDS]
        assert row[f"fold{fold}"] == pytest.approx(statistics.mean(values))
        assert row[f"fold{fold}_std"] == pytest.approx(statistics.stdev(offsets))
    assert row["mean"] == pytest.approx(44.5 + statistics.mean(offsets))
    assert row["mean_std"] == pytest.approx(statistics.stdev(offsets))
    assert row["train_seeds"] == 3
    assert str(_cell(table, "fold0", shot=1)) == "42.3 ± 1.5"

    rendered = render_tables(params, metrics)
    csv = pd.read_csv(io.StringIO(rendered["main.csv"]))
    assert {"fold0", "fold0_std", "mean", "mean_std", "fbiou_std"} <= set(csv.columns)
    assert list(csv["train_seeds"]) == [3]
    assert "42.3 ± 1.5 | 47.3 ± 1.5 | - | - | 44.8 ± 1.5" in rendered["main.md"]
    assert "Mean ± std over 3 training seeds (321, 322, 323)" in rendered["main.md"]
    assert r"42.3 $\pm$ 1.5" in rendered["main.tex"]

    # provenance.json: every cell lists the runs of every training seed, with its spread.
    cells_ = json.loads(rendered["provenance.json"])["cells"]
    mean = next(c for c in cells_ if c["table"] == "main" and c["column"] == "mean")
    assert sorted(mean["runs"]) == sorted(
        f"pascal-small-full-fold{f}-shot1-seed{s}" for f in (0, 1) for s in SEEDS
    )
    assert mean["spread"] == {"std": pytest.approx(statistics.stdev(offsets)), "train_seeds": 3}


def test_ablation_deltas_over_training_seeds_are_paired_and_noise_is_marked(project_root, tmp_path):
    params = default_params(
        project_root,
        tmp_path,
        f"grid.train_seeds={SEEDS}",
        *SMALL,
        "ablation.variants=[no_distill, stages_2]",
    )
    metrics = _metrics(params)
    table = tables.ablation_table(params, metrics)
    jitter = [VARIANT_SEED_JITTER[s] for s in SEEDS]
    for variant, offset in (("no_distill", -2.0), ("stages_2", -1.0)):
        row = _row(table, variant=variant)
        differences = [offset + j for j in jitter]  # variant - full, seed by seed
        assert row["fold0_delta"] == pytest.approx(statistics.mean(differences))
        assert row["fold0_delta_std"] == pytest.approx(statistics.stdev(differences))
        assert (row["delta_spread"], row["delta_n"]) == ("training seeds", 3)
    # Threshold t(2) * 0.458 / sqrt(3) = 1.14 points: -1.9 is an effect, -0.9 is not.
    assert _row(table, variant="no_distill")["mean_delta_noise"] is False
    assert _row(table, variant="stages_2")["mean_delta_noise"] is True
    assert str(_cell(table, "fold0", variant="no_distill")) == "40.4 ± 2.0 (-1.9 ± 0.5)"
    assert str(_cell(table, "fold0", variant="stages_2")) == "41.4 ± 2.0 (-0.9 ± 0.5, within noise)"
    notes = " ".join(table.notes)
    assert "standard deviation of its 3 per-seed differences" in notes and "t = 4.30" in notes
    assert "not measured" not in notes
    # The delta's runs: both trainings of every seed.
    runs = table.rows[1].runs["fold0"]
    assert sorted(runs) == sorted(
        f"pascal-small-{v}-fold0-shot1-seed{s}" for v in ("no_distill", "full") for s in SEEDS
    )


def _tight(run: Run) -> dict:
    """The fixture's record with test seeds 0.1 apart: small test-seed noise."""
    record = metrics_record(run)
    for output in record["outputs"].values():
        for entry, d in zip(output["per_seed"], (-0.1, 0.0, 0.1), strict=True):
            entry["miou"] = output["miou"] + d
            entry["fbiou"] = output["fbiou"] + d
    return record


def test_one_training_seed_uses_the_test_seeds_and_says_training_was_not_measured(
    project_root, tmp_path
):
    params = default_params(project_root, tmp_path, *SMALL)
    table = tables.ablation_table(params, _metrics(params, _tight))
    # Test-seed spread sqrt(0.1^2 + 0.1^2); within noise up to t(2) * sqrt(2 * 0.01 / 3).
    row = _row(table, variant="no_exclusion")
    assert row["fold0_delta_std"] == pytest.approx(math.sqrt(0.02))
    assert (row["delta_spread"], row["delta_n"]) == ("test seeds", 3)
    assert str(_cell(table, "fold0", variant="no_distill")) == "40.0 (-2.0 ± 0.1)"
    assert str(_cell(table, "fold0", variant="no_exclusion")) == "42.2 (+0.2 ± 0.1, within noise)"
    notes = " ".join(table.notes)
    assert "its spread over the 3 test seeds" in notes
    assert "training-seed spread was not measured in this run (one training seed, 321)" in notes
    assert "Mean ± std over" not in notes
    md = to_markdown(table)
    assert "(+0.2 ± 0.1, within noise)" in md and "| 40.0 (-2.0 ± 0.1) |" in md


def test_report_colours_effects_and_greys_noise(project_root, tmp_path):
    params = default_params(
        project_root, tmp_path, *SMALL, "ablation.variants=[no_distill, no_exclusion]"
    )
    write_grid(params, training=False)
    for run in layout.all_runs(params):
        record = {**_tight(run), "config_digest": identity.evaluation(params, run)}
        write_record(layout.metrics_file(params, run), record)
    text = build_report(params).read_text(encoding="utf-8")
    assert '<small>(<span class="neg">-2.0 ± 0.1</span>)</small>' in text
    assert '<small>(<span class="noise">+0.2 ± 0.1, within noise</span>)</small>' in text
    assert 'class="pos">+0.2' not in text


def test_report_over_training_seeds(project_root, tmp_path):
    params = default_params(
        project_root,
        tmp_path,
        "grid.train_seeds=[321, 322]",
        *SMALL,
        "ablation.variants=[no_distill]",
    )
    write_grid(params)
    text = build_report(params).read_text(encoding="utf-8")
    assert "<dt>training seeds</dt><dd>321, 322 (tables: mean ± std over them)</dd>" in text
    assert '<td class="num">43.0 ± 1.4</td>' in text  # fold 0: 42 and 44 over the seeds
    assert "Error bars: standard deviation over the training seeds." in text
    assert "One box per training seed" in text
    for run in layout.all_runs(params):
        assert f"<td>{run.name}</td>" in text


# --- figures -----------------------------------------------------------------------------------


def _error_bars(ax) -> list:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _records(folds, seeds, shot=1, variant="full"):
    return [
        metrics_record(Run("pascal", "small", variant, f, shot, s)) for f in folds for s in seeds
    ]


def test_seed_spread_has_a_box_per_training_seed_and_their_mean_and_std():
    fig = figures.seed_spread(_records((0, 1), (321, 322)), "spread")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["F0\n1-shot", "F1\n1-shot"]
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(points) == 4  # 2 folds x 2 training seeds, 3 test seeds each
    assert points[0].get_color() != points[1].get_color()
    assert sorted(points[1].get_ydata()) == pytest.approx([43.0, 44.0, 45.0])  # fold 0, seed 322
    (means,) = [line for line in ax.lines if line.get_marker() == "D"][:1]
    assert means.get_ydata()[0] == pytest.approx(43.0)  # fold 0: 42 and 44
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["training seed 321", "training seed 322"]


def test_seed_spread_of_one_training_seed_has_no_error_bars():
    ax = figures.seed_spread(_records((0, 1), (321,)), "spread").axes[0]
    assert not [line for line in ax.lines if line.get_marker() == "D"]
    assert ax.get_legend() is None


def test_class_iou_bars_average_the_training_seeds_with_error_bars():
    ax = figures.class_iou_bars(_records((0,), (321, 322)), "classes").axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([41.0, 42.0, 43.0, 44.0, 45.0])  # classes at 40+i and 42+i
    assert _error_bars(ax)
    assert not _error_bars(figures.class_iou_bars(_records((0,), (321,))).axes[0])


def test_ablation_bars_show_the_delta_spread_and_grey_noise():
    deltas = {"stages_1": (-2.5, 0.3, False), "no_ensemble": (-0.4, 0.5, True)}
    errors = {"full": 1.0, "stages_1": 1.2, "no_ensemble": 0.8}
    means = {"full": 50.0, "stages_1": 47.5, "no_ensemble": 49.6}
    ax = figures.ablation_bars(means, "ab", errors, deltas).axes[0]
    labels = {t.get_text(): t for t in ax.texts}
    assert set(labels) == {"-2.5 ± 0.3", "-0.4 ± 0.5\n(within noise)"}
    assert labels["-2.5 ± 0.3"].get_color() == "black"
    assert labels["-0.4 ± 0.5\n(within noise)"].get_color() != "black"
    assert labels["-2.5 ± 0.3"].xy[1] == pytest.approx(47.5 + 1.2)  # above the error bar
    assert _error_bars(ax)
    assert not _error_bars(figures.ablation_bars(means, "ab", None, deltas).axes[0])
