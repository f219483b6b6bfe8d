"""Exporting a predictor's detector to TorchScript or ONNX, with a JSON file describing it.

Written into the output folder:

- ``model.ts`` (TorchScript, ``torch.jit.load``) or ``model.onnx`` (ONNX, for ONNX Runtime);
- ``model.json``: the format, the model file, input and output names, the preprocessing
  (:mod:`.preprocessing`), the test score threshold built into the graph, and the model metadata
  (class names, category ids).
"""

import json
import logging
import os
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..config import score_threshold_of
from ..model_metadata import storable_model_metadata
from .fold_norms import to_deployment_form
from .preprocessing import Preprocessor, preprocessing_spec
from .tracing import INPUT_NAMES, ONNX_OPSET, output_names, tracing_adapter

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "MODEL_FILES", "SPEC_FILE", "export_predictor"]

FORMATS = ("torchscript", "onnx")
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
SPEC_FILE = "model.json"


def _metadata_of(predictor) -> Optional[Dict[str, Any]]:
    metadata = getattr(predictor, "metadata", None)
    classes = getattr(metadata, "thing_classes", None) if metadata is not None else None
    if not classes:
        return None
    stored = {"thing_classes": list(classes)}
    id_map = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    if id_map:
        stored["thing_dataset_id_to_contiguous_id"] = dict(id_map)
    return storable_model_metadata(stored)


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
        predictor: a :class:`~rsb_backbone.inference.LazyConfigPredictor` or a ``DefaultPredictor``
            (its model, test resize, input format and class names are exported); its model is
            folded in place when ``fuse``.
        sample_image_bgr: (H, W, 3) uint8 BGR image to trace with. The exported model takes
            other sizes too.
        output_dir: folder for the files (created).
        fmt: "torchscript" or "onnx".
        fuse: export the deployment form (norm layers folded into the convolutions).
        opset: ONNX opset version.

    Returns:
        ``{"model": path, "spec": path}`` of the written files.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {FORMATS}")
    model = predictor.model.to("cpu").eval()
    if fuse:
        to_deployment_form(model)
    spec = preprocessing_spec(predictor)
    sample = Preprocessor(spec)(sample_image_bgr)
    adapter = tracing_adapter(model, sample)
    outputs = output_names(adapter)
    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, MODEL_FILES[fmt])
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        traced.save(model_path)
    else:
        dynamic_axes = {"image": {1: "height_resized", 2: "width_resized"}}
        dynamic_axes.update({name: {0: "detections"} for name in outputs})
        with torch.no_grad():
            torch.onnx.export(
                adapter,
                adapter.flattened_inputs,
                model_path,
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,  # TracingAdapter is made for torch.jit tracing
            )
    spec_path = os.path.join(output_dir, SPEC_FILE)
    description = {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "inputs": list(INPUT_NAMES),
        "outputs": outputs,
        "preprocessing": spec,
        "score_threshold": score_threshold_of(model),
        "norms_folded": bool(fuse),
        "metadata": _metadata_of(predictor),
    }
    with open(spec_path, "w") as f:
        json.dump(description, f, indent=1)
    logger.info("Wrote %s (%s; outputs %s) and %s", model_path, fmt, ", ".join(outputs), spec_path)
    return {"model": model_path, "spec": spec_path}
