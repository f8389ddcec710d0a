"""The epoch loop's resume guarantees, on a tiny model with a scripted validation curve.

The curve peaks at epoch 1 of 4, so a run interrupted after its best epoch and before its last,
whose declared outputs an orchestrator then deletes (Snakemake does), must still write the best
epoch's weights: no later epoch beats them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hdmnet.config import load_params
from hdmnet.jobs.distributed import DistInfo, EpochSampler
from hdmnet.tracking import Tracker
from hdmnet.train.loop import Loop, conclude, fit
from hdmnet.train.state import seed_everything

ROOT = Path(__file__).resolve().parents[2]
CURVE = [10.0, 50.0, 20.0, 30.0]  # validation mIoU per epoch: best at epoch 1
CELL = {"kind": "pspnet", "dataset": "pascal", "backbone": "small", "fold": 0}


class Interrupted(Exception):
    pass


class Run:
    """One invocation of a training job: fresh model and optimiser, the shared output folder."""

    def __init__(self, out: Path, stop_in_epoch: int | None = None, job: str = "job-a") -> None:
        seed_everything(0)
        self.model = torch.nn.Linear(4, 2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.sampler = EpochSampler(8, seed=0)
        self.data = torch.randn(8, 4)
        self.epoch = 0
        self.steps = 0
        self.stop_in_epoch = stop_in_epoch
        self.params = load_params(ROOT / "params.yaml", ["tracking.enabled=false"])
        self.loop = Loop(
            model=self.model,
            optimizer=self.optimizer,
            loader=self,
            sampler=self.sampler,
            datasets=[self],
            epochs=len(CURVE),
            base_lr=0.1,
            step=self.step,
            validate=lambda: CURVE[self.epoch],
            state_path=out / "state.pth",
            identity={**CELL, "identity": job},
            tracker=Tracker(self.params, "test", "test"),
            info=DistInfo(0, 1, 0, torch.device("cpu")),
            desc="tiny",
        )

    # The loader and the dataset the loop drives.
    def __len__(self) -> int:
        return 2

    def __iter__(self):
        order = list(self.sampler)
        return iter([order[:4], order[4:]])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def step(self, batch: list[int]) -> tuple[float, dict[str, float]]:
        if self.epoch == self.stop_in_epoch:
            raise Interrupted
        self.steps += 1
        loss = self.model(self.data[batch]).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach()), {}

    def finish(self) -> dict:
        history, best = fit(self.loop)
        return conclude(self.loop, history, best, dict(CELL), {"kind": "x"}, self.params, 0.0)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def delete_outputs(out: Path) -> None:
    """What Snakemake does to a failed job's declared outputs."""
    for name in ("best.pth", "last.pth", "record.json"):
        (out / name).unlink(missing_ok=True)


@pytest.fixture
def reference(tmp_path) -> Path:
    out = tmp_path / "reference"
    Run(out).finish()
    return out


