"""Results as data: the metrics record of one evaluation and the record of one training run.

Tables, figures and reports are rendered from these files only, so every number in them can be
traced to the configuration, commit, checkpoint hash, seeds, episodes and selection mode that
produced it. IoU values are percentages (0-100), as in the paper's tables.

Metrics record (``results/metrics/<dataset>/<backbone>/<variant>/fold<f>-shot<k>.json``)::

    {
      "kind": "hdmnet-metrics", "version": 1,
      "dataset": "pascal", "backbone": "small", "variant": "full", "fold": 0, "shot": 1,
      "preset": "default", "split": "pascal5i",
      "miou": 71.2, "fbiou": 80.3,                 # the final output (the paper's numbers)
      "outputs": {                                  # final (ensembled), meta and base outputs
        "final": {"miou": .., "miou_std": .., "fbiou": .., "fbiou_std": ..,
                  "per_seed": [{"seed": 510, "miou": .., "fbiou": ..}, ...],
                  "class_iou": {"16": .., ...}},    # per novel class, mean over seeds
        "meta": {...}, "base": {...}
      },
      "classes": [16, 17, 18, 19, 20], "class_names": ["pottedplant", ...],
      "seeds": [510, ...], "episodes_per_seed": 1000, "annotation": "mask",
      "checkpoint": {"path": .., "sha256": .., "selection": "best_val", "epoch": 12},
      "config": {...}, "config_digest": "..", "data_hash": "..",
      "git": {"git_commit": .., "git_dirty": ..}, "hardware": {"hostname": .., "device": ..},
      "timing": {"seconds": .., "ms_per_episode": .., "cache": {...}},
      "mlflow_run_id": ".." | null
    }

Training record (``record.json`` beside the checkpoints of a base or meta learner)::

    {
      "kind": "hdmnet-train" | "hdmnet-train-base", "version": 1,
      "dataset", "backbone", "fold", ("shot", "variant" for meta),
      "epochs": [{"epoch": 0, "loss": .., "lr": .., "val_miou": .., "seconds": ..}, ...],
      "best_epoch": 3, "best_val_miou": 64.1, "selection": "best_val",
      "global_batch": 8, "world_size": 1, "per_process_batch": 8,
      "checkpoints": {"best": {"path", "sha256"}, "last": {"path", "sha256"}},
      "base_checkpoint": {"path", "sha256"} (meta only),
      "config", "config_digest", "git", "hardware", "seconds", "mlflow_run_id"
    }
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hdmnet.fileio import write_json

METRICS_KIND = "hdmnet-metrics"
TRAIN_KIND = "hdmnet-train"
BASE_KIND = "hdmnet-train-base"
VERSION = 1
OUTPUTS = ("final", "meta", "base")

METRICS_KEYS = (
    "dataset",
    "backbone",
    "variant",
    "fold",
    "shot",
    "miou",
    "fbiou",
    "outputs",
    "classes",
    "seeds",
    "episodes_per_seed",
    "checkpoint",
    "config",
)


class RecordError(ValueError):
    """A record file is missing, unreadable or lacks a required key (the message names it)."""


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    write_json(path, {**record, "version": VERSION})


def read_record(path: str | Path, kind: str) -> dict[str, Any]:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: record not found") from None
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: not valid JSON ({error})") from None
    if record.get("kind") != kind:
        raise RecordError(f"{path}: expected a {kind!r} record, found {record.get('kind')!r}")
    if kind == METRICS_KIND:
        missing = [key for key in METRICS_KEYS if key not in record]
        if missing:
            raise RecordError(f"{path}: metrics record lacks {missing}")
    return record


def read_metrics(path: str | Path) -> dict[str, Any]:
    return read_record(path, METRICS_KIND)
