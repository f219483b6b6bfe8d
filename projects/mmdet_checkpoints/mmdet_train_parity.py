#!/usr/bin/env python3
"""Training parity: one training step of each ``_mmdet`` config against mmdetection 2.28 itself.

For each of the four RSB detectors this script builds the model from mmdetection's own RSB config
with its training settings, gives it random weights (as ``mmdet_parity.py`` does), converts them
into the ``configs/COCO/*_mmdet.py`` model, feeds both libraries the same two images with several
objects each (boxes, classes and bitmap masks), and compares every loss term and the gradients of
the trunk, FPN, RPN or RetinaNet head and RoI heads.

The random samplers are made to agree by making them exhaustive: both sample every anchor and
every proposal (``sampler.num`` / ``batch_size_per_image`` set to 10**7), so neither draws.
Everything else runs as in training (frozen-statistics BatchNorm, proposals from the RPN, ground
truth appended, per-stage re-sampling in the cascade). As a control, the same converted model is
also run with Detectron2's own training behaviour (its Matcher and RPN, RetinaNet's padding
anchors and moving-average normaliser): the loss terms those options change then differ.

Needs mmdetection 2.x (mmdet_env/setup_mmdet_env.sh); run with that environment's python:

    /tmp/mmenv/bin/python projects/mmdet_checkpoints/mmdet_train_parity.py --output-dir /tmp/mmdet_train_parity

The script exits 1 (after its output; ``--no-check``: 0 whatever the figures) when a loss term or
a gradient group of the ``_mmdet`` configs lies outside what docs/mmdet_parity.md states (the
thresholds below, ``failed_checks``). The control with Detectron2's training behaviour is
reported, not checked (it is meant to differ).
"""

import argparse
import json
import logging
import os
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # parity_common.py lives beside this script
from parity_common import (  # noqa: E402
    REPO_ROOT,
    add_common_arguments,
    check_at_least,
    check_at_most,
    exit_status,
    library_versions,
    mmdet_config,
    prepare_run,
)
from mmdet_parity import MEAN, STD, randomize_  # noqa: E402

from rsb_backbone.mmdet_conversion import convert_mmdet_checkpoint, map_key  # noqa: E402
from rsb_backbone.mmdet_conversion.key_maps import TENSOR_TRANSFORMS  # noqa: E402

logger = logging.getLogger("rsb_detectron2.mmdet_train_parity")

# ---- thresholds (docs/mmdet_parity.md, "Training: one step of each `_mmdet` config against mmdetection")
# "yes, to float32 rounding. Every loss term agrees within 1.8e-7 relative (2.3e-7 on another
# machine)": two float32 steps, 2 * 2**-23 = 2.38e-7, the most a relative difference of two steps
# can be.
MAX_LOSS_RELATIVE_DIFFERENCE = 2 * 2.0**-23
# "the gradients of the trunk, FPN, RPN or RetinaNet head and RoI heads have cosine similarity 1.0
# (to 10 digits)": 1.0000000000 when rounded to ten decimals.
MIN_GRADIENT_COSINE = 1.0 - 5e-11
# "[...] and a difference under 1.3e-7 of their norm, for all four detectors"
MAX_GRADIENT_RELATIVE_DIFFERENCE = 1.3e-7

EXHAUSTIVE = 10**7  # samples per image: more than there are anchors or proposals
NUM_CLASSES = 80
# mmdetection loss name -> Detectron2 loss name, per detector family
RPN_LOSSES = {"loss_rpn_cls": "loss_rpn_cls", "loss_rpn_bbox": "loss_rpn_loc"}
ROI_LOSSES = {"loss_cls": "loss_cls", "loss_bbox": "loss_box_reg", "loss_mask": "loss_mask"}
RETINANET_LOSSES = {"loss_cls": "loss_cls", "loss_bbox": "loss_box_reg"}
# gradient groups by mmdetection key prefix
GROUPS = {"trunk": "backbone.", "fpn": "neck.", "rpn_head": "rpn_head.", "retinanet_head": "bbox_head.", "roi_heads": "roi_head."}


