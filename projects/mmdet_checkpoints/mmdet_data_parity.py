#!/usr/bin/env python3
"""Data pipeline parity: the same COCO files through mmdetection 2.28's RSB training pipeline and
through the Detectron2 mapper and batching of the configs here.

The script writes a small COCO-format set (JPEG and PNG images of several sizes and aspect ratios;
polygon, compressed-RLE and uncompressed-RLE masks; crowd annotations; boxes touching the border; a
box under 1 px wide; an image with crowd annotations only), runs mmdetection's pipeline of
``configs/resnet_strikes_back/mask_rcnn_r50_fpn_rsb-pretrain_1x_coco.py`` (``LoadImageFromFile``,
``LoadAnnotations``, ``Resize`` 1333x800 keep-ratio, ``RandomFlip``, ``Normalize``, ``Pad`` 32,
``DefaultFormatBundle``, ``Collect``) and mmcv's ``collate`` on pairs of images, and the same pairs
through Detectron2: the training set of the config, its mapper and the model's
``preprocess_image`` (normalisation and padding of the batch). The flip is forced to the same value
on both sides (each pair once unflipped, once flipped). Three Detectron2 pipelines are compared:

- ``plain``: ``mask_rcnn_rsb_r50_fpn_1x.py`` (Detectron2's ``ResizeShortestEdge`` with PIL) with
  ``instance_mask_format="bitmask"`` (polygons rasterized at the resized size): its own
  ``"polygon"`` format cannot take the RLE masks of non-crowd objects (recorded as
  ``plain_with_polygon_masks``);
- ``mmdet_resize_only``: the ``_mmdet`` config with only ``MMDetResize`` (its mapper's annotation
  options and its crowd-only image rule off, masks as in ``plain``): isolates what the resize changes;
- ``mmdet``: ``mask_rcnn_rsb_r50_fpn_1x_mmdet.py`` as it is.

Compared per pair: the padded batch tensor (and the resized 8-bit images behind it), each image's
size, boxes, classes, crowd annotations, the full-image masks and the 28x28 mask targets of the
ground-truth boxes and of shifted copies of them (what each library's mask head trains on).

Needs mmdetection 2.x (mmdet_env/setup_mmdet_env.sh); run with that environment's python:

    /tmp/mmenv/bin/python projects/mmdet_checkpoints/mmdet_data_parity.py --output-dir /tmp/mmdet_data_parity

The script exits 1 (after its output; ``--no-check``: 0 whatever the figures) when a figure of
the ``mmdet`` pipeline lies outside what docs/mmdet_parity.md states (the thresholds below,
``failed_checks``). The ``plain`` and ``mmdet_resize_only`` pipelines are reported, not checked:
the docs show how they differ.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # parity_common.py lives beside this script
from parity_common import (  # noqa: E402
    REPO_ROOT,
    add_common_arguments,
    check_at_most,
    check_equal,
    exit_status,
    failure_line,
    library_versions,
    mmdet_config,
    prepare_run,
)
from mmdet_parity import STD  # noqa: E402

from rsb_backbone.data.mmdet_resize import mmcv_rescaled_size  # noqa: E402

logger = logging.getLogger("rsb_detectron2.mmdet_data_parity")

# ---- thresholds (docs/mmdet_parity.md, "Training: the data pipeline, the same COCO files through
# both libraries"), for the pipeline of the ``_mmdet`` config as shipped:
CHECKED_PIPELINE = "mmdet"
# "The resized 8-bit images, image sizes, boxes (bit for bit), classes, crowd handling, full-image
# masks and 28x28 mask targets are identical": zero differing 8-bit pixels, resized sizes, box
# difference, full-mask and mask-target pixels; equal batch shapes, classes and instance counts;
# no pair left out because one side dropped an image (the crowd-only image is kept by both).
MAX_RESIZED_SIZES_DIFFERING = 0
MAX_8BIT_PIXELS_DIFFERING = 0
MAX_BOX_DIFF_PX = 0.0
MAX_FULL_MASK_PIXELS_DIFFERING = 0
MAX_MASK_TARGET_PIXELS_DIFFERING = 0
MAX_PAIRS_SKIPPED = 0
# "the normalised batch tensors differ by at most 2.4e-7 (one float32 step of the normalisation,
# 1.4e-5 gray levels)": 2**-22, one float32 step of the normalised values (2 to 4).
MAX_BATCH_DIFF_NORMALISED = 2.0**-22

MASK_SIZE = 28  # mask_size of mmdetection's train_cfg.rcnn; Detectron2's mask head output
PIPELINES = ("plain", "mmdet_resize_only", "mmdet")
# (height, width, file format, crowd only): landscape, portrait, one shrunk (PIL antialiases when
# shrinking), one whose capped size the two roundings disagree on (chosen in image_layouts), PNGs.
BASE_LAYOUTS = [
    (480, 640, "jpg", False), (640, 427, "jpg", False), (1200, 1600, "jpg", False), (300, 500, "png", False),
    (360, 360, "jpg", False),
]


def size_rounding_scan(low: int = 32, high: int = 1400) -> Dict[str, object]:
    """Sizes from low x low to high x high whose 1333x800 keep-ratio size Detectron2's
    ``ResizeShortestEdge.get_output_shape`` and mmcv's ``rescale_size`` round differently."""
    from detectron2.data.transforms import ResizeShortestEdge

    differing = []
    for h in range(low, high + 1):
        for w in range(low, high + 1):
            d2, mm = ResizeShortestEdge.get_output_shape(h, w, 800, 1333), mmcv_rescaled_size(h, w, 800, 1333)
            if d2 != mm:
                differing.append([h, w, list(d2), list(mm)])
    return {
        "sizes": (high - low + 1) ** 2, "differing": len(differing),
        "max_pixels_apart": max(abs(a - b) for _, _, d2, mm in differing for a, b in zip(d2, mm)) if differing else 0,
        "examples (h, w, detectron2 (h, w), mmcv (h, w))": differing[:5],
    }


