"""Pasting M x M mask probabilities into the image, in one traceable step.

Detectron2's ``paste_masks_in_image`` pastes on CPU one mask at a time inside a scripted loop
(``torch.jit.script_if_tracing``), whose ONNX form has branches of different types (ONNX Runtime
refuses it). Here every mask is sampled at every image pixel at once: the same bilinear sampling
(``grid_sample`` over pixel centres, ``align_corners=False``) and the same threshold, without the
per-box cropping, at the memory cost of one float N x H x W tensor.
"""

import torch
import torch.nn.functional as F

__all__ = ["paste_masks"]


def paste_masks(
    mask_probs: torch.Tensor, boxes: torch.Tensor, height: torch.Tensor, width: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """Binary image masks from per-box mask probabilities.

    Args:
        mask_probs: (N, M, M) probabilities in [0, 1].
        boxes: (N, 4) boxes ``x0, y0, x1, y1`` in image pixels.
        height, width: the image size (ints, or int64 scalar tensors when tracing).
        threshold: a pixel is in the mask when its sampled probability is >= threshold.

    Returns:
        (N, height, width) bool masks.
    """
    dtype = torch.float32
    x0, y0, x1, y1 = boxes.to(dtype).split(1, dim=1)  # each (N, 1)
    ys = torch.arange(height, device=boxes.device).to(dtype) + 0.5
    xs = torch.arange(width, device=boxes.device).to(dtype) + 0.5
    grid_y = (ys[None, :] - y0) / (y1 - y0) * 2 - 1  # (N, H) in the box's [-1, 1]
    grid_x = (xs[None, :] - x0) / (x1 - x0) * 2 - 1  # (N, W)
    n = mask_probs.shape[0]
    grid = torch.stack(
        [grid_x[:, None, :].expand(n, grid_y.shape[1], grid_x.shape[1]),
         grid_y[:, :, None].expand(n, grid_y.shape[1], grid_x.shape[1])],
        dim=3,
    )  # fmt: skip
    sampled = F.grid_sample(mask_probs[:, None].to(dtype), grid, align_corners=False)
    return sampled[:, 0] >= threshold
