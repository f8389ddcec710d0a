"""MLflow tracking of every train-base, train and evaluate job, and of each pipeline invocation.

The default store is a SQLite file under the project (``sqlite:///mlflow.db``); a server URI in
``MLFLOW_TRACKING_URI`` works the same. Several jobs of one pipeline may log into one SQLite file
at once: SQLite allows one writer at a time and MLflow's schema set-up is not safe to race, so
for SQLite stores every write goes through an exclusive file lock beside the database (and is
retried if SQLite still reports contention). Jobs of one pipeline invocation share a parent run
whose id travels in ``HDMNET_PARENT_RUN_ID``; Snakemake's ``onstart`` handler creates it
(``hdmnet.pipeline``), ``onsuccess``/``onerror`` attach the tables, figures and report and end it.

Three failures shaped the rest:

- Artifact locations were absolute file URIs (``file:///.../mlartifacts``) stored in the
  database, so a copied checkout wrote its artifacts into the original's folder. Experiments of
  a SQLite store are now created at ``mlflow-artifacts:/<experiment>``, MLflow's location
  relative to an artifact root; for a SQLite store that root is ``mlartifacts/`` beside the
  database, written here directly, and exactly what ``mlflow ui`` / ``mlflow server`` started in
  that folder serve by default. A server store decides its own locations. An experiment made by
  the old code is moved to the portable location on first use.
- A job killed with SIGKILL (out of memory, a cluster's time limit) cannot end its run, which
  stayed RUNNING for good. Runs carry the host and pid (and the process's start time, against
  pid reuse) of their process; every new run first ends the RUNNING runs of this host whose
  process is gone, and a pipeline's parent run, when it ends, those of its children still
  RUNNING (its jobs are all over by then, on any host). They end KILLED, tagged ``ended_by``.
- Per-seed mIoU was logged as a metric with step = the test seed (510, 365, 17...): a chart
  of nothing. Results that are rows are logged as MLflow tables (``log_table``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from hdmnet.config import Params
from hdmnet.fileio import atomic_path

log = logging.getLogger("hdmnet.tracking")
T = TypeVar("T")

PARENT_ENV = "HDMNET_PARENT_RUN_ID"
FLUSH_EVERY = 200  # buffered metric values per database write
MAX_BATCH = 100  # params per log_batch call (MLflow's limit)
PORTABLE = "mlflow-artifacts:"  # artifact locations relative to the artifact root
ARTIFACT_ROOT = "mlartifacts"  # a SQLite store's artifact root, beside the database
LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # the tag MLflow's UI reads tables from
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def portable_location(experiment: str) -> str:
    """Where a SQLite store's experiment keeps its artifacts, relative to the artifact root."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("-.") or "experiment"
    return f"{PORTABLE}/{slug}"


