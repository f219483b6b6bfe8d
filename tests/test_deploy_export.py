"""TorchScript and ONNX export of the six deployable detectors (the four RSB detectors and the
mmdetection-faithful Cascade and RetinaNet), from checkpoints that train_net.py trained (the
session's shared runs, tests/trained_detectors.py: the three R-CNNs fine-tuned from the quick
demo's 200 iterations, so that their RPNs score as trained RPNs do).

On images of two sizes other than the traced one, each exported model gives the PyTorch model's
detections (count, classes, boxes within 1e-3 px + 1e-6 relative, scores within 1e-4, masks with
IoU > 0.99: tests/detection_checks.py), and so does the folded (deployment) form of the model.
The command-line exporter and runner give the COCO AP of ``train_net.py --eval-only``.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.structures import ROIMasks

from conftest import REPO_ROOT
from detection_checks import assert_same_detections
from rsb_backbone.export import ExportedDetector, Preprocessor, export_predictor, preprocessing_spec
from rsb_backbone.inference import LazyConfigPredictor, instances_to_coco_results
from trained_detectors import DEPLOYED, FROM_QUICK_DEMO, MASK_MODELS, VAL_NAME
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
    others = [
        cv2.resize(cv2.imread(os.path.join(root, f)), (w, h)) for f, (h, w) in zip(files[1:], TEST_SIZES)
    ]
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
        assert exported.has_masks == ("mask_probs" in exported.output_names) == (name in MASK_MODELS)
        for image, instances in zip(others, expected):
            assert_same_detections(instances, exported(image)["instances"], f"{name} {fmt} {image.shape}")
        if name in MASK_MODELS:  # the compact form: the same COCO results, pasted one at a time
            compact = ExportedDetector(str(tmp_path / fmt), mask_format="roi")(others[0])["instances"]
            assert isinstance(compact.pred_masks, ROIMasks)
            full = exported(others[0])["instances"]
            assert instances_to_coco_results(compact, 1) == instances_to_coco_results(full, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", FROM_QUICK_DEMO)
def test_the_compared_rcnn_models_have_a_trained_rpn(name, deploy_models, images):
    """The export comparisons above can only catch an NMS that drops low scores if the RPN is
    trained: a randomly initialised one scores every anchor near 0, a trained one puts most of its
    best 1,000 candidates far below 0 (the R-CNNs start from the quick demo's weights)."""
    predictor = _predictor(deploy_models, name)
    rpn = predictor.model.proposal_generator
    logits = []
    predict_proposals = rpn.predict_proposals

    def recording(anchors, objectness, *args):
        logits.append(torch.cat([level.flatten() for level in objectness]))
        return predict_proposals(anchors, objectness, *args)

    rpn.predict_proposals = recording
    predictor(images[0])
    best = logits[0].topk(min(1000, logits[0].numel())).values
    assert (best < -1.0).float().mean() > 0.5, f"{name}: RPN logits of the best candidates {best.quantile(0.5)}"


LARGE_IMAGE_SIZE = 2048
# An exported model's peak memory: at most the PyTorch predictor's + 20 % (TorchScript) or + 25 %
# (ONNX Runtime, whose CPU memory arena grows in large steps: measured 1.21 for the fine-tuned Mask
# R-CNN at 2048 px, 1.08 with the arena off; docs/deployment.md).
MEMORY_MARGIN = {"torchscript": 1.2, "onnx": 1.25}


def _measure_in_child(image_path, output, *form_args):
    """Peak memory (MiB) and detections of one model form, run in a process of its own."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tests", "detection_memory.py"), "--image", image_path,
         "--output", output, *form_args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"{form_args} exited {result.returncode}:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(output) as saved:
        shape = tuple(saved["mask_shape"])
        detections = {k: saved[k] for k in ("boxes", "scores", "classes")}
        detections["masks"] = np.unpackbits(saved["packed_masks"], axis=-1, count=shape[-1]).astype(bool)
    return report["peak_rss_mib"], detections


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mask_rcnn", "cascade_mask_rcnn"])
def test_exported_masks_on_a_large_image_cost_what_the_pytorch_model_does(
    name, deploy_models, images, tmp_path
):
    """On a 2048 x 2048 image with 100 detections (score threshold 0) both export formats give
    the folded PyTorch model's detections and masks, in at most its peak memory + 20 % (ONNX
    Runtime + 25 %): the
    graphs return each box's mask probabilities and the runner pastes them into their boxes."""
    sample, _ = images
    image_path = str(tmp_path / "large.png")
    cv2.imwrite(image_path, cv2.resize(sample, (LARGE_IMAGE_SIZE, LARGE_IMAGE_SIZE)))
    config, checkpoint = deploy_models[name]
    folded = LazyConfigPredictor(config, checkpoint, score_threshold=0.0, fuse=True)
    reference_mib, expected = _measure_in_child(
        image_path, str(tmp_path / "torch.npz"), "--predictor", config, checkpoint
    )
    assert len(expected["scores"]) >= 50 and expected["masks"].shape[1:] == (
        LARGE_IMAGE_SIZE,
        LARGE_IMAGE_SIZE,
    )
    for fmt in ("torchscript", "onnx"):
        export_predictor(folded, sample, str(tmp_path / fmt), fmt)
        peak_mib, actual = _measure_in_child(
            image_path, str(tmp_path / f"{fmt}.npz"), "--exported", str(tmp_path / fmt)
        )
        assert_same_detections(expected, actual, f"{name} {fmt} {LARGE_IMAGE_SIZE}px")
        assert (
            peak_mib <= MEMORY_MARGIN[fmt] * reference_mib
        ), f"{name} {fmt}: peak memory {peak_mib:.0f} MiB, PyTorch predictor {reference_mib:.0f} MiB"


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
    _run_script(
        "run_exported.py", ["--model", export_dir, "--eval", VAL_NAME, "--output", eval_dir, *registration]
    )
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


