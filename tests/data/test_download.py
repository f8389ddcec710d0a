"""fetch / download_all against a local HTTP server on 127.0.0.1 and against local files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.test_fileio import fill_disk

from hdmnet.data import download
from hdmnet.data.download import (
    OFFICIAL_ARCHIVES,
    ArchiveSpec,
    ChecksumError,
    DownloadError,
    archive_digest,
    download_all,
    fetch,
    is_verified,
    specs_from_manifest,
    verified_marker,
    verify,
)
from hdmnet.data.errors import DataError
from hdmnet.fileio import NoSpaceError

DATA = random.Random(0).randbytes(300_000)
FAST = {"retries": 3, "backoff": 0.01, "timeout": 5}

Behaviour = Callable[[BaseHTTPRequestHandler, bytes], None]


def serve_ranges(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    """A well-behaved server: 200, or 206 / 416 for ``Range: bytes=N-``."""
    match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
    if not match:
        _send(handler, 200, data)
        return
    start = int(match.group(1))
    if start >= len(data):
        _send(handler, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
        return
    content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
    _send(handler, 206, data[start:], {"Content-Range": content_range})


def ignore_range(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    _send(handler, 200, data)


def drop_half_way(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    """Announce the whole body, send half of it, close the connection."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data[: len(data) // 2])
    handler.wfile.flush()
    handler.close_connection = True


