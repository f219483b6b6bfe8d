"""How the training processes that ``launch_workers`` spawns end (gloo on CPU, no training)."""

import atexit
import os

import pytest
import torch
import torch.distributed as dist

from detectron2.utils import comm

from rsb_backbone.engine.launch import launch_workers


def _record_group_state_at_exit(marker_dir: str) -> None:
    """A per-process entry point: one collective, then note at interpreter exit whether the
    process group still exists."""
    total = torch.ones(1)
    dist.all_reduce(total)
    assert total.item() == comm.get_world_size()
    path = os.path.join(marker_dir, f"process{comm.get_rank()}")

    def record():
        with open(path, "w") as f:
            f.write("alive" if dist.is_initialized() else "destroyed")

    atexit.register(record)


@pytest.mark.slow
def test_processes_that_finish_leave_the_process_group_before_exiting(tmp_path):
    # A gloo group still alive while the interpreter shuts down aborts the process now and then.
    outcome = launch_workers(_record_group_state_at_exit, num_gpus_per_machine=2, args=(str(tmp_path),))
    assert outcome is None
    states = {name: (tmp_path / name).read_text() for name in sorted(os.listdir(tmp_path))}
    assert states == {"process0": "destroyed", "process1": "destroyed"}


def _record_threads(marker_dir: str) -> None:
    with open(os.path.join(marker_dir, f"process{comm.get_rank()}"), "w") as f:
        f.write(str(torch.get_num_threads()))


@pytest.mark.slow
def test_the_processes_of_a_machine_share_its_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert launch_workers(_record_threads, num_gpus_per_machine=2, args=(str(tmp_path),)) is None
    cores = len(os.sched_getaffinity(0))
    threads = sorted((tmp_path / name).read_text() for name in os.listdir(tmp_path))
    assert threads == [str(max(1, cores // 2))] * 2
