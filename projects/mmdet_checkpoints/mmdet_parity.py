#!/usr/bin/env python3
"""Parity of the converter: the same random weights in mmdetection and, converted, in Detectron2.

For each of the four RSB detectors this script builds the model from mmdetection's own config
(``configs/resnet_strikes_back/*_rsb-pretrain_1x_coco.py``), gives it random weights, saves the
checkpoint with mmcv's ``save_checkpoint`` (the released files' layout), converts it with
``convert_mmdet_checkpoint``, loads the result the way ``train_net.py --eval-only`` does, and runs
both libraries on the same resized images. It reports the largest differences of the FPN features
and of the final detections: boxes, scores, classes and masks.

Needs mmdetection 2.x (see mmdet_env/setup_mmdet_env.sh); run with that environment's python:

    /tmp/mmenv/bin/python projects/mmdet_checkpoints/mmdet_parity.py --output-dir /tmp/mmdet_parity

``--write-layouts`` also records the four checkpoints' key names and shapes in
projects/mmdet_checkpoints/mmdet_v2_layouts.json, which tests/test_mmdet_conversion.py compares
with its own description of mmdetection's layout.

The script exits 1 (after its output; ``--no-check``: 0 whatever the figures) when a figure lies
outside what docs/mmdet_parity.md states (the thresholds below, ``failed_checks``): FPN features
bit-identical, equal detection counts, every detection matched but where an NMS tie is documented,
boxes and scores within float32 rounding, masks pixel-identical. The control run with
Detectron2's test behaviour is reported, not checked (it is meant to differ).
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # parity_common.py lives beside this script
from parity_common import (  # noqa: E402
    REPO_ROOT,
    add_common_arguments,
    check_at_most,
    exit_status,
    failure_line,
    library_versions,
    mmdet_config,
    prepare_run,
)

from rsb_backbone.mmdet_conversion import DEFAULT_CONFIGS, convert_mmdet_checkpoint  # noqa: E402

logger = logging.getLogger("rsb_detectron2.mmdet_parity")

# ---- thresholds (docs/mmdet_parity.md, "Converted mmdetection checkpoints: parity with mmdetection")
# "FPN features are bit-identical"
MAX_FEATURE_DIFF = 0.0
# "799 of 800 final detections match [...]; the one RetinaNet detection that differs sits on the NMS
# threshold (IoU 0.49992)": unmatched detections allowed per detector, over both images (the table:
# Faster, Mask and Cascade Mask R-CNN 200 of 200 matched, RetinaNet 199).
UNMATCHED_DETECTIONS_ALLOWED = {"retinanet": 1}
# "boxes within 6.1e-5 px": one float32 step (2**-14) at the images' coordinates (512-1024 px).
MAX_BOX_DIFF_PX = 2.0**-14
# "scores within 1.2e-7", and in the rerun "the largest score difference is 3.0e-7 [...]: one or
# two float32 steps, which depend on the machine".
MAX_SCORE_DIFF = 3.0e-7
# "masks pixel-identical" (mask pixels differing / total: 0 for every mask detector).
MAX_MASK_PIXELS_DIFFERING = 0

LAYOUTS_JSON = os.path.join(REPO_ROOT, "projects", "mmdet_checkpoints", "mmdet_v2_layouts.json")
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # mmdet img_norm_cfg, RGB
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

# Gains of the random weights: chosen so that every detector returns tens of detections per image
# (untrained-scale heads would give near-uniform class scores and no detection above 0.05).
HEAD_STD = {
    "rpn_head.rpn_cls": 0.3,
    "fc_cls": 0.15,
    "fc_reg": 0.01,
    "rpn_head.rpn_reg": 0.01,
    "bbox_head.retina_cls": 0.05,
    "bbox_head.retina_reg": 0.005,
    "conv_logits": 0.05,
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random weights with stable activations: He-scaled convs/fcs, BatchNorm statistics and
    affine values away from the identity, small residual-branch gains."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 10**5, (), generator=g)))
                continue
            module = name.rsplit(".", 1)[0]
            is_bn = ".bn" in name or "downsample.1" in name or name.startswith("backbone.bn1")
            if is_bn:
                last = module.endswith("bn3") or module.endswith("downsample.1")
                values = {
                    "weight": (
                        (0.1 + 0.2 * torch.rand(tensor.shape, generator=g))
                        if last
                        else (0.5 + 0.5 * torch.rand(tensor.shape, generator=g))
                    ),
                    "bias": 0.1 * torch.randn(tensor.shape, generator=g),
                    "running_mean": 0.1 * torch.randn(tensor.shape, generator=g),
                    "running_var": 0.5 + torch.rand(tensor.shape, generator=g),
                }[name.rsplit(".", 1)[1]]
                tensor.copy_(values)
                continue
            head_std = next((std for key, std in HEAD_STD.items() if key in module), None)
            if name.endswith("bias"):
                tensor.copy_(0.05 * torch.randn(tensor.shape, generator=g))
                if "retina_cls" in module or "rpn_cls" in module:
                    # sigmoid heads: mmdet's prior 0.01, so that scores stay away from saturation
                    # (saturated scores tie, and ties make the top-k candidates arbitrary)
                    tensor.add_(-4.595)
                elif "conv_logits" in module:
                    tensor.add_(1.0)  # masks covering a good part of their boxes
            else:
                fan_in = (
                    tensor[0].numel() if "upsample" not in module else tensor.shape[0] * tensor[0, 0].numel()
                )
                std = head_std if head_std is not None else (2.0 / fan_in) ** 0.5
                tensor.copy_(std * torch.randn(tensor.shape, generator=g))


def synthetic_images(seed: int) -> List[np.ndarray]:
    """RGB uint8 images with rectangles and ellipses on textured backgrounds, two aspect ratios."""
    rng = np.random.default_rng(seed)
    images = []
    for height, width in ((480, 640), (640, 427)):
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([(xx * (c + 1) * 0.3 + yy * 0.2 * (2 - c)) % 255 for c in range(3)], -1)
        for _ in range(12):
            y0, x0 = rng.integers(0, height - 40), rng.integers(0, width - 40)
            h, w = rng.integers(30, height // 2), rng.integers(30, width // 2)
            color = rng.integers(0, 256, 3)
            if rng.random() < 0.5:
                image[y0 : y0 + h, x0 : x0 + w] = color
            else:
                mask = ((yy - y0 - h / 2) / (h / 2)) ** 2 + ((xx - x0 - w / 2) / (w / 2)) ** 2 <= 1
                image[mask] = color
        image = image + rng.normal(0, 8, image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def mmdet_inputs(resized: np.ndarray, original_shape) -> tuple:
    """mmdet's Normalize (RGB mean/std), Pad (size_divisor 32, zeros), ImageToTensor, img_metas."""
    h, w = resized.shape[:2]
    ph, pw = int(np.ceil(h / 32) * 32), int(np.ceil(w / 32) * 32)
    normalized = (resized.astype(np.float32) - MEAN) / STD
    padded = np.zeros((ph, pw, 3), dtype=np.float32)
    padded[:h, :w] = normalized
    scale = np.array([w / original_shape[1], h / original_shape[0]] * 2, dtype=np.float32)
    meta = dict(
        img_shape=(h, w, 3),
        ori_shape=(original_shape[0], original_shape[1], 3),
        pad_shape=(ph, pw, 3),
        batch_input_shape=(ph, pw),
        scale_factor=scale,
        flip=False,
        flip_direction=None,
    )
    return torch.from_numpy(padded.transpose(2, 0, 1)).unsqueeze(0), [meta]


