"""A results folder that cannot be written is found before any training or evaluation starts,
with one line naming it."""

from __future__ import annotations

import time

import pytest
import yaml

from hdmnet.cli import main

GRID = ["--dataset", "pascal", "--backbone", "small", "--fold", "0"]


@pytest.mark.parametrize(
    "command", [["train-base"], ["train", "--shot", "1"], ["evaluate", "--shot", "1"]]
)
def test_an_unwritable_results_folder_stops_the_job_at_once(
    embedded_data, tmp_path, capsys, command
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the results folder should be")
    params = embedded_data.with_overrides([f"paths.results={blocker / 'results'}"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.to_dict()))
    started = time.perf_counter()
    assert main([command[0], "--params", str(path), *GRID, *command[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write results there" in err
    assert str(blocker) in err and "paths.results" in err
    assert time.perf_counter() - started < 10  # before any data loading or training
