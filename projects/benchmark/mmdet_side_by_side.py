#!/usr/bin/env python3
"""Side by side with mmdetection 2.28 itself: each RSB detector built in both libraries with the same
random weights, their outputs compared (exit 1 beyond the thresholds below: ``failed_checks``), then
batch-1 latency, a training step at batch 2 and its peak memory in one alternating run per figure,
fvcore's FLOP counts and, with ``--profile``, a torch.profiler breakdown per module group. What each
figure is and the measured tables: docs/benchmark.md, "Side by side with mmdetection 2.28 (CPU)".
Run with the mmdetection environment's python (projects/mmdet_checkpoints/mmdet_env)::

    /tmp/mmenv/bin/python projects/benchmark/mmdet_side_by_side.py --threads 2 \\
        --json projects/benchmark/results/cpu_mmdet_side_by_side.json
    /tmp/mmenv/bin/python projects/benchmark/mmdet_side_by_side.py --detectors faster_rcnn \\
        --sizes 256 --train-size 256 --pairs 2 --train-pairs 2
"""

import argparse
import contextlib
import functools
import gc
import importlib
import logging
import math
import os
import statistics
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mmdet_checkpoints"))

from measuring import MIB, alternate, at_least, count_flops, cpu_peak_memory_supported  # noqa: E402
from measuring import exit_status, figure_table, machine_description, markdown_table  # noqa: E402
from measuring import paired_ratio_statistics, parse_image_size, peak_growth_mib, script_parser  # noqa: E402
from measuring import measure_each, tensor_bytes, timed_ms  # noqa: E402
from mmdet_parity import compare, d2_detections, mmdet_detections, mmdet_inputs  # noqa: E402
from mmdet_parity import synthetic_images  # noqa: E402
from mmdet_train_parity import d2_model, d2_step, mmdet_model, mmdet_step, scenes  # noqa: E402
from parity_common import MMDET_CONFIGS, REPO_ROOT, check_at_most, check_equal, mmdet_config  # noqa: E402

from rsb_backbone.config import set_score_threshold  # noqa: E402
from rsb_backbone.mmdet_conversion import DEFAULT_CONFIGS, DETECTORS, convert_mmdet_checkpoint  # noqa: E402

logger = logging.getLogger("rsb_detectron2.mmdet_side_by_side")

MMDET, HERE_SIDE = "mmdet", "here"  # the two sides; every ratio is HERE / MMDET
SIDES = (MMDET, HERE_SIDE)
MASK_DETECTORS = ("mask_rcnn", "cascade_mask_rcnn")
# The recipe's test scale (Resize img_scale=(1333, 800), keep_ratio): a size N is its aspect's long side.
RECIPE_SIZE = (800, 1333)
TRAIN_OBJECTS = (8, 7)  # objects in the two training images (COCO train2017: 7.3 instances per image)
SCORE_THRESHOLD = 0.0  # both sides: every image keeps the full 100 detections
# Thresholds of the check run (docs/benchmark.md, "Side by side with mmdetection 2.28 (CPU)"):
# all 100 detections matched, boxes within 1.2e-4 px, scores within 4.2e-7, masks identical.
DETECTIONS_MATCHED = 100
MAX_BOX_DIFF_PX = 2.0**-13  # 1.2e-4 px: one float32 step at the 800x1333 size's coordinates (1024-2048)
MAX_SCORE_DIFF = 4.2e-7
MAX_MASK_PIXELS_DIFFERING = 0
MEMORY = (  # the JSON's description of the figures
    "growth of VmHWM (reset via /proc/self/clear_refs after malloc_trim) during one training step, plus the "
    "model's parameter and buffer bytes and the optimizer state"
)
FLOPS = (
    "fvcore FlopCountAnalysis of one batch-1 inference; one multiply-add = 1 FLOP; ops without a handle "
    "(RoIAlign, NMS, element-wise) not counted"
)
# --profile: group -> paths of each side. A path names a submodule (its forward; ModuleLists, the
# cascade's stages, expand), a method ("module.method") or a Python module's function
# ("package.module:function"), marked while profiling; paths a model lacks are skipped.
# What no group holds is "other"; autograd's backward functions are "backward", AdamW "optimizer".
GROUP_PREFIX = "group:"
PROFILE_GROUPS = {
    MMDET: {
        "backbone": "backbone",
        "neck": "neck",
        "dense_head": "bbox_head",
        "rpn": "rpn_head.simple_test_rpn rpn_head.forward_train",
        "roi_heads": "roi_head.simple_test roi_head.forward_train",
        "box_head": "roi_head._bbox_forward",  # RoIAlign and the box head's layers
        "mask_head": "roi_head._mask_forward",  # RoIAlign and the mask head's layers
        "postprocess": "bbox_head.get_bboxes roi_head.bbox_head.get_bboxes roi_head.mask_head.get_seg_masks "
        "mmdet.models.detectors.single_stage:bbox2result mmdet.models.roi_heads.cascade_roi_head:bbox2result "
        "mmdet.models.roi_heads.standard_roi_head:bbox2result",
    },
    HERE_SIDE: {
        "preprocess": "preprocess_image",
        "backbone": "backbone.bottom_up",
        "neck": "backbone",
        "dense_head": "head",
        "rpn": "proposal_generator",
        "roi_heads": "roi_heads",
        "box_head": "roi_heads.box_pooler roi_heads.box_head roi_heads.box_predictor",
        "mask_head": "roi_heads.mask_pooler roi_heads.mask_head.layers",
        "postprocess": "forward_inference roi_heads.box_predictor.inference "
        "detectron2.modeling.meta_arch.dense_detector:detector_postprocess "
        "rsb_backbone.modeling.mmdet_cascade:fast_rcnn_inference "
        "detectron2.modeling.meta_arch.rcnn:detector_postprocess",
    },
}


