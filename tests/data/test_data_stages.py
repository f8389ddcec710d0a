"""The data stages on the generated archives: lists checked against an independent count."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hdmnet import cli, fileio, layout
from hdmnet.config import load_params
from hdmnet.data import download, stages
from hdmnet.data.errors import DataError
from hdmnet.data.folds import fold_classes


def independent_pairs(root: Path, list_file: Path) -> dict[str, dict[int, int]]:
    """Class pixel counts per mask, computed here without the package's counting code."""
    result = {}
    for line in list_file.read_text().splitlines():
        _image, mask = line.split()
        pixels = np.asarray(Image.open(root / mask))
        values, counts = np.unique(pixels, return_counts=True)
        result[line] = {
            int(v): int(n) for v, n in zip(values, counts, strict=True) if v not in (0, 255)
        }
    return result


def expected_lists(counts, base, novel, exclude, min_pixels=2048):
    train_items, train_classes = [], defaultdict(list)
    for line, present in counts["train"].items():
        if exclude and set(present) & set(novel):
            continue
        good = [c for c in base if present.get(c, 0) >= min_pixels]
        if good:
            train_items.append(line)
            for c in good:
                train_classes[c].append(line)
    val_items, val_classes = [], defaultdict(list)
    for line, present in counts["val"].items():
        good = [c for c in novel if present.get(c, 0) >= min_pixels]
        if good:
            val_items.append(line)
            for c in good:
                val_classes[c].append(line)
    return train_items, dict(train_classes), val_items, dict(val_classes)


@pytest.mark.parametrize(
    ("dataset", "scheme"), [("pascal", "fwb"), ("coco", "fwb"), ("coco", "panet")]
)
def test_fold_lists_match_an_independent_count(embedded_data, dataset, scheme):
    root = layout.prepared_dir(embedded_data, dataset)
    counts = {m: independent_pairs(root, root / "lists" / f"{m}.txt") for m in ("train", "val")}
    for exclude in (True, False):
        for fold in range(4):
            base, novel = fold_classes(dataset, fold, scheme)
            folder = root / "folds" / layout.split_folder(dataset, scheme, exclude) / f"fold{fold}"
            train, train_cls, val, val_cls = expected_lists(counts, base, novel, exclude)
            assert (folder / "train.txt").read_text().splitlines() == train
            assert (folder / "val.txt").read_text().splitlines() == val
            written_train = json.loads((folder / "train_classes.json").read_text())
            written_val = json.loads((folder / "val_classes.json").read_text())
            assert {int(c): v for c, v in written_train.items() if v} == train_cls
            assert {int(c): v for c, v in written_val.items() if v} == val_cls
            # Every class keeps enough images for 5-shot episodes (shot + 1).
            assert all(len(train_cls.get(c, [])) >= 6 for c in base)
            assert all(len(val_cls.get(c, [])) >= 6 for c in novel)


def test_pascal_full_lists_follow_the_sbd_rules(embedded_data):
    root = layout.prepared_dir(embedded_data, "pascal")
    raw = layout.raw_dir(embedded_data) / "pascal" / "VOCdevkit" / "VOC2012"
    sets = raw / "ImageSets" / "Segmentation"
    voc_train = sets.joinpath("train.txt").read_text().split()
    voc_val = sets.joinpath("val.txt").read_text().split()
    noval = (layout.archive_dir(embedded_data) / "train_noval.txt").read_text().split()
    expected = voc_train + [i for i in dict.fromkeys(noval) if i not in set(voc_train)]
    train = [line.split()[0].split("/")[1][:-4] for line in (root / "lists/train.txt").open()]
    val = [line.split()[0].split("/")[1][:-4] for line in (root / "lists/val.txt").open()]
    assert train == expected and val == voc_val
    assert not set(train) & set(val)
    marker = json.loads((root / "prepared.json").read_text())
    assert marker["conversion"]["train"] == len(train)


def test_rerun_of_download_and_prepare_is_a_no_op(embedded_data):
    before = {p: p.stat().st_mtime_ns for p in layout.data_dir(embedded_data).rglob("*.png")}
    stages.download(embedded_data, "pascal")
    stages.prepare(embedded_data, "pascal")
    after = {p: p.stat().st_mtime_ns for p in layout.data_dir(embedded_data).rglob("*.png")}
    assert before == after


def test_download_without_generated_archives_names_the_missing_manifest(tmp_path, project_root):
    params = load_params(project_root / "params.yaml", [f"paths.data={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="hdmnet synth"):
        stages.download(params, "pascal")


def test_cli_download_reports_a_corrupted_archive(embedded_data, tmp_path, capsys):
    """A generated archive altered after the manifest was written fails verification."""
    synth = layout.synth_dir(embedded_data)
    copy = tmp_path / "synth"
    copy.mkdir()
    for item in synth.iterdir():
        data = item.read_bytes()
        if item.name == "train_noval.txt":
            data = data.replace(b"\n", b"\r\n", 1)
        (copy / item.name).write_bytes(data)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"paths:\n  data: {tmp_path / 'data'}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synth").symlink_to(copy)
    code = cli.main(["download", "--params", str(params_file), "--dataset", "pascal"])
    assert code == 2
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'data/synth/train_noval.txt'}: not the generated train_noval.txt of " in err
    )
    assert "the manifest's" in err and f"(hdmnet synth --params {params_file})" in err
    assert not (tmp_path / "data" / "archives" / "train_noval.txt").exists()


