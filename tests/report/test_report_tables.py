"""Tables from hand-made metrics records: values, means, deltas, '-', formats and provenance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from tests.report.fixtures_records import (
    default_params,
    expected_fbiou,
    expected_miou,
    metrics_record,
    paper_params,
    write_grid,
    write_metrics,
)

from hdmnet import identity, layout
from hdmnet.layout import Run
from hdmnet.records import RecordError, write_record
from hdmnet.report import paper, provenance, tables
from hdmnet.report.build import aggregate, render_main_markdown
from hdmnet.report.collect import load_metrics


def _md_rows(text: str) -> list[list[str]]:
    """Body rows of the first Markdown table (cells stripped)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_aggregate_default_preset_writes_every_file_with_the_right_numbers(default_grid):
    written = aggregate(default_grid)
    out = layout.tables_dir(default_grid)
    expected = {f"{n}.{e}" for n in ("main", "ablation", "paper") for e in ("md", "csv", "tex")}
    assert {p.name for p in written} == expected | {"provenance.json", "metrics.json"}
    assert all(p.parent == out and p.stat().st_size > 0 for p in written)

    main = pd.read_csv(out / "main.csv")
    # Embedded data: a first column says so; ``dataset`` keeps the key of records and paths.
    assert list(main.columns) == [
        "data", "dataset", "backbone", "shot", "fold0", "fold1", "fold2", "fold3", "mean", "fbiou"
    ]  # fmt: skip
    assert len(main) == 2  # pascal x small x {1, 5}
    for shot in (1, 5):
        row = main[main["shot"] == shot].iloc[0]
        runs = [Run("pascal", "small", "full", f, shot, 321) for f in range(4)]
        for f, run in enumerate(runs):
            assert row[f"fold{f}"] == pytest.approx(expected_miou(run))
        assert row["mean"] == pytest.approx(sum(map(expected_miou, runs)) / 4)
        assert row["fbiou"] == pytest.approx(sum(map(expected_fbiou, runs)) / 4)

    # Embedded data: no comparison in the main table, the paper's numbers kept apart.
    md = (out / "main.md").read_text()
    assert "ours - paper" not in md and "Source" not in md
    assert "not compared" in md
    assert _md_rows(md)[0] == [
        "embedded PASCAL-like", "small", "1", "42.0", "47.0", "52.0", "57.0", "49.5", "72.0"
    ]  # fmt: skip
    reference = pd.read_csv(out / "paper.csv")
    hdm = reference[(reference["method"] == "HDMNet") & (reference["dataset"] == "coco")]
    row = hdm[(hdm["backbone"] == "resnet50") & (hdm["shot"] == 1)].iloc[0]
    assert (row["fold0"], row["mean"], row["fbiou"]) == (43.8, 50.0, 72.2)
    assert render_main_markdown(default_grid) == md


def test_folds_outside_the_grid_are_dashes_and_the_mean_covers_the_rest(project_root, tmp_path):
    params = default_params(project_root, tmp_path, "grid.folds=[0, 2]", "grid.shots=[1]")
    write_grid(params, training=False)
    aggregate(params)
    out = layout.tables_dir(params)
    (row,) = _md_rows((out / "main.md").read_text())
    assert row[3:] == ["42.0", "-", "52.0", "-", "47.0", "71.5"]
    main = pd.read_csv(out / "main.csv")
    assert main["fold1"].isna().all() and main["fold3"].isna().all()
    assert main["mean"].iloc[0] == pytest.approx(47.0)
    assert "Only folds 0, 2" in (out / "main.md").read_text()


def test_missing_record_names_the_file_and_the_command(default_grid):
    run = Run("pascal", "small", "full", 1, 5, 321)
    path = layout.metrics_file(default_grid, run)
    path.unlink()
    with pytest.raises(RecordError) as error:
        aggregate(default_grid)
    message = str(error.value)
    assert str(path) in message
    assert "hdmnet evaluate --dataset pascal --backbone small --fold 1 --shot 5" in message
    assert not (layout.tables_dir(default_grid) / "main.md").exists()


