#!/usr/bin/env python3
"""Parameters and FLOPs of the model zoo's detectors (docs/model_zoo.md), with an estimate of the
GPU-hours each config's training takes, scaled from Detectron2's published training speed.

For each config: ``LazyConfig.load`` of the file (a name relative to ``configs/``, found by
``rsb_backbone.model_zoo.get_config_file``, or a path), the trunk's pretrained weights skipped
(``weights=None``: random initialisation, nothing downloaded), the model instantiated in eval mode
and its FLOPs counted by fvcore on one ``--image-size`` image (default 800 x 1333, the COCO test
scale) through Detectron2's ``FlopCountAnalysis`` (the counter of Detectron2's
``flop_count_operators`` and ``tools/analyze_model.py``: one multiply-add is one flop; norm
layers, element-wise ops and NMS are not counted). The RoI heads' work is fixed at its test-time
maximum whatever the random weights score (``fix_test_workload``: 1,000 RPN proposals through the
box head(s), 100 detections through the mask head). Configs that build the same model (a 3x and
its 1x) are counted once.

The estimate takes the nearest published Detectron2 3x model of the same detector family
(``DETECTRON2_REFERENCES``; MODEL_ZOO.md, trained on 8 V100 GPUs at 16 images per iteration),
counts its FLOPs the same way, and scales its training seconds per iteration::

    V100 GPU-hours = t_ref [s/iter] x 8 GPUs x (FLOPs / FLOPs_ref) x iterations / 3600

Examples::

    # every config of docs/model_zoo.md (6 to 7 minutes on 2 CPU cores):
    python3 projects/model_zoo/model_zoo_table.py --json projects/model_zoo/model_zoo.json
    # one config, a small image, no estimate:
    python3 projects/model_zoo/model_zoo_table.py COCO/retinanet_rsb_r101_fpn_1x.py --image-size 128 --no-estimate
"""

import argparse
import glob
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

import detectron2
from detectron2 import model_zoo as detectron2_model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator.rpn import RPN, StandardRPNHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.utils.analysis import FlopCountAnalysis

from rsb_backbone import model_zoo
from rsb_backbone.config import set_score_threshold
from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights

logger = logging.getLogger("rsb_detectron2.model_zoo_table")

DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")
TRUNKS = ("resnet50", "resnet101", "resnet152")
# Detectron2's published 3x models (MODEL_ZOO.md: "train time (s/iter)", 8 V100 GPUs, 16 images
# per iteration, 270,000 iterations with 640-800 multi-scale training), by detector family and
# trunk depth. Detectron2 publishes no Cascade Mask R-CNN R101-FPN 3x.
DETECTRON2_REFERENCES = {
    ("faster_rcnn", 50): ("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", 0.209),
    ("faster_rcnn", 101): ("COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml", 0.286),
    ("mask_rcnn", 50): ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", 0.261),
    ("mask_rcnn", 101): ("COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml", 0.340),
    ("cascade_mask_rcnn", 50): ("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", 0.328),
    ("retinanet", 50): ("COCO-Detection/retinanet_R_50_FPN_3x.yaml", 0.205),
    ("retinanet", 101): ("COCO-Detection/retinanet_R_101_FPN_3x.yaml", 0.291),
}
REFERENCE_GPUS = 8


# ---- configs -----------------------------------------------------------------------------------
def default_configs() -> List[str]:
    """The plain COCO configs of every detector, trunk and schedule, relative to ``configs/``."""
    root = model_zoo.configs_root()
    paths = glob.glob(os.path.join(root, "COCO", "*_rsb_r*_fpn_[0-9]x.py"))
    return sorted((os.path.relpath(p, root) for p in paths), key=_table_order)


def _table_order(name: str) -> Tuple:
    detector, depth, schedule = describe(name)
    return (
        DETECTORS.index(detector) if detector in DETECTORS else len(DETECTORS),
        detector,
        depth or 0,
        schedule,
        name,
    )


def describe(name: str) -> Tuple[str, Optional[int], str]:
    """(detector family, trunk depth or None, schedule) from a config's file name, e.g.
    ``COCO/mask_rcnn_rsb_r101_fpn_3x.py`` -> ("mask_rcnn", 101, "3x")."""
    match = re.fullmatch(
        r"(?P<det>.+?)_rsb_r(?P<depth>\d+)_fpn_(?P<sched>[^_.]+).*\.py", os.path.basename(name)
    )
    if match is None:
        return os.path.basename(name).split("_rsb_")[0], None, "-"
    return match["det"], int(match["depth"]), match["sched"]


def resolve_config(name: str) -> str:
    """A config's file: an existing path as given, else a name relative to ``configs/``."""
    return name if os.path.isfile(name) else model_zoo.get_config_file(name)


def reference_for(detector: str, trunk: str) -> Optional[Tuple[str, float]]:
    """The nearest published Detectron2 3x model (config, s/iter) for a detector and timm trunk:
    the same depth, else the deepest one that is not deeper, else None."""
    match = re.fullmatch(r"resnet(\d+)", trunk)
    if match is None:
        return None
    depths = [d for (det, d) in DETECTRON2_REFERENCES if det == detector and d <= int(match.group(1))]
    return DETECTRON2_REFERENCES[(detector, max(depths))] if depths else None


