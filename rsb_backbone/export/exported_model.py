"""Running an exported detector (TorchScript or ONNX Runtime) like a predictor."""

import json
import os
from typing import Any, Dict, Optional

import numpy as np
import torch

from detectron2.structures import Boxes, Instances

from ..checkpoint.model_metadata import detectron2_metadata, parse_model_metadata
from .exporter import FORMATS, SPEC_FILE, Preprocessor

__all__ = ["ExportedDetector"]


class ExportedDetector:
    """An exported model folder (``model.json`` + ``model.ts``/``model.onnx``), called like
    ``DefaultPredictor``: an (H, W, 3) uint8 BGR image in, ``{"instances": Instances}`` out with
    ``pred_boxes``, ``scores``, ``pred_classes`` (and bool ``pred_masks`` for mask models), CPU
    tensors in original image coordinates.

    Args:
        model_dir: the export folder (or its ``model.json``).
        num_threads: intra-op threads (ONNX Runtime session, or torch for TorchScript); None
            leaves the runtime's default.

    Attributes:
        spec: the contents of ``model.json``.
        metadata: the model's class names and category ids (``Metadata``), or None.

    Raises:
        FileNotFoundError: ``model.json`` or the model file it names is missing.
        ValueError: ``model.json`` names an unknown format.
    """

    def __init__(self, model_dir: str, *, num_threads: Optional[int] = None):
        spec_path = model_dir if model_dir.endswith(".json") else os.path.join(model_dir, SPEC_FILE)
        if not os.path.isfile(spec_path):
            raise FileNotFoundError(f"{spec_path}: no such file; expected an export folder with {SPEC_FILE}")
        with open(spec_path) as f:
            self.spec: Dict[str, Any] = json.load(f)
        self.format = self.spec.get("format")
        if self.format not in FORMATS:
            raise ValueError(f"{spec_path}: format={self.format!r}; expected one of {FORMATS}")
        self.model_path = os.path.join(os.path.dirname(spec_path), self.spec["model_file"])
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"{self.model_path}: no such file (named by {spec_path})")
        self.output_names = list(self.spec["outputs"])
        self.preprocess = Preprocessor(self.spec["preprocessing"])
        stored = parse_model_metadata(self.spec.get("metadata"), spec_path)
        self.metadata = detectron2_metadata(stored, name=spec_path)
        if self.format == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            self._session = onnxruntime.InferenceSession(
                self.model_path, options, providers=["CPUExecutionProvider"]
            )
        else:
            if num_threads:
                torch.set_num_threads(num_threads)
            self._module = torch.jit.load(self.model_path, map_location="cpu").eval()

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        image, height, width = self.preprocess(original_image)
        if self.format == "onnx":
            feeds = {"image": image.numpy(), "height": height.numpy(), "width": width.numpy()}
            outputs = dict(zip(self.output_names, self._session.run(self.output_names, feeds)))
        else:
            with torch.no_grad():
                outputs = dict(zip(self.output_names, self._module(image, height, width)))
        instances = Instances((int(height), int(width)))
        instances.pred_boxes = Boxes(torch.as_tensor(outputs["boxes"]))
        instances.scores = torch.as_tensor(outputs["scores"])
        instances.pred_classes = torch.as_tensor(outputs["classes"]).long()
        if "masks" in outputs:
            instances.pred_masks = torch.as_tensor(outputs["masks"]).bool()
        return {"instances": instances}