def test_a_record_in_the_wrong_place_is_refused(default_grid):
    run = Run("pascal", "small", "full", 2, 1, 321)
    path = layout.metrics_file(default_grid, run)
    write_record(path, metrics_record(Run("pascal", "small", "full", 3, 1, 321)))
    with pytest.raises(RecordError, match=r"fold2-shot1-seed321\.json: fold is 3"):
        load_metrics(default_grid)


def test_paper_preset_shows_the_paper_and_the_difference(paper_grid):
    aggregate(paper_grid)
    out = layout.tables_dir(paper_grid)
    main = pd.read_csv(out / "main.csv")
    assert list(main["source"]) == ["ours", "paper", "ours - paper"]
    ours, theirs, diff = (main.iloc[i] for i in range(3))
    published = paper.MAIN[("coco", "resnet50", 1)]
    runs = [Run("coco", "resnet50", "full", f, 1, 321) for f in range(4)]
    for f in range(4):
        assert ours[f"fold{f}"] == pytest.approx(expected_miou(runs[f]))
        assert theirs[f"fold{f}"] == published.folds[f]
        assert diff[f"fold{f}"] == pytest.approx(expected_miou(runs[f]) - published.folds[f])
    assert diff["mean"] == pytest.approx(sum(map(expected_miou, runs)) / 4 - 50.0)
    assert diff["fbiou"] == pytest.approx(sum(map(expected_fbiou, runs)) / 4 - 72.2)
    rows = _md_rows((out / "main.md").read_text())
    # Differences carry their sign: 42.0 - 43.8 and 52.0 - 51.6.
    assert rows[2][4:8] == ["-1.8", "-8.3", "+0.4", "+7.6"]


def test_paper_preset_partial_folds_do_not_compare_the_mean(project_root, tmp_path):
    params = paper_params(project_root, tmp_path, "grid.folds=[0, 1]", "ablation.folds=[0]")
    write_grid(params, training=False)
    main = tables.main_table(params, load_metrics(params))
    ours, theirs, diff = main.records()
    assert ours["mean"] == pytest.approx(44.5)  # folds 0 and 1 only
    assert diff["fold0"] == pytest.approx(42.0 - 43.8)
    assert diff["fold2"] is None and diff["mean"] is None
    assert theirs["mean"] == 50.0
    assert any("not compared" in note for note in main.notes)


def test_ablation_deltas_against_the_full_model(default_grid):
    aggregate(default_grid)
    out = layout.tables_dir(default_grid)
    table = pd.read_csv(out / "ablation.csv")
    # The variants at 1 shot, then fixed_quirks (a K-shot variant) at 5 shots, each shot's rows
    # after the full model's.
    ab = default_grid.ablation
    assert (ab.shots, ab.kshot_variants, ab.kshot_shots) == ([1], ["fixed_quirks"], [5])
    assert list(zip(table["variant"], table["shot"], strict=True)) == [
        ("full", 1), *((variant, 1) for variant in ab.variants), ("full", 5), ("fixed_quirks", 5)
    ]  # fmt: skip
    for _, full in table[table["variant"] == "full"].iterrows():
        reference = expected_miou(Run("pascal", "small", "full", 0, full["shot"], 321))
        assert pd.isna(full["fold0_delta"]) and full["fold0"] == pytest.approx(reference)
    for _, row in table[table["variant"] != "full"].iterrows():
        run = Run("pascal", "small", row["variant"], 0, row["shot"], 321)
        delta = expected_miou(run) - expected_miou(
            Run("pascal", "small", "full", 0, row["shot"], 321)
        )
        assert row["fold0"] == pytest.approx(expected_miou(run))
        assert row["fold0_delta"] == pytest.approx(delta)
        assert row["mean_delta"] == pytest.approx(delta)
        assert row["fbiou_delta"] == pytest.approx(delta)
        assert row["meta_mean"] == pytest.approx(expected_miou(run) - 3.0)
        assert row["base_mean"] == pytest.approx(expected_miou(run) - 20.0)
        assert pd.isna(row["fold1"])  # not in the ablation grid
    by_name = table.set_index("variant")
    assert by_name.loc["no_distill", "change"] == "model.distill: true → false"
    assert by_name.loc["stages_1", "change"] == "model.stages: 3 → 1"
    rows = {r[0]: r for r in _md_rows((out / "ablation.md").read_text())}
    # One training seed, 3 test seeds at -1, 0, +1 (std 1): the spread of a delta is
    # sqrt(1 + 1); within noise up to t(2) * sqrt(1/3 + 1/3) = 4.30 * 0.816 = 3.5 points.
    noise = "(-2.0 ± 1.4, within noise)"
    assert rows["no_distill"][5:10] == [f"40.0 {noise}", "-", "-", "-", f"40.0 {noise}"]
    assert rows["fixed_quirks"][5] == "50.8 (+0.8 ± 1.4, within noise)"  # 50.75 against 50.0
    assert "paper_mean" not in table.columns