def mmdet_detections(result, with_masks: bool) -> Dict[str, np.ndarray]:
    bbox_result, segm_result = result if with_masks else (result, None)
    boxes, scores, classes, masks = [], [], [], []
    for c, per_class in enumerate(bbox_result):
        for i, row in enumerate(per_class):
            boxes.append(row[:4])
            scores.append(row[4])
            classes.append(c)
            if with_masks:
                masks.append(np.asarray(segm_result[c][i], dtype=bool))
    out = {
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
        "scores": np.array(scores, dtype=np.float64),
        "classes": np.array(classes, dtype=np.int64),
    }
    if with_masks:
        out["masks"] = np.stack(masks) if masks else np.zeros((0, 1, 1), dtype=bool)
    return out


def d2_detections(instances, with_masks: bool) -> Dict[str, np.ndarray]:
    out = {
        "boxes": instances.pred_boxes.tensor.double().numpy(),
        "scores": instances.scores.double().numpy(),
        "classes": instances.pred_classes.numpy(),
    }
    if with_masks:
        out["masks"] = instances.pred_masks.numpy().astype(bool)
    return out


def compare(mm: Dict[str, np.ndarray], d2: Dict[str, np.ndarray], with_masks: bool) -> Dict[str, float]:
    """Match detections one to one (same class, box corners within 1 px; the nearest box and score
    first), then report the largest differences of the matched pairs."""
    stats = {"mmdet": len(mm["scores"]), "detectron2": len(d2["scores"])}
    used, pairs = set(), []
    for i in np.argsort(-d2["scores"]):
        candidates = [j for j in np.where(mm["classes"] == d2["classes"][i])[0] if j not in used]
        candidates = [j for j in candidates if np.abs(mm["boxes"][j] - d2["boxes"][i]).max() < 1.0]
        if not candidates:
            continue
        distance = [
            np.abs(mm["boxes"][j] - d2["boxes"][i]).max() + abs(mm["scores"][j] - d2["scores"][i])
            for j in candidates
        ]
        j = candidates[int(np.argmin(distance))]
        used.add(j)
        pairs.append((i, j))
    stats["matched"] = len(pairs)
    stats["max_box_diff_px"] = max(
        (float(np.abs(mm["boxes"][j] - d2["boxes"][i]).max()) for i, j in pairs), default=0.0
    )
    stats["max_score_diff"] = max(
        (float(abs(mm["scores"][j] - d2["scores"][i])) for i, j in pairs), default=0.0
    )
    if with_masks:
        differing = [int((mm["masks"][j] != d2["masks"][i]).sum()) for i, j in pairs]
        areas = [int(mm["masks"][j].sum()) for i, j in pairs]
        stats["mask_pixels_differing"] = int(sum(differing))
        stats["mask_pixels_total"] = int(sum(areas))
        stats["max_mask_pixels_differing"] = max(differing, default=0)
        ious = [
            (mm["masks"][j] & d2["masks"][i]).sum() / (mm["masks"][j] | d2["masks"][i]).sum()
            for i, j in pairs
            if (mm["masks"][j] | d2["masks"][i]).any()  # both empty: equal, no IoU
        ]
        stats["min_mask_iou"] = float(min(ious, default=1.0))
    return stats


