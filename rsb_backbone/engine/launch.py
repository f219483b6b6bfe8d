"""Start training processes with Detectron2's ``launch`` or under ``torchrun``."""

import logging
import os
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from detectron2.engine import launch
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["started_by_torchrun", "launch_workers"]


def started_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or another elastic launcher)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def _run_under_torchrun(main_func: Callable, args: Sequence) -> None:
    local_rank = int(os.environ["LOCAL_RANK"])
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(local_rank)
    # torchrun exports MASTER_ADDR/MASTER_PORT, so the env:// rendezvous needs no URL.
    dist.init_process_group(backend="nccl" if has_gpu else "gloo", init_method="env://")
    comm.create_local_process_group(int(os.environ["LOCAL_WORLD_SIZE"]))
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch_workers(
    main_func: Callable,
    *,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence = (),
) -> None:
    """Run ``main_func(*args)`` in every worker.

    Under ``torchrun`` the process group is formed from its environment and the flags below are
    ignored; otherwise Detectron2's ``launch`` spawns ``num_gpus_per_machine`` workers on this
    machine (NCCL on CUDA, gloo on CPU).

    Args:
        main_func: the per-worker entry point.
        num_gpus_per_machine: workers on this machine (on CPU: processes).
        num_machines: machines taking part.
        machine_rank: this machine's rank, 0 for the one at ``dist_url``.
        dist_url: rendezvous URL, e.g. ``tcp://10.0.0.1:29500``; "auto" for one machine.
        args: arguments passed to ``main_func``.
    """
    if started_by_torchrun():
        logger.info("Started by torchrun: rank %s of %s", os.environ["RANK"], os.environ["WORLD_SIZE"])
        _run_under_torchrun(main_func, args)
        return
    if num_gpus_per_machine < 1:
        raise ValueError(f"--num-gpus {num_gpus_per_machine}: expected at least 1")
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine}: this machine has {torch.cuda.device_count()} GPUs"
        )
    launch(
        main_func,
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=tuple(args),
    )
