#!/usr/bin/env python3
"""Side by side with mmdetection 2.28: each RSB detector in both libraries with the same random weights,
their outputs compared (exit 1 beyond the thresholds; --no-check: 0), batch-1 latency, a batch-2 training
step and its peak memory, FLOPs and, with --profile, the time per module group; docs/benchmark.md,
"Side by side with mmdetection 2.28 (CPU)". Run with the python of projects/mmdet_checkpoints/mmdet_env::

    /tmp/mmenv/bin/python projects/benchmark/mmdet_side_by_side.py --threads 2 \\
        --json projects/benchmark/results/cpu_mmdet_side_by_side.json
    /tmp/mmenv/bin/python projects/benchmark/mmdet_side_by_side.py --detectors faster_rcnn \\
        --sizes 256 --train-size 256 --pairs 2 --train-pairs 2
"""

import argparse
import contextlib
import functools
import gc
import logging
import os
import pkgutil
import statistics
import sys
import tempfile
from time import perf_counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mmdet_checkpoints"))

from measuring import MIB, alternate, at_least, count_flops, cpu_peak_memory_supported  # noqa: E402
from measuring import exit_status, figure_table, machine_description, markdown_table  # noqa: E402
from measuring import measure_each, paired_ratio_statistics, parse_image_size, peak_growth_mib  # noqa: E402
from measuring import script_parser, tensor_bytes, timed_ms  # noqa: E402
import mmdet_parity  # noqa: E402
from mmdet_parity import compare, d2_detections, mmdet_detections, synthetic_images  # noqa: E402
from mmdet_train_parity import converted_pair, d2_step, mmdet_step, scenes  # noqa: E402
from parity_common import MMDET_CONFIGS, REPO_ROOT, check_at_most, check_equal, mmdet_config  # noqa: E402

from rsb_backbone.config import set_score_threshold  # noqa: E402
from rsb_backbone.mmdet_conversion import DEFAULT_CONFIGS, DETECTORS  # noqa: E402

logger = logging.getLogger("rsb_detectron2.mmdet_side_by_side")