def image_layouts() -> List[Tuple[int, int, str, bool]]:
    """BASE_LAYOUTS, a PNG whose size the two roundings disagree on, and an image with crowd
    annotations only (last: it is batched alone)."""
    from detectron2.data.transforms import ResizeShortestEdge

    disputed = next(
        (h, w) for h in range(200, 400) for w in range(2 * h, 3 * h)
        if ResizeShortestEdge.get_output_shape(h, w, 800, 1333) != mmcv_rescaled_size(h, w, 800, 1333)
    )
    return BASE_LAYOUTS + [(*disputed, "png", False), (400, 400, "jpg", True)]


# ---- the COCO files ------------------------------------------------------------------------------------
def _polygon(shape: str, x0: float, y0: float, w: float, h: float) -> List[float]:
    if shape == "rectangle":
        return [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    return np.stack([x0 + w / 2 * (1 + np.cos(t)), y0 + h / 2 * (1 + np.sin(t))], 1).round(2).ravel().tolist()


def write_coco_set(root: str, seed: int) -> Tuple[str, str, Dict[str, object]]:
    """Images and annotation JSON under ``root``; returns (JSON path, image folder, counts)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    image_dir = os.path.join(root, "images")
    shutil.rmtree(image_dir, ignore_errors=True)  # no files of an earlier run
    os.makedirs(image_dir)
    images, annotations = [], []
    kinds = {"polygon": 0, "rle": 0, "uncompressed_rle": 0, "crowd": 0, "touching_border": 0, "under_1px": 0}

    def add(image_id, segmentation, bbox, *, crowd=False, area=None):
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.choice(categories)["id"]),
            "bbox": [round(float(v), 2) for v in bbox], "area": float(area if area is not None else bbox[2] * bbox[3]),
            "iscrowd": int(crowd), "segmentation": segmentation,
        })

    for image_id, (height, width, extension, crowd_only) in enumerate(image_layouts(), start=1):
        yy, xx = np.mgrid[0:height, 0:width]
        image = np.stack([(xx * (c + 1) * 0.3 + yy * 0.2 * (2 - c)) % 255 for c in range(3)], -1)
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        file_name = f"{image_id:03d}.{extension}"
        cv2.imwrite(os.path.join(image_dir, file_name), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        # a crowd region (RLE, as COCO's crowd annotations)
        crowd = np.zeros((height, width), np.uint8)
        crowd[height // 8 : height // 3, width // 2 : width // 2 + width // 5] = 1
        rle = mask_util.encode(np.asfortranarray(crowd))
        add(image_id, {"size": rle["size"], "counts": rle["counts"].decode()}, mask_util.toBbox(rle), crowd=True, area=float(crowd.sum()))
        kinds["crowd"] += 1
        if crowd_only:
            continue
        for index in range(6):
            w, h = rng.uniform(0.1, 0.4) * width, rng.uniform(0.1, 0.4) * height
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            if index == 0:  # touching the left and top border
                x0, y0 = 0.0, 0.0
            elif index == 1:  # touching the right and bottom border
                x0, y0 = width - w, height - h
            kinds["touching_border"] += index < 2
            shape = "rectangle" if index % 2 == 0 else "ellipse"
            polygon = _polygon(shape, x0, y0, w, h)
            if index in (2, 3):  # the same object as an RLE bitmap, compressed or not
                bitmap = mask_util.decode(mask_util.merge(mask_util.frPyObjects([polygon], height, width)))
                rle = mask_util.encode(np.asfortranarray(bitmap))
                if index == 2:
                    segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
                    kinds["rle"] += 1
                else:  # uncompressed: run lengths as a list, column-major
                    flat = bitmap.ravel(order="F")
                    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                    segmentation = {"size": [height, width], "counts": np.diff(np.concatenate([[0], changes])).tolist()}
                    kinds["uncompressed_rle"] += 1
                bbox = mask_util.toBbox(rle)
                add(image_id, segmentation, bbox, area=float(bitmap.sum()))
            else:
                xs, ys = polygon[0::2], polygon[1::2]
                add(image_id, [polygon], [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)])
                kinds["polygon"] += 1
        # a sliver under 1 px wide (mmdetection leaves it out, Detectron2 keeps it)
        x0, y0 = width * 0.6, height * 0.55
        add(image_id, [[x0, y0, x0 + 0.6, y0, x0 + 0.6, y0 + 40, x0, y0 + 40]], [x0, y0, 0.6, 40.0])
        kinds["under_1px"] += 1
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    counts = {"images": len(images), "annotations": len(annotations), **kinds,
              "sizes (h, w, format)": [[h, w, e] for h, w, e, _ in image_layouts()]}
    return json_file, image_dir, counts


# ---- mmdetection ---------------------------------------------------------------------------------
def mmdet_dataset(json_file: str, image_dir: str, flip: bool):
    """mmdetection's RSB Mask R-CNN training set on the files, the flip forced to ``flip``."""
    from mmdet.datasets import build_dataset

    cfg = mmdet_config("mask_rcnn")
    data_cfg = cfg.data.train
    data_cfg.ann_file, data_cfg.img_prefix = json_file, image_dir + "/"
    for step in data_cfg.pipeline:
        if step.type == "RandomFlip":
            step.flip_ratio = 1.0 if flip else 0.0
    return build_dataset(data_cfg)


def mmdet_batch(dataset, indices: List[int]) -> Dict[str, object]:
    """One mmcv-collated batch of ``indices``: padded image tensor, metas, boxes, labels, masks,
    and the crowd boxes each image had (mmdetection's ``gt_bboxes_ignore``, not collected)."""
    from mmcv.parallel import collate

    batch = collate([dataset.prepare_train_img(i) for i in indices], samples_per_gpu=len(indices))
    return {
        "img": batch["img"].data[0], "metas": batch["img_metas"].data[0],
        "boxes": [b.numpy() for b in batch["gt_bboxes"].data[0]], "classes": [c.numpy() for c in batch["gt_labels"].data[0]],
        "masks": batch["gt_masks"].data[0], "crowd": [len(dataset.get_ann_info(i)["bboxes_ignore"]) for i in indices],
    }


def mmdet_mask_targets(masks, boxes: np.ndarray) -> np.ndarray:
    """mmdetection's mask targets (``mask_target_single``): the masks cropped and resized to 28x28
    at ``boxes`` (one box per mask), binarised."""
    if len(boxes) == 0:
        return np.zeros((0, MASK_SIZE, MASK_SIZE), np.uint8)
    inds = np.arange(len(boxes))
    return masks.crop_and_resize(torch.from_numpy(boxes), (MASK_SIZE, MASK_SIZE), inds, device="cpu").to_ndarray()


# ---- Detectron2 ----------------------------------------------------------------------------------
def d2_config(pipeline: str, dataset_name: str, flip: bool):
    """The LazyConfig of ``pipeline`` (see the module docstring) on ``dataset_name``, flip forced."""
    from detectron2.config import LazyCall as L
    from detectron2.config import LazyConfig
    from detectron2.data import transforms as T

    from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights

    suffix = "" if pipeline == "plain" else "_mmdet"
    cfg = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "COCO", f"mask_rcnn_rsb_r50_fpn_1x{suffix}.py"))
    skip_pretrained_weights(cfg.model)
    cfg.dataloader.train.dataset.names = dataset_name
    mapper = cfg.dataloader.train.mapper
    mapper.augmentations[1] = L(T.RandomFlip)(prob=1.0 if flip else 0.0, horizontal=True, vertical=False)
    if pipeline in ("plain", "mmdet_resize_only"):
        mapper.instance_mask_format = "bitmask"
    if pipeline == "mmdet_resize_only":
        mapper.update(annotations_as_mmdet=False, rasterize_polygons_at_original_size=False)
        cfg.dataloader.train.dataset.keep_crowd_only_images = False
    return cfg


