"""Archive writers give fixed metadata and byte-identical output."""

from __future__ import annotations

import gzip
import tarfile
import zipfile
from pathlib import Path

from hdmnet.data.synth.pack import TarWriter, ZipWriter


def _write_tar(path: Path, gz: bool) -> None:
    with TarWriter(path, mtime=1234567890, gz=gz) as tar:
        tar.add_file("root/a/one.txt", b"one")
        tar.add_file("root/a/two.bin", bytes(range(256)))
        tar.add_file("root/b.txt", b"")


def test_tar_members_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    _write_tar(path, gz=False)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == ["root", "root/a", "root/a/one.txt", "root/a/two.bin", "root/b.txt"]
        assert all(m.mtime == 1234567890 and m.uid == 0 and m.gid == 0 for m in members)
        assert all(m.uname == "" and m.gname == "" for m in members)
        assert members[0].isdir() and members[0].mode == 0o755
        assert members[3].mode == 0o644
        assert tar.extractfile("root/a/two.bin").read() == bytes(range(256))


def test_tgz_is_reproducible(tmp_path: Path) -> None:
    first, second = tmp_path / "1.tgz", tmp_path / "2.tgz"
    _write_tar(first, gz=True)
    _write_tar(second, gz=True)
    assert first.read_bytes() == second.read_bytes()
    raw = first.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip mtime field
    assert raw[3] & 0x08 == 0  # no original file name stored
    with gzip.open(first) as handle, tarfile.open(fileobj=handle) as tar:
        assert tar.extractfile("root/a/one.txt").read() == b"one"


def test_zip_metadata_and_reproducible(tmp_path: Path) -> None:
    paths = [tmp_path / "1.zip", tmp_path / "2.zip"]
    for path in paths:
        with ZipWriter(path, (2014, 8, 16, 0, 0, 0)) as archive:
            archive.add_file("top/img.jpg", b"\xff\xd8jpeg")
            archive.add_file("top/sub/doc.json", b'{"a": 1}' * 100, compress=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with zipfile.ZipFile(paths[0]) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == [
            "top/",
            "top/img.jpg",
            "top/sub/",
            "top/sub/doc.json",
        ]
        assert all(i.date_time == (2014, 8, 16, 0, 0, 0) for i in infos)
        assert infos[0].is_dir()
        assert infos[1].compress_type == zipfile.ZIP_STORED
        assert infos[3].compress_type == zipfile.ZIP_DEFLATED
        assert infos[3].compress_size < infos[3].file_size
        assert infos[1].external_attr >> 16 == 0o100644
        assert archive.read("top/sub/doc.json") == b'{"a": 1}' * 100
        assert archive.testzip() is None
