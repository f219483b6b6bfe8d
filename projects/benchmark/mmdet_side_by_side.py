#!/usr/bin/env python3
"""Side by side with mmdetection 2.28 itself: the same RSB detectors, the same weights, the same images.

For each of the four RSB detectors (faster_rcnn, mask_rcnn, cascade_mask_rcnn, retinanet) this
script builds the model twice in one process:

* in mmdetection 2.28 from its own config (``resnet_strikes_back/*_rsb-pretrain_1x_coco.py``,
  training and test settings included), with random weights (``mmdet_parity.randomize_``: scaled
  so that the heads give real detections), saved with mmcv's ``save_checkpoint``;
* here, from the ``configs/COCO/*_mmdet.py`` LazyConfig, with that checkpoint converted by
  ``rsb_backbone.mmdet_conversion.convert_mmdet_checkpoint``.

Both run with the test score threshold at 0, so that every image keeps 100 detections in both
libraries (NMS, the mask head and mask pasting do their full share, as for a trained model on
COCO); a check run compares the two outputs (``mmdet_parity.compare``) before anything is timed.
When the outputs differ by more than docs/benchmark.md states (the thresholds below,
``failed_checks``), the script exits 1 after its table; ``--no-check`` exits 0 whatever they are.
The timings, memory and FLOPs are reported, not checked.

Then, in ONE alternating run per figure (pair i = sample i of mmdetection and sample i of this
repository, the order flipped from pair to pair, so that both sides share the machine's load):

* batch-1 inference latency on the same image at each ``--sizes`` (default 800x1333, the
  recipe's test scale, and 307x512, the same aspect at 512 px): from the resized uint8 image to
  the detections (mmdetection: ``Normalize``/``Pad`` as its test pipeline, then ``simple_test``;
  here: ``model([{"image": ...}])``, which normalizes and pads itself);
* one training step at batch 2 (``--train-size``; two generated images with 8 and 7 objects,
  boxes, classes and, for the mask detectors, bitmap masks; ``mmdet_train_parity.scenes``):
  forward, losses, backward and the recipe's AdamW step (mmcv's ``build_optimizer`` with the
  mmdetection config's optimizer; here the LazyConfig's ``optimizer``), each side's own samplers.
  Both sides get the same boolean masks (mmdetection as ``BitmapMasks``, here as ``BitMasks``);
  ``--here-mask-format polygon`` gives this repository their contours as ``PolygonMasks`` instead,
  the format of Detectron2's COCO loader;
* peak training memory of those steps (CPU): the growth of the resident set during the step
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, after ``malloc_trim``; the
  helpers of ``benchmark.py``) plus the model's parameters and buffers and the AdamW state.

Each figure is reported as the median of each side and the ratio here / mmdetection as the median
and interquartile range of the per-pair ratios (``paired_ratios.py``). fvcore's FLOP count
(``fvcore.nn.FlopCountAnalysis``: one multiply-add counts as one FLOP; RoIAlign and NMS are not
counted on either side) of both models' inference at each size stands next to the timings.
``--profile`` adds a ``torch.profiler`` breakdown of one run of each figure per module group
(preprocess, backbone, neck, rpn, roi_heads, box_head, mask_head, dense_head, postprocess,
backward, optimizer, other) to the JSON and the output.

Run with the mmdetection environment's python (``projects/mmdet_checkpoints/mmdet_env``)::

    /tmp/mmenv/bin/python projects/benchmark/mmdet_side_by_side.py --threads 2 \\
        --json projects/benchmark/results/cpu_mmdet_side_by_side.json

    # the mask detectors' training with polygon ground truth here (Detectron2's COCO format):
    /tmp/mmenv/bin/python projects/benchmark/mmdet_side_by_side.py --threads 2 \\
        --detectors mask_rcnn cascade_mask_rcnn --here-mask-format polygon --sizes 256 --pairs 1 --no-flops

    # quickly, one detector at a small size:
    /tmp/mmenv/bin/python projects/benchmark/mmdet_side_by_side.py --detectors faster_rcnn \\
        --sizes 256 --train-size 256 --pairs 2 --train-pairs 2
"""

