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

Records are checked once, on read, against ``SCHEMAS``: the keys that tables, figures and the
report read without a default, with their types. A record that lacks one or holds the wrong type
is a ``RecordError`` naming the file and the key, not a KeyError deep in the report code. Other
keys are free, so records can grow without touching this list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hdmnet.errors import HdmnetError
from hdmnet.fileio import write_json

METRICS_KIND = "hdmnet-metrics"
TRAIN_KIND = "hdmnet-train"
BASE_KIND = "hdmnet-train-base"
VERSION = 1
OUTPUTS = ("final", "meta", "base")

NUMBER = (int, float)
# Dotted key -> the type(s) its value must have; "*" is every item of a list (after the list).
Schema = dict[str, type | tuple[type, ...]]
_TRAINING: Schema = {
    "dataset": str,
    "backbone": str,
    "fold": int,
    "epochs": list,
    "epochs.*.epoch": int,
    "checkpoints.best.sha256": str,
}
SCHEMAS: dict[str, Schema] = {
    METRICS_KIND: {
        "dataset": str,
        "backbone": str,
        "variant": str,
        "fold": int,
        "shot": int,
        "miou": NUMBER,
        "fbiou": NUMBER,
        "outputs.final.miou": NUMBER,
        "outputs.final.fbiou": NUMBER,
        "outputs.final.per_seed": list,
        "outputs.final.per_seed.*.miou": NUMBER,
        "outputs.final.class_iou": dict,
        "classes": list,
        "classes.*": int,
        "seeds": list,
        "episodes_per_seed": int,
        "checkpoint.sha256": str,
        "checkpoint.selection": str,
        "config": dict,
    },
    TRAIN_KIND: _TRAINING,
    BASE_KIND: _TRAINING,
}
_TYPE_NAMES = {dict: "object", list: "list", str: "str", int: "int", float: "float", bool: "bool"}


class RecordError(HdmnetError, ValueError):
    """A record file is missing or unreadable, or a required key is absent or of the wrong type
    (the message names the file and the key)."""


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
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a JSON object but {_type_name(record)}")
    if record.get("kind") != kind:
        raise RecordError(f"{path}: expected a {kind!r} record, found {record.get('kind')!r}")
    for key, expected in SCHEMAS.get(kind, {}).items():
        _check(path, record, [], key.split("."), expected)
    return record


def read_metrics(path: str | Path) -> dict[str, Any]:
    return read_record(path, METRICS_KIND)


def _check(
    path: Path, value: Any, seen: list[str], rest: list[str], expected: type | tuple[type, ...]
) -> None:
    """Walk ``rest`` (dotted key parts) down from ``value``; raise naming the first bad key."""
    if not rest:
        # JSON true/false load as bool, a subclass of int: a flag is not a count or a score.
        if isinstance(value, bool) or not isinstance(value, expected):
            names = " or ".join(_TYPE_NAMES[t] for t in _as_tuple(expected))
            raise RecordError(
                f"{path}: key {'.'.join(seen)} is {_type_name(value)}, expected {names}"
            )
        return
    head, *tail = rest
    if head == "*":
        for index, item in enumerate(value):
            _check(path, item, [*seen, str(index)], tail, expected)
        return
    if not isinstance(value, dict):
        raise RecordError(f"{path}: key {'.'.join(seen)} is {_type_name(value)}, expected object")
    if head not in value:
        raise RecordError(f"{path}: key {'.'.join([*seen, head])} missing")
    _check(path, value[head], [*seen, head], tail, expected)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_name(value: Any) -> str:
    """The JSON-ish name of what a record holds: null, bool, int, float, str, list, object."""
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)