def scenes(seed: int, layouts=((352, 480, 8), (448, 320, 6))) -> List[Dict[str, np.ndarray]]:
    """RGB images with rectangles and ellipses: the image, boxes (x0, y0, x1, y1), classes and
    bitmap masks of the visible part of each object. ``layouts`` holds (height, width, objects) per
    image; the default is two images (two aspect ratios) with 8 and 6 objects."""
    rng = np.random.default_rng(seed)
    out = []
    for height, width, count in layouts:
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([(xx * (c + 1) * 0.3 + yy * 0.2 * (2 - c)) % 255 for c in range(3)], -1)
        owner = np.full((height, width), -1)
        for index in range(count):
            h, w = rng.integers(40, height // 2), rng.integers(40, width // 2)
            y0, x0 = rng.integers(0, height - h), rng.integers(0, width - w)
            if rng.random() < 0.5:
                shape = np.zeros((height, width), dtype=bool)
                shape[y0 : y0 + h, x0 : x0 + w] = True
            else:
                shape = ((yy - y0 - h / 2) / (h / 2)) ** 2 + ((xx - x0 - w / 2) / (w / 2)) ** 2 <= 1
            image[shape] = rng.integers(0, 256, 3)
            owner[shape] = index  # later objects cover earlier ones
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        masks = np.stack([owner == i for i in range(count)])
        visible = masks.reshape(count, -1).any(axis=1)
        masks = masks[visible]
        boxes = np.array(
            [[np.where(m.any(0))[0][0], np.where(m.any(1))[0][0], np.where(m.any(0))[0][-1] + 1, np.where(m.any(1))[0][-1] + 1] for m in masks],
            dtype=np.float32,
        )
        classes = rng.integers(0, NUM_CLASSES, len(masks))
        out.append({"image": image, "boxes": boxes, "classes": classes, "masks": masks})
    return out


# ---- mmdetection ---------------------------------------------------------------------------------
def mmdet_model(detector: str, seed: int, *, exhaustive: bool = True):
    """mmdetection's model of ``detector`` with its training and test settings, random weights
    (``randomize_``), in training mode; ``exhaustive``: every anchor and proposal sampled (else
    the config's samplers)."""
    from mmdet.models import build_detector

    cfg = mmdet_config(detector)
    cfg.model.backbone.init_cfg = None  # every weight is set by randomize_
    train_cfg = cfg.model.train_cfg
    if exhaustive and "rpn" in train_cfg:
        train_cfg.rpn.sampler.num = EXHAUSTIVE
        for rcnn in train_cfg.rcnn if isinstance(train_cfg.rcnn, list) else [train_cfg.rcnn]:
            rcnn.sampler.num = EXHAUSTIVE
    model = build_detector(cfg.model)
    randomize_(model, seed)
    model.CLASSES = tuple(f"class{i}" for i in range(NUM_CLASSES))
    return model.train()  # norm_eval: BatchNorm statistics stay frozen


def mmdet_inputs(detector: str, data: List[Dict[str, np.ndarray]]) -> Dict[str, object]:
    """``forward_train``'s arguments for a batch of ``data``: normalised images padded to 32,
    metas, boxes, labels, and bitmap masks for the mask detectors only."""
    from mmdet.core import BitmapMasks

    with_masks = detector in ("mask_rcnn", "cascade_mask_rcnn")

    pad = [(int(np.ceil(d["image"].shape[0] / 32) * 32), int(np.ceil(d["image"].shape[1] / 32) * 32)) for d in data]
    batch_h, batch_w = max(p[0] for p in pad), max(p[1] for p in pad)
    img = torch.zeros(len(data), 3, batch_h, batch_w)
    metas, gt_masks = [], []
    for i, (d, (ph, pw)) in enumerate(zip(data, pad)):
        h, w = d["image"].shape[:2]
        img[i, :, :h, :w] = torch.from_numpy(((d["image"].astype(np.float32) - MEAN) / STD).transpose(2, 0, 1))
        metas.append(
            dict(
                img_shape=(h, w, 3), ori_shape=(h, w, 3), pad_shape=(ph, pw, 3), batch_input_shape=(batch_h, batch_w),
                scale_factor=np.ones(4, dtype=np.float32), flip=False, flip_direction=None,
            )
        )
        if with_masks:
            padded = np.zeros((len(d["masks"]), ph, pw), dtype=np.uint8)
            padded[:, :h, :w] = d["masks"]
            gt_masks.append(BitmapMasks(padded, ph, pw))
    kwargs = dict(
        img=img, img_metas=metas,
        gt_bboxes=[torch.from_numpy(d["boxes"]) for d in data],
        gt_labels=[torch.from_numpy(d["classes"]).long() for d in data],
    )
    if with_masks:
        kwargs["gt_masks"] = gt_masks
    return kwargs


def mmdet_step(model, detector: str, data: List[Dict[str, np.ndarray]]) -> Dict[str, float]:
    """Forward and backward on a batch of ``data``; returns the summed value of each loss term.
    Bitmap masks are made and passed for the mask detectors only."""
    kwargs = mmdet_inputs(detector, data)
    losses = model.forward_train(**kwargs)
    total, _ = model._parse_losses(losses)
    total.backward()
    terms = {}
    for name, value in losses.items():
        if "loss" in name:
            terms[name] = float(sum(v.item() for v in value) if isinstance(value, (list, tuple)) else value.item())
    return terms


# ---- Detectron2 ----------------------------------------------------------------------------------
def detectron2_training_behaviour(node) -> None:
    """Control: switch a `_mmdet` model config back to Detectron2's training behaviour (its
    Matcher and RPN, RetinaNet's padding anchors and moving-average normaliser), in place."""
    from detectron2.modeling.matcher import Matcher
    from detectron2.modeling.proposal_generator import RPN
    from omegaconf import DictConfig, ListConfig

    from rsb_backbone.modeling import MMDetMatcher, MMDetRetinaNet, MMDetRPN

    if isinstance(node, ListConfig):
        for item in node:
            detectron2_training_behaviour(item)
        return
    if not isinstance(node, DictConfig):
        return
    target = node.get("_target_")
    if target is MMDetMatcher:
        node._target_ = Matcher
        for key in ("min_low_quality_iou", "appended_ground_truth"):
            node.pop(key, None)
    elif target is MMDetRPN:
        node._target_ = RPN
    elif target is MMDetRetinaNet:
        node.ignore_padding_anchors = False
        node.normalize_by_batch_positives = False
    for key in list(node.keys()):
        if key != "_target_":
            detectron2_training_behaviour(node.get(key))


def d2_model(detector: str, checkpoint: str, *, mmdet_training: bool = True, exhaustive: bool = True):
    """The ``_mmdet`` config's model of ``detector`` with ``checkpoint`` loaded, in training mode;
    ``exhaustive``: every anchor and proposal sampled (else the config's sampling)."""
    from detectron2.config import LazyConfig, instantiate

    from rsb_backbone.checkpoint import AtomicCheckpointer
    from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights

    cfg = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "COCO", f"{detector}_rsb_r50_fpn_1x_mmdet.py"))
    skip_pretrained_weights(cfg.model)  # no ImageNet download: every weight is set later
    if exhaustive and "proposal_generator" in cfg.model:
        cfg.model.proposal_generator.batch_size_per_image = EXHAUSTIVE
        cfg.model.roi_heads.batch_size_per_image = EXHAUSTIVE
    if not mmdet_training:
        detectron2_training_behaviour(cfg.model)
    model = instantiate(cfg.model)
    AtomicCheckpointer(model).load(checkpoint)
    return model.train()


