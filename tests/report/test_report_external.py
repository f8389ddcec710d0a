"""Records of external checkpoints (``hdmnet evaluate --checkpoint FILE --name NAME``) in the
tables, provenance.json and the HTML report: a row of their own, marked external, after the
pipeline's rows of the same setting, which stay as they were; a record the current evaluation
settings did not produce, or of a setting outside the grid, is left out with a note."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from tests.report.fixtures_records import metrics_record

from hdmnet import identity, layout
from hdmnet.config import Params
from hdmnet.layout import Run
from hdmnet.records import write_record
from hdmnet.report.build import aggregate, build_report, render_main_markdown

SHA256 = "0ff1c1a1" * 8
LABEL = "HDMNet (external: official)"


def write_external(params: Params, run: Run, name: str = "official", made_with=None) -> None:
    """The record ``hdmnet evaluate --checkpoint official.pth --name official`` writes for
    ``run``, mIoU 60 + fold; ``made_with``: the parameters its identity was computed under."""
    record = metrics_record(run)
    record |= {"miou": 60.0 + run.fold, "fbiou": 80.0 + run.fold}
    record["checkpoint"] |= {"path": "/ckpt/official.pth", "sha256": SHA256, "selection": "x"}
    record["external"] = {"name": name, "path": "/ckpt/official.pth", "sha256": SHA256}
    job = identity.external_evaluation(made_with or params, run, SHA256)
    write_record(layout.external_metrics_file(params, name, run), {**record, "config_digest": job})


def _tables(params: Params) -> dict[str, str]:
    out = layout.tables_dir(params)
    aggregate(params)
    return {p.name: p.read_text() for p in out.iterdir()}


def _external(fold: int, shot: int = 1) -> Run:
    return Run("pascal", "small", "full", fold, shot, None)


def test_an_external_checkpoint_gets_a_marked_row_and_the_pipeline_rows_stay(default_grid):
    before = _tables(default_grid)
    for fold in (0, 1):
        write_external(default_grid, _external(fold))
    after = _tables(default_grid)
    out = layout.tables_dir(default_grid)

    main = pd.read_csv(out / "main.csv")
    assert list(main.columns[:3]) == ["data", "method", "dataset"]
    assert list(main["method"]) == ["HDMNet", LABEL, "HDMNet"]  # after the 1-shot setting
    ours = main[main["method"] == "HDMNet"].drop(columns="method").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, pd.read_csv(pd.io.common.StringIO(before["main.csv"])))
    external = main[main["method"] == LABEL].iloc[0]
    assert (external["shot"], external["fold0"], external["fold1"]) == (1, 60.0, 61.0)
    assert pd.isna(external["fold2"]) and external["mean"] == pytest.approx(60.5)
    assert external["fbiou"] == pytest.approx(80.5)

    md = after["main.md"]
    assert (
        f"| {LABEL} | embedded PASCAL-like | small | 1 | 60.0 | 61.0 | - | - | 60.5 | 80.5 |" in md
    )
    assert f"- {LABEL}: a checkpoint made outside this pipeline" in md
    assert "its records are in results/external/official/." in md
    assert LABEL in after["main.tex"] and "external" in after["main.tex"]
    assert render_main_markdown(default_grid) == md
    # The other tables do not change.
    for name in ("ablation.md", "ablation.csv", "paper.md", "paper.tex"):
        assert after[name] == before[name], name

    prov = json.loads(after["provenance.json"])
    name = "external:official/pascal-small-full-fold1-shot1"
    entry = prov["runs"][name]
    assert entry["external"] == "official" and entry["miou"] == 61.0
    assert entry["record"] == str(
        layout.external_metrics_file(default_grid, "official", _external(1))
    )
    assert entry["checkpoint_sha256"] == SHA256
    cell = next(
        c for c in prov["cells"] if c["row"].get("method") == LABEL and c["column"] == "mean"
    )
    assert cell["value"] == pytest.approx(60.5) and sorted(cell["runs"]) == [
        "external:official/pascal-small-full-fold0-shot1",
        name,
    ]
    assert prov["selection"] == json.loads(before["provenance.json"])["selection"]
    assert "external_left_out" not in prov


def test_a_stale_external_record_is_left_out_with_a_note(default_grid):
    before = _tables(default_grid)
    other = default_grid.with_overrides(["eval.seeds=[1, 2]"])
    write_external(default_grid, _external(0), made_with=other)
    after = _tables(default_grid)
    path = layout.external_metrics_file(default_grid, "official", _external(0))

    (note,) = [line for line in after["main.md"].splitlines() if str(path) in line]
    assert note.startswith(f"- {path} left out: made with other evaluation settings")
    assert "external:" not in after["main.md"] and "Method" not in after["main.md"]
    # The table is the one without the record, its note added.
    assert after["main.md"] == before["main.md"] + note + "\n"
    assert after["main.csv"] == before["main.csv"]
    prov = json.loads(after["provenance.json"])
    assert not [name for name in prov["runs"] if name.startswith("external:")]
    assert prov["external_left_out"] == [note.removeprefix("- ")]


def test_an_external_record_outside_the_grid_is_left_out_with_a_note(project_root, tmp_path):
    from tests.report.fixtures_records import default_params, write_grid

    params = default_params(project_root, tmp_path, "grid.shots=[1]")
    write_grid(params, training=False)
    write_external(params, _external(0, shot=5))
    md = _tables(params)["main.md"]
    path = layout.external_metrics_file(params, "official", _external(0, shot=5))
    assert f"{path} left out: its dataset, backbone or shot is not in the grid." in md
    assert LABEL not in md


def test_the_report_marks_external_rows_and_lists_their_records(default_grid):
    write_external(default_grid, _external(0))
    text = build_report(default_grid).read_text(encoding="utf-8")
    assert '<tr class="external">' in text and f"<td>{LABEL}</td>" in text
    assert "<td>external:official/pascal-small-full-fold0-shot1</td>" in text
    assert "+ 1 of external checkpoints" in text
