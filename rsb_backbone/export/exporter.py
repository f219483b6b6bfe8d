"""Exporting a detector to TorchScript (``model.ts``) or ONNX (``model.onnx``) with Detectron2's
``TracingAdapter``, with the ``model.json`` that :class:`.ExportedDetector` reads (outputs, model
metadata, the test resize done outside the graph). Inputs, outputs, mask pasting: docs/deployment.md.

Mask models return each detection's M x M mask probabilities (``mask_probs``), not image-sized
masks: pasting a mask into its box is left to the runner, as Detectron2 does it on the CPU (one box
at a time, into the box's region), so that an exported model's memory and time follow its boxes
and not the image's area."""

import contextlib
import io
import json
import logging
import os
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torchvision.ops.boxes as box_ops
from torch import nn

import detectron2.data.transforms as T
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess

from ..config import score_threshold_of
from ..checkpoint.model_metadata import storable_model_metadata
from ..modeling.fold_norms import to_deployment_form
from ..utils.file_io import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "SPEC_FILE", "Preprocessor", "export_predictor", "preprocessing_spec", "trace_detector"]

MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
FORMATS = tuple(MODEL_FILES)
SPEC_FILE = "model.json"
INPUT_NAMES = ("image", "height", "width")
OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs")
ONNX_OPSET = 17
_INPUT_FORMATS = ("RGB", "BGR")


def preprocessing_spec(predictor) -> Dict[str, Any]:
    """The resize and channel order of a predictor, as the exported model's JSON stores them.

    Args:
        predictor: a :class:`~rsb_backbone.inference.LazyConfigPredictor` or Detectron2
            ``DefaultPredictor``.

    Raises:
        ValueError: the test augmentations are not one ``ResizeShortestEdge`` to one size.
    """
    augs = getattr(predictor, "augmentations", None)  # LazyConfigPredictor: an AugmentationList
    augs = list(getattr(augs, "augs", [])) if augs is not None else [getattr(predictor, "aug", None)]
    resize = augs[0] if len(augs) == 1 else None
    if not isinstance(resize, T.ResizeShortestEdge):
        raise ValueError(
            f"the test augmentations are {[type(a).__name__ for a in augs]}; exporting needs exactly one "
            f"ResizeShortestEdge (the resize is done outside the exported model)"
        )
    sizes = set(int(s) for s in resize.short_edge_length)
    if len(sizes) != 1:
        raise ValueError(
            f"test resize short_edge_length={list(resize.short_edge_length)} is not one size; "
            f"an exported model resizes to one"
        )
    return {
        "input_format": predictor.input_format,
        "short_edge_length": sizes.pop(),
        "max_size": int(resize.max_size),
        "interp": int(resize.interp),
    }


