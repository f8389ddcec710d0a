"""Atomic writes: nothing at the final path on failure, usual permissions on success."""

from __future__ import annotations

import os
import stat

import pytest

from hdmnet.fileio import atomic_open, file_digest, write_json


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