class _PastedMasksModel(torch.nn.Module):
    """The outputs of an export whose graph pasted the masks: one detection with an image mask."""

    def forward(self, image, height, width):
        masks = torch.zeros(1, int(height), int(width), dtype=torch.bool)
        masks[:, 3:30, 2:20] = True
        return torch.tensor([[2.0, 3.0, 20.0, 30.0]]), torch.tensor([0.9]), torch.tensor([1]), masks


def test_an_export_with_masks_pasted_in_the_graph_still_runs(tmp_path):
    torch.jit.script(_PastedMasksModel()).save(str(tmp_path / "model.ts"))
    spec = {
        "format": "torchscript",
        "model_file": "model.ts",
        "inputs": ["image", "height", "width"],
        "outputs": ["boxes", "scores", "classes", "masks"],
        "preprocessing": {"input_format": "BGR", "short_edge_length": 32, "max_size": 64, "interp": 2},
        "metadata": None,
    }
    (tmp_path / "model.json").write_text(json.dumps(spec))
    for mask_format in ("bitmask", "roi"):
        detector = ExportedDetector(str(tmp_path), mask_format=mask_format)
        instances = detector(np.zeros((40, 50, 3), dtype=np.uint8))["instances"]
        assert detector.has_masks and instances.pred_masks.dtype == torch.bool
        assert instances.pred_masks.shape == (1, 40, 50) and int(instances.pred_masks.sum()) == 27 * 18
        [result] = instances_to_coco_results(instances, 7)
        assert result["bbox"] == [2.0, 3.0, 18.0, 27.0] and result["segmentation"]["size"] == [40, 50]
    with pytest.raises(ValueError, match="mask_format='rle': expected one of"):
        ExportedDetector(str(tmp_path), mask_format="rle")
    # Its threads apply to its calls only: the process's torch threads are left as they were.
    threads = torch.get_num_threads()
    detector = ExportedDetector(str(tmp_path), num_threads=threads + 1)
    assert torch.get_num_threads() == threads
    detector(np.zeros((40, 50, 3), dtype=np.uint8))
    assert torch.get_num_threads() == threads


class _ClassNMS(torch.nn.Module):
    def forward(self, boxes, scores, classes):
        from detectron2.layers import batched_nms

        return batched_nms(boxes, scores, classes, 0.5)


# Scores as the detectors' NMS calls get them: the box heads' probabilities, and the RPN's
# objectness logits, which a trained RPN spreads far below 0 (-8 and lower).
SCORE_KINDS = {
    "probabilities": lambda n, generator: torch.rand(n, generator=generator),
    "logits": lambda n, generator: torch.randn(n, generator=generator) * 4 - 3,
}


@pytest.mark.parametrize("scores", SCORE_KINDS)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_nms_is_recorded_class_by_class_and_keeps_what_eager_nms_keeps(fmt, scores, tmp_path):
    """2,000 overlapping boxes of 5 classes (eager Detectron2 runs NMS per class above 1,000): the
    traced graph, run on other boxes than the traced ones, keeps the same boxes in the same order,
    whatever the range of the scores."""
    from rsb_backbone.export.exporter import _per_class_nms

    def boxes_of(seed, n):
        generator = torch.Generator().manual_seed(seed)
        xy = torch.rand(n, 2, generator=generator) * 100
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=generator) * 30], dim=1)
        return boxes, SCORE_KINDS[scores](n, generator), torch.randint(0, 5, (n,), generator=generator)

    model, path = _ClassNMS(), str(tmp_path / f"nms.{fmt}")
    with _per_class_nms(fmt):
        if fmt == "onnx":
            torch.onnx.export(
                model, boxes_of(0, 2000), path, input_names=["boxes", "scores", "classes"],
                dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}, "classes": {0: "n"}}, opset_version=17,
                dynamo=False,
            )  # fmt: skip
        else:
            torch.jit.trace(model, boxes_of(0, 2000), check_trace=False).save(path)
    if fmt == "onnx":
        import onnx
        import onnxruntime

        ops = [node.op_type for node in onnx.load(path).graph.node]
        assert ops.count("NonMaxSuppression") == 1 and "OneHot" in ops
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        run = lambda b, s, c: torch.as_tensor(  # noqa: E731
            session.run(None, {"boxes": b.numpy(), "scores": s.numpy(), "classes": c.numpy()})[0]
        )
    else:
        run = torch.jit.load(path)
    for seed, n in ((1, 2500), (2, 300), (3, 1)):
        inputs = boxes_of(seed, n)
        expected = model(*inputs)
        assert 0 < len(expected) < n or n == 1
        assert torch.equal(run(*inputs), expected), f"{fmt}: {n} boxes"
    nothing = run(*(t[:0] for t in boxes_of(4, 1)))  # an image without candidates
    assert nothing.shape == (0,) and nothing.dtype == torch.int64