# ---- inputs and models -------------------------------------------------------------------------
def parse_size(text: str) -> Tuple[int, int]:
    """``"800x1333"`` -> (800, 1333); ``"512"`` -> (307, 512), the long side of the recipe's aspect."""
    return parse_image_size(text, aspect=RECIPE_SIZE[0] / RECIPE_SIZE[1])


def size_name(size: Tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def inference_image(seed: int, size: Tuple[int, int]) -> np.ndarray:
    """The RGB uint8 image of ``mmdet_parity.synthetic_images`` resized to ``size`` (height, width)
    as mmcv resizes, so that neither library's resize step changes it."""
    import mmcv

    return mmcv.imresize(synthetic_images(seed)[0], (size[1], size[0]), backend="cv2")


def here_input(image: np.ndarray) -> Dict:
    """This repository's model input of an RGB uint8 (height, width, 3) image."""
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return {"image": chw, "height": image.shape[0], "width": image.shape[1]}


def training_batches(seed: int, size: Tuple[int, int], *, with_masks: bool, polygons: bool) -> Dict:
    """Each side's two generated images of ``size`` with ``TRAIN_OBJECTS`` objects (``scenes``), with
    the bitmap masks for the mask detectors only (neither recipe loads masks for the others) and,
    with ``polygons``, here each mask's outer contours as ``PolygonMasks`` (Detectron2's COCO format)."""
    import cv2
    from detectron2.structures import PolygonMasks

    batch = scenes(seed, layouts=tuple((size[0], size[1], count) for count in TRAIN_OBJECTS))
    batch = [{k: v for k, v in scene.items() if k != "masks" or with_masks} for scene in batch]
    if not (with_masks and polygons):
        return {MMDET: batch, HERE_SIDE: batch}
    contours = [
        [
            cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
            for m in scene["masks"]
        ]
        for scene in batch
    ]
    polygons = [
        [[c.reshape(-1).astype(np.float64) + 0.5 for c in cs if len(c) >= 3] for cs in scene]
        for scene in contours
    ]
    return {MMDET: batch, HERE_SIDE: [{**s, "masks": PolygonMasks(p)} for s, p in zip(batch, polygons)]}


def build_models(detector: str, seed: int, workdir: str) -> Tuple[torch.nn.Module, torch.nn.Module, str]:
    """mmdetection's model with random weights (saved with mmcv), this repository's ``_mmdet`` model
    holding them (converted), both with their configs' training settings, score threshold 0.

    Returns:
        (mmdetection model, this repository's model, the conversion's summary).
    """
    import mmdet
    from mmcv.runner import save_checkpoint

    mm = mmdet_model(detector, seed, exhaustive=False)
    mm_path, here_path = (os.path.join(workdir, f"{detector}_{n}.pth") for n in ("mmdet_random", "converted"))
    save_checkpoint(mm, mm_path, meta={"mmdet_version": mmdet.__version__, "CLASSES": mm.CLASSES})
    summary = convert_mmdet_checkpoint(mm_path, here_path, detector=detector).summary()
    here = d2_model(detector, here_path, exhaustive=False)
    head = mm.roi_head if getattr(mm, "with_roi_head", False) else mm.bbox_head
    head.test_cfg.score_thr = SCORE_THRESHOLD
    set_score_threshold(here, SCORE_THRESHOLD)
    return mm, here, summary


# ---- what is measured --------------------------------------------------------------------------
def inference_functions(mm: torch.nn.Module, here: torch.nn.Module, image: np.ndarray) -> Dict[str, Callable]:
    """Batch-1 inference of each side (eval mode) on ``image`` (RGB uint8, at the test size), from
    the uint8 image to the detections: side -> function returning the raw output."""

    def run_mmdet():
        with torch.no_grad():
            with torch.profiler.record_function(GROUP_PREFIX + "preprocess"):
                img, metas = mmdet_inputs(image, image.shape)  # Normalize, Pad, ImageToTensor
            return mm.simple_test(img, metas, rescale=True)[0]

    def run_here():
        with torch.no_grad():
            return here([here_input(image)])

    return {MMDET: run_mmdet, HERE_SIDE: run_here}


def training_steps(detector: str, models: Dict, batches: Dict, seed: int, memory: bool) -> Tuple[Dict, Dict]:
    """Each side's training iteration (mmcv's ``OptimizerHook`` order: zero_grad, forward with losses,
    backward, AdamW step, the torch seed set first so that the samplers draw alike every step) and
    its measurement: ``ms`` and, with ``memory``, ``peak_mib``, the resident set's growth during the
    step (gradients freed first) plus the model's parameters and buffers and the AdamW state.

    Args:
        detector: one of ``DETECTORS``.
        models: side -> model in training mode.
        batches: side -> the training images with their objects (the same on both sides).
        seed: torch seed of every step.
        memory: whether to measure the peak memory.

    Returns:
        (side -> step returning the loss terms, side -> measurement).
    """
    from detectron2.config import LazyConfig, instantiate
    from mmcv.runner import build_optimizer

    # The recipe's AdamW: mmcv's build_optimizer with the mmdetection config's optimizer (a parameter
    # group per parameter), the LazyConfig's optimizer here.
    here_cfg = LazyConfig.load(os.path.join(REPO_ROOT, DEFAULT_CONFIGS[detector]))
    here_cfg.optimizer.params.model = models[HERE_SIDE]
    optimizers = {MMDET: build_optimizer(models[MMDET], mmdet_config(detector).optimizer)}
    optimizers[HERE_SIDE] = instantiate(here_cfg.optimizer)
    forward_backward = {
        MMDET: lambda: mmdet_step(models[MMDET], detector, batches[MMDET]),
        HERE_SIDE: lambda: d2_step(models[HERE_SIDE], batches[HERE_SIDE]),
    }

    def step(side: str) -> Dict[str, float]:
        torch.manual_seed(seed)
        optimizers[side].zero_grad(set_to_none=True)
        terms = forward_backward[side]()
        optimizers[side].step()
        return terms

    def measure(side: str) -> Dict[str, float]:
        optimizers[side].zero_grad(set_to_none=True)
        models[side].zero_grad(set_to_none=True)
        if not memory:
            return {"ms": timed_ms(lambda: step(side))()}
        ms = []
        growth = peak_growth_mib(lambda: ms.append(timed_ms(lambda: step(side))()))
        state = [v for s in optimizers[side].state.values() for v in s.values() if torch.is_tensor(v)]
        held = tensor_bytes(models[side]) + sum(v.numel() * v.element_size() for v in state)
        return {"ms": ms[0], "peak_mib": growth + held / MIB}

    return {side: functools.partial(step, side) for side in SIDES}, {
        side: functools.partial(measure, side) for side in SIDES
    }


class _MMDetTracingWrapper(torch.nn.Module):
    """mmdetection's ``simple_test`` of one image as a tensor-in, tensor-out module for fvcore's tracer,
    which drops every op whose result reaches no output (the detections come out as numpy arrays):
    the output depends, with weight 0, on every module's output and on mask pasting."""

    def __init__(self, model: torch.nn.Module, metas: List[Dict]):
        super().__init__()
        self.model, self.metas = model, metas

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        import mmdet.models.roi_heads.mask_heads.fcn_mask_head as fcn_mask_head

        kept, paste = [img.sum()], fcn_mask_head._do_paste_mask

        def keep(output) -> None:
            if torch.is_tensor(output):
                kept.append(output.float().sum())
            elif isinstance(output, (list, tuple, dict)):
                for item in output.values() if isinstance(output, dict) else output:
                    keep(item)

        def kept_paste(*args, **kwargs):
            result = paste(*args, **kwargs)
            keep(result)
            return result

        handles = [m.register_forward_hook(lambda m, i, output: keep(output)) for m in self.model.modules()]
        try:
            with mock.patch.object(fcn_mask_head, "_do_paste_mask", kept_paste):
                self.model.simple_test(img, self.metas, rescale=True)
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack(kept).sum() * 0


def flop_counts(mm: torch.nn.Module, here: torch.nn.Module, image: np.ndarray) -> Dict[str, Dict]:
    """fvcore's count of one inference of each side on ``image`` (:func:`measuring.count_flops`);
    mmdetection's traced through :class:`_MMDetTracingWrapper`, here through Detectron2's adapter."""
    import fvcore.nn
    from detectron2.utils.analysis import FlopCountAnalysis

    img, metas = mmdet_inputs(image, image.shape)
    wrapper = _MMDetTracingWrapper(mm, metas)
    mm_flops = count_flops(
        lambda: fvcore.nn.FlopCountAnalysis(wrapper, (img,)), logger, "mmdetection's model"
    )
    return {
        MMDET: mm_flops,
        HERE_SIDE: count_flops(lambda: FlopCountAnalysis(here, [here_input(image)]), logger),
    }


# ---- profiling ---------------------------------------------------------------------------------
def group_targets(model: torch.nn.Module, path: str) -> List[Tuple[object, str]]:
    """(owner, attribute) of what a path of ``PROFILE_GROUPS`` names on ``model``: a submodule's
    ``forward``, a method, a Python module's function; empty where the model lacks it."""
    if ":" in path:
        module, function = path.split(":")
        return [(importlib.import_module(module), function)]
    owners = [model]
    for part in path.split("."):
        values = [getattr(owner, part, None) for owner in owners]
        if not any(isinstance(value, torch.nn.Module) for value in values):
            return [(owner, part) for owner, value in zip(owners, values) if callable(value)]
        modules = [v for v in values if isinstance(v, torch.nn.Module)]
        owners = [m for v in modules for m in (v if isinstance(v, torch.nn.ModuleList) else [v])]
    return [(module, "forward") for module in owners]


@contextlib.contextmanager
def marked_groups(model: torch.nn.Module, groups: Dict[str, str]):
    """Run what ``groups`` name on ``model`` inside ``torch.profiler`` ranges ``"group:<group>"``: the
    attributes are replaced while the context lasts (not forward hooks: mmdetection's dense heads
    call ``self.forward`` directly)."""

    def ranged(function: Callable, name: str) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with torch.profiler.record_function(name):
                return function(*args, **kwargs)

        return wrapper

    with contextlib.ExitStack() as stack:
        for group, paths in groups.items():
            for owner, attribute in [t for path in paths.split() for t in group_targets(model, path)]:
                patched = ranged(getattr(owner, attribute), GROUP_PREFIX + group)
                stack.enter_context(mock.patch.object(owner, attribute, patched))
        yield


def group_times(events, total_name: str) -> Dict[str, float]:
    """Exclusive time in ms of each module group in a profile: a span's time less that of the spans
    nested in it. Spans: the ``"group:*"`` ranges, autograd's backward functions (``backward``),
    the optimizer's ``step`` and ``zero_grad`` (``optimizer``); ``total_name`` spans the whole run
    and what no other group holds is ``other``. Only the thread of ``total_name`` counts.

    Args:
        events: ``torch.profiler.profile().events()``.
        total_name: name of the outermost range.
    """
    spans = []
    for event in events:
        name = event.name
        if name == total_name:
            group = "other"
        elif name.startswith(GROUP_PREFIX):
            group = name[len(GROUP_PREFIX) :]
        elif name.startswith("autograd::engine::evaluate_function"):
            group = "backward"
        elif name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
            group = "optimizer"
        else:
            continue
        spans.append((event.time_range.start, event.time_range.end, group, event.thread))
    thread = next(span[3] for span in spans if span[2] == "other")
    exclusive: Dict[str, float] = {}
    stack: List[list] = []  # [end, group, duration, nested duration] of the open spans
    for start, end, group, _ in sorted((s for s in spans if s[3] == thread), key=lambda s: (s[0], -s[1])) + [
        (math.inf, 0, None, None)  # closes every span
    ]:
        while stack and stack[-1][0] <= start:
            _, closed, duration, nested = stack.pop()
            exclusive[closed] = exclusive.get(closed, 0.0) + (duration - nested) / 1000
        if stack:
            stack[-1][3] += end - start
        stack.append([end, group, end - start, 0.0])
    return exclusive


def profile_function(function: Callable, model: torch.nn.Module, side: str, top_ops: int) -> Dict:
    """One call of ``function`` under ``torch.profiler`` (CPU), the module groups of ``model`` marked
    (``PROFILE_GROUPS[side]``): ``{"total_ms", "groups_ms", "top_ops": [{"name", "self_ms", "calls"}]}``."""
    total = GROUP_PREFIX + "total"
    gc.collect()
    with marked_groups(model, PROFILE_GROUPS[side]):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            with torch.profiler.record_function(total):
                function()
    groups = group_times(profile.events(), total)
    averages = sorted(profile.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    ops = [a for a in averages if not a.key.startswith(GROUP_PREFIX)][:top_ops]
    ops = [{"name": a.key, "self_ms": a.self_cpu_time_total / 1000, "calls": a.count} for a in ops]
    return {"total_ms": sum(groups.values()), "groups_ms": groups, "top_ops": ops}


# ---- one detector ------------------------------------------------------------------------------
def figure_summary(values: Dict[str, List[float]]) -> Dict:
    """Each side's median and the paired ratio statistics here / mmdetection of one figure."""
    ratio = paired_ratio_statistics(values[HERE_SIDE], values[MMDET])
    return {**{side: statistics.median(values[side]) for side in SIDES}, "ratio": ratio, "samples": values}


def measured(label: str, functions: Dict[str, Callable], pairs: int, warmup: int) -> Dict[str, List]:
    """``functions`` (side -> measurement returning ms or a dict with ``ms``) in one alternating run,
    each pair logged with the load average."""

    def log(index: int, results: Dict) -> None:
        ms = [results[side]["ms"] if isinstance(results[side], dict) else results[side] for side in SIDES]
        ms = ", ".join(f"{side} {value:.0f} ms" for side, value in zip(SIDES, ms))
        kind = f"warm-up {index + 1}/{warmup}" if index < warmup else f"pair {index + 1 - warmup}/{pairs}"
        logger.info("%s %s: %s (load %.2f)", label, kind, ms, os.getloadavg()[0])

    return alternate(functions, rounds=pairs, warmup=warmup, on_round=log)


def benchmark_detector(detector: str, args, workdir: str) -> Dict:
    """Every measurement of one detector in both libraries; returns its JSON record.

    Args:
        detector: one of ``DETECTORS``.
        args: the parsed command line.
        workdir: folder for the checkpoints.
    """
    with_masks = detector in MASK_DETECTORS
    mm, here, conversion = build_models(detector, args.seed, workdir)
    models = {MMDET: mm, HERE_SIDE: here}
    record = dict(detector=detector, mmdet_config=MMDET_CONFIGS[detector], config=DEFAULT_CONFIGS[detector])
    record.update(conversion=conversion, load_average_start=os.getloadavg(), figures={}, flops={}, outputs={})
    profiles = {}

    def profile(name: str, functions: Dict[str, Callable]) -> None:
        if args.profile:
            profiles[name] = {
                side: profile_function(functions[side], models[side], side, args.top_ops) for side in SIDES
            }

    for model in models.values():
        model.eval()
    for size in args.sizes:
        name = size_name(size)
        image = inference_image(args.seed, size)
        functions = inference_functions(mm, here, image)
        outputs = {side: function() for side, function in functions.items()}  # the check run: the warm-up too
        mm_out, here_out = mmdet_detections(outputs[MMDET], with_masks), outputs[HERE_SIDE][0]["instances"]
        record["outputs"][name] = compare(mm_out, d2_detections(here_out, with_masks), with_masks)
        logger.info("%s %s outputs: %s", detector, name, record["outputs"][name])
        if args.flops:
            record["flops"][name] = flop_counts(mm, here, image)
        timed = {side: timed_ms(function) for side, function in functions.items()}
        samples = measured(f"{detector} inference {name}", timed, args.pairs, args.warmup)
        record["figures"][f"latency_b1_{name}_ms"] = figure_summary(samples)
        profile(f"inference_{name}", functions)

    if args.train:
        for model in models.values():
            model.train()  # norm_eval / FrozenStatsBN: BatchNorm statistics stay frozen
        polygons = args.here_mask_format == "polygon"
        batches = training_batches(args.seed, args.train_size, with_masks=with_masks, polygons=polygons)
        functions, steps = training_steps(detector, models, batches, args.seed, cpu_peak_memory_supported())
        first_losses = {side: function() for side, function in functions.items()}  # AdamW state created
        record["first_step_losses"] = {side: sum(terms.values()) for side, terms in first_losses.items()}
        name = size_name(args.train_size)
        samples = measured(f"{detector} training b2 {name}", steps, args.train_pairs, args.warmup)
        for key, unit in (("ms", "ms"), ("peak_mib", "mib")):
            values = {side: [sample[key] for sample in samples[side] if key in sample] for side in SIDES}
            if values[MMDET]:
                figure = "train_step" if key == "ms" else "train_peak_mem"
                record["figures"][f"{figure}_b2_{name}_{unit}"] = figure_summary(values)
        profile(f"train_step_b2_{name}", functions)
    if profiles:
        record["profile"] = profiles
    record["load_average_end"] = os.getloadavg()
    return record


def failed_checks(report: Dict) -> List[str]:
    """One line per figure of the check run outside its threshold (the module's constants), naming
    the detector and size, the figure, the measured value and the threshold.

    Args:
        report: what :func:`run_side_by_side` writes to ``--json``; only each record's
            ``"detector"`` and ``"outputs"`` (size -> the figures of ``mmdet_parity.compare``) are read.
    """
    failures: List[str] = []
    for record in report["results"]:
        for size, outputs in record["outputs"].items():
            subject = f"{record['detector']} {size}"
            matched = f"detections matched (mmdet {outputs['mmdet']}, here {outputs['detectron2']})"
            check_equal(failures, subject, matched, outputs["matched"], DETECTIONS_MATCHED)
            check_at_most(failures, subject, "max box diff (px)", outputs["max_box_diff_px"], MAX_BOX_DIFF_PX)
            check_at_most(failures, subject, "max score diff", outputs["max_score_diff"], MAX_SCORE_DIFF)
            if "mask_pixels_differing" in outputs:
                differing = outputs["mask_pixels_differing"]
                check_at_most(
                    failures, subject, "mask pixels differing", differing, MAX_MASK_PIXELS_DIFFERING
                )
    return failures


def format_table(report: Dict) -> str:
    """The markdown table of every figure and, with ``--profile``, of the per-group breakdown."""
    settings, machine = report["settings"], report["machine"]
    rows, profile_rows = [], []
    for record in report["results"]:
        detector = record["detector"]
        for key, figure in record["figures"].items():
            *words, unit = key.replace("peak_mem", "peak_memory").split("_")
            title = f"{' '.join(words)} ({unit.replace('mib', 'MiB')})"
            rows.append([detector, title, figure[MMDET], figure[HERE_SIDE], figure["ratio"]])
        for size, flops in record["flops"].items():
            mm, here = flops[MMDET]["gflops"], flops[HERE_SIDE]["gflops"]
            rows.append([detector, f"FLOPs {size} (G)", mm, here, here / mm if mm and here else None])
        for figure, sides in record.get("profile", {}).items():
            groups = sorted(set(sides[MMDET]["groups_ms"]) | set(sides[HERE_SIDE]["groups_ms"]))
            for group in groups + ["total"]:
                times = [sides[side]["groups_ms"].get(group, 0.0) for side in SIDES]
                mm, here = [sides[side]["total_ms"] for side in SIDES] if group == "total" else times
                profile_rows.append(
                    [detector, figure, group, f"{mm:,.0f}", f"{here:,.0f}", f"{here - mm:+,.0f}"]
                )
    lines = [
        f"CPU: {machine['cpu']}, {machine['torch_threads']} torch threads; torch {machine['torch']}, "
        f"mmdet {machine['mmdet']}, mmcv {machine['mmcv']}; score threshold {SCORE_THRESHOLD} (100 "
        f"detections per image); {settings['pairs']} inference pairs, {settings['train_pairs']} training "
        f"pairs after {settings['warmup']} warm-up pair(s). Ratio = here / mmdetection per pair: median "
        "(interquartile range); FLOPs: fvcore, one multiply-add = 1, RoIAlign and NMS not counted.",
        "",
        figure_table(rows, ["mmdet 2.28", "here"], "ratio here / mmdet, median (IQR)", settings["tolerance"]),
    ]
    if profile_rows:
        lines += ["", "Profile (torch.profiler, one run each, exclusive ms per module group):", ""]
        headers = ["detector", "figure", "group", "mmdet 2.28 (ms)", "here (ms)", "here - mmdet (ms)"]
        lines.append(markdown_table(headers, profile_rows, align="lllrrr"))
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------
def build_argument_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add = parser.add_argument
    # fmt: off
    add("--detectors", nargs="+", choices=list(DETECTORS), default=list(DETECTORS), metavar="NAME",
        help=f"detectors to measure (default: all of {', '.join(DETECTORS)})")
    add("--sizes", nargs="+", type=parse_size, default=[parse_size("800x1333"), parse_size("512")],
        metavar="N|HxW",
        help="inference image sizes: HxW, or N for the long side of the recipe's 800:1333 aspect "
        "(default: 800x1333 512, i.e. 800x1333 and 307x512)")
    add("--train-size", type=parse_size, default=parse_size("512"), metavar="N|HxW",
        help="size of the two training images (default: 512, i.e. 307x512)")
    add("--here-mask-format", choices=["bitmask", "polygon"], default="bitmask",
        help="ground-truth masks here in training: bitmask (default; the boolean arrays mmdetection gets as "
        "BitmapMasks) or polygon (their contours as PolygonMasks, what Detectron2's COCO loader gives)")
    add("--pairs", type=at_least(1), default=7, help="measured inference pairs per size (default: 7)")
    add("--train-pairs", type=at_least(1), default=5, help="measured training pairs (default: 5)")
    add("--warmup", type=at_least(0), default=0,
        help="untimed pairs first (default: 0; a check run per size and a training step per side always run)")
    add("--train", action=argparse.BooleanOptionalAction, default=True, help="measure the training step")
    add("--flops", action=argparse.BooleanOptionalAction, default=True, help="count FLOPs with fvcore")
    add("--profile", action="store_true", help="also profile one run of each figure per module group")
    add("--top-ops", type=int, default=12, help="operators listed per profile in the JSON")
    add("--tolerance", type=float, default=0.05,
        help="a ratio counts as resolved when both quartiles are within this of the median (default: 0.05)")
    add("--workdir", help="folder for the checkpoints (default: a temporary one)")
    # fmt: on
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_argument_parser().parse_args(argv)
    # A handler of its own: mmcv raises the root logger's stream handlers to ERROR when it makes
    # its first logger (mmcv.utils.get_logger), which would silence the progress log.
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("fvcore", "detectron2", "mmdet", "py.warnings"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    return exit_status(failed_checks(run_side_by_side(args)), check=args.check, logger=logger)


def run_side_by_side(args: argparse.Namespace) -> Dict:
    """Measure every detector of ``args.detectors`` in both libraries, print the table and write
    ``--json`` (after each detector); returns the report."""
    import mmcv
    import mmdet

    machine = machine_description(("torch", "detectron2", "timm"))
    machine.update(mmdet=mmdet.__version__, mmcv=mmcv.__version__)
    settings = {"sizes": [list(size) for size in args.sizes], "train_size": list(args.train_size)}
    settings.update(train_batch_size=len(TRAIN_OBJECTS), train_objects=list(TRAIN_OBJECTS))
    settings.update(
        {name: getattr(args, name) for name in ("here_mask_format", "pairs", "train_pairs", "warmup")}
    )
    settings.update(score_threshold=SCORE_THRESHOLD, tolerance=args.tolerance, seed=args.seed)
    settings.update(ratio="here / mmdet per pair; median, q1, q3 of the pairs", memory=MEMORY, flops=FLOPS)
    report = {"settings": settings, "machine": machine, "results": []}
    with tempfile.TemporaryDirectory(prefix="mmdet_side_by_side_") as temporary:
        workdir = args.workdir or temporary
        os.makedirs(workdir, exist_ok=True)
        measure_each(
            args.detectors, lambda d: benchmark_detector(d, args, workdir), report, args.json, logger
        )
    print(format_table(report))
    return report


if __name__ == "__main__":
    sys.exit(main())