def d2_batches(pipeline: str, dataset_name: str, flip: bool, pairs: List[List[str]]) -> Dict[str, Dict[str, object]]:
    """Per pair (file names): the mapped dicts and the model's normalised, padded batch."""
    from detectron2.config import instantiate

    cfg = d2_config(pipeline, dataset_name, flip)
    dicts = {os.path.basename(d["file_name"]): d for d in instantiate(cfg.dataloader.train.dataset)}
    mapper = instantiate(cfg.dataloader.train.mapper)
    model = instantiate(cfg.model).eval()
    out = {}
    for pair in pairs:
        mapped = [mapper(dicts[name]) if name in dicts else None for name in pair]
        images = model.preprocess_image(mapped).tensor if all(m is not None for m in mapped) else None
        crowd = [sum(a.get("iscrowd", 0) for a in dicts[name]["annotations"]) if name in dicts else None for name in pair]
        out["+".join(pair)] = {"mapped": mapped, "img": images, "kept": [name in dicts for name in pair], "crowd": crowd}
    return out


def plain_polygon_masks_error(dataset_name: str) -> str:
    """What the plain config's mapper (``instance_mask_format="polygon"``) says of the first image."""
    from detectron2.config import instantiate

    cfg = d2_config("plain", dataset_name, flip=False)
    cfg.dataloader.train.mapper.instance_mask_format = "polygon"
    mapper = instantiate(cfg.dataloader.train.mapper)
    try:
        mapper(instantiate(cfg.dataloader.train.dataset)[0])
    except ValueError as e:
        return f"{type(e).__name__}: {e} ({type(e.__cause__).__name__}: {e.__cause__})"
    return "no error"