def d2_inputs(data: List[Dict[str, np.ndarray]]) -> List[Dict[str, object]]:
    """The model's training inputs for a batch of ``data``. Ground truth masks go in where
    ``data`` has them: a boolean array as ``BitMasks``, a Detectron2 mask structure (e.g.
    ``PolygonMasks``) as it is."""
    from detectron2.structures import BitMasks, Boxes, Instances

    inputs = []
    for d in data:
        h, w = d["image"].shape[:2]
        instances = Instances(
            (h, w),
            gt_boxes=Boxes(torch.from_numpy(d["boxes"])),
            gt_classes=torch.from_numpy(d["classes"]).long(),
        )
        if "masks" in d:
            masks = d["masks"]
            instances.gt_masks = BitMasks(torch.from_numpy(masks)) if isinstance(masks, np.ndarray) else masks
        inputs.append({"image": torch.from_numpy(np.ascontiguousarray(d["image"].transpose(2, 0, 1))), "instances": instances})
    return inputs


def d2_step(model, data: List[Dict[str, np.ndarray]]) -> Dict[str, float]:
    """Forward and backward on a batch of ``data`` (see :func:`d2_inputs`); returns the value of
    each loss term."""
    from detectron2.utils.events import EventStorage

    inputs = d2_inputs(data)
    with EventStorage():
        losses = model(inputs)
    sum(losses.values()).backward()
    return {name: float(value.item()) for name, value in losses.items()}


