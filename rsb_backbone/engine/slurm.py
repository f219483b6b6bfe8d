"""Training inside a SLURM job (docs/slurm.md): where each task of an ``srun`` step sits in the
training job (rank, node, rendezvous), and requeueing the job when its time limit is near.

SLURM describes a task with environment variables (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURM_STEP_NODELIST``, ...; see ``man srun``, "OUTPUT
ENVIRONMENT VARIABLES"). A requeued job runs its batch script again with ``SLURM_RESTART_COUNT``
one higher.
"""

import contextlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
from typing import Dict, List, Mapping, NamedTuple, Optional
from urllib.parse import urlparse

from ..utils.file_io import atomic_write_bytes

logger = logging.getLogger(__name__)

# The file in the output folder that counts, per job, the requeues this project asked for.
REQUEUE_COUNT_FILE = "slurm_requeues.json"
# Rendezvous port when none is given: one per job, so that jobs sharing a node do not collide.
_FIRST_PORT, _PORT_RANGE = 15000, 20000
_HOSTLIST_ITEM = re.compile(r"([^\[\],]*)(\[[^\[\]]*\])?")


def _expand_ranges(hostlist: str, ranges: str) -> List[str]:
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (high and int(high) < int(low)):
            raise ValueError(f"SLURM host list {hostlist!r}: bad range {part!r} (expected N or N-M)")
        width = len(low)  # "01-03" keeps the zero padding: 01, 02, 03
        names += [f"{number:0{width}d}" for number in range(int(low), int(high or low) + 1)]
    return names


def expand_hostlist(hostlist: str) -> List[str]:
    """The host names of a SLURM host list, in SLURM's order (what ``scontrol show hostnames`` prints,
    without starting a process per training process). python-hostlist does the same but is licensed
    GPL-2.0-or-later, which this Apache-2.0 package does not take as a dependency.

    Args:
        hostlist: as in ``SLURM_JOB_NODELIST``: ``"gpu[01-03,07],cpu1"``, ``"node7"``, or with
            several bracket groups in one name (``"rack[1-2]-n[01-02]"``).

    Returns:
        e.g. ``["gpu01", "gpu02", "gpu03", "gpu07", "cpu1"]``.

    Raises:
        ValueError: a malformed list (unbalanced brackets, a range that is not N or N-M).
    """
    hosts, position = [], 0
    while position < len(hostlist):
        pieces = []  # the alternatives of each part of one name
        while position < len(hostlist) and hostlist[position] != ",":
            match = _HOSTLIST_ITEM.match(hostlist, position)
            if match.end() == position:
                raise ValueError(f"SLURM host list {hostlist!r}: unbalanced brackets at character {position}")
            prefix, ranges = match.groups()
            pieces += [[prefix]] + ([_expand_ranges(hostlist, ranges[1:-1])] if ranges else [])
            position = match.end()
        names = ["".join(parts) for parts in itertools.product(*pieces)]
        if not names or not names[0]:
            raise ValueError(f"SLURM host list {hostlist!r}: empty host name")
        hosts += names
        position += 1  # the comma
    if not hosts:
        raise ValueError(f"SLURM host list {hostlist!r}: no host")
    return hosts


def tasks_per_node(spec: str) -> List[int]:
    """The task count of each node from ``SLURM_STEP_TASKS_PER_NODE`` (``"8(x3)"``, ``"2,1"``).

    Raises:
        ValueError: a malformed value.
    """
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ValueError(f"SLURM_STEP_TASKS_PER_NODE={spec!r}: expected counts such as '8(x3)' or '2,1'")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


class SlurmJob(NamedTuple):
    """The SLURM job this process runs in.

    Args:
        job_id: ``SLURM_JOB_ID``.
        requeue_id: what ``scontrol requeue`` takes: ``ARRAYJOBID_TASKID`` for an array job.
        restart_count: how often the job was requeued and started again (``SLURM_RESTART_COUNT``).
    """

    job_id: str
    requeue_id: str
    restart_count: int


def slurm_job(environ: Mapping[str, str] = os.environ) -> Optional[SlurmJob]:
    """The SLURM job of this process, None outside SLURM."""
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    array_job, array_task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    requeue_id = f"{array_job}_{array_task}" if array_job and array_task else job_id
    return SlurmJob(job_id, requeue_id, int(environ.get("SLURM_RESTART_COUNT") or 0))


class SlurmTask(NamedTuple):
    """One task of an ``srun`` step with several tasks, as one training process (one per GPU).

    Args:
        job: its job.
        rank, world_size: the task's index among all tasks of the step, and their number.
        local_rank, local_world_size: the same on its node.
        node_rank, num_nodes: the node's index among the step's nodes, and their number.
        node: this node's name.
        dist_url: where the processes meet (``tcp://FIRST_NODE:PORT``).
    """

    job: SlurmJob
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    node: str
    dist_url: str


def _rendezvous_port(job: SlurmJob) -> int:
    digits = re.sub(r"\D", "", job.job_id) or "0"
    return _FIRST_PORT + int(digits) % _PORT_RANGE


