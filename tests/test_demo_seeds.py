"""``benchmarks/demo_seeds.py``'s summary: the acceptance checks, the ensemble's effect and the
baseline's spread, on made-up results (the runs themselves take an hour; they are not run here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from tests.report.fixtures_records import expected_miou, write_grid

from hdmnet.layout import Run
from hdmnet.report.collect import StaleRecordError

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import demo_seeds  # noqa: E402

FOLDS, SHOTS = [0, 1], [1, 5]


def result(final: dict, meta: dict, baseline: dict) -> dict:
    return {
        "miou": final,
        "meta_miou": meta,
        "baseline": baseline,
        "train_seconds": 600.0,
        "base_best": {0: (70.0, 40, 40), 1: (72.0, 38, 40)},
        "meta_best": {(0, 1): (5, 5), (1, 1): (3, 5), (0, 5): (4, 4), (1, 5): (2, 4)},
        "wall": None,
        "cores": None,
    }


def test_summary_passes_and_fails_each_check_and_prints_the_ensemble_effect(capsys):
    args = argparse.Namespace(folds=FOLDS, shots=SHOTS)
    # Seed 1: 1-shot 70 / 72, 5-shot 75 / 77 (gain 5), 25 above a 47-50 baseline, ensemble -2.
    first = result(
        {(0, 1): 70.0, (1, 1): 72.0, (0, 5): 75.0, (1, 5): 77.0},
        {(0, 1): 72.0, (1, 1): 74.0, (0, 5): 77.0, (1, 5): 79.0},
        {(0, 1): 45.0, (1, 1): 47.0, (0, 5): 50.0, (1, 5): 50.0},
    )
    runs = {demo_seeds.RunSpec(1, 1): first, demo_seeds.RunSpec(2, 1): first}
    assert demo_seeds.summarise(args, runs) is True
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "1 shot, seed1-t1:  -2.0  -2.0; -2.0" in out

    # Seed 2's fold 0 is 8 points lower at 1 shot: that fold's std fails; its 5 shots gain 1.5
    # (1-shot mean 67, 5-shot mean 68.5), which fails too.
    second = result(
        {(0, 1): 62.0, (1, 1): 72.0, (0, 5): 65.0, (1, 5): 72.0},
        first["meta_miou"],
        first["baseline"],
    )
    runs = {demo_seeds.RunSpec(1, 1): first, demo_seeds.RunSpec(2, 1): second}
    assert demo_seeds.summarise(args, runs) is False
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    fails = [line for line in lines if line.startswith("FAIL")]
    assert "FAIL  1-shot fold 0: std 5.66 <= 3.0" in fails
    assert "FAIL  seed2-t1: 5-shot mean 68.5 >= 1-shot mean + 2.0" in fails
    assert "PASS  1-shot fold 0: HDMNet - baseline min +17.0 >= 15.0" in lines
    assert "1 shot, seed2-t1: -10.0  -2.0; -6.0" in lines


def test_summary_prints_the_baseline_spread_and_each_runs_5_shot_gain(capsys):
    """The README's baseline rows (mean +- std over the 1-thread seeds, per fold and of the fold
    means) and each run's 5-shot minus 1-shot fold mean come from the summary, not by hand."""
    args = argparse.Namespace(folds=FOLDS, shots=SHOTS)
    first = result(
        {(0, 1): 70.0, (1, 1): 72.0, (0, 5): 75.0, (1, 5): 77.0},
        {(0, 1): 72.0, (1, 1): 74.0, (0, 5): 77.0, (1, 5): 79.0},
        {(0, 1): 45.0, (1, 1): 47.0, (0, 5): 50.0, (1, 5): 50.0},
    )
    second = result(
        {(0, 1): 62.0, (1, 1): 72.0, (0, 5): 65.0, (1, 5): 72.0},
        first["meta_miou"],
        {(0, 1): 49.0, (1, 1): 47.0, (0, 5): 50.0, (1, 5): 54.0},
    )
    # A 2-thread run counts in the rows but not in the seed spread.
    threads = result(first["miou"], first["meta_miou"], {k: 90.0 for k in first["baseline"]})
    runs = {
        demo_seeds.RunSpec(1, 1): first,
        demo_seeds.RunSpec(2, 1): second,
        demo_seeds.RunSpec(1, 2): threads,
    }
    demo_seeds.summarise(args, runs)
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    baseline_rows = [line for line in lines if " baseline " in line and "HDMNet" in line]
    # 1 shot: fold 0 (45, 49), fold 1 (47, 47); fold means 46 and 48. 5 shots: fold 1 (50, 54).
    assert baseline_rows[0].startswith("0 baseline") and baseline_rows[0].endswith(
        "baseline 47.0 +- 2.8"
    )
    assert baseline_rows[1].endswith("baseline 47.0 +- 0.0")
    assert "mean baseline   46.0   48.0   90.0  baseline 47.0 +- 1.4" in lines
    assert baseline_rows[3].endswith("baseline 52.0 +- 2.8")
    # Fold means: seed 1 71 -> 76, seed 2 67 -> 68.5, the 2-thread run as seed 1; the meta
    # output (shared) 73 -> 78.
    assert "final: seed1-t1 +5.0, seed2-t1 +1.5, seed1-t2 +5.0" in lines
    assert "meta output: seed1-t1 +5.0, seed2-t1 +5.0, seed1-t2 +5.0" in lines