def stall_half_way(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    drop_half_way(handler, data)
    time.sleep(0.6)  # longer than the client's timeout in the test


def corrupt(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    bad = bytearray(data)
    bad[1000] ^= 0xFF
    _send(handler, 200, bytes(bad))


def status(code: int) -> Behaviour:
    return lambda handler, data: _send(handler, code, b"error page")


def _send(
    handler: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    handler.send_response(code)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


class Server:
    """Serves ``files`` under /<name>; each path plays its behaviours in turn, the last repeats."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviours: dict[str, list[Behaviour]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    _send(self, 404, b"not found")
                    return
                queue = server.behaviours[name]
                behaviour = queue.pop(0) if len(queue) > 1 else queue[0]
                behaviour(self, server.files[name])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, name: str, data: bytes, *behaviours: Behaviour) -> str:
        self.files[name] = data
        self.behaviours[name] = list(behaviours) or [serve_ranges]
        return f"{self.base}/{name}"

    def count(self, name: str) -> int:
        return sum(1 for requested, _ in self.requests if requested == name)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(timeout=5)


def spec_for(name: str, url: str, data: bytes = DATA, **overrides: object) -> ArchiveSpec:
    fields = {
        "size": len(data),
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    fields.update(overrides)
    return ArchiveSpec(name=name, url=url, **fields)  # type: ignore[arg-type]


def test_download_verifies_and_writes_marker(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA))
    path = fetch(spec, tmp_path, **FAST)
    assert path == tmp_path / "a.tar"
    assert path.read_bytes() == DATA
    assert not (tmp_path / "a.tar.part").exists()
    marker = json.loads(verified_marker(tmp_path, spec).read_text())
    assert marker["md5"] == spec.md5 and marker["sha256"] == spec.sha256
    assert marker["size"] == len(DATA)


def test_dropped_connection_resumes_with_range(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA, drop_half_way, serve_ranges))
    path = fetch(spec, tmp_path, **FAST)
    assert path.read_bytes() == DATA
    assert server.requests == [("a.tar", None), ("a.tar", f"bytes={len(DATA) // 2}-")]


def test_timeout_is_retried(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA, stall_half_way, serve_ranges))
    path = fetch(spec, tmp_path, retries=2, backoff=0.01, timeout=0.2)
    assert path.read_bytes() == DATA
    assert server.count("a.tar") == 2


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA, drop_half_way, ignore_range))
    path = fetch(spec, tmp_path, **FAST)
    assert path.read_bytes() == DATA  # not half + whole
    assert server.requests[1] == ("a.tar", f"bytes={len(DATA) // 2}-")


def test_interrupted_run_resumes_in_the_next_run(server: Server, tmp_path: Path) -> None:
    url = server.add("a.tar", DATA, drop_half_way)
    spec = spec_for("a.tar", url)
    with pytest.raises(DownloadError, match=re.escape(url)) as caught:
        fetch(spec, tmp_path, retries=1, backoff=0.01, timeout=5)
    assert "after 2 attempts" in str(caught.value)
    assert not (tmp_path / "a.tar").exists()
    assert (tmp_path / "a.tar.part").stat().st_size == len(DATA) // 2
    server.behaviours["a.tar"] = [serve_ranges]
    assert fetch(spec, tmp_path, **FAST).read_bytes() == DATA
    assert server.requests[-1] == ("a.tar", f"bytes={len(DATA) // 2}-")


def test_complete_part_from_earlier_run_gets_416_and_is_kept(
    server: Server, tmp_path: Path
) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA), size=None)
    (tmp_path / "a.tar.part").write_bytes(DATA)
    assert fetch(spec, tmp_path, **FAST).read_bytes() == DATA
    assert server.requests == [("a.tar", f"bytes={len(DATA)}-")]


def test_corrupted_bytes_raise_checksum_error_and_leave_nothing(
    server: Server, tmp_path: Path
) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA, corrupt))
    bad = bytearray(DATA)
    bad[1000] ^= 0xFF
    with pytest.raises(ChecksumError) as caught:
        fetch(spec, tmp_path, **FAST)
    message = str(caught.value)
    # Named by where it came from (the URL), not by the internal .part file.
    assert message.startswith(f"{spec.url}: md5 mismatch") and ".part" not in message
    assert spec.md5 in message
    assert hashlib.md5(bad).hexdigest() in message
    assert caught.value.kind == "md5" and caught.value.archive == "a.tar"
    # The SHA-256 computed in the same read, for a custom checksum.
    assert caught.value.sha256 == hashlib.sha256(bad).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_announced_size_mismatch_fails_before_downloading(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA), size=len(DATA) + 1)
    with pytest.raises(
        ChecksumError, match=rf"size mismatch: expected {len(DATA) + 1}, got"
    ) as caught:
        fetch(spec, tmp_path, **FAST)
    assert str(caught.value).startswith(f"{spec.url}: size mismatch")
    assert (caught.value.archive, caught.value.sha256) == ("a.tar", None)
    assert list(tmp_path.iterdir()) == []


def test_404_fails_fast_naming_the_url(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", f"{server.base}/missing/a.tar")
    with pytest.raises(DownloadError, match=re.escape(spec.url)) as caught:
        fetch(spec, tmp_path, **FAST)
    assert "HTTP 404" in str(caught.value)
    assert len(server.requests) == 1  # a missing file does not come back by retrying
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA, status(503), status(503), serve_ranges))
    assert fetch(spec, tmp_path, **FAST).read_bytes() == DATA
    assert server.count("a.tar") == 3


def test_persistent_server_error_gives_up_after_retries(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA, status(500)))
    with pytest.raises(DownloadError, match=r"after 3 attempts.*HTTP Error 500"):
        fetch(spec, tmp_path, retries=2, backoff=0.01, timeout=5)
    assert server.count("a.tar") == 3


def test_rerun_skips_without_request_and_refetches_a_damaged_file(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA))
    path = fetch(spec, tmp_path, **FAST)
    assert is_verified(path, spec)
    hashed = []
    real_digests = download.file_digests
    monkeypatch.setattr(download, "file_digests", lambda *a: hashed.append(a) or real_digests(*a))
    assert fetch(spec, tmp_path, **FAST) == path
    assert server.count("a.tar") == 1
    assert hashed == []  # the marker matched: no multi-GB re-hash
    # Touched but intact: re-hashed, not re-downloaded.
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert not is_verified(path, spec)
    fetch(spec, tmp_path, **FAST)
    assert server.count("a.tar") == 1
    assert is_verified(path, spec)
    # Damaged: downloaded again.
    path.write_bytes(b"\0" * len(DATA))
    assert fetch(spec, tmp_path, **FAST).read_bytes() == DATA
    assert server.count("a.tar") == 2


def test_marker_for_other_checksums_is_not_trusted(server: Server, tmp_path: Path) -> None:
    spec = spec_for("a.tar", server.add("a.tar", DATA))
    path = fetch(spec, tmp_path, **FAST)
    other = ArchiveSpec(name="a.tar", url=spec.url, md5="0" * 32)
    assert not is_verified(path, other)


def test_local_file_is_hard_linked_and_verified(tmp_path: Path) -> None:
    mine = tmp_path / "downloads" / "a.tar"
    mine.parent.mkdir()
    mine.write_bytes(DATA)
    spec = spec_for("a.tar", "http://127.0.0.1:9/never-contacted/a.tar")
    path = fetch(spec, tmp_path / "archives", local_file=mine, **FAST)
    assert path.read_bytes() == DATA
    assert path.stat().st_ino == mine.stat().st_ino
    assert is_verified(path, spec)


@pytest.mark.parametrize("as_url", [False, True])
def test_local_path_url_is_copied_when_linking_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_url: bool
) -> None:
    mine = tmp_path / "mirror" / "a.tar"
    mine.parent.mkdir()
    mine.write_bytes(DATA)

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(download.os, "link", no_link)
    spec = spec_for("a.tar", mine.as_uri() if as_url else str(mine))
    path = fetch(spec, tmp_path / "archives", **FAST)
    assert path.read_bytes() == DATA
    assert path.stat().st_ino != mine.stat().st_ino


def test_local_file_mismatch_keeps_the_users_file(tmp_path: Path) -> None:
    mine = tmp_path / "a.tar"
    mine.write_bytes(DATA[:-1])
    spec = spec_for("a.tar", "http://127.0.0.1:9/a.tar")
    archive_dir = tmp_path / "archives"
    # The error names the user's file, not the internal .part copy.
    with pytest.raises(
        ChecksumError, match=rf"^{re.escape(str(mine))}: size mismatch: expected {len(DATA)}"
    ):
        fetch(spec, archive_dir, local_file=mine)
    assert mine.read_bytes() == DATA[:-1]
    assert list(archive_dir.iterdir()) == []


def test_missing_local_file_is_named(tmp_path: Path) -> None:
    spec = spec_for("a.tar", str(tmp_path / "nowhere" / "a.tar"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/a\.tar"):
        fetch(spec, tmp_path / "archives")


def test_verify_checks_size_then_digests(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"hello")
    verify(path, ArchiveSpec("x.txt", "x", size=5, md5=hashlib.md5(b"hello").hexdigest()))
    with pytest.raises(ChecksumError, match="size mismatch: expected 4, got 5"):
        verify(path, ArchiveSpec("x.txt", "x", size=4))
    with pytest.raises(ChecksumError, match=f"sha256 mismatch: expected {'a' * 64}"):
        verify(path, ArchiveSpec("x.txt", "x", sha256="A" * 64))


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "a/b.tar"},
        {"md5": "xyz"},
        {"sha256": "0" * 32},
        {"size": -1},
        {"extract_to": "../out"},
        {"extract_to": "/abs"},
    ],
)
def test_spec_rejects_bad_values(fields: dict[str, object]) -> None:
    base = {"name": "a.tar", "url": "http://h/a.tar"} | fields
    with pytest.raises(ValueError, match="a"):
        ArchiveSpec(**base)  # type: ignore[arg-type]


def test_official_table_matches_the_spec() -> None:
    assert set(OFFICIAL_ARCHIVES) == {
        "voc2012",
        "sbd",
        "sbd_train_noval",
        "coco_train2014",
        "coco_val2014",
        "coco_annotations2014",
    }
    for spec in OFFICIAL_ARCHIVES.values():
        assert spec.url.rsplit("/", 1)[1] == spec.name
        assert spec.md5 is not None and len(spec.md5) == 32
    assert OFFICIAL_ARCHIVES["voc2012"].size == 1_999_639_040
    assert OFFICIAL_ARCHIVES["sbd"].size is None
    assert OFFICIAL_ARCHIVES["coco_train2014"].md5 == "0da8c0bd3d6becc4dcb32757491aca88"
    extract = {key: spec.extract_to for key, spec in OFFICIAL_ARCHIVES.items()}
    assert extract == {
        "voc2012": "pascal",
        "sbd": "pascal",
        "sbd_train_noval": None,
        "coco_train2014": "coco",
        "coco_val2014": "coco",
        "coco_annotations2014": "coco",
    }


def test_specs_from_manifest_for_urls_and_folders(tmp_path: Path) -> None:
    digest = {"size": 3, "md5": "a" * 32, "sha256": "b" * 64}
    manifest = {"archives": {"benchmark.tgz": digest, "train_noval.txt": digest}}
    specs = specs_from_manifest(manifest, "http://127.0.0.1:8000/gen/")
    assert set(specs) == {"sbd", "sbd_train_noval"}
    assert specs["sbd"].url == "http://127.0.0.1:8000/gen/benchmark.tgz"
    assert specs["sbd"].extract_to == "pascal" and specs["sbd"].size == 3
    assert specs["sbd_train_noval"].extract_to is None
    local = specs_from_manifest(manifest, str(tmp_path))
    assert local["sbd"].url == str(tmp_path / "benchmark.tgz")
    with pytest.raises(ValueError, match=r"'other\.zip'"):
        specs_from_manifest({"archives": {"other.zip": digest}}, str(tmp_path))


def _tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_download_all_fetches_and_extracts_every_archive(server: Server, tmp_path: Path) -> None:
    voc = _tar_bytes({"VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"2007_000033\n"}, "w")
    sbd = _tar_bytes({"benchmark_RELEASE/dataset/train.txt": b"2008_000002\n"}, "w:gz")
    noval = b"2008_000002\n"
    coco = _zip_bytes({"annotations/instances_val2014.json": b"{}"})
    payloads = {
        "VOCtrainval_11-May-2012.tar": voc,
        "benchmark.tgz": sbd,
        "train_noval.txt": noval,
        "annotations_trainval2014.zip": coco,
    }
    manifest = {"archives": {}}
    for name, data in payloads.items():
        digest = {"size": len(data), "md5": hashlib.md5(data).hexdigest()}
        manifest["archives"][name] = digest | {"sha256": hashlib.sha256(data).hexdigest()}
        if name != "benchmark.tgz":  # given as a local file below
            server.add(name, data)
    mine = tmp_path / "benchmark.tgz"
    mine.write_bytes(sbd)
    specs = list(specs_from_manifest(manifest, server.base).values())
    archive_dir, raw = tmp_path / "archives", tmp_path / "raw"
    local = {"benchmark.tgz": mine}
    paths = download_all(specs, archive_dir, raw, local_files=local, **FAST)
    assert [p.name for p in paths] == list(payloads)
    assert (raw / "pascal/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").exists()
    assert (raw / "pascal/benchmark_RELEASE/dataset/train.txt").read_bytes() == b"2008_000002\n"
    assert (raw / "coco/annotations/instances_val2014.json").read_bytes() == b"{}"
    assert (archive_dir / "train_noval.txt").read_bytes() == noval
    assert not (raw / "train_noval.txt").exists()
    assert server.count("benchmark.tgz") == 0
    before = len(server.requests)
    download_all(specs, archive_dir, raw, local_files=local, **FAST)
    assert len(server.requests) == before
    with pytest.raises(ValueError, match=r"typo\.tgz"):
        download_all(specs, archive_dir, raw, local_files={"typo.tgz": mine})


def test_download_all_trusts_a_checksummed_tar_without_end_marker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checksum proves the bytes are the published ones; without one the tar is refused."""
    files = {"VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"2007_000033\n"}
    whole = _tar_bytes(files, "w")
    unended = whole[:1024]  # header and one data block: the member is complete, no end blocks
    source = tmp_path / "VOCtrainval_11-May-2012.tar"
    source.write_bytes(unended)
    checked = spec_for(source.name, str(source), unended, extract_to="pascal")
    download_all([checked], tmp_path / "archives", tmp_path / "raw")
    member = tmp_path / "raw" / "pascal" / next(iter(files))
    assert member.read_bytes() == next(iter(files.values()))
    assert "end-of-archive" in caplog.text
    unchecked = ArchiveSpec(source.name, str(source), extract_to="pascal")
    with pytest.raises(DataError, match="end-of-archive"):
        download_all([unchecked], tmp_path / "archives2", tmp_path / "raw2")
    assert not (tmp_path / "raw2" / "pascal").exists()


def test_full_disk_during_a_copy_names_the_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mirror" / "a.tar"
    mine.parent.mkdir()
    mine.write_bytes(DATA)

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(download.os, "link", no_link)
    fill_disk(monkeypatch, download)
    archive_dir = tmp_path / "archives"
    with pytest.raises(NoSpaceError) as error:
        fetch(spec_for("a.tar", str(mine)), archive_dir, **FAST)
    assert str(error.value).startswith(f"{archive_dir / 'a.tar.part'}: no space left on device")
    assert list(archive_dir.iterdir()) == []


def test_full_disk_during_a_download_is_not_retried_and_keeps_the_part(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("a.tar", DATA)
    fill_disk(monkeypatch, download)
    archive_dir = tmp_path / "archives"
    with pytest.raises(NoSpaceError, match=r"a\.tar\.part: no space left on device"):
        fetch(spec_for("a.tar", url), archive_dir, **FAST)
    assert server.count("a.tar") == 1
    # What arrived is kept: once space is freed, the next run resumes from it.
    assert [p.name for p in archive_dir.iterdir()] == ["a.tar.part"]


def test_marker_holds_the_sha256_in_one_read_and_archive_digest_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine" / "a.tar"
    mine.parent.mkdir()
    mine.write_bytes(DATA)
    # MD5 only, as in the official table: the sha256 the data stage records comes along.
    spec = ArchiveSpec("a.tar", str(mine), md5=hashlib.md5(DATA).hexdigest())
    reads: list[tuple[str, ...]] = []
    real = download.file_digests
    monkeypatch.setattr(download, "file_digests", lambda p, k: reads.append(tuple(k)) or real(p, k))
    path = fetch(spec, tmp_path / "archives")
    assert [sorted(kinds) for kinds in reads] == [["md5", "sha256"]]
    sha256 = hashlib.sha256(DATA).hexdigest()
    assert json.loads(verified_marker(path.parent, spec).read_text())["sha256"] == sha256
    assert archive_digest(path, spec) == sha256
    assert len(reads) == 1  # from the marker
    # Touched: the marker no longer vouches for the file; it is read, and not marked verified.
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert archive_digest(path, spec) == sha256
    assert len(reads) == 2 and not is_verified(path, spec)
    fetch(spec, tmp_path / "archives")  # verifies again, in one read
    assert archive_digest(path, spec) == sha256
    assert len(reads) == 3 and is_verified(path, spec)
    # A marker written before the SHA-256 was recorded gets it on first use, then serves it.
    marker = verified_marker(path.parent, spec)
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"sha256": None}))
    assert archive_digest(path, spec) == sha256
    assert archive_digest(path, spec) == sha256
    assert len(reads) == 4 and is_verified(path, spec)
