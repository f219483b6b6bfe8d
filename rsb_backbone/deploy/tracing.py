"""Tracing a detector into TorchScript or ONNX with Detectron2's ``TracingAdapter``.

The traced function takes ``(image, height, width)``: the resized image (float, 3 x h x w, the
model's channel order, see :mod:`.preprocessing`) and the original image size as int64 scalars,
and returns the detections in original image coordinates as a tuple of tensors named
:data:`OUTPUT_NAMES` (``masks`` only for mask models: bool, N x height x width). Detectron2's
post-processing (box rescaling and clipping, mask pasting) traces with tensor sizes, so the
exported graph serves any image size.
"""

import logging
from typing import List, Tuple

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess

from .mask_pasting import paste_masks

logger = logging.getLogger(__name__)

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "detection_tensors", "tracing_adapter", "output_names", "ONNX_OPSET"]

INPUT_NAMES = ("image", "height", "width")
OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")
ONNX_OPSET = 17


def detection_tensors(model: nn.Module, image: torch.Tensor, height: torch.Tensor, width: torch.Tensor):
    """Run ``model`` on one image; return ``(boxes, scores, classes[, masks])`` tensors.

    R-CNNs run without Detectron2's post-processing, which is then done here: boxes scaled and
    clipped to the original size, empty ones dropped (``detector_postprocess``), and the masks
    pasted with :func:`.mask_pasting.paste_masks`, which traces into plain ONNX.

    Args:
        model: a Detectron2 detector in eval mode.
        image: (3, h, w) float, resized, in the model's channel order.
        height, width: the original image size (int64 scalars) the detections are scaled to.
    """
    if not isinstance(model, GeneralizedRCNN):
        instances = model([{"image": image, "height": height, "width": width}])[0]["instances"]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes
    instances = model.inference([{"image": image}], do_postprocess=False)[0]
    has_masks = instances.has("pred_masks")
    if has_masks:  # (N, 1, M, M) probabilities, under a name detector_postprocess leaves alone
        instances.mask_probs = instances.pred_masks[:, 0]
        instances.remove("pred_masks")
    instances = detector_postprocess(instances, height, width)
    outputs = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
    if has_masks:
        outputs += (paste_masks(instances.mask_probs, instances.pred_boxes.tensor, height, width),)
    return outputs


def tracing_adapter(model: nn.Module, sample: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> TracingAdapter:
    """A ``TracingAdapter`` around ``model`` for :func:`detection_tensors`, in eval mode.

    Args:
        model: a Detectron2 detector (eval mode, weights loaded, usually in deployment form).
        sample: ``(image, height, width)`` to trace with.
    """
    model.eval()
    adapter = TracingAdapter(model, tuple(sample), detection_tensors)
    return adapter.eval()  # exporters restore the adapter's mode on the whole model afterwards


def output_names(adapter: TracingAdapter) -> List[str]:
    """Names of the adapter's flat outputs (three, or four with masks)."""
    with torch.no_grad():
        count = len(adapter(*adapter.flattened_inputs))
    return list(OUTPUT_NAMES[:count])
