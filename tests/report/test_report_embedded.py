"""Runs on the embedded (generated) data are never shown under a real benchmark's name: table
titles (the LaTeX caption comment too), dataset cells, the CSV, figure titles and the report's
headings say "embedded PASCAL-like" / "embedded COCO-like". The paper's numbers keep their
names, and outputs of runs on the official data name the benchmarks as before."""

from __future__ import annotations

import re

import pandas as pd
from tests.report.fixtures_records import default_params, write_grid

from hdmnet import layout
from hdmnet.report.build import aggregate, build_report

REAL = re.compile(r"PASCAL-5i|COCO-20i")
# The one sentence of an embedded run's outputs that names the benchmarks: to say it is not them.
DISCLAIMER = "not PASCAL-5i or COCO-20i"


def _embedded(project_root, tmp_path):
    params = default_params(
        project_root,
        tmp_path,
        "grid.datasets=[pascal, coco]",
        "grid.folds=[0]",
        "grid.shots=[1]",
        "ablation.folds=[0]",
        "ablation.kshot_variants=[]",
    )
    write_grid(params)
    return params


def test_every_table_of_embedded_runs_names_the_embedded_data(project_root, tmp_path):
    params = _embedded(project_root, tmp_path)
    aggregate(params)
    out = layout.tables_dir(params)
    text = {p.name: p.read_text() for p in out.iterdir()}
    both = "the embedded PASCAL-like and embedded COCO-like data"
    assert text["main.md"].startswith(f"### Main results on {both}: mIoU (%) per fold")
    assert text["main.tex"].startswith(f"% Main results on {both}: mIoU (%) per fold")
    ablation = "Ablations on the embedded PASCAL-like data: each variant against the full model"
    assert text["ablation.md"].startswith(f"### {ablation}")
    assert text["ablation.tex"].startswith(f"% {ablation}")
    for name in ("main.md", "main.tex", "ablation.md", "ablation.tex"):
        assert "embedded COCO-like" in text[name] or name.startswith("ablation"), name
        for line in text[name].splitlines():
            assert not REAL.search(line) or DISCLAIMER in line, f"{name}: {line}"
    for name in ("main.csv", "ablation.csv"):
        table = pd.read_csv(out / name)
        names = {"pascal": "embedded PASCAL-like", "coco": "embedded COCO-like"}
        assert list(table["data"]) == [names[d] for d in table["dataset"]], name
        assert not REAL.search(text[name]), name
    # The paper's numbers are for the real data sets and keep their names.
    assert "| HDMNet | PASCAL-5i | ResNet-50 | 1 |" in text["paper.md"]
    assert "data" not in pd.read_csv(out / "paper.csv").columns


def test_report_headings_and_figure_titles_name_the_embedded_data(project_root, tmp_path):
    params = _embedded(project_root, tmp_path)
    text = build_report(params).read_text(encoding="utf-8")
    headings = re.findall(r"<h3>([^<]*)</h3>", text)
    assert "embedded PASCAL-like, small" in headings and "embedded COCO-like, small" in headings
    titles = re.findall(r'<img src="data:[^"]*" alt="([^"]*)"', text)
    assert titles and all("embedded PASCAL-like" in t or "embedded COCO-like" in t for t in titles)
    assert not [h for h in headings + titles if REAL.search(h)]
    assert "<dd>synthetic (embedded PASCAL-like, embedded COCO-like, generated)</dd>" in text


def test_outputs_of_official_runs_name_the_benchmarks(paper_grid):
    aggregate(paper_grid)
    main = (layout.tables_dir(paper_grid) / "main.md").read_text()
    assert main.startswith("### Main results: mIoU (%) per fold, full model")
    assert "| COCO-20i | ResNet-50 | 1 | ours |" in main
    text = build_report(paper_grid).read_text(encoding="utf-8")
    assert "<h3>COCO-20i, ResNet-50</h3>" in text and "<dd>official</dd>" in text
    titles = re.findall(r'<img src="data:[^"]*" alt="([^"]*)"', text)
    assert titles and all("COCO-20i" in t for t in titles)
