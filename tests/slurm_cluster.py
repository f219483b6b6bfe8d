"""A real one-node SLURM cluster (slurmctld, slurmd and munge from Debian's packages) configured
and started in a temporary folder, for the tests of training under SLURM.

Needs root (the daemons run as root, without systemd) and the packages ``slurmctld slurmd
slurm-client munge``; ``.ci/run`` installs them.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, Iterator, List, Optional, Sequence

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo")


def missing_requirements(cluster_class=None) -> Optional[str]:
    """Why a cluster (of ``cluster_class``; by default one node) cannot be started here, or None."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}; apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root"
    tools = getattr(cluster_class, "TOOLS", ())
    if any(shutil.which(tool) is None for tool in tools):
        return f"the two-node cluster needs {', '.join(tools)} (iproute2, util-linux)"
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
        self._client_prefix: List[str] = []  # what runs the client commands where slurmctld is reachable

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _write_config(self) -> None:
        for folder in ("state", "spool", "log", "munge"):
            os.makedirs(self._path(folder), exist_ok=True)
        os.chmod(self._path("munge"), 0o700)
        with open(self._path("munge", "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(self._path("munge", "munge.key"), 0o400)
        lines = [f"{key}={value}" for key, value in self._settings().items()] + self._node_lines()
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _settings(self) -> Dict[str, object]:
        return {
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

    def _node_lines(self) -> List[str]:
        return [
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]

    def _run(self, args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self._client_prefix, *args], env=self.env, capture_output=True, text=True, timeout=60, **kwargs
        )

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; returns when the nodes accept jobs."""
        self._write_config()
        munge = self._path("munge")
        self._start(
            ["munged", "--force", f"--key-file={munge}/munge.key", f"--socket={munge}/munge.sock",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
            f"{munge}/munged.pid",
        )
        self._start_slurm()
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = self._run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
            if len(states) == self.node_count and set(states) <= {"idle", "mixed", "allocated"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM nodes did not become idle (states {states!r}): {self.log_tail()}")

    node_count = 1

    def _start(self, command: Sequence[str], *pid_files: str, name: str = "") -> None:
        self._pid_files += pid_files
        result = subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{name or command[0]} did not start: {result.stderr.strip()}")

    def _start_slurm(self) -> None:
        self._start(["slurmctld", "-f", self.conf], self._path("slurmctld.pid"))
        self._start(["slurmd", "-f", self.conf], self._path("slurmd.pid"))

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for name in sorted(os.listdir(self._path("log"))):
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
            [*self._client_prefix, "sbatch", "--parsable", *args], cwd=cwd, env=dict(self.env, **(env or {})),
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


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class TwoNodeSlurmCluster(SlurmCluster):
    """Two nodes, ``node1`` and ``node2``, each a network namespace of its own joined to the other
    by a veth pair (private addresses that exist only inside them), with its own host name and an
    ``/etc/hosts`` naming both (a UTS and a mount namespace); slurmctld and one slurmd run on
    ``node1``, one slurmd on ``node2``, munge is shared. The jobs' processes live in their node's
    namespaces, as on separate machines; the clients (sbatch, scontrol) run in ``node1``'s network.

    Each node is entered with ``nsenter --net`` and ``unshare --uts --mount``, not ``ip netns exec``:
    that mounts a new /sys, without the cgroup tree that slurmd reads.

    Args:
        root: an empty folder for the configuration, state, logs and the munge key.
    """

    node_count = 2
    TOOLS = ("ip", "nsenter", "unshare")
    SUBNET = "10.213.7"  # private; routed nowhere but between the two namespaces

    def __init__(self, root: str):
        super().__init__(root)
        self._tag = f"rsb{os.getpid() % 100000}"
        self.nodes = ("node1", "node2")
        self.node = self.nodes[0]
        self.namespaces = {node: f"{self._tag}{node}" for node in self.nodes}
        self.addresses = {node: f"{self.SUBNET}.{i + 1}" for i, node in enumerate(self.nodes)}
        # Each node's end of the veth pair: the interface that reaches the other node.
        self.links = {node: f"{self._tag}v{i + 1}" for i, node in enumerate(self.nodes)}
        self._created_namespaces: List[str] = []
        self._client_prefix = self.enter("node1", uts=False)

    def enter(self, node: str, *, uts: bool = True, hosts: Optional[str] = None) -> List[str]:
        """The command prefix that runs a command in ``node``'s network namespace (``uts``: also
        with its host name and /etc/hosts, in namespaces of its own).

        Args:
            node: ``node1`` or ``node2``.
            uts: also enter a UTS and a mount namespace of its own, with the node's host name and
                an /etc/hosts naming both nodes.
            hosts: a file to use as /etc/hosts there instead of the cluster's.
        """
        prefix = ["nsenter", f"--net=/var/run/netns/{self.namespaces[node]}"]
        if not uts:
            return prefix
        hosts = hosts or self._path("hosts")
        setup = f"hostname {node} && mount --bind {hosts} /etc/hosts && exec \"$@\""
        return prefix + ["unshare", "--uts", "--mount", "sh", "-c", setup, node]

    def _settings(self) -> Dict[str, object]:
        settings = super()._settings()
        settings.update(
            SlurmctldHost=f"node1({self.addresses['node1']})",
            SlurmctldPort=6817,  # each node has a network of its own: no port is taken there
            SlurmdPort=6818,
            SlurmdSpoolDir=self._path("spool%n"),
            SlurmdPidFile=self._path("slurmd-%n.pid"),
            SlurmdLogFile=self._path("log", "slurmd-%n.log"),
            KillWait=5,  # a requeued or failed job's frozen processes are killed after 5 s, not 30
        )
        return settings

    def _node_lines(self) -> List[str]:
        return [
            *(f"NodeName={node} NodeAddr={self.addresses[node]} CPUs={os.cpu_count()} State=UNKNOWN"
              for node in self.nodes),
            "PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP",
        ]

    def _start_slurm(self) -> None:
        with open(self._path("hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.addresses.items()))
        for node in self.nodes:
            _ip("netns", "add", self.namespaces[node])
            self._created_namespaces.append(self.namespaces[node])
        first, second = self.nodes
        _ip("link", "add", self.links[first], "netns", self.namespaces[first], "type", "veth",
            "peer", "name", self.links[second], "netns", self.namespaces[second])
        for node in self.nodes:
            namespace = self.namespaces[node]
            _ip("-n", namespace, "addr", "add", f"{self.addresses[node]}/24", "dev", self.links[node])
            _ip("-n", namespace, "link", "set", self.links[node], "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        self._start([*self.enter("node1"), "sh", "-c", f"slurmctld -f {self.conf} && slurmd -N node1 -f {self.conf}"],
                    self._path("slurmctld.pid"), self._path("slurmd-node1.pid"), name="slurm on node1")
        self._start([*self.enter("node2"), "slurmd", "-N", "node2", "-f", self.conf],
                    self._path("slurmd-node2.pid"), name="slurmd on node2")

    @contextlib.contextmanager
    def second_interfaces(self, addresses: Dict[str, str]) -> Iterator[Dict[str, str]]:
        """Give each node a second interface that does not reach the other node, as a management
        network of its own: one end of a veth pair whose other end stays in the same node, with
        ``addresses[node]``/24. With a subnet per node, no node has a route to the other's.
        Removed at the end.

        Args:
            addresses: node -> its address on the second interface (private, in a subnet of its own).

        Yields:
            node -> the name of its second interface.
        """
        names = {node: f"{self._tag}m{i + 1}" for i, node in enumerate(self.nodes)}
        try:
            for node, name in names.items():
                namespace = self.namespaces[node]
                _ip("-n", namespace, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
                _ip("-n", namespace, "addr", "add", f"{addresses[node]}/24", "dev", name)
                for link in (name, f"{name}p"):
                    _ip("-n", namespace, "link", "set", link, "up")
            yield names
        finally:
            for node, name in names.items():  # deleting one end deletes the pair
                subprocess.run(["ip", "-n", self.namespaces[node], "link", "del", name],
                               capture_output=True, timeout=30)

    def processes_on(self, node: str) -> List[int]:
        """The ids of the processes running in ``node``'s network namespace."""
        try:
            namespace = os.stat(f"/var/run/netns/{self.namespaces[node]}").st_ino
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == namespace:
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def stop(self) -> None:
        """Cancel every job, stop the daemons, kill what is left in the nodes, remove the
        namespaces (and with them the veth pair)."""
        try:
            super().stop()
        except (OSError, subprocess.SubprocessError):
            pass
        deadline = time.time() + 10
        while any(self.processes_on(node) for node in self.nodes) and time.time() < deadline:
            time.sleep(0.2)
        for node in self.nodes:
            for pid in self.processes_on(node):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for namespace in self._created_namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self._created_namespaces = []