def d2_full_masks(instances, height: int, width: int) -> np.ndarray:
    from detectron2.structures import BitMasks, PolygonMasks
    from detectron2.structures.masks import polygons_to_bitmask

    if isinstance(instances.gt_masks, PolygonMasks):
        return np.stack([polygons_to_bitmask(p, height, width) for p in instances.gt_masks.polygons]).astype(np.uint8)
    assert isinstance(instances.gt_masks, BitMasks)
    return instances.gt_masks.tensor.numpy().astype(np.uint8)


# ---- comparison ----------------------------------------------------------------------------------
def shifted_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """The boxes and four copies shifted by 10 % of their size (left/right/up/down), clipped: RoIs
    as the mask head sees positives (proposals overlapping a ground truth)."""
    out = [boxes]
    for dx, dy in ((-0.1, 0), (0.1, 0), (0, -0.1), (0, 0.1)):
        size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1)
        moved = boxes + size * np.array([dx, dy, dx, dy], np.float32)
        out.append(np.clip(moved, 0, [width, height, width, height]).astype(np.float32))
    return np.concatenate(out)


def match_instances(mm_boxes, mm_classes, d2_boxes, d2_classes) -> List[Tuple[int, int]]:
    """Pairs (mmdetection index, Detectron2 index): same class, nearest box (max abs corner diff)."""
    pairs, used = [], set()
    for i, (box, cls) in enumerate(zip(mm_boxes, mm_classes)):
        candidates = [(np.abs(d2_boxes[j] - box).max(), j) for j in range(len(d2_boxes)) if j not in used and d2_classes[j] == cls]
        if candidates:
            distance, j = min(candidates)
            if distance < 8:
                pairs.append((i, j))
                used.add(j)
    return pairs


