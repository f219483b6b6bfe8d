"""Nothing is lost when training is interrupted or its disk fills up; corrupted or unsafe
checkpoints are refused; a non-finite loss stops training and keeps the last good checkpoint."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import ConstantParamScheduler

from rsb_backbone.checkpoint import AtomicCheckpointer
from rsb_backbone.engine import NonFiniteLossError, do_train, outcome_of, write_eval_results
from rsb_backbone.utils.errors import OUTPUT_WRITE_EXIT_CODE, OutputWriteError
from rsb_backbone.utils.file_io import atomic_write_bytes

from conftest import REPO_ROOT, CreatesFileWhenUnpickled, fill_filesystem
from train_net_runner import FAST_OVERRIDES, TRAIN_NET, dataset_args, read_metrics, run_train_net, shapes_config

FASTER = shapes_config("faster_rcnn")


def _train_args(tiny_shapes, out, max_iter):
    return [
        "--config-file", FASTER, *dataset_args(tiny_shapes), *FAST_OVERRIDES,
        "model.backbone.bottom_up.model_name=resnet18",  # cheapest trunk: these tests are about the loop
        f"train.max_iter={max_iter}", "train.eval_period=0", "train.checkpointer.period=1",
        "train.checkpointer.max_to_keep=3", f"train.output_dir={out}",
    ]


def _wait_for(path, process, timeout=600):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            raise AssertionError(f"training ended (rc={process.returncode}) before {path} appeared:\n"
                                 + _stderr_of(process)[-3000:])
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.2)


def _start(args):
    """Start train_net.py; its stderr goes to a temporary file (a pipe could fill up and block it)."""
    import tempfile

    stderr = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen([sys.executable, TRAIN_NET, *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=stderr, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    process.stderr_file = stderr
    return process


def _stderr_of(process):
    process.stderr_file.seek(0)
    return process.stderr_file.read()


def _last_checkpoint(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return os.path.join(out, f.read().strip())


def _assert_complete_checkpoint(path):
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert "model" in data and "iteration" in data
    assert all(torch.isfinite(v).all() for v in data["model"].values() if v.dtype.is_floating_point)
    return data


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_reaches_max_iter(tiny_shapes, tmp_path):
    out = str(tmp_path / "killed")
    args = _train_args(tiny_shapes, out, max_iter=5)
    process = _start(args)
    _wait_for(os.path.join(out, "model_0000001.pth"), process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = _assert_complete_checkpoint(_last_checkpoint(out))["iteration"]

    run_train_net(["--resume", *args])
    assert _last_checkpoint(out).endswith("model_final.pth")
    final = _assert_complete_checkpoint(_last_checkpoint(out))
    assert final["iteration"] == 4
    # The resumed run logs every iteration after the saved one. (Detectron2 writes metrics after
    # the checkpoint hook, so the saved iteration's own line may have died with the process.)
    resumed = [r["iteration"] for r in read_metrics(out) if "total_loss" in r and r["iteration"] > saved]
    assert resumed == list(range(saved + 1, 5))


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import rsb_backbone.utils.file_io as checkpoint_module

    real_save = torch.save
    calls = {"n": 0}

    def save_then_die_halfway(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 3:
            return real_save(obj, f, *args, **kwargs)
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])  # half of the third checkpoint is on disk...
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # ...when the process is killed

    checkpoint_module.torch.save = save_then_die_halfway
    sys.argv = ["train_net.py"] + sys.argv[1:]
    sys.path.insert(0, REPO_ROOT)
    import runpy
    runpy.run_path(TRAIN_NET, run_name="__main__")
    """
)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_keeps_the_previous_one(tiny_shapes, tmp_path):
    out = str(tmp_path / "killed_in_save")
    args = _train_args(tiny_shapes, out, max_iter=4)
    script = KILL_DURING_SAVE.replace("REPO_ROOT", repr(REPO_ROOT)).replace("TRAIN_NET", repr(TRAIN_NET))
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    # The third save (iteration 2) died half-written: the pointer still names iteration 1's file.
    last = _last_checkpoint(out)
    assert last.endswith("model_0000001.pth")
    assert _assert_complete_checkpoint(last)["iteration"] == 1
    assert not os.path.exists(os.path.join(out, "model_0000002.pth"))

    run_train_net(["--resume", *args])
    final = _assert_complete_checkpoint(_last_checkpoint(out))
    assert final["iteration"] == 3
    # The leftover temporary file of the killed save is not mistaken for a checkpoint.
    assert _last_checkpoint(out).endswith("model_final.pth")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_saves_a_checkpoint_then_exits(signum, tiny_shapes, tmp_path):
    out = str(tmp_path / "stopped")
    args = _train_args(tiny_shapes, out, max_iter=50)
    process = _start(args)
    _wait_for(os.path.join(out, "model_0000000.pth"), process)
    process.send_signal(signum)
    process.wait(timeout=300)
    stderr = _stderr_of(process)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "checkpoint saved" in stderr and "--resume" in stderr
    stopped_at = _assert_complete_checkpoint(_last_checkpoint(out))["iteration"]
    assert 0 <= stopped_at < 49
    assert os.path.basename(_last_checkpoint(out)) == f"model_{stopped_at:07d}.pth"

    run_train_net(["--resume", *_train_args(tiny_shapes, out, max_iter=stopped_at + 2)])
    iterations = [r["iteration"] for r in read_metrics(out) if "total_loss" in r]
    assert iterations[-1] == stopped_at + 1


