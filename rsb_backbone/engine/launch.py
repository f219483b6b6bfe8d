"""Start training processes with Detectron2's ``launch`` or under ``torchrun``, and turn the way
they end into one exit code and one-line message (see :mod:`.outcomes`) in every launch mode."""

import logging
import multiprocessing
import os
import signal
import sys
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch.multiprocessing import ProcessExitedException

from detectron2.engine import launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from .outcomes import RunOutcome, outcome_of
from .stop_signals import STOP_SIGNALS, forward_stop_signals, stop_data_loader_workers

logger = logging.getLogger(__name__)


def _run_under_torchrun(main_func: Callable, args: Sequence) -> Optional[RunOutcome]:
    logger.info("Started by torchrun: rank %s of %s", os.environ["RANK"], os.environ["WORLD_SIZE"])
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # torchrun exports MASTER_ADDR/MASTER_PORT for env://; Detectron2's collective timeout, as with --num-gpus.
    dist.init_process_group(
        backend="nccl" if has_gpu else "gloo", init_method="env://", timeout=DEFAULT_TIMEOUT
    )
    comm.create_local_process_group(int(os.environ["LOCAL_WORLD_SIZE"]))
    comm.synchronize()
    try:
        return _run_expecting_outcomes(main_func, args)
    finally:
        dist.destroy_process_group()


def _run_expecting_outcomes(main_func: Callable, args: Sequence) -> Optional[RunOutcome]:
    """Run ``main_func(*args)``; the outcome of an expected end, None on success; anything
    unexpected propagates with its traceback."""
    try:
        main_func(*args)
    except Exception as e:
        if outcome_of(e) is None:
            raise
        return outcome_of(e)
    finally:
        stop_data_loader_workers()
    return None


def _report_to_launcher(main_func: Callable, outcomes, args: Sequence) -> None:
    """A spawned training process: run, then put ``(rank, outcome)`` of an expected end on the queue.

    An expected end exits with its code, so that the launcher stops the other processes at once.
    A normal end leaves the process group first (its last collective is behind it): a gloo group
    alive at interpreter shutdown now and then aborts the process (pytorch/pytorch#190489).
    """
    outcome = _run_expecting_outcomes(main_func, args)
    if outcome is not None:
        outcomes.put((comm.get_rank(), tuple(outcome)))
        sys.exit(outcome.exit_code)
    if dist.is_initialized():
        dist.destroy_process_group()


def _launch_and_collect(main_func: Callable, num_gpus_per_machine: int, args: Sequence, **launch_kwargs):
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
                args=(main_func, outcomes, tuple(args)),
                **launch_kwargs,
            )
        except ProcessExitedException as e:  # a process exited with a code or a signal
            failure = e
        finally:
            spawn_logger.setLevel(spawn_level)
    reported = []
    while not outcomes.empty():
        reported.append(outcomes.get())
    if reported:
        return RunOutcome(*min(reported)[1])  # the lowest rank's: all processes agree on stops and divergence
    stop = received[0] if received else None
    if failure is not None and stop is None:
        if -failure.exit_code not in STOP_SIGNALS:
            raise failure
        stop = -failure.exit_code  # killed by a stop signal that the launcher did not receive
    if stop is not None:  # stopped outside the training loop: before it, or while evaluating
        name = signal.Signals(stop).name
        return RunOutcome(
            128 + stop,
            f"train_net.py: stopped by {name} outside the training loop; "
            f"checkpoints written before are kept",
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
) -> Optional[RunOutcome]:
    """Run ``main_func(*args)`` in every training process (spawned by Detectron2's ``launch``, which
    passes SIGTERM/SIGINT on; or this process alone, or under ``torchrun``); return how the run ended.

    Args:
        main_func: the per-process entry point.
        num_gpus_per_machine: processes on this machine (one per GPU; on CPU any number).
        num_machines, machine_rank, dist_url: as for Detectron2's ``launch`` (ignored under torchrun).
        args: arguments passed to ``main_func``.

    Returns:
        None when every process finished normally; otherwise the :class:`RunOutcome` of an
        expected end (bad input, a non-finite loss, a stop signal).

    Raises:
        anything unexpected (from a spawned process: ``torch.multiprocessing.ProcessRaisedException``).
    """
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")):  # torchrun's
        return _run_under_torchrun(main_func, args)
    if num_gpus_per_machine < 1:
        raise ValueError(f"--num-gpus {num_gpus_per_machine}: expected at least 1")
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine}: this machine has {torch.cuda.device_count()} GPUs"
        )
    if num_machines * num_gpus_per_machine == 1:
        return _run_expecting_outcomes(main_func, args)
    return _launch_and_collect(
        main_func,
        num_gpus_per_machine,
        args,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
    )
