"""MLflow tracking of every train-base, train and evaluate job.

The default store is a SQLite file under the project (``sqlite:///mlflow.db``); a server URI in
``MLFLOW_TRACKING_URI`` works the same. Several jobs of one pipeline may log into one SQLite file
at once: SQLite allows one writer at a time and MLflow's schema set-up is not safe to race, so
for SQLite stores every write goes through an exclusive file lock beside the database (and is
retried if SQLite still reports contention). Jobs of one pipeline invocation share a parent run
whose id travels in ``HDMNET_PARENT_RUN_ID``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from hdmnet.config import Params

log = logging.getLogger("hdmnet.tracking")
T = TypeVar("T")

PARENT_ENV = "HDMNET_PARENT_RUN_ID"
FLUSH_EVERY = 200  # buffered metric values per database write
MAX_BATCH = 100  # params per log_batch call (MLflow's limit)


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


class Store:
    """An MLflow client plus the cross-process lock that SQLite stores need."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.db = sqlite_path(uri)
        if self.db is not None:
            self.db.parent.mkdir(parents=True, exist_ok=True)
        with self.locked():
            self.client = MlflowClient(tracking_uri=uri)
            # The first query creates and migrates the schema: do it under the lock.
            self.client.search_experiments(max_results=1)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self.db is None:
            yield
            return
        lock_path = self.db.with_name(self.db.name + ".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call under the lock, retrying transient 'database is locked' errors."""
        for attempt in range(8):
            try:
                with self.locked():
                    return fn(*args, **kwargs)
            except Exception as error:
                if "locked" not in str(error) or attempt == 7:
                    raise
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def experiment_id(self, name: str) -> str:
        def get_or_create() -> str:
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            location = None
            if self.db is not None:
                location = (self.db.resolve().parent / "mlartifacts").as_uri()
            return self.client.create_experiment(name, artifact_location=location)

        return self.call(get_or_create)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters -> dotted keys with string values (lists as JSON)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return flat


class GitState(TypedDict):
    git_commit: str | None
    git_dirty: bool | None


def git_state(cwd: Path | None = None) -> GitState:
    """Commit and dirty flag of the working tree, None for both outside a git checkout.

    Records keep these typed values; only MLflow tags, which are strings, spell them as text
    (``_git_tags``). The strings "true"/"false" were once parsed back in several places, and one
    parser took bool("false") for a dirty tree.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def _git_tags() -> dict[str, str]:
    """``git_state`` as MLflow tags: "true"/"false", "unknown" outside a git checkout."""
    state = git_state()
    dirty = state["git_dirty"]
    return {
        "git_commit": state["git_commit"] or "unknown",
        "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
    }


def gpu_type() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


class Tracker:
    """One MLflow run for one job. A no-op when tracking is disabled or on a non-zero DDP rank.

    Use as a context manager: the run ends FINISHED on success and FAILED on an exception.
    """

    def __init__(
        self,
        params: Params,
        stage: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        rank: int = 0,
    ) -> None:
        self.params = params
        self.stage = stage
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.enabled = params.tracking.enabled and rank == 0
        self.store: Store | None = None
        self.run_id: str | None = None
        self._buffer: list[Any] = []

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.entities import Param

        self.store = Store(tracking_uri(self.params))
        experiment = self.store.experiment_id(self.params.tracking.experiment)
        tags = {
            "stage": self.stage,
            "preset": self.params.preset,
            "hostname": platform.node(),
            "gpu_type": gpu_type(),
            **_git_tags(),
            **self.tags,
        }
        parent = os.environ.get(PARENT_ENV)
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.store.call(
            self.store.client.create_run, experiment, run_name=self.run_name, tags=tags
        )
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in sorted(flatten(self.params.to_dict()).items())]
        for start in range(0, len(items), MAX_BATCH):
            batch = items[start : start + MAX_BATCH]
            self.store.call(self.store.client.log_batch, self.run_id, params=batch)
        log.info("MLflow run %s (%s) in %s", self.run_id, self.run_name, self.store.uri)
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer metric values; they reach the store every FLUSH_EVERY values and at the end."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                self._buffer.append(Metric(key, value, now, step or 0))
        if len(self._buffer) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._buffer or self.store is None:
            return
        for start in range(0, len(self._buffer), 1000):
            batch = self._buffer[start : start + 1000]
            self.store.call(self.store.client.log_batch, self.run_id, metrics=batch)
        self._buffer = []

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled or self.store is None:
            return
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self.store.call(self.store.client.log_batch, self.run_id, tags=batch)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        if not self.enabled or self.store is None:
            return
        self.store.call(self.store.client.log_artifact, self.run_id, str(path), artifact_path)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.enabled or self.store is None or self.run_id is None:
            return
        self.flush()
        status = "FINISHED" if exc_type is None else "FAILED"
        if exc_type is KeyboardInterrupt:
            status = "KILLED"
        self.store.call(self.store.client.set_terminated, self.run_id, status)


def start_parent_run(params: Params, name: str) -> str | None:
    """Create the parent run of one pipeline invocation and export its id to child jobs."""
    if not params.tracking.enabled:
        return None
    store = Store(tracking_uri(params))
    experiment = store.experiment_id(params.tracking.experiment)
    tags = {"stage": "pipeline", "preset": params.preset, "hostname": platform.node()}
    tags.update(_git_tags())
    run = store.call(store.client.create_run, experiment, run_name=name, tags=tags)
    os.environ[PARENT_ENV] = run.info.run_id
    return run.info.run_id


def end_parent_run(params: Params, run_id: str | None, ok: bool) -> None:
    if run_id is None:
        return
    store = Store(tracking_uri(params))
    store.call(store.client.set_terminated, run_id, "FINISHED" if ok else "FAILED")
