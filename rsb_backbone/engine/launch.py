"""Start training processes with Detectron2's ``launch``, under ``torchrun`` or as ``srun`` tasks,
and turn the way they end into one exit code and one-line message (see :mod:`.outcomes`) in every
launch mode."""

import logging
import multiprocessing
import os
import signal
import socket
import sys
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessExitedException

from detectron2.engine import launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from .outcomes import PROCESS_LOST_EXIT_CODE, RunOutcome, UserInputError, outcome_of, user_input_stage
from .slurm import describe_job, slurm_job, srun_task, torch_distributed_environment
from .stop_signals import STOP_SIGNALS, forward_stop_signals, recording_signal, stop_data_loader_workers
from .watchdog import reporting_outcomes_to, wait_if_stalled

logger = logging.getLogger(__name__)


def _run_in_process_group(main_func: Callable, args: Sequence) -> Optional[RunOutcome]:
    """One process of a group described by torchrun's variables (set by torchrun, or from SLURM's)."""
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(
            _local_device(int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"]))
        )
    # env:// reads MASTER_ADDR/MASTER_PORT; Detectron2's collective timeout, as with --num-gpus.
    dist.init_process_group(
        backend="nccl" if has_gpu else "gloo", init_method="env://", timeout=DEFAULT_TIMEOUT
    )
    comm.create_local_process_group(int(os.environ["LOCAL_WORLD_SIZE"]))
    comm.synchronize()
    try:
        return _run_expecting_outcomes(main_func, args)
    finally:
        dist.destroy_process_group()


def _local_device(local_rank: int, local_world_size: int) -> int:
    """The GPU of a process: its local rank, or the only GPU it sees (SLURM's ``--gpus-per-task=1``)."""
    count = torch.cuda.device_count()
    if count == local_world_size:
        return local_rank
    if count == 1:
        return 0
    raise ValueError(
        f"{local_world_size} processes on this node see {count} GPUs: expected 1 or {local_world_size}"
    )


def _share_cpu_threads() -> None:
    """Split the machine's cores between its training processes unless ``OMP_NUM_THREADS`` says
    otherwise (torchrun sets it to 1): N processes that each use every core slow each other down
    (2 CPU processes on 2 cores, a ResNet-18 Faster R-CNN at 128 px: 1.67 s per iteration with 2
    threads each, 0.77 s with 1)."""
    processes = comm.get_local_size()
    if processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes))


def _run_expecting_outcomes(main_func: Callable, args: Sequence) -> Optional[RunOutcome]:
    """Run ``main_func(*args)``; the outcome of an expected end, None on success; anything
    unexpected propagates with its traceback."""
    _share_cpu_threads()
    try:
        main_func(*args)
    except Exception as e:
        wait_if_stalled()  # a stalled job's end broke a collective: the watchdog ends this process
        if outcome_of(e) is None:
            raise
        return outcome_of(e)
    finally:
        stop_data_loader_workers()
    return None


def _report_to_launcher(main_func: Callable, outcomes, args: Sequence, requeue_signal: Optional[int]) -> None:
    """A spawned training process: run, then put ``(rank, outcome)`` of an expected end on the queue.

    An expected end exits with its code, so that the launcher stops the other processes at once.
    A normal end leaves the process group first (its last collective is behind it): a gloo group
    alive at interpreter shutdown now and then aborts the process (pytorch/pytorch#190489).
    """
    report = lambda outcome: outcomes.put((comm.get_rank(), tuple(outcome)))
    with recording_signal(requeue_signal), reporting_outcomes_to(report):
        outcome = _run_expecting_outcomes(main_func, args)
    if outcome is not None:
        report(outcome)
        sys.exit(outcome.exit_code)
    if dist.is_initialized():
        dist.destroy_process_group()


# SIGKILL is what the kernel's out-of-memory killer sends.
_OOM_HINT = " (the kernel's out-of-memory killer sends SIGKILL; dmesg shows whether it did)"


def _launch_and_collect(
    main_func: Callable,
    num_gpus_per_machine: int,
    args: Sequence,
    requeue_signal: Optional[int],
    **launch_kwargs,
):
    outcomes = multiprocessing.get_context("spawn").SimpleQueue()
    failure: Optional[ProcessExitedException] = None
    # When one process ends, torch logs that it terminates the others; with an expected end they
    # are ending too, and the run's own one-line message says what happened.
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    spawn_level = spawn_logger.level
    spawn_logger.setLevel(logging.ERROR)
    with forward_stop_signals() as received:
        try:
            launch(
                _report_to_launcher,
                num_gpus_per_machine,
                args=(main_func, outcomes, tuple(args), requeue_signal),
                **launch_kwargs,
            )
        except ProcessExitedException as e:  # a process exited with a code or a signal
            failure = e
        finally:
            spawn_logger.setLevel(spawn_level)
    reported = []
    while not outcomes.empty():
        reported.append(outcomes.get())
    stop = received[0] if received else None
    killed = -failure.exit_code if failure is not None and failure.exit_code < 0 else None
    if stop is None and killed not in (None, *STOP_SIGNALS, requeue_signal):
        # The others only saw a broken connection: the launcher knows what happened.
        return RunOutcome(
            PROCESS_LOST_EXIT_CODE,
            f"error: training process {failure.error_index} of this machine was killed by "
            f"{signal.Signals(killed).name}{_OOM_HINT if killed == signal.SIGKILL else ''}; "
            "the newest checkpoint is kept; continue with --resume",
        )
    if reported:
        return RunOutcome(*min(reported)[1])  # the lowest rank's: all processes agree on stops and divergence
    if failure is not None and stop is None:
        if failure.exit_code >= 0:  # an unexpected error: its traceback is above
            raise failure
        stop = -failure.exit_code  # killed by a stop signal that the launcher did not receive
    if stop is not None:  # stopped outside the training loop: before it, or while evaluating
        name = signal.Signals(stop).name
        return RunOutcome(
            128 + stop,
            f"stopped by {name} outside the training loop; " f"checkpoints written before are kept",
        )
    return None


