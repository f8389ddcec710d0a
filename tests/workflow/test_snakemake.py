"""The Snakemake graph: lint and format, the jobs of both presets, and the rerun triggers.

Every test runs Snakemake on a copy of the workflow files in a temporary folder, so nothing is
written into the checkout. The rerun tests build a complete, up-to-date tree without training
anything: empty output files, then ``snakemake --touch --forceall`` records their metadata
(parameter digests included), exactly as after a real run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# As in workflow/profiles/default: rerun when inputs or the parameters a job depends on change.
TRIGGERS = ("--rerun-triggers", "mtime", "params", "input", "code")
VARIANTS = [
    "no_distill",
    "dot_attention",
    "stages_1",
    "stages_2",
    "no_ensemble",
    "no_exclusion",
    "fixed_quirks",
]


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: frozenset[tuple[str, str]]
    outputs: frozenset[str]
    shell: str

    def get(self, key: str) -> str:
        return dict(self.wildcards)[key]


def workflow_copy(dest: Path) -> Path:
    """The workflow files (symlinks resolved) and params.yaml in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("workflow", "presets"):
        shutil.copytree(ROOT / name, dest / name, symlinks=False)
    return dest


def snakemake(cwd: Path, *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", *args, "--cores", "1"]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    text = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{text}"
    return text


def dry_run(cwd: Path, *args: str) -> list[Job]:
    """The jobs ``snakemake -n`` would run (``rule all`` left out)."""
    text = snakemake(cwd, "--dry-run", "--printshellcmds", *args)
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        if rule == "all":
            continue
        outputs = re.search(r"^\s+output: (.*)$", block, re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        pairs = wildcards.group(1).split(", ") if wildcards else []
        jobs.append(
            Job(
                rule,
                frozenset(tuple(pair.split("=", 1)) for pair in pairs),
                frozenset(outputs.group(1).split(", ")) if outputs else frozenset(),
                shell.group(1) if shell else "",
            )
        )
    return jobs


def default_sizes() -> dict[str, int]:
    """Job counts of the default preset, by hand from params.yaml: main grid, ablation, base."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    grid, ablation = raw["grid"], raw["ablation"]
    main = len(grid["datasets"]) * len(grid["backbones"]) * len(grid["folds"]) * len(grid["shots"])
    cells = len(ablation["datasets"]) * len(ablation["backbones"]) * len(ablation["folds"])
    settings = len(ablation["variants"]) * len(ablation["shots"])
    settings += len(ablation["kshot_variants"]) * len(ablation["kshot_shots"])
    base = len(grid["datasets"]) * len(grid["backbones"]) * len(grid["folds"])
    return {
        "datasets": len(grid["datasets"]),
        "main": main,
        "cells": cells * len(ablation["shots"]),  # ablation runs of a 1-shot variant
        "variants": cells * settings,
        "base": base,
    }


# Snakemake runs are mostly start-up and waiting: run independent ones side by side.
POOL = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))


def complete_tree(root: Path) -> tuple[Path, list[Job]]:
    """A workflow copy whose every output exists and is recorded as made by its job; also the
    jobs of the default preset on an empty tree."""
    workflow_copy(root)
    jobs = dry_run(root)
    for job in jobs:
        for output in job.outputs:
            path = root / output
            if job.rule == "report" and output.endswith("figures"):
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    # --forceall: touch every job, so that each records its metadata (parameter digest).
    snakemake(root, "--touch", "--forceall")
    return root, jobs


@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """Lint, the paper preset's dry run and the default preset's complete tree, all at once."""
    tmp = tmp_path_factory.mktemp("snakemake")
    return {
        "tree": POOL.submit(complete_tree, tmp / "tree"),
        "paper": POOL.submit(
            dry_run, workflow_copy(tmp / "paper"), "--configfile", "presets/paper.yaml"
        ),
        "lint": POOL.submit(snakemake, workflow_copy(tmp / "lint"), "--lint"),
    }


@pytest.fixture(scope="module")
def default_jobs(background):
    return background["tree"].result()[1]


@pytest.fixture(scope="module")
def paper_jobs(background):
    return background["paper"].result()


# --- lint and format --------------------------------------------------------------------------


def test_snakemake_lint_passes(background):
    assert "in a good condition" in background["lint"].result()


def test_snakefmt_check_passes():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    command = [sys.executable, "-m", "snakefmt", "--check", *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the jobs of each preset ------------------------------------------------------------------


def test_paper_preset_lists_the_full_grid(paper_jobs):
    counts = Counter(job.rule for job in paper_jobs)
    # 2 datasets x 2 backbones x 4 folds x 2 shots of the full model, plus 7 variants on COCO,
    # ResNet-50, 4 folds, 1 shot; one base learner per dataset, backbone and fold.
    assert counts == {
        "download": 2,
        "prepare": 2,
        "train_base": 16,
        "train": 32 + 28,
        "evaluate": 32 + 28,
        "aggregate": 1,
        "report": 1,
    }
    full = {
        (j.get("dataset"), j.get("backbone"), j.get("fold"), j.get("shot"))
        for j in paper_jobs
        if j.rule == "train" and j.get("variant") == "full"
    }
    assert full == set(product(["pascal", "coco"], ["resnet50", "vgg16"], "0123", "15"))
    ablation = {
        (j.get("variant"), j.get("dataset"), j.get("backbone"), j.get("fold"), j.get("shot"))
        for j in paper_jobs
        if j.rule == "train" and j.get("variant") != "full"
    }
    # fixed_quirks acts only with several supports: it runs at 5 shots, the others at 1.
    one_shot = [v for v in VARIANTS if v != "fixed_quirks"]
    assert ablation == set(product(one_shot, ["coco"], ["resnet50"], "0123", "1")) | set(
        product(["fixed_quirks"], ["coco"], ["resnet50"], "0123", "5")
    )
    base = {
        (j.get("dataset"), j.get("backbone"), j.get("fold"))
        for j in paper_jobs
        if j.rule == "train_base"
    }
    assert base == set(product(["pascal", "coco"], ["resnet50", "vgg16"], "0123"))
    evaluated = {j.wildcards for j in paper_jobs if j.rule == "evaluate"}
    assert evaluated == {j.wildcards for j in paper_jobs if j.rule == "train"}
    # The official archives need no generator.
    assert not any(j.rule == "synth" for j in paper_jobs)


def test_default_preset_jobs(default_jobs):
    n = default_sizes()
    counts = Counter(job.rule for job in default_jobs)
    assert counts == {
        "synth": 1,
        "download": n["datasets"],
        "prepare": n["datasets"],
        "train_base": n["base"],
        "train": n["main"] + n["variants"],
        "evaluate": n["main"] + n["variants"],
        "aggregate": 1,
        "report": 1,
    }


def test_every_job_calls_the_cli_with_its_wildcards(default_jobs):
    for job in default_jobs:
        assert job.shell.startswith("hdmnet "), job
        assert '--params "$HDMNET_RESOLVED_PARAMS"' in job.shell
        for key, value in job.wildcards:
            assert f"{value}" in job.shell, (job.rule, key, job.shell)


# --- rerun triggers ---------------------------------------------------------------------------


def set_key(params: dict, dotted: str, value) -> None:
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


# Parameter edits of the default preset (values no preset uses, so each is a real change).
EDITS: dict[str, dict[str, object]] = {
    "variant": {"variants.stages_1": {"model.stages": 2}},
    "meta": {"meta.pascal.lr": 0.00097},
    "shot_epochs": {"meta.pascal.shot_epochs": {5: 97}},
    "base": {"base.pascal.epochs": 97},
    "evaluation": {"meta.pascal.test_episodes": 13},
    # Settings that change no result: feature-cache budget, MLflow experiment, loader workers,
    # threads, GPUs, data workers, where the archives come from.
    "no_result": {
        "eval.cache_mb": 7,
        "tracking.experiment": "elsewhere",
        "train.workers": 3,
        "train.threads": 2,
        "train.gpus": 0,
        "data.workers": 1,
        "data.mirror": "https://mirror.example.org/hdmnet",
    },
}


@pytest.fixture(scope="module")
def reruns(background) -> dict[str, list[Job]]:
    """What a dry run lists after each edit of EDITS, each on its own copy of the tree."""
    tree = background["tree"].result()[0]

    def run(name: str) -> list[Job]:
        root = tree.parent / name
        shutil.copytree(tree, root, symlinks=True)
        params = yaml.safe_load((root / "params.yaml").read_text())
        for key, value in EDITS.get(name, {}).items():
            set_key(params, key, value)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return dry_run(root, *TRIGGERS)

    futures = {name: POOL.submit(run, name) for name in EDITS}
    return {name: future.result() for name, future in futures.items()}


def rules(jobs: list[Job]) -> Counter:
    return Counter(job.rule for job in jobs)


def test_variant_change_reruns_only_that_variant(reruns):
    jobs = reruns["variant"]
    cells = default_sizes()["cells"]
    assert rules(jobs) == {"train": cells, "evaluate": cells, "aggregate": 1, "report": 1}
    assert {j.get("variant") for j in jobs if j.rule in ("train", "evaluate")} == {"stages_1"}


def test_meta_change_retrains_every_meta_learner_but_no_base_learner(reruns):
    runs = default_sizes()["main"] + default_sizes()["variants"]
    assert rules(reruns["meta"]) == {"train": runs, "evaluate": runs, "aggregate": 1, "report": 1}


def test_epochs_of_one_shot_count_retrain_only_its_jobs(reruns):
    jobs = reruns["shot_epochs"]
    raw, n = yaml.safe_load((ROOT / "params.yaml").read_text()), default_sizes()
    grid, ablation = raw["grid"], raw["ablation"]
    cells = n["cells"] // len(ablation["shots"])  # ablation datasets x backbones x folds
    five_shot = n["main"] // len(grid["shots"]) * (5 in grid["shots"])
    five_shot += cells * len(ablation["variants"]) * (5 in ablation["shots"])
    five_shot += cells * len(ablation["kshot_variants"]) * (5 in ablation["kshot_shots"])
    assert rules(jobs) == {"train": five_shot, "evaluate": five_shot, "aggregate": 1, "report": 1}
    assert {j.get("shot") for j in jobs if j.rule in ("train", "evaluate")} == {"5"}


def test_base_change_retrains_base_and_meta_learners(reruns):
    n = default_sizes()
    assert rules(reruns["base"]) == {
        "train_base": n["base"],
        "train": n["main"] + n["variants"],
        "evaluate": n["main"] + n["variants"],
        "aggregate": 1,
        "report": 1,
    }


def test_evaluation_change_reevaluates_without_training(reruns):
    runs = default_sizes()["main"] + default_sizes()["variants"]
    assert rules(reruns["evaluation"]) == {"evaluate": runs, "aggregate": 1, "report": 1}


def test_settings_that_change_no_result_rerun_nothing(reruns):
    # Also shows that the touched tree is complete and up to date.
    assert reruns["no_result"] == []


def test_config_set_takes_the_dotted_overrides_of_the_cli(background, reruns):
    """Snakemake's --config accepts no dotted keys; --config set=KEY=VALUE (or a YAML list)
    applies them like `hdmnet -s`, and a bad key names itself."""
    tree = background["tree"].result()[0]
    one = dry_run(tree, *TRIGGERS, "--config", "set=meta.pascal.lr=0.00097")
    assert rules(one) == rules(reruns["meta"])  # the same as editing params.yaml
    two = dry_run(tree, *TRIGGERS, "--config", 'set=[meta.pascal.lr=0.00097, "eval.seeds=[1]"]')
    assert {j.rule for j in two} == {"train", "evaluate", "aggregate", "report"}
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "1"]
    done = subprocess.run(
        [*command, "--config", "set=meta.pascal.epochz=3"], cwd=tree, capture_output=True, text=True
    )
    assert done.returncode != 0 and "unknown key 'meta.pascal.epochz'" in done.stdout + done.stderr
