"""Each of the four RSB detectors trains and evaluates through train_net.py on CPU (the session's
shared runs of tests/trained_detectors.py: 3 iterations, a checkpoint after each, the final
evaluation, then ``--eval-only`` of the final checkpoint)."""

import json
import math
import os

import pytest
import torch

from trained_detectors import CHECKPOINT_PERIOD, MASK_MODELS, MAX_ITER, SHAPES_DETECTORS
from train_net_runner import read_eval_results, read_metrics


def _load_model_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_coco_results(results, detector):
    expected_tasks = {"bbox", "segm"} if detector in MASK_MODELS else {"bbox"}
    assert set(results) == expected_tasks
    for task in expected_tasks:
        assert {"AP", "AP50", "AP75"} <= set(results[task])
        # percentages; NaN where a category or size has no ground truth (pycocotools' -1)
        assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in results[task].values()), results[task]


@pytest.mark.slow
@pytest.mark.parametrize("detector", SHAPES_DETECTORS)
def test_trains_with_finite_losses_and_moves_only_trainable_weights(detector, trained_detectors):
    out = trained_detectors[detector].output_dir
    # Finite losses at every iteration, named as Detectron2 names them.
    records = [r for r in read_metrics(out) if "total_loss" in r]
    assert [r["iteration"] for r in records] == list(range(MAX_ITER))
    assert all(math.isfinite(r["total_loss"]) for r in records)
    loss_names = {k for r in records for k in r if k.startswith("loss_")}
    if detector in MASK_MODELS:
        assert "loss_mask" in loss_names
    # TensorBoard events and checkpoints exist; trainable weights moved, frozen ones did not.
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    first = _load_model_state(os.path.join(out, f"model_{CHECKPOINT_PERIOD - 1:07d}.pth"))  # before the last step
    final = _load_model_state(os.path.join(out, "model_final.pth"))
    changed = [k for k in first if first[k].dtype.is_floating_point and not torch.equal(first[k], final[k])]
    assert any(".layer4." in k for k in changed), "backbone weights did not train"
    assert any(k.startswith(("roi_heads.", "head.")) for k in changed), "head weights did not train"
    frozen = ("backbone.bottom_up.conv1.", "backbone.bottom_up.bn1.", "backbone.bottom_up.layer1.")
    assert not any(k.startswith(frozen) for k in changed), "frozen stem/res2 weights moved"
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"


@pytest.mark.slow
@pytest.mark.parametrize("detector", SHAPES_DETECTORS)
def test_the_final_evaluation_and_eval_only_give_the_same_coco_ap(detector, trained_detectors):
    trained = trained_detectors[detector]
    final = read_eval_results(trained.output_dir)  # written by training's final evaluation
    _assert_coco_results(final, detector)
    assert any("bbox/AP" in r for r in read_metrics(trained.output_dir)), "not in metrics.json"
    evaluated = read_eval_results(trained.eval_dir)  # --eval-only of model_final.pth
    _assert_coco_results(evaluated, detector)
    assert json.dumps(evaluated, sort_keys=True) == json.dumps(final, sort_keys=True)
    with open(os.path.join(trained.eval_dir, "log.txt")) as f:
        assert "copypaste: AP,AP50,AP75" in f.read()
    assert os.path.isfile(os.path.join(trained.eval_dir, "inference", "coco_instances_results.json"))
