"""The CLI command that makes each artefact, as error messages and records suggest it.

One place, so that a suggestion always matches what the CLI and the workflow run.
"""

from __future__ import annotations

from hdmnet.layout import BaseRun, Run


def train_base(base: BaseRun) -> str:
    return (
        f"hdmnet train-base --dataset {base.dataset} --backbone {base.backbone} "
        f"--fold {base.fold} --seed {base.seed}"
    )


def _cell(run: Run) -> str:
    seed = "" if run.seed is None else f" --seed {run.seed}"
    return (
        f"--dataset {run.dataset} --backbone {run.backbone} --fold {run.fold} "
        f"--shot {run.shot} --variant {run.variant}{seed}"
    )


def train(run: Run) -> str:
    return f"hdmnet train {_cell(run)}"


def evaluate(run: Run) -> str:
    return f"hdmnet evaluate {_cell(run)}"
