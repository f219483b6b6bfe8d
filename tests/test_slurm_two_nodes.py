"""Training across two real nodes: a SLURM cluster of two nodes in network namespaces of their own
(tests/slurm_cluster.py, ``slurm_two_nodes``), the multi_node.sbatch template as users submit it,
2 tasks per node on the CPU (gloo): the job trains as 4 processes on one machine would, a lost
node ends it within a minute, a hung node within the watchdog time (then it requeues and resumes),
the time-limit signal stops all 4 processes together and the job resumes on both nodes.
In the same namespaces without SLURM: two --num-machines launchers, torchrun's c10d rendezvous,
and nodes whose own names resolve to a second interface that the other node cannot reach
(GLOO_SOCKET_IFNAME).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from test_slurm import MULTI_NODE, _Job, _wait
from conftest import REPO_ROOT
from train_net_runner import FAST_OVERRIDES, TRAIN_NET, dataset_args, read_metrics, run_train_net, shapes_config

# One image per process and iteration on 4 processes; one thread each (4 processes share 2 cores).
FOUR_PROCESSES = ("dataloader.train.total_batch_size=4",)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TEST_WATCHDOG_S = 20  # well above an iteration (about 3 s for 4 processes on 2 busy cores) plus a save
# A second network on each node, as a management network: a subnet per node, so that neither node
# has a route to the other's address there.
MANAGEMENT_ADDRESSES = {"node1": "10.213.8.1", "node2": "10.213.9.2"}
# What a training process does first: join the gloo process group (world size 2, one per node)
# and meet the other process in it.
JOIN_GLOO = ("import datetime, sys, torch.distributed as dist; dist.init_process_group('gloo', "
             "init_method=sys.argv[1], rank=int(sys.argv[2]), world_size=2, timeout=datetime.timedelta(seconds=120)); "
             "dist.barrier()")


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
               overrides=(*FOUR_PROCESSES, "train.eval_period=0"))
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


@pytest.mark.slow
def test_a_lost_node_ends_the_job_within_a_minute_and_a_new_submission_resumes(slurm_two_nodes, tiny_shapes, tmp_path):
    every_iteration = (*FOUR_PROCESSES, "train.checkpointer.period=1", "train.eval_period=0")
    lost = _Job(slurm_two_nodes, MULTI_NODE, tiny_shapes, tmp_path, max_iter=200, name="lost",
                overrides=every_iteration)
    lost.wait_for_iteration(2)
    _signal_training_processes(slurm_two_nodes, "node2", signal.SIGKILL)  # the OOM killer, a failed node
    killed_at = time.time()
    info = lost.wait_for_end(timeout=120)
    assert time.time() - killed_at < 60, info  # not the 30-minute collective timeout
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", info
    # No traceback but Detectron2's logs of the exception that ended its loop (a second one, "Exception in
    # writing metrics:", where the closed connection broke its metrics gather), and one line per process.
    logged = sum(lost.text().count(f"Exception {where}:") for where in ("during training", "in writing metrics"))
    assert lost.text().count("Traceback") == logged, lost.text()[-3000:]
    # Each process names the peer whose connection closed first: node2's, or a process of node1
    # that ended before it (which one varies from run to run).
    assert lost.run_lines() and all(
        "error: another training process of the job ended" in line and "[10.213.7." in line
        for line in lost.run_lines()), lost.run_lines()
    assert any("[10.213.7.2]" in line for line in lost.run_lines()), lost.run_lines()
    saved = _checkpoint_iteration(lost.out)
    assert saved >= 2

    again = _Job(slurm_two_nodes, MULTI_NODE, tiny_shapes, tmp_path, max_iter=saved + 2, name="lost",
                 overrides=every_iteration)
    info = again.wait_for_end()
    assert info["JobState"] == "COMPLETED", (info, again.text()[-3000:])
    assert f"Resuming at iteration {saved + 1} of {saved + 2}" in again.text()
    assert _checkpoint_iteration(again.out) == saved + 1


@pytest.mark.slow
def test_a_hung_node_ends_the_job_within_the_watchdog_time_with_stacks_then_it_requeues_and_resumes(
    slurm_two_nodes, tiny_shapes, tmp_path
):
    max_iter = 10
    job = _Job(slurm_two_nodes, MULTI_NODE, tiny_shapes, tmp_path, max_iter=max_iter, name="hung",
               overrides=(*FOUR_PROCESSES, "train.checkpointer.period=1", "train.eval_period=0",
                          f"train.watchdog_s={TEST_WATCHDOG_S}"))
    job.wait_for_iteration(1)
    frozen = _signal_training_processes(slurm_two_nodes, "node2", signal.SIGSTOP)  # a stuck file system read
    frozen_at = time.time()
    try:
        _wait(lambda: int(job.state().get("Restarts", 0)) >= 1, 120, "the requeue", slurm_two_nodes, job.id)
        # The watchdog time, the processes' 5 s for each other, and the iteration that met the freeze.
        assert time.time() - frozen_at < TEST_WATCHDOG_S + 30
    finally:
        for pid in set(frozen) & set(_training_processes(slurm_two_nodes, "node2")):  # SLURM kills them; to be sure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    info = job.wait_for_end()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, job.text()[-3000:])
    text = job.text()
    for rank in (0, 1):  # the live processes, on node1: each writes the stack of its threads
        assert f"Process {rank} on node1: no training iteration finished for {TEST_WATCHDOG_S} s" in text, text[-3000:]
    assert text.count("(most recent call first)") >= 2
    # (The processes of node2 write theirs too when SLURM continues them, with SIGCONT, to end them.)
    (stall_line,) = [line for line in job.run_lines() if "training stalled" in line and "requeued" in line]
    assert f"SLURM job {job.id} requeued (1 of at most 3 requeues after a time limit); it resumes by itself" in (
        stall_line)
    stalled_after = int(stall_line.split("the last was iteration ")[1].split(";")[0])
    # From the newest checkpoint: the last finished iteration's own, or the one before it when the
    # stall was declared between that iteration and its save (a stalled process saves nothing more).
    (resumed_at,) = {int(m) for m in re.findall(rf"Resuming at iteration (\d+) of {max_iter}", text)}
    assert stalled_after <= resumed_at <= stalled_after + 1, (stalled_after, resumed_at)
    iterations = job.iterations()
    assert sorted(set(iterations)) == list(range(max_iter)), iterations
    assert _checkpoint_iteration(job.out) == max_iter - 1


class _OnNodes:
    """One command per node, started in that node's namespaces (outside SLURM), as a user starts a
    launcher on each machine; stderr of each kept in a file. ``hosts``: node -> the /etc/hosts it
    sees instead of the cluster's; ``env``: node -> variables set there."""

    def __init__(self, cluster, commands, *, hosts=None, env=None):
        hosts, env = hosts or {}, env or {}
        self.stderr = {node: tempfile.TemporaryFile(mode="w+") for node in commands}
        self.processes = {
            node: subprocess.Popen([*cluster.enter(node, hosts=hosts.get(node)), *command], cwd=REPO_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=self.stderr[node], text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD, **env.get(node, {})))
            for node, command in commands.items()
        }

    def wait(self, timeout=600):
        deadline = time.time() + timeout
        try:
            return {node: process.wait(timeout=max(1, deadline - time.time()))
                    for node, process in self.processes.items()}
        except subprocess.TimeoutExpired:
            for process in self.processes.values():
                process.kill()
            raise AssertionError(f"not ended in {timeout}s: {self.err()}")

    def err(self):
        texts = {}
        for node, f in self.stderr.items():
            f.seek(0)
            texts[node] = f.read()
        return texts