@pytest.mark.slow
def test_corrupted_checkpoint_is_named_on_resume(tiny_shapes, tmp_path):
    out = str(tmp_path / "corrupt")
    args = _train_args(tiny_shapes, out, max_iter=1)
    run_train_net(args)
    last = _last_checkpoint(out)
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) // 3)
    result = run_train_net(["--resume", *_train_args(tiny_shapes, out, max_iter=3)], check=False)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("train_net.py: error:") and os.path.basename(last) in last_line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_get_the_permissions_of_any_file_the_user_writes(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
        checkpointer.save("model_final")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    assert oct(os.stat(tmp_path / "model_final.pth").st_mode & 0o777) == oct(mode)
    assert oct(os.stat(tmp_path / "last_checkpoint").st_mode & 0o777) == oct(mode)
    assert os.stat(plain).st_mode & 0o777 == mode


def test_checkpoint_whose_unpickling_runs_code_is_refused(tmp_path):
    marker = tmp_path / "created-by-pickle"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {}, "iteration": 1, "evil": CreatesFileWhenUnpickled(str(marker))}, path)
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    with pytest.raises(ValueError, match="model_final.pth.*refused"):
        checkpointer.resume_or_load("", resume=True)
    assert not marker.exists()


@pytest.mark.slow
def test_divergence_in_a_real_detector_stops_with_the_iteration(tiny_shapes, tmp_path):
    # pixel_std of 0 turns every normalized pixel into inf/nan: the first iteration diverges.
    result = run_train_net(
        [*_train_args(tiny_shapes, str(tmp_path / "nan"), max_iter=3), "model.pixel_std=[0.0,0.0,0.0]"],
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert "at iteration 0" in last_line and "NaN" in last_line, last_line
    assert "the last complete checkpoint is kept" in last_line


class _LossBecomesNaN(torch.nn.Module):
    """A tiny trainable model whose second loss turns NaN from a given step on."""

    def __init__(self, nan_from_step: int):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.nan_from_step = nan_from_step
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        self.steps += 1
        value = self.linear(batch).pow(2).mean()
        bad = value * float("nan") if int(self.steps) > self.nan_from_step else value
        return {"loss_fine": value, "loss_breaks": bad}


def _endless_batches():
    generator = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(8, 4, generator=generator)


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "nan_run")
    cfg = OmegaConf.create()
    cfg.model = L(_LossBecomesNaN)(nan_from_step=3)  # steps 1-3 fine: iterations 0, 1, 2
    cfg.optimizer = L(torch.optim.SGD)(params=L(get_default_optimizer_params)(), lr=0.01)
    cfg.dataloader = OmegaConf.create({"train": L(_endless_batches)()})
    cfg.lr_multiplier = L(ConstantParamScheduler)(value=1.0)
    cfg.train = dict(
        output_dir=out, init_checkpoint="", max_iter=10, amp=dict(enabled=False),
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
        checkpointer=dict(period=1, max_to_keep=100), eval_period=0, log_period=1, device="cpu",
    )
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss_breaks=nan"):
        do_train(cfg, resume=False)
    last = _last_checkpoint(out)
    assert last.endswith("model_0000002.pth")
    assert _assert_complete_checkpoint(last)["iteration"] == 2
    assert not os.path.exists(os.path.join(out, "model_final.pth"))


# --- a full disk or quota --------------------------------------------------------------------


def _files_of(folder):
    return sorted(name for name in os.listdir(folder) if name not in ("filler", "lost+found"))