# ---- comparison ------------------------------------------------------------------------------------
def loss_pairs(detector: str) -> List[Tuple[str, str]]:
    if detector == "retinanet":
        return list(RETINANET_LOSSES.items())
    pairs = list(RPN_LOSSES.items())
    roi = {k: v for k, v in ROI_LOSSES.items() if detector != "faster_rcnn" or k != "loss_mask"}
    if detector == "cascade_mask_rcnn":
        pairs += [(f"s{s}.{mm}", f"{d2}_stage{s}") for s in range(3) for mm, d2 in roi.items()]
    else:
        pairs += list(roi.items())
    return pairs


def gradient_groups(detector: str, mm_model, d2_model) -> Dict[str, Dict[str, float]]:
    """Per group: cosine similarity and relative norm of the difference of the two gradients."""
    d2_params = dict(d2_model.named_parameters())
    grads: Dict[str, Tuple[list, list]] = {}
    for name, param in mm_model.named_parameters():
        if param.grad is None:
            continue
        target = map_key(detector, name)
        if target is None:
            raise KeyError(f"{name}: no Detectron2 key")
        d2_name, transform = target
        mm_grad = param.grad.detach()
        if transform:
            mm_grad = TENSOR_TRANSFORMS[transform](mm_grad)
        d2_grad = d2_params[d2_name].grad
        if d2_grad is None:
            raise KeyError(f"{name} -> {d2_name}: mmdetection has a gradient, Detectron2 none")
        group = next(g for g, prefix in GROUPS.items() if name.startswith(prefix))
        mm_list, d2_list = grads.setdefault(group, ([], []))
        mm_list.append(mm_grad.flatten().double())
        d2_list.append(d2_grad.detach().flatten().double())
    out = {}
    for group, (mm_list, d2_list) in grads.items():
        a, b = torch.cat(mm_list), torch.cat(d2_list)
        out[group] = {
            "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
            "relative_difference": float((a - b).norm() / a.norm()),
            "tensors": len(mm_list),
        }
    return out