def test_ablation_in_the_paper_preset_quotes_the_published_variant(paper_grid):
    aggregate(paper_grid)
    table = pd.read_csv(layout.tables_dir(paper_grid) / "ablation.csv").set_index("variant")
    assert table.loc["full", "paper_mean"] == 50.0
    assert table.loc["no_ensemble", "paper_mean"] == 48.7
    assert pd.isna(table.loc["stages_1", "paper_mean"])
    assert table.loc["stages_1", "mean_delta"] == pytest.approx(-3.0)


def test_full_model_missing_on_an_ablation_fold_gives_no_delta(project_root, tmp_path):
    params = default_params(
        project_root, tmp_path, "grid.folds=[0]", "ablation.folds=[0, 1]", "grid.shots=[1]"
    )
    write_grid(params, training=False)
    table = tables.ablation_table(params, load_metrics(params))
    row = next(r for r in table.records() if r["variant"] == "stages_1")
    assert (row["fold0"], row["fold0_delta"]) == (pytest.approx(39.0), pytest.approx(-3.0))
    assert (row["fold1"], row["fold1_delta"]) == (pytest.approx(44.0), None)
    assert row["mean_delta"] is None  # the full model's mean covers fewer folds
    assert any("pascal-small-full-fold1-shot1" in note for note in table.notes)


def test_latex_is_a_balanced_booktabs_tabular(paper_grid):
    aggregate(paper_grid)
    for name in ("main", "ablation", "paper"):
        text = (layout.tables_dir(paper_grid) / f"{name}.tex").read_text()
        body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
        assert body.count(r"\begin{tabular}") == 1 and body.count(r"\end{tabular}") == 1
        assert body.index(r"\toprule") < body.index(r"\midrule") < body.index(r"\bottomrule")
        depth = 0
        for ch in re.sub(r"\\[{}]", "", body):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0
        assert depth == 0
        spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", body).group(1)
        rows = [line for line in body.splitlines() if line.endswith(r"\\")]
        unescaped_amp = re.compile(r"(?<!\\)&")
        assert all(len(unescaped_amp.findall(r)) == len(spec) - 1 for r in rows)
        # Signs are typeset as math, missing cells as en dashes, specials escaped.
        assert "--" in body or name == "main"
    main = (layout.tables_dir(paper_grid) / "main.tex").read_text()
    assert "$-$1.8" in main and "$+$0.4" in main
    ablation = (layout.tables_dir(paper_grid) / "ablation.tex").read_text()
    assert r"no\_ensemble" in ablation and r"$\rightarrow$" in ablation


def test_provenance_traces_every_cell_to_its_records(default_grid):
    aggregate(default_grid)
    prov = json.loads((layout.tables_dir(default_grid) / "provenance.json").read_text())
    runs = layout.all_runs(default_grid)
    assert set(prov["runs"]) == {r.name for r in runs}
    run_of_entry = Run("pascal", "small", "full", 1, 5, 321)
    entry = prov["runs"]["pascal-small-full-fold1-shot5-seed321"]
    assert Path(entry["record"]) == layout.metrics_file(default_grid, run_of_entry)
    assert entry["checkpoint_sha256"].startswith("15ab")
    assert entry["selection"] == "best_val" and entry["seeds"] == [510, 365, 382]
    assert entry["episodes_per_seed"] == 300
    assert entry["config_digest"] == identity.evaluation(default_grid, run_of_entry)
    assert entry["git_commit"].startswith("1234567890") and entry["git_dirty"] is False

    main_cells = [c for c in prov["cells"] if c["table"] == "main"]
    assert len(main_cells) == 2 * 6  # two rows x (4 folds, mean, FB-IoU)
    for cell in main_cells:
        assert cell["runs"] and all(name in prov["runs"] for name in cell["runs"])
    mean = next(c for c in main_cells if c["column"] == "mean" and c["row"]["shot"] == 5)
    shot5 = sorted(f"pascal-small-full-fold{f}-shot5-seed321" for f in range(4))
    assert sorted(mean["runs"]) == shot5
    delta_cell = next(
        c
        for c in prov["cells"]
        if c["table"] == "ablation" and c["row"]["variant"] == "stages_2" and c["column"] == "fold0"
    )
    assert delta_cell["value"] == {"value": 41.0, "delta": -1.0}
    assert set(delta_cell["runs"]) == {"pascal-small-stages_2-fold0-shot1-seed321", runs[0].name}