def _train_args(tiny_shapes, out, max_iter, batch=FOUR_PROCESSES):
    return ["--config-file", shapes_config("faster_rcnn"), *dataset_args(tiny_shapes), *FAST_OVERRIDES,
            *batch, f"train.max_iter={max_iter}", "train.eval_period=0", "train.checkpointer.period=1",
            f"train.output_dir={out}"]


@pytest.mark.slow
def test_two_machine_launchers_across_nodes_train_and_stop_together_on_sigterm_to_one(
    slurm_two_nodes, tiny_shapes, tmp_path
):
    out = str(tmp_path / "launchers")
    url = f"tcp://node1:{29400 + os.getpid() % 500}"
    launchers = _OnNodes(slurm_two_nodes, {
        node: [sys.executable, TRAIN_NET, "--num-gpus", "2", "--num-machines", "2", "--machine-rank", str(rank),
               "--dist-url", url, *_train_args(tiny_shapes, out, max_iter=500)]
        for rank, node in enumerate(slurm_two_nodes.nodes)
    })
    _wait(lambda: os.path.exists(os.path.join(out, "model_0000001.pth")) or any(
        p.poll() is not None for p in launchers.processes.values()), 300, "the first checkpoint")
    launchers.processes["node2"].send_signal(signal.SIGTERM)  # node2's launcher only
    codes, stderr = launchers.wait(timeout=120), launchers.err()
    assert codes == {"node1": 143, "node2": 143}, stderr
    last = {node: text.strip().splitlines()[-1] for node, text in stderr.items()}
    stopped = {int(line.split("after iteration ")[1].split(";")[0]) for line in last.values()}
    assert len(stopped) == 1 and all(line.startswith("train_net.py: stopped by SIGTERM after iteration")
                                     for line in last.values()), last
    assert _checkpoint_iteration(out) == stopped.pop()


