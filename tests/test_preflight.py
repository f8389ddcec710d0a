"""``hdmnet check``: each check finds its problem before any work starts, in one line that says
what to do, and the command exits non-zero on any error. No network: URL probes, free space and
the GPU count are monkeypatched; folders and files are temporary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from hdmnet import layout, preflight
from hdmnet.cli import main
from hdmnet.config import load_params
from hdmnet.data.download import OFFICIAL_ARCHIVES, verified_marker
from hdmnet.preflight import ERROR, OK, WARNING

ROOT = Path(__file__).resolve().parents[1]
GB = 10**9


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Parameters whose folders are in ``tmp_path``; plenty of disk, no GPU, every URL answers."""
    monkeypatch.setattr(preflight, "free_bytes", lambda path: 500 * GB)
    monkeypatch.setattr(preflight, "visible_gpus", lambda: 0)
    monkeypatch.setattr(preflight, "probe_url", lambda url, timeout=10.0: "")

    def make(*overrides: str):
        return load_params(
            ROOT / "params.yaml",
            [
                f"paths.data={tmp_path / 'data'}",
                f"paths.results={tmp_path / 'results'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                *overrides,
            ],
        )

    return make


def only(findings, check: str):
    return [f for f in findings if f.check == check]


def levels(findings) -> list[str]:
    return [f.level for f in findings]


def test_the_default_preset_is_ready(settings):
    findings = preflight.run_checks(settings())
    assert not preflight.failed(findings), [str(f) for f in findings]
    assert {f.check for f in findings} == {"folders", "disk", "gpus"}
    assert only(findings, "weights") == []  # the small backbone starts from random weights


# -- weights ----------------------------------------------------------------------------------


def vgg16_imagenet_file(path: Path) -> Path:
    """A VGG-16-BN state dict under torchvision's key names (features.N, classifier.N)."""
    from hdmnet.model import build_backbone
    from hdmnet.model.backbone import VGG_SLICES

    state = {}
    for key, value in build_backbone("vgg16").state_dict().items():
        layer, index, param = key.split(".", 2)
        start = VGG_SLICES[int(layer.removeprefix("layer"))][0]
        state[f"features.{start + int(index)}.{param}"] = value
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    return path


def test_missing_imagenet_weights_say_which_file_and_where_from(settings):
    findings = only(
        preflight.check_weights(settings("grid.backbones=[resnet50, vgg16]")), "weights"
    )
    assert levels(findings) == [ERROR, ERROR]
    resnet, vgg = (f.message for f in findings)
    assert "model.pretrained.resnet50 is not set" in resnet and "resnet50_v2.pth" in resnet
    assert "hszhao/semseg" in resnet
    assert "-s model.pretrained.resnet50=/path/to/resnet50_v2.pth" in resnet
    assert "vgg16_bn-6c64b313.pth" in vgg and "as vgg16_bn.pth" in vgg


def test_weights_that_are_absent_null_or_not_imagenet_weights(settings, tmp_path):
    wrong = tmp_path / "resnet50_v2.pth"
    torch.save({"conv1.weight": torch.zeros(1), "nonsense.weight": torch.zeros(1)}, wrong)
    params = settings(
        "grid.backbones=[resnet50, resnet101, vgg16]",
        f"model.pretrained={{resnet50: {wrong}, resnet101: null, vgg16: {tmp_path / 'none.pth'}}}",
    )
    by_key = {f.message.split(":")[0].split()[0]: f for f in preflight.check_weights(params)}
    assert by_key["model.pretrained.resnet50"].level == ERROR
    assert "is not resnet50_v2.pth" in by_key["model.pretrained.resnet50"].message
    assert by_key["model.pretrained.resnet101"].level == WARNING
    assert "random weights" in by_key["model.pretrained.resnet101"].message
    assert by_key["model.pretrained.vgg16"].level == ERROR
    assert "not found" in by_key["model.pretrained.vgg16"].message


