#!/usr/bin/env python3
"""Speed and memory of the RSB detectors next to the same detectors on Detectron2's own ResNet-50.

For each detector the RSB model (timm ResNet-50 trunk) and its baseline (Detectron2's
torchvision-style ResNet-50 in the same FPN model, holding the same weights; see
``detectron2_baseline.py``) are built side by side, checked to give the same outputs, and
measured alternately, so that load from other processes touches both alike:

* inference latency at batch 1 and time per image at ``--batch-size`` (median of ``--iters``
  runs after ``--warmup``);
* training step time and peak training memory at ``--train-batch-size`` (2) images, AdamW as in
  the configs;
* with ``--deploy`` (default): the deployment forms of the RSB model, measured in the same
  alternation: the folded model (norm layers folded into the convolutions,
  ``rsb_backbone.export.to_deployment_form``) at batch 1 and ``--batch-size``, and that model
  exported to ONNX and run by ONNX Runtime (CPU; batch 1; as many threads as torch), both as
  ratios against the built-in model.

With ``--precision bfloat16`` (or ``float16``, CUDA) the run measures instead the RSB model in
float32 and in that precision under ``torch.autocast`` (``train.amp.precision`` of train_net.py),
alternately: batch-1 latency, training step time and peak training memory, with the ratios
low precision / float32 (target: at most 0.6 for inference and 0.7 for training on a CPU with bf16).

Every figure is "lower is better" and comes with the ratio RSB / built-in (target: at most 1.00).
Timed figures alternate the models sample by sample; their ratio is the median of the per-pair
ratios with its interquartile range (``paired_ratios.py``), so that load from other processes,
which slows both samples of a pair, cancels out. The deployment forms also get their ratio to the
RSB PyTorch model they come from. fvcore's FLOP count of one inference (deterministic) stands next
to the timings; the two models' counts are equal.
Peak memory is the model's weights plus everything a training step allocates at its peak: on
CUDA from the caching allocator (``torch.cuda.max_memory_allocated``, the other model's weights
left out), on the CPU the growth of the resident set during the steps (``VmHWM`` after resetting
it through ``/proc/self/clear_refs``) plus the weights.

Examples::

    # CPU (the first table of docs/benchmark.md; 31 minutes on 2 CPU cores), one detector small:
    python3 projects/benchmark/benchmark.py --device cpu --image-size 320 --iters 3 --warmup 1
    python3 projects/benchmark/benchmark.py --device cpu --detectors faster_rcnn --image-size 128

    # A trained model too (a train_net.py output), on a real image instead of random pixels:
    python3 projects/benchmark/benchmark.py --device cpu --image-size 512 --no-train --no-throughput \
        --trained faster_rcnn_r18_quick output/shapes/faster_rcnn_r18_quick/config.yaml \
        output/shapes/faster_rcnn_r18_quick/model_final.pth --image datasets/shapes/val/000001.jpg

    # CUDA at the COCO training scale, mixed precision and channels_last too:
    python3 projects/benchmark/benchmark.py --device cuda --image-size 800x1333 --json out.json
    python3 projects/benchmark/benchmark.py --device cuda --amp --channels-last

    # bfloat16 against float32 (the RSB models only), at 512 and at the COCO scale:
    python3 projects/benchmark/benchmark.py --device cpu --precision bfloat16 --image-size 512
    python3 projects/benchmark/benchmark.py --device cuda --precision float16 --image-size 800x1333
"""

import argparse
import copy
import gc
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from rsb_backbone import model_zoo
from rsb_backbone.config import head_config, resolve_device, set_score_threshold
from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights
from rsb_backbone.utils.mixed_precision import PRECISIONS, autocast as autocast_in, resolve_precision

from detectron2_baseline import baseline_model_config, copy_rsb_weights, max_output_difference
from measuring import (
    cpu_peak_memory_supported,
    machine_description,
    parse_image_size,
    read_memory_mib,
    release_cpu_memory,
    reset_peak_memory,
    tensor_bytes,
)
from paired_ratios import format_ratio, paired_ratio_statistics

logger = logging.getLogger("rsb_detectron2.benchmark")

