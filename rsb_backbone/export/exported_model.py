"""Running an exported detector (TorchScript or ONNX Runtime) like a predictor."""

import contextlib
import json
import os
from typing import Any, Dict, Optional

import numpy as np
import torch

from detectron2.structures import Boxes, Instances, ROIMasks

from ..checkpoint.model_metadata import detectron2_metadata, parse_model_metadata
from ..inference.coco_results import MASK_THRESHOLD
from .exporter import FORMATS, SPEC_FILE, Preprocessor

__all__ = ["ExportedDetector", "MASK_FORMATS"]

# "bitmask": bool (N, H, W) image masks, as DefaultPredictor returns them; "roi": Detectron2's
# ROIMasks, each box's (M, M) mask probabilities, pasted by whoever needs a mask.
MASK_FORMATS = ("bitmask", "roi")


class ExportedDetector:
    """An exported model folder (``model.json`` + ``model.ts``/``model.onnx``), called like
    ``DefaultPredictor``: an (H, W, 3) uint8 BGR image in, ``{"instances": Instances}`` out with
    ``pred_boxes``, ``scores``, ``pred_classes`` (and ``pred_masks`` for mask models), CPU
    tensors in original image coordinates.

    Masks are pasted here, one box at a time into the box's region, by Detectron2's
    ``paste_masks_in_image`` (bilinear, threshold 0.5), which is what the PyTorch model does on
    the CPU. Folders exported before the graph returned ``mask_probs`` hold image-sized ``masks``
    and are read as they are.

    Args:
        model_dir: the export folder (or its ``model.json``).
        num_threads: intra-op threads (ONNX Runtime session, or torch for TorchScript: set for
            the duration of each call and restored after it, since torch's are the process's);
            None leaves the runtime's default.
        mask_format: "bitmask": ``pred_masks`` are bool (N, H, W) image masks; "roi": they stay
            Detectron2 ``ROIMasks`` of (N, M, M) probabilities (no image-sized array;
            :func:`~rsb_backbone.inference.instances_to_coco_results` encodes them one at a time).

    Attributes:
        spec: the contents of ``model.json``.
        metadata: the model's class names and category ids (``Metadata``), or None.

    Raises:
        FileNotFoundError: ``model.json`` or the model file it names is missing.
        ValueError: ``model.json`` names an unknown format, or ``mask_format`` is unknown.
    """

    def __init__(self, model_dir: str, *, num_threads: Optional[int] = None, mask_format: str = "bitmask"):
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format={mask_format!r}: expected one of {MASK_FORMATS}")
        self.mask_format = mask_format
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
            self._module = torch.jit.load(self.model_path, map_location="cpu").eval()
        self.num_threads = num_threads

    def __call__(self, original_image: np.ndarray) -> Dict[str, Instances]:
        image, height, width = self.preprocess(original_image)
        if self.format == "onnx":
            feeds = {"image": image.numpy(), "height": height.numpy(), "width": width.numpy()}
            outputs = dict(zip(self.output_names, self._session.run(self.output_names, feeds)))
        else:
            with torch.no_grad(), _torch_threads(self.num_threads):
                outputs = dict(zip(self.output_names, self._module(image, height, width)))
        instances = Instances((int(height), int(width)))
        instances.pred_boxes = Boxes(torch.as_tensor(outputs["boxes"]))
        instances.scores = torch.as_tensor(outputs["scores"])
        instances.pred_classes = torch.as_tensor(outputs["classes"]).long()
        if "mask_probs" in outputs:
            roi_masks = ROIMasks(torch.as_tensor(outputs["mask_probs"]))
            if self.mask_format == "roi":
                instances.pred_masks = roi_masks
            else:
                bitmasks = roi_masks.to_bitmasks(
                    instances.pred_boxes, int(height), int(width), MASK_THRESHOLD
                )
                instances.pred_masks = bitmasks.tensor
        elif "masks" in outputs:  # an export whose graph pasted the masks
            instances.pred_masks = torch.as_tensor(outputs["masks"]).bool()
        return {"instances": instances}

    @property
    def has_masks(self) -> bool:
        """Whether the model predicts masks."""
        return "mask_probs" in self.output_names or "masks" in self.output_names


@contextlib.contextmanager
def _torch_threads(num_threads: Optional[int]):
    """torch's intra-op threads set to ``num_threads`` (None: unchanged) inside the block only."""
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if num_threads:
            torch.set_num_threads(previous)