def test_real_weights_pass_and_an_unexpected_file_name_is_a_warning(settings, tmp_path):
    good = vgg16_imagenet_file(tmp_path / "vgg16_bn.pth")
    findings = preflight.check_weights(
        settings("grid.backbones=[vgg16]", f"model.pretrained={{vgg16: {good}}}")
    )
    assert levels(findings) == [OK]
    renamed = good.rename(tmp_path / "vgg16_bn-6c64b313.pth")
    findings = preflight.check_weights(
        settings("grid.backbones=[vgg16]", f"model.pretrained={{vgg16: {renamed}}}")
    )
    assert levels(findings) == [WARNING] and "loads vgg16_bn.pth" in findings[0].message


# -- disk -------------------------------------------------------------------------------------


def test_not_enough_disk_for_the_data_sets(settings, monkeypatch):
    params = settings("data.source=official", "grid.datasets=[pascal, coco]")
    pascal, coco = (preflight.data_needs(params, d) for d in ("pascal", "coco"))
    assert 6 * GB < pascal < 10 * GB and 40 * GB < coco < 50 * GB
    monkeypatch.setattr(preflight, "free_bytes", lambda path: 30 * GB)
    (finding,) = preflight.check_disk(params)
    assert finding.level == ERROR
    assert "30.0 GB free" in finding.message and "needed for pascal, coco" in finding.message
    assert "-s paths.data=/big/disk/data" in finding.message


def test_prepared_or_fetched_data_needs_less(settings, monkeypatch):
    params = settings("data.source=official", "grid.datasets=[pascal, coco]")
    before = preflight.data_needs(params, "coco")
    archive = layout.archive_dir(params) / OFFICIAL_ARCHIVES["coco_train2014"].name
    archive.parent.mkdir(parents=True)
    archive.touch()
    assert before - preflight.data_needs(params, "coco") == OFFICIAL_ARCHIVES["coco_train2014"].size
    marker = layout.prepared_dir(params, "coco") / "prepared.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert preflight.data_needs(params, "coco") == 0
    monkeypatch.setattr(preflight, "free_bytes", lambda path: 9 * GB)
    assert levels(preflight.check_disk(params)) == [OK]  # PASCAL fits


# -- GPUs -------------------------------------------------------------------------------------


def test_gpus_asked_for_but_not_visible(settings, monkeypatch):
    (finding,) = preflight.check_gpus(settings("train.gpus=4"))
    assert finding.level == ERROR and "train.gpus=4 but 0 GPU(s)" in finding.message
    assert "-s train.gpus=0" in finding.message
    monkeypatch.setattr(preflight, "visible_gpus", lambda: 4)
    assert levels(preflight.check_gpus(settings("train.gpus=4"))) == [OK]


def test_full_size_backbones_on_the_cpu_are_a_warning(settings):
    (finding,) = preflight.check_gpus(settings("grid.backbones=[resnet50]"))
    assert finding.level == WARNING and "CPU" in finding.message


def test_suggested_commands_keep_the_given_parameter_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "visible_gpus", lambda: 0)
    monkeypatch.setattr(preflight, "free_bytes", lambda path: 500 * GB)
    extra = tmp_path / "gpus.yaml"
    extra.write_text(yaml.safe_dump({"train": {"gpus": 2}, "paths": {"data": str(tmp_path)}}))
    monkeypatch.chdir(ROOT)  # params.yaml is the base the file is layered over
    assert main(["check", "--params", str(extra), "-s", f"paths.results={tmp_path}"]) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: gpus")]
    assert f"hdmnet check --params {extra} -s paths.results={tmp_path} -s train.gpus=0" in line


# -- archives ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting", ["data.mirror=https://mirror.example/voc", f"data.checksums.sbd={'a' * 64}"]
)
def test_a_mirror_or_checksums_with_synthetic_data_is_a_warning(settings, setting):
    (finding,) = preflight.check_archives(settings(setting))
    key = setting.split("=")[0].removesuffix(".sbd")
    assert finding.level == WARNING
    assert (
        finding.message.startswith(f"{key}=")
        and "is ignored: data.source is synthetic" in finding.message
    )
    assert "-s data.source=official" in finding.message


