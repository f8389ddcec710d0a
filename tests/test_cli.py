"""The command line: every stage is listed, has --help, and unbuilt stages refuse to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hdmnet import cli

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["download", "prepare", "train-base", "train", "evaluate", "aggregate", "report", "synth"]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdmnet.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def test_help_lists_every_stage():
    result = run_cli("--help")
    assert result.returncode == 0
    for stage in [*STAGES, "demo", "config"]:
        assert stage in result.stdout


@pytest.mark.parametrize("stage", [*STAGES, "demo", "config"])
def test_each_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, "--help"])
    assert exit_info.value.code == 0
    assert "--params" in capsys.readouterr().out


@pytest.mark.parametrize("stage", sorted(cli.STAGES_TO_COME))
def test_unbuilt_stages_fail_loudly(stage, capsys):
    if stage in cli.COMMANDS:
        pytest.skip(f"{stage} is built")
    argv = {"prepare": ["prepare", "pascal"]}.get(stage, [stage])
    if stage in {"train-base", "train", "evaluate"}:
        argv += ["--dataset", "pascal", "--backbone", "small", "--fold", "0"]
        argv += [] if stage == "train-base" else ["--shot", "1"]
    assert cli.main(argv) == 2
    assert "not built yet" in capsys.readouterr().err


def test_config_prints_resolved_params_and_rejects_bad_overrides():
    good = run_cli("config", "-s", "meta.pascal.epochs=2", "--variant", "stages_2")
    assert good.returncode == 0
    assert "epochs: 2" in good.stdout and "stages: 2" in good.stdout
    bad = run_cli("config", "-s", "grid.folds=[4]")
    assert bad.returncode == 2
    assert "grid.folds.0" in bad.stderr