def run_name(stage: str, label: str) -> str:
    """The MLflow run name of a job: its stage and what it works on, e.g. ``train
    pascal-small-full-fold0-shot1-seed321`` or ``train-base pascal-small-fold0-seed321``
    (a base learner's label loses its ``base-`` prefix: the stage says it)."""
    return f"{stage} {label.removeprefix('base-')}"


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

    @property
    def artifact_root(self) -> Path | None:
        """The folder ``mlflow-artifacts:/`` locations mean (SQLite stores only)."""
        return None if self.db is None else self.db.resolve().parent / ARTIFACT_ROOT

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
                if self.db is not None and _legacy_location(found.artifact_location):
                    self._move_to_portable(found.experiment_id, name, found.artifact_location)
                return found.experiment_id
            location = portable_location(name) if self.db is not None else None
            return self.client.create_experiment(name, artifact_location=location)

        return self.call(get_or_create)

    def _move_to_portable(self, experiment_id: str, name: str, old: str) -> None:
        """Point an experiment made by the old code (an absolute ``file://.../mlartifacts``)
        at the portable location; its earlier runs keep their own artifact URIs. MLflow has
        no API to change an experiment's location, so this one row is updated in SQL."""
        assert self.db is not None
        with contextlib.closing(sqlite3.connect(self.db)) as db, db:
            db.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (portable_location(name), int(experiment_id)),
            )
        log.info("experiment %s: artifact location %s -> %s", name, old, portable_location(name))

    def local_artifact_dir(self, artifact_uri: str) -> Path | None:
        """The folder of a ``mlflow-artifacts:`` URI in a SQLite store (None: let MLflow's
        client write it, as for a server or an absolute location)."""
        root = self.artifact_root
        if root is None or not artifact_uri.startswith(PORTABLE):
            return None
        relative = artifact_uri.removeprefix(PORTABLE).lstrip("/")
        parts = Path(relative).parts
        if ".." in parts or Path(relative).is_absolute():
            raise ValueError(f"artifact URI {artifact_uri} leaves the artifact root")
        return root / relative

    def log_artifact(
        self,
        run_id: str,
        artifact_uri: str,
        path: str | os.PathLike[str],
        artifact_path: str | None = None,
    ) -> None:
        """Copy one file into the run's artifacts (under ``artifact_path`` if given)."""
        folder = self.local_artifact_dir(artifact_uri)
        if folder is None:
            self.call(self.client.log_artifact, run_id, str(path), artifact_path)
            return
        target = folder / (artifact_path or "") / Path(path).name
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)

    def terminate(self, run_id: str, status: str, reason: str | None = None) -> None:
        if reason:
            self.call(self.client.set_tag, run_id, "ended_by", reason)
        self.call(self.client.set_terminated, run_id, status)

    def running(self, experiment_id: str, where: str) -> list[Any]:
        """RUNNING runs of the experiment matching the extra filter ``where``."""
        from mlflow.entities import ViewType

        found: list[Any] = []
        token = None
        query = f"attributes.status = 'RUNNING' and {where}"
        while True:
            page = self.call(
                self.client.search_runs,
                [experiment_id],
                filter_string=query,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
            found.extend(page)
            token = page.token
            if not token:
                return found


def _legacy_location(location: str | None) -> bool:
    """The old default: an absolute file URI of a folder named mlartifacts."""
    return bool(location) and location.startswith("file://") and location.endswith("/mlartifacts")


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- processes: whose runs may still be alive --------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None without."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return fields[0], fields[19]


def process_start(pid: int | None = None) -> str:
    """An identifier of the process's start ('' where /proc is missing): with the pid it tells
    a live process from a later one that reuses its pid."""
    stat = _proc_stat(os.getpid() if pid is None else pid)
    return "" if stat is None else stat[1]


def process_alive(pid: int, start: str = "") -> bool:
    """Whether process ``pid`` of this host still runs (and is the one that started at
    ``start``, when given). A zombie (killed, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):
        return False
    return not start or started == start


def process_tags() -> dict[str, str]:
    return {
        "hostname": platform.node(),
        "pid": str(os.getpid()),
        "process_start": process_start(),
    }


def sweep_dead_runs(store: Store, experiment_id: str) -> list[str]:
    """End KILLED the RUNNING runs of this host whose process is gone; returns their ids."""
    host = platform.node()
    ended = []
    for run in store.running(experiment_id, f"tags.hostname = {_quoted(host)}"):
        tags = run.data.tags
        try:
            pid = int(tags["pid"])
        except (KeyError, ValueError):
            continue  # made before runs carried their pid: nothing to go by
        if pid == os.getpid() or process_alive(pid, tags.get("process_start", "")):
            continue
        reason = f"hdmnet: process {pid} on {host} ended without closing this run (killed)"
        store.terminate(run.info.run_id, "KILLED", reason)
        ended.append(run.info.run_id)
    if ended:
        log.warning("MLflow: %d run(s) of killed processes marked KILLED", len(ended))
    return ended


def sweep_children(store: Store, experiment_id: str, parent: str) -> list[str]:
    """End KILLED the children of ``parent`` still RUNNING (called when the pipeline is over,
    so none of its jobs runs any more, on whatever host)."""
    ended = []
    for run in store.running(experiment_id, f"tags.`{PARENT_TAG}` = {_quoted(parent)}"):
        host, pid = run.data.tags.get("hostname", "?"), run.data.tags.get("pid", "?")
        reason = f"hdmnet: the pipeline ended while this job (pid {pid} on {host}) had not"
        store.terminate(run.info.run_id, "KILLED", reason)
        ended.append(run.info.run_id)
    return ended


# -- parameters and provenance ----------------------------------------------------------------


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


def _open_run(store: Store, experiment: str, name: str, tags: Mapping[str, str]) -> Any:
    """Sweep the runs of dead processes of this host, then create a run."""
    try:
        sweep_dead_runs(store, experiment)
    except Exception as error:  # a failed sweep must not stop the job
        log.warning("MLflow: could not check for runs of killed jobs: %s", error)
    return store.call(store.client.create_run, experiment, run_name=name, tags=dict(tags))


class Tracker:
    """One MLflow run for one job. A no-op when tracking is disabled or on a non-zero DDP rank.

    Use as a context manager: the run ends FINISHED on success, FAILED on an exception, KILLED
    on Ctrl-C. The run is named ``run_name(stage, label)``.
    """

    def __init__(
        self,
        params: Params,
        stage: str,
        label: str,
        tags: Mapping[str, Any] | None = None,
        rank: int = 0,
    ) -> None:
        self.params = params
        self.stage = stage
        self.run_name = run_name(stage, label)
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.enabled = params.tracking.enabled and rank == 0
        self.store: Store | None = None
        self.run_id: str | None = None
        self.artifact_uri = ""
        self._buffer: list[Any] = []
        self._tables: list[dict[str, str]] = []

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.entities import Param

        self.store = Store(tracking_uri(self.params))
        experiment = self.store.experiment_id(self.params.tracking.experiment)
        tags = {
            "stage": self.stage,
            "preset": self.params.preset,
            "gpu_type": gpu_type(),
            **process_tags(),
            **_git_tags(),
            **self.tags,
        }
        parent = os.environ.get(PARENT_ENV)
        if parent:
            tags[PARENT_TAG] = parent
        run = _open_run(self.store, experiment, self.run_name, tags)
        self.run_id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri
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
        if not self.enabled or self.store is None or self.run_id is None:
            return
        self.store.log_artifact(self.run_id, self.artifact_uri, path, artifact_path)

    def log_table(self, artifact_file: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows as an MLflow table: a JSON artifact in MLflow's table format (pandas "split"
        orientation), listed in the run's ``mlflow.loggedArtifacts`` tag as ``log_table`` does,
        so the UI shows it and ``MlflowClient.load_table`` reads it."""
        if not self.enabled or self.store is None or self.run_id is None:
            return
        import pandas as pd

        if not artifact_file.endswith(".json") or "/" in artifact_file:
            raise ValueError(f"table artifact {artifact_file!r}: use a plain name ending .json")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / artifact_file
            pd.DataFrame(list(rows)).to_json(path, orient="split", index=False)
            self.log_artifact(path)
        entry = {"path": artifact_file, "type": "table"}
        if entry not in self._tables:
            self._tables.append(entry)
        self.set_tags({LOGGED_ARTIFACTS: json.dumps(self._tables)})

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.enabled or self.store is None or self.run_id is None:
            return
        self.flush()
        status = "FINISHED" if exc_type is None else "FAILED"
        if exc_type is KeyboardInterrupt:
            status = "KILLED"
        self.store.call(self.store.client.set_terminated, self.run_id, status)


# -- the parent run of a pipeline invocation --------------------------------------------------


def start_parent_run(params: Params, name: str) -> str | None:
    """Create the parent run of one pipeline invocation and export its id to child jobs."""
    if not params.tracking.enabled:
        return None
    store = Store(tracking_uri(params))
    experiment = store.experiment_id(params.tracking.experiment)
    tags = {"stage": "pipeline", "preset": params.preset, **process_tags(), **_git_tags()}
    run = _open_run(store, experiment, name, tags)
    os.environ[PARENT_ENV] = run.info.run_id
    return run.info.run_id


def end_parent_run(
    params: Params,
    run_id: str | None,
    ok: bool,
    artifacts: Mapping[str, Iterable[Path]] | None = None,
) -> None:
    """Attach ``artifacts`` (artifact folder -> files) to the parent run, end KILLED its
    children still RUNNING, and end it FINISHED (``ok``) or FAILED."""
    if run_id is None:
        return
    store = Store(tracking_uri(params))
    try:
        run = store.call(store.client.get_run, run_id)
        for folder, paths in (artifacts or {}).items():
            for path in paths:
                store.log_artifact(run_id, run.info.artifact_uri, path, folder)
        ended = sweep_children(store, run.info.experiment_id, run_id)
        if ended:
            log.warning("MLflow: %d job run(s) of this pipeline had not ended: KILLED", len(ended))
    finally:  # the results stand even if an upload failed: the run must not stay RUNNING
        store.call(store.client.set_terminated, run_id, "FINISHED" if ok else "FAILED")