def converted_pair(detector: str, seed: int, output_dir: str, *, exhaustive: bool = True):
    """mmdetection's model of ``detector`` with random weights and this repository's ``_mmdet`` model
    holding them, both in training mode (:func:`mmdet_model`, :func:`d2_model`).

    Args:
        detector: one of ``DETECTORS``.
        seed: seed of the random weights.
        output_dir: where mmdetection's checkpoint (saved with mmcv) and its conversion are written.
        exhaustive: every anchor and proposal sampled (else the configs' samplers).

    Returns:
        (mmdetection model, Detectron2 model, the converted checkpoint's path, the conversion's result).
    """
    import mmdet
    from mmcv.runner import save_checkpoint

    torch.manual_seed(seed)
    mm = mmdet_model(detector, seed, exhaustive=exhaustive)
    mm_path = os.path.join(output_dir, f"{detector}_mmdet_random.pth")
    save_checkpoint(mm, mm_path, meta={"mmdet_version": mmdet.__version__, "CLASSES": mm.CLASSES})
    d2_path = os.path.join(output_dir, f"{detector}_d2.pth")
    conversion = convert_mmdet_checkpoint(mm_path, d2_path, detector=detector)
    return mm, d2_model(detector, d2_path, exhaustive=exhaustive), d2_path, conversion


def run_detector(detector: str, data, output_dir: str, seed: int) -> Dict[str, object]:
    mm, d2, d2_path, _ = converted_pair(detector, seed, output_dir)
    mm_terms = mmdet_step(mm, detector, data)
    d2_terms = d2_step(d2, data)
    control_terms = d2_step(d2_model(detector, d2_path, mmdet_training=False), data)
    losses = {}
    for mm_name, d2_name in loss_pairs(detector):
        a, b, c = mm_terms[mm_name], d2_terms[d2_name], control_terms[d2_name]
        losses[d2_name] = {
            "mmdet": a,
            "detectron2": b,
            "relative_difference": abs(a - b) / max(abs(a), 1e-12),
            "with_detectron2_training_behaviour": c,
            "relative_difference_with_detectron2_training_behaviour": abs(a - c) / max(abs(a), 1e-12),
        }
    return {"losses": losses, "gradients": gradient_groups(detector, mm, d2)}


def failed_checks(report: Dict[str, object]) -> List[str]:
    """The figures of ``report`` outside the thresholds of this module, one line each.

    Args:
        report: what :func:`run_comparison` writes to ``train_parity.json``; only its
            ``"results"`` is read: detector -> ``{"losses": {term: {"relative_difference": ...}},
            "gradients": {group: {"cosine": ..., "relative_difference": ...}}}``.

    Returns:
        One line per failed figure naming the detector, the loss term or gradient group, the
        measured value and the threshold; empty when every figure is within its threshold.
    """
    failures: List[str] = []
    for detector, result in report["results"].items():
        for term, loss in result["losses"].items():
            check_at_most(
                failures, detector, f"{term} relative difference", loss["relative_difference"], MAX_LOSS_RELATIVE_DIFFERENCE
            )
        for group, gradient in result["gradients"].items():
            check_at_least(failures, detector, f"{group} gradient cosine", gradient["cosine"], MIN_GRADIENT_COSINE)
            check_at_most(
                failures, detector, f"{group} gradient relative difference", gradient["relative_difference"],
                MAX_GRADIENT_RELATIVE_DIFFERENCE,
            )
    return failures


def run_comparison(args: argparse.Namespace) -> Dict[str, object]:
    """One training step of every detector of ``args.detectors`` in both libraries; prints each
    one's figures and writes ``train_parity.json``; returns what it wrote.

    Args:
        args: the parsed command line of :func:`main`.
    """
    data = scenes(args.seed)
    results = {}
    for detector in args.detectors:
        start = time.time()
        results[detector] = run_detector(detector, data, args.output_dir, args.seed)
        results[detector]["seconds"] = round(time.time() - start, 1)
        print(json.dumps({detector: results[detector]}, indent=1), flush=True)
    summary = {**library_versions(), "objects_per_image": [len(d["boxes"]) for d in data], "results": results}
    with open(os.path.join(args.output_dir, "train_parity.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, output_dir="/tmp/mmdet_train_parity")
    args = parser.parse_args(argv)
    prepare_run(args)
    report = run_comparison(args)
    return exit_status(failed_checks(report), check=args.check, logger=logger)


if __name__ == "__main__":
    sys.exit(main())