def launch_workers(
    main_func: Callable,
    *,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence = (),
    requeue_signal: Optional[int] = None,
) -> Optional[RunOutcome]:
    """Run ``main_func(*args)`` in every training process and return how the run ended. The
    processes are spawned by Detectron2's ``launch`` (which passes SIGTERM/SIGINT on), or this
    process is one of them: alone, under ``torchrun``, or as one task of an ``srun`` step.

    Under ``srun``, one task per GPU takes its rank, world size and node from SLURM; one task per
    node with ``num_gpus_per_machine`` > 1 takes the machine count and rank from SLURM.

    Args:
        main_func: the per-process entry point.
        num_gpus_per_machine: processes on this machine (one per GPU; on CPU any number).
        num_machines, machine_rank, dist_url: as for Detectron2's ``launch`` (ignored under torchrun;
            under srun, taken from SLURM unless given). ``"auto"``: a free port on this machine, or
            under srun the first node of the step at a port derived from the job id.
        args: arguments passed to ``main_func``.
        requeue_signal: SLURM's time-limit signal, which every process notes for the training loop
            instead of ending (:class:`.stop_signals.CheckpointOnSignalHook` acts on it); None: none.

    Returns:
        None when every process finished normally; otherwise the :class:`RunOutcome` of an
        expected end (bad input, a non-finite loss, a stop signal).

    Raises:
        UserInputError: a process count or SLURM layout that cannot work.
        anything unexpected (from a spawned process: ``torch.multiprocessing.ProcessRaisedException``).
    """
    if num_gpus_per_machine < 1:
        raise UserInputError(f"--num-gpus {num_gpus_per_machine}: expected at least 1")
    in_group = all(
        k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    )  # torchrun
    with user_input_stage():  # SLURM variables or a --dist-url that cannot describe a training job
        task = None if in_group else srun_task(os.environ, dist_url=None if dist_url == "auto" else dist_url)
        if task is not None and num_gpus_per_machine == 1:  # one srun task per GPU: a process of the group
            os.environ.update(torch_distributed_environment(task))
            in_group = True
    if task is not None and not in_group:  # one srun task per node, each starting --num-gpus processes
        if task.local_world_size > 1:
            raise UserInputError(
                f"--num-gpus {num_gpus_per_machine} with {task.local_world_size} srun tasks per node: "
                f"use one task per GPU without --num-gpus, or one task per node with it"
            )
        if num_machines == 1:
            num_machines, machine_rank, dist_url = task.num_nodes, task.node_rank, task.dist_url
    if not in_group and torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise UserInputError(
            f"--num-gpus {num_gpus_per_machine}: this machine has {torch.cuda.device_count()} GPUs"
        )
    if not in_group and num_machines > 1 and dist_url == "auto":
        raise UserInputError(f"--num-machines {num_machines}: give --dist-url tcp://HOST:PORT of machine 0")
    with recording_signal(requeue_signal):
        if in_group:
            return _run_in_process_group(main_func, args)
        if num_machines * num_gpus_per_machine == 1:
            return _run_expecting_outcomes(main_func, args)
        return _launch_and_collect(
            main_func,
            num_gpus_per_machine,
            args,
            requeue_signal,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
        )


def describe_process() -> str:
    """One log line: this process's rank, node and how it was started, with its SLURM job and
    restart count under SLURM and the rendezvous host under torchrun or srun."""
    job = slurm_job()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        started = "torchrun"
    elif int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1) > 1 and "RANK" in os.environ:
        started = "srun, one task per process"
    else:
        started = "Detectron2's launch" if comm.get_world_size() > 1 else "a single process"
    where = (
        f"process {comm.get_rank()} of {comm.get_world_size()} (local {comm.get_local_rank()} of "
        f"{comm.get_local_size()}) on {socket.gethostname()}, started by {started}"
    )
    if "MASTER_ADDR" in os.environ and "RANK" in os.environ:  # torchrun's or SLURM's env:// rendezvous
        where += f", rendezvous at {os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '')}"
    return f"{describe_job(job)}: {where}" if job else where
