"""Where each tensor of an mmdetection v2.x checkpoint goes in our Detectron2 models.

One table of rules per detector. A rule matches a whole mmdetection key with a regular expression,
names the Detectron2 key, and optionally names a transform for tensors whose layout differs (only
RetinaNet's classification and box-regression outputs, see :data:`RETINANET_ANCHOR_ORDER`).
Sources for every row: the parameter names of mmdetection v2.22's modules under ``mmdet/models/``
(``backbones/resnet.py``, ``necks/fpn.py``, ``dense_heads/rpn_head.py``, ``dense_heads/retina_head.py``,
``roi_heads/bbox_heads/convfc_bbox_head.py``, ``roi_heads/mask_heads/fcn_mask_head.py``) and those of
the Detectron2 models built from ``configs/COCO``. The converter checks that every tensor of a
checkpoint and every weight of the model is matched (``docs/mmdet_checkpoints.md``).
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

__all__ = [
    "DETECTORS",
    "KeyRule",
    "RETINANET_ANCHOR_ORDER",
    "TENSOR_TRANSFORMS",
    "map_key",
    "permute_anchor_blocks",
    "rules_for",
]

DETECTORS: Tuple[str, ...] = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")

# RetinaNet has 3 octave scales x 3 aspect ratios per location. mmdetection numbers them
# ratio-major (``AnchorGenerator.gen_single_level_base_anchors``: ``w_ratios[:, None] *
# scales[None, :]`` flattened, so anchor = 3 * ratio + scale); Detectron2 size-major
# (``DefaultAnchorGenerator.generate_cell_anchors``: ``for size: for aspect_ratio``, so anchor =
# 3 * scale + ratio). Detectron2's anchor j is mmdetection's anchor RETINANET_ANCHOR_ORDER[j]
# (a 3x3 transpose, its own inverse). Both heads lay out their outputs anchor-major
# (channel = anchor * K + k), so the converter reorders blocks of K (classes) or 4 (deltas).
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


def _retinanet_anchor_order(tensor: torch.Tensor) -> torch.Tensor:
    return permute_anchor_blocks(tensor, RETINANET_ANCHOR_ORDER)


# Named so that a conversion report can say which tensors were changed and how.
TENSOR_TRANSFORMS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "retinanet_anchor_order": _retinanet_anchor_order,
}


@dataclass(frozen=True)
class KeyRule:
    """One mmdetection key pattern and its Detectron2 key.

    Attributes:
        pattern: regular expression matched against the whole mmdetection key.
        target: the Detectron2 key, as a ``re.Match.expand`` template (``\\1``) or a function of
            the match (for index arithmetic such as ``lateral_convs.0`` -> ``fpn_lateral2``).
        transform: a key of :data:`TENSOR_TRANSFORMS`, or None for a plain rename.
    """

    pattern: str
    target: object
    transform: Optional[str] = None

    def apply(self, key: str) -> Optional[str]:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        return self.target(match) if callable(self.target) else match.expand(self.target)


_PARAM = r"(?P<p>weight|bias)"  # named, so that _per_cascade_stage can add a group

# mmdet ResNet and timm's ResNet share every parameter name (conv1/bn1, layerX.Y.convZ/bnZ,
# downsample.0/1), and TimmResNet keeps timm's names: a prefix change only.
_BACKBONE = (KeyRule(r"backbone\.(.+)", r"backbone.bottom_up.\1"),)


def _fpn_neck(levels: int, first_level: int) -> Tuple[KeyRule, ...]:
    """Rules for an mmdetection FPN whose ``levels`` laterals/outputs start at P{first_level}:
    Detectron2 names them by log2(stride), mmdetection by index (``start_level`` 0 -> P2)."""
    return tuple(
        KeyRule(
            rf"neck\.{mm}\.([0-{levels - 1}])\.conv\.{_PARAM}",
            lambda m, d2=d2: f"backbone.{d2}{int(m[1]) + first_level}.{m[2]}",
        )
        for mm, d2 in (("lateral_convs", "fpn_lateral"), ("fpn_convs", "fpn_output"))
    )


# FPN on C2..C5 (start_level 0).
_RCNN_NECK = _fpn_neck(4, first_level=2)

_RPN = (
    KeyRule(rf"rpn_head\.rpn_conv\.{_PARAM}", r"proposal_generator.rpn_head.conv.\1"),
    KeyRule(rf"rpn_head\.rpn_cls\.{_PARAM}", r"proposal_generator.rpn_head.objectness_logits.\1"),
    KeyRule(rf"rpn_head\.rpn_reg\.{_PARAM}", r"proposal_generator.rpn_head.anchor_deltas.\1"),
)

# Shared2FCBBoxHead: shared_fcs.0/1 -> fc1/fc2. Class layout (background last, class-major deltas)
# is the same in both libraries.


def _one_based(template: str) -> Callable[[re.Match], str]:
    """A target that formats ``template`` with the matched index ``i`` + 1 and parameter ``p``."""
    return lambda m: template.format(int(m["i"]) + 1, m["p"])


_BOX_HEAD = (
    KeyRule(rf"roi_head\.bbox_head\.shared_fcs\.(?P<i>[01])\.{_PARAM}", _one_based("roi_heads.box_head.fc{}.{}")),
    KeyRule(rf"roi_head\.bbox_head\.fc_cls\.{_PARAM}", r"roi_heads.box_predictor.cls_score.\g<p>"),
    KeyRule(rf"roi_head\.bbox_head\.fc_reg\.{_PARAM}", r"roi_heads.box_predictor.bbox_pred.\g<p>"),
)

# FCNMaskHead: 4 ConvModules, a stride-2 deconv, 1x1 logits.
_MASK_HEAD = (
    KeyRule(
        rf"roi_head\.mask_head\.convs\.(?P<i>[0-3])\.conv\.{_PARAM}", _one_based("roi_heads.mask_head.mask_fcn{}.{}")
    ),
    KeyRule(rf"roi_head\.mask_head\.upsample\.{_PARAM}", r"roi_heads.mask_head.deconv.\g<p>"),
    KeyRule(rf"roi_head\.mask_head\.conv_logits\.{_PARAM}", r"roi_heads.mask_head.predictor.\g<p>"),
)


def _per_cascade_stage(rule: KeyRule) -> KeyRule:
    """``rule`` of a single-stage head for the heads of cascade stage s = 0, 1, 2.

    mmdetection numbers the stages after the head (``roi_head.bbox_head.{s}.fc_cls``); Detectron2
    keeps the stages in ModuleLists (``roi_heads.box_predictor.{s}.cls_score``), and
    MMDetCascadeROIHeads holds its three mask heads as ``roi_heads.mask_head.{s}``.
    """
    head = rule.pattern.split(r"\.")[1]
    prefix = rf"roi_head\.{head}\."
    pattern = prefix + r"(?P<s>[0-2])\." + rule.pattern[len(prefix):]

    def target(match: re.Match) -> str:
        parts = (rule.target(match) if callable(rule.target) else match.expand(rule.target)).split(".")
        return ".".join(parts[:2] + [match["s"]] + parts[2:])

    return KeyRule(pattern, target, rule.transform)


_CASCADE_HEADS = tuple(_per_cascade_stage(rule) for rule in _BOX_HEAD + _MASK_HEAD)

# RetinaNet FPN on C3..C5 (start_level 1); fpn_convs.3 is P6 on C5 ("on_input"), fpn_convs.4 is
# P7 on P6. Head convs sit at even indices of Detectron2's Sequential(conv, ReLU, ...).
_RETINANET = _fpn_neck(3, first_level=3) + (
    KeyRule(rf"neck\.fpn_convs\.3\.conv\.{_PARAM}", r"backbone.top_block.p6.\1"),
    KeyRule(rf"neck\.fpn_convs\.4\.conv\.{_PARAM}", r"backbone.top_block.p7.\1"),
    KeyRule(
        rf"bbox_head\.cls_convs\.([0-3])\.conv\.{_PARAM}", lambda m: f"head.cls_subnet.{2 * int(m[1])}.{m[2]}"
    ),
    KeyRule(
        rf"bbox_head\.reg_convs\.([0-3])\.conv\.{_PARAM}",
        lambda m: f"head.bbox_subnet.{2 * int(m[1])}.{m[2]}",
    ),
    KeyRule(rf"bbox_head\.retina_cls\.{_PARAM}", r"head.cls_score.\1", "retinanet_anchor_order"),
    KeyRule(rf"bbox_head\.retina_reg\.{_PARAM}", r"head.bbox_pred.\1", "retinanet_anchor_order"),
)

_RULES: Dict[str, Tuple[KeyRule, ...]] = {
    "faster_rcnn": _BACKBONE + _RCNN_NECK + _RPN + _BOX_HEAD,
    "mask_rcnn": _BACKBONE + _RCNN_NECK + _RPN + _BOX_HEAD + _MASK_HEAD,
    "cascade_mask_rcnn": _BACKBONE + _RCNN_NECK + _RPN + _CASCADE_HEADS,
    "retinanet": _BACKBONE + _RETINANET,
}


def rules_for(detector: str) -> Tuple[KeyRule, ...]:
    """The key rules of ``detector`` (one of :data:`DETECTORS`)."""
    if detector not in _RULES:
        raise ValueError(f"detector={detector!r}: expected one of {', '.join(DETECTORS)}")
    return _RULES[detector]


def map_key(detector: str, key: str) -> Optional[Tuple[str, Optional[str]]]:
    """Detectron2 key and transform name for one mmdetection key; None if no rule matches."""
    for rule in rules_for(detector):
        target = rule.apply(key)
        if target is not None:
            return target, rule.transform
    return None
