"""Records are checked once on read: a broken one is named by its file and key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from tests.report.fixtures_records import metrics_record, train_record

from hdmnet.layout import Run
from hdmnet.records import (
    BASE_KIND,
    METRICS_KIND,
    TRAIN_KIND,
    RecordError,
    read_metrics,
    read_record,
    write_record,
)

RUN = Run("pascal", "small", "full", 1, 1, 321)
META_IDENT = {"dataset": "pascal", "backbone": "small", "fold": 1, "shot": 1, "variant": "full"}


def written(tmp_path: Path, record: dict[str, Any]) -> Path:
    path = tmp_path / "fold1-shot1.json"
    write_record(path, record)
    return path


def _parent(record: dict[str, Any], dotted: str) -> tuple[Any, Any]:
    """The container holding ``dotted`` and the key (or list index) of it there."""
    keys: list[Any] = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    node = record
    for key in keys[:-1]:
        node = node[key]
    return node, keys[-1]


def without(record: dict[str, Any], dotted: str) -> dict[str, Any]:
    record = copy.deepcopy(record)
    node, key = _parent(record, dotted)
    del node[key]
    return record


def replaced(record: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    record = copy.deepcopy(record)
    node, key = _parent(record, dotted)
    node[key] = value
    return record


def test_good_records_read_back(tmp_path: Path) -> None:
    record = metrics_record(RUN)
    assert read_metrics(written(tmp_path, record)) == {**record, "version": 1}
    for kind, ident in ((TRAIN_KIND, META_IDENT), (BASE_KIND, {**META_IDENT})):
        path = tmp_path / f"{kind}.json"
        write_record(path, train_record(kind, ident))
        assert read_record(path, kind)["kind"] == kind
    imported = train_record(BASE_KIND, META_IDENT) | {"epochs": []}  # an imported base learner
    del imported["checkpoints"]["last"]
    write_record(tmp_path / "imported.json", imported)
    assert read_record(tmp_path / "imported.json", BASE_KIND)["epochs"] == []


@pytest.mark.parametrize(
    "key",
    [
        "miou",
        "outputs.final.miou",
        "outputs.final.per_seed",
        "outputs.final.per_seed.1.miou",
        "outputs.final.class_iou",
        "checkpoint.sha256",
        "checkpoint.selection",
        "seeds",
        "fold",
    ],
)
def test_metrics_record_missing_a_key_names_file_and_key(tmp_path: Path, key: str) -> None:
    path = written(tmp_path, without(metrics_record(RUN), key))
    with pytest.raises(RecordError) as error:
        read_metrics(path)
    assert str(error.value) == f"{path}: key {key} missing"


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [
        ("outputs.final.miou", "71.2", "str"),
        ("outputs.final", [], "list"),
        ("outputs", None, "null"),
        ("outputs.final.per_seed", {"510": 1.0}, "object"),
        ("checkpoint.sha256", None, "null"),
        ("fold", True, "bool"),
        ("fold", 1.0, "float"),
        ("classes.0", "6", "str"),
        ("episodes_per_seed", None, "null"),
    ],
)
def test_metrics_record_with_a_wrong_type_names_file_key_and_type(
    tmp_path: Path, key: str, value: Any, found: str
) -> None:
    path = written(tmp_path, replaced(metrics_record(RUN), key, value))
    with pytest.raises(RecordError) as error:
        read_metrics(path)
    message = str(error.value)
    assert message.startswith(f"{path}: key {key} is {found}, expected ")
    assert "\n" not in message


@pytest.mark.parametrize("key", ["epochs", "epochs.2.epoch", "checkpoints.best.sha256", "fold"])
def test_training_record_missing_a_key_names_file_and_key(tmp_path: Path, key: str) -> None:
    path = tmp_path / "record.json"
    write_record(path, without(train_record(TRAIN_KIND, META_IDENT), key))
    with pytest.raises(RecordError, match=rf"^{path}: key {key} missing$"):
        read_record(path, TRAIN_KIND)


def test_training_record_with_a_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_record(path, replaced(train_record(BASE_KIND, META_IDENT), "checkpoints.best", "x"))
    with pytest.raises(RecordError, match=r"key checkpoints\.best is str, expected object"):
        read_record(path, BASE_KIND)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[1, 2]", "not a JSON object"),
        ("{broken", "not valid JSON"),
        (json.dumps({"kind": "other"}), "expected a 'hdmnet-metrics' record, found 'other'"),
    ],
)
def test_unreadable_records_name_the_file(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "fold1-shot1.json"
    path.write_text(text)
    with pytest.raises(RecordError, match=rf"^{path}: {says}"):
        read_record(path, METRICS_KIND)
    with pytest.raises(RecordError, match=rf"^{tmp_path / 'nope.json'}: record not found$"):
        read_metrics(tmp_path / "nope.json")
