"""TorchScript and ONNX export of the six deployable detectors (the four RSB detectors and the
mmdetection-faithful Cascade and RetinaNet), from checkpoints that train_net.py trained briefly
(the session's shared runs, tests/trained_detectors.py).

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
from detection_checks import assert_same_detections
from rsb_backbone.export import ExportedDetector, Preprocessor, export_predictor, preprocessing_spec
from rsb_backbone.inference import LazyConfigPredictor
from trained_detectors import DEPLOYED, MASK_MODELS, VAL_NAME
from train_net_runner import dataset_args, read_eval_results

# Low enough that the briefly trained models detect something, above RetinaNet's prior (0.01).
SCORE_THRESHOLD = 0.02
TEST_SIZES = [(150, 220), (260, 140)]  # (height, width) of the compared images


@pytest.fixture(scope="session")
def deploy_models(trained_detectors):
    """name -> (saved config.yaml, model_final.pth) of the session's shared train_net.py runs."""
    return {name: (trained.config, trained.checkpoint) for name, trained in trained_detectors.items()}


@pytest.fixture(scope="session")
def images(tiny_shapes):
    """The traced image (first val image) and two generated images of other sizes."""
    root = tiny_shapes["val"]["image_root"]
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
@pytest.mark.parametrize("name", DEPLOYED)
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
def test_onnx_model_evaluates_like_train_net_eval_only(trained_detectors, tiny_shapes, tmp_path):
    name = "mask_rcnn"
    config, checkpoint = trained_detectors[name].config, trained_detectors[name].checkpoint
    registration = dataset_args(tiny_shapes)[:4]  # the --register-coco arguments
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

    expected = read_eval_results(trained_detectors[name].eval_dir)  # train_net.py --eval-only
    assert set(onnx_results) == set(expected) == {"bbox", "segm"}
    assert np.isfinite(expected["bbox"]["AP"]) and np.isfinite(onnx_results["bbox"]["AP"])
    assert abs(onnx_results["bbox"]["AP"] - expected["bbox"]["AP"]) <= 0.1, (onnx_results, expected)
    assert abs(onnx_results["segm"]["AP"] - expected["segm"]["AP"]) <= 0.1, (onnx_results, expected)

    # Images in, COCO results out (the file pycocotools' loadRes reads).
    from pycocotools.coco import COCO

    results_dir = str(tmp_path / "onnx_results")
    _run_script(
        "run_exported.py",
        ["--model", export_dir, "--input", tiny_shapes["val"]["image_root"],
         "--coco-json", tiny_shapes["val"]["json_file"], "--output", results_dir],
    )  # fmt: skip
    coco = COCO(tiny_shapes["val"]["json_file"])
    detections = coco.loadRes(os.path.join(results_dir, "predictions.json"))
    assert len(detections.getAnnIds()) > 0


def test_exported_detector_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json: no such file"):
        ExportedDetector(str(tmp_path / "missing"))
