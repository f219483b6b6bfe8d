"""Where each tensor of an mmdetection v2.x checkpoint goes in our Detectron2 models: one table of
module names per detector (mmdetection v2.22 -> ``configs/COCO``); ``weight`` and ``bias`` keep their names.
"""

import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

DETECTORS: Tuple[str, ...] = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")

# RetinaNet's 3 scales x 3 ratios per location: mmdetection numbers them ratio-major (anchor = 3 *
# ratio + scale, ``AnchorGenerator.gen_single_level_base_anchors``), Detectron2 size-major (3 * scale +
# ratio, ``DefaultAnchorGenerator.generate_cell_anchors``): Detectron2's anchor j is mmdetection's
# RETINANET_ANCHOR_ORDER[j] (a 3x3 transpose). Outputs are anchor-major in both, so blocks are reordered.
RETINANET_ANCHOR_ORDER: Tuple[int, ...] = (0, 3, 6, 1, 4, 7, 2, 5, 8)


def permute_anchor_blocks(tensor: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """Reorder the per-anchor blocks of an output conv's weight or bias.

    Args:
        tensor: weight (A * C, in, kh, kw) or bias (A * C,) of a conv whose output channel
            ``a * C + c`` belongs to anchor ``a``.
        order: new anchor ``j`` takes old anchor ``order[j]``; ``len(order) = A``.

    Returns:
        A new tensor of the same shape.
    """
    num_anchors = len(order)
    if sorted(order) != list(range(num_anchors)):
        raise ValueError(f"order={list(order)} is not a permutation of 0..{num_anchors - 1}")
    if tensor.shape[0] % num_anchors:
        raise ValueError(
            f"a tensor of shape {tuple(tensor.shape)} has {tensor.shape[0]} output channels, "
            f"not a multiple of {num_anchors} anchors"
        )
    blocks = tensor.reshape(num_anchors, tensor.shape[0] // num_anchors, *tensor.shape[1:])
    return blocks[list(order)].reshape(tensor.shape).clone()


# Named so that a conversion report can say which tensors were changed and how.
TENSOR_TRANSFORMS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "retinanet_anchor_order": functools.partial(permute_anchor_blocks, order=RETINANET_ANCHOR_ORDER)
}
_TRANSFORMED = dict.fromkeys(("bbox_head.retina_cls", "bbox_head.retina_reg"), "retinanet_anchor_order")


def _fpn(levels: int, first_level: int) -> Dict[str, str]:
    """An FPN's convs: mmdetection numbers them from 0, Detectron2 by their level (P{first_level}...)."""
    return {
        f"neck.{mm}.{i}.conv": f"backbone.{d2}{i + first_level}"
        for i in range(levels)
        for mm, d2 in (("lateral_convs", "fpn_lateral"), ("fpn_convs", "fpn_output"))
    }


_RPN = {
    "rpn_head.rpn_conv": "proposal_generator.rpn_head.conv",
    "rpn_head.rpn_cls": "proposal_generator.rpn_head.objectness_logits",
    "rpn_head.rpn_reg": "proposal_generator.rpn_head.anchor_deltas",
}


def _roi_heads(mask: bool, s: str = "") -> Dict[str, str]:
    """Shared2FCBBoxHead (class layout as in Detectron2: background last, class-major deltas) and
    FCNMaskHead (4 convs, a stride-2 deconv, 1x1 logits). Both libraries number cascade stages
    after the head: with ``s="1."``, ``bbox_head.1.fc_cls`` -> ``box_predictor.1.cls_score``."""
    heads = {f"bbox_head.{s}shared_fcs.{i}": f"box_head.{s}fc{i + 1}" for i in range(2)}
    heads[f"bbox_head.{s}fc_cls"] = f"box_predictor.{s}cls_score"
    heads[f"bbox_head.{s}fc_reg"] = f"box_predictor.{s}bbox_pred"
    if mask:
        heads.update({f"mask_head.{s}convs.{i}.conv": f"mask_head.{s}mask_fcn{i + 1}" for i in range(4)})
        heads[f"mask_head.{s}upsample"] = f"mask_head.{s}deconv"
        heads[f"mask_head.{s}conv_logits"] = f"mask_head.{s}predictor"
    return {f"roi_head.{mm}": f"roi_heads.{d2}" for mm, d2 in heads.items()}


# Module names of everything but the backbone, whose names mmdet's ResNet and TimmResNet (timm's
# names) share: a prefix change only (map_key). RetinaNet: FPN on C3..C5 (start_level 1),
# fpn_convs.3 is P6 on C5, fpn_convs.4 P7 on P6; head convs at even indices of Sequential(conv, ReLU).
_MODULES: Dict[str, Dict[str, str]] = {
    "faster_rcnn": {**_fpn(4, first_level=2), **_RPN, **_roi_heads(mask=False)},
    "mask_rcnn": {**_fpn(4, first_level=2), **_RPN, **_roi_heads(mask=True)},
    "cascade_mask_rcnn": {
        **_fpn(4, first_level=2),
        **_RPN,
        **{k: v for s in range(3) for k, v in _roi_heads(mask=True, s=f"{s}.").items()},
    },
    "retinanet": {
        **_fpn(3, first_level=3),
        "neck.fpn_convs.3.conv": "backbone.top_block.p6",
        "neck.fpn_convs.4.conv": "backbone.top_block.p7",
        **{f"bbox_head.cls_convs.{i}.conv": f"head.cls_subnet.{2 * i}" for i in range(4)},
        **{f"bbox_head.reg_convs.{i}.conv": f"head.bbox_subnet.{2 * i}" for i in range(4)},
        "bbox_head.retina_cls": "head.cls_score",
        "bbox_head.retina_reg": "head.bbox_pred",
    },
}


def map_key(detector: str, key: str) -> Optional[Tuple[str, Optional[str]]]:
    """Detectron2 key and transform name for one mmdetection key; None if no rule matches."""
    if detector not in _MODULES:
        raise ValueError(f"detector={detector!r}: expected one of {', '.join(DETECTORS)}")
    top, _, rest = key.partition(".")
    if top == "backbone" and rest:
        return f"backbone.bottom_up.{rest}", None
    module, _, param = key.rpartition(".")
    if param not in ("weight", "bias") or module not in _MODULES[detector]:
        return None
    return f"{_MODULES[detector][module]}.{param}", _TRANSFORMED.get(module)