def test_rerun_of_download_reads_no_archive(embedded_data, monkeypatch):
    """The verification markers hold each archive's sha256: a rerun (about 20 GB for COCO)
    hashes nothing, and the stage's record still holds the true digests."""
    marker = layout.raw_dir(embedded_data) / "coco.downloaded.json"
    before = json.loads(marker.read_text())
    hashed = []

    def spy(path, *args, **kwargs):
        hashed.append(Path(path).name)
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(fileio, "file_digests", spy, raising=False)
    for module in (fileio, download, stages):
        monkeypatch.setattr(module, "file_digest", spy, raising=False)
    stages.download(embedded_data, "coco")
    assert hashed == []
    after = json.loads(marker.read_text())
    assert after == before
    for name, entry in after["archives"].items():
        data = (layout.archive_dir(embedded_data) / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_failed_reprepare_leaves_nothing_of_the_previous_run_looking_current(
    embedded_data, tmp_path, monkeypatch
):
    source = layout.data_dir(embedded_data)
    data = tmp_path / "data"
    shutil.copytree(source / "raw" / "pascal", data / "raw" / "pascal", symlinks=True)
    shutil.copytree(source / "pascal", data / "pascal", symlinks=True)
    (data / "archives").mkdir()
    shutil.copy2(source / "archives" / "train_noval.txt", data / "archives")
    params = embedded_data.with_overrides([f"paths.data={data}"])
    out = layout.prepared_dir(params, "pascal")
    assert (out / "prepared.json").exists() and (out / "folds").is_dir()
    masks = {p: p.stat().st_mtime_ns for p in (out / "SegmentationClassAug").iterdir()}

    real_build = stages.build_fold_lists
    calls = []

    def fail_on_the_third_fold(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise DataError("fold lists: simulated failure")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(stages, "build_fold_lists", fail_on_the_third_fold)
    with pytest.raises(DataError, match="simulated"):
        stages.prepare(params, "pascal")
    assert not (out / "prepared.json").exists()
    assert not (out / "folds").exists()  # neither the old lists nor a partial new set
    # The converted masks are kept and reused by the next run.
    monkeypatch.setattr(stages, "build_fold_lists", real_build)
    stages.prepare(params, "pascal")
    assert (out / "prepared.json").exists()
    assert len(list((out / "folds").rglob("train.txt"))) == 8
    assert {p: p.stat().st_mtime_ns for p in (out / "SegmentationClassAug").iterdir()} == masks
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_own_archives_are_used_with_their_own_checksums(
    embedded_data, tmp_path, monkeypatch, project_root, capsys
):
    """The official path with copies that are not the official archives (here the generated
    ones): the error names the user's file (not the internal .part copy), says it is not the
    official archive and which key takes its checksum; with data.checksums set to their SHA-256
    the same files are used, and a wrong one names its key."""
    monkeypatch.chdir(project_root)
    synth = layout.synth_dir(embedded_data)
    entries = json.loads((synth / "manifest.json").read_text())["archives"]
    names = {key: download.OFFICIAL_ARCHIVES[key].name for key in stages.ARCHIVES_OF["pascal"]}
    local = {key: str(synth / name) for key, name in names.items()}
    own = {key: entries[name]["sha256"] for key, name in names.items()}

    def download_pascal(data: Path, *overrides: str) -> int:
        settings = [f"paths.data={data}", "data.source=official"]
        settings += [f"data.local_files={json.dumps(local)}", *overrides]
        args = [arg for item in settings for arg in ("-s", item)]
        return cli.main(["download", *args, "--dataset", "pascal"])

    assert download_pascal(tmp_path / "a") == 2
    (err,) = capsys.readouterr().err.splitlines()
    voc = local["voc2012"]
    assert err.startswith(
        f"hdmnet download: error: {voc} (data.local_files.voc2012): not the official "
        "VOCtrainval_11-May-2012.tar: its size is "
    )
    assert "the official archive's 1999639040" in err and ".part" not in err
    assert "set data.checksums.voc2012 to its sha256 (sha256sum prints it)" in err
    assert f"fetch it again (hdmnet download -s paths.data={tmp_path / 'a'} -s " in err
    assert not (tmp_path / "a" / "archives" / names["voc2012"]).exists()

    assert download_pascal(tmp_path / "b", f"data.checksums={json.dumps(own)}") == 0
    marker = json.loads((tmp_path / "b" / "raw" / "pascal.downloaded.json").read_text())
    assert {name: entry["sha256"] for name, entry in marker["archives"].items()} == {
        names[key]: digest for key, digest in own.items()
    }

    wrong = own | {"sbd": "0" * 64}
    capsys.readouterr()
    assert download_pascal(tmp_path / "c", f"data.checksums={json.dumps(wrong)}") == 2
    (err,) = capsys.readouterr().err.splitlines()
    where = f"{local['sbd']} (data.local_files.sbd)"
    assert f"{where}: its sha256 is {own['sbd']}, not data.checksums.sbd ({'0' * 64})" in err