DETECTORS = {
    "faster_rcnn": "configs/COCO/faster_rcnn_rsb_r50_fpn_1x.py",
    "mask_rcnn": "configs/COCO/mask_rcnn_rsb_r50_fpn_1x.py",
    "cascade_mask_rcnn": "configs/COCO/cascade_mask_rcnn_rsb_r50_fpn_1x.py",
    "retinanet": "configs/COCO/retinanet_rsb_r50_fpn_1x.py",
}
# mmdetection's "Mem (GB)" for these RSB-A1 detectors (2 images per GPU, fp32, 1333x800):
# torch.cuda.max_memory_allocated() in MiB / 1024, i.e. GiB.
MMDET_MEMORY_GIB = {"faster_rcnn": 3.9, "mask_rcnn": 4.5, "cascade_mask_rcnn": 6.2, "retinanet": 3.8}
# COCO train2017: 860,001 instances / 118,287 images = 7.3 per image.
INSTANCES_PER_IMAGE = 7
# Random weights score every class about 1/81, under the configs' 0.05: with threshold 0 every
# image keeps the full 100 detections, so NMS and the mask head do their largest share of work.
DEFAULT_SCORE_THRESH = 0.0
# The first step creates AdamW's state; the second runs with it, like every later step.
MEMORY_STEPS = 2
VARIANTS = ("rsb", "builtin")
# Deployment forms of the RSB model (--deploy): each compared with the built-in model.
DEPLOY_VARIANTS = ("rsb_folded", "onnx")
# (JSON key, table heading, variant, measurement) of the deployment figures.
DEPLOY_METRICS = (
    ("latency_b1_ms_folded", "latency b1 folded", "rsb_folded", "latency_b1_ms"),
    ("latency_b1_ms_onnx", "latency b1 ONNX Runtime", "onnx", "latency_b1_ms"),
    ("time_per_image_bN_ms_folded", "time/img bN folded", "rsb_folded", "time_per_image_bN_ms"),
)
# (JSON key, table heading, unit) of each figure; all are lower-is-better.
METRICS = (
    ("latency_b1_ms", "latency b1", "ms"),
    ("time_per_image_bN_ms", "time/img bN", "ms"),
    ("train_step_ms", "train step", "ms"),
    ("train_peak_mem_mib", "train peak mem", "MiB"),
)
MIB = 2**20

# What docs/benchmark.md says the figures show, checked by the exit code (--no-check: figures only):
# - the RSB model and its built-in twin hold the same weights, so their detections are identical;
# - "The RSB model itself runs as fast as the built-in twin (0.97-1.03)", and its peak training
#   memory is within the resident-set method's resolution of the twin's (about 2 %): a time ratio
#   RSB / built-in fails only when its whole interquartile range lies above SAME_NETWORK_LIMIT (the
#   run resolved a slower RSB model), a memory ratio when it is above that limit;
# - --precision: the goals of the mixed-precision table, low precision / float32 at most 0.6 for
#   inference and 0.7 for training, failed likewise only when the whole IQR lies above them.
SAME_NETWORK_LIMIT = 1.05
PRECISION_GOALS = {"latency_b1_ms": 0.6, "train_step_ms": 0.7}


# ---- inputs ------------------------------------------------------------------------------------
def make_batch(
    num_images: int,
    size: Tuple[int, int],
    device: torch.device,
    *,
    seed: int,
    num_classes: int = 0,
    with_masks: bool = False,
    image: Optional[torch.Tensor] = None,
) -> List[Dict]:
    """Detectron2 model inputs: random uint8 images (or ``image``, a (3, H, W) uint8 tensor of
    ``size``, for every item), and ground truth when ``num_classes`` > 0.

    Ground truth is ``INSTANCES_PER_IMAGE`` boxes of 5-50% of the image side per image, with
    filled-box bit masks if ``with_masks``. Everything is created on ``device`` so that the
    measurements cover the model, not host-to-device copies.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    batch = []
    for _ in range(num_images):
        pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        item = {"image": (pixels if image is None else image).to(device), "height": height, "width": width}
        if num_classes:
            n = INSTANCES_PER_IMAGE
            wh = (0.05 + 0.45 * torch.rand(n, 2, generator=generator)) * torch.tensor([width, height])
            xy = torch.rand(n, 2, generator=generator) * (torch.tensor([width, height]) - wh)
            boxes = torch.cat([xy, xy + wh], dim=1)
            instances = Instances((height, width))
            instances.gt_boxes = Boxes(boxes)
            instances.gt_classes = torch.randint(0, num_classes, (n,), generator=generator)
            if with_masks:
                masks = torch.zeros(n, height, width, dtype=torch.bool)
                for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().int().tolist()):
                    mask[y0:y1, x0:x1] = True
                instances.gt_masks = BitMasks(masks)
            item["instances"] = instances.to(device)
        batch.append(item)
    return batch


def load_image(path: str, size: Tuple[int, int], input_format: str) -> torch.Tensor:
    """The image file at ``path`` resized to ``size`` (height, width): a (3, H, W) uint8 tensor in
    the model's channel order."""
    import cv2

    image = cv2.imread(path)
    if image is None:
        raise ValueError(f"--image {path}: not a readable image file")
    image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if input_format == "RGB":
        image = image[:, :, ::-1]
    return torch.as_tensor(image.transpose(2, 0, 1).copy())


