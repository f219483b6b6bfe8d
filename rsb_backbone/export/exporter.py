"""Exporting a detector to TorchScript (``model.ts``) or ONNX (``model.onnx``) with Detectron2's
``TracingAdapter``, with the ``model.json`` that :class:`.ExportedDetector` reads (outputs, model
metadata, the test resize done outside the graph). Inputs, outputs, mask pasting: docs/deployment.md."""

import json
import logging
import os
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import detectron2.data.transforms as T
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess

from ..config import score_threshold_of
from ..checkpoint.model_metadata import storable_model_metadata
from ..modeling.fold_norms import to_deployment_form

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "SPEC_FILE", "Preprocessor", "export_predictor", "preprocessing_spec", "trace_detector"]

MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
FORMATS = tuple(MODEL_FILES)
SPEC_FILE = "model.json"
INPUT_NAMES = ("image", "height", "width")
OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")
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


def paste_masks(
    mask_probs: torch.Tensor,
    boxes: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Binary image masks from per-box mask probabilities, every mask sampled at every pixel at
    once (one ``grid_sample``, which ONNX Runtime accepts; why: docs/deployment.md).

    Args:
        mask_probs: (N, M, M) probabilities in [0, 1].
        boxes: (N, 4) boxes ``x0, y0, x1, y1`` in image pixels.
        height, width: the image size (ints, or int64 scalar tensors when tracing).
        threshold: a pixel is in the mask when its sampled probability is >= threshold.

    Returns:
        (N, height, width) bool masks.
    """
    x0, y0, x1, y1 = boxes.float().split(1, dim=1)  # each (N, 1)
    ys = torch.arange(height, device=boxes.device).float() + 0.5
    xs = torch.arange(width, device=boxes.device).float() + 0.5
    grid_y = ((ys - y0) / (y1 - y0) * 2 - 1)[:, :, None]  # (N, H, 1) in the box's [-1, 1]
    grid_x = ((xs - x0) / (x1 - x0) * 2 - 1)[:, None, :]  # (N, 1, W)
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=3)  # (N, H, W, 2)
    return F.grid_sample(mask_probs[:, None].float(), grid, align_corners=False)[:, 0] >= threshold


def detection_tensors(model: nn.Module, image: torch.Tensor, height: torch.Tensor, width: torch.Tensor):
    """Run ``model`` on one image; return ``(boxes, scores, classes[, masks])`` tensors in original
    image coordinates (R-CNNs: ``detector_postprocess`` here, masks by :func:`paste_masks`).

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
        outputs += (paste_masks(instances.mask_probs, instances.pred_boxes.tensor, height, width),)
    return outputs


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
    with torch.no_grad():
        outputs = list(OUTPUT_NAMES[: len(adapter(*adapter.flattened_inputs))])
        if fmt == "torchscript":
            torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False).save(path)
        else:
            dynamic_axes = {name: {0: "detections"} for name in outputs}
            dynamic_axes["image"] = {1: "height_resized", 2: "width_resized"}
            torch.onnx.export(
                adapter,
                adapter.flattened_inputs,
                path,
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,  # TracingAdapter is made for torch.jit tracing
            )
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
    with open(spec_path, "w") as f:
        json.dump(description, f, indent=1)
    logger.info("Wrote %s (%s; outputs %s) and %s", model_path, fmt, ", ".join(outputs), spec_path)
    return {"model": model_path, "spec": spec_path}