def compare_pair(mm: Dict[str, object], d2: Dict[str, object]) -> Dict[str, object]:
    """Every compared quantity of one batch (two images)."""
    from detectron2.structures import Boxes

    result: Dict[str, object] = {"images": []}
    mm_img, d2_img = mm["img"], d2["img"]
    result["batch_shape"] = {"mmdet": list(mm_img.shape), "detectron2": list(d2_img.shape)}
    if mm_img.shape == d2_img.shape:
        diff = (mm_img - d2_img).abs()
        std = torch.from_numpy(STD)[None, :, None, None]
        result["batch_tensor"] = {
            "max_abs_diff_normalised": float(diff.max()), "mean_abs_diff_normalised": float(diff.mean()),
            "max_abs_diff_gray_levels": float((diff * std).max()), "mean_abs_diff_gray_levels": float((diff * std).mean()),
            "elements_differing_over_half_a_gray_level": int(((diff * std) > 0.5).sum()), "elements": int(diff.numel()),
        }
    for k, (meta, mapped) in enumerate(zip(mm["metas"], d2["mapped"])):
        h, w = meta["img_shape"][:2]
        instances = mapped["instances"]
        d2_h, d2_w = instances.image_size
        entry: Dict[str, object] = {
            "file": os.path.basename(meta["filename"]), "original (h, w)": list(meta["ori_shape"][:2]),
            "resized (h, w) mmdet": [h, w], "resized (h, w) detectron2": [d2_h, d2_w],
            "crowd annotations: mmdet ignored (not collected) / detectron2 dropped": [mm["crowd"][k], d2["crowd"][k]],
            "instances mmdet / detectron2": [len(mm["boxes"][k]), len(instances)],
        }
        # the 8-bit resized images behind the normalised tensors
        if (h, w) == (d2_h, d2_w):
            mm_u8 = torch.round(mm_img[k, :, :h, :w] * torch.from_numpy(STD)[:, None, None] + torch.tensor([123.675, 116.28, 103.53])[:, None, None])
            d2_u8 = mapped["image"].float()
            entry["resized_8bit_pixels_differing"] = int((mm_u8 != d2_u8).any(0).sum())
            entry["resized_8bit_max_abs_diff"] = float((mm_u8 - d2_u8).abs().max())
            entry["resized_8bit_mean_abs_diff"] = float((mm_u8 - d2_u8).abs().mean())
            entry["pixels"] = h * w
        d2_boxes = instances.gt_boxes.tensor.numpy()
        d2_classes = instances.gt_classes.numpy()
        pairs = match_instances(mm["boxes"][k], mm["classes"][k], d2_boxes, d2_classes)
        entry["matched instances"] = len(pairs)
        if pairs:
            mi, di = (np.array(v) for v in zip(*pairs))
            entry["box_max_abs_diff_px"] = float(np.abs(mm["boxes"][k][mi] - d2_boxes[di]).max())
            entry["boxes_bit_identical"] = bool((mm["boxes"][k][mi] == d2_boxes[di]).all())
            entry["classes_equal"] = bool((mm["classes"][k][mi] == d2_classes[di]).all())
            if (h, w) == (d2_h, d2_w):
                mm_full = mm["masks"][k].masks[mi][:, :h, :w]
                d2_full = d2_full_masks(instances, h, w)[di]
                union = int(((mm_full > 0) | (d2_full > 0)).sum())
                entry["full_mask_pixels_differing / union"] = [int((mm_full != d2_full).sum()), union]
            rois = shifted_boxes(d2_boxes[di], d2_h, d2_w)
            repeat = len(rois) // len(di)
            mm_targets = mmdet_mask_targets(_select(mm["masks"][k], np.tile(mi, repeat)), rois)
            d2_targets = instances.gt_masks[np.tile(di, repeat).tolist()].crop_and_resize(Boxes(torch.from_numpy(rois)).tensor, MASK_SIZE).numpy()
            entry["mask_target_pixels_differing / total"] = [int((mm_targets != d2_targets).sum()), int(mm_targets.size)]
            entry["mask_targets_differing / total"] = [int((mm_targets != d2_targets).any((1, 2)).sum()), len(rois)]
        result["images"].append(entry)
    return result


