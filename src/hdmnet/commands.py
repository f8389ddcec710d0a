"""The CLI command that makes each artefact, as error messages and records suggest it.

One place, so that a suggestion always matches what the CLI and the workflow run, with the
parameter files and overrides the current command was given (``Params.origin``): pasting it
runs with the same parameters.
"""

from __future__ import annotations

import shlex

from hdmnet.config import Params
from hdmnet.layout import BaseRun, Run


def _command(stage: str, params: Params, cell: str) -> str:
    origin = " ".join(shlex.quote(arg) for arg in params.origin)
    return " ".join(part for part in (f"hdmnet {stage}", origin, cell) if part)


def download(dataset: str, params: Params) -> str:
    return _command("download", params, f"--dataset {dataset}")


def prepare(dataset: str, params: Params) -> str:
    return _command("prepare", params, dataset)


def synth(params: Params) -> str:
    return _command("synth", params, "")


def train_base(base: BaseRun, params: Params) -> str:
    cell = f"--dataset {base.dataset} --backbone {base.backbone} --fold {base.fold}"
    return _command("train-base", params, f"{cell} --seed {base.seed}")


def _cell(run: Run) -> str:
    seed = "" if run.seed is None else f" --seed {run.seed}"
    return (
        f"--dataset {run.dataset} --backbone {run.backbone} --fold {run.fold} "
        f"--shot {run.shot} --variant {run.variant}{seed}"
    )


def train(run: Run, params: Params) -> str:
    return _command("train", params, _cell(run))


def evaluate(run: Run, params: Params) -> str:
    return _command("evaluate", params, _cell(run))
