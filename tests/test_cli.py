"""The command line: every stage is listed and has --help; bad overrides fail cleanly."""

from __future__ import annotations

import re
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


def test_config_prints_resolved_params_and_rejects_bad_overrides():
    good = run_cli("config", "-s", "meta.pascal.epochs=2", "--variant", "stages_2")
    assert good.returncode == 0
    assert "epochs: 2" in good.stdout and "stages: 2" in good.stdout
    bad = run_cli("config", "-s", "grid.folds=[4]")
    assert bad.returncode == 2
    assert "grid.folds.0" in bad.stderr


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    """Every HdmnetError is one line (exit 2); any other exception is a bug and propagates."""
    from hdmnet import cli
    from hdmnet.errors import StageError

    def fails_with(error):
        def handler(args):
            raise error

        return handler

    monkeypatch.setitem(cli.COMMANDS, "config", fails_with(StageError("x.pth: not found")))
    assert cli.main(["config"]) == 2
    assert capsys.readouterr().err == "hdmnet config: error: x.pth: not found\n"
    for bug in (
        ValueError("shape mismatch"),
        RuntimeError("CUDA out of memory"),
        OSError(5, "I/O"),
    ):
        monkeypatch.setitem(cli.COMMANDS, "config", fails_with(bug))
        with pytest.raises(type(bug)):
            cli.main(["config"])


def test_demo_takes_files_and_key_value_overrides_like_every_stage(tmp_path, monkeypatch):
    """hdmnet demo -s KEY=VALUE reaches Snakemake as a config file layered after --params."""
    import yaml

    from hdmnet import pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "extra.yaml").write_text("meta:\n  pascal:\n    lr: 0.002\n")
    calls = []

    class Done:
        returncode, stdout, stderr = 0, "Nothing to be done", ""

    monkeypatch.setattr(pipeline.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done)
    code = cli.main(["demo", "--params", "extra.yaml", "-s", "meta.pascal.epochs=6"])
    assert code == 0
    command = calls[0]
    files = [command[i + 1] for i, arg in enumerate(command) if arg == "--configfile"]
    assert files[0] == "extra.yaml"
    assert yaml.safe_load(Path(files[1]).read_text()) == {"meta": {"pascal": {"epochs": 6}}}
    # A bad key is refused before Snakemake starts.
    calls.clear()
    assert cli.main(["demo", "-s", "meta.pascal.epochz=6"]) == 2
    assert calls == []


PAPER_CELL = ["--dataset", "coco", "--backbone", "resnet50", "--fold", "0"]


@pytest.mark.parametrize("stage", ["train-base", "train"])
def test_the_no_gpu_error_says_how_to_train_on_the_cpu(stage, monkeypatch, capsys):
    """The paper preset asks for 4 GPUs: on a machine without any the stage stops before any
    work, saying the override that runs it on the CPU."""
    from hdmnet import launch

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(launch, "visible_gpu_count", lambda: 0)
    shot = ["--shot", "1"] if stage == "train" else []
    assert cli.main([stage, "--params", "presets/paper.yaml", *PAPER_CELL, *shot]) == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert "needs 4 GPUs but the machine has 0" in err and "-s train.gpus=0" in err


def test_missing_prepared_data_suggests_commands_with_the_given_parameters(monkeypatch, tmp_path):
    """A job started before its data was prepared names the commands that make it, with the
    --params and -s it was given (pasting them must not prepare the default preset's data)."""
    from hdmnet.config import resolve_params
    from hdmnet.errors import StageError
    from hdmnet.jobs.inputs import dataset_root, fold_folder

    monkeypatch.chdir(ROOT)
    params = resolve_params(["presets/paper.yaml"], [f"paths.data={tmp_path}"])
    given = f"--params presets/paper.yaml -s paths.data={tmp_path}"
    with pytest.raises(StageError) as missing:
        dataset_root(params, "coco")
    assert f"hdmnet download {given} --dataset coco && hdmnet prepare {given} coco" in str(
        missing.value
    )
    with pytest.raises(StageError, match=f"run hdmnet prepare {re.escape(given)} coco"):
        fold_folder(params, "coco", 0)


def test_suggested_commands_keep_the_given_parameter_files_and_overrides(monkeypatch):
    """Pasting a command an error suggests runs with the same parameters, not the default
    preset: every suggestion carries the --params and -s it was given, in order."""
    from hdmnet import commands
    from hdmnet.config import resolve_params
    from hdmnet.layout import Run

    monkeypatch.chdir(ROOT)
    params = resolve_params(["presets/paper.yaml"], ["train.gpus=0"])
    given = "--params presets/paper.yaml -s train.gpus=0"
    run = Run("coco", "resnet50", "full", 0, 1, 321)
    cell = "--dataset coco --backbone resnet50 --fold 0"
    suggested = {
        commands.synth(params): f"hdmnet synth {given}",
        commands.download("coco", params): f"hdmnet download {given} --dataset coco",
        commands.prepare("coco", params): f"hdmnet prepare {given} coco",
        commands.train_base(run.base, params): f"hdmnet train-base {given} {cell} --seed 321",
    }
    for stage in ("train", "evaluate"):
        cells = f"{cell} --shot 1 --variant full --seed 321"
        suggested[getattr(commands, stage)(run, params)] = f"hdmnet {stage} {given} {cells}"
    for command, expected in suggested.items():
        assert command == expected
        args = cli.build_parser().parse_args(command.split()[1:])  # and it parses
        assert args.params == [Path("presets/paper.yaml")] and args.overrides == ["train.gpus=0"]
