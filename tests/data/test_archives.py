"""Safe extraction: good tar/tgz/zip archives, malicious members refused, re-runs skipped."""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from tests.test_fileio import fill_disk

from hdmnet.data import archives
from hdmnet.data.archives import UnsafeArchiveError, is_extracted, marker_path, safe_extract
from hdmnet.data.errors import DataError
from hdmnet.data.synth.pack import TarWriter, ZipWriter
from hdmnet.fileio import NoSpaceError

FILES = {
    "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": b"jpeg bytes " * 50,
    "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"2007_000032\n",
    "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png": b"\x89PNG fake",
}


def _file_info(name: str, data: bytes, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1_300_000_000
    return info


def make_tar(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    """A tar archive; the compression follows the file name (.tar, .tgz, .tar.bz2, .tar.xz)."""
    mode = {".tgz": "w:gz", ".gz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tar:
        folder = tarfile.TarInfo("VOCdevkit")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name, data in files.items():
            tar.addfile(_file_info(name, data), io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def make_zip(path: Path, files: dict[str, bytes], extra: list[zipfile.ZipInfo] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for info in extra:
            zf.writestr(info, b"/etc/passwd")
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary extraction folders left beside the target."""
    return [p.name for p in folder.iterdir() if ".extract-" in p.name]


@pytest.mark.parametrize("name", ["voc.tar", "voc.tgz", "voc.tar.gz", "voc.tar.bz2", "voc.tar.xz"])
def test_tar_any_compression_extracts_all_files(tmp_path: Path, name: str) -> None:
    setuid_script = _file_info("VOCdevkit/run.sh", b"x" * 7, mode=0o4750)
    archive = make_tar(tmp_path / name, FILES, extra=[setuid_script])
    target = tmp_path / "raw" / "pascal"
    safe_extract(archive, target)
    for member, data in FILES.items():
        assert (target / member).read_bytes() == data
    # Permission bits are kept, setuid is not.
    assert stat.S_IMODE((target / "VOCdevkit/run.sh").stat().st_mode) == 0o750
    extracted = target / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"
    assert extracted.stat().st_mtime == 1_300_000_000
    assert stat.S_IMODE(extracted.stat().st_mode) == 0o644
    assert is_extracted(archive, target)
    assert leftovers(target.parent) == []


def test_zip_extracts_and_merges_with_existing_content(tmp_path: Path) -> None:
    target = tmp_path / "raw" / "coco"
    (target / "annotations").mkdir(parents=True)
    (target / "annotations" / "keep.json").write_text("{}")
    (target / "train2014").mkdir()
    (target / "train2014" / "a.jpg").write_bytes(b"old")
    files = {"train2014/a.jpg": b"new", "train2014/b.jpg": b"bbb", "annotations/x.json": b"[]"}
    archive = make_zip(tmp_path / "train2014.zip", files)
    safe_extract(archive, target)
    assert (target / "train2014/a.jpg").read_bytes() == b"new"
    assert (target / "train2014/b.jpg").read_bytes() == b"bbb"
    assert (target / "annotations/x.json").read_bytes() == b"[]"
    assert (target / "annotations/keep.json").read_text() == "{}"
    assert leftovers(target.parent) == []


def test_second_archive_into_same_target_keeps_the_first(tmp_path: Path) -> None:
    target = tmp_path / "pascal"
    safe_extract(make_tar(tmp_path / "voc.tar", FILES), target)
    sbd = {"benchmark_RELEASE/dataset/train.txt": b"2008_000002\n"}
    safe_extract(make_tar(tmp_path / "benchmark.tgz", sbd), target)
    assert (target / "benchmark_RELEASE/dataset/train.txt").read_bytes() == b"2008_000002\n"
    assert (target / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").exists()
    assert marker_path(tmp_path / "voc.tar", target).exists()
    assert marker_path(tmp_path / "benchmark.tgz", target).exists()


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_file_info("/etc/evil", b"x"), "absolute path"),
        (_file_info("../evil", b"x"), "'..'"),
        (_file_info("VOCdevkit/../../evil", b"x"), "'..'"),
        (_link("VOCdevkit/link", "/etc", tarfile.SYMTYPE), "symbolic link"),
        (_link("VOCdevkit/hard", "/etc/passwd", tarfile.LNKTYPE), "hard link"),
        (_special("VOCdevkit/fifo", tarfile.FIFOTYPE), "special file"),
        (_special("VOCdevkit/dev", tarfile.CHRTYPE), "special file"),
    ],
)
def test_unsafe_tar_member_refused_before_anything_is_written(
    tmp_path: Path, bad: tarfile.TarInfo, reason: str
) -> None:
    # Good members come first: the check must cover all members before writing any of them.
    archive = make_tar(tmp_path / "evil.tgz", FILES, extra=[bad])
    raw = tmp_path / "raw"
    with pytest.raises(UnsafeArchiveError) as caught:
        safe_extract(archive, raw / "pascal")
    message = str(caught.value)
    assert "evil.tgz" in message
    assert bad.name in message
    assert reason in message
    assert not raw.exists()
    assert not (tmp_path / "evil").exists()
    assert not Path("/etc/evil").exists()


def _zip_symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (zipfile.ZipInfo("/abs/evil.txt"), "absolute path"),
        (zipfile.ZipInfo("../evil.txt"), "'..'"),
        (zipfile.ZipInfo("train2014\\..\\..\\evil.txt"), "'..'"),
        (zipfile.ZipInfo("C:/evil.txt"), "absolute path"),
        (_zip_symlink("train2014/link"), "symbolic link"),
    ],
)
def test_unsafe_zip_member_refused(tmp_path: Path, bad: zipfile.ZipInfo, reason: str) -> None:
    archive = make_zip(tmp_path / "evil.zip", {"train2014/a.jpg": b"a"}, extra=[bad])
    with pytest.raises(UnsafeArchiveError) as caught:
        safe_extract(archive, tmp_path / "raw" / "coco")
    assert "evil.zip" in str(caught.value)
    assert repr(bad.filename) in str(caught.value)
    assert reason in str(caught.value)
    assert not (tmp_path / "raw").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_rerun_skips_until_the_archive_changes(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "voc.tar", FILES)
    target = tmp_path / "pascal"
    safe_extract(archive, target)
    victim = target / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"
    victim.unlink()
    safe_extract(archive, target)  # marker matches: nothing is touched
    assert not victim.exists()
    os.utime(archive, ns=(1_000_000_000, 1_000_000_000))  # a re-downloaded archive
    assert not is_extracted(archive, target)
    safe_extract(archive, target)
    assert victim.read_bytes() == FILES["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"]


def test_failure_mid_extraction_leaves_target_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_tar(tmp_path / "voc.tar", FILES)
    target = tmp_path / "raw" / "pascal"
    target.mkdir(parents=True)
    real_write = archives._write_member
    calls = []

    def failing_write(*args: object) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(*args)

    monkeypatch.setattr(archives, "_write_member", failing_write)
    with pytest.raises(OSError, match="disk full"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert leftovers(target.parent) == []
    assert not is_extracted(archive, target)


def test_not_an_archive_and_missing_archive(tmp_path: Path) -> None:
    junk = tmp_path / "train_noval.txt"
    junk.write_text("2008_000002\n")
    with pytest.raises(ValueError, match=r"train_noval\.txt: not a tar or zip"):
        safe_extract(junk, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"nope\.tar"):
        safe_extract(tmp_path / "nope.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- damaged archives: one clear error, nothing written ----------------------------------------

# Random bytes do not compress, so a cut in the compressed file is a cut inside this member.
BIG = {"VOCdevkit/VOC2012/JPEGImages/big.jpg": random.Random(1).randbytes(300_000)}
BIG_FILES = {**FILES, **BIG}


def make_big_tar(path: Path) -> Path:
    """Like ``make_tar`` with one large member last; bz2 at level 1 (100 kB blocks) so that a
    cut file still decodes up to the cut instead of failing as a whole."""
    if path.suffix == ".bz2":
        with tarfile.open(path, "w:bz2", compresslevel=1) as tar:
            for name, data in BIG_FILES.items():
                tar.addfile(_file_info(name, data), io.BytesIO(data))
        return path
    return make_tar(path, BIG_FILES)


def assert_damaged(error: pytest.ExceptionInfo[DataError], archive: Path, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(archive) in message and "download again" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("name", ["voc.tar", "voc.tgz", "voc.tar.bz2", "voc.tar.xz"])
def test_tar_cut_inside_a_member_is_a_one_line_error(tmp_path: Path, name: str) -> None:
    whole = make_big_tar(tmp_path / f"whole-{name}").read_bytes()
    archive = tmp_path / name
    archive.write_bytes(whole[: len(whole) * 2 // 3])
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError) as error:
        safe_extract(archive, tmp_path / "raw" / "pascal")
    assert_damaged(error, archive, "big.jpg", "truncated")
    assert not (tmp_path / "raw" / "pascal").exists()
    assert leftovers(tmp_path / "raw") == []


def test_tar_cut_in_the_last_members_data_is_caught_while_reading(tmp_path: Path) -> None:
    # Plain tar: the header scan can stop early, the error comes from reading the member.
    whole = make_big_tar(tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        last = tar.getmembers()[-1]
    archive = tmp_path / "voc.tar"
    archive.write_bytes(whole[: last.offset_data + last.size - 10])
    with pytest.raises(DataError) as error:
        safe_extract(archive, tmp_path / "pascal")
    assert_damaged(error, archive, "big.jpg")
    assert not (tmp_path / "pascal").exists()


def test_cut_zip_is_a_one_line_error(tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "whole.zip", {"train2014/a.jpg": b"a" * 5000}).read_bytes()
    archive = tmp_path / "train2014.zip"
    archive.write_bytes(whole[: len(whole) - 30])
    with pytest.raises(DataError) as error:
        safe_extract(archive, tmp_path / "coco")
    assert_damaged(error, archive, "truncated")


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_corrupt_zip_member_names_archive_and_member(tmp_path: Path, method: int) -> None:
    archive = tmp_path / "val2014.zip"
    data = random.Random(2).randbytes(4000)
    with zipfile.ZipFile(archive, "w", method) as zf:
        zf.writestr("val2014/a.jpg", b"first")
        zf.writestr("val2014/b.jpg", data)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("val2014/b.jpg")
    raw = bytearray(archive.read_bytes())
    # Inside b.jpg's data: past its local header (30 bytes + name), before its end.
    start = info.header_offset + 30 + len(info.filename) + 100
    raw[start : start + 50] = bytes(50)
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError) as error:
        safe_extract(archive, tmp_path / "coco")
    assert_damaged(error, archive, "val2014/b.jpg")
    assert not (tmp_path / "coco").exists()


def _cut_at_member_boundary(tar_bytes: bytes, source: Path) -> bytes:
    """The archive's bytes up to the header of its last member: a shorter, valid-looking tar."""
    with tarfile.open(source) as tar:
        last = tar.getmembers()[-1]
    return tar_bytes[: last.offset]


@pytest.mark.parametrize("gz", [False, True])
def test_tar_cut_at_a_member_boundary_is_detected(tmp_path: Path, gz: bool) -> None:
    whole = make_tar(tmp_path / "whole.tar", BIG_FILES)
    cut = _cut_at_member_boundary(whole.read_bytes(), whole)
    archive = tmp_path / ("benchmark.tgz" if gz else "voc.tar")
    archive.write_bytes(gzip.compress(cut) if gz else cut)
    with tarfile.open(archive) as tar:  # what the standard library makes of it
        assert len(tar.getmembers()) == len(BIG_FILES)  # folder + 3 files, "big.jpg" missing
    with pytest.raises(DataError) as error:
        safe_extract(archive, tmp_path / "pascal")
    assert_damaged(error, archive, "end-of-archive", "2007_000032.png")
    assert not (tmp_path / "pascal").exists()
    assert leftovers(tmp_path) == []


def test_missing_end_marker_is_only_a_warning_for_a_checksummed_archive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A size or checksum verified against the published value already rules out a cut.
    whole = make_tar(tmp_path / "whole.tar", FILES)
    with tarfile.open(whole) as tar:
        last = tar.getmembers()[-1]
    archive = tmp_path / "voc.tar"
    # Every member complete (the last one's data fits one block), no end-of-archive blocks.
    archive.write_bytes(whole.read_bytes()[: last.offset_data + 512])
    safe_extract(archive, tmp_path / "pascal", verified=True)
    for name, data in FILES.items():
        assert (tmp_path / "pascal" / name).read_bytes() == data
    assert "end-of-archive" in caplog.text


def test_archives_in_the_real_ones_formats_extract(tmp_path: Path) -> None:
    """VOC's .tar and SBD's .tgz are GNU tar archives: made here by GNU tar itself."""
    if shutil.which("tar") is None:
        pytest.skip("no tar program")
    source = tmp_path / "src"
    for name, data in BIG_FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    for archive, flags in [(tmp_path / "voc.tar", "-cf"), (tmp_path / "benchmark.tgz", "-czf")]:
        subprocess.run(["tar", flags, str(archive), "-C", str(source), "VOCdevkit"], check=True)
        target = tmp_path / f"out-{archive.name}"
        safe_extract(archive, target)
        for name, data in BIG_FILES.items():
            assert (target / name).read_bytes() == data


def test_generated_archives_extract(tmp_path: Path) -> None:
    """The embedded data set's writers (plain tar, tar.gz, zip) end their archives properly."""
    for archive in (tmp_path / "voc.tar", tmp_path / "benchmark.tgz"):
        with TarWriter(archive, 1_300_000_000, gz=archive.suffix == ".tgz") as tar:
            for name, data in BIG_FILES.items():
                tar.add_file(name, data)
        safe_extract(archive, tmp_path / f"out-{archive.name}")
    with ZipWriter(tmp_path / "train2014.zip", (2014, 1, 1, 0, 0, 0)) as zipped:
        for name, data in BIG_FILES.items():
            zipped.add_file(name, data, compress=True)
    safe_extract(tmp_path / "train2014.zip", tmp_path / "out-zip")
    for folder in ("out-voc.tar", "out-benchmark.tgz", "out-zip"):
        for name, data in BIG_FILES.items():
            assert (tmp_path / folder / name).read_bytes() == data


def test_full_disk_during_extraction_names_the_target_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_tar(tmp_path / "voc.tar", FILES)
    target = tmp_path / "raw" / "pascal"
    target.mkdir(parents=True)
    fill_disk(monkeypatch, archives)
    with pytest.raises(NoSpaceError) as error:
        safe_extract(archive, target)
    assert str(error.value).startswith(f"{target}: no space left on device")
    assert list(target.iterdir()) == []
    assert leftovers(target.parent) == []
