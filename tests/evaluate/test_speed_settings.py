"""``model.bf16`` and ``model.channels_last`` reach the jobs' models.

The meta learner trained once per session (``trained_setup``) is evaluated again with each
setting, as an external checkpoint so that the evaluation runs although the settings are not
the ones it was trained with: bf16 moves the numbers a little (the frozen encoder computes in
bfloat16), channels_last moves none of the predictions (a memory layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.evaluate.test_evaluator import NUMBERS
from tests.train.test_engines import RUN, Trained, trained_setup

from hdmnet import identity
from hdmnet.config import Params

# A shorter protocol than the session's: one seed of 24 episodes.
SHORT = ["eval.seeds=[510]", "meta.pascal.test_episodes=24", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def trained(embedded_data) -> Trained:
    return trained_setup(embedded_data)


def settings(trained: Trained, *overrides: str) -> Params:
    return trained.params.with_overrides([*SHORT, *overrides])


def numbers(record: dict) -> str:
    return json.dumps({k: record[k] for k in NUMBERS}, sort_keys=True)


def test_bf16_changes_the_numbers_a_little_and_channels_last_none(trained, tmp_path):
    from hdmnet.evaluate.evaluator import External, evaluate

    checkpoint = External("speed", Path(trained.meta["checkpoints"]["best"]["path"]))
    records = {
        name: evaluate(settings(trained, *extra), RUN, checkpoint, out=tmp_path / f"{name}.json")
        for name, extra in [
            ("fp32", []),
            ("bf16", ["model.bf16=true"]),
            ("channels_last", ["model.channels_last=true"]),
        ]
    }
    fp32, bf16, channels_last = records["fp32"], records["bf16"], records["channels_last"]
    # As JSON: a base class no episode shows has IoU NaN, and NaN != NaN.
    assert numbers(channels_last) == numbers(fp32)
    assert numbers(bf16) != numbers(fp32)
    assert bf16["config"]["model"]["bf16"] and not fp32["config"]["model"]["bf16"]
    for name in ("final", "meta"):
        close = pytest.approx(fp32["outputs"][name]["miou"], abs=2.0)
        assert bf16["outputs"][name]["miou"] == close


def test_bf16_predictions_agree_with_float32_but_are_computed_differently(trained):
    from hdmnet.evaluate.examples import episode_views

    views = {
        name: episode_views(settings(trained, *extra), RUN, 12)
        for name, extra in [
            ("fp32", []),
            ("bf16", ["model.bf16=true"]),
            ("channels_last", ["model.channels_last=true"]),
        ]
    }
    fp32, bf16, channels_last = views["fp32"], views["bf16"], views["channels_last"]
    pixels = sum(v.prediction.size for v in fp32)
    agree = sum(int((a.prediction == b.prediction).sum()) for a, b in zip(fp32, bf16, strict=True))
    assert agree / pixels >= 0.98
    # The correlation maps come out of the matching module: bf16 features change their bits.
    assert any(
        not np.array_equal(a, b)
        for x, y in zip(fp32, bf16, strict=True)
        for a, b in zip(x.correlations, y.correlations, strict=True)
    )
    for a, b in zip(fp32, channels_last, strict=True):
        assert np.array_equal(a.prediction, b.prediction)
        assert all(
            np.allclose(p, q, atol=1e-5)
            for p, q in zip(a.correlations, b.correlations, strict=True)
        )


def test_bf16_is_part_of_the_job_identities_and_channels_last_is_not(trained):
    plain = trained.params
    bf16 = plain.with_overrides(["model.bf16=true"])
    channels_last = plain.with_overrides(["model.channels_last=true"])
    for job in (identity.meta_learner, identity.evaluation):
        assert job(bf16, RUN) != job(plain, RUN) == job(channels_last, RUN)
    assert identity.base_learner(bf16, RUN.base) != identity.base_learner(plain, RUN.base)
