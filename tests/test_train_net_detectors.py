"""Each of the four RSB detectors trains and evaluates through train_net.py on CPU."""

import math
import os

import pytest
import torch

from train_net_runner import (
    FAST_OVERRIDES,
    dataset_args,
    read_eval_results,
    read_metrics,
    run_train_net,
    shapes_config,
)

DETECTORS = ["faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet"]
MASK_DETECTORS = {"mask_rcnn", "cascade_mask_rcnn"}


def _load_model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("detector", DETECTORS)
def test_trains_then_evaluates_checkpoint(detector, tiny_shapes, tmp_path):
    out = str(tmp_path / "train")
    run_train_net(
        [
            "--config-file", shapes_config(detector),
            *dataset_args(tiny_shapes),
            *FAST_OVERRIDES,
            "train.max_iter=3",
            "train.eval_period=0",
            "train.checkpointer.period=1",
            "train.checkpointer.max_to_keep=10",  # keep model_0000000.pth for the comparison below
            f"train.output_dir={out}",
        ]
    )
    # Finite losses at every iteration, named as Detectron2 names them.
    records = [r for r in read_metrics(out) if "total_loss" in r]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all(math.isfinite(r["total_loss"]) for r in records)
    loss_names = {k for r in records for k in r if k.startswith("loss_")}
    if detector in MASK_DETECTORS:
        assert "loss_mask" in loss_names
    # TensorBoard events and checkpoints exist; trainable weights moved, frozen ones did not.
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    first = _load_model_state(os.path.join(out, "model_0000000.pth"))
    final = _load_model_state(os.path.join(out, "model_final.pth"))
    changed = [k for k in first if first[k].dtype.is_floating_point and not torch.equal(first[k], final[k])]
    assert any(".layer4." in k for k in changed), "backbone weights did not train"
    assert any(k.startswith(("roi_heads.", "head.")) for k in changed), "head weights did not train"
    frozen = ("backbone.bottom_up.conv1.", "backbone.bottom_up.bn1.", "backbone.bottom_up.layer1.")
    assert not any(k.startswith(frozen) for k in changed), "frozen stem/res2 weights moved"
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"

    # --eval-only on that checkpoint: COCO AP from pycocotools-format evaluation.
    eval_out = str(tmp_path / "eval")
    result = run_train_net(
        [
            "--config-file", shapes_config(detector),
            "--eval-only",
            *dataset_args(tiny_shapes),
            *FAST_OVERRIDES,
            f"train.init_checkpoint={out}/model_final.pth",
            f"train.output_dir={eval_out}",
        ]
    )
    results = read_eval_results(eval_out)
    expected_tasks = {"bbox", "segm"} if detector in MASK_DETECTORS else {"bbox"}
    assert set(results) == expected_tasks
    for task in expected_tasks:
        assert {"AP", "AP50", "AP75"} <= set(results[task])
        # percentages; NaN where a category or size has no ground truth (pycocotools' -1)
        assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in results[task].values()), results[task]
    assert "copypaste: AP,AP50,AP75" in result.stdout + result.stderr
    assert os.path.isfile(os.path.join(eval_out, "inference", "coco_instances_results.json"))