# ---- counting ----------------------------------------------------------------------------------
def fix_test_workload(model: torch.nn.Module) -> None:
    """Make a detector's test-time RoI work independent of its random weights (in place).

    Random weights leave some trunks' features so large that the RPN's boxes collapse onto a few
    (Detectron2's ResNet with ``FrozenBN`` at its initial statistics), and how many boxes pass the
    score threshold and NMS is chance. Here the RPN's and the box predictors' output layers are
    zeroed (proposals are the anchors, every class scores alike, boxes stay where they are), NMS
    keeps every box and the score threshold is 0, so every R-CNN runs its box head(s) on the RPN's
    ``post_nms_topk`` test proposals (1,000) and its mask head on ``test_topk_per_image`` (100)
    detections, the most work a test image can cause. Shapes, and so FLOPs, are unchanged.

    Args:
        model: a Detectron2 detector.
    """
    set_score_threshold(model, 0.0)
    for module in model.modules():
        layers = ()
        if isinstance(module, StandardRPNHead):
            layers = (module.objectness_logits, module.anchor_deltas)
        elif isinstance(module, FastRCNNOutputLayers):
            layers = (module.cls_score, module.bbox_pred)
            module.test_nms_thresh = 1.0
        elif isinstance(module, RPN):
            module.nms_thresh = 1.0
        for layer in layers:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)


def count_model(model: torch.nn.Module, image_size: Tuple[int, int], seed: int) -> Dict:
    """Parameters and fvcore FLOPs of a Detectron2 detector on one random image.

    Args:
        model: the detector, on the CPU; put in eval mode and given a fixed test workload here
            (:func:`fix_test_workload`).
        image_size: (height, width) of the image, already at the model's input scale.
        seed: seed of the image's pixels.

    Returns:
        dict with ``params``, ``trainable_params``, ``flops`` (total), ``flops_by_module`` (the
        detector's top-level modules, plus ``backbone.bottom_up``) and ``roi_counts`` (boxes pooled
        by each RoI pooler, per call: one call per cascade stage).
    """
    model.eval()
    fix_test_workload(model)
    height, width = image_size
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=generator).float()
    roi_counts: Dict[str, List[int]] = {}  # boxes pooled per call of each RoI pooler
    handles = [
        module.register_forward_hook(
            lambda _, args, __, name=name: roi_counts.setdefault(name, []).append(int(len(args[1][0])))
        )
        for name, module in model.named_modules()
        if isinstance(module, ROIPooler)
    ]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings of the data-dependent test-time code
            analysis = FlopCountAnalysis(model, [{"image": image}])
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            total = analysis.total()
            by_module = analysis.by_module()
    finally:
        for handle in handles:
            handle.remove()
    # TracingAdapter wraps the model as "model"; drop that prefix
    wanted = {name for name, _ in model.named_children()} | {"backbone.bottom_up"}
    breakdown = {
        k.split(".", 1)[1]: v for k, v in by_module.items() if k.split(".", 1)[-1] in wanted and "." in k
    }
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": int(total),
        "flops_by_module": {k: int(v) for k, v in sorted(breakdown.items())},
        "roi_counts": roi_counts,
    }


def load_model_config(path: str) -> Tuple[Dict, DictConfig]:
    """A LazyConfig's facts for the table and its ``model``, the trunk's pretrained weights skipped.

    Args:
        path: the config file.
    """
    cfg = LazyConfig.load(path)
    trunk = cfg.model.backbone.bottom_up
    facts = {
        "trunk": trunk.model_name,
        "weights": trunk.weights,
        "max_iter": int(cfg.train.max_iter),
        "batch_size": int(cfg.dataloader.train.total_batch_size),
        "train_short_edges": list(cfg.dataloader.train.mapper.augmentations[0].short_edge_length),
    }
    skip_pretrained_weights(cfg.model)
    return facts, cfg.model


def count_detectron2_reference(config: str, image_size: Tuple[int, int], seed: int) -> Dict:
    """Parameters and FLOPs of a Detectron2 model zoo model (yacs config; no weights loaded)."""
    cfg = detectron2_model_zoo.get_config(config)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    return count_model(build_model(cfg), image_size, seed)