def test_local_archives_missing_or_not_the_official_ones(settings, tmp_path):
    voc = tmp_path / "VOCtrainval_11-May-2012.tar"
    with open(voc, "wb") as handle:  # sparse: the official size without the bytes
        handle.truncate(OFFICIAL_ARCHIVES["voc2012"].size)
    small = tmp_path / "benchmark-copy.tgz"
    small.write_bytes(b"x" * 10)
    files = {"voc2012": str(voc), "sbd": str(small), "sbd_train_noval": str(tmp_path / "no.txt")}
    params = settings("data.source=official", f"data.local_files={json.dumps(files)}")
    findings = preflight.check_archives(params)
    assert levels(findings) == [OK, OK, ERROR]  # SBD's size is not published: not checked
    assert "data.local_files.sbd_train_noval" in findings[2].message
    assert "not found" in findings[2].message
    train = tmp_path / "train2014.zip"
    train.write_bytes(b"not the archive")
    params = settings(
        "data.source=official",
        "grid.datasets=[coco]",
        f"data.local_files={{coco_train2014: {train}}}",
    )
    first = preflight.check_archives(params)[0]
    assert first.level == ERROR and "not the official archive" in first.message
    assert f"{OFFICIAL_ARCHIVES['coco_train2014'].size}" in first.message
    assert "set data.checksums.coco_train2014 to its sha256" in first.message
    # Your own copy, with its own checksum: its size is not the official one's to check.
    own = params.with_overrides([f"data.checksums.coco_train2014={'a' * 64}"])
    assert preflight.check_archives(own)[0].level == OK


def test_an_unreachable_host_is_reported_per_archive_and_asked_once(settings, monkeypatch):
    asked = []

    def probe(url, timeout=10.0):
        asked.append(url)
        return "timed out"

    monkeypatch.setattr(preflight, "probe_url", probe)
    params = settings("data.source=official", "data.mirror=https://mirror.example/hdm")
    findings = preflight.check_archives(params)
    assert levels(findings) == [ERROR, ERROR, ERROR]
    assert len(asked) == 1 and asked[0].startswith("https://mirror.example/hdm/")
    assert all("timed out" in f.message and "data.local_files." in f.message for f in findings)


def test_an_archive_missing_from_a_mirror_folder(settings, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for key in ("voc2012", "sbd"):
        (mirror / OFFICIAL_ARCHIVES[key].name).write_bytes(b"x")
    findings = preflight.check_archives(settings("data.source=official", f"data.mirror={mirror}"))
    assert levels(findings) == [OK, OK, ERROR]
    assert "train_noval.txt: not found in the mirror folder" in findings[2].message


def test_fetched_or_prepared_data_is_not_asked_for_again(settings, monkeypatch):
    monkeypatch.setattr(preflight, "probe_url", lambda url, timeout=10.0: "no network")
    params = settings("data.source=official", "grid.datasets=[pascal, coco]")
    archive_dir = layout.archive_dir(params)
    archive_dir.mkdir(parents=True)
    for key in ("voc2012", "sbd", "sbd_train_noval"):
        verified_marker(archive_dir, OFFICIAL_ARCHIVES[key]).write_text("{}")
    marker = layout.prepared_dir(params, "coco") / "prepared.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert levels(preflight.check_archives(params)) == [OK, OK, OK]


# -- folders ----------------------------------------------------------------------------------


def test_folders_that_cannot_be_written(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    findings = preflight.check_folders(settings(f"paths.results={blocker / 'results'}"))
    assert levels(findings) == [OK, ERROR, OK]
    assert findings[1].message.startswith(f"paths.results: {blocker / 'results'}")
    assert "point paths.results elsewhere" in findings[1].message
    assert not (tmp_path / "data").exists()  # checking creates nothing


# -- the command ------------------------------------------------------------------------------


def test_the_command_prints_one_line_per_problem_and_exits_non_zero(
    settings, tmp_path, monkeypatch, capsys
):
    params = settings("train.gpus=2", "data.mirror=https://mirror.example")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.to_dict()))
    monkeypatch.chdir(tmp_path)  # the file is complete: no params.yaml under it
    assert main(["check", "--params", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["warning", "error", "hdmnet check"]
    assert lines[-1] == "hdmnet check: 1 problem(s) to fix first"
    assert out.startswith("ok: folders:")
    assert main(["check", "--params", str(path), "-s", "train.gpus=0"]) == 0
    assert "hdmnet check: ready" in capsys.readouterr().out