def test_a_run_killed_after_its_best_epoch_still_writes_the_best_weights(tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        Run(out, stop_in_epoch=2).finish()
    delete_outputs(out)
    rerun = Run(out)
    record = rerun.finish()
    assert rerun.steps == 2 * 2  # epochs 2 and 3 only
    assert record["best_epoch"] == 1 and record["best_val_miou"] == 50.0
    for name in ("best.pth", "last.pth"):
        ours, ref = weights(out / name), weights(reference / name)
        assert all(torch.equal(ours[k], ref[k]) for k in ref), name
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 1
    assert not (out / "state.pth").exists()  # done: a forced rerun trains afresh


def test_a_finished_training_that_lost_its_final_files_finishes_without_training(
    tmp_path, reference
):
    out = tmp_path / "run"
    first = Run(out)
    fit(first.loop)  # every epoch done and saved; killed before conclude
    delete_outputs(out)
    rerun = Run(out)
    record = rerun.finish()
    assert rerun.steps == 0
    assert [e["val_miou"] for e in record["epochs"]] == CURVE
    ref = weights(reference / "best.pth")
    assert all(torch.equal(weights(out / "best.pth")[k], ref[k]) for k in ref)


def test_a_state_of_another_job_is_set_aside_and_training_starts_afresh(tmp_path, caplog):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        Run(out, stop_in_epoch=2, job="job-b").finish()
    rerun = Run(out, job="job-a")
    record = rerun.finish()
    assert rerun.steps == 4 * 2
    assert len(record["epochs"]) == 4
    assert (out / "state.pth.rejected").exists()
    assert "resume state of another job" in caplog.text and "state.pth.rejected" in caplog.text


def test_a_crafted_state_is_set_aside_unread(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "code-ran"
    (out / "state.pth").write_bytes(_pickle_running(f"touch {marker}"))
    rerun = Run(out)
    rerun.finish()
    assert not marker.exists()
    assert rerun.steps == 4 * 2 and (out / "state.pth.rejected").exists()
    assert json.loads((out / "record.json").read_text())["best_epoch"] == 1


def _pickle_running(command: str) -> bytes:
    import io
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (command,))

    buffer = io.BytesIO()
    torch.save({"format": "hdmnet-train-state", "meta": Payload()}, buffer)
    return buffer.getvalue()


class RecordingTracker:
    """Stands in for an MLflow run: remembers what would be logged."""

    run_id = "fake"

    def __init__(self) -> None:
        self.artifacts: list[tuple[str, str | None]] = []

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append((Path(path).name, artifact_path))


@pytest.mark.parametrize("upload", [False, True])
def test_checkpoints_are_logged_as_artifacts_when_asked(tmp_path, upload):
    run = Run(tmp_path / "run")
    run.params = run.params.with_overrides([f"tracking.upload_checkpoints={str(upload).lower()}"])
    run.loop.tracker = tracker = RecordingTracker()
    run.finish()
    expected = [("record.json", None)]
    if upload:
        expected += [("best.pth", "checkpoints"), ("last.pth", "checkpoints")]
    assert tracker.artifacts == expected


def test_leading_epochs_skip_validation_and_the_best_is_chosen_among_the_rest(tmp_path):
    """The loop's leading ``unvalidated_epochs`` are not validated (their record has no
    val_miou), the training itself is untouched, and the best checkpoint is the best validated
    epoch: with the curve's peak (epoch 1) skipped, epoch 3."""
    every = Run(tmp_path / "every").finish()
    calls: list[int] = []
    run = Run(tmp_path / "skip")
    run.loop.unvalidated_epochs = 2
    run.loop.validate = lambda: calls.append(run.epoch) or CURVE[run.epoch]
    record = run.finish()
    assert calls == [2, 3]
    assert [e.get("val_miou") for e in record["epochs"]] == [None, None, 20.0, 30.0]
    assert record["best_epoch"] == 3 and record["best_val_miou"] == 30.0
    last, ref = weights(tmp_path / "skip" / "last.pth"), weights(tmp_path / "every" / "last.pth")
    assert all(torch.equal(last[k], ref[k]) for k in ref)  # the training is the same
    assert every["best_epoch"] == 1


@pytest.mark.parametrize(
    ("fraction", "epochs", "skipped"), [(0.5, 40, 20), (0.5, 2, 1), (0.0, 40, 0), (0.5, 1, 0)]
)
def test_the_schedules_skipped_fraction_is_whole_leading_epochs(fraction, epochs, skipped):
    params = load_params(
        ROOT / "params.yaml",
        [f"base.pascal.val_skip={fraction}", f"base.pascal.epochs={epochs}"],
    )
    assert params.base.pascal.unvalidated_epochs() == skipped


@pytest.mark.parametrize(
    ("fraction", "shot_epochs", "expected"),
    [(0.4, "{}", (2, 2)), (0.4, "{5: 10}", (2, 4)), (0, "{}", (0, 0))],
)
def test_a_meta_learners_skipped_epochs_follow_its_shots_epoch_count(
    fraction, shot_epochs, expected
):
    params = load_params(
        ROOT / "params.yaml",
        [
            f"meta.pascal.val_skip={fraction}",
            "meta.pascal.epochs=5",
            f"meta.pascal.shot_epochs={shot_epochs}",
        ],
    )
    schedule = params.meta.pascal
    assert (schedule.unvalidated_epochs(1), schedule.unvalidated_epochs(5)) == expected
