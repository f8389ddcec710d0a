"""The main job end to end, small: `hdmnet demo` runs the whole Snakemake workflow (generate,
download, prepare, base learner, HDMNet, evaluation, tables, report) on a tiny grid, every job
lands in MLflow under one parent run, and a second run has nothing to do. A second training seed
added to a copy of that run trains and evaluates everything once more for the new seed only, and
the tables show mean ± std over the two. The run happens in a DVC project and git repository, as
in a fresh clone: afterwards DVC agrees (`dvc status` clean, `dvc repro` and `hdmnet demo` with
nothing to do) and an experiment runs only the stages its change affects."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tests.workflow.test_snakemake import workflow_copy

# One fold, one shot, one ablation variant, tiny schedules: the graph and every stage's code
# run for real; the numbers are not the point here (tests/train checks learning).
TINY = {
    "synth": {"scale": 0.3},
    "grid": {"folds": [0], "shots": [1]},
    "ablation": {"variants": ["no_distill"], "kshot_variants": [], "folds": [0], "shots": [1]},
    "base": {"pascal": {"epochs": 1, "crop": 65, "val_size": 65, "scale": [0.4, 0.6]}},
    "meta": {"pascal": {"epochs": 1, "image_size": 65, "val_episodes": 8, "test_episodes": 12}},
    "eval": {"seeds": [510, 365]},
}


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


ROOT = Path(__file__).resolve().parents[2]
# What a clone has besides the workflow for DVC: its stage graph, settings and ignore files.
DVC_FILES = ("dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore")


def git(tree: Path, *args: str) -> None:
    identity = ("-c", "user.name=test", "-c", "user.email=test@example.com")
    subprocess.run(["git", *identity, *args], cwd=tree, check=True, capture_output=True)


def run_tiny_demo(
    folder: Path,
    *args: str,
    env: dict[str, str] | None = None,
    extra: dict | None = None,
    dvc: bool = False,
) -> tuple[Path, subprocess.CompletedProcess]:
    """`hdmnet demo ARGS` on a copy of the workflow whose params.yaml is the TINY grid (with
    ``extra`` merged over it); ``dvc``: with the DVC files too, committed to a new git
    repository, as a fresh clone has them."""
    tree = workflow_copy(folder)
    params = merge(yaml.safe_load((tree / "params.yaml").read_text()), copy.deepcopy(TINY))
    params = merge(params, copy.deepcopy(extra or {}))
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if dvc:
        (tree / ".dvc").mkdir()
        for name in DVC_FILES:
            shutil.copy(ROOT / name, tree / name)
        git(tree, "init", "-q")
        git(tree, "add", "-A")
        git(tree, "commit", "-q", "-m", "clone")
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HDMNET_PARENT_RUN_ID", None)
    done = subprocess.run(
        [sys.executable, "-m", "hdmnet.cli", "demo", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return tree, done


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    return run_tiny_demo(tmp_path_factory.mktemp("pipeline"), "--cores", "2", dvc=True)


def test_demo_runs_every_stage_and_prints_the_table(pipeline):
    tree, done = pipeline
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tree / "results"
    for variant in ("full", "no_distill"):
        record = json.loads(
            (results / f"metrics/pascal/small/{variant}/fold0-shot1-seed321.json").read_text()
        )
        assert record["seeds"] == [510, 365] and record["episodes_per_seed"] == 12
        assert 0.0 <= record["miou"] <= 100.0
    for name in ("main.md", "main.csv", "main.tex", "ablation.md", "provenance.json"):
        assert (results / "tables" / name).stat().st_size > 0
    html = (results / "report" / "index.html").read_text()
    assert "no_distill" in html and "data:image/png;base64," in html
    assert "| embedded PASCAL-like | small | 1 |" in done.stdout
    assert "Report:" in done.stdout
    assert (tree / "logs" / "train" / "pascal-small-full-fold0-shot1-seed321.log").exists()


def test_jobs_share_one_mlflow_parent_run(pipeline):
    from mlflow.tracking import MlflowClient

    tree, done = pipeline
    assert done.returncode == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tree / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hdmnet")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stages = sorted(r.data.tags["stage"] for r in children)
    assert stages == ["evaluate", "evaluate", "train", "train", "train-base"]


def test_second_run_does_nothing(pipeline):
    tree, first = pipeline
    assert first.returncode == 0
    outputs = sorted((tree / "results").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in outputs}
    done = subprocess.run(
        [sys.executable, "-m", "hdmnet.cli", "demo"],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert "Report:" in done.stdout


def test_a_second_training_seed_runs_every_job_again_and_the_tables_average_the_seeds(
    pipeline, tmp_path
):
    # On a copy (mtimes kept, so Snakemake sees the first run as up to date): the other tests'
    # tree stays as it was, and only the new seed's jobs cost time.
    tree, first = pipeline
    assert first.returncode == 0
    copy = tmp_path / "seeds"
    shutil.copytree(tree, copy, symlinks=True)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["grid"]["train_seeds"] = [321, 322]
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results, logs = copy / "results", copy / "logs"
    variants = ("full", "no_distill")

    def records(seed: int) -> list[Path]:
        base = [results / f"base/pascal/small/fold0/seed{seed}/record.json"]
        meta = [
            results / f"meta/pascal/small/{v}/fold0/shot1/seed{seed}/record.json" for v in variants
        ]
        metrics = [
            results / f"metrics/pascal/small/{v}/fold0-shot1-seed{seed}.json" for v in variants
        ]
        return base + meta + metrics

    before = {p: p.stat().st_mtime_ns for p in records(321)}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HDMNET_PARENT_RUN_ID", None)
    done = subprocess.run(
        [sys.executable, "-m", "hdmnet.cli", "demo", "--cores", "2"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Seed 321's jobs did not run again; every job ran for seed 322, as a training of its own.
    assert {p: p.stat().st_mtime_ns for p in records(321)} == before
    for seed in (321, 322):
        assert all(json.loads(p.read_text())["train_seed"] == seed for p in records(seed))
        assert (logs / f"train_base/pascal-small-fold0-seed{seed}.log").exists()
        for variant in variants:
            for stage in ("train", "evaluate"):
                assert (
                    logs / f"{stage}/pascal-small-{variant}-fold0-shot1-seed{seed}.log"
                ).exists()
    sha = {
        seed: json.loads(records(seed)[1].read_text())["checkpoints"]["best"]["sha256"]
        for seed in (321, 322)
    }
    assert sha[321] != sha[322]

    # The tables: mean ± std over the two training seeds, the CSV with both as numbers.
    runs = [json.loads(p.read_text()) for p in (records(321)[3], records(322)[3])]
    main = pd.read_csv(results / "tables" / "main.csv")
    assert list(main["method"]) == ["HDMNet", "Training-free baseline (prototype)"]
    assert list(main["train_seeds"]) == [2, 2]
    assert main["fold0"].iloc[0] == pytest.approx(statistics.mean(r["miou"] for r in runs))
    assert main["fold0_std"].iloc[0] == pytest.approx(statistics.stdev(r["miou"] for r in runs))
    # The baseline row: the records' own baseline sections, averaged the same way. Only the
    # full model's evaluations score it (the table's row); an ablation variant's does not.
    baselines = [r["baseline"]["miou"] for r in runs]
    assert not any("baseline" in json.loads(records(s)[4].read_text()) for s in (321, 322))
    # (the CSV keeps 4 decimals)
    assert main["fold0"].iloc[1] == pytest.approx(statistics.mean(baselines), abs=1e-3)
    assert main["fold0_std"].iloc[1] == pytest.approx(statistics.stdev(baselines), abs=1e-3)
    summary = json.loads((results / "tables" / "metrics.json").read_text())["main"]
    assert summary["pascal-small-1shot"]["baseline_miou"] == pytest.approx(
        statistics.mean(baselines), abs=0.005
    )
    pm = r"\d+\.\d ± \d+\.\d"
    rows = [line for line in done.stdout.splitlines() if "| embedded PASCAL-like |" in line]
    for row, method in zip(rows, ("HDMNet", r"Training-free baseline \(prototype\)"), strict=True):
        cells = rf"embedded PASCAL-like \| small \| 1 \| {pm} \| - \| - \| - \| {pm} \| {pm}"
        assert re.fullmatch(rf"\| {method} \| {cells} \|", row), row
    ablation = (results / "tables" / "ablation.md").read_text()
    assert re.search(rf"\| no_distill \|.*\| {pm} \([+-]{pm}(, within noise)?\) \|", ablation)
    assert "Mean ± std over 2 training seeds (321, 322)" in ablation
    assert "standard deviation of its 2 per-seed differences" in ablation
    cells = json.loads((results / "tables" / "provenance.json").read_text())["cells"]
    fold0 = next(c for c in cells if c["table"] == "main" and c["column"] == "fold0")
    assert sorted(fold0["runs"]) == [f"pascal-small-full-fold0-shot1-seed{s}" for s in (321, 322)]
    html = (results / "report" / "index.html").read_text()
    assert "321, 322 (tables: mean ± std over them)" in html


# --- DVC after the demo ---------------------------------------------------------------------

STAGES = {
    "train": ["train@pascal-small-0-1-321", "train_variant@no_distill-pascal-small-0-1-321"],
    "evaluate": [
        "evaluate@pascal-small-0-1-321",
        "evaluate_variant@no_distill-pascal-small-0-1-321",
    ],
    "report": ["aggregate", "report"],
}


def command(tree: Path, *args: str, stdout_only: bool = False) -> str:
    """Run a command of the venv in ``tree`` (stages call `hdmnet`), untracked by any outer
    MLflow run; returns its output (stdout and stderr, or stdout only)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HDMNET_PARENT_RUN_ID", None)
    done = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout if stdout_only else done.stdout + done.stderr


