"""Training under SLURM: how the tasks of an ``srun`` step map to training processes (in-process),
and the batch templates of projects/slurm run against a real one-node SLURM (tests/slurm_cluster.py)
with 2 tasks on the CPU (gloo): a time limit, a forced requeue, scancel and the requeue limit."""

import json
import os
import signal
import sys
import time

import pytest

from rsb_backbone.engine import SlurmRequeue, UserInputError, launch_workers, slurm_job, srun_task
from rsb_backbone.engine.slurm import (
    REQUEUE_COUNT_FILE,
    SlurmJob,
    expand_hostlist,
    parse_signal,
    torch_distributed_environment,
)

from conftest import REPO_ROOT
from train_net_runner import FAST_OVERRIDES, dataset_args, read_metrics, shapes_config

ONE_NODE = os.path.join("projects", "slurm", "one_node.sbatch")
MULTI_NODE = os.path.join("projects", "slurm", "multi_node.sbatch")


def _task_environment(rank, *, tasks_per_node=8, nodes="gpu[07-09]", job_id="4242"):
    names = expand_hostlist(nodes)
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NODELIST": nodes,
        "SLURM_STEP_NODELIST": nodes,
        "SLURM_STEP_NUM_TASKS": str(tasks_per_node * len(names)),
        "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{len(names)})",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % tasks_per_node),
        "SLURM_NODEID": str(rank // tasks_per_node),
        "SLURMD_NODENAME": names[rank // tasks_per_node],
    }


def test_three_nodes_of_eight_tasks_map_to_ranks_nodes_and_one_rendezvous():
    tasks = [srun_task(_task_environment(rank)) for rank in range(24)]
    assert [t.rank for t in tasks] == list(range(24))
    assert {t.world_size for t in tasks} == {24} and {t.local_world_size for t in tasks} == {8}
    assert [t.local_rank for t in tasks] == [r % 8 for r in range(24)]
    assert [t.node_rank for t in tasks] == [r // 8 for r in range(24)] and {t.num_nodes for t in tasks} == {3}
    assert [t.node for t in tasks[::8]] == ["gpu07", "gpu08", "gpu09"]
    # Every task meets at the first node, at a port that only depends on the job id.
    assert {t.dist_url for t in tasks} == {f"tcp://gpu07:{15000 + 4242}"}
    assert torch_distributed_environment(tasks[13]) == {
        "MASTER_ADDR": "gpu07", "MASTER_PORT": "19242", "RANK": "13", "WORLD_SIZE": "24",
        "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8",
    }


def test_the_rendezvous_port_or_url_can_be_given():
    environ = _task_environment(3)
    assert srun_task(dict(environ, MASTER_PORT="29500")).dist_url == "tcp://gpu07:29500"
    assert srun_task(environ, dist_url="tcp://10.0.0.1:1234").dist_url == "tcp://10.0.0.1:1234"


def test_outside_a_step_of_several_tasks_there_is_no_srun_task():
    assert srun_task({}) is None
    # The batch script itself: job variables, no step.
    assert srun_task({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}) is None
    single = dict(_task_environment(0, tasks_per_node=1, nodes="n1"))
    assert srun_task(single) is None  # one task: it starts its own processes (--num-gpus)


def test_torchrun_inside_srun_keeps_torchrun_ranks(monkeypatch):
    from detectron2.utils import comm

    # torchrun started by an srun task of a 24-task step: torchrun's variables describe the process.
    environment = dict(_task_environment(13), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(20000 + os.getpid() % 10000))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    seen = []
    assert launch_workers(lambda: seen.append((comm.get_rank(), comm.get_world_size())), num_gpus_per_machine=1) is None
    assert seen == [(0, 1)]


def test_nodes_with_different_task_counts_are_refused():
    environ = dict(_task_environment(0, nodes="a,b"), SLURM_STEP_TASKS_PER_NODE="2,1", SLURM_STEP_NUM_TASKS="3")
    with pytest.raises(ValueError, match=r"SLURM_STEP_TASKS_PER_NODE=2,1: every node must run the same number"):
        srun_task(environ)


def test_num_gpus_with_several_tasks_per_node_is_one_line(monkeypatch):
    for name, value in _task_environment(0, tasks_per_node=2, nodes="n1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserInputError, match=r"--num-gpus 2 with 2 srun tasks per node: use one task per GPU"):
        launch_workers(print, num_gpus_per_machine=2)


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("node7", ["node7"]),
        ("gpu[01-03,07],cpu1", ["gpu01", "gpu02", "gpu03", "gpu07", "cpu1"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x1,y[2],z", ["x1", "y2", "z"]),
    ],
)
def test_slurm_host_lists_expand_in_order(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["gpu[01-03", "gpu]1", "gpu[a-b]", "gpu[3-1]", "a,,b", ""])
def test_malformed_host_lists_are_refused(hostlist):
    with pytest.raises(ValueError, match="SLURM host list"):
        expand_hostlist(hostlist)


def test_array_jobs_are_requeued_by_their_array_id_and_the_restart_count_is_read():
    job = slurm_job({"SLURM_JOB_ID": "120", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "20",
                     "SLURM_RESTART_COUNT": "2"})
    assert job == SlurmJob("120", "100_20", 2)
    assert slurm_job({}) is None


def test_requeue_signal_names():
    assert parse_signal("USR1") == parse_signal("SIGUSR1") == parse_signal(str(int(signal.SIGUSR1))) == signal.SIGUSR1
    assert parse_signal("none") is None
    with pytest.raises(ValueError, match="--requeue-signal FOO: expected a signal name"):
        parse_signal("FOO")


def test_the_requeue_limit_counts_per_job_and_stops_requeueing(tmp_path):
    (tmp_path / REQUEUE_COUNT_FILE).write_text(json.dumps({"77": 2, "5": 9}))
    requeue = SlurmRequeue(signal.SIGUSR1, 2, str(tmp_path), job=SlurmJob("77", "77", 2))
    assert requeue() == (
        "not requeued: SLURM job 77 reached its limit of 2 requeues after a time limit (--max-requeues); "
        "submit it again to continue"
    )


# ---- A real SLURM cluster: the templates with 2 tasks on the CPU --------------------------------


def _wait(condition, timeout, what, cluster=None, job_id=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    details = cluster.job(job_id) if cluster and job_id else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {details}")


class _Job:
    """A training job submitted from a template; releases its requeued runs at once (instead of
    SLURM's two-minute wait) and waits for its end."""

    def __init__(
        self, cluster, template, tiny_shapes, tmp_path, *, max_iter, tasks=2, sbatch=(), train=(), name="job",
        overrides=(),
    ):
        self.cluster = cluster
        self.out = str(tmp_path / name)
        self.log = str(tmp_path / f"{name}-%j.out")
        self.max_iter = max_iter
        args = [
            f"--ntasks-per-node={tasks}", "--gpus-per-node=0", f"--cpus-per-task={2 // tasks}", f"--output={self.log}",
            *sbatch, template, *train, "--config-file", shapes_config("faster_rcnn"),
            *dataset_args(tiny_shapes), *FAST_OVERRIDES, "model.backbone.bottom_up.model_name=resnet18",
            "dataloader.train.num_workers=1",  # SLURM signals the loader's workers too: they must ignore it
            f"train.max_iter={max_iter}", f"train.eval_period={max_iter}", "train.checkpointer.period=1000",
            f"train.output_dir={self.out}", *overrides,
        ]
        env = {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.id = cluster.sbatch(args, cwd=REPO_ROOT, env=env)
        self.log = self.log.replace("%j", self.id)
        self.released = 0

    def state(self):
        info = self.cluster.job(self.id)
        restarts = int(info.get("Restarts", 0))
        if info["JobState"] == "PENDING" and restarts > self.released:
            self.cluster.scontrol("update", f"JobId={self.id}", "StartTime=now")
            self.released = restarts
        return info

    def iterations(self):
        if not os.path.exists(os.path.join(self.out, "metrics.json")):
            return []
        return [r["iteration"] for r in read_metrics(self.out) if "total_loss" in r]

    def wait_for_iteration(self, iteration, timeout=300):
        _wait(lambda: self.state() and self.iterations() and self.iterations()[-1] >= iteration, timeout,
              f"iteration {iteration} in {self.out}", self.cluster, self.id)

    def wait_for_end(self, timeout=900):
        final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
        return _wait(lambda: (lambda info: info if info["JobState"] in final else None)(self.state()),
                     timeout, f"the end of job {self.id}", self.cluster, self.id)

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def run_lines(self):
        """The one-line ends train_net.py printed in this job's log (each task prints its own; they agree)."""
        lines = [line for line in self.text().splitlines() if line.startswith("train_net.py:")]
        return list(dict.fromkeys(lines))

    def assert_every_iteration_once(self):
        assert self.iterations() == list(range(self.max_iter)), self.iterations()

    def assert_resumed_after_each_stop(self):
        stops = [int(line.split("after iteration ")[1].split(";")[0]) for line in self.run_lines()
                 if "stopped by" in line]
        resumed = [line for line in self.text().splitlines() if "Resuming at iteration" in line]
        for stopped_at in stops:
            assert any(f"Resuming at iteration {stopped_at + 1} of {self.max_iter}" in line for line in resumed), (
                stopped_at, resumed)
        return stops, resumed

    def assert_final_evaluation_once(self):
        assert self.text().count("Evaluation results for bbox") == 1
        assert os.path.exists(os.path.join(self.out, "eval_results.json"))
        assert "DataLoader worker" not in self.text()


@pytest.mark.slow
def test_time_limit_stops_saves_requeues_and_resumes_to_the_end(slurm_cluster, tiny_shapes, tmp_path):
    # SLURM sends USR1 about 60 s before the 2-minute limit. A run reaches about iteration 65 by
    # then on a quiet 2-core machine, so the job needs at least one requeue (several on a slow
    # machine: the limit is raised for them).
    job = _Job(slurm_cluster, ONE_NODE, tiny_shapes, tmp_path, max_iter=100,
               sbatch=["--time=2", "--signal=USR1@60"], train=["--max-requeues", "8"])
    info = job.wait_for_end(timeout=1500)
    assert info["JobState"] == "COMPLETED", (info, job.text()[-3000:])
    restarts = int(info["Restarts"])
    assert restarts >= 1
    job.assert_every_iteration_once()
    stops, resumed = job.assert_resumed_after_each_stop()
    assert len(stops) == restarts and all("requeued" in line and "resumes by itself" in line
                                          for line in job.run_lines())
    assert all(f"SLURM job {job.id}, restart" in line for line in resumed)
    with open(os.path.join(job.out, REQUEUE_COUNT_FILE)) as f:
        assert json.load(f) == {job.id: restarts}
    job.assert_final_evaluation_once()


@pytest.mark.slow
def test_forced_requeue_with_scancel_usr1_resumes_at_the_saved_iteration(slurm_cluster, tiny_shapes, tmp_path):
    # One task per node starting --num-gpus processes: the launcher passes the signal on.
    job = _Job(slurm_cluster, ONE_NODE, tiny_shapes, tmp_path, max_iter=10, tasks=1, train=["--num-gpus", "2"])
    job.wait_for_iteration(3)
    slurm_cluster.scancel("--signal=USR1", job.id)
    info = job.wait_for_end()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, job.text()[-3000:])
    job.assert_every_iteration_once()
    stops, resumed = job.assert_resumed_after_each_stop()
    assert len(stops) == 1 and "SLURM job" in resumed[0] and "restart 1" in resumed[0]
    (line,) = job.run_lines()
    assert line.startswith(f"train_net.py: stopped by SIGUSR1 after iteration {stops[0]}; checkpoint saved; "
                           f"SLURM job {job.id} requeued (1 of at most 3 requeues after a time limit)")
    job.assert_final_evaluation_once()


@pytest.mark.slow
def test_scancel_saves_a_checkpoint_without_requeue_and_a_new_submission_resumes(slurm_cluster, tiny_shapes, tmp_path):
    cancelled = _Job(slurm_cluster, MULTI_NODE, tiny_shapes, tmp_path, max_iter=8, sbatch=["--nodes=1"])
    cancelled.wait_for_iteration(2)
    slurm_cluster.scancel(cancelled.id)
    info = cancelled.wait_for_end()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    _wait(lambda: any("stopped by SIGTERM" in line for line in cancelled.run_lines()), 60, "the stop message")
    stopped_at = int(cancelled.run_lines()[0].split("after iteration ")[1].split(";")[0])
    assert "checkpoint saved; continue with --resume" in cancelled.run_lines()[0]
    with open(os.path.join(cancelled.out, "last_checkpoint")) as f:
        assert f.read().strip() == f"model_{stopped_at:07d}.pth"

    again = _Job(slurm_cluster, MULTI_NODE, tiny_shapes, tmp_path, max_iter=8, sbatch=["--nodes=1"])
    assert again.out == cancelled.out
    info = again.wait_for_end()
    assert info["JobState"] == "COMPLETED", (info, again.text()[-3000:])
    assert f"Resuming at iteration {stopped_at + 1} of 8" in again.text()
    again.assert_every_iteration_once()


@pytest.mark.slow
def test_the_requeue_limit_ends_the_job_with_a_message_and_an_error(slurm_cluster, tiny_shapes, tmp_path):
    job = _Job(slurm_cluster, ONE_NODE, tiny_shapes, tmp_path, max_iter=100, train=["--max-requeues", "0"])
    job.wait_for_iteration(2)
    slurm_cluster.scancel("--signal=USR1", job.id)
    info = job.wait_for_end()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", info
    assert info["ExitCode"] == f"{128 + signal.SIGUSR1}:0"
    assert job.run_lines() and all(
        "checkpoint saved; not requeued: SLURM job" in line and "limit of 0 requeues" in line
        for line in job.run_lines()
    ), job.run_lines()
    assert not os.path.exists(os.path.join(job.out, REQUEUE_COUNT_FILE))
