"""train_net.py: two-process training, --resume, and clear errors for bad input."""

import json
import os

import pytest

from train_net_runner import FAST_OVERRIDES, dataset_args, read_metrics, run_train_net, shapes_config, train_net_in_process

FASTER = shapes_config("faster_rcnn")


@pytest.mark.slow
def test_two_processes_on_cpu_train_and_evaluate(tiny_shapes, tmp_path):
    out = str(tmp_path / "ddp")
    result = run_train_net(
        [
            "--config-file", FASTER,
            "--num-gpus", "2",
            *dataset_args(tiny_shapes),
            *FAST_OVERRIDES,
            "dataloader.train.total_batch_size=2",  # one image per process
            "train.max_iter=2",
            "train.eval_period=2",
            f"train.output_dir={out}",
        ]
    )
    log = result.stdout + result.stderr
    assert "World size: 2" in log
    records = read_metrics(out)
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1]
    assert any("bbox/AP" in r for r in records), "the periodic evaluation did not run"
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tiny_shapes, tmp_path):
    out = str(tmp_path / "resume")
    common = ["--config-file", FASTER, *dataset_args(tiny_shapes), *FAST_OVERRIDES,
              "train.eval_period=0", "train.checkpointer.period=1", f"train.output_dir={out}"]
    run_train_net([*common, "train.max_iter=2"])
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    result = run_train_net(["--resume", *common, "train.max_iter=4"])
    assert f"Loading from {os.path.join(out, 'model_final.pth')}" in result.stdout + result.stderr
    iterations = [r["iteration"] for r in read_metrics(out) if "total_loss" in r]
    assert iterations == [0, 1, 2, 3], iterations  # 2 and 3 come from the resumed run


def _assert_one_line_error(result, *needles):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines, "no error message"
    last = lines[-1]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last.startswith("train_net.py: error:"), last
    for needle in needles:
        assert needle in last, (needle, last)


def test_an_output_folder_that_is_a_file_is_one_line_before_anything_starts(tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    result = train_net_in_process(["--config-file", FASTER, f"train.output_dir={existing}"])
    assert result.returncode == 2
    _assert_one_line_error(result, f"train.output_dir={existing} is a file; expected a folder")
    assert existing.read_text() == "mine"


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("mine")
    below_a_file = existing / "run1"
    result = train_net_in_process(["--config-file", FASTER, f"train.output_dir={below_a_file}"])
    assert result.returncode == 2
    _assert_one_line_error(result, f"train.output_dir={below_a_file}: cannot be created, {existing} is a file")
    assert existing.read_text() == "mine"


def test_missing_config_file_is_named(tmp_path):
    result = train_net_in_process(["--config-file", str(tmp_path / "nope.py")])
    _assert_one_line_error(result, "nope.py")


def test_unknown_override_key_is_named_with_a_suggestion():
    result = train_net_in_process(["--config-file", FASTER, "train.max_itr=3"])
    _assert_one_line_error(result, "train.max_itr", "train.max_iter")


def test_missing_json_is_named(tmp_path, tiny_shapes):
    image_dir = tiny_shapes["train"]["image_root"]
    result = train_net_in_process(["--config-file", FASTER, "--register-coco", f"mine={tmp_path}/absent.json:{image_dir}"])
    _assert_one_line_error(result, "absent.json")


def test_missing_image_folder_is_named(tmp_path, tiny_shapes):
    json_file = tiny_shapes["train"]["json_file"]
    result = train_net_in_process(["--config-file", FASTER, "--register-coco", f"mine={json_file}:{tmp_path}/no_images"])
    _assert_one_line_error(result, "no_images")


def test_class_count_mismatch_between_train_and_test_sets(tmp_path, tiny_shapes):
    with open(tiny_shapes["val"]["json_file"]) as f:
        data = json.load(f)
    data["categories"].append({"id": 4, "name": "star", "supercategory": "shape"})
    json_file = tmp_path / "val_4_classes.json"
    json_file.write_text(json.dumps(data))
    result = train_net_in_process([
            "--config-file", FASTER,
            *dataset_args(tiny_shapes)[:2],
            "--register-coco", f"val4={json_file}:{tiny_shapes['val']['image_root']}",
            "dataloader.train.dataset.names=tiny_train",
            "dataloader.test.dataset.names=val4",
        ])
    _assert_one_line_error(result, "class mismatch", "tiny_train", "val4")


def test_unregistered_dataset_is_named():
    result = train_net_in_process(["--config-file", FASTER, "dataloader.train.dataset.names=my_missing_set"])
    _assert_one_line_error(result, "my_missing_set", "--register-coco")


def test_eval_only_without_checkpoint_says_what_to_pass(tiny_shapes, tmp_path):
    result = train_net_in_process(
        ["--config-file", FASTER, "--eval-only", *dataset_args(tiny_shapes), *FAST_OVERRIDES, f"train.output_dir={tmp_path}"]
    )
    _assert_one_line_error(result, "train.init_checkpoint")


@pytest.mark.slow
def test_starts_under_torchrun(tiny_shapes, tmp_path):
    import subprocess
    import sys

    from train_net_runner import TRAIN_NET

    out = str(tmp_path / "torchrun")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", TRAIN_NET,
        "--config-file", FASTER, *dataset_args(tiny_shapes), *FAST_OVERRIDES,
        "model.backbone.bottom_up.model_name=resnet18", "train.max_iter=1", "train.eval_period=0",
        f"train.output_dir={out}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "World size: 2" in result.stdout + result.stderr
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_a_one_process_run_sets_its_config_up_once(tiny_shapes, tmp_path, monkeypatch):
    """invoke_main sets the config up before any worker starts (to fail fast); a run in one process
    goes on with that config instead of loading, registering and checking everything again."""
    import train_net

    calls, trained = [], []
    setup_config = train_net.setup_config
    monkeypatch.setattr(train_net, "setup_config", lambda args: calls.append(args) or setup_config(args))
    monkeypatch.setattr(train_net, "do_train", lambda cfg, **kwargs: trained.append(cfg))
    args = ["--config-file", shapes_config("faster_rcnn"), *dataset_args(tiny_shapes), f"train.output_dir={tmp_path}"]
    result = train_net_in_process(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(calls) == 1 and len(trained) == 1
    assert trained[0].train.output_dir == str(tmp_path) and trained[0].model.roi_heads.num_classes == 3
    assert not train_net._CONFIG_OF_PROCESS  # nothing left for a later run in this process
