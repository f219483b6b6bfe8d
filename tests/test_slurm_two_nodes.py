"""Training across two real nodes: a SLURM cluster of two nodes in network namespaces of their own
(tests/slurm_cluster.py, ``slurm_two_nodes``), the multi_node.sbatch template as users submit it,
2 tasks per node on the CPU (gloo): the job trains as 4 processes on one machine would, a lost
node ends it within a minute, a hung node within the watchdog time (then it requeues and resumes).
"""

import os
import signal
import time

import numpy as np
import pytest
import torch

from test_slurm import MULTI_NODE, _Job, _wait
from train_net_runner import FAST_OVERRIDES, dataset_args, read_metrics, run_train_net, shapes_config

# One image per process and iteration on 4 processes; one thread each (4 processes share 2 cores).
FOUR_PROCESSES = ("dataloader.train.total_batch_size=4",)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TEST_WATCHDOG_S = 20  # well above an iteration (about 3 s for 4 processes on 2 busy cores) plus a save


def _losses(out):
    """Each logged iteration's losses (Detectron2 logs the median of the last 20 of each)."""
    return {r["iteration"]: {k: v for k, v in r.items() if k.startswith("loss") or k == "total_loss"}
            for r in read_metrics(out) if "total_loss" in r}


def _training_processes(cluster, node):
    found = []
    for pid in cluster.processes_on(node):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"train_net.py" in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def _signal_training_processes(cluster, node, signum):
    pids = _training_processes(cluster, node)
    assert pids, f"no training process on {node}"
    for pid in pids:
        os.kill(pid, signum)
    return pids


def _checkpoint_iteration(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        path = os.path.join(out, f.read().strip())
    data = torch.load(path, map_location="cpu", weights_only=True)  # complete: it loads, every tensor
    assert data["model"] and all(torch.isfinite(v).all() for v in data["model"].values() if v.is_floating_point())
    return data["iteration"]


@pytest.mark.slow
def test_two_nodes_train_with_ranks_by_node_and_the_losses_of_four_processes_on_one(
    slurm_two_nodes, tiny_shapes, tmp_path
):
    max_iter = 3
    job = _Job(slurm_two_nodes, MULTI_NODE, tiny_shapes, tmp_path, max_iter=max_iter, name="two_nodes",
               overrides=FOUR_PROCESSES)
    info = job.wait_for_end()
    assert info["JobState"] == "COMPLETED" and info["NodeList"] == "node[1-2]", (info, job.text()[-3000:])
    job.assert_every_iteration_once()
    logs = ""
    for name in ["log.txt"] + [f"log.txt.rank{rank}" for rank in range(1, 4)]:
        with open(os.path.join(job.out, name)) as f:
            logs += f.read()
    for rank in range(4):
        # Ranks 0-1 on node1, 2-3 on node2; all meet at node1, found by its name.
        assert (f"process {rank} of 4 (local {rank % 2} of 2) on node{rank // 2 + 1}, started by srun, one task "
                f"per process, rendezvous at node1:") in logs, logs[-3000:]

    # The same run as 4 processes on one machine: same seed, same data order, same losses.
    one_machine = str(tmp_path / "one_machine")
    run_train_net(["--num-gpus", "4", "--config-file", shapes_config("faster_rcnn"), *dataset_args(tiny_shapes),
                   *FAST_OVERRIDES, "dataloader.train.num_workers=1", f"train.max_iter={max_iter}",
                   "train.eval_period=0", "train.checkpointer.period=1000", f"train.output_dir={one_machine}",
                   *FOUR_PROCESSES], env=ONE_THREAD)
    two_nodes, one_node = _losses(job.out), _losses(one_machine)
    assert sorted(two_nodes) == sorted(one_node) == list(range(max_iter))
    for iteration in range(max_iter):
        assert two_nodes[iteration].keys() == one_node[iteration].keys()
        for key, value in one_node[iteration].items():  # float32 sums in another order
            np.testing.assert_allclose(two_nodes[iteration][key], value, rtol=1e-5, err_msg=f"{key} at {iteration}")
