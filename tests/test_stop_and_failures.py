"""How train_net.py runs end, with one process and with two (gloo on CPU), as users start it:
stop signals to any subset of the job's processes, a loss that turns non-finite on one process,
bad input found in the workers, strict evaluation loading, unreadable images, typed overrides,
sets with nothing to train on or without masks, images over PIL's size limit, COCO files
without area/iscrowd, a full disk, a training process killed by SIGKILL; in-process, the stop hook
on Detectron2's own trainer, a signal noted before training, DataLoader workers ignoring stop signals."""

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch


from rsb_backbone.config import load_config_with_overrides

from conftest import REPO_ROOT
from train_net_runner import (
    FAST_OVERRIDES,
    TRAIN_NET,
    dataset_args,
    read_metrics,
    run_train_net,
    shapes_config,
    train_net_in_process,
)

FASTER = shapes_config("faster_rcnn")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
INSTRUMENTED = "model._target_=fault_injection.InstrumentedRCNN"
WITH_TEST_MODULES = {"PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}


def _args(dataset, out, *, max_iter, processes=1, workers=0, config=FASTER):
    """Cheapest real training: ResNet-18 trunk, 128 px, one image per process and iteration."""
    return [
        "--num-gpus", str(processes), "--config-file", config, *dataset_args(dataset), *FAST_OVERRIDES,
        "model.backbone.bottom_up.model_name=resnet18", f"dataloader.train.total_batch_size={processes}",
        f"dataloader.train.num_workers={workers}", f"train.max_iter={max_iter}", "train.eval_period=0",
        "train.checkpointer.period=1", "train.checkpointer.max_to_keep=3", f"train.output_dir={out}",
    ]


class _Job:
    """train_net.py in a process group of its own, as a batch scheduler starts it."""

    def __init__(self, args, env=None):
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, TRAIN_NET, *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=self.stderr,
            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), start_new_session=True,
        )

    def wait_for(self, path, timeout=600):
        deadline = time.time() + timeout
        while not os.path.exists(path):
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode} before {path} appeared:\n{self.err()[-3000:]}")
            if time.time() > deadline:
                self.kill_group()
                raise AssertionError(f"{path} did not appear in {timeout}s")
            time.sleep(0.2)

    def err(self):
        self.stderr.seek(0)
        return self.stderr.read()

    def group_members(self):
        listed = subprocess.run(["ps", "-o", "pid=", "-g", str(self.process.pid)], capture_output=True, text=True)
        return [int(p) for p in listed.stdout.split()]

    def kill_group(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout=600):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"train_net.py did not end within {timeout}s:\n{self.err()[-3000:]}")

    def assert_no_process_left(self, timeout=30):
        deadline = time.time() + timeout
        while self.group_members() and time.time() < deadline:
            time.sleep(0.5)
        left = self.group_members()
        self.kill_group()
        assert not left, f"processes left after the run: {left}"


