"""The stage graph shared by Snakemake and DVC: which parameters each job depends on.

A job's *digest* hashes exactly the parameters that change its result. The Snakefile passes it
as a rule parameter, so Snakemake's ``params`` rerun trigger reruns a job exactly when one of
those parameters changes: a new meta-learning rate retrains every meta-learner but no base
learner; a variant's override retrains only that variant; report settings retrain nothing.
dvc.yaml lists the same keys as ``params`` dependencies (a test keeps the two in step).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.layout import Run
from hdmnet.tracking import PARENT_ENV

# Parameter keys per stage, as dotted paths; "{dataset}" is filled in per job.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    "download": ("data.source", "data.mirror", "data.local_files"),
    "prepare": ("data.source", "data.coco_split", "data.min_pixels"),
    "train_base": (
        "base.{dataset}",
        "model.small_blocks",
        "model.small_width",
        "model.pretrained",
        "train.seed",
        "data.coco_split",
        "data.min_pixels",
    ),
    "train": (
        "meta.{dataset}.epochs",
        "meta.{dataset}.shot_epochs",
        "meta.{dataset}.batch_size",
        "meta.{dataset}.lr",
        "meta.{dataset}.weight_decay",
        "meta.{dataset}.image_size",
        "meta.{dataset}.scale",
        "meta.{dataset}.val_episodes",
        "meta.{dataset}.val_every",
        "meta.distill_weight",
        "meta.base_weight",
        "model.attention",
        "model.stages",
        "model.distill",
        "model.ensemble",
        "model.fix_quirks",
        "model.embed_dim",
        "data.exclude_novel",
        "train.seed",
    ),
    "evaluate": (
        "meta.{dataset}.image_size",
        "meta.{dataset}.test_episodes",
        "meta.selection",
        "eval.seeds",
        "eval.support_annotation",
    ),
}


def lookup(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node[part]
    return node


def stage_keys(stage: str, dataset: str | None = None) -> list[str]:
    return [key.format(dataset=dataset) for key in STAGE_KEYS[stage]]


def digest(params: Params, stage: str, dataset: str | None = None) -> str:
    """Short hash of the parameters one job of ``stage`` depends on."""
    return _hash({key: lookup(params.raw, key) for key in stage_keys(stage, dataset)})


def run_digest(params: Params, run: Run, stage: str) -> str:
    """Digest of a meta-learner job, with its variant's overrides applied.

    A meta-training job depends on its own epoch count only (``epochs_for`` its shot), so
    changing the epochs of one shot count does not retrain the others.
    """
    variant = params.for_variant(run.variant)
    values = {key: lookup(variant.raw, key) for key in stage_keys(stage, run.dataset)}
    if stage == "train":
        del values[f"meta.{run.dataset}.shot_epochs"]
        values[f"meta.{run.dataset}.epochs"] = getattr(variant.meta, run.dataset).epochs_for(
            run.shot
        )
    return _hash(values)


def _hash(values: dict[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def final_targets(params: Params) -> list[str]:
    """What ``rule all`` (and ``dvc repro``) must produce."""
    targets = [str(layout.metrics_file(params, run)) for run in layout.all_runs(params)]
    targets += [str(layout.tables_dir(params) / "main.md"), str(layout.report_file(params))]
    return targets


def run_workflow(params_file: Path, cores: int, profile: str = "workflow/profiles/default") -> int:
    """Run the Snakemake workflow (the main job); returns Snakemake's exit code.

    When there is work to do, the jobs of this invocation share one MLflow parent run.
    A second run with nothing to do only asks Snakemake and returns.
    """
    from hdmnet.config import load_params
    from hdmnet.tracking import end_parent_run, start_parent_run

    env = dict(os.environ)
    # Rules call `hdmnet`: make the interpreter's bin folder (the venv) visible to them.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "snakemake", "--profile", profile, "--cores", str(cores)]
    if Path(params_file).resolve() != Path("params.yaml").resolve():
        command += ["--configfile", str(params_file)]
    dry = subprocess.run(
        [*command, "--dry-run", "--quiet", "rules"], env=env, capture_output=True, text=True
    )
    if dry.returncode != 0:
        sys.stderr.write(dry.stdout + dry.stderr)
        return dry.returncode
    if "Nothing to be done" in dry.stdout + dry.stderr or not dry.stdout.strip():
        return 0
    params = load_params(params_file)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    parent = start_parent_run(params, f"pipeline {params.preset} {stamp}")
    if parent:
        env[PARENT_ENV] = parent
    code = subprocess.call(command, env=env)
    end_parent_run(params, parent, ok=code == 0)
    return code