class Preprocessor:
    """A (H, W, 3) uint8 BGR image (as ``cv2.imread`` returns it) -> the exported model's inputs:
    the float32 (3, h, w) image resized in the model's channel order (not normalized: the model
    normalizes), and the original height and width as int64 scalars.

    Args:
        spec: :func:`preprocessing_spec`'s dict.
    """

    def __init__(self, spec: Dict[str, Any]):
        if spec.get("input_format") not in _INPUT_FORMATS:
            raise ValueError(
                f"preprocessing input_format={spec.get('input_format')!r}: expected one of {_INPUT_FORMATS}"
            )
        self.input_format = spec["input_format"]
        self.resize = T.ResizeShortestEdge(
            spec["short_edge_length"], spec["max_size"], sample_style="choice", interp=spec["interp"]
        )

    def __call__(self, image_bgr: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not (isinstance(image_bgr, np.ndarray) and image_bgr.ndim == 3 and image_bgr.shape[2] == 3):
            raise ValueError(f"image has shape {getattr(image_bgr, 'shape', None)}; expected (H, W, 3) BGR")
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(np.ascontiguousarray(resized.astype("float32").transpose(2, 0, 1)))
        return tensor, torch.tensor(height, dtype=torch.int64), torch.tensor(width, dtype=torch.int64)


def detection_tensors(model: nn.Module, image: torch.Tensor, height: torch.Tensor, width: torch.Tensor):
    """Run ``model`` on one image; return ``(boxes, scores, classes[, mask_probs])`` tensors in
    original image coordinates (R-CNNs: ``detector_postprocess`` here; ``mask_probs``: (N, M, M)
    float probabilities of each box's mask, pasted by the runner).

    Args:
        model: a Detectron2 detector in eval mode.
        image: (3, h, w) float, resized, in the model's channel order.
        height, width: the original image size (int64 scalars) the detections are scaled to.
    """
    if not isinstance(model, GeneralizedRCNN):
        instances = model([{"image": image, "height": height, "width": width}])[0]["instances"]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes
    instances = model.inference([{"image": image}], do_postprocess=False)[0]
    if instances.has("pred_masks"):  # probabilities (N, 1, M, M), renamed: kept from detector_postprocess
        instances.mask_probs = instances.pred_masks[:, 0]
        instances.remove("pred_masks")
    instances = detector_postprocess(instances, height, width)
    outputs = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
    if instances.has("mask_probs"):
        outputs += (instances.mask_probs,)
    return outputs


_LOWEST_FLOAT32 = float(np.finfo(np.float32).min)


class _PerClassNMS(torch.autograd.Function):
    """``batched_nms`` whose ONNX form is one ``NonMaxSuppression`` with a class axis.

    Traced, torchvision's ``batched_nms`` always takes its coordinate trick: every class's boxes
    moved apart and one NMS over all of them. With the R-CNN box head's R x K candidates (80,000
    at score threshold 0) that NMS is quadratic in all of them, and ONNX Runtime spent 9.6 s of
    Faster R-CNN's 14 s in it at 512 px. Eager PyTorch runs NMS class by class above 1,000
    boxes; this graph does the same: boxes (1, N, 4), scores (1, K, N) holding each box's score
    in its own class and -inf elsewhere, so each class's NMS sees only its own boxes.

    Scores may be any finite number: the RPN's are objectness logits, most of them far below 0
    once a model is trained. ``NonMaxSuppression`` keeps a box whose score is above its
    ``score_threshold``; the threshold is float32's lowest finite value, so that it drops exactly
    the -inf entries of other classes and keeps every real score.
    """

    @staticmethod
    def forward(ctx, boxes, scores, idxs, iou_threshold: float):
        # torchvision's own per-class path (private; what its batched_nms runs eagerly above 1,000 boxes)
        return box_ops._batched_nms_vanilla(boxes, scores, idxs, iou_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, idxs, iou_threshold: float):
        def const(value, dtype=torch.int64):
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        # K = largest class + 1; the 0 appended keeps ReduceMax defined when there is no box
        largest = g.op("ReduceMax", g.op("Concat", idxs, const([0]), axis_i=0), keepdims_i=1)
        depth = g.op("Add", largest, const([1]))
        one_hot = g.op("OneHot", idxs, depth, const([0, 1]), axis_i=0)  # (K, N)
        own_class = g.op("Cast", one_hot, to_i=9)  # bool
        unset = const(float("-inf"), torch.float32)
        class_scores = g.op("Where", own_class, g.op("Unsqueeze", scores, const([0])), unset)
        selected = g.op(
            "NonMaxSuppression",
            g.op("Unsqueeze", boxes, const([0])),  # IoU is the same for (x0, y0, x1, y1) and (y0, x0, y1, x1)
            g.op("Unsqueeze", class_scores, const([0])),
            const([2**31 - 1]),  # no cap per class
            const([iou_threshold], torch.float32),
            const([_LOWEST_FLOAT32], torch.float32),  # drops the -inf entries, keeps every finite score
        )  # (M, 3): batch, class, box
        kept = g.op("Squeeze", g.op("Gather", selected, const([2]), axis_i=1), const([1]))
        kept_scores = g.op("Gather", scores, kept, axis_i=0)
        count = g.op("Unsqueeze", g.op("Size", kept), const([0]))
        _, order = g.op("TopK", kept_scores, count, axis_i=0, largest_i=1, sorted_i=1, outputs=2)
        return g.op("Gather", kept, order, axis_i=0)


def _batched_nms_for_export(fmt: str):
    """``torchvision.ops.boxes.batched_nms`` for tracing into ``fmt``: NMS class by class."""

    def batched_nms(boxes, scores, idxs, iou_threshold: float):
        if fmt == "onnx":
            return _PerClassNMS.apply(boxes, scores, idxs, iou_threshold)
        return box_ops._batched_nms_vanilla(boxes, scores, idxs, iou_threshold)  # a loop, scripted

    return batched_nms


@contextlib.contextmanager
def _per_class_nms(fmt: str):
    """While tracing, Detectron2's NMS calls (through ``torchvision.ops.boxes.batched_nms``) are
    recorded as NMS class by class (:class:`_PerClassNMS`) rather than the coordinate trick."""
    traced = box_ops.batched_nms
    box_ops.batched_nms = _batched_nms_for_export(fmt)
    try:
        yield
    finally:
        box_ops.batched_nms = traced


@contextlib.contextmanager
def _tracer_warnings_to_debug_log():
    """Warnings raised while tracing go to this module's debug log, counted in one info line.

    The tracer warns about every Python value it records as a constant (image sizes, loops over
    feature levels), and torch about its tracing APIs' deprecation: pages that say nothing about
    the user's model. The tests check the exported graphs on image sizes other than the traced one.
    """
    fx_logger = logging.getLogger("torch.fx._symbolic_trace")  # logs that is_fx_tracing changed meaning
    fx_level = fx_logger.level
    fx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        fx_logger.setLevel(fx_level)
    messages = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
    for message in messages:
        logger.debug("While tracing: %s", message)
    if messages:
        logger.info(
            "Tracing: %d kinds of warnings (values fixed in the graph, deprecated APIs), logged at DEBUG level",
            len(messages),
        )


def trace_detector(
    model: nn.Module, sample: Tuple[torch.Tensor, ...], path: str, fmt: str, opset: int = ONNX_OPSET
) -> List[str]:
    """Trace :func:`detection_tensors` of ``model`` on ``sample`` and write it to ``path``.

    Args:
        model: a Detectron2 detector (weights loaded, usually in deployment form); left in eval mode.
        sample: ``(image, height, width)`` to trace with.
        path: the file to write.
        fmt: "torchscript" or "onnx".
        opset: ONNX opset version.

    Returns:
        the output names (three, or four with masks).
    """
    # eval: the exporters restore the adapter's mode on the whole model afterwards
    adapter = TracingAdapter(model, tuple(sample), detection_tensors).eval()
    with torch.no_grad(), _tracer_warnings_to_debug_log(), _per_class_nms(fmt):
        outputs = list(OUTPUT_NAMES[: len(adapter(*adapter.flattened_inputs))])
        # Serialised in memory, then written atomically: a full disk leaves no half file (OutputWriteError).
        serialised = io.BytesIO()
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False), serialised)
        else:
            dynamic_axes = {name: {0: "detections"} for name in outputs}
            dynamic_axes["image"] = {1: "height_resized", 2: "width_resized"}
            torch.onnx.export(
                adapter,
                adapter.flattened_inputs,
                serialised,
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,  # TracingAdapter is made for torch.jit tracing
            )
    atomic_write_bytes(path, serialised.getvalue())
    return outputs


