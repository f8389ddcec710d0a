"""The prepared data a job reads: its folders (checked to exist, with the command that makes
them) and the hash that identifies the exact lists a model saw."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hdmnet import commands, layout
from hdmnet.config import Params
from hdmnet.errors import StageError


def dataset_root(params: Params, dataset: str) -> Path:
    root = layout.prepared_dir(params, dataset)
    if not (root / "prepared.json").exists():
        raise StageError(
            f"{root / 'prepared.json'} not found: prepare the data first "
            f"({commands.download(dataset, params)} && {commands.prepare(dataset, params)})"
        )
    return root


def fold_folder(params: Params, dataset: str, fold: int, exclude_novel: bool | None = None) -> Path:
    folder = layout.fold_dir(params, dataset, fold, exclude_novel)
    if not (folder / "summary.json").exists():
        raise StageError(f"fold lists {folder} not found: run {commands.prepare(dataset, params)}")
    return folder


def data_hash(lists_dir: Path) -> str:
    """Hash of the train and val lists in ``lists_dir`` (a fold's, or a data set's full lists):
    identifies the exact data a model saw."""
    digest = hashlib.sha256()
    for name in ("train.txt", "val.txt"):
        digest.update((lists_dir / name).read_bytes())
    return digest.hexdigest()[:16]
