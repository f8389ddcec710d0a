"""Fixtures of the report tests: a small grid of hand-made records in a temporary results dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.report.fixtures_records import default_params, paper_params, write_grid

from hdmnet.config import Params


@pytest.fixture
def default_grid(project_root: Path, tmp_path: Path) -> Params:
    params = default_params(project_root, tmp_path)
    write_grid(params)
    return params


@pytest.fixture
def paper_grid(project_root: Path, tmp_path: Path) -> Params:
    params = paper_params(project_root, tmp_path)
    write_grid(params)
    return params