def srun_task(environ: Mapping[str, str] = os.environ, dist_url: Optional[str] = None) -> Optional[SlurmTask]:
    """This process as one task of an ``srun`` step that runs several tasks; None otherwise (not
    under SLURM, in the batch script itself, or a step of one task, which starts its own processes).

    Args:
        environ: the process's environment.
        dist_url: a rendezvous URL given by the user (``--dist-url``); by default the first node of
            the step, at a port derived from the job id (``MASTER_PORT`` replaces that port).

    Raises:
        ValueError: SLURM variables that cannot describe a training job (nodes with different task
            counts: Detectron2 groups the processes of a machine by equal counts).
    """
    job = slurm_job(environ)
    if job is None or int(environ.get("SLURM_STEP_NUM_TASKS") or 1) < 2:
        return None
    counts = tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])
    if len(set(counts)) != 1:
        raise ValueError(
            f"SLURM_STEP_TASKS_PER_NODE={environ['SLURM_STEP_TASKS_PER_NODE']}: every node must run the "
            f"same number of tasks (use --ntasks-per-node)"
        )
    nodes = expand_hostlist(environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"])
    if not dist_url:
        port = int(environ.get("MASTER_PORT") or _rendezvous_port(job))
        dist_url = f"tcp://{nodes[0]}:{port}"
    return SlurmTask(
        job=job,
        rank=int(environ["SLURM_PROCID"]),
        world_size=int(environ["SLURM_STEP_NUM_TASKS"]),
        local_rank=int(environ["SLURM_LOCALID"]),
        local_world_size=counts[0],
        node_rank=int(environ["SLURM_NODEID"]),
        num_nodes=len(counts),
        node=environ.get("SLURMD_NODENAME") or nodes[int(environ["SLURM_NODEID"])],
        dist_url=dist_url,
    )


def torch_distributed_environment(task: SlurmTask) -> Dict[str, str]:
    """The variables with which ``torchrun`` describes a process (``env://`` initialization), for ``task``."""
    url = urlparse(task.dist_url)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        raise ValueError(f"--dist-url {task.dist_url}: expected tcp://HOST:PORT under srun")
    return {
        "MASTER_ADDR": url.hostname,
        "MASTER_PORT": str(url.port),
        "RANK": str(task.rank),
        "WORLD_SIZE": str(task.world_size),
        "LOCAL_RANK": str(task.local_rank),
        "LOCAL_WORLD_SIZE": str(task.local_world_size),
    }


def describe_job(job: SlurmJob, task: Optional[SlurmTask] = None) -> str:
    """One log line: the job, the restart count and, for an ``srun`` task, its place."""
    text = f"SLURM job {job.requeue_id}, restart {job.restart_count}"
    if task is None:
        return text
    return (
        f"{text}: task {task.rank} of {task.world_size} (local {task.local_rank} of "
        f"{task.local_world_size}) on node {task.node} ({task.node_rank} of {task.num_nodes}), "
        f"rendezvous {task.dist_url}"
    )


def _read_requeue_counts(path: str) -> Dict[str, int]:
    try:
        with open(path) as f:
            counts = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        logger.warning("%s is not valid JSON (%s): counting requeues from 0", path, e)
        return {}
    return counts if isinstance(counts, dict) else {}


class SlurmRequeue:
    """Requeue the current SLURM job after an agreed stop on the time-limit signal, at most
    ``max_requeues`` times per job; counts are kept in ``output_dir/slurm_requeues.json``.

    Args:
        signum: the signal SLURM sends before the time limit (``sbatch --signal=USR1@120``).
        max_requeues: how often one job may be requeued this way (preemptions do not count).
        output_dir: the training output folder.
        job: the job to requeue (by default this process's).
    """

    def __init__(self, signum: int, max_requeues: int, output_dir: str, job: Optional[SlurmJob] = None):
        self.signum = signum
        self.max_requeues = max_requeues
        self.output_dir = output_dir
        self.job = job or slurm_job()

    def __call__(self) -> str:
        """Requeue the job unless its limit is reached; returns what happened, as the end of the
        run's last line ("SLURM job 12 requeued ...; it resumes by itself")."""
        job_id = self.job.requeue_id
        path = os.path.join(self.output_dir, REQUEUE_COUNT_FILE)
        counts = _read_requeue_counts(path)
        done = int(counts.get(job_id, 0))
        if done >= self.max_requeues:
            return (
                f"not requeued: SLURM job {job_id} reached its limit of {self.max_requeues} requeues after "
                f"a time limit (--max-requeues); submit it again to continue"
            )
        # scontrol requeue ends every process of the job with SIGTERM; this one finishes its report.
        # (From the watchdog's thread, which cannot set handlers, the training loop's handler keeps
        # the signal from ending the process.)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            result = subprocess.run(
                ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
            )
            failure = (
                (result.stderr or result.stdout).strip().splitlines()[-1:] if result.returncode else None
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            failure = [str(e)]
        if failure is not None:
            return f"requeueing SLURM job {job_id} failed ({' '.join(failure) or 'scontrol exited non-zero'}); continue with --resume"
        counts[job_id] = done + 1
        with contextlib.suppress(OSError):
            atomic_write_bytes(path, json.dumps(counts, indent=1).encode())
        return (
            f"SLURM job {job_id} requeued ({done + 1} of at most {self.max_requeues} requeues "
            f"after a time limit); it resumes by itself"
        )


def parse_signal(name: str) -> Optional[int]:
    """A signal given by name (``USR1``, ``SIGUSR1``) or number; None for ``none``.

    Raises:
        ValueError: not a signal of this system.
    """
    if name.lower() == "none":
        return None
    try:
        return int(
            signal.Signals(int(name))
            if name.isdigit()
            else signal.Signals["SIG" + name.upper().removeprefix("SIG")]
        )
    except (KeyError, ValueError):
        raise ValueError(
            f"--requeue-signal {name}: expected a signal name such as USR1 or USR2, or none"
        ) from None
