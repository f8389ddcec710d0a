"""A throw-away one-node SLURM cluster on localhost, for testing the SLURM profile for real.

Runs as root with Debian's slurm-wlm and munge (scripts/ensure_test_tools.sh installs them).
Everything the cluster writes (state, spool, pid and log files) lives in one folder. The config
must sit at the default path, /etc/slurm/slurm.conf: the Snakemake jobstep executor strips
``SLURM_CONF`` from the environment before its ``srun``. It is written there only while the
cluster runs and removed by ``stop`` (a SLURM client finding a config whose controller is gone
waits ~10 s on every call, and Snakemake's SLURM plugin asks on every start). A machine that
already has a /etc/slurm/slurm.conf is a real SLURM node: the cluster refuses to touch it.
Daemons it starts it also stops; a munged that was already running is used and left running.

``LocalSlurm.start`` raises ``ClusterUnavailable`` with the reason (and the daemons' log tails)
when the cluster cannot come up, so a test can skip saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
MUNGED = "/usr/sbin/munged"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
#: First line of the config this module writes: a leftover of a killed test run may be replaced.
MARKER = "# throw-away test cluster of hdmnet's tests/workflow/local_slurm.py"


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run on this machine; the message says why."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"({path.name}: no log)"
    return f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class LocalSlurm:
    """``with LocalSlurm(folder) as cluster:`` runs commands against a fresh cluster."""

    def __init__(self, folder: Path, cpus: int = 2, memory_mb: int = 16000) -> None:
        self.folder = Path(folder)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.conf = SYSTEM_CONF
        self._wrote_conf = False
        self._started: list[tuple[str, Path]] = []  # (daemon, pid file) we must stop
        self._munged_pid: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (sbatch, squeue, Snakemake's executor)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 40.0) -> None:
        missing = [tool for tool in (SLURMCTLD, SLURMD, MUNGED) if not os.access(tool, os.X_OK)]
        if missing:
            raise ClusterUnavailable(
                f"{', '.join(missing)} not installed (scripts/ensure_test_tools.sh installs "
                "slurm-wlm and munge when run as root)"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable("a local SLURM cluster needs root (slurmd runs jobs as root)")
        if self.conf.exists() and not self.conf.read_text().startswith(MARKER):
            raise ClusterUnavailable(f"{self.conf} exists: this machine has its own SLURM setup")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ensure_munge()
        self._write_conf()
        for daemon, extra in ((SLURMCTLD, []), (SLURMD, ["-N", "localhost"])):
            name = Path(daemon).name
            done = subprocess.run(
                [daemon, "-f", str(self.conf), *extra], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise ClusterUnavailable(
                    f"{name} did not start ({done.returncode}): {done.stderr.strip()}\n"
                    + _tail(self.folder / f"{name}.log")
                )
            self._started.append((name, self.folder / f"{name}.pid"))
        self._wait_idle(timeout)

    def _ensure_munge(self) -> None:
        probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True)
        if probe.returncode == 0:
            return  # a munged is already serving the default socket
        if not MUNGE_KEY.exists():
            created = subprocess.run(["mungekey", "--create"], capture_output=True, text=True)
            if created.returncode != 0:
                raise ClusterUnavailable(f"no {MUNGE_KEY} and mungekey failed: {created.stderr}")
            shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_KEY.chmod(0o400)
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
        pid_file = MUNGE_SOCKET_DIR / "munged.pid"
        done = subprocess.run(
            ["runuser", "-u", "munge", "--", MUNGED], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise ClusterUnavailable(f"munged did not start: {done.stderr.strip()}")
        if pid_file.exists():
            self._munged_pid = int(pid_file.read_text().split()[0])
        probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
        if probe.returncode != 0:
            raise ClusterUnavailable(f"munge does not work: {probe.stderr.strip()}")

    def _write_conf(self) -> None:
        d = self.folder
        for sub in ("ctld", "spool"):
            (d / sub).mkdir(exist_ok=True)
        lines = {
            "ClusterName": "hdmnet-test",
            "SlurmctldHost": "localhost",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "StateSaveLocation": d / "ctld",
            "SlurmdSpoolDir": d / "spool",
            "SlurmctldPidFile": d / "slurmctld.pid",
            "SlurmdPidFile": d / "slurmd.pid",
            "SlurmctldLogFile": d / "slurmctld.log",
            "SlurmdLogFile": d / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "SchedulerType": "sched/backfill",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "MpiDefault": "none",
            "ReturnToService": 2,
            # Finished jobs stay visible to squeue this long; the executor's status checks need it.
            "MinJobAge": 300,
        }
        text = MARKER + "\n" + "".join(f"{key}={value}\n" for key, value in lines.items())
        text += (
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN\n"
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n"
        )
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self._wrote_conf = True
        self.conf.write_text(text)

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            state = (done.stdout or done.stderr).strip()
            if done.returncode == 0 and state.startswith("idle"):
                return
            time.sleep(0.5)
        raise ClusterUnavailable(
            f"the node did not become idle within {timeout:.0f} s (last state: {state!r})\n"
            + _tail(self.folder / "slurmctld.log")
            + "\n"
            + _tail(self.folder / "slurmd.log")
        )

    def stop(self) -> None:
        """Stop the daemons this cluster started (slurmd first), waiting until they are gone."""
        pids = []
        for _name, pid_file in reversed(self._started):
            if pid_file.exists():
                pids.append(int(pid_file.read_text().split()[0]))
        if self._munged_pid:
            pids.append(self._munged_pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._started.clear()
        self._munged_pid = None
        if self._wrote_conf:
            self.conf.unlink(missing_ok=True)
            self._wrote_conf = False
