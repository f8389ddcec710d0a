"""The main job: what the workflow must produce, the resolved parameters its jobs read, and
running it through Snakemake.

Jobs read the merged configuration (params.yaml, ``--configfile``, ``--config``) from a file
named by its content's digest (``resolved_params_file``). Snakemake's ``onstart`` handler writes
it, so it is written only by a run that holds Snakemake's lock, never at parse time or by a dry
run, and another invocation with other parameters writes another file: nothing can change the
parameters of a running pipeline. (Which jobs rerun is decided by the job identities in
``hdmnet.identity``; the file's name is not part of any rule, so it triggers no rerun.)

Every Snakemake invocation that runs jobs (``hdmnet demo``, ``snakemake --profile ...``, a
cluster profile) is one MLflow parent run: ``onstart`` starts it (``workflow_started``) and
its id reaches every job through the environment; ``onsuccess``/``onerror`` attach the tables,
figures and report that the invocation wrote and end it (``workflow_finished``). An invocation
with nothing to do runs no handler and makes no run.

DVC runs the same stage graph (dvc.yaml) but knows only what dvc.lock records: after a Snakemake
run without it, ``dvc status`` lists every stage as changed and ``dvc repro`` would redo them.
``hdmnet demo`` therefore records a successful run in dvc.lock (``record_in_dvc``: ``dvc
commit``, which also moves the outputs into DVC's cache, so that ``dvc exp run`` can check them
out). .dvc/config links cached files back by hardlink, keeping each file's inode and mtime: with
the default copy, the committed outputs got new mtimes and Snakemake then reran the report.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hdmnet import layout
from hdmnet.config import Params, overrides_mapping, resolve_params
from hdmnet.fileio import write_text
from hdmnet.tracking import end_parent_run, start_parent_run

RESOLVED_DIR = Path(".snakemake/hdmnet-params")
RESOLVED_ENV = "HDMNET_RESOLVED_PARAMS"  # the workflow's shell commands read the file's name here
INCOMPLETE_DIR = Path(".snakemake/incomplete")
OVERRIDES_DIR = Path(".snakemake/hdmnet-overrides")
DVC_LOCK = Path("dvc.lock")
# The parent run this process started (Snakemake's onstart) and when: onsuccess/onerror end it.
_PARENT: dict[str, Any] = {}


def resolved_params_text(params: Params) -> str:
    return yaml.safe_dump(params.to_dict(), sort_keys=True)


def resolved_params_file(params: Params) -> Path:
    """Where the jobs of a pipeline with these parameters read them (relative to the project)."""
    digest = hashlib.sha256(resolved_params_text(params).encode()).hexdigest()[:16]
    return RESOLVED_DIR / f"{digest}.yaml"


def write_resolved_params(params: Params) -> Path:
    """Write the resolved parameters (once: the name is the content's digest)."""
    path = resolved_params_file(params)
    if not path.exists():
        write_text(path, resolved_params_text(params))
    return path


def write_overrides(overrides: list[str]) -> Path:
    """``key=value`` overrides as a config file for Snakemake's ``--configfile`` (named by its
    content's digest, so that concurrent invocations never share one)."""
    text = yaml.safe_dump(overrides_mapping(overrides), sort_keys=True)
    path = OVERRIDES_DIR / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        write_text(path, text)
    return path


def final_targets(params: Params) -> list[str]:
    """What ``rule all`` (and ``dvc repro``) must produce."""
    targets = [str(layout.metrics_file(params, run)) for run in layout.all_runs(params)]
    targets += [str(layout.tables_dir(params) / "main.md"), str(layout.report_file(params))]
    return targets


def run_workflow(
    files: list[Path],
    overrides: list[str],
    cores: int,
    profile: str = "workflow/profiles/default",
) -> int:
    """Run the Snakemake workflow (the main job) on params.yaml with ``files`` and ``key=value``
    ``overrides`` layered over it (as ``resolve_params`` layers them); returns Snakemake's exit
    code.

    When there is work to do, the jobs of this invocation share one MLflow parent run (made by
    the workflow's onstart handler), and a successful run is recorded in dvc.lock
    (``record_in_dvc``). A second run with nothing to do only asks Snakemake and returns (and
    records the results in DVC if dvc.lock does not exist yet).
    """
    env = dict(os.environ)
    # Rules call `hdmnet`: make the interpreter's bin folder (the venv) visible to them.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # An interrupted run (Ctrl-C, a killed job) leaves incomplete outputs: rerun those jobs.
    command = [sys.executable, "-m", "snakemake", "--profile", profile, "--cores", str(cores)]
    command.append("--rerun-incomplete")
    for path in files:
        command += ["--configfile", str(path)]
    if overrides:
        command += ["--configfile", str(write_overrides(overrides))]
    dry = subprocess.run(
        [*command, "--dry-run", "--quiet", "rules"], env=env, capture_output=True, text=True
    )
    if dry.returncode != 0:
        sys.stderr.write(dry.stdout + dry.stderr)
        return dry.returncode
    if "Nothing to be done" in dry.stdout + dry.stderr or not dry.stdout.strip():
        if not DVC_LOCK.exists():
            record_in_dvc(files, overrides)
        return 0
    if INCOMPLETE_DIR.is_dir() and any(INCOMPLETE_DIR.iterdir()):
        print(
            "hdmnet demo: continuing an interrupted run; its unfinished jobs run again",
            file=sys.stderr,
        )
    code = subprocess.call(command, env=env)
    if code == 0:
        record_in_dvc(files, overrides)
    return code


def record_in_dvc(files: list[Path], overrides: list[str]) -> bool:
    """Record the results of a finished run in dvc.lock (``dvc commit``), so that ``dvc status``
    is clean and ``dvc repro`` has nothing to do. Only in a DVC project and only for the
    parameters of params.yaml itself: DVC compares each stage's parameters with params.yaml, so
    a run with other values (``--params``, ``-s``) would be recorded under values it did not
    use. Prints what it did or why not; a failure is a warning, the run stays a success.
    Returns whether dvc.lock was written."""
    if not (Path("dvc.yaml").is_file() and Path(".dvc").is_dir()):
        return False
    if resolve_params(files, overrides).to_dict() != resolve_params().to_dict():
        print(
            "hdmnet demo: dvc.lock not updated: this run's parameters differ from params.yaml, "
            "which is what DVC compares with (`dvc status` lists the changed stages; `dvc exp "
            "run -S KEY=VALUE` runs an override under DVC)",
            file=sys.stderr,
        )
        return False
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "--quiet"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(
            f"hdmnet demo: warning: `dvc commit` failed, dvc.lock not updated:\n"
            f"{(done.stdout + done.stderr).strip()}\n(`python -m hdmnet.dvc_params --check` "
            "checks params.yaml and dvc.yaml; then `dvc commit -f` records the results)",
            file=sys.stderr,
        )
        return False
    print(f"hdmnet demo: results recorded in {DVC_LOCK} for DVC (dvc commit, {seconds:.1f} s)")
    return True


def workflow_started(params: Params) -> str | None:
    """Snakemake's ``onstart``: start the invocation's MLflow parent run (its id goes to the
    jobs through the environment); returns it, None with tracking off."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    started = time.time()
    run_id = start_parent_run(params, f"pipeline {params.preset} {stamp}")
    _PARENT.update(run_id=run_id, started=started)
    return run_id


def workflow_finished(params: Params, ok: bool) -> None:
    """Snakemake's ``onsuccess`` (``ok``) and ``onerror``: attach the tables, figures and report
    written since the parent run started, and end it (and any job run left RUNNING)."""
    run_id, started = _PARENT.pop("run_id", None), _PARENT.pop("started", 0.0)
    if run_id is None:
        return
    end_parent_run(params, run_id, ok, artifacts=written_outputs(params, started))


def written_outputs(params: Params, since: float) -> dict[str, list[Path]]:
    """The tables, figures and report modified at or after ``since`` (epoch seconds), by the
    artifact folder they go to."""
    found = {
        "tables": _files(layout.tables_dir(params)),
        "figures": _files(layout.figures_dir(params)),
        "report": [layout.report_file(params)],
    }
    return {
        folder: [p for p in paths if p.is_file() and p.stat().st_mtime >= since]
        for folder, paths in found.items()
    }


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