def _select(masks, indices: np.ndarray):
    """mmdetection BitmapMasks of the given instances, in order (repeats allowed)."""
    from mmdet.core import BitmapMasks

    return BitmapMasks(masks.masks[indices], masks.height, masks.width)


def summarize(results: Dict[str, Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """Per Detectron2 pipeline: the largest difference of each kind over every pair and flip."""
    out = {}
    for pipeline, runs in results.items():
        images = [im for run in runs.values() for im in run["images"]]
        tensors = [run["batch_tensor"] for run in runs.values() if "batch_tensor" in run]
        out[pipeline] = {
            "batch shapes equal": all(run["batch_shape"]["mmdet"] == run["batch_shape"]["detectron2"] for run in runs.values()),
            "images with other resized size": sum(im["resized (h, w) mmdet"] != im["resized (h, w) detectron2"] for im in images),
            "max batch diff (gray levels)": max((t["max_abs_diff_gray_levels"] for t in tensors), default=None),
            "mean batch diff (gray levels)": float(np.mean([t["mean_abs_diff_gray_levels"] for t in tensors])) if tensors else None,
            "max batch diff (normalised)": max((t["max_abs_diff_normalised"] for t in tensors), default=None),
            "8-bit pixels differing / total": [sum(im.get("resized_8bit_pixels_differing", 0) for im in images), sum(im.get("pixels", 0) for im in images)],
            "max box diff (px)": max((im.get("box_max_abs_diff_px", 0.0) for im in images), default=None),
            "boxes bit-identical": all(im["boxes_bit_identical"] for im in images if "boxes_bit_identical" in im),
            "classes equal": all(im["classes_equal"] for im in images if "classes_equal" in im),
            "instances mmdet / detectron2": [sum(im["instances mmdet / detectron2"][i] for im in images) for i in (0, 1)],
            "full-mask pixels differing / union": [sum(im.get("full_mask_pixels_differing / union", [0, 0])[i] for im in images) for i in (0, 1)],
            "mask-target pixels differing / total": [sum(im.get("mask_target_pixels_differing / total", [0, 0])[i] for im in images) for i in (0, 1)],
        }
    return out


def failed_checks(report: Dict[str, object]) -> List[str]:
    """The figures of the ``CHECKED_PIPELINE`` in ``report`` outside the thresholds of this module,
    one line each.

    Args:
        report: what :func:`run_comparison` writes to ``data_parity.json``; read are its
            ``"summary"`` (pipeline -> the figures of :func:`summarize`) and its ``"results"``
            (pipeline -> pair -> compared figures, or ``{"skipped": ...}``).

    Returns:
        One line per failed figure naming the pipeline, the figure, the measured value and the
        threshold; empty when every figure is within its threshold.
    """
    failures: List[str] = []
    subject = f"mask_rcnn data pipeline {CHECKED_PIPELINE!r}"
    figures = report["summary"][CHECKED_PIPELINE]
    check_equal(failures, subject, "batch shapes equal", figures["batch shapes equal"], True)
    check_at_most(
        failures, subject, "images with other resized size", figures["images with other resized size"],
        MAX_RESIZED_SIZES_DIFFERING,
    )
    check_at_most(
        failures, subject, "8-bit pixels differing", figures["8-bit pixels differing / total"][0], MAX_8BIT_PIXELS_DIFFERING
    )
    check_at_most(
        failures, subject, "max batch diff (normalised)", figures["max batch diff (normalised)"], MAX_BATCH_DIFF_NORMALISED
    )
    check_at_most(failures, subject, "max box diff (px)", figures["max box diff (px)"], MAX_BOX_DIFF_PX)
    check_equal(failures, subject, "boxes bit-identical", figures["boxes bit-identical"], True)
    check_equal(failures, subject, "classes equal", figures["classes equal"], True)
    mm_instances, d2_instances = figures["instances mmdet / detectron2"]
    if mm_instances != d2_instances:
        counts = f"{mm_instances} / {d2_instances}"
        failures.append(failure_line(subject, "instances mmdet / detectron2", counts, "equal counts"))
    check_at_most(
        failures, subject, "full-mask pixels differing", figures["full-mask pixels differing / union"][0],
        MAX_FULL_MASK_PIXELS_DIFFERING,
    )
    check_at_most(
        failures, subject, "mask-target pixels differing", figures["mask-target pixels differing / total"][0],
        MAX_MASK_TARGET_PIXELS_DIFFERING,
    )
    skipped = [pair for pair, result in report["results"][CHECKED_PIPELINE].items() if "skipped" in result]
    check_at_most(failures, subject, f"pairs skipped (an image in one training set only: {skipped})", len(skipped), MAX_PAIRS_SKIPPED)
    return failures


def run_comparison(args: argparse.Namespace) -> Dict[str, object]:
    """Write the COCO set, run it through mmdetection's pipeline and the three Detectron2
    pipelines, print the summary and write ``data_parity.json``; returns what it wrote.

    Args:
        args: the parsed command line of :func:`main`.
    """
    from detectron2.data.datasets import register_coco_instances

    start = time.time()
    json_file, image_dir, counts = write_coco_set(os.path.join(args.output_dir, "coco"), args.seed)
    dataset_name = f"mmdet_data_parity_{os.getpid()}"
    register_coco_instances(dataset_name, {}, json_file, image_dir)
    files = sorted(os.listdir(image_dir))
    pairs = [files[i : i + 2] for i in range(0, len(files), 2)]

    results: Dict[str, Dict[str, object]] = {p: {} for p in PIPELINES}
    image_sets: Dict[str, object] = {}
    for flip in (False, True):
        dataset = mmdet_dataset(json_file, image_dir, flip)
        index_of = {info["file_name"]: i for i, info in enumerate(dataset.data_infos)}
        image_sets["mmdet"] = sorted(index_of)
        for pipeline in PIPELINES:
            batches = d2_batches(pipeline, dataset_name, flip, pairs)
            image_sets[pipeline] = sorted(n for pair, b in zip(pairs, batches.values()) for n, kept in zip(pair, b["kept"]) if kept)
            for pair in pairs:
                d2 = batches["+".join(pair)]
                key = f"{'+'.join(pair)} flip={flip}"
                if not all(d2["kept"]) or not all(n in index_of for n in pair):
                    results[pipeline][key] = {"skipped": "an image of the pair is not in both training sets", "kept": d2["kept"]}
                    continue
                results[pipeline][key] = compare_pair(mmdet_batch(dataset, [index_of[n] for n in pair]), d2)
    # pairs where an image is missing from one side do not count in the summary
    compared = {p: {k: v for k, v in runs.items() if "skipped" not in v} for p, runs in results.items()}
    summary = {
        **library_versions(), "opencv": cv2.__version__,
        "data": counts, "training images kept": image_sets,
        "plain_with_polygon_masks": plain_polygon_masks_error(dataset_name), "size rounding (800, max 1333)": size_rounding_scan(),
        "summary": summarize(compared), "results": results, "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(args.output_dir, "data_parity.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps({k: summary[k] for k in ("data", "training images kept", "plain_with_polygon_masks", "size rounding (800, max 1333)", "summary")}, indent=1, default=str))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, output_dir="/tmp/mmdet_data_parity", detectors=False)
    args = parser.parse_args(argv)
    prepare_run(args)
    report = run_comparison(args)
    return exit_status(failed_checks(report), check=args.check, logger=logger)


if __name__ == "__main__":
    sys.exit(main())