@pytest.mark.slow
def test_torchrun_with_a_c10d_rendezvous_across_the_nodes_trains(slurm_two_nodes, tiny_shapes, tmp_path):
    out = str(tmp_path / "torchrun")
    endpoint = f"node1:{29900 + os.getpid() % 50}"
    runs = _OnNodes(slurm_two_nodes, {
        node: [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "rsb-two-nodes", TRAIN_NET,
               *_train_args(tiny_shapes, out, max_iter=2)]
        for node in slurm_two_nodes.nodes
    })
    codes, stderr = runs.wait(timeout=600), runs.err()
    assert codes == {"node1": 0, "node2": 0}, stderr
    logs = ""
    for name in ["log.txt"] + [f"log.txt.rank{rank}" for rank in range(1, 4)]:
        with open(os.path.join(out, name)) as f:
            logs += f.read()
    # torchrun numbers the nodes by their order of arrival: each holds two ranks, with local ranks 0-1.
    nodes_of = {}
    for rank in range(4):
        line = next(line for line in logs.splitlines() if f"process {rank} of 4 (local {rank % 2} of 2) on node" in line)
        assert "started by torchrun" in line, line
        nodes_of.setdefault(line.split(" on ")[1].split(",")[0], []).append(rank)
    assert sorted(map(sorted, nodes_of.values())) == [[0, 1], [2, 3]], nodes_of
    assert _checkpoint_iteration(out) == 1


@pytest.mark.slow
def test_the_time_limit_signal_on_two_nodes_stops_all_four_together_then_resumes_on_both(
    slurm_two_nodes, tiny_shapes, tmp_path
):
    max_iter = 6
    job = _Job(slurm_two_nodes, MULTI_NODE, tiny_shapes, tmp_path, max_iter=max_iter, name="usr1",
               overrides=(*FOUR_PROCESSES, "train.eval_period=0"))
    job.wait_for_iteration(1)
    slurm_two_nodes.scancel("--signal=USR1", job.id)  # what SLURM sends before the time limit, to every task
    info = job.wait_for_end()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, job.text()[-3000:])
    job.assert_every_iteration_once()
    stops, _ = job.assert_resumed_after_each_stop()
    (line,) = job.run_lines()
    assert line.startswith(f"train_net.py: stopped by SIGUSR1 after iteration {stops[0]}; checkpoint saved; "
                           f"SLURM job {job.id} requeued (1 of at most 3 requeues after a time limit)"), line
    assert job.text().count(line + "\n") == 4  # each of the 4 processes, after the same iteration
    for rank in range(4):  # the requeued run: on both nodes again
        log = os.path.join(job.out, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        with open(log) as f:
            assert (f"SLURM job {job.id}, restart 1: process {rank} of 4 (local {rank % 2} of 2) on "
                    f"node{rank // 2 + 1}") in f.read()



@pytest.mark.slow
def test_a_node_named_on_an_interface_the_other_node_cannot_reach_trains_with_gloo_socket_ifname(
    slurm_two_nodes, tiny_shapes, tmp_path
):
    cluster = slurm_two_nodes
    hosts = {}
    for node, other in zip(cluster.nodes, reversed(cluster.nodes)):
        # Each node's own name resolves to its management address; the other node's name to the
        # address it reaches (the rendezvous at node1 works from node2).
        hosts[node] = str(tmp_path / f"hosts-{node}")
        with open(hosts[node], "w") as f:
            f.write(f"127.0.0.1 localhost\n{MANAGEMENT_ADDRESSES[node]} {node}\n{cluster.addresses[other]} {other}\n")
    with cluster.second_interfaces(MANAGEMENT_ADDRESSES):
        # Without the setting gloo takes the address of the node's own name. Of two processes the
        # one with the greater address connects: node2, to node1's management address, which it
        # has no route to; it fails at once, and node1 would wait for it until the timeout.
        started = time.time()
        url = f"tcp://node1:{29300 + os.getpid() % 50}"
        joins = _OnNodes(cluster, {node: [sys.executable, "-c", JOIN_GLOO, url, str(rank)]
                                   for rank, node in enumerate(cluster.nodes)}, hosts=hosts)
        try:
            code = joins.processes["node2"].wait(timeout=90)
            waiting = joins.processes["node1"].poll() is None
        finally:
            for process in joins.processes.values():
                process.kill()
                process.wait()
        failed_after, stderr = time.time() - started, joins.err()
        assert code != 0 and "Network is unreachable" in stderr["node2"], stderr
        assert waiting and failed_after < 60, (failed_after, stderr)

        # The documented setting: GLOO_SOCKET_IFNAME names the interface that reaches the other node.
        out = str(tmp_path / "socket_ifname")
        url = f"tcp://node1:{29350 + os.getpid() % 50}"
        launchers = _OnNodes(cluster, {
            node: [sys.executable, TRAIN_NET, "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank),
                   "--dist-url", url, *_train_args(tiny_shapes, out, max_iter=2, batch=())]
            for rank, node in enumerate(cluster.nodes)
        }, hosts=hosts, env={node: {"GLOO_SOCKET_IFNAME": cluster.links[node]} for node in cluster.nodes})
        codes, stderr = launchers.wait(timeout=300), launchers.err()
    assert codes == {"node1": 0, "node2": 0}, stderr
    for rank, log in enumerate(["log.txt", "log.txt.rank1"]):
        with open(os.path.join(out, log)) as f:
            assert f"process {rank} of 2 (local 0 of 1) on node{rank + 1}" in f.read()
    assert _checkpoint_iteration(out) == 1