import argparse
import contextlib
import functools
import gc
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
PARITY_SCRIPTS = os.path.join(REPO_ROOT, "projects", "mmdet_checkpoints")
for _path in (REPO_ROOT, HERE, PARITY_SCRIPTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from measuring import (  # noqa: E402
    cpu_peak_memory_supported,
    machine_description,
    parse_image_size,
    read_memory_mib,
    release_cpu_memory,
    reset_peak_memory,
    tensor_bytes,
)
from mmdet_parity import (  # noqa: E402
    compare,
    d2_detections,
    mmdet_detections,
    mmdet_inputs,
    synthetic_images,
)
from mmdet_train_parity import d2_model, d2_step, mmdet_model, mmdet_step, scenes  # noqa: E402
from paired_ratios import format_ratio, paired_ratio_statistics, within_tolerance  # noqa: E402
from parity_common import (  # noqa: E402  (lives in projects/mmdet_checkpoints)
    MMDET_CONFIGS,
    check_at_most,
    check_equal,
    exit_status,
    mmdet_config,
)

from rsb_backbone.config import set_score_threshold  # noqa: E402
from rsb_backbone.mmdet_conversion import DEFAULT_CONFIGS, DETECTORS, convert_mmdet_checkpoint  # noqa: E402

logger = logging.getLogger("rsb_detectron2.mmdet_side_by_side")

# The two sides; every ratio is HERE / MMDET.
MMDET, HERE_SIDE = "mmdet", "here"
SIDES = (MMDET, HERE_SIDE)
SIDE_TITLES = {MMDET: "mmdet 2.28", HERE_SIDE: "here"}
MASK_DETECTORS = ("mask_rcnn", "cascade_mask_rcnn")
# The recipe's test scale (mmdet Resize img_scale=(1333, 800), keep_ratio): a size given as one
# number N is the long side of an image of this aspect, N x round(N * 800 / 1333).
RECIPE_SIZE = (800, 1333)
# Objects in the two training images (COCO train2017 averages 7.3 instances per image).
TRAIN_OBJECTS = (8, 7)
# Test score threshold of both sides: every image keeps the full 100 detections.
SCORE_THRESHOLD = 0.0
# Thresholds of the check run (docs/benchmark.md, "Side by side with mmdetection 2.28 (CPU)"):
# "a check run compares the outputs (all 100 detections matched for every detector and size,
# boxes within 1.2e-4 px, scores within 4.2e-7, masks identical pixel for pixel)".
DETECTIONS_MATCHED = 100
MAX_BOX_DIFF_PX = 2.0**-13  # 1.2e-4 px: one float32 step at the 800x1333 size's coordinates (1024-2048)
MAX_SCORE_DIFF = 4.2e-7
MAX_MASK_PIXELS_DIFFERING = 0
# Profiler range names of the module groups; see module_groups_mmdet / module_groups_here.
GROUP_PREFIX = "group:"
TOTAL_GROUP = "other"
MIB = 2**20


# ---- inputs ------------------------------------------------------------------------------------
def parse_size(text: str) -> Tuple[int, int]:
    """``"800x1333"`` -> (800, 1333) as (height, width); ``"512"`` -> (307, 512): the long side of
    an image with the recipe's 800:1333 aspect."""
    return parse_image_size(text, aspect=RECIPE_SIZE[0] / RECIPE_SIZE[1])


def size_name(size: Tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def inference_image(seed: int, size: Tuple[int, int]) -> np.ndarray:
    """The RGB uint8 test image of ``mmdet_parity.synthetic_images`` (shapes on texture), resized
    to ``size`` (height, width), so that both libraries' resize steps leave it as it is.

    Args:
        seed: seed of the generated image.
        size: (height, width) of the result.
    """
    import mmcv

    return mmcv.imresize(synthetic_images(seed)[0], (size[1], size[0]), backend="cv2")


def training_batch(seed: int, size: Tuple[int, int], *, with_masks: bool) -> List[Dict[str, np.ndarray]]:
    """Two generated training images of ``size`` with ``TRAIN_OBJECTS`` objects (boxes, classes and,
    ``with_masks``, bitmap masks), as ``mmdet_train_parity.scenes`` makes them.

    Args:
        seed: seed of the generated scenes.
        size: (height, width) of both images.
        with_masks: keep the masks (the mask detectors); without them, neither side gets ground
            truth masks, as neither recipe loads them for Faster R-CNN or RetinaNet (Detectron2
            would otherwise copy one full-image mask per sampled proposal along with the boxes).
    """
    batch = scenes(seed, layouts=tuple((size[0], size[1], count) for count in TRAIN_OBJECTS))
    if not with_masks:
        batch = [{key: value for key, value in scene.items() if key != "masks"} for scene in batch]
    return batch


def with_polygon_masks(batch: List[Dict[str, np.ndarray]]) -> List[Dict]:
    """``batch`` with each image's bitmap masks as Detectron2 ``PolygonMasks`` (the outer contours
    of each mask, ``cv2.findContours``), the format Detectron2's COCO mapper gives the recipe
    (``instance_mask_format="polygon"``), while mmdetection's COCO pipeline rasterizes polygons
    into bitmaps (``LoadAnnotations(poly2mask=True)``).

    Args:
        batch: training images with boolean ``masks`` of shape (objects, height, width).
    """
    import cv2
    from detectron2.structures import PolygonMasks

    converted = []
    for scene in batch:
        polygons = []
        for mask in scene["masks"]:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            polygons.append([c.reshape(-1).astype(np.float64) + 0.5 for c in contours if len(c) >= 3])
        converted.append({**scene, "masks": PolygonMasks(polygons)})
    return converted


# ---- models ------------------------------------------------------------------------------------
def build_models(detector: str, seed: int, workdir: str) -> Tuple[torch.nn.Module, torch.nn.Module, str]:
    """mmdetection's model with random weights and this repository's ``_mmdet`` model holding them.

    Both keep their configs' training settings (samplers included), in training mode.

    Args:
        detector: one of ``DETECTORS``.
        seed: seed of the random weights.
        workdir: folder for the mmcv checkpoint and its conversion.

    Returns:
        (mmdetection model, this repository's model, the conversion's summary).
    """
    from mmcv.runner import save_checkpoint

    import mmdet

    mm = mmdet_model(detector, seed, exhaustive=False)
    mm_path = os.path.join(workdir, f"{detector}_mmdet_random.pth")
    save_checkpoint(mm, mm_path, meta={"mmdet_version": mmdet.__version__, "CLASSES": mm.CLASSES})
    here_path = os.path.join(workdir, f"{detector}_converted.pth")
    report = convert_mmdet_checkpoint(mm_path, here_path, detector=detector)
    here = d2_model(detector, here_path, exhaustive=False)
    return mm, here, report.summary()


def set_mmdet_score_threshold(model: torch.nn.Module, score_threshold: float) -> None:
    """Set the test score threshold of mmdetection's RoI head (two-stage) or dense head (RetinaNet).

    Args:
        model: an mmdetection 2.x detector.
        score_threshold: the new ``score_thr``.
    """
    head = model.roi_head if getattr(model, "with_roi_head", False) else model.bbox_head
    head.test_cfg.score_thr = score_threshold


def build_optimizers(
    detector: str, mm: torch.nn.Module, here: torch.nn.Module
) -> Dict[str, torch.optim.Optimizer]:
    """The recipe's AdamW of each side: mmcv's ``build_optimizer`` with the mmdetection config's
    ``optimizer`` (one parameter group per parameter, norm layers without weight decay), and the
    LazyConfig's ``optimizer`` here (Detectron2's parameter groups).

    Args:
        detector: one of ``DETECTORS``.
        mm: the mmdetection model.
        here: this repository's model.
    """
    from detectron2.config import LazyConfig, instantiate
    from mmcv.runner import build_optimizer

    mm_cfg = mmdet_config(detector)
    here_cfg = LazyConfig.load(os.path.join(REPO_ROOT, DEFAULT_CONFIGS[detector]))
    here_cfg.optimizer.params.model = here
    return {MMDET: build_optimizer(mm, mm_cfg.optimizer), HERE_SIDE: instantiate(here_cfg.optimizer)}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors of ``optimizer``'s state (AdamW: exp_avg, exp_avg_sq, step)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )


# ---- what is timed -----------------------------------------------------------------------------
def inference_functions(mm: torch.nn.Module, here: torch.nn.Module, image: np.ndarray) -> Dict[str, Callable]:
    """Batch-1 inference of each side on ``image``, from the resized uint8 image to the detections.

    Args:
        mm: the mmdetection model (eval mode).
        here: this repository's model (eval mode).
        image: RGB uint8 (height, width, 3), already at the test size.

    Returns:
        side -> function running one inference and returning its raw output.
    """
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def run_mmdet():
        with torch.no_grad():
            with torch.profiler.record_function(GROUP_PREFIX + "preprocess"):
                img, metas = mmdet_inputs(image, image.shape)  # Normalize, Pad, ImageToTensor
            return mm.simple_test(img, metas, rescale=True)[0]

    def run_here():
        with torch.no_grad():
            return here([{"image": chw, "height": image.shape[0], "width": image.shape[1]}])

    return {MMDET: run_mmdet, HERE_SIDE: run_here}


def training_functions(
    detector: str,
    models: Dict[str, torch.nn.Module],
    optimizers: Dict[str, torch.optim.Optimizer],
    batches: Dict[str, List[Dict]],
    seed: int,
) -> Dict[str, Callable]:
    """One training iteration of each side on ``batch``: zero_grad, forward with losses, backward,
    AdamW step (mmcv's ``OptimizerHook`` order; Detectron2's ``SimpleTrainer`` does the same work).

    Args:
        detector: one of ``DETECTORS``.
        models: side -> model in training mode.
        optimizers: side -> its optimizer.
        batches: side -> the training images with their objects (the same images and objects).
        seed: torch seed set before each step (the samplers draw the same way every step).

    Returns:
        side -> function running one step and returning its loss terms.
    """

    def run_mmdet():
        torch.manual_seed(seed)
        optimizers[MMDET].zero_grad(set_to_none=True)
        terms = mmdet_step(models[MMDET], detector, batches[MMDET])  # forward_train, _parse_losses, backward
        optimizers[MMDET].step()
        return terms

    def run_here():
        torch.manual_seed(seed)
        optimizers[HERE_SIDE].zero_grad(set_to_none=True)
        terms = d2_step(models[HERE_SIDE], batches[HERE_SIDE])  # forward with losses, backward
        optimizers[HERE_SIDE].step()
        return terms

    return {MMDET: run_mmdet, HERE_SIDE: run_here}


def timed(function: Callable) -> Callable[[], Dict[str, float]]:
    """A measurement of ``function``: its wall time in ms (after a garbage collection)."""

    def measure() -> Dict[str, float]:
        gc.collect()
        start = time.perf_counter()
        function()
        return {"ms": 1000 * (time.perf_counter() - start)}

    return measure


def timed_with_peak_memory(
    function: Callable, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, memory: bool
) -> Callable[[], Dict[str, float]]:
    """A measurement of a training step: wall time in ms and, with ``memory``, peak memory in MiB.

    The gradients are freed first (as the step's zero_grad would), then memory that Python and
    glibc hold unused is given back and the resident-set high-water mark is reset; the peak is its
    growth during the step plus the model's parameters and buffers and the optimizer's state.

    Args:
        function: one training step.
        model: the model it trains.
        optimizer: its optimizer.
        memory: whether to measure the peak memory (Linux 4.0+).
    """

    def measure() -> Dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        if memory:
            release_cpu_memory()
            reset_peak_memory()
            before_mib = read_memory_mib("VmRSS")
        else:
            gc.collect()
        start = time.perf_counter()
        function()
        result = {"ms": 1000 * (time.perf_counter() - start)}
        if memory:
            growth = read_memory_mib("VmHWM") - before_mib
            result["peak_mib"] = growth + (tensor_bytes(model) + optimizer_state_bytes(optimizer)) / MIB
        return result

    return measure


def run_alternating(
    measurements: Dict[str, Callable[[], Dict[str, float]]], *, pairs: int, warmup: int, label: str
) -> Dict[str, List[Dict[str, float]]]:
    """Run ``warmup`` untimed pairs, then ``pairs`` measured pairs, alternating the two sides.

    Pair i runs both measurements once; the first side of each pair alternates (A B, B A, ...),
    so that neither side always runs first.

    Args:
        measurements: side -> measurement returning a dict of figures.
        pairs: measured pairs.
        warmup: untimed pairs before them.
        label: name of the figure in the log.

    Returns:
        side -> one dict of figures per measured pair, in pair order.
    """
    names = list(measurements)
    samples = {name: [] for name in names}
    for index in range(warmup + pairs):
        order = names if index % 2 == 0 else names[::-1]
        results = {name: measurements[name]() for name in order}
        if index >= warmup:
            for name in names:
                samples[name].append(results[name])
        logger.info(
            "%s %s %d/%d: %s (load %.2f)",
            label,
            "warm-up" if index < warmup else "pair",
            index + 1 - (0 if index < warmup else warmup),
            warmup if index < warmup else pairs,
            ", ".join(f"{name} {results[name]['ms']:.0f} ms" for name in names),
            os.getloadavg()[0],
        )
    return samples


# ---- FLOPs -------------------------------------------------------------------------------------
class _MMDetTracingWrapper(torch.nn.Module):
    """mmdetection's ``simple_test`` on one image as a tensor-in, tensor-out module for fvcore's tracer.

    The detections come out as numpy arrays, and the tracer drops every op whose result reaches
    no output (the mask head would vanish from the count; the box head stays because NMS, a
    Python op, consumes it). So the output here depends, with weight 0, on the output of every
    module and of mask pasting (``fcn_mask_head._do_paste_mask``): all the work of the inference
    is counted.
    """

    def __init__(self, model: torch.nn.Module, metas: List[Dict]):
        super().__init__()
        self.model = model
        self.metas = metas

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        import mmdet.models.roi_heads.mask_heads.fcn_mask_head as fcn_mask_head

        kept = [img.sum()]

        def keep(output) -> None:
            if torch.is_tensor(output):
                kept.append(output.float().sum())
            elif isinstance(output, (list, tuple)):
                for item in output:
                    keep(item)
            elif isinstance(output, dict):
                for item in output.values():
                    keep(item)

        def paste(*args, **kwargs):
            result = paste_mask(*args, **kwargs)
            keep(result)
            return result

        paste_mask = fcn_mask_head._do_paste_mask
        handles = [
            m.register_forward_hook(lambda module, inputs, output: keep(output)) for m in self.model.modules()
        ]
        fcn_mask_head._do_paste_mask = paste
        try:
            self.model.simple_test(img, self.metas, rescale=True)
        finally:
            fcn_mask_head._do_paste_mask = paste_mask
            for handle in handles:
                handle.remove()
        return torch.stack(kept).sum() * 0


def flop_counts(mm: torch.nn.Module, here: torch.nn.Module, image: np.ndarray) -> Dict[str, Dict]:
    """fvcore's FLOP count of one inference of each side on ``image``.

    mmdetection's model is traced through :class:`_MMDetTracingWrapper`, this repository's through
    Detectron2's ``FlopCountAnalysis`` (fvcore's, with Detectron2's input adapter).

    Args:
        mm: the mmdetection model (eval mode).
        here: this repository's model (eval mode).
        image: RGB uint8 (height, width, 3) at the test size.

    Returns:
        side -> ``{"gflops": float or None, "uncounted_ops": {op: count}, "error": str}`` (error
        only where fvcore could not trace the model).
    """
    import fvcore.nn
    from detectron2.utils.analysis import FlopCountAnalysis as D2FlopCountAnalysis

    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    img, metas = mmdet_inputs(image, image.shape)
    analyses = {
        MMDET: lambda: fvcore.nn.FlopCountAnalysis(_MMDetTracingWrapper(mm, metas), (img,)),
        HERE_SIDE: lambda: D2FlopCountAnalysis(
            here, [{"image": chw, "height": image.shape[0], "width": image.shape[1]}]
        ),
    }
    out = {}
    for side, make in analyses.items():
        try:
            with torch.no_grad():
                analysis = make()
                analysis.unsupported_ops_warnings(False)
                analysis.uncalled_modules_warnings(False)
                out[side] = {
                    "gflops": analysis.total() / 1e9,
                    "uncounted_ops": dict(analysis.unsupported_ops()),
                }
        except Exception as error:  # noqa: BLE001 - any tracing failure is reported, not fatal
            logger.warning("fvcore could not count the FLOPs of %s's model: %s", side, error)
            out[side] = {"gflops": None, "error": f"{type(error).__name__}: {error}"}
    return out


# ---- profiling ---------------------------------------------------------------------------------
@contextlib.contextmanager
def profiled_groups(patches: Sequence[Tuple[object, str, str]]) -> Iterator[None]:
    """Wrap functions in ``torch.profiler.record_function`` ranges named after their module group.

    Args:
        patches: (owner, attribute, group): ``owner.attribute`` (a method of an object, or a
            function of a Python module that its callers look up there) runs inside a range
            ``"group:" + group`` until the context ends.
    """
    restore = []
    try:
        for owner, attribute, group in patches:
            if not hasattr(owner, attribute):
                continue
            original = getattr(owner, attribute)
            restore.append((owner, attribute, attribute in vars(owner), vars(owner).get(attribute)))

            def wrapper(*args, __original=original, __name=GROUP_PREFIX + group, **kwargs):
                with torch.profiler.record_function(__name):
                    return __original(*args, **kwargs)

            setattr(owner, attribute, functools.wraps(original)(wrapper))
        yield
    finally:
        for owner, attribute, had_own, previous in reversed(restore):
            if had_own:
                setattr(owner, attribute, previous)
            else:
                delattr(owner, attribute)


def _each(module_or_list) -> List[torch.nn.Module]:
    """The modules of a ``ModuleList`` (cascade stages), or ``[module]``."""
    return list(module_or_list) if isinstance(module_or_list, torch.nn.ModuleList) else [module_or_list]


def module_groups_mmdet(model: torch.nn.Module) -> List[Tuple[object, str, str]]:
    """The functions of an mmdetection 2.x detector per module group (see :func:`profiled_groups`).

    RPN: the head and its proposals (NMS included); box_head: RoIAlign and the box head's layers;
    mask_head: RoIAlign and the mask head's layers; postprocess: box decoding and NMS of the
    detections, mask pasting, ``bbox2result``.

    Args:
        model: an mmdetection two-stage detector or RetinaNet.
    """
    import mmdet.models.detectors.single_stage as single_stage
    import mmdet.models.roi_heads.cascade_roi_head as cascade_roi_head
    import mmdet.models.roi_heads.standard_roi_head as standard_roi_head

    patches = [(model.backbone, "forward", "backbone"), (model.neck, "forward", "neck")]
    if not getattr(model, "with_roi_head", False):
        return patches + [
            (model.bbox_head, "forward", "dense_head"),
            (model.bbox_head, "get_bboxes", "postprocess"),
            (single_stage, "bbox2result", "postprocess"),
        ]
    roi_head = model.roi_head
    patches += [
        (model.rpn_head, "simple_test_rpn", "rpn"),
        (model.rpn_head, "forward_train", "rpn"),
        (roi_head, "simple_test", "roi_heads"),
        (roi_head, "forward_train", "roi_heads"),
        (roi_head, "_bbox_forward", "box_head"),
        (standard_roi_head, "bbox2result", "postprocess"),
        (cascade_roi_head, "bbox2result", "postprocess"),
    ]
    patches += [(head, "get_bboxes", "postprocess") for head in _each(roi_head.bbox_head)]
    if roi_head.with_mask:
        patches.append((roi_head, "_mask_forward", "mask_head"))
        patches += [(head, "get_seg_masks", "postprocess") for head in _each(roi_head.mask_head)]
    return patches


def module_groups_here(model: torch.nn.Module) -> List[Tuple[object, str, str]]:
    """The functions of this repository's detector per module group (see :func:`profiled_groups`),
    grouped as :func:`module_groups_mmdet` groups mmdetection's.

    Args:
        model: a Detectron2 ``GeneralizedRCNN`` (standard or cascade RoI heads) or ``RetinaNet``.
    """
    import detectron2.modeling.meta_arch.dense_detector as dense_detector
    import detectron2.modeling.meta_arch.rcnn as rcnn

    import rsb_backbone.modeling.mmdet_cascade as mmdet_cascade

    patches = [
        (model, "preprocess_image", "preprocess"),
        (model.backbone.bottom_up, "forward", "backbone"),
        (model.backbone, "forward", "neck"),
    ]
    if not hasattr(model, "roi_heads"):
        return patches + [
            (model.head, "forward", "dense_head"),
            (model, "forward_inference", "postprocess"),
            (dense_detector, "detector_postprocess", "postprocess"),
        ]
    roi_heads = model.roi_heads
    patches += [
        (model.proposal_generator, "forward", "rpn"),
        (roi_heads, "forward", "roi_heads"),
        (roi_heads.box_pooler, "forward", "box_head"),
        (mmdet_cascade, "fast_rcnn_inference", "postprocess"),
        (rcnn, "detector_postprocess", "postprocess"),
    ]
    patches += [(head, "forward", "box_head") for head in _each(roi_heads.box_head)]
    for predictor in _each(roi_heads.box_predictor):
        patches += [(predictor, "forward", "box_head"), (predictor, "inference", "postprocess")]
    if getattr(roi_heads, "mask_on", False):
        patches.append((roi_heads.mask_pooler, "forward", "mask_head"))
        patches += [(head, "layers", "mask_head") for head in _each(roi_heads.mask_head)]
    return patches


def group_times(events, total_name: str) -> Dict[str, float]:
    """Exclusive time in ms of each module group in a profile.

    Group spans are the ``"group:*"`` ranges, the autograd engine's backward functions
    (``backward``) and the optimizer's ``step`` and ``zero_grad`` (``optimizer``); a span's time
    less the time of the spans nested in it is its group's. The range ``total_name`` covers the
    whole run: what no other group holds is ``other``.

    Args:
        events: ``torch.profiler.profile().events()``.
        total_name: name of the outermost range.
    """
    spans = []
    for event in events:
        name = event.name
        if name == total_name:
            group = TOTAL_GROUP
        elif name.startswith(GROUP_PREFIX):
            group = name[len(GROUP_PREFIX) :]
        elif name.startswith("autograd::engine::evaluate_function"):
            group = "backward"
        elif name.startswith("Optimizer.step#") or name.startswith("Optimizer.zero_grad#"):
            group = "optimizer"
        else:
            continue
        spans.append((event.time_range.start, event.time_range.end, group, event.thread))
    main_thread = next(thread for start, end, group, thread in spans if group == TOTAL_GROUP)
    spans = sorted((s for s in spans if s[3] == main_thread), key=lambda s: (s[0], -s[1]))
    exclusive: Dict[str, float] = {}
    stack: List[list] = []  # [end, group, duration, nested duration]

    def close(entry):
        exclusive[entry[1]] = exclusive.get(entry[1], 0.0) + (entry[2] - entry[3]) / 1000

    for start, end, group, _ in spans:
        while stack and stack[-1][0] <= start:
            close(stack.pop())
        if stack:
            stack[-1][3] += end - start
        stack.append([end, group, end - start, 0.0])
    while stack:
        close(stack.pop())
    return exclusive


def profile_function(function: Callable, patches, *, top_ops: int) -> Dict:
    """Profile one call of ``function`` with ``torch.profiler`` (CPU), its module groups marked.

    Args:
        function: what to profile.
        patches: its module groups (:func:`module_groups_mmdet`, :func:`module_groups_here`).
        top_ops: how many operators (by self CPU time) to list.

    Returns:
        ``{"total_ms", "groups_ms": {group: ms}, "top_ops": [{"name", "self_ms", "calls"}]}``.
    """
    total_name = GROUP_PREFIX + "total"
    gc.collect()
    with (
        profiled_groups(patches),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
    ):
        with torch.profiler.record_function(total_name):
            function()
    groups = group_times(prof.events(), total_name)
    averages = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    ops = [
        {"name": a.key, "self_ms": a.self_cpu_time_total / 1000, "calls": a.count}
        for a in averages
        if not a.key.startswith(GROUP_PREFIX)
    ][:top_ops]
    return {"total_ms": sum(groups.values()), "groups_ms": groups, "top_ops": ops}


# ---- one detector ------------------------------------------------------------------------------
def figure_summary(samples: Dict[str, List[Dict[str, float]]], key: str) -> Dict:
    """Medians of each side and the paired ratio statistics of figure ``key`` of ``samples``."""
    import statistics

    values = {side: [s[key] for s in samples[side]] for side in SIDES}
    return {
        MMDET: statistics.median(values[MMDET]),
        HERE_SIDE: statistics.median(values[HERE_SIDE]),
        "ratio": paired_ratio_statistics(values[HERE_SIDE], values[MMDET]),
        "samples": values,
    }


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
    set_mmdet_score_threshold(mm, SCORE_THRESHOLD)
    set_score_threshold(here, SCORE_THRESHOLD)
    record = {
        "detector": detector,
        "mmdet_config": MMDET_CONFIGS[detector],
        "config": DEFAULT_CONFIGS[detector],
        "conversion": conversion,
        "load_average_start": os.getloadavg(),
        "figures": {},
        "flops": {},
        "outputs": {},
    }
    profiles = {}

    for model in models.values():
        model.eval()
    for size in args.sizes:
        name = size_name(size)
        image = inference_image(args.seed, size)
        functions = inference_functions(mm, here, image)
        # The check run is also each side's warm-up at this size.
        record["outputs"][name] = compare(
            mmdet_detections(functions[MMDET](), with_masks),
            d2_detections(functions[HERE_SIDE]()[0]["instances"], with_masks),
            with_masks,
        )
        logger.info("%s %s outputs: %s", detector, name, record["outputs"][name])
        if args.flops:
            record["flops"][name] = flop_counts(mm, here, image)
        samples = run_alternating(
            {side: timed(function) for side, function in functions.items()},
            pairs=args.pairs,
            warmup=args.warmup,
            label=f"{detector} inference {name}",
        )
        record["figures"][f"latency_b1_{name}_ms"] = figure_summary(samples, "ms")
        if args.profile:
            profiles[f"inference_{name}"] = {
                MMDET: profile_function(functions[MMDET], module_groups_mmdet(mm), top_ops=args.top_ops),
                HERE_SIDE: profile_function(
                    functions[HERE_SIDE], module_groups_here(here), top_ops=args.top_ops
                ),
            }

    if args.train:
        for model in models.values():
            model.train()  # norm_eval / FrozenStatsBN: BatchNorm statistics stay frozen
        optimizers = build_optimizers(detector, mm, here)
        batch = training_batch(args.seed, args.train_size, with_masks=with_masks)
        batches = {MMDET: batch, HERE_SIDE: batch}
        if with_masks and args.here_mask_format == "polygon":
            batches[HERE_SIDE] = with_polygon_masks(batch)
        functions = training_functions(detector, models, optimizers, batches, args.seed)
        memory = cpu_peak_memory_supported()
        first_losses = {side: function() for side, function in functions.items()}  # AdamW state created
        record["first_step_losses"] = {side: sum(terms.values()) for side, terms in first_losses.items()}
        samples = run_alternating(
            {
                side: timed_with_peak_memory(functions[side], models[side], optimizers[side], memory=memory)
                for side in SIDES
            },
            pairs=args.train_pairs,
            warmup=args.warmup,
            label=f"{detector} training b2 {size_name(args.train_size)}",
        )
        name = size_name(args.train_size)
        record["figures"][f"train_step_b2_{name}_ms"] = figure_summary(samples, "ms")
        if memory:
            record["figures"][f"train_peak_mem_b2_{name}_mib"] = figure_summary(samples, "peak_mib")
        if args.profile:
            profiles[f"train_step_b2_{name}"] = {
                MMDET: profile_function(functions[MMDET], module_groups_mmdet(mm), top_ops=args.top_ops),
                HERE_SIDE: profile_function(
                    functions[HERE_SIDE], module_groups_here(here), top_ops=args.top_ops
                ),
            }
    if profiles:
        record["profile"] = profiles
    record["load_average_end"] = os.getloadavg()
    return record


# ---- the check run ------------------------------------------------------------------------------
def failed_checks(report: Dict) -> List[str]:
    """The check run's figures in ``report`` outside the thresholds of this module, one line each.

    Args:
        report: what :func:`run_side_by_side` writes to ``--json``; only each record of its
            ``"results"`` is read: ``"detector"`` and ``"outputs"`` (size -> the figures of
            ``mmdet_parity.compare``).

    Returns:
        One line per failed figure naming the detector and size, the figure, the measured value
        and the threshold; empty when every figure is within its threshold.
    """
    failures: List[str] = []
    for record in report["results"]:
        for size, outputs in record["outputs"].items():
            subject = f"{record['detector']} {size}"
            check_equal(
                failures, subject, f"detections matched (mmdet {outputs['mmdet']}, here {outputs['detectron2']})",
                outputs["matched"], DETECTIONS_MATCHED,
            )
            check_at_most(failures, subject, "max box diff (px)", outputs["max_box_diff_px"], MAX_BOX_DIFF_PX)
            check_at_most(failures, subject, "max score diff", outputs["max_score_diff"], MAX_SCORE_DIFF)
            if "mask_pixels_differing" in outputs:
                check_at_most(
                    failures, subject, "mask pixels differing", outputs["mask_pixels_differing"], MAX_MASK_PIXELS_DIFFERING
                )
    return failures


# ---- reporting ---------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def figure_title(key: str) -> str:
    """``"latency_b1_800x1333_ms"`` -> ``"latency b1 800x1333 (ms)"``."""
    *words, unit = key.split("_")
    return " ".join(words).replace("train peak mem", "train peak memory") + f" ({unit.replace('mib', 'MiB')})"


def format_table(report: Dict) -> str:
    """The markdown table of every figure (and, with ``--profile``, the per-group breakdown)."""
    settings, machine = report["settings"], report["machine"]
    lines = [
        f"CPU: {machine['cpu']}, {machine['torch_threads']} torch threads; torch {machine['torch']}, "
        f"mmdet {machine['mmdet']}, mmcv {machine['mmcv']}; score threshold {SCORE_THRESHOLD} (100 "
        f"detections per image); {settings['pairs']} inference pairs, {settings['train_pairs']} training "
        f"pairs after {settings['warmup']} warm-up pair(s). Ratio = here / mmdetection per pair: median "
        "(interquartile range); FLOPs: fvcore, one multiply-add = 1, RoIAlign and NMS not counted.",
        "",
        "| detector | figure | mmdet 2.28 | here | ratio here / mmdet, median (IQR) | pairs |",
        "|---|---|---:|---:|---|---:|",
    ]
    for record in report["results"]:
        detector = record["detector"]
        for key, figure in record["figures"].items():
            ratio = figure["ratio"]
            flag = "" if within_tolerance(ratio, settings["tolerance"]) else " *"
            lines.append(
                f"| {detector} | {figure_title(key)} | {_fmt(figure[MMDET])} | {_fmt(figure[HERE_SIDE])} | "
                f"{format_ratio(ratio)}{flag} | {ratio['n']} |"
            )
        for size, flops in record["flops"].items():
            mm, here = flops[MMDET]["gflops"], flops[HERE_SIDE]["gflops"]
            ratio = (
                f"{here / mm:.3f}"
                if mm and here
                else "n/a (fvcore could not trace mmdet)" if not mm else "n/a"
            )
            lines.append(f"| {detector} | FLOPs {size} (G) | {_fmt(mm)} | {_fmt(here)} | {ratio} | - |")
    lines.append("")
    lines.append(
        f"\\* a quartile of the ratios lies more than {settings['tolerance']} from their median: not resolved "
        "to that precision by this run."
    )
    if any("profile" in record for record in report["results"]):
        lines += ["", "Profile (torch.profiler, one run each, exclusive ms per module group):", ""]
        lines += [
            "| detector | figure | group | mmdet 2.28 (ms) | here (ms) | here - mmdet (ms) |",
            "|---|---|---|---:|---:|---:|",
        ]
        for record in report["results"]:
            for figure, sides in record.get("profile", {}).items():
                groups = sorted(set(sides[MMDET]["groups_ms"]) | set(sides[HERE_SIDE]["groups_ms"]))
                for group in groups + ["total"]:
                    if group == "total":
                        mm, here = sides[MMDET]["total_ms"], sides[HERE_SIDE]["total_ms"]
                    else:
                        mm, here = (sides[side]["groups_ms"].get(group, 0.0) for side in SIDES)
                    lines.append(
                        f"| {record['detector']} | {figure} | {group} | {mm:,.0f} | {here:,.0f} | {here - mm:+,.0f} |"
                    )
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------
def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--detectors",
        nargs="+",
        choices=list(DETECTORS),
        default=list(DETECTORS),
        metavar="NAME",
        help=f"detectors to measure (default: all of {', '.join(DETECTORS)})",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[parse_size("800x1333"), parse_size("512")],
        metavar="N|HxW",
        help="inference image sizes: HxW, or N for the long side of the recipe's 800:1333 aspect "
        "(default: 800x1333 512, i.e. 800x1333 and 307x512)",
    )
    parser.add_argument(
        "--train-size",
        type=parse_size,
        default=parse_size("512"),
        metavar="N|HxW",
        help="size of the two training images (default: 512, i.e. 307x512)",
    )
    parser.add_argument(
        "--here-mask-format",
        choices=["bitmask", "polygon"],
        default="bitmask",
        help="ground-truth masks of this repository's mask detectors in training: bitmask (default; the "
        "same boolean arrays mmdetection gets as BitmapMasks) or polygon (their contours as PolygonMasks, "
        "what Detectron2's COCO loader gives)",
    )
    parser.add_argument("--pairs", type=int, default=7, help="measured inference pairs per size (default: 7)")
    parser.add_argument("--train-pairs", type=int, default=5, help="measured training pairs (default: 5)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed pairs before the measured ones (default: 0; an output check run per size and "
        "one training step per side always run first)",
    )
    parser.add_argument(
        "--train",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the training step and its peak memory (default: yes)",
    )
    parser.add_argument(
        "--flops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count FLOPs with fvcore (default: yes)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one run of each figure per module group"
    )
    parser.add_argument("--top-ops", type=int, default=12, help="operators listed per profile in the JSON")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="a ratio counts as resolved when both quartiles are within this of the median (default: 0.05)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the generated images")
    parser.add_argument(
        "--workdir", default=None, help="folder for the checkpoints (default: a temporary one)"
    )
    parser.add_argument(
        "--json", default=None, metavar="OUT", help="write every sample and the summary to OUT"
    )
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="print the figures and exit 0 whatever the check run measured (default: exit 1 when the "
        "outputs differ by more than docs/benchmark.md states)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    for name in ("pairs", "train_pairs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: expected at least 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup}: expected 0 or more")
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
    report = run_side_by_side(args)
    return exit_status(failed_checks(report), check=args.check, logger=logger)