MMDET, HERE_SIDE = "mmdet", "here"  # the two sides; every ratio is HERE / MMDET
SIDES = (MMDET, HERE_SIDE)
RECIPE_SIZE = (800, 1333)  # the recipe's test scale (Resize img_scale=(1333, 800), keep_ratio)
TRAIN_OBJECTS = (8, 7)  # objects in the two training images (COCO train2017: 7.3 instances per image)
SCORE_THRESHOLD = 0.0  # both sides: every image keeps the full 100 detections
# The check run's thresholds (docs/benchmark.md, "Side by side with mmdetection 2.28 (CPU)"):
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
# --profile: group -> paths of each side; a group's time excludes the groups called in it, the rest of a
# run is "other". A path names a submodule (its forward; a ModuleList's modules), a method ("module.method")
# or a Python module's attribute ("package.module:function", "package:Class.method"); missing: skipped.
PROFILE_GROUPS = {
    MMDET: {
        "preprocess": "mmdet_parity:mmdet_inputs",  # Normalize, Pad, ImageToTensor
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
TRAIN_GROUPS = dict(
    backward="torch:Tensor.backward", optimizer="torch.optim:AdamW.step torch.optim:Optimizer.zero_grad"
)


def parse_size(text: str) -> Tuple[int, int]:
    """``"800x1333"`` -> (800, 1333); ``"512"`` -> (307, 512), the long side of the recipe's aspect."""
    return parse_image_size(text, aspect=RECIPE_SIZE[0] / RECIPE_SIZE[1])


def here_input(image: np.ndarray) -> Dict:
    """This repository's model input of an RGB uint8 (height, width, 3) image."""
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return {"image": chw, "height": image.shape[0], "width": image.shape[1]}


def training_batches(seed: int, size: Tuple[int, int], *, with_masks: bool, polygons: bool) -> Dict:
    """Each side's two generated images of ``size`` with ``TRAIN_OBJECTS`` objects, the bitmap masks for the
    mask detectors only (neither recipe loads them otherwise); with ``polygons``, here as ``PolygonMasks``."""
    import cv2
    from detectron2.structures import PolygonMasks

    def outlines(mask: np.ndarray) -> List[np.ndarray]:
        contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        return [c.reshape(-1).astype(np.float64) + 0.5 for c in contours if len(c) >= 3]

    batch = scenes(seed, layouts=tuple((size[0], size[1], count) for count in TRAIN_OBJECTS))
    batch = [{k: v for k, v in scene.items() if k != "masks" or with_masks} for scene in batch]
    here = batch
    if with_masks and polygons:
        here = [{**scene, "masks": PolygonMasks([outlines(m) for m in scene["masks"]])} for scene in batch]
    return {MMDET: batch, HERE_SIDE: here}


def build_models(detector: str, seed: int, workdir: str) -> Tuple[Dict[str, torch.nn.Module], str]:
    """(side -> model, the conversion's summary): mmdetection's model with random weights and this
    repository's ``_mmdet`` model holding them (converted); their training settings, score threshold 0."""
    mm, here, _, conversion = converted_pair(detector, seed, workdir, exhaustive=False)
    head = mm.roi_head if getattr(mm, "with_roi_head", False) else mm.bbox_head
    head.test_cfg.score_thr = SCORE_THRESHOLD
    set_score_threshold(here, SCORE_THRESHOLD)
    return {MMDET: mm, HERE_SIDE: here}, conversion.summary()


def inference_functions(models: Dict[str, torch.nn.Module], image: np.ndarray) -> Dict[str, Callable]:
    """Batch-1 inference of each side (eval mode) on ``image`` (RGB uint8, at the test size), from
    the uint8 image to the detections: side -> function returning the raw output."""

    @torch.no_grad()
    def run_mmdet():
        img, metas = mmdet_parity.mmdet_inputs(image, image.shape)  # --profile's "preprocess"
        return models[MMDET].simple_test(img, metas, rescale=True)[0]

    return {MMDET: run_mmdet, HERE_SIDE: torch.no_grad()(lambda: models[HERE_SIDE]([here_input(image)]))}


def training_steps(detector: str, models: Dict, batches: Dict, seed: int, memory: bool) -> Tuple[Dict, Dict]:
    """(side -> training iteration returning the loss terms, side -> its measurement: ``{"ms"}`` and, with
    ``memory``, ``"peak_mib"`` (``MEMORY``; gradients freed first)) on ``batches`` (:func:`training_batches`),
    models in training mode; mmcv's ``OptimizerHook`` order, ``seed`` set first so the samplers draw alike."""
    from detectron2.config import LazyConfig, instantiate
    from mmcv.runner import build_optimizer

    here_cfg = LazyConfig.load(os.path.join(REPO_ROOT, DEFAULT_CONFIGS[detector]))
    here_cfg.optimizer.params.model = models[HERE_SIDE]
    optimizers = {MMDET: build_optimizer(models[MMDET], mmdet_config(detector).optimizer)}
    optimizers[HERE_SIDE] = instantiate(here_cfg.optimizer)

    def step(side: str) -> Dict[str, float]:
        model, batch = models[side], batches[side]
        torch.manual_seed(seed)
        optimizers[side].zero_grad(set_to_none=True)
        terms = mmdet_step(model, detector, batch) if side == MMDET else d2_step(model, batch)
        optimizers[side].step()
        return terms

    def measure(side: str) -> Dict[str, float]:
        models[side].zero_grad(set_to_none=True)
        timed, ms = timed_ms(lambda: step(side)), []
        if not memory:
            return {"ms": timed()}
        growth = peak_growth_mib(lambda: ms.append(timed()))
        state = [v for s in optimizers[side].state.values() for v in s.values() if torch.is_tensor(v)]
        held = tensor_bytes(models[side]) + sum(v.numel() * v.element_size() for v in state)
        return {"ms": ms[0], "peak_mib": growth + held / MIB}

    return {s: functools.partial(step, s) for s in SIDES}, {s: functools.partial(measure, s) for s in SIDES}


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

        def keep(output):  # returns ``output`` unchanged
            if torch.is_tensor(output):
                kept.append(output.float().sum())
            elif isinstance(output, (list, tuple, dict)):
                for item in output.values() if isinstance(output, dict) else output:
                    keep(item)
            return output

        with torch.nn.modules.module.register_module_forward_hook(lambda m, i, output: keep(output)):
            with mock.patch.object(fcn_mask_head, "_do_paste_mask", lambda *a, **k: keep(paste(*a, **k))):
                self.model.simple_test(img, self.metas, rescale=True)
        return torch.stack(kept).sum() * 0


def flop_counts(models: Dict[str, torch.nn.Module], image: np.ndarray) -> Dict[str, Dict]:
    """fvcore's count of one inference of each side on ``image`` (:func:`measuring.count_flops`);
    mmdetection's traced through :class:`_MMDetTracingWrapper`, here through Detectron2's adapter."""
    import fvcore.nn
    from detectron2.utils.analysis import FlopCountAnalysis

    img, metas = mmdet_parity.mmdet_inputs(image, image.shape)
    wrapper = _MMDetTracingWrapper(models[MMDET], metas)
    mm = count_flops(lambda: fvcore.nn.FlopCountAnalysis(wrapper, (img,)), logger, "mmdetection's model")
    here = count_flops(lambda: FlopCountAnalysis(models[HERE_SIDE], [here_input(image)]), logger)
    return {MMDET: mm, HERE_SIDE: here}


def group_targets(model: torch.nn.Module, path: str) -> List[Tuple[object, str]]:
    """(owner, attribute) of what a path of ``PROFILE_GROUPS`` names on ``model``: a submodule's
    ``forward``, a method, a Python module's attribute; empty where the model lacks it."""
    if ":" in path:
        owner, attribute = path.rsplit(".", 1) if "." in path.split(":")[1] else path.split(":")
        return [(pkgutil.resolve_name(owner), attribute)]
    owners = [model]
    for part in path.split("."):
        values = [getattr(owner, part, None) for owner in owners]
        if not any(isinstance(value, torch.nn.Module) for value in values):
            return [(owner, part) for owner, value in zip(owners, values) if callable(value)]
        modules = [v for v in values if isinstance(v, torch.nn.Module)]
        owners = [m for v in modules for m in (v if isinstance(v, torch.nn.ModuleList) else [v])]
    return [(module, "forward") for module in owners]


@contextlib.contextmanager
def marked_groups(model: torch.nn.Module, groups: Dict[str, str], times: Dict[str, float]):
    """Time what ``groups`` (group -> paths) name on ``model`` while the context lasts, adding each group's
    exclusive ms (less the timed calls in it) to ``times``; yields ``mark(group, function)``, which times
    more. Attributes replaced, not forward hooks: mmdetection's dense heads call ``self.forward`` directly."""
    nested: List[float] = []  # per timed call in progress: the ms of the timed calls in it

    def mark(group: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            nested.append(0.0)
            start = perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                ms = (perf_counter() - start) * 1000
                times[group] = times.get(group, 0.0) + ms - nested.pop()
                if nested:
                    nested[-1] += ms

        return timed

    with contextlib.ExitStack() as stack:
        for group, paths in groups.items():
            for owner, name in [t for path in paths.split() for t in group_targets(model, path)]:
                stack.enter_context(mock.patch.object(owner, name, mark(group, getattr(owner, name))))
        yield mark


def profile_sides(functions: Dict[str, Callable], models: Dict[str, torch.nn.Module], top_ops: int) -> Dict:
    """One call of each side's function under ``torch.profiler`` (CPU), the groups of ``PROFILE_GROUPS``
    and ``TRAIN_GROUPS`` timed: side -> ``{"total_ms", "groups_ms", "top_ops": [{"name", "self_ms",
    "calls"}]}``, the ``top_ops`` operators of the most self time."""
    profiles = {}
    for side in SIDES:
        gc.collect()
        groups: Dict[str, float] = {}
        with marked_groups(models[side], {**PROFILE_GROUPS[side], **TRAIN_GROUPS}, groups) as mark:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                mark("other", functions[side])()
        averages = sorted(profile.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
        ops = [{"name": a.key, "self_ms": a.self_cpu_time_total / 1000, "calls": a.count} for a in averages]
        profiles[side] = {"total_ms": sum(groups.values()), "groups_ms": groups, "top_ops": ops[:top_ops]}
    return profiles


def measured(label: str, functions: Dict[str, Callable], pairs: int, warmup: int) -> Dict[str, Dict]:
    """``functions`` (side -> measurement returning ``{"ms", ...}``) in one alternating run, each pair logged:
    per key of the measurements, each side's median, the paired ratios here / mmdetection and the samples."""

    def log(index: int, results: Dict) -> None:
        ms = ", ".join(f"{side} {results[side]['ms']:.0f} ms" for side in SIDES)
        kind = f"warm-up {index + 1}/{warmup}" if index < warmup else f"pair {index + 1 - warmup}/{pairs}"
        logger.info("%s %s: %s (load %.2f)", label, kind, ms, os.getloadavg()[0])

    samples = alternate(functions, rounds=pairs, warmup=warmup, on_round=log)
    figures = {}
    for key in samples[MMDET][0]:
        values = {side: [sample[key] for sample in samples[side]] for side in SIDES}
        figures[key] = {side: statistics.median(values[side]) for side in SIDES}
        figures[key].update(ratio=paired_ratio_statistics(values[HERE_SIDE], values[MMDET]), samples=values)
    return figures


def benchmark_detector(detector: str, args, workdir: str) -> Dict:
    """``detector``'s JSON record: every measurement ``args`` ask for, the checkpoints in ``workdir``."""
    import mmcv

    with_masks = detector in ("mask_rcnn", "cascade_mask_rcnn")
    models, conversion = build_models(detector, args.seed, workdir)
    record = dict(detector=detector, mmdet_config=MMDET_CONFIGS[detector], config=DEFAULT_CONFIGS[detector])
    record.update(conversion=conversion, load_average_start=os.getloadavg(), figures={}, flops={}, outputs={})
    profiles = {}  # with --profile: figure -> side -> profile
    for model in models.values():
        model.eval()
    for size in args.sizes:
        name = "%dx%d" % size
        # An RGB uint8 image resized as mmcv resizes, so that neither library's resize step changes it.
        image = mmcv.imresize(synthetic_images(args.seed)[0], size[::-1], backend="cv2")
        functions = inference_functions(models, image)
        outputs = {side: function() for side, function in functions.items()}  # the check run: the warm-up too
        here_out = d2_detections(outputs[HERE_SIDE][0]["instances"], with_masks)
        record["outputs"][name] = compare(mmdet_detections(outputs[MMDET], with_masks), here_out, with_masks)
        logger.info("%s %s outputs: %s", detector, name, record["outputs"][name])
        if args.flops:
            record["flops"][name] = flop_counts(models, image)
        latency = {side: lambda timed=timed_ms(f): {"ms": timed()} for side, f in functions.items()}
        figures = measured(f"{detector} inference {name}", latency, args.pairs, args.warmup)
        record["figures"][f"latency_b1_{name}_ms"] = figures["ms"]
        if args.profile:
            profiles[f"inference_{name}"] = profile_sides(functions, models, args.top_ops)

    if args.train:
        for model in models.values():
            model.train()  # norm_eval / FrozenStatsBN: BatchNorm statistics stay frozen
        polygons = args.here_mask_format == "polygon"
        batches = training_batches(args.seed, args.train_size, with_masks=with_masks, polygons=polygons)
        steps, measures = training_steps(detector, models, batches, args.seed, cpu_peak_memory_supported())
        # The first steps create the AdamW state.
        record["first_step_losses"] = {side: sum(step().values()) for side, step in steps.items()}
        name = "%dx%d" % args.train_size
        figures = measured(f"{detector} training b2 {name}", measures, args.train_pairs, args.warmup)
        record["figures"][f"train_step_b2_{name}_ms"] = figures["ms"]
        if "peak_mib" in figures:
            record["figures"][f"train_peak_mem_b2_{name}_mib"] = figures["peak_mib"]
        if args.profile:
            profiles[f"train_step_b2_{name}"] = profile_sides(steps, models, args.top_ops)
    if profiles:
        record["profile"] = profiles
    record["load_average_end"] = os.getloadavg()
    return record


def failed_checks(report: Dict) -> List[str]:
    """One line per figure of the check run outside its threshold, naming the detector and size, the
    figure, its value and the threshold. Reads each record's ``"detector"`` and ``"outputs"``."""
    failures: List[str] = []
    for record in report["results"]:
        for size, outputs in record["outputs"].items():
            subject = f"{record['detector']} {size}"
            matched = f"detections matched (mmdet {outputs['mmdet']}, here {outputs['detectron2']})"
            check_equal(failures, subject, matched, outputs["matched"], DETECTIONS_MATCHED)
            check_at_most(failures, subject, "max box diff (px)", outputs["max_box_diff_px"], MAX_BOX_DIFF_PX)
            check_at_most(failures, subject, "max score diff", outputs["max_score_diff"], MAX_SCORE_DIFF)
            if "mask_pixels_differing" in outputs:  # the mask detectors
                differing, limit = outputs["mask_pixels_differing"], MAX_MASK_PIXELS_DIFFERING
                check_at_most(failures, subject, "mask pixels differing", differing, limit)
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
            mm, here = ({**sides[side]["groups_ms"], "total": sides[side]["total_ms"]} for side in SIDES)
            for group in sorted(set(mm) | set(here), key=lambda group: (group == "total", group)):
                a, b = mm.get(group, 0.0), here.get(group, 0.0)  # ms, "total" last
                profile_rows.append([detector, figure, group, f"{a:,.0f}", f"{b:,.0f}", f"{b - a:+,.0f}"])
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


def build_argument_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add = parser.add_argument
    # fmt: off
    add("--detectors", nargs="+", choices=list(DETECTORS), default=list(DETECTORS), metavar="NAME",
        help=f"detectors to measure (default: all of {', '.join(DETECTORS)})")
    add("--sizes", nargs="+", type=parse_size, default=[parse_size("800x1333"), parse_size("512")],
        metavar="N|HxW", help="inference image sizes: HxW, or N for the long side of the recipe's "
        "800:1333 aspect (default: 800x1333 512, i.e. 800x1333 and 307x512)")
    add("--train-size", type=parse_size, default=parse_size("512"), metavar="N|HxW",
        help="size of the two training images (default: 512, i.e. 307x512)")
    add("--here-mask-format", choices=["bitmask", "polygon"], default="bitmask",
        help="training masks here: bitmask (default; mmdetection's BitmapMasks' arrays) or polygon (their "
        "contours as PolygonMasks, what Detectron2's COCO loader gives)")
    add("--pairs", type=at_least(1), default=7, help="measured inference pairs per size (default: 7)")
    add("--train-pairs", type=at_least(1), default=5, help="measured training pairs (default: 5)")
    add("--warmup", type=at_least(0), default=0,
        help="untimed pairs first (default: 0; a check run per size and a training step per side always run)")
    add("--train", action=argparse.BooleanOptionalAction, default=True, help="measure the training step")
    add("--flops", action=argparse.BooleanOptionalAction, default=True, help="count FLOPs with fvcore")
    add("--profile", action="store_true", help="also profile one run of each figure per module group")
    add("--top-ops", type=int, default=12, help="operators listed per profile in the JSON")
    add("--tolerance", type=float, default=0.05, help="resolved: both quartiles within this of the median")
    add("--workdir", help="folder for the checkpoints (default: a temporary one)")
    # fmt: on
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_argument_parser().parse_args(argv)
    # A handler of its own: mmcv's first get_logger raises the root logger's stream handlers to ERROR.
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
    settings = dict(sizes=[list(size) for size in args.sizes], train_size=list(args.train_size))
    settings.update(train_batch_size=len(TRAIN_OBJECTS), train_objects=list(TRAIN_OBJECTS))
    settings.update({k: getattr(args, k) for k in ("here_mask_format", "pairs", "train_pairs", "warmup")})
    settings.update(score_threshold=SCORE_THRESHOLD, tolerance=args.tolerance, seed=args.seed)
    settings.update(ratio="here / mmdet per pair; median, q1, q3 of the pairs", memory=MEMORY, flops=FLOPS)
    report = {"settings": settings, "machine": machine, "results": []}
    with tempfile.TemporaryDirectory(prefix="mmdet_side_by_side_") as temporary:
        workdir = args.workdir or temporary
        os.makedirs(workdir, exist_ok=True)
        measure = functools.partial(benchmark_detector, args=args, workdir=workdir)
        measure_each(args.detectors, measure, report, args.json, logger)
    print(format_table(report))
    return report


if __name__ == "__main__":
    sys.exit(main())
