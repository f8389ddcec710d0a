"""Atomic writes: nothing at the final path on failure, usual permissions on success."""

from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from hdmnet import fileio
from hdmnet.fileio import NoSpaceError, atomic_open, file_digest, write_json


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("{broken")
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_written_files_get_umask_permissions_and_digests(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", [1])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    assert file_digest(tmp_path / "x.json", "md5") == "4232a6c5371057ba36dd2628285965e5"


class FullDisk:
    """A file whose writes fail with ``code`` after taking a few bytes (as a full disk does)."""

    def __init__(self, handle: Any, code: int) -> None:
        self.handle, self.code = handle, code

    def write(self, data: Any) -> int:
        self.handle.write(data[:3])
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def fill_disk(monkeypatch: pytest.MonkeyPatch, module: Any, code: int = errno.ENOSPC) -> None:
    """Make every file ``module`` opens for writing fail like a full disk."""
    real_open = open

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle, code) if mode[0] in "wax" else handle

    monkeypatch.setattr(module, "open", full_open, raising=False)


@pytest.mark.parametrize(
    ("code", "says"),
    [(errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "no space left (disk quota")],
)
def test_full_disk_names_the_path_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    target = tmp_path / "results" / "record.json"
    write_json(target, {"old": 1})
    fill_disk(monkeypatch, fileio, code)
    with pytest.raises(NoSpaceError) as error:
        write_json(target, {"new": 2})
    message = str(error.value)
    assert message.startswith(f"{target}: {says}")
    assert "paths.data/paths.results" in message and "\n" not in message
    assert error.value.errno == code and isinstance(error.value, OSError)
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]


def test_other_write_errors_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill_disk(monkeypatch, fileio, errno.EIO)
    with pytest.raises(OSError) as error:
        write_json(tmp_path / "x.json", [1])
    assert not isinstance(error.value, NoSpaceError) and error.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_no_space_error_survives_a_process_pool() -> None:
    # Workers' errors come back pickled: the message must not change on the way.
    error = NoSpaceError(Path("/data/x.png"), errno.ENOSPC)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.errno == errno.ENOSPC