def test_full_disk_while_saving_keeps_the_previous_checkpoint_and_last_checkpoint(small_filesystem):
    out = small_filesystem(2)
    model = torch.nn.Linear(256, 256)  # 257 KiB of weights
    checkpointer = AtomicCheckpointer(model, out)
    checkpointer.save("model_0000000", iteration=0)
    fill_filesystem(out, leave_bytes=64 * 1024)  # room for last_checkpoint, not for a checkpoint
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OutputWriteError) as info:
        checkpointer.save("model_0000001", iteration=1)
    path = os.path.join(out, "model_0000001.pth")
    assert str(info.value) == f"{path}: cannot be written (No space left on device)"
    assert info.value.errno == errno.ENOSPC
    assert _files_of(out) == ["last_checkpoint", "model_0000000.pth"]  # no temporary file, no half file
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000000.pth"
    saved = torch.load(os.path.join(out, "model_0000000.pth"), weights_only=True)
    assert saved["iteration"] == 0 and not torch.equal(saved["model"]["weight"], model.weight)
    outcome = outcome_of(info.value)
    assert outcome.exit_code == OUTPUT_WRITE_EXIT_CODE == 74
    assert outcome.message == f"error: {path}: cannot be written (No space left on device); " + (
        "earlier checkpoints and last_checkpoint are kept"
    )


def test_full_disk_while_writing_last_checkpoint_and_eval_results_keeps_the_old_files(small_filesystem):
    out = small_filesystem(1)
    atomic_write_bytes(os.path.join(out, "last_checkpoint"), b"model_0000000.pth")
    write_eval_results({"bbox": {"AP": 1.0}}, out)
    fill_filesystem(out)
    with pytest.raises(OutputWriteError, match="last_checkpoint: cannot be written \\(No space left on device\\)"):
        AtomicCheckpointer(torch.nn.Linear(2, 2), out).tag_last_checkpoint("model_0000001.pth")
    with pytest.raises(OutputWriteError, match="eval_results.json: cannot be written \\(No space left"):
        write_eval_results({"bbox": {"AP": 2.0}}, out)
    assert _files_of(out) == ["eval_results.json", "last_checkpoint"]
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000000.pth"
    with open(os.path.join(out, "eval_results.json")) as f:
        assert json.load(f) == {"bbox": {"AP": 1.0}}


@pytest.mark.slow
def test_full_disk_while_exporting_or_publishing_is_one_line_and_leaves_nothing(small_filesystem, tmp_path, caplog):
    from detectron2.config import instantiate

    from rsb_backbone.checkpoint.publishing import publish_checkpoint
    from rsb_backbone.config import load_config_with_overrides
    from rsb_backbone.export.exporter import trace_detector
    from rsb_backbone.utils.errors import run_command

    out = small_filesystem(1)
    fill_filesystem(out)
    cfg = load_config_with_overrides(
        FASTER, ["model.backbone.bottom_up.model_name=resnet18", "model.backbone.bottom_up.weights=None"]
    )
    model = instantiate(cfg.model).eval()
    sample = (torch.zeros(3, 64, 96), torch.tensor(64), torch.tensor(96))
    for fmt, name in (("torchscript", "model.ts"), ("onnx", "model.onnx")):
        with pytest.raises(OutputWriteError, match=re.escape(f"{name}: cannot be written (No space left on device)")):
            trace_detector(model, sample, os.path.join(out, name), fmt)
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, weights)
    with pytest.raises(OutputWriteError, match=re.escape("cannot be written (No space left on device)")) as info:
        publish_checkpoint(weights, os.path.join(out, "published.pth"))
    assert os.path.basename(info.value.path).startswith("published-")
    assert _files_of(out) == []
    # The command-line tools of projects/ (export, publish) end with one logged line and exit code 74.
    with pytest.raises(SystemExit) as exited:
        run_command(lambda: publish_checkpoint(weights, os.path.join(out, "published.pth")) and 0)
    assert exited.value.code == OUTPUT_WRITE_EXIT_CODE
    assert caplog.records[-1].getMessage().endswith("cannot be written (No space left on device)")


def test_full_disk_while_writing_metrics_names_metrics_json(small_filesystem):
    from detectron2.utils.events import EventStorage

    from rsb_backbone.engine.training import _FileNamingWriter, _training_writers

    out = small_filesystem(1)
    (metrics,) = [w for w in _training_writers(out, max_iter=10) if isinstance(w, _FileNamingWriter)]
    fill_filesystem(out)
    with EventStorage(0) as storage:
        storage.put_scalar("loss", 1.0)
        with pytest.raises(OutputWriteError) as info:
            metrics.write()
        metrics.write()  # after_train writes and closes again: the first error stays the one reported
        metrics.close()
    assert str(info.value) == f"{os.path.join(out, 'metrics.json')}: cannot be written (No space left on device)"
