"""TorchScript and ONNX export of the six deployable detectors (the four RSB detectors and the
mmdetection-faithful Cascade and RetinaNet), from checkpoints that train_net.py trained briefly.

On images of two sizes other than the traced one, each exported model gives the PyTorch model's
detections (count, classes, boxes within 1e-3 relative, masks with IoU > 0.99), and so does the
folded (deployment) form of the model. The command-line exporter and runner give the COCO AP of
``train_net.py --eval-only``.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from deploy_training import (
    DEPLOY_CONFIGS,
    MASK_MODELS,
    VAL_NAME,
    model_overrides,
    register_args,
    train_deploy_checkpoints,
)
from detection_checks import assert_same_detections
from rsb_backbone.deploy import ExportedDetector, Preprocessor, export_predictor, preprocessing_spec
from rsb_backbone.inference import LazyConfigPredictor
from train_net_runner import read_eval_results, run_train_net

# Low enough that the briefly trained models detect something, above RetinaNet's prior (0.01).
SCORE_THRESHOLD = 0.02
TEST_SIZES = [(150, 220), (260, 140)]  # (height, width) of the compared images


@pytest.fixture(scope="session")
def deploy_data(tmp_path_factory):
    from shapes_generator import generate_shapes_dataset

    root = tmp_path_factory.mktemp("deploy_data") / "shapes"
    return generate_shapes_dataset(str(root), num_train=8, num_val=4, min_size=128, max_size=176, seed=1)


@pytest.fixture(scope="session")
def deploy_models(deploy_data, tmp_path_factory):
    """name -> (saved config.yaml, model_final.pth) after 2 training iterations."""
    return train_deploy_checkpoints(deploy_data, str(tmp_path_factory.mktemp("deploy_train")))


@pytest.fixture(scope="session")
def images(deploy_data):
    """The traced image (first val image) and two generated images of other sizes."""
    root = deploy_data["val"]["image_root"]
    files = sorted(os.listdir(root))
    sample = cv2.imread(os.path.join(root, files[0]))
    others = [cv2.resize(cv2.imread(os.path.join(root, f)), (w, h)) for f, (h, w) in zip(files[1:], TEST_SIZES)]
    return sample, others


# CPU time: at most 20 detections per image (configs: 100), so fewer masks to paste.
MAX_DETECTIONS = 20


def _predictor(models, name, fuse=False):
    config, checkpoint = models[name]
    predictor = LazyConfigPredictor(config, checkpoint, score_threshold=SCORE_THRESHOLD, fuse=fuse)
    for module in predictor.model.modules():
        for cap in ("test_topk_per_image", "max_detections_per_image"):
            if hasattr(module, cap):
                setattr(module, cap, MAX_DETECTIONS)
    return predictor


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEPLOY_CONFIGS))
def test_exported_models_give_pytorch_detections(name, deploy_models, images, tmp_path):
    sample, others = images
    reference = _predictor(deploy_models, name)
    preprocess = Preprocessor(preprocessing_spec(reference))
    traced_shape = preprocess(sample)[0].shape
    assert all(preprocess(image)[0].shape != traced_shape for image in others)
    expected = [reference(image)["instances"] for image in others]
    assert all(len(e) > 0 for e in expected), f"{name}: no detection to compare"

    # The deployment form of the PyTorch model (norm layers folded).
    folded = _predictor(deploy_models, name, fuse=True)
    for image, instances in zip(others, expected):
        assert_same_detections(instances, folded(image)["instances"], f"{name} folded {image.shape}")

    for fmt in ("torchscript", "onnx"):  # both exported from the folded model
        written = export_predictor(folded, sample, str(tmp_path / fmt), fmt)
        with open(written["spec"]) as f:
            spec = json.load(f)
        assert spec["metadata"]["thing_classes"] == ["circle", "square", "triangle"]
        assert spec["norms_folded"] and spec["score_threshold"] == SCORE_THRESHOLD
        exported = ExportedDetector(str(tmp_path / fmt))
        assert ("masks" in exported.output_names) == (name in MASK_MODELS)
        for image, instances in zip(others, expected):
            assert_same_detections(instances, exported(image)["instances"], f"{name} {fmt} {image.shape}")


def _run_script(script, args):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "projects", "deploy", script), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_onnx_model_evaluates_like_train_net_eval_only(deploy_models, deploy_data, tmp_path):
    name = "mask_rcnn"
    config, checkpoint = deploy_models[name]
    registration = register_args(deploy_data)
    export_dir, eval_dir = str(tmp_path / "onnx"), str(tmp_path / "onnx_eval")
    exported = _run_script(
        "export_model.py",
        ["--config-file", config, "--checkpoint", checkpoint, "--format", "onnx", "--output", export_dir,
         *registration],
    )  # fmt: skip
    assert "Class names: circle, square, triangle" in exported.stderr
    _run_script("run_exported.py", ["--model", export_dir, "--eval", VAL_NAME, "--output", eval_dir, *registration])
    with open(os.path.join(eval_dir, "eval_results.json")) as f:
        onnx_results = json.load(f)

    train_net_dir = str(tmp_path / "train_net_eval")
    run_train_net(
        ["--config-file", os.path.join(REPO_ROOT, DEPLOY_CONFIGS[name]), "--eval-only", *registration,
         f"train.init_checkpoint={checkpoint}", f"train.output_dir={train_net_dir}", "train.device=cpu",
         *model_overrides(name)]
    )  # fmt: skip
    expected = read_eval_results(train_net_dir)
    assert set(onnx_results) == set(expected) == {"bbox", "segm"}
    assert np.isfinite(expected["bbox"]["AP"]) and np.isfinite(onnx_results["bbox"]["AP"])
    assert abs(onnx_results["bbox"]["AP"] - expected["bbox"]["AP"]) <= 0.1, (onnx_results, expected)
    assert abs(onnx_results["segm"]["AP"] - expected["segm"]["AP"]) <= 0.1, (onnx_results, expected)

    # Images in, COCO results out (the file pycocotools' loadRes reads).
    from pycocotools.coco import COCO

    results_dir = str(tmp_path / "onnx_results")
    _run_script(
        "run_exported.py",
        ["--model", export_dir, "--input", deploy_data["val"]["image_root"],
         "--coco-json", deploy_data["val"]["json_file"], "--output", results_dir],
    )  # fmt: skip
    coco = COCO(deploy_data["val"]["json_file"])
    detections = coco.loadRes(os.path.join(results_dir, "predictions.json"))
    assert len(detections.getAnnIds()) > 0


def test_exported_detector_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json: no such file"):
        ExportedDetector(str(tmp_path / "missing"))
