"""A real one-node SLURM cluster (slurmctld, slurmd and munge from Debian's packages) configured
and started in a temporary folder, for the tests of training under SLURM.

Needs root (the daemons run as root, without systemd) and the packages ``slurmctld slurmd
slurm-client munge``; ``.ci/run`` installs them.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, Optional, Sequence

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo")


def missing_requirements() -> Optional[str]:
    """Why a cluster cannot be started here, or None."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}; apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """One node, one partition, all CPUs of this machine; jobs may be requeued.

    Args:
        root: an empty folder for the configuration, state, logs and the munge key.
    """

    def __init__(self, root: str):
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = os.path.join(root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self._pid_files = []

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _write_config(self) -> None:
        for folder in ("state", "spool", "log", "munge"):
            os.makedirs(self._path(folder), exist_ok=True)
        os.chmod(self._path("munge"), 0o700)
        with open(self._path("munge", "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(self._path("munge", "munge.key"), 0o400)
        settings = {
            "ClusterName": "rsbtest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self._path('munge', 'munge.sock')}",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "StateSaveLocation": self._path("state"),
            "SlurmdSpoolDir": self._path("spool"),
            "SlurmctldPidFile": self._path("slurmctld.pid"),
            "SlurmdPidFile": self._path("slurmd.pid"),
            "SlurmctldLogFile": self._path("log", "slurmctld.log"),
            "SlurmdLogFile": self._path("log", "slurmd.log"),
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobRequeue": 1,
            "MpiDefault": "none",
            "ReturnToService": 2,
            "MinJobAge": 3600,  # finished jobs stay visible to scontrol show job
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "GresTypes": "gpu",
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines += [
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _run(self, args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60, **kwargs)

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; returns when the node accepts jobs."""
        self._write_config()
        munge = self._path("munge")
        commands = [
            ["munged", "--force", f"--key-file={munge}/munge.key", f"--socket={munge}/munge.sock",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
            ["slurmctld", "-f", self.conf],
            ["slurmd", "-f", self.conf],
        ]
        self._pid_files = [f"{munge}/munged.pid", self._path("slurmctld.pid"), self._path("slurmd.pid")]
        for command in commands:
            result = self._run(command)
            if result.returncode != 0:
                raise RuntimeError(f"{command[0]} did not start: {result.stderr.strip()}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self._run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node did not become idle (state {state!r}): {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for name in ("slurmctld.log", "slurmd.log"):
            with open(self._path("log", name), errors="replace") as f:
                tails.append(f"--- {name} ---\n" + "".join(f.readlines()[-lines:]))
        return "\n".join(tails)

    def stop(self) -> None:
        """Cancel every job and stop the daemons."""
        self._run(["scancel", "--full", "--user=root"])
        for pid_file in reversed(self._pid_files):
            try:
                with open(pid_file) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def sbatch(self, args: Sequence[str], *, cwd: str, env: Optional[Dict[str, str]] = None) -> str:
        """Submit a batch job (``sbatch ARGS``); returns its id."""
        result = subprocess.run(
            ["sbatch", "--parsable", *args], cwd=cwd, env=dict(self.env, **(env or {})),
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(f"sbatch failed: {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def scontrol(self, *args: str) -> str:
        result = self._run(["scontrol", *args])
        if result.returncode != 0:
            raise AssertionError(f"scontrol {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def scancel(self, *args: str) -> None:
        result = self._run(["scancel", *args])
        if result.returncode != 0:
            raise AssertionError(f"scancel {' '.join(args)}: {result.stderr.strip()}")

    def job(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...)."""
        text = self.scontrol("show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))