def _run_folder(tmp_path: Path, spec: demo_seeds.RunSpec) -> tuple[argparse.Namespace, Path]:
    """A run folder holding the records of the main grid (folds 0-1, both shots) made with the
    parameters the script gives that run."""
    args = argparse.Namespace(
        params=ROOT / "params.yaml", overrides=[], folds=FOLDS, shots=SHOTS, out=tmp_path
    )
    folder = tmp_path / spec.name
    params = demo_seeds.run_params(args, spec).with_overrides(
        [
            f"paths.results={folder / 'results'}",
            "ablation.variants=[]",
            "ablation.kshot_variants=[]",
        ]
    )
    write_grid(params)
    return args, folder


def test_results_are_read_only_when_the_runs_parameters_made_them(tmp_path):
    """--summary-only must not print a number the current parameters did not produce: a run
    folder partly made under other parameters (an older params.yaml, another -s) is refused
    with the stale files named, not mixed into the table."""
    spec = demo_seeds.RunSpec(321, 1)
    args, folder = _run_folder(tmp_path, spec)
    read = demo_seeds.read_results(args, spec, folder)
    assert read["miou"][0, 1] == expected_miou(Run("pascal", "small", "full", 0, 1, 321))
    assert sorted(read["miou"]) == [(f, s) for f in FOLDS for s in SHOTS]

    # The same folder read with another meta learning rate: every meta learner and metrics
    # record belongs to other parameters.
    changed = argparse.Namespace(**{**vars(args), "overrides": ["meta.pascal.lr=0.003"]})
    with pytest.raises(StaleRecordError, match=r"fold0-shot1-seed321\.json"):
        demo_seeds.read_results(changed, spec, folder)


def test_a_baseline_scored_under_other_parameters_is_refused(tmp_path):
    """Baselines the script scores itself (``--baseline``) carry what they were scored with; a
    summary under other parameters or another method refuses them instead of using them."""
    spec = demo_seeds.RunSpec(321, 1)
    args = argparse.Namespace(
        params=ROOT / "params.yaml",
        overrides=[],
        folds=FOLDS,
        shots=SHOTS,
        out=tmp_path,
        baseline_method="prototype",
        baseline_layer="layer4",
    )
    params = demo_seeds.run_params(args, spec)
    run = Run("pascal", "small", "full", 0, 1, 321)
    path = tmp_path / "fold0-shot1.json"
    made_with = demo_seeds._baseline_inputs(args, params, run)
    path.write_text(json.dumps({"made_with": made_with, "test": {"miou": 41.0}}))
    assert demo_seeds._scored_baseline(path, args, params, run)["test"]["miou"] == 41.0
    prior = argparse.Namespace(**{**vars(args), "baseline_method": "prior"})
    with pytest.raises(SystemExit, match=r"fold0-shot1\.json: scored under other parameters"):
        demo_seeds._scored_baseline(path, prior, params, run)
    other = demo_seeds.run_params(
        argparse.Namespace(**{**vars(args), "overrides": ["eval.seeds=[1, 2]"]}), spec
    )
    with pytest.raises(SystemExit, match="scored under other parameters"):
        demo_seeds._scored_baseline(path, args, other, run)
