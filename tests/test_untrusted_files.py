"""Nothing the project reads back from disk can run code: a crafted pickle placed as a
checkpoint, or a YAML tag in a parameter file, is refused with a one-line error naming the file,
and the code in it never runs. (Resume states: tests/train/test_state.py and test_loop.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from hdmnet import layout
from hdmnet.cli import main
from hdmnet.config import ParamsError, load_params
from hdmnet.layout import BaseRun, Run

GRID = ["--dataset", "pascal", "--backbone", "small", "--fold", "0"]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(path: Path, marker: Path) -> Path:
    """A file that runs ``touch marker`` when unpickled, shaped like a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "hdmnet-checkpoint", "state_dict": {}, "meta": Payload(marker)}, path)
    return path


@pytest.fixture
def params_file(embedded_data, tmp_path) -> Path:
    params = embedded_data.with_overrides(
        [f"paths.results={tmp_path / 'results'}", "tracking.enabled=false"]
    )
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.to_dict()))
    return path


def test_a_yaml_tag_in_a_parameter_file_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "params.yaml"
    path.write_text(f"preset: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML"):
        load_params(path)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["meta checkpoint", "base checkpoint", "imported base"])
def test_a_crafted_checkpoint_is_refused_unread(params_file, tmp_path, capsys, where):
    params = load_params(params_file)
    marker = tmp_path / "code-ran"
    run = Run("pascal", "small", "full", 0, 1, 321)
    common = ["--params", str(params_file), *GRID]
    if where == "meta checkpoint":
        path = crafted(layout.meta_checkpoint(params, run), marker)
        code = main(["evaluate", *common, "--shot", "1"])
    elif where == "base checkpoint":
        path = crafted(layout.base_checkpoint(params, BaseRun("pascal", "small", 0, 321)), marker)
        code = main(["train", *common, "--shot", "1"])
    else:
        path = crafted(tmp_path / "downloaded.pth", marker)
        code = main(["import-base", str(path), *common])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1, err
    assert "cannot read checkpoint" in err
    assert not marker.exists()