def _last_checkpoint(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return os.path.join(out, f.read().strip())


def _last_line(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _assert_one_line(stderr, prefix, *needles):
    assert "Traceback" not in stderr, stderr[-3000:]
    last = _last_line(stderr)
    assert last.startswith(prefix), last
    for needle in needles:
        assert needle in last, (needle, last)


def _stop_with_sigterm(dataset, out, *, processes, target):
    """Start training with 2 DataLoader workers per process, send SIGTERM once a checkpoint is
    written, check the agreed stop; returns the iteration it stopped after."""
    job = _Job(_args(dataset, out, max_iter=200, processes=processes, workers=2))
    job.wait_for(os.path.join(out, "model_0000001.pth"))
    if target == "group":
        os.killpg(job.process.pid, signal.SIGTERM)  # what SLURM and `kill -TERM -- -PGID` do
    else:
        job.process.send_signal(signal.SIGTERM)  # the launching process only
    returncode = job.wait()
    stderr = job.err()
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    _assert_one_line(stderr, "train_net.py: stopped by SIGTERM after iteration", "checkpoint saved", "--resume")
    assert "DataLoader worker" not in stderr
    job.assert_no_process_left()
    checkpoint = _last_checkpoint(out)
    stopped_at = torch.load(checkpoint, map_location="cpu", weights_only=True)["iteration"]
    assert os.path.basename(checkpoint) == f"model_{stopped_at:07d}.pth"
    assert f"after iteration {stopped_at};" in _last_line(stderr)
    return stopped_at


@pytest.mark.slow
def test_sigterm_to_the_process_group_one_process_then_resume(tiny_shapes, tmp_path):
    out = str(tmp_path / "group1")
    stopped_at = _stop_with_sigterm(tiny_shapes, out, processes=1, target="group")
    run_train_net(["--resume", *_args(tiny_shapes, out, max_iter=stopped_at + 2, workers=2)])
    iterations = [r["iteration"] for r in read_metrics(out) if "total_loss" in r]
    assert iterations[-1] == stopped_at + 1
    assert _last_checkpoint(out).endswith("model_final.pth")


@pytest.mark.slow
def test_sigterm_to_the_process_group_two_processes_then_resume_with_identical_replicas(tiny_shapes, tmp_path):
    out = str(tmp_path / "group2")
    stopped_at = _stop_with_sigterm(tiny_shapes, out, processes=2, target="group")
    # The resumed run is a normal 2-process run: afterwards both processes hold the same weights
    # (saved by each process when the final evaluation switches the model to eval mode).
    weights_dir = tmp_path / "replicas"
    resume = ["--resume", *_args(tiny_shapes, out, max_iter=stopped_at + 2, processes=2),
              INSTRUMENTED, f"+model.weights_dir={weights_dir}"]
    run_train_net(resume, env=WITH_TEST_MODULES)
    iterations = [r["iteration"] for r in read_metrics(out) if "total_loss" in r]
    assert iterations[-1] == stopped_at + 1
    first = torch.load(weights_dir / "process0.pth", weights_only=True)
    second = torch.load(weights_dir / "process1.pth", weights_only=True)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, different[:5]
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert all(torch.equal(final[k], first[k]) for k in final)


@pytest.mark.slow
def test_sigterm_to_the_launcher_only_stops_both_processes(tiny_shapes, tmp_path):
    _stop_with_sigterm(tiny_shapes, str(tmp_path / "launcher"), processes=2, target="launcher")


@pytest.mark.slow
def test_non_finite_loss_on_one_process_stops_both_promptly(tiny_shapes, tmp_path):
    out = str(tmp_path / "nan_rank1")
    args = [*_args(tiny_shapes, out, max_iter=50, processes=2), INSTRUMENTED,
            "+model.nan_process=1", "+model.nan_from_iteration=2"]
    started = time.time()
    result = run_train_net(args, check=False, timeout=600, env=WITH_TEST_MODULES)
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.time() - started < 300  # no wait for a collective's 30-minute timeout
    _assert_one_line(result.stderr, "train_net.py: error: loss became non-finite at iteration 2:",
                     "loss_cls=nan (process 1)", "the last complete checkpoint is kept")
    assert "(process 0)" not in _last_line(result.stderr)
    assert _last_checkpoint(out).endswith("model_0000001.pth")


@pytest.mark.slow
def test_bad_config_value_found_inside_the_workers_is_one_line(tiny_shapes, tmp_path):
    args = [*_args(tiny_shapes, str(tmp_path / "bad_norm"), max_iter=2, processes=2),
            "model.backbone.bottom_up.norm=NoSuchNorm"]
    result = run_train_net(args, check=False, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    _assert_one_line(result.stderr, "train_net.py: error:", "NoSuchNorm")
    assert result.stderr.count("train_net.py: error:") == 1


@pytest.mark.slow
def test_an_error_deep_in_training_keeps_its_traceback(tiny_shapes, tmp_path):
    # A ValueError is bad input only while the run is set up; during training it is a bug.
    args = [*_args(tiny_shapes, str(tmp_path / "bug"), max_iter=5), INSTRUMENTED, "+model.fail_at_iteration=1"]
    result = run_train_net(args, check=False, timeout=600, env=WITH_TEST_MODULES)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" in result.stderr
    assert _last_line(result.stderr) == "ValueError: instrumented failure at iteration 1"
    assert "train_net.py: error:" not in result.stderr


@pytest.fixture(scope="module")
def faster_checkpoint(trained_detectors):
    """A briefly trained Faster R-CNN (ResNet-18 trunk) on the tiny shapes set (the session's shared run)."""
    return trained_detectors["faster_rcnn"].checkpoint


@pytest.mark.slow
def test_eval_only_with_another_detectors_checkpoint_names_the_missing_keys(tiny_shapes, faster_checkpoint, tmp_path):
    mask_config = shapes_config("mask_rcnn")
    result = run_train_net(
        ["--eval-only", *_args(tiny_shapes, str(tmp_path / "eval"), max_iter=1, config=mask_config),
         f"train.init_checkpoint={faster_checkpoint}"],
        check=False, timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    _assert_one_line(result.stderr, "train_net.py: error:", os.path.basename(faster_checkpoint),
                     "missing", "roi_heads.mask_head.")
    assert not os.path.exists(tmp_path / "eval" / "eval_results.json")


@pytest.mark.slow
def test_eval_only_with_its_own_checkpoint_still_evaluates(tiny_shapes, faster_checkpoint, tmp_path):
    out = tmp_path / "eval_same"
    run_train_net(["--eval-only", *_args(tiny_shapes, str(out), max_iter=1),
                   f"train.init_checkpoint={faster_checkpoint}"])
    assert "bbox" in json.loads((out / "eval_results.json").read_text())


def _truncate(path, keep_fraction=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


def _copy_dataset(dataset, root):
    import shutil

    copied = {}
    for name in ("train", "val"):
        image_root = root / name
        shutil.copytree(dataset[name]["image_root"], image_root)
        json_file = root / f"{name}.json"
        shutil.copy(dataset[name]["json_file"], json_file)
        copied[name] = {"json_file": str(json_file), "image_root": str(image_root)}
    return copied


def _with_truncated_image(dataset, root, split):
    """A copy of ``dataset`` whose first image of ``split`` is cut in half (a partial download)."""
    copied = _copy_dataset(dataset, root)
    first = json.loads((root / f"{split}.json").read_text())["images"][0]["file_name"]
    _truncate(root / split / first)
    return copied, str(root / split / first)


@pytest.mark.slow
def test_truncated_training_jpeg_is_skipped_and_stale_temporary_files_removed(tiny_shapes, tmp_path):
    dataset, cut = _with_truncated_image(tiny_shapes, tmp_path / "cut", "train")
    out = tmp_path / "cut_train"
    out.mkdir()
    stale = [out / ".model_0000003.pth.k2j4h5g6.tmp", out / ".last_checkpoint.a1b2c3d4.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    unrelated = out / "notes.tmp"
    unrelated.write_text("mine")
    # 8 iterations of 1 image read every image of the 8 (the sampler shuffles each pass).
    result = run_train_net(_args(dataset, str(out), max_iter=8, workers=1))
    log = result.stdout + result.stderr
    assert f"Skipping image {cut} (OSError: image file is truncated" in log
    assert os.path.isfile(out / "model_final.pth")
    assert not any(path.exists() for path in stale)
    assert unrelated.exists()


@pytest.mark.slow
def test_truncated_evaluation_jpeg_is_named_in_one_line(tiny_shapes, faster_checkpoint, tmp_path):
    dataset, cut = _with_truncated_image(tiny_shapes, tmp_path / "cut", "val")
    result = run_train_net(
        ["--eval-only", *_args(dataset, str(tmp_path / "cut_eval"), max_iter=1),
         f"train.init_checkpoint={faster_checkpoint}", "dataloader.test.num_workers=1"],
        check=False, timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    _assert_one_line(result.stderr, "train_net.py: error: evaluation image", cut, "truncated")


@pytest.mark.slow
def test_evaluation_image_of_another_size_than_the_json_is_one_line(tiny_shapes, faster_checkpoint, tmp_path):
    dataset = _copy_dataset(tiny_shapes, tmp_path / "sized")
    val_json = json.loads(open(dataset["val"]["json_file"]).read())
    first = val_json["images"][0]  # the JSON now gives it another width and height than its file's
    first["width"], first["height"] = first["height"] + 3, first["width"]
    open(dataset["val"]["json_file"], "w").write(json.dumps(val_json))
    result = run_train_net(
        ["--eval-only", *_args(dataset, str(tmp_path / "sized_eval"), max_iter=1),
         f"train.init_checkpoint={faster_checkpoint}"],
        check=False, timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    wrong = os.path.join(dataset["val"]["image_root"], first["file_name"])
    _assert_one_line(result.stderr, f"train_net.py: error: evaluation image {wrong}: its width x height in the JSON is "
                     f"{first['width']}x{first['height']} but the file's is {first['height']}x{first['width'] - 3}")


def test_override_of_the_wrong_type_is_one_line():
    result = train_net_in_process(["--config-file", FASTER, "train.max_iter=abc"])
    assert result.returncode == 2
    _assert_one_line(result.stderr, "train_net.py: error:", "train.max_iter", "'abc'", "integer")


def test_missing_config_file_and_override_without_a_value_are_named():
    with pytest.raises(FileNotFoundError, match="missing_config.py' does not exist"):
        load_config_with_overrides("missing_config.py", [])
    with pytest.raises(ValueError, match="override 'train.max_iter': expected KEY=VALUE"):
        load_config_with_overrides(FASTER, ["train.max_iter"])


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, batch):
        return {"loss_regression": self.linear(batch).pow(2).mean()}


def _plain_trainer(tmp_path, batches):
    """Detectron2's own SimpleTrainer (no agreement on stop signals in its loss check, unlike this
    package's trainers) with the stop hook: the hook agrees on a pending signal itself."""
    from detectron2.checkpoint import Checkpointer
    from detectron2.engine import SimpleTrainer

    from rsb_backbone.engine.stop_signals import CheckpointOnSignalHook

    model = _Regression()
    trainer = SimpleTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([CheckpointOnSignalHook(Checkpointer(model, save_dir=str(tmp_path)))])
    return trainer


def test_a_plain_detectron2_trainer_stops_after_the_iteration_of_a_sigterm_with_a_checkpoint(tmp_path):
    from rsb_backbone.engine.outcomes import TrainingInterrupted

    assert threading.current_thread() is threading.main_thread()  # where signal handlers run
    previous = signal.getsignal(signal.SIGTERM)

    def batches():
        for iteration in itertools.count():
            if iteration == 3:
                signal.raise_signal(signal.SIGTERM)  # during iteration 3: noted, not fatal
            yield torch.ones(4, 2)

    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after iteration 3; checkpoint saved"):
        _plain_trainer(tmp_path, batches()).train(0, 10)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000003.pth"]
    assert signal.getsignal(signal.SIGTERM) is previous  # the hook's handler removed after training


def test_a_signal_recorded_before_training_stops_it_after_its_first_iteration(tmp_path):
    """SLURM's time-limit signal may come while the data set loads: it is noted, and the training
    loop stops after its first iteration; after the block the signal is ignored."""
    from rsb_backbone.engine.outcomes import TrainingInterrupted
    from rsb_backbone.engine.stop_signals import pending_stop_signal, recording_signal

    previous = signal.getsignal(signal.SIGUSR1)
    try:
        with recording_signal(signal.SIGUSR1):
            signal.raise_signal(signal.SIGUSR1)
            assert pending_stop_signal() == signal.SIGUSR1
            with pytest.raises(TrainingInterrupted, match="stopped by SIGUSR1 after iteration 0"):
                _plain_trainer(tmp_path, itertools.repeat(torch.ones(4, 2))).train(0, 10)
        assert pending_stop_signal() == 0
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, previous)


_WORKER = {}


def _note_worker(worker_id):
    _WORKER["id"] = worker_id


class _SignalsSeenByWorkers(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, index):
        ignored = [signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGTERM, signal.SIGINT)]
        return torch.tensor([*ignored, _WORKER.get("id", -1)])


def test_data_loader_workers_ignore_stop_signals_and_still_run_the_loaders_own_init():
    from rsb_backbone.engine.stop_signals import ignore_stop_signals_in_workers

    # The default handlers here (a shell may start a background job with SIGINT ignored), which the
    # workers inherit unless told otherwise.
    previous = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        loader = torch.utils.data.DataLoader(
            _SignalsSeenByWorkers(), batch_size=None, num_workers=1, worker_init_fn=_note_worker
        )
        assert [item.tolist() for item in loader] == [[0, 0, 0]] * 3
        assert ignore_stop_signals_in_workers(loader) is loader
        assert [item.tolist() for item in loader] == [[1, 1, 0]] * 3  # and Detectron2's seeding still runs
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_config_file_with_a_syntax_error_is_one_line(tmp_path):
    broken = tmp_path / "broken_config.py"
    broken.write_text("from configs.shapes import x\nmodel = dict(\n")
    result = train_net_in_process(["--config-file", str(broken)])
    assert result.returncode == 2
    _assert_one_line(result.stderr, "train_net.py: error:", str(broken), "line 2")


@pytest.mark.parametrize(
    "override, value",
    [("train.max_iter=1e3", 1000), ("optimizer.lr=1", 1.0), ("model.backbone.bottom_up.weights=None", None),
     ("train.amp.enabled=true", True)],
)
def test_overrides_of_a_compatible_type_are_accepted(override, value):
    cfg = load_config_with_overrides(FASTER, [override])
    node = cfg
    for part in override.split("=")[0].split("."):
        node = node[part]
    assert node == value and type(node) is type(value)


@pytest.mark.parametrize("override", ["train.amp.enabled=1", "train.max_iter=2.5", "optimizer.lr=fast"])
def test_overrides_of_an_incompatible_type_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=f"override {key}="):
        load_config_with_overrides(FASTER, [override])




# --- real-world data sets and resources that run out ------------------------------------------


def _rewrite_json(path, change):
    data = json.loads(open(path).read())
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.mark.parametrize("case", ["no annotations", "every annotation skipped"])
def test_set_with_nothing_to_train_on_is_one_line_before_training(tiny_shapes, tmp_path, case):
    dataset = _copy_dataset(tiny_shapes, tmp_path / "data")
    train_json = dataset["train"]["json_file"]
    if case == "no annotations":
        _rewrite_json(train_json, lambda data: data.update(annotations=[]))
    else:  # every box degenerate: skipped, and then no image has an annotation
        _rewrite_json(train_json, lambda data: [a.update(bbox=[1, 1, 0, 0]) for a in data["annotations"]])
    name = f"nothing_{case.split()[0]}_{os.getpid()}"  # this process's catalog: a name of its own
    args = _args(dataset, str(tmp_path / "out"), max_iter=2)
    args[args.index(f"tiny_train={train_json}:{dataset['train']['image_root']}")] = (
        f"{name}={train_json}:{dataset['train']['image_root']}"
    )
    args[args.index("dataloader.train.dataset.names=tiny_train")] = f"dataloader.train.dataset.names={name}"
    args[args.index(f"tiny_val={dataset['val']['json_file']}:{dataset['val']['image_root']}")] = (
        f"{name}_val={dataset['val']['json_file']}:{dataset['val']['image_root']}"
    )
    args[args.index("dataloader.test.dataset.names=tiny_val")] = f"dataloader.test.dataset.names={name}_val"
    result = train_net_in_process(args)
    assert result.returncode == 2, result.stderr[-3000:]
    why = (
        f"{train_json} has no annotations"
        if case == "no annotations"
        else f"every one of the {len(json.load(open(tiny_shapes['train']['json_file']))['annotations'])} "
        f"annotations of {train_json} was skipped"
    )
    _assert_one_line(
        result.stderr, f"train_net.py: error: nothing to train on in dataloader.train.dataset.names={name}: ",
        f"{name}: {why}",
    )
    assert not os.path.exists(tmp_path / "out" / "last_checkpoint")


@pytest.mark.slow
def test_two_processes_train_on_a_set_without_area_and_with_an_image_over_the_pixel_limit(tiny_shapes, tmp_path):
    """A labelling tool's export (no area, no iscrowd) with one very large training image: the
    large image is skipped and named in a training process's DataLoader worker, the others train,
    and the final COCO evaluation works."""
    import cv2
    import numpy as np

    dataset = _copy_dataset(tiny_shapes, tmp_path / "data")
    for split in ("train", "val"):
        _rewrite_json(dataset[split]["json_file"], lambda data: [
            (a.pop("area"), a.pop("iscrowd")) for a in data["annotations"]])
    large = os.path.join(dataset["train"]["image_root"], "large.png")
    cv2.imwrite(large, np.full((300, 300, 3), 90, np.uint8))  # 90,000 pixels; the shapes at most 30,976

    def point_first_image_at_the_png(data):
        first = data["images"][0]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first["id"]]
        data["annotations"].append({"id": 10**6, "image_id": first["id"], "category_id": 1, "bbox": [10, 10, 50, 50],
                                    "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]]})
        first.update(file_name="large.png", width=300, height=300)

    _rewrite_json(dataset["train"]["json_file"], point_first_image_at_the_png)
    out = str(tmp_path / "out")
    args = [*_args(dataset, out, max_iter=8, processes=2, workers=1), "train.eval_period=8",
            "train.checkpointer.period=100"]
    result = run_train_net(args, timeout=900, env={"RSB_MAX_IMAGE_PIXELS": "40000"})  # refused over 80,000
    # Each training process logs to its own file (log.txt, log.txt.rank1), rank 0 also to stdout;
    # DataLoader workers' warnings go to stderr.
    log = result.stdout + result.stderr + "".join(open(os.path.join(out, n)).read() for n in os.listdir(out) if n.startswith("log.txt"))
    assert "filled in 'area' of " in log
    assert f"Skipping image {large} (Image size (90000 pixels) exceeds limit of 80000 pixels" in log
    with open(os.path.join(out, "eval_results.json")) as f:
        assert "AP" in json.load(f)["bbox"]


@pytest.mark.slow
def test_full_disk_at_the_first_checkpoint_stops_both_processes_promptly(tiny_shapes, tmp_path, small_filesystem):
    out = small_filesystem(24)  # room for the logs and metrics, not for a ResNet-18 detector's checkpoint
    started = time.time()
    job = _Job(_args(tiny_shapes, out, max_iter=20, processes=2))
    returncode = job.wait(timeout=600)
    stderr = job.err()
    assert returncode == 74, stderr[-3000:]
    assert time.time() - started < 300  # no wait for a collective's 30-minute timeout
    checkpoint = os.path.join(out, "model_0000000.pth")
    _assert_one_line(stderr, f"train_net.py: error: {checkpoint}: cannot be written (No space left on device)",
                     "earlier checkpoints and last_checkpoint are kept")
    job.assert_no_process_left()
    assert not [name for name in os.listdir(out) if name.endswith((".pth", ".tmp")) or name == "last_checkpoint"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_mask_model_on_a_set_without_masks_is_one_line_before_training(tiny_shapes, tmp_path, split):
    """COCO's segm evaluation reads every annotation's 'segmentation', and mask training needs it."""
    dataset = _copy_dataset(tiny_shapes, tmp_path / "data")
    boxes_only = dataset[split]["json_file"]
    _rewrite_json(boxes_only, lambda data: [a.pop("segmentation") for a in data["annotations"]])
    name = f"boxes_only_{split}_{os.getpid()}"  # this process's catalog: names of its own
    args = _args(dataset, str(tmp_path / "out"), max_iter=2, config=shapes_config("mask_rcnn"))
    for old, new in ((f"tiny_train=", f"{name}_t="), (f"tiny_val=", f"{name}_v="),
                     ("names=tiny_train", f"names={name}_t"), ("names=tiny_val", f"names={name}_v")):
        args = [a.replace(old, new) for a in args]
    result = train_net_in_process(args)
    assert result.returncode == 2, result.stderr[-3000:]
    _assert_one_line(result.stderr, f"train_net.py: error: {boxes_only}: no annotation has a 'segmentation' (mask)",
                     f"data set '{name}_{split[0]}' of dataloader.{'train' if split == 'train' else 'test'}")


# ---- A process that stalls or dies: the watchdog, a lost process -------------------------------

# Well above an iteration plus a checkpoint save of the cheapest run (about 1.5 s on 2 busy cores).
TEST_WATCHDOG_S = 20


def _training_processes(job):
    """The spawned training processes of a --num-gpus job (not the launcher, not torch's helpers)."""
    found = []
    for pid in job.group_members():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read() and pid != job.process.pid:
                    found.append(pid)
        except OSError:
            pass
    return found


def _replace_with_fifo(path):
    """Put a FIFO where ``path`` was: reading it blocks for good (a file system that never delivers)."""
    fifo = f"{path}.fifo"
    os.mkfifo(fifo)
    os.replace(fifo, path)


@pytest.mark.slow
def test_one_stalled_process_ends_the_job_with_every_stack_within_the_watchdog_time(tiny_shapes, tmp_path):
    dataset = _copy_dataset(tiny_shapes, tmp_path / "fifo")
    out = str(tmp_path / "stalled")
    job = _Job([*_args(dataset, out, max_iter=500, processes=2), f"train.watchdog_s={TEST_WATCHDOG_S}"])
    job.wait_for(os.path.join(out, "model_0000001.pth"))
    images = json.loads(open(dataset["train"]["json_file"]).read())["images"]
    # One of the 8 images: the process whose share of the next pass holds it stalls reading it.
    _replace_with_fifo(os.path.join(dataset["train"]["image_root"], images[0]["file_name"]))
    stalled_from = time.time()
    returncode = job.wait(timeout=600)
    elapsed = time.time() - stalled_from
    stderr = job.err()
    assert returncode == 124, stderr[-3000:]
    # Both processes stop within the watchdog time (plus the pass of 4 iterations that reaches the
    # image and the 10 s the processes give each other), not after the 30-minute collective timeout.
    assert elapsed < TEST_WATCHDOG_S + 30, elapsed
    _assert_one_line(stderr, f"train_net.py: error: training stalled: no iteration finished for {TEST_WATCHDOG_S} s "
                     "(the last was iteration ", "train.watchdog_s)", "the newest checkpoint is kept; continue with --resume")
    for rank in (0, 1):
        assert f"Process {rank} on " in stderr and "no training iteration finished" in stderr, stderr[-3000:]
    assert stderr.count("(most recent call first)") >= 2  # faulthandler's stacks, one per thread
    assert "in read_image" in stderr  # the stalled process, in the read that never ends
    assert "in _training_processes" not in stderr
    job.assert_no_process_left()
    data = torch.load(_last_checkpoint(out), map_location="cpu", weights_only=True)
    assert data["iteration"] >= 1 and data["model"]


@pytest.mark.slow
def test_a_killed_training_process_ends_the_others_promptly_with_one_line(tiny_shapes, tmp_path):
    out = str(tmp_path / "killed_one")
    job = _Job(_args(tiny_shapes, out, max_iter=500, processes=2))
    job.wait_for(os.path.join(out, "model_0000001.pth"))
    victim = _training_processes(job)[-1]
    os.kill(victim, signal.SIGKILL)  # what the OOM killer does
    killed_at = time.time()
    returncode = job.wait(timeout=120)
    assert time.time() - killed_at < 60
    stderr = job.err()
    assert returncode == 3, stderr[-3000:]
    _assert_one_line(stderr, "train_net.py: error: training process", "was killed by SIGKILL",
                     "out-of-memory killer", "the newest checkpoint is kept; continue with --resume")
    job.assert_no_process_left()
    torch.load(_last_checkpoint(out), map_location="cpu", weights_only=True)
