"""The image preprocessing an exported detector needs outside its graph, as a JSON-able spec.

An exported model takes the resized image (float, 3 x H x W, the model's channel order, not
normalized: the model normalizes) and the original height and width, and returns detections in
original image coordinates. The resize is the config's test augmentation, Detectron2's
``ResizeShortestEdge``; its settings travel with the exported model (``"preprocessing"`` in the
model's JSON file) so that a runner resizes exactly as evaluation does.
"""

from typing import Any, Dict, Tuple

import numpy as np
import torch

import detectron2.data.transforms as T

__all__ = ["preprocessing_spec", "Preprocessor"]

_INPUT_FORMATS = ("RGB", "BGR")


def _resize_of(predictor) -> T.ResizeShortestEdge:
    augs = getattr(predictor, "augmentations", None)  # LazyConfigPredictor: an AugmentationList
    augs = list(getattr(augs, "augs", [])) if augs is not None else [getattr(predictor, "aug", None)]
    resizes = [a for a in augs if isinstance(a, T.ResizeShortestEdge)]
    if len(augs) != 1 or len(resizes) != 1:
        raise ValueError(
            f"the test augmentations are {[type(a).__name__ for a in augs]}; exporting needs exactly one "
            f"ResizeShortestEdge (the resize is done outside the exported model)"
        )
    return resizes[0]


def preprocessing_spec(predictor) -> Dict[str, Any]:
    """The resize and channel order of a predictor, as the exported model's JSON stores them.

    Args:
        predictor: a :class:`~rsb_backbone.inference.LazyConfigPredictor` or Detectron2
            ``DefaultPredictor``.
    """
    resize = _resize_of(predictor)
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
    """BGR uint8 image -> the exported model's inputs ``(image, height, width)``."""

    def __init__(self, spec: Dict[str, Any]):
        """
        Args:
            spec: :func:`preprocessing_spec`'s dict.
        """
        if spec.get("input_format") not in _INPUT_FORMATS:
            raise ValueError(f"preprocessing input_format={spec.get('input_format')!r}: expected one of {_INPUT_FORMATS}")
        self.input_format = spec["input_format"]
        self.resize = T.ResizeShortestEdge(
            spec["short_edge_length"], spec["max_size"], sample_style="choice", interp=spec["interp"]
        )

    def __call__(self, image_bgr: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            image_bgr: (H, W, 3) uint8, BGR as ``cv2.imread`` returns it.

        Returns:
            float32 image (3, h, w) resized in the model's channel order, and the original height
            and width as int64 scalars.
        """
        if not (isinstance(image_bgr, np.ndarray) and image_bgr.ndim == 3 and image_bgr.shape[2] == 3):
            raise ValueError(f"image has shape {getattr(image_bgr, 'shape', None)}; expected (H, W, 3) BGR")
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(np.ascontiguousarray(resized.astype("float32").transpose(2, 0, 1)))
        return tensor, torch.tensor(height, dtype=torch.int64), torch.tensor(width, dtype=torch.int64)
