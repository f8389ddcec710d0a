"""The rendered tables and provenance.json of fixed record grids, compared with golden files.

The goldens were rendered by the hand-written renderers before the tables moved to pandas; the
current code must reproduce Markdown, CSV and provenance.json byte for byte and LaTeX up to
whitespace. The scenarios together use every table feature: the paper comparison on and off,
ablation deltas (within noise and not), folds outside the grid, a full model missing on an
ablation fold, a mean that is not compared, mixed checkpoint selection, the COCO split note,
several row groups, the embedded data's names, rows of an external checkpoint beside the
paper's with a record left out, and several training seeds (mean ± std, paired deltas). With one
training seed the main and paper tables are as they were before training seeds were an axis.

Regenerate (only for an intended change of the output) with
``HDMNET_UPDATE_GOLDEN=1 pytest tests/report/test_report_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from tests.report.fixtures_records import metrics_record

from hdmnet import layout
from hdmnet.config import Params, load_params
from hdmnet.layout import Run
from hdmnet.report.build import render_tables
from hdmnet.report.collect import Metrics

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("HDMNET_UPDATE_GOLDEN") == "1"
# scenario -> (parameter file in golden/, overrides, a run whose checkpoint selection is "last").
# The parameter files spell out the grid, so edits of params.yaml leave the goldens alone.
SCENARIOS = {
    # Embedded data: no paper comparison; ablation deltas on fold 0, other folds missing.
    "embedded": ("embedded.yaml", (), None),
    # Folds 1 and 3 not run, the full model missing on ablation fold 1, one run selected "last".
    "partial": (
        "embedded.yaml",
        (
            "grid.folds=[0, 2]",
            "grid.shots=[1]",
            "ablation.folds=[0, 1]",
            "ablation.variants=[stages_1, no_distill]",
        ),
        Run("pascal", "small", "full", 2, 1, 321),
    ),
    # Real data: paper and difference rows, published variant means (one missing).
    "paper": ("official.yaml", (), None),
    # An external checkpoint on folds 0-2 after our, the paper's and the difference rows.
    "paper-external": ("official.yaml", (), None),
    # Three training seeds: mean ± std in every cell, deltas paired by seed, some within noise.
    "seeds": ("embedded.yaml", ("grid.train_seeds=[321, 322, 323]",), None),
    # Two training seeds with the paper's and the difference rows and an external checkpoint
    # (one training, no spread).
    "paper-seeds": ("official.yaml", ("grid.train_seeds=[321, 322]",), None),
    # Two groups, partial folds (means not compared) and a COCO split unlike the paper's.
    "paper-partial": (
        "official.yaml",
        (
            "grid.datasets=[pascal, coco]",
            "grid.folds=[0, 1]",
            "ablation.folds=[0]",
            "ablation.variants=[no_ensemble]",
            "data.coco_split=panet",
        ),
        None,
    ),
}
# scenario -> folds of the external checkpoint "official" (COCO, ResNet-50, 1 shot, mIoU 45 +
# fold) and the notes on external records left out, as ``collect.load_external`` gives them.
EXTERNAL = {
    "paper-seeds": ([0, 1, 2], []),
    "paper-external": (
        [0, 1, 2],
        [
            "/results/external/old/coco/resnet50/full/fold0-shot1.json left out: made with "
            "other evaluation settings than the current ones (evaluate the checkpoint again)"
        ],
    ),
}
FILES = [f"{n}.{e}" for n in ("main", "ablation", "paper") for e in ("md", "csv", "tex")]


def _latex_tokens(text: str) -> str:
    """LaTeX with whitespace runs made one space and none beside a column or row separator."""
    return re.sub(r" ?(&|\\\\) ?", r"\1", re.sub(r"\s+", " ", text)).strip()


def _metrics(params: Params, last_selected: Run | None) -> dict[Run, Metrics]:
    """The fixture's record of every run, as ``load_metrics`` returns them from their files
    (kept in memory: the goldens test the tables, not how records are found and checked)."""
    return {
        run: Metrics(
            run,
            layout.metrics_file(params, run),
            metrics_record(run, "last" if run == last_selected else "best_val"),
        )
        for run in layout.all_runs(params)
    }


def _external(params: Params, folds: list[int]) -> list[Metrics]:
    runs = [Run("coco", "resnet50", "full", fold, 1, None) for fold in folds]
    return [
        Metrics(
            run,
            layout.external_metrics_file(params, "official", run),
            {**metrics_record(run), "miou": 45.0 + run.fold},
            external="official",
        )
        for run in runs
    ]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_tables_match_the_golden_files(scenario):
    file, overrides, last_selected = SCENARIOS[scenario]
    params = load_params(GOLDEN / file, ["paths.results=/results", *overrides])
    folds, left_out = EXTERNAL.get(scenario, ([], []))
    external = _external(params, folds)
    rendered = render_tables(params, _metrics(params, last_selected), external, left_out)
    assert set(rendered) == {*FILES, "provenance.json"}
    # Record paths lie in the results folder: stored with a placeholder.
    rendered["provenance.json"] = rendered["provenance.json"].replace('"/results/', '"<results>/')
    folder = GOLDEN / scenario
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (folder / name).write_text(text, encoding="utf-8")
    for name, text in rendered.items():
        golden = (folder / name).read_text(encoding="utf-8")
        if name.endswith(".tex"):
            assert _latex_tokens(text) == _latex_tokens(golden), f"{scenario}/{name}"
        else:
            assert text == golden, f"{scenario}/{name} differs from the golden file"