def dvc(tree: Path, *args: str) -> str:
    return command(tree, sys.executable, "-m", "dvc", *args)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def files(tree: Path) -> dict[Path, int]:
    found = [p for name in ("data", "results") for p in (tree / name).rglob("*") if p.is_file()]
    return {p: p.stat().st_mtime_ns for p in found}


def test_after_the_demo_dvc_is_clean_and_nothing_reruns(pipeline):
    """On e02a155 `dvc status` listed every stage as changed after the demo (no dvc.lock), and
    `dvc commit -f` gave the outputs new mtimes (copies), so Snakemake then reran the report."""
    tree, done = pipeline
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "results recorded in dvc.lock for DVC (dvc commit, " in done.stdout
    # The outputs are the cache's files (hardlinks, read-only), their mtimes those Snakemake saw.
    table = tree / "results" / "tables" / "main.md"
    assert table.stat().st_nlink == 2 and not stat.S_IMODE(table.stat().st_mode) & 0o222
    before = files(tree)
    assert "Data and pipelines are up to date" in dvc(tree, "status")
    started = time.perf_counter()
    assert ran(dvc(tree, "repro")) == set()
    print(f"no-op dvc repro: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    again = command(tree, sys.executable, "-m", "hdmnet.cli", "demo")
    print(f"no-op hdmnet demo after it: {time.perf_counter() - started:.1f} s")
    assert "results recorded" not in again and "Report:" in again
    assert files(tree) == before

    # `dvc metrics show`: the compact metrics file only (6 numbers for this grid).
    (shown,) = json.loads(dvc(tree, "metrics", "show", "--json")).values()
    assert list(shown["data"]) == ["results/tables/metrics.json"]
    assert shown["data"]["results/tables/metrics.json"]["data"].keys() == {"main", "ablation"}
    header = dvc(tree, "metrics", "show").splitlines()[0].split()
    assert header == [
        "Path",
        *(f"ablation.pascal-small-1shot.no_distill.{k}" for k in ("delta", "miou")),
        *(f"main.pascal-small-1shot.{k}" for k in ("baseline_miou", "fbiou", "meta_miou", "miou")),
    ]


def test_a_dvc_experiment_runs_only_the_stages_its_change_affects(pipeline, tmp_path):
    """On e02a155 `dvc exp run --dry -S meta.pascal.epochs=6` failed ("No such file or
    directory: .../.dvc/tmp/exps/standalone/.../data/synth"); DVC 3.67's dry experiments still
    cannot see the data, so `python -m hdmnet.dvc_params --dry-run -S` tells which stages an
    experiment would run, and `dvc exp run -S` then runs exactly those."""
    tree, first = pipeline
    assert first.returncode == 0
    copy = tmp_path / "exp"  # the other tests' tree stays as the demo left it
    shutil.copytree(tree, copy, symlinks=True)

    def planned(change: str) -> set[str]:
        preview = (sys.executable, "-m", "hdmnet.dvc_params", "--dry-run", "-S", change)
        return set(command(copy, *preview, stdout_only=True).split())

    # A meta-learning change: every meta learner and what follows, no data or base learner.
    assert planned("meta.pascal.epochs=2") == {s for group in STAGES.values() for s in group}
    change = "eval.seeds=[510]"  # an evaluation change: the cheapest to run for real
    assert planned(change) == {*STAGES["evaluate"], *STAGES["report"]}

    started = time.perf_counter()
    out = dvc(copy, "exp", "run", "-S", change)
    print(f"dvc exp run -S {change}: {time.perf_counter() - started:.1f} s")
    assert ran(out) == {*STAGES["evaluate"], *STAGES["report"]}
    record = json.loads(
        (copy / "results/metrics/pascal/small/full/fold0-shot1-seed321.json").read_text()
    )
    assert record["seeds"] == [510]
    shown = json.loads(dvc(copy, "exp", "show", "--json"))
    (exp,) = [r for row in shown for e in (row.get("experiments") or []) for r in e["revs"]]
    assert list(exp["data"]["metrics"]) == ["results/tables/metrics.json"]