def run_side_by_side(args: argparse.Namespace) -> Dict:
    """Measure every detector of ``args.detectors`` in both libraries, print the table and write
    ``--json`` (after each detector); returns the report.

    Args:
        args: the parsed command line of :func:`build_argument_parser`.
    """
    import mmcv
    import mmdet

    machine = machine_description(("torch", "detectron2", "timm"))
    machine.update(mmdet=mmdet.__version__, mmcv=mmcv.__version__)
    report = {
        "settings": {
            "sizes": [list(size) for size in args.sizes],
            "train_size": list(args.train_size),
            "train_batch_size": len(TRAIN_OBJECTS),
            "train_objects": list(TRAIN_OBJECTS),
            "here_mask_format": args.here_mask_format,
            "pairs": args.pairs,
            "train_pairs": args.train_pairs,
            "warmup": args.warmup,
            "score_threshold": SCORE_THRESHOLD,
            "tolerance": args.tolerance,
            "seed": args.seed,
            "ratio": "here / mmdet per pair; median, q1, q3 of the pairs",
            "memory": "growth of VmHWM (reset via /proc/self/clear_refs after malloc_trim) during one "
            "training step, plus the model's parameter and buffer bytes and the optimizer state",
            "flops": "fvcore FlopCountAnalysis of one batch-1 inference; one multiply-add = 1 FLOP; "
            "ops without a handle (RoIAlign, NMS, element-wise) not counted",
        },
        "machine": machine,
        "results": [],
    }

    def write_json() -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="mmdet_side_by_side_")
        )
        os.makedirs(workdir, exist_ok=True)
        for detector in args.detectors:
            start = time.perf_counter()
            logger.info("%s: building both models (load %.2f)", detector, os.getloadavg()[0])
            record = benchmark_detector(detector, args, workdir)
            record["seconds"] = round(time.perf_counter() - start, 1)
            logger.info("%s done in %.0f s", detector, record["seconds"])
            report["results"].append(record)
            write_json()
            gc.collect()
    print(format_table(report))
    if args.json:
        logger.info("Every sample written to %s", args.json)
    return report


if __name__ == "__main__":
    sys.exit(main())
