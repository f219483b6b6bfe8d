"""mmdetection v2's keep-ratio ``Resize`` as a Detectron2 augmentation, for the ``_mmdet`` configs.

mmdetection (``Resize(img_scale=(1333, 800), keep_ratio=True)``) resizes with mmcv's ``imrescale``:
the output size is rounded as ``mmcv.rescale_size`` does, the image is resized with OpenCV's
bilinear interpolation and masks with OpenCV's nearest neighbour, and boxes are multiplied by the
float32 scale factors. Detectron2's ``ResizeShortestEdge`` resizes with PIL (antialiased when
shrinking) and rounds a size capped by ``max_size`` along another arithmetic path (one pixel apart
for 354 of the 1,874,161 sizes from 32x32 to 1400x1400). Measured: docs/mmdet_parity.md, "Training".
"""

from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from detectron2.data import transforms as T


def mmcv_rescaled_size(height: int, width: int, short_edge_length: int, max_size: int) -> Tuple[int, int]:
    """The size mmcv's ``rescale_size`` gives an image rescaled to fit ``(max_size, short_edge_length)``.

    Args:
        height: the image's height in pixels.
        width: the image's width in pixels.
        short_edge_length: the shorter side's target (mmdetection's smaller ``img_scale`` value).
        max_size: the longer side's limit (mmdetection's larger ``img_scale`` value).

    Returns:
        (new height, new width): each side times ``min(max_size / long side, short_edge_length /
        short side)``, rounded half up.
    """
    scale = min(max_size / max(height, width), short_edge_length / min(height, width))
    return int(height * float(scale) + 0.5), int(width * float(scale) + 0.5)


class OpenCVResizeTransform(T.Transform):
    """Resize from ``(h, w)`` to ``(new_h, new_w)`` as mmcv's ``imresize``: images with OpenCV's
    bilinear interpolation, segmentation masks with OpenCV's nearest neighbour, boxes multiplied in
    float32 by ``new_w / w`` and ``new_h / h`` (mmdetection's ``scale_factor``).

    Args:
        h: input height.
        w: input width.
        new_h: output height.
        new_w: output width.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def _resize(self, array: np.ndarray, interpolation: int) -> np.ndarray:
        if array.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"OpenCVResizeTransform expects a {self.h}x{self.w} array, got {array.shape[0]}x{array.shape[1]}"
            )
        if array.dtype == bool:  # OpenCV has no boolean images
            return self._resize(array.astype(np.uint8), interpolation).astype(bool)
        return cv2.resize(array, (self.new_w, self.new_h), interpolation=interpolation)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._resize(img, cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._resize(segmentation, cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, copy=True)
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        # mmdetection keeps boxes in float32 and multiplies them by a float32 scale_factor
        scale = np.array([self.new_w / self.w, self.new_h / self.h] * 2, dtype=np.float32)
        return np.asarray(box, dtype=np.float32).reshape(-1, 4) * scale

    def inverse(self) -> T.Transform:
        return OpenCVResizeTransform(self.new_h, self.new_w, self.h, self.w)


class MMDetResize(T.Augmentation):
    """mmdetection's ``Resize(img_scale=(max_size, short_edge_length), keep_ratio=True)``: the
    shorter side to ``short_edge_length`` unless the longer side would exceed ``max_size``, size
    rounded as mmcv does, OpenCV bilinear. Takes the parameter names of Detectron2's
    ``ResizeShortestEdge`` so that the same config overrides apply.

    Args:
        short_edge_length: the shorter side's target: an int, or a sequence holding one int
            (mmdetection's RSB configs train at one scale).
        max_size: the longer side's limit.
    """

    def __init__(self, short_edge_length: Union[int, Sequence[int]], max_size: int):
        super().__init__()
        lengths = (
            [short_edge_length]
            if isinstance(short_edge_length, (int, np.integer))
            else list(short_edge_length)
        )
        if len(lengths) != 1 or not isinstance(lengths[0], (int, np.integer)) or lengths[0] <= 0:
            raise ValueError(
                f"MMDetResize: short_edge_length must be one positive int (one scale), got {short_edge_length!r}"
            )
        if not isinstance(max_size, (int, np.integer)) or max_size < lengths[0]:
            raise ValueError(
                f"MMDetResize: max_size must be an int of at least short_edge_length {lengths[0]}, got {max_size!r}"
            )
        self.short_edge_length = tuple(int(v) for v in lengths)
        self.max_size = int(max_size)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        new_h, new_w = mmcv_rescaled_size(h, w, self.short_edge_length[0], self.max_size)
        return OpenCVResizeTransform(h, w, new_h, new_w)