def test_mixed_selection_modes_are_flagged(project_root, tmp_path):
    params = default_params(project_root, tmp_path, "grid.shots=[1]")
    write_grid(params, training=False)
    run = Run("pascal", "small", "full", 3, 1, 321)
    write_metrics(params, run, selection="last")
    note = provenance.selection_note(load_metrics(params).values())
    assert note.startswith("Checkpoint selection is MIXED")
    assert "best_val" in note and "last checkpoint (last): 1 runs" in note


def test_paper_numbers_match_the_spec(project_root):
    spec = project_root.parent / "shared" / "spec" / "PAPER.md"
    if not spec.exists():
        pytest.skip(f"{spec} not present in this checkout")
    names = {v: k for k, v in paper.DATASET_NAMES.items()}
    backbones = {v: k for k, v in paper.BACKBONE_NAMES.items()}
    found = 0
    for line in spec.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] in names:
            result = paper.MAIN[(names[cells[0]], backbones[cells[1]], int(cells[2]))]
            assert list(result.folds) == [float(c) for c in cells[3:7]]
            assert result.mean == float(cells[7])
            assert result.fbiou == (None if cells[8] == "-" else float(cells[8]))
            found += 1
    assert found == len(paper.MAIN) == 8
    for result in paper.MAIN.values():  # the published means are the fold means, rounded
        assert abs(sum(result.folds) / 4 - result.mean) <= 0.051


def test_the_training_free_baseline_gets_a_row_of_its_own(project_root, tmp_path):
    # Records carrying the baseline section that ``hdmnet evaluate`` adds (eval.baseline):
    # the main table shows it under its own Method name, fold by fold, with what it is.
    params = default_params(project_root, tmp_path, "grid.shots=[1]", "grid.train_seeds=[1, 2]")
    runs = write_grid(params, training=False)
    for run in runs:
        path = layout.metrics_file(params, run)
        record = json.loads(path.read_text())
        miou = 30.0 + run.fold + (2.0 if run.seed == 2 else 0.0)
        record["baseline"] = {
            "what": "masked-average prototype, cosine",
            "miou": miou,
            "fbiou": 60.0,
            "method": "prototype",
            "threshold": 0.5 if run.fold else 0.6,
        }
        write_record(path, record)
    aggregate(params)
    out = layout.tables_dir(params)
    main = pd.read_csv(out / "main.csv")
    assert list(main["method"]) == ["HDMNet", "Training-free baseline (prototype)"]
    baseline = main.iloc[1]
    for f in range(4):
        assert baseline[f"fold{f}"] == pytest.approx(31.0 + f)  # mean over training seeds 1, 2
        assert baseline[f"fold{f}_std"] == pytest.approx(2**0.5, abs=1e-3)
    assert baseline["mean"] == pytest.approx(32.5)
    hdmnet = main.iloc[0]
    assert hdmnet["fold0"] == pytest.approx(
        sum(expected_miou(r) for r in runs if r.fold == 0 and r.variant == "full") / 2
    )
    md = (out / "main.md").read_text()
    assert "Training-free baseline (prototype): masked-average prototype, cosine" in md
    assert "thresholds chosen: 0.5, 0.6" in md
    # Records without the section (eval.baseline: none) leave the table as it was.
    plain = default_params(project_root, tmp_path / "plain", "grid.shots=[1]")
    write_grid(plain, training=False)
    assert "Method" not in render_main_markdown(plain) and "baseline" not in render_main_markdown(
        plain
    )