def export_predictor(
    predictor,
    sample_image_bgr: np.ndarray,
    output_dir: str,
    fmt: str,
    *,
    fuse: bool = True,
    opset: int = ONNX_OPSET,
) -> Dict[str, str]:
    """Trace ``predictor.model`` on one image and write it in ``fmt`` with its ``model.json``.

    Args:
        predictor: a :class:`~rsb_backbone.inference.LazyConfigPredictor` or a ``DefaultPredictor``;
            its model is folded in place when ``fuse``.
        sample_image_bgr: (H, W, 3) uint8 BGR image to trace with (the export takes any size).
        output_dir: folder for the files (created).
        fmt: "torchscript" or "onnx".
        fuse: export the deployment form (norm layers folded into the convolutions).
        opset: ONNX opset version.

    Returns:
        ``{"model": path, "spec": path}`` of the written files.

    Raises:
        ValueError: an unknown ``fmt``, or a test resize that cannot be exported.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {FORMATS}")
    model = predictor.model.to("cpu").eval()
    if fuse:
        to_deployment_form(model)
    spec = preprocessing_spec(predictor)
    sample = Preprocessor(spec)(sample_image_bgr)
    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, MODEL_FILES[fmt])
    outputs = trace_detector(model, sample, model_path, fmt, opset)
    metadata = getattr(predictor, "metadata", None)
    stored = storable_model_metadata(metadata.as_dict()) if getattr(metadata, "thing_classes", None) else None
    description = {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "inputs": list(INPUT_NAMES),
        "outputs": outputs,
        "preprocessing": spec,
        "score_threshold": score_threshold_of(model),
        "norms_folded": bool(fuse),
        "metadata": stored,
    }
    spec_path = os.path.join(output_dir, SPEC_FILE)
    atomic_write_bytes(spec_path, json.dumps(description, indent=1).encode())
    logger.info("Wrote %s (%s; outputs %s) and %s", model_path, fmt, ", ".join(outputs), spec_path)
    return {"model": model_path, "spec": spec_path}
