"""The HTML report: self-contained, the tables, variant configs, figures and provenance in it,
and it renders in a real browser (headless Chromium)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.report.fixtures_records import default_params, episode, write_grid

from hdmnet import layout
from hdmnet.layout import Run
from hdmnet.report.build import build_report
from hdmnet.report.figures import QUALITATIVE_EPISODES

IMG = re.compile(r'<img src="data:(image/(?:png|jpeg));base64,([A-Za-z0-9+/=]+)"')


def _tables(text: str) -> set[str]:
    return set(re.findall(r'<table data-table="([^"]+)"', text))


def test_report_is_self_contained_and_has_every_part(default_grid):
    path = build_report(default_grid)
    assert path == layout.report_file(default_grid)
    text = path.read_text(encoding="utf-8")
    # Nothing fetched from elsewhere: no external sources, stylesheets, fonts or scripts.
    assert not re.search(r'(src|href)="(?!data:|#)', text)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert "<script src" not in text

    # Every figure of the figures folder is embedded byte for byte.
    pngs = {p.read_bytes() for p in layout.figures_dir(default_grid).glob("*.png")}
    names = {p.name for p in layout.figures_dir(default_grid).glob("*.png")}
    assert names == {
        "ablation-pascal-small-shot1.png",
        "training-meta-pascal-small.png",
        "training-base-pascal-small.png",
        "class-iou-pascal-small-shot1.png",
        "class-iou-pascal-small-shot5.png",
        "seed-spread-pascal-small.png",
        "training-ablation-pascal-small-fold0-shot1.png",
        # fixed_quirks, a K-shot variant, against the full model at 5 shots
        "ablation-pascal-small-shot5.png",
        "training-ablation-pascal-small-fold0-shot5.png",
    }
    embedded = [base64.b64decode(data) for mime, data in IMG.findall(text)]
    assert len(embedded) == text.count("<img ") == len(pngs)
    assert set(embedded) == pngs

    assert _tables(text) == {
        "main", "ablation", "paper", "variant-config", "provenance", "base-provenance"
    }  # fmt: skip
    assert "<dt>preset</dt><dd>default</dd>" in text
    assert "best_val" in text and "Checkpoint selection: every run uses" in text
    assert "not comparable with the table above" in text
    assert "<td>no_distill</td><td>model.distill</td><td>true</td><td>false</td>" in text
    assert "<td>stages_1</td><td>model.stages</td><td>3</td><td>1</td>" in text
    # One training seed, 3 test seeds: every delta of the fixture is within the test-seed noise
    # (see test_report_spread for coloured effects), shown grey and marked, never coloured.
    assert '<span class="noise">-2.0 ± 1.4, within noise</span>' in text
    assert '<span class="noise">+0.8 ± 1.4, within noise</span>' in text
    assert 'class="neg">-2.0' not in text and 'class="pos">+0.8' not in text
    assert "The training-seed spread was not measured in this run" in text
    assert "Not drawn: the report was built without model predictions" in text
    for run in layout.all_runs(default_grid):
        assert f"<td>{run.name}</td>" in text
    assert path.stat().st_size < 5_000_000


def test_report_draws_the_predictions_of_each_fold(project_root, tmp_path):
    params = default_params(project_root, tmp_path, "grid.folds=[0, 1]")
    write_grid(params)
    calls: list[tuple[Run, int]] = []

    def predictions(run: Run, n: int) -> list:
        calls.append((run, n))
        return [episode(run.shot, seed=i) for i in range(2)]

    text = build_report(params, predictions).read_text(encoding="utf-8")
    # One grid per fold at the smallest shot.
    assert calls == [
        (Run("pascal", "small", "full", f, 1, 321), QUALITATIVE_EPISODES) for f in (0, 1)
    ]
    figs = layout.figures_dir(params)
    for f in (0, 1):
        assert (figs / f"qualitative-pascal-small-fold{f}-shot1.png").stat().st_size > 5_000
        assert (figs / f"correlation-pascal-small-fold{f}-shot1.png").stat().st_size > 5_000
    jpegs = [data for mime, data in IMG.findall(text) if mime == "image/jpeg"]
    assert len(jpegs) == 4
    assert all(base64.b64decode(d)[:3] == b"\xff\xd8\xff" for d in jpegs)
    assert "Not drawn" not in text


def test_missing_training_records_are_named_not_fatal(project_root, tmp_path):
    params = default_params(project_root, tmp_path, "grid.shots=[1]")
    write_grid(params, training=False)
    text = build_report(params).read_text(encoding="utf-8")
    assert "No training record" in text
    assert str(layout.meta_dir(params, Run("pascal", "small", "full", 0, 1, 321))) in text
    assert not list(layout.figures_dir(params).glob("training-*.png"))
    assert "and 7 more" in text  # 11 meta runs + 4 base learners, 8 named (LIST_MISSING)


def test_paper_preset_report_compares_with_the_paper(paper_grid):
    text = build_report(paper_grid).read_text(encoding="utf-8")
    assert "<dt>preset</dt><dd>paper</dd>" in text
    assert '<tr class="paper">' in text and '<tr class="diff">' in text
    assert "<td>ours - paper</td>" in text
    assert "All of the paper's numbers and the baselines" in text


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_report_renders_in_headless_chromium(project_root, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/ensure_test_tools.sh installs it)")
    params = default_params(project_root, tmp_path, "grid.folds=[0]", "grid.shots=[1]")
    write_grid(params)
    path = build_report(params, lambda run, n: [episode(1, seed=i) for i in range(2)])
    url = path.resolve().as_uri()

    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    decoded = int(re.search(r'data-images-decoded="(\d+)"', body).group(1))
    assert total == path.read_text().count("<img ") == 8  # 6 plots, 1 grid, 1 correlation
    assert decoded == total
    assert {"main", "ablation", "paper", "variant-config", "provenance"} <= _tables(dom)
    assert "Main results" in dom and "pascal-small-stages_1-fold0-shot1" in dom

    # The page's own check catches an image that does not decode.
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"base64,iVBOR", "base64,AAAAA", path.read_text(), count=1))
    dom = _chromium(tmp_path, "--dump-dom", broken.resolve().as_uri()).stdout
    assert 'data-images-decoded="7"' in dom

    shot = tmp_path / "page.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", url)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1600, 1200, 3)
    # A laid-out page: mostly white background, but text, tables and figures drawn on it.
    dark = (pixels.mean(axis=2) < 128).mean()
    assert 0.005 < dark < 0.5
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


@pytest.mark.parametrize(("dirty", "shown"), [(False, False), ("false", False), (True, True)])
def test_dirty_working_tree_is_flagged_only_when_dirty(default_grid, dirty, shown):
    run = layout.all_runs(default_grid)[0]
    path = layout.metrics_file(default_grid, run)
    record = json.loads(path.read_text())
    record["git"]["git_dirty"] = dirty
    path.write_text(json.dumps(record))
    text = build_report(default_grid).read_text(encoding="utf-8")
    assert ("(dirty)" in text) is shown