def build_mmdet_model(detector: str):
    from mmdet.models import build_detector

    cfg = mmdet_config(detector)
    cfg.model.backbone.init_cfg = None  # no download: every weight is set by randomize_
    model = build_detector(cfg.model, train_cfg=None, test_cfg=cfg.get("test_cfg"))
    model.CLASSES = tuple(f"class{i}" for i in range(80))
    return model.eval()


def build_d2_model(checkpoint: str, config: str):
    from detectron2.config import LazyConfig, instantiate

    from rsb_backbone.checkpoint import AtomicCheckpointer
    from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights

    cfg = LazyConfig.load(os.path.join(REPO_ROOT, config))
    skip_pretrained_weights(cfg.model)  # no ImageNet download: every weight is set later
    model = instantiate(cfg.model).eval()
    AtomicCheckpointer(model).load(checkpoint)  # as train_net.py --eval-only
    return model


def run_detector(detector: str, images, output_dir: str, seed: int) -> Dict[str, object]:
    import mmcv
    from mmcv.runner import save_checkpoint

    with_masks = detector in ("mask_rcnn", "cascade_mask_rcnn")
    mm_model = build_mmdet_model(detector)
    randomize_(mm_model, seed)
    mm_path = os.path.join(output_dir, f"{detector}_mmdet_random.pth")
    save_checkpoint(mm_model, mm_path, meta={"mmdet_version": "2.28.2", "CLASSES": mm_model.CLASSES})
    layout = {k: list(v.shape) for k, v in mm_model.state_dict().items()}
    d2_path = os.path.join(output_dir, f"{detector}_d2.pth")
    report = convert_mmdet_checkpoint(mm_path, d2_path)
    d2_model = build_d2_model(d2_path, DEFAULT_CONFIGS[detector])

    per_image = []
    for image in images:
        resized = mmcv.imrescale(image, (1333, 800), backend="cv2")  # mmdet Resize, keep_ratio
        img, metas = mmdet_inputs(resized, image.shape)
        with torch.no_grad():
            mm_features = mm_model.extract_feat(img)
            mm_result = mm_model.simple_test(img, metas, rescale=True)[0]
            tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
            inputs = [{"image": tensor, "height": image.shape[0], "width": image.shape[1]}]
            images_d2 = d2_model.preprocess_image(inputs)
            d2_features = d2_model.backbone(images_d2.tensor)
            d2_instances = d2_model(inputs)[0]["instances"]
        names = sorted(d2_features)  # p2..p6 or p3..p7, in pyramid order
        feature_diff = max(float((m - d2_features[n]).abs().max()) for m, n in zip(mm_features, names))
        feature_scale = max(float(m.abs().max()) for m in mm_features)
        stats = compare(
            mmdet_detections(mm_result, with_masks), d2_detections(d2_instances, with_masks), with_masks
        )
        stats.update(
            image=f"{image.shape[1]}x{image.shape[0]} -> {resized.shape[1]}x{resized.shape[0]}",
            max_feature_diff=feature_diff,
            max_feature_abs=feature_scale,
        )
        if detector in ("cascade_mask_rcnn", "retinanet"):
            with torch.no_grad(), detectron2_behaviour(d2_model):
                control = d2_model(inputs)[0]["instances"]
            stats["with_detectron2_behaviour"] = compare(
                mmdet_detections(mm_result, with_masks), d2_detections(control, with_masks), with_masks
            )
        per_image.append(stats)
    return {"conversion": report.summary(), "images": per_image, "layout": layout}