def run(configs: Sequence[str], image_size: Tuple[int, int], *, seed: int = 0, estimate: bool = True) -> Dict:
    """Count every config (and, with ``estimate``, the Detectron2 models the estimate needs).

    Args:
        configs: config names relative to ``configs/`` or paths.
        image_size: (height, width) of the counted image.
        seed: seed of the random weights and of the image's pixels.
        estimate: add the GPU-hour estimate (counts the Detectron2 reference models too).

    Returns:
        the report: ``settings``, ``configs`` (one record per config) and ``detectron2_references``.
    """
    counted: Dict[str, Dict] = {}  # model key -> counts: a 3x config reuses its 1x model's
    references: Dict[str, Dict] = {}
    records = []
    for name in configs:
        path = resolve_config(name)
        detector, _, schedule = describe(name)
        start = time.perf_counter()
        facts, model_cfg = load_model_config(path)
        key = repr(OmegaConf.to_container(model_cfg, resolve=True))
        if key not in counted:
            torch.manual_seed(seed)
            counted[key] = count_model(instantiate(model_cfg), image_size, seed)
        counts = counted[key]
        record = {"config": name, "detector": detector, "schedule": schedule, **facts, **counts}
        reference = reference_for(detector, facts["trunk"]) if estimate else None
        if reference is not None:
            ref_config, seconds_per_iter = reference
            if ref_config not in references:
                logger.info("Counting Detectron2's %s", ref_config)
                references[ref_config] = {
                    "config": ref_config,
                    "train_seconds_per_iter": seconds_per_iter,
                    **count_detectron2_reference(ref_config, image_size, seed),
                }
            ref = references[ref_config]
            gpu_seconds = (
                seconds_per_iter * REFERENCE_GPUS * counts["flops"] / ref["flops"] * facts["max_iter"]
            )
            record["estimate"] = {"reference": ref_config, "v100_gpu_hours": round(gpu_seconds / 3600, 1)}
        records.append(record)
        logger.info(
            "%s: %.1f M parameters, %.1f GFLOPs (%.0f s)",
            name, counts["params"] / 1e6, counts["flops"] / 1e9, time.perf_counter() - start,
        )  # fmt: skip
    return {
        "settings": {
            "image_size": list(image_size),
            "seed": seed,
            "test_workload": "fix_test_workload: RPN and box predictor outputs zeroed, NMS off, score threshold 0",
            "flop_counter": "detectron2.utils.analysis.FlopCountAnalysis (fvcore; one multiply-add = one flop)",
            "estimate": f"t_ref x {REFERENCE_GPUS} x FLOPs / FLOPs_ref x iterations / 3600 (V100 GPU-hours)",
            "versions": {"torch": torch.__version__, "detectron2": detectron2.__version__},
        },
        "configs": records,
        "detectron2_references": list(references.values()),
    }


# ---- output ------------------------------------------------------------------------------------
def format_table(report: Dict) -> str:
    """Markdown tables of a :func:`run` report: the configs, then the Detectron2 references."""
    lines = [
        "| config | trunk | schedule | iterations | params | GFLOPs | trunk GFLOPs "
        "| estimate: V100 GPU-hours | scaled from |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["configs"]:
        estimate = r.get("estimate") or {}
        trunk_flops = r["flops_by_module"].get("backbone.bottom_up")
        lines.append(
            f"| {r['config']} | {r['trunk']} | {r['schedule']} | {r['max_iter']:,} | {r['params']:,} "
            f"| {r['flops'] / 1e9:.1f} | {'-' if trunk_flops is None else f'{trunk_flops / 1e9:.1f}'} "
            f"| {estimate.get('v100_gpu_hours', '-')} | {estimate.get('reference', '-')} |"
        )
    if report["detectron2_references"]:
        lines += [
            "",
            "| Detectron2 reference | train s/iter (8 V100) | params | GFLOPs |",
            "|---|---:|---:|---:|",
        ]
        for r in report["detectron2_references"]:
            lines.append(
                f"| {r['config']} | {r['train_seconds_per_iter']} | {r['params']:,} | {r['flops'] / 1e9:.1f} |"
            )
    h, w = report["settings"]["image_size"]
    lines.append(
        f"\nFLOPs at one {h} x {w} image, eval mode, RoI heads at their test-time maximum "
        f"(boxes per RoI pooler call in the JSON's roi_counts); {report['settings']['flop_counter']}."
    )
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------
def parse_image_size(text: str) -> Tuple[int, int]:
    """``"128"`` -> (128, 128); ``"800x1333"`` -> (800, 1333) as (height, width)."""
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected N or HxW, e.g. 128 or 800x1333")
    height, width = int(match.group(1)), int(match.group(2) or match.group(1))
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"image size {text!r}: both sides must be at least 32 pixels")
    return height, width


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "configs", nargs="*", metavar="CONFIG",
        help="LazyConfigs, relative to configs/ (e.g. COCO/mask_rcnn_rsb_r101_fpn_1x.py) or paths; "
        "default: every configs/COCO/*_rsb_r*_fpn_{1x,3x}.py",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=parse_image_size, default=(800, 1333), metavar="N|HxW",
        help="the counted image, square N or HxW (default: 800x1333)",
    )  # fmt: skip
    parser.add_argument(
        "--estimate", action=argparse.BooleanOptionalAction, default=True,
        help="estimate V100 GPU-hours from Detectron2's published models (default: yes)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and image")
    parser.add_argument(
        "--json", default=None, metavar="OUT", help="also write the results to this JSON file"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    configs = args.configs or default_configs()
    for name in configs:
        try:
            resolve_config(name)
        except FileNotFoundError as e:
            parser.error(str(e))
    logger.info("Counting %d configs at %d x %d", len(configs), *args.image_size)
    report = run(configs, args.image_size, seed=args.seed, estimate=args.estimate)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        logger.info("Results written to %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