# ---- models ------------------------------------------------------------------------------------
def load_detector_config(detector: str, config_file: Optional[str] = None):
    """The RSB LazyConfig of ``detector`` (or the file ``config_file``, e.g. a run's saved
    config.yaml), with a randomly initialized trunk (no download)."""
    if config_file is None:
        cfg = model_zoo.get_config(os.path.relpath(DETECTORS[detector], "configs"))
    else:
        cfg = LazyConfig.load(config_file)
    skip_pretrained_weights(cfg.model)
    return cfg


def build_pair(cfg, device: torch.device, *, channels_last: bool, score_thresh: float) -> Dict[str, torch.nn.Module]:
    """The RSB detector of ``cfg`` and its Detectron2-ResNet baseline with the same weights."""
    models = {"rsb": instantiate(cfg.model)}
    models["builtin"] = instantiate(baseline_model_config(cfg.model))
    copy_rsb_weights(models["rsb"], models["builtin"])
    for model in models.values():
        set_score_threshold(model, score_thresh)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    return models


def build_deployment_forms(models: Dict[str, torch.nn.Module], image: Dict, device: torch.device, threads: int) -> Dict:
    """The folded RSB model and, on the CPU, its ONNX Runtime session (traced on ``image``).

    Returns:
        name -> callable taking a list of model inputs (``rsb_folded`` a module, ``onnx`` a
        function of one image).
    """
    from rsb_backbone.export import to_deployment_form
    from rsb_backbone.export.exporter import trace_detector

    folded = to_deployment_form(copy.deepcopy(models["rsb"]).to(device))
    forms = {"rsb_folded": folded}
    if device.type != "cpu":
        return forms
    import onnxruntime

    sample = (image["image"].float(), torch.tensor(image["height"]), torch.tensor(image["width"]))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        trace_detector(copy.deepcopy(folded), sample, path, "onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run_onnx(images: List[Dict]) -> None:
        for item in images:
            feeds = {
                "image": item["image"].float().numpy(),
                "height": torch.tensor(item["height"]).numpy(),
                "width": torch.tensor(item["width"]).numpy(),
            }
            session.run(None, feeds)

    forms["onnx"] = run_onnx
    return forms


# ---- running -----------------------------------------------------------------------------------
def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype:
    """``--amp``'s precision: float16 on CUDA (as Detectron2's AMPTrainer), bfloat16 on the CPU."""
    if not enabled:
        return torch.float32
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """Mixed precision as ``--amp`` asks (:func:`amp_dtype`)."""
    return autocast_in(str(device), amp_dtype(device, enabled))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainStep:
    """One Detectron2 training iteration (SimpleTrainer/AMPTrainer order) with the config's optimizer."""

    def __init__(self, cfg, model: torch.nn.Module, device: torch.device, *, dtype: torch.dtype = torch.float32):
        cfg.optimizer.params.model = model
        self.optimizer = instantiate(cfg.optimizer)
        cfg.optimizer.params.model = None
        self.model = model
        self.device = device
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # as train_net.py

    def __call__(self, batch: List[Dict]) -> None:
        with EventStorage(), autocast_in(str(self.device), self.dtype):  # the models log to an EventStorage
            loss_dict = self.model(batch)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        self.scaler.scale(losses).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def time_alternately(
    functions: Dict[str, Callable[[], None]], *, warmup: int, iters: int, device: torch.device
) -> Dict[str, List[float]]:
    """Run each function ``warmup`` times, then ``iters`` timed times, alternating between them.

    The order flips every round (A B, B A, ...) so that neither side is always first.

    Returns:
        seconds of each timed run, per function name.
    """
    names = list(functions)
    samples = {name: [] for name in names}
    for round_index in range(warmup + iters):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            functions[name]()
            synchronize(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def peak_training_memory(
    step: Callable[[], None], model: torch.nn.Module, others: Sequence[torch.nn.Module], device: torch.device
) -> Optional[float]:
    """Peak memory in MiB of ``MEMORY_STEPS`` calls of ``step``: ``model``'s weights included.

    CUDA: the caching allocator's peak minus the weights of ``others`` (the other model, also on
    the device). CPU: the resident set's growth during the steps plus ``model``'s weights; None
    where the high-water mark cannot be reset.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(MEMORY_STEPS):
            step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - sum(tensor_bytes(m) for m in others)
        return peak / MIB
    if not cpu_peak_memory_supported():
        return None
    release_cpu_memory()
    reset_peak_memory()
    before_mib = read_memory_mib("VmRSS")
    for _ in range(MEMORY_STEPS):
        step()
    return read_memory_mib("VmHWM") - before_mib + tensor_bytes(model) / MIB


def _metric(values: Dict[str, Optional[float]]) -> Dict:
    """One figure of both models and their ratio RSB / built-in (None where one is missing)."""
    rsb, builtin = values["rsb"], values["builtin"]
    ratio = rsb / builtin if rsb is not None and builtin else None
    return {"rsb": rsb, "builtin": builtin, "ratio": ratio}


def paired_metric(samples: Dict[str, List[float]], variant: str, reference: str) -> Dict:
    """Medians of two alternately timed models and the median and IQR of their per-pair ratios.

    Args:
        samples: model name -> timed samples, sample i of every model from the same round.
        variant: the numerator (e.g. "rsb", "onnx").
        reference: the denominator (e.g. "builtin", "rsb").

    Returns:
        ``{variant: median, reference: median, "ratio": median per-pair ratio, "ratio_q1",
        "ratio_q3"}``.
    """
    stats = paired_ratio_statistics(samples[variant], samples[reference])
    return {
        variant: statistics.median(samples[variant]),
        reference: statistics.median(samples[reference]),
        "ratio": stats["median"],
        "ratio_q1": stats["q1"],
        "ratio_q3": stats["q3"],
    }


def flop_counts(models: Dict[str, torch.nn.Module], image: Dict) -> Dict[str, Optional[float]]:
    """fvcore's count of one inference of each model on ``image``, in GFLOPs (Detectron2's
    ``FlopCountAnalysis``: fvcore with Detectron2's input adapter); None where tracing fails."""
    from detectron2.utils.analysis import FlopCountAnalysis

    counts = {}
    for name, model in models.items():
        try:
            with torch.no_grad():
                analysis = FlopCountAnalysis(model.eval(), [image])
                analysis.unsupported_ops_warnings(False)
                analysis.uncalled_modules_warnings(False)
                counts[name] = analysis.total() / 1e9
        except Exception as error:  # noqa: BLE001 - a tracing failure is reported, not fatal
            logger.warning("fvcore could not count the FLOPs of the %s model: %s", name, error)
            counts[name] = None
    return counts


def check_same_outputs(models: Dict[str, torch.nn.Module], images: List[Dict], *, amp: bool, device) -> Dict:
    """Run both models on ``images`` in eval mode; same weights must give the same detections."""
    with torch.no_grad(), autocast(device, amp):
        outputs = {name: model.eval()(images) for name, model in models.items()}
    difference = max_output_difference(outputs["rsb"], outputs["builtin"])
    return {
        "outputs_identical": difference == 0.0,
        # JSON has no infinity: None stands for "different numbers of detections or fields".
        "max_output_difference": difference if math.isfinite(difference) else None,
        "detections_per_image": len(outputs["rsb"][0]["instances"]),
    }


def time_inference(models: Dict[str, Callable], images: List[Dict], args, device) -> Dict[str, List[float]]:
    """Milliseconds per image of each timed inference run on ``images``, per model (or runner)."""

    def inference(model):
        def run():
            with torch.no_grad(), autocast(device, args.amp):
                model(images)

        return run

    for model in models.values():
        if isinstance(model, torch.nn.Module):
            model.eval()
    samples = time_alternately(
        {name: inference(model) for name, model in models.items()},
        warmup=args.warmup, iters=args.iters, device=device,
    )
    return {name: [1000 * s / len(images) for s in values] for name, values in samples.items()}


def measure_training(
    cfg, models: Dict[str, torch.nn.Module], args, device, dtypes: Optional[Dict[str, torch.dtype]] = None
) -> Tuple[Dict, Dict]:
    """Training step times (ms, per name) and peak training memory (MiB, per name).

    Args:
        models: name -> model (several names may share one model).
        dtypes: name -> precision of its training step; by default ``--amp``'s for every name.
    """
    dtypes = dtypes or {name: amp_dtype(device, args.amp) for name in models}
    mask_on = any(getattr(m, "mask_on", False) for m in next(iter(models.values())).modules())
    batch = make_batch(
        args.train_batch_size, args.image_size, device, seed=args.seed + 2,
        num_classes=head_config(cfg).num_classes, with_masks=mask_on,
    )

    def training(step):
        def run():
            torch.manual_seed(args.seed)  # the same RPN/RoI sampling for both models
            step(batch)

        return run

    for model in models.values():
        model.train()
    steps = {name: TrainStep(cfg, model, device, dtype=dtypes[name]) for name, model in models.items()}
    samples = time_alternately(
        {name: training(step) for name, step in steps.items()},
        warmup=args.warmup, iters=args.iters, device=device,
    )
    step_ms = {name: [1000 * s for s in values] for name, values in samples.items()}

    # Memory: one model at a time, a fresh optimizer, no gradients left from the timing runs.
    del steps
    peaks = {}
    for name, model in models.items():
        for m in models.values():
            m.zero_grad(set_to_none=True)
        others = [m for other, m in models.items() if m is not model]
        peaks[name] = peak_training_memory(
            training(TrainStep(cfg, model, device, dtype=dtypes[name])), model, others, device
        )
    return step_ms, peaks


def benchmark_precision(detector: str, args, device: torch.device) -> Dict:
    """The RSB detector in float32 and in ``args.precision``, alternately: batch-1 latency, training
    step and peak training memory; returns its JSON record (ratios: low precision / float32)."""
    cfg = load_detector_config(detector)
    model = instantiate(cfg.model)
    set_score_threshold(model, args.score_thresh)
    model.to(device)
    low = args.precision
    dtypes = {"float32": torch.float32, low: PRECISIONS[low]}
    single = make_batch(1, args.image_size, device, seed=args.seed)

    def inference(dtype):
        def run():
            with torch.no_grad(), autocast_in(str(device), dtype):
                model(single)

        return run

    model.eval()
    latency = time_alternately(
        {name: inference(dtype) for name, dtype in dtypes.items()}, warmup=args.warmup, iters=args.iters, device=device
    )
    samples_ms = {"latency_b1_ms": {name: [1000 * s for s in values] for name, values in latency.items()}}
    peaks = None
    if args.train:
        samples_ms["train_step_ms"], peaks = measure_training(cfg, {name: model for name in dtypes}, args, device, dtypes)
    metrics = {key: paired_metric(per_precision, low, "float32") for key, per_precision in samples_ms.items()}
    if peaks is not None:
        fp32_peak, low_peak = peaks["float32"], peaks[low]
        ratio = low_peak / fp32_peak if low_peak is not None and fp32_peak else None
        metrics["train_peak_mem_mib"] = {"float32": fp32_peak, low: low_peak, "ratio": ratio}
    return {"detector": detector, "config": DETECTORS[detector], "metrics": metrics, "samples_ms": samples_ms}


def benchmark_detector(
    detector: str, args, device: torch.device, trained: Optional[Tuple[str, str]] = None
) -> Dict:
    """All measurements of one detector, RSB and built-in; returns its JSON record.

    Args:
        detector: a key of ``DETECTORS``, or a trained model's name.
        args: the parsed command line.
        device: where to run.
        trained: ``(config file, checkpoint)`` of a trained model (``--trained``); None: the
            config of ``DETECTORS[detector]`` with random weights.
    """
    if args.precision:
        return benchmark_precision(detector, args, device)
    cfg = load_detector_config(detector, trained[0] if trained else None)
    if trained:
        # The trained weights in the RSB model: build_pair then copies them into its twin.
        cfg.model.backbone.bottom_up.weights = None
    models = build_pair(cfg, device, channels_last=args.channels_last, score_thresh=args.score_thresh)
    if trained:
        DetectionCheckpointer(models["rsb"]).load(trained[1])
        copy_rsb_weights(models["rsb"], models["builtin"])
    record = {"detector": detector, "config": trained[0] if trained else DETECTORS[detector]}
    if trained:
        record["checkpoint"] = trained[1]
    image = load_image(args.image, args.image_size, models["rsb"].input_format) if args.image else None
    single = make_batch(1, args.image_size, device, seed=args.seed, image=image)
    record.update(check_same_outputs(models, single, amp=args.amp, device=device))
    forms = build_deployment_forms(models, single[0], device, torch.get_num_threads()) if args.deploy else {}
    batched = {name: m for name, m in forms.items() if isinstance(m, torch.nn.Module)}  # ONNX: batch 1
    samples_ms = {"latency_b1_ms": time_inference({**models, **forms}, single, args, device)}
    if args.throughput:
        samples_ms["time_per_image_bN_ms"] = time_inference(
            {**models, **batched}, make_batch(args.batch_size, args.image_size, device, seed=args.seed + 1), args, device
        )
    peaks = None
    if args.train:
        samples_ms["train_step_ms"], peaks = measure_training(cfg, models, args, device)

    metrics = {key: paired_metric(per_model, "rsb", "builtin") for key, per_model in samples_ms.items()}
    for key, _, variant, source in DEPLOY_METRICS:
        if variant in samples_ms.get(source, {}):
            metrics[key] = paired_metric(samples_ms[source], variant, "builtin")
            metrics[key]["ratio_to_rsb"] = paired_metric(samples_ms[source], variant, "rsb")
    for key, source in (("images_per_s_b1", "latency_b1_ms"), ("images_per_s_bN", "time_per_image_bN_ms")):
        if source in metrics:
            metrics[key] = _metric({name: 1000 / metrics[source][name] for name in VARIANTS})
    if peaks is not None:
        metrics["train_peak_mem_mib"] = _metric(peaks)
    record["gflops"] = flop_counts(models, single[0]) if args.flops else None
    for key, metric in metrics.items():
        for name, m in (("", metric), (" to RSB", metric.get("ratio_to_rsb"))):
            if m and m.get("ratio_q1") is not None and max(m["ratio_q3"] - m["ratio"], m["ratio"] - m["ratio_q1"]) > 0.05:
                logger.info("%s %s%s: ratio %s is not resolved to +-0.05; more --iters narrow it",
                            detector, key, name, _fmt_ratio(m))
    record["metrics"] = metrics
    record["samples_ms"] = samples_ms
    return record


# ---- reporting ---------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ratio(metric: Dict) -> str:
    """A metric's ratio: ``median (q1-q3)`` of its per-pair ratios where it was timed in pairs."""
    if metric.get("ratio_q1") is None:
        return _fmt(metric["ratio"], 2)
    return format_ratio({"median": metric["ratio"], "q1": metric["ratio_q1"], "q3": metric["ratio_q3"]})


def _run_description(report: Dict):
    """``(settings, machine, where it ran, (height, width))`` of a report, for the table headers."""
    settings, machine = report["settings"], report["machine"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['torch_threads']} threads"
    return settings, machine, where, tuple(settings["image_size"])


def format_precision_table(report: Dict) -> str:
    """The markdown table of a ``--precision`` run: each figure in float32 and in the precision."""
    settings, machine, where, (height, width) = _run_description(report)
    low = settings["precision"]
    lines = [
        f"Device: {settings['device']} ({where}); torch {machine['torch']}; images {height}x{width}; batch 1 "
        f"for inference, {settings['train_batch_size']} for training; the RSB model in float32 and in {low} "
        f"(torch.autocast), median of {settings['iters']} runs after {settings['warmup']} warm-up, the "
        f"precisions alternated run by run. Ratio = {low} / float32, lower is better: for times the median "
        f"of the per-pair ratios with their interquartile range in brackets.",
        "",
    ]
    measured = {key for record in report["results"] for key in record["metrics"]}
    metrics = [m for m in METRICS if m[0] in measured]
    header = ["detector"]
    for _, title, unit in metrics:
        header += [f"{title} float32 ({unit})", f"{title} {low} ({unit})", f"{title} ratio"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for record in report["results"]:
        row = [record["detector"]]
        for key, _, _ in metrics:
            metric = record["metrics"].get(key)
            row += ["-"] * 3 if metric is None else [_fmt(metric["float32"]), _fmt(metric[low]), _fmt_ratio(metric)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_table(report: Dict) -> str:
    """The side-by-side markdown table (and, on CUDA, the figures to compare with mmdetection); a
    ``--precision`` run's table of its two precisions."""
    settings = report["settings"]
    if settings.get("precision"):
        return format_precision_table(report)
    _, machine, where, (height, width) = _run_description(report)
    lines = [
        f"Device: {settings['device']} ({where}); torch {machine['torch']}; images {height}x{width}; "
        f"batch 1{' and ' + str(settings['batch_size']) if settings.get('throughput', True) else ''} for inference"
        f"{', ' + str(settings['train_batch_size']) + ' for training' if settings.get('train', True) else ''}; "
        f"amp={settings['amp']}, channels_last={settings['channels_last']}; "
        f"median of {settings['iters']} runs after {settings['warmup']} warm-up, models alternated run by run.",
        "Built-in = Detectron2's ResNet of the same depth (BasicStem, BottleneckBlock with the stride "
        "in the 3x3 or BasicBlock) in the same model with the same weights; its res3-res5 BatchNorm kept in eval mode with trainable "
        "affine and stem + res2 frozen (FrozenBN), as in the RSB trunk. Ratio = RSB / built-in, "
        "lower is better (target <= 1.00): for times the median of the per-pair ratios with their "
        "interquartile range in brackets.",
        "",
    ]
    measured = {key for record in report["results"] for key in record["metrics"]}
    metrics = [m for m in METRICS if m[0] in measured]  # the columns of the figures this run measured
    deploy_metrics = [m for m in DEPLOY_METRICS if m[0] in measured]
    header = ["detector"]
    for _, title, unit in metrics:
        title = title.replace("bN", f"b{settings['batch_size']}")
        header += [f"{title} RSB ({unit})", f"{title} built-in ({unit})", f"{title} ratio"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for record in report["results"]:
        row = [record["detector"]]
        for key, _, _ in metrics:
            metric = record["metrics"].get(key)
            if metric is None:
                row += ["-", "-", "-"]
            else:
                row += [_fmt(metric["rsb"]), _fmt(metric["builtin"]), _fmt_ratio(metric)]
        lines.append("| " + " | ".join(row) + " |")
    flops = [(r["detector"], r.get("gflops")) for r in report["results"] if r.get("gflops")]
    if flops:
        lines += ["", "fvcore FLOPs of one inference (GFLOPs): " + "; ".join(
            f"{detector} RSB {_fmt(g['rsb'], 2)}, built-in {_fmt(g['builtin'], 2)}" for detector, g in flops
        ) + "."]

    if deploy_metrics:
        lines += [
            "",
            "Deployment forms of the RSB model: folded = norm layers folded into the convolutions; "
            "ONNX Runtime = the folded model exported to ONNX (CPU, batch 1). Ratios to the built-in "
            "model and to the RSB PyTorch model (unfolded), median (IQR) of the per-pair ratios.",
            "",
        ]
        header = ["detector"] + [
            f"{title.replace('bN', 'b' + str(settings['batch_size']))} {part}"
            for _, title, _, _ in deploy_metrics
            for part in ("(ms)", "/ built-in", "/ RSB PyTorch")
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for record in report["results"]:
            row = [record["detector"]]
            for key, _, variant, _ in deploy_metrics:
                metric = record["metrics"].get(key)
                if metric is None:
                    row += ["-", "-", "-"]
                else:
                    to_rsb = metric.get("ratio_to_rsb")
                    row += [_fmt(metric[variant]), _fmt_ratio(metric), _fmt_ratio(to_rsb) if to_rsb else "-"]
            lines.append("| " + " | ".join(row) + " |")

    if settings["device"] == "cuda":
        lines += [
            "",
            "| detector | inference img/s b1 RSB | built-in | inference img/s "
            f"b{settings['batch_size']} RSB | built-in | train mem RSB (GiB) | built-in | mmdet Mem (GB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for record in report["results"]:
            m = record["metrics"]
            bN = m.get("images_per_s_bN") or {"rsb": None, "builtin": None}
            memory = m.get("train_peak_mem_mib") or {"rsb": None, "builtin": None}
            gib = {name: None if memory[name] is None else memory[name] / 1024 for name in VARIANTS}
            lines.append(
                f"| {record['detector']} | {_fmt(m['images_per_s_b1']['rsb'])} | "
                f"{_fmt(m['images_per_s_b1']['builtin'])} | {_fmt(bN['rsb'])} | "
                f"{_fmt(bN['builtin'])} | {_fmt(gib['rsb'], 2)} | "
                f"{_fmt(gib['builtin'], 2)} | {MMDET_MEMORY_GIB[record['detector']]} |"
            )
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------
def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--detectors", nargs="*", choices=list(DETECTORS), default=list(DETECTORS), metavar="NAME",
        help=f"which detectors to measure with random weights (default: all of {', '.join(DETECTORS)}; "
        "none: only the --trained models)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default=None,
        help="default: cuda when available, else cpu",
    )
    parser.add_argument(
        "--image-size", type=parse_image_size, default=None, metavar="N|HxW",
        help="image size, square N or HxW (default: 800x1333 on CUDA, the COCO training scale; "
        "320 on the CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per inference batch for throughput")
    parser.add_argument("--train-batch-size", type=int, default=2, help="images per training step (the seed: 2 per GPU)")
    parser.add_argument("--iters", type=int, default=10, help="timed runs per figure (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    parser.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    parser.add_argument(
        "--precision", choices=["bfloat16", "float16"], default=None,
        help="measure the RSB models in float32 and in this precision (torch.autocast) instead of "
        "against the built-in models: latency b1, training step and memory, and their ratios",
    )
    parser.add_argument("--channels-last", action="store_true", help="models in channels_last memory format")
    parser.add_argument(
        "--train", action=argparse.BooleanOptionalAction, default=True,
        help="measure training step time and peak memory (default: yes)",
    )
    parser.add_argument(
        "--throughput", action=argparse.BooleanOptionalAction, default=True,
        help="also time inference at --batch-size images per batch (default: yes)",
    )
    parser.add_argument(
        "--deploy", action=argparse.BooleanOptionalAction, default=True,
        help="also time the folded RSB model and (CPU) its ONNX Runtime export (default: yes)",
    )
    parser.add_argument(
        "--flops", action=argparse.BooleanOptionalAction, default=True,
        help="count each model's inference FLOPs with fvcore (default: yes)",
    )
    parser.add_argument(
        "--score-thresh", type=float, default=DEFAULT_SCORE_THRESH,
        help="test-time score threshold; 0 keeps 100 detections per image with random weights",
    )
    parser.add_argument(
        "--trained", nargs=3, action="append", default=[], metavar=("NAME", "CONFIG", "CHECKPOINT"),
        help="also measure a trained model (e.g. a train_net.py run's config.yaml and model_final.pth) "
        "as a row named NAME; may be repeated. Random weights hide work that trained models do "
        "(a trained RPN's scores, the boxes that survive NMS)",
    )
    parser.add_argument(
        "--image", default=None, metavar="FILE",
        help="measure on this image resized to --image-size instead of random pixels",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    parser.add_argument(
        "--no-check", action="store_true",
        help="exit 0 whatever the figures (default: exit 1, one line each, when outputs differ or a "
        "ratio is resolved above its limit; see SAME_NETWORK_LIMIT and PRECISION_GOALS)",
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    for name in ("batch_size", "train_batch_size", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)}: expected at least 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup}: expected 0 or more")
    if not args.detectors and not args.trained:
        parser.error("nothing to measure: name --detectors or give --trained")
    for path in [args.image] * bool(args.image) + [p for _, *paths in args.trained for p in paths]:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
    if args.precision and args.trained:
        parser.error("--precision measures the configs' detectors; --trained does not go with it")
    if args.precision and args.amp:
        parser.error("--precision compares float32 with that precision; --amp does not go with it")
    if args.precision:
        try:
            resolve_precision(args.precision, args.device, key="--precision")
        except ValueError as e:
            parser.error(str(e))


def run(args, on_result: Optional[Callable[[Dict], None]] = None) -> Dict:
    """Measure every detector in ``args.detectors``; returns the report (settings, machine, results).

    Args:
        args: the parsed command line.
        on_result: called with the report so far after each detector (to save partial results).
    """
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "settings": {
            "device": args.device,
            "image_size": list(args.image_size),
            "batch_size": args.batch_size,
            "train_batch_size": args.train_batch_size,
            "iters": args.iters,
            "warmup": args.warmup,
            "amp": args.amp,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "train": args.train,
            "deploy": args.deploy,
            "throughput": args.throughput,
            "ratios": "timed figures: median and IQR of the per-pair ratios of alternating runs",
            "score_thresh": args.score_thresh,
            "image": args.image or "random pixels",
            "instances_per_image": INSTANCES_PER_IMAGE,
            "memory": "CUDA: torch.cuda.max_memory_allocated during the training steps minus the "
            "other model's weights" if args.device == "cuda" else
            "CPU: growth of VmHWM (reset via /proc/self/clear_refs) during the training steps "
            "plus the model's parameter and buffer bytes",
            "builtin_norm": "Detectron2 ResNet norm='BN' kept in eval mode (trainable affine), "
            "freeze_at=2: stem + res2 FrozenBN",
        },
        "machine": machine_description(("torch", "detectron2", "timm", "onnxruntime"), device),
        "results": [],
    }
    runs = [(detector, None) for detector in args.detectors]
    runs += [(name, (config, checkpoint)) for name, config, checkpoint in args.trained]
    for detector, trained in runs:
        logger.info("Measuring %s on %s", detector, device)
        start = time.perf_counter()
        record = benchmark_detector(detector, args, device, trained)
        logger.info("%s done in %.0f s", detector, time.perf_counter() - start)
        report["results"].append(record)
        if on_result is not None:
            on_result(report)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def failed_checks(report: Dict) -> List[str]:
    """One line per figure of ``report`` outside what the docs state (see ``SAME_NETWORK_LIMIT``,
    ``PRECISION_GOALS``): outputs that differ, a resolved slower or larger RSB model, a resolved
    miss of a precision goal.

    Args:
        report: what :func:`run` returns (and ``--json`` writes).
    """
    failures = []
    precision = report["settings"].get("precision")
    for record in report["results"]:
        name, metrics = record["detector"], record["metrics"]
        if precision:
            for key, goal in PRECISION_GOALS.items():
                metric = metrics.get(key)
                if metric and metric.get("ratio_q1") is not None and metric["ratio_q1"] > goal:
                    failures.append(
                        f"{name} {key}: {precision} / float32 = {_fmt_ratio(metric)}, above the goal {goal}"
                    )
            continue
        if not record.get("outputs_identical", True):
            failures.append(
                f"{name}: RSB and built-in outputs differ by up to {record['max_output_difference']} "
                f"(same weights: they must be identical)"
            )
        for key, _, _ in METRICS:
            metric = metrics.get(key)
            if not metric or metric.get("ratio") is None:
                continue
            lowest = metric.get("ratio_q1", metric["ratio"])  # memory: one ratio, no spread
            if lowest > SAME_NETWORK_LIMIT:
                failures.append(
                    f"{name} {key}: RSB / built-in = {_fmt_ratio(metric)}, above {SAME_NETWORK_LIMIT} "
                    f"for the same network"
                )
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device or "auto")
    except ValueError as e:
        parser.error(str(e))
    if args.image_size is None:
        args.image_size = (800, 1333) if args.device == "cuda" else (320, 320)
    _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def write_json(report: Dict) -> None:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)

    report = run(args, on_result=write_json if args.json else None)
    print(format_table(report))
    if args.json:
        write_json(report)
        logger.info("Results written to %s", args.json)
    failures = failed_checks(report)
    for line in failures:
        (logger.warning if args.no_check else logger.error)("benchmark.py: %s", line)
    return 1 if failures and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