@contextlib.contextmanager
def detectron2_behaviour(model):
    """Control: the converted model with Detectron2's test behaviour instead of mmdetection's
    (cascade: mean of the stages' softmax and the last stage's mask head alone, as the stock
    cascade would with mask_head.2; RetinaNet: clipping after NMS)."""
    if hasattr(model, "roi_heads"):
        heads, masks = model.roi_heads, model.roi_heads.mask_head
        heads.score_averaging, heads.mask_head = "probs", torch.nn.ModuleList([masks[-1]])
        try:
            yield
        finally:
            heads.score_averaging, heads.mask_head = "logits", masks
    else:
        model.clip_boxes_before_nms = False
        try:
            yield
        finally:
            model.clip_boxes_before_nms = True


def failed_checks(report: Dict[str, object]) -> List[str]:
    """The figures of ``report`` outside the thresholds of this module, one line each.

    Args:
        report: what :func:`run_comparison` writes to ``parity.json``; only its ``"results"``
            (detector -> ``{"images": [per-image figures of compare(), ...]}``) is read.

    Returns:
        One line per failed figure naming the detector (and image), the figure, the measured
        value and the threshold; empty when every figure is within its threshold.
    """
    failures: List[str] = []
    for detector, result in report["results"].items():
        unmatched = 0
        for index, stats in enumerate(result["images"], start=1):
            subject = f"{detector} image {index}"
            check_at_most(failures, subject, "max FPN feature diff", stats["max_feature_diff"], MAX_FEATURE_DIFF)
            if stats["detectron2"] != stats["mmdet"]:
                counts = f"{stats['detectron2']} / {stats['mmdet']}"
                failures.append(failure_line(subject, "detections detectron2 / mmdet", counts, "equal counts"))
            unmatched += max(stats["mmdet"], stats["detectron2"]) - stats["matched"]
            check_at_most(failures, subject, "max box diff (px)", stats["max_box_diff_px"], MAX_BOX_DIFF_PX)
            check_at_most(failures, subject, "max score diff", stats["max_score_diff"], MAX_SCORE_DIFF)
            if "mask_pixels_differing" in stats:
                check_at_most(
                    failures, subject, "mask pixels differing", stats["mask_pixels_differing"], MAX_MASK_PIXELS_DIFFERING
                )
        allowed = UNMATCHED_DETECTIONS_ALLOWED.get(detector, 0)
        check_at_most(failures, f"{detector} ({len(result['images'])} images)", "unmatched detections", unmatched, allowed)
    return failures


def run_comparison(args: argparse.Namespace) -> Dict[str, object]:
    """Run every detector of ``args.detectors`` in both libraries, print each one's figures,
    write ``parity.json`` (and, with ``--write-layouts``, the layouts); returns what it wrote.

    Args:
        args: the parsed command line of :func:`main`.
    """
    images = synthetic_images(args.seed)
    results, layouts = {}, {}
    for detector in args.detectors:
        start = time.time()
        result = run_detector(detector, images, args.output_dir, args.seed)
        layouts[detector] = result.pop("layout")
        result["seconds"] = round(time.time() - start, 1)
        results[detector] = result
        print(json.dumps({detector: result}, indent=1), flush=True)
    summary = {**library_versions(), "results": results}
    with open(os.path.join(args.output_dir, "parity.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if args.write_layouts:
        write_layouts(LAYOUTS_JSON, summary["mmdet"], layouts)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, output_dir="/tmp/mmdet_parity")
    parser.add_argument(
        "--write-layouts", action="store_true", help=f"write {os.path.relpath(LAYOUTS_JSON, REPO_ROOT)}"
    )
    args = parser.parse_args(argv)
    prepare_run(args)
    report = run_comparison(args)
    return exit_status(failed_checks(report), check=args.check, logger=logger)


def write_layouts(path: str, mmdet_version: str, layouts: Dict[str, Dict[str, list]]) -> None:
    """JSON with one ``"key": [shape]`` per line, detectors and keys sorted (readable diffs)."""
    lines = ["{", f'"mmdet": {json.dumps(mmdet_version)},', '"layouts": {']
    for d, detector in enumerate(sorted(layouts)):
        lines.append(f"{json.dumps(detector)}: {{")
        keys = sorted(layouts[detector])
        for k, key in enumerate(keys):
            lines.append(
                f"{json.dumps(key)}: {json.dumps(layouts[detector][key])}"
                + ("," if k < len(keys) - 1 else "")
            )
        lines.append("}" + ("," if d < len(layouts) - 1 else ""))
    lines += ["}", "}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
