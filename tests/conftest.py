"""Shared test settings: tests share two cores, so torch uses one thread per process."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


import pytest


@pytest.fixture(scope="session")
def project_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory, project_root):
    """The embedded data sets generated, downloaded and prepared once per test session, with the
    very functions the CLI runs. Returns the parameters (their paths point into a temp dir)."""
    from hdmnet import layout
    from hdmnet.config import load_params
    from hdmnet.data import stages
    from hdmnet.data.synth import generate, synth_config

    root = tmp_path_factory.mktemp("embedded")
    params = load_params(
        project_root / "params.yaml",
        [
            f"paths.data={root / 'data'}",
            f"paths.results={root / 'results'}",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        ],
    )
    generate(layout.synth_dir(params), synth_config(params.synth))
    for dataset in ("pascal", "coco"):
        stages.download(params, dataset)
        stages.prepare(params, dataset)
    return params


@pytest.fixture(autouse=True)
def pools_for_any_size(monkeypatch):
    """Tests use a handful of masks: let the data stages start real process pools anyway, so
    the parallel code paths are the ones tested (production skips pools for tiny inputs)."""
    monkeypatch.setattr("hdmnet.parallel.MIN_JOBS_PER_WORKER", 1)
