#!/usr/bin/env python3
"""Speed and memory of the RSB detectors next to the same detectors on Detectron2's own ResNet
(``detectron2_baseline.py``: the same network with the same weights), of the RSB model's deployment
forms (``--deploy``: folded, ONNX Runtime), or of float32 against ``--precision``. The figures, how
the comparison is kept fair and more commands: projects/benchmark/README.md; the measured tables:
docs/benchmark.md. Exit code 1 when a figure is outside what the docs state (``failed_checks``).

    python3 projects/benchmark/benchmark.py --device cpu --image-size 320 --iters 3 --warmup 1
    python3 projects/benchmark/benchmark.py --device cpu --detectors faster_rcnn --image-size 128 --iters 2
"""

import argparse
import copy
import logging
import math
import os
import statistics
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage

from rsb_backbone import model_zoo
from rsb_backbone.config import head_config, resolve_device, set_score_threshold
from rsb_backbone.export import to_deployment_form
from rsb_backbone.export.exporter import trace_detector
from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights
from rsb_backbone.utils.mixed_precision import PRECISIONS, autocast, resolve_precision

from detectron2_baseline import baseline_model_config, copy_rsb_weights, max_output_difference
from measuring import MIB, add_model_options, alternate, at_least, count_flops, cpu_peak_memory_supported
from measuring import exit_status, figure_table, format_ratio, machine_description, measure_each
from measuring import models_to_measure, paired_ratio_statistics, parse_image_size, peak_growth_mib
from measuring import read_image, script_parser, tensor_bytes, timed_ms

logger = logging.getLogger("rsb_detectron2.benchmark")

# mmdetection's "Mem (GB)" of the RSB-A1 detectors (2 images per GPU, fp32, 1333x800): GiB (MiB / 1024).
MMDET_MEMORY_GIB = {"faster_rcnn": 3.9, "mask_rcnn": 4.5, "cascade_mask_rcnn": 6.2, "retinanet": 3.8}
DETECTORS = {d: f"configs/COCO/{d}_rsb_r50_fpn_1x.py" for d in MMDET_MEMORY_GIB}
INSTANCES_PER_IMAGE = 7  # COCO train2017: 860,001 instances / 118,287 images = 7.3 per image
MEMORY_STEPS = 2  # the first step creates AdamW's state; the second runs with it, like every later step
# (JSON key, title, unit) of each figure of both models, all lower-is-better.
METRICS = (
    ("latency_b1_ms", "latency b1", "ms"),
    ("time_per_image_bN_ms", "time/img bN", "ms"),
    ("train_step_ms", "train step", "ms"),
    ("train_peak_mem_mib", "train peak mem", "MiB"),
)
# (JSON key, title, form, figure) of the deployment forms, against the built-in and the RSB model.
DEPLOY_METRICS = (
    ("latency_b1_ms_folded", "latency b1 folded", "rsb_folded", "latency_b1_ms"),
    ("latency_b1_ms_onnx", "latency b1 ONNX Runtime", "onnx", "latency_b1_ms"),
    ("time_per_image_bN_ms_folded", "time/img bN folded", "rsb_folded", "time_per_image_bN_ms"),
)
# What docs/benchmark.md says, checked by the exit code: the same weights give identical detections; the
# RSB model is as fast as its twin (a time ratio fails only when its whole IQR lies above the limit, a
# memory ratio when it is above: resident sets resolve ~2 %); --precision: its goals, checked alike.
SAME_NETWORK_LIMIT = 1.05
MEMORY_METHODS = (  # the JSON's description of the peak memory on the CPU, on CUDA
    "CPU: growth of VmHWM (reset via /proc/self/clear_refs) during the training steps plus the model's "
    "parameter and buffer bytes",
    "CUDA: torch.cuda.max_memory_allocated during the training steps minus the other model's weights",
)
PRECISION_GOALS = {"latency_b1_ms": 0.6, "train_step_ms": 0.7}
# The options the report repeats in its settings.
SETTINGS = "device batch_size train_batch_size iters warmup amp precision channels_last".split()
SETTINGS += "train deploy throughput score_thresh".split()


def make_batch(
    num_images: int, size: Tuple[int, int], device, *, seed: int, num_classes=0, with_masks=False, image=None
) -> List[Dict]:
    """Detectron2 model inputs on ``device``: random uint8 images (or ``image``, (3, H, W) uint8 of
    ``size``, for every item) and, with ``num_classes``, ``INSTANCES_PER_IMAGE`` boxes of 5-50 % of
    the image side per image (filled-box bit masks too, ``with_masks``)."""
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
            instances = Instances((height, width), gt_boxes=Boxes(torch.cat([xy, xy + wh], dim=1)))
            instances.gt_classes = torch.randint(0, num_classes, (n,), generator=generator)
            if with_masks:
                masks = torch.zeros(n, height, width, dtype=torch.bool)
                for mask, (x0, y0, x1, y1) in zip(masks, instances.gt_boxes.tensor.round().int().tolist()):
                    mask[y0:y1, x0:x1] = True
                instances.gt_masks = BitMasks(masks)
            item["instances"] = instances.to(device)
        batch.append(item)
    return batch


def load_image(path: str, size: Tuple[int, int], input_format: str) -> torch.Tensor:
    """The image file at ``path`` resized to ``size``: (3, H, W) uint8 in the model's channel order."""
    image = read_image(path, *size)
    return torch.as_tensor((image[:, :, ::-1] if input_format == "RGB" else image).transpose(2, 0, 1).copy())


def load_detector_config(detector: str, config_file: Optional[str] = None):
    """The RSB LazyConfig of ``detector`` (or the file ``config_file``, e.g. a run's saved
    config.yaml), with a randomly initialized trunk (no download)."""
    if config_file:
        cfg = LazyConfig.load(config_file)
    else:
        cfg = model_zoo.get_config(os.path.relpath(DETECTORS[detector], "configs"))
    skip_pretrained_weights(cfg.model)
    return cfg


def build_pair(cfg, device: torch.device, *, channels_last: bool, score_thresh: float) -> Dict:
    """The RSB detector of ``cfg`` and its Detectron2-ResNet twin with the same weights."""
    models = {"rsb": instantiate(cfg.model), "builtin": instantiate(baseline_model_config(cfg.model))}
    copy_rsb_weights(models["rsb"], models["builtin"])
    for model in models.values():
        set_score_threshold(model, score_thresh)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    return models


def build_deployment_forms(rsb: torch.nn.Module, image: Dict, device: torch.device) -> Dict[str, Callable]:
    """The folded RSB model and, on the CPU, its ONNX Runtime session (traced on ``image``, as many
    threads as torch): name -> a callable taking a list of model inputs."""
    forms = {"rsb_folded": to_deployment_form(copy.deepcopy(rsb).to(device))}
    if device.type != "cpu":
        return forms
    import onnxruntime

    sample = (image["image"].float(), torch.tensor(image["height"]), torch.tensor(image["width"]))
    with tempfile.TemporaryDirectory() as folder:
        trace_detector(copy.deepcopy(forms["rsb_folded"]), sample, os.path.join(folder, "model.onnx"), "onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"), options)

    def run_onnx(images: List[Dict]) -> None:
        for item in images:
            inputs = (item["image"].float(), torch.tensor(item["height"]), torch.tensor(item["width"]))
            session.run(None, {name: x.numpy() for name, x in zip(("image", "height", "width"), inputs)})

    return {**forms, "onnx": run_onnx}


def training_step(cfg, model: torch.nn.Module, batch: List[Dict], device, dtype, seed: int) -> Callable:
    """One Detectron2 training iteration of ``model`` on ``batch`` (SimpleTrainer/AMPTrainer order)
    with a new optimizer of ``cfg``, the torch seed set first: the same RPN/RoI sampling for each model."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    cfg.optimizer.params.model = None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # as train_net.py

    def step() -> None:
        torch.manual_seed(seed)
        with EventStorage(), autocast(str(device), dtype):  # the models log to an EventStorage
            losses = sum(model(batch).values())
        optimizer.zero_grad()
        scaler.scale(losses).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def peak_training_memory(step: Callable, model: torch.nn.Module, others: Sequence, device) -> Optional[float]:
    """Peak memory in MiB of ``MEMORY_STEPS`` calls of ``step``, ``model``'s weights included. CUDA:
    the caching allocator's peak less the weights of ``others`` (also on the device); CPU: the
    resident set's growth plus the weights, None where the high-water mark cannot be reset."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(MEMORY_STEPS):
            step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - sum(tensor_bytes(m) for m in others)) / MIB
    if not cpu_peak_memory_supported():
        return None
    return peak_growth_mib(lambda: [step() for _ in range(MEMORY_STEPS)]) + tensor_bytes(model) / MIB


def metric(values: Dict, variant: str, reference: str) -> Dict:
    """One figure of two models, ``{variant, reference, "ratio"}``: of samples alternately timed
    (lists), the medians and the median ``ratio`` of the per-pair ratios with ``ratio_q1`` and
    ``ratio_q3``; of single values, the values and their ratio (None where one is missing)."""
    a, b = values[variant], values[reference]
    if not isinstance(a, list):
        return {variant: a, reference: b, "ratio": a / b if a is not None and b else None}
    stats = paired_ratio_statistics(a, b)
    medians = {variant: statistics.median(a), reference: statistics.median(b)}
    return {**medians, "ratio": stats["median"], "ratio_q1": stats["q1"], "ratio_q3": stats["q3"]}


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA; nothing on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_inference(models: Dict[str, Callable], images: List[Dict], dtypes: Dict, args, device) -> Dict:
    """Milliseconds per image of each timed inference on ``images``, per model, alternately."""

    def inference(name: str) -> Callable:
        def run():
            with torch.no_grad(), autocast(str(device), dtypes[name]):
                models[name](images)

        return timed_ms(run, synchronizer(device))

    for model in models.values():
        if isinstance(model, torch.nn.Module):
            model.eval()
    samples = alternate({name: inference(name) for name in models}, rounds=args.iters, warmup=args.warmup)
    return {name: [ms / len(images) for ms in values] for name, values in samples.items()}


def measure_training(cfg, models: Dict, dtypes: Dict, args, device) -> Tuple[Dict, Dict]:
    """Training step times (ms) and peak training memory (MiB), per name (names may share a model)."""
    masks = any(getattr(m, "mask_on", False) for m in next(iter(models.values())).modules())
    classes, size = head_config(cfg).num_classes, args.image_size
    batch = make_batch(
        args.train_batch_size, size, device, seed=args.seed + 2, num_classes=classes, with_masks=masks
    )
    for model in models.values():
        model.train()
    steps = {
        n: timed_ms(training_step(cfg, m, batch, device, dtypes[n], args.seed), synchronizer(device))
        for n, m in models.items()
    }
    step_ms = alternate(steps, rounds=args.iters, warmup=args.warmup)
    del steps
    peaks = {}  # one model at a time, a fresh optimizer, no gradients left from the timing runs
    for name, model in models.items():
        for m in models.values():
            m.zero_grad(set_to_none=True)
        step = training_step(cfg, model, batch, device, dtypes[name], args.seed)
        others = [m for m in models.values() if m is not model]
        peaks[name] = peak_training_memory(step, model, others, device)
    return step_ms, peaks


def benchmark_detector(detector: str, trained: Optional[Tuple[str, str]], args, device: torch.device) -> Dict:
    """All measurements of one detector; returns its JSON record.

    Args:
        detector: a key of ``DETECTORS``, or a trained model's name.
        trained: ``(config file, checkpoint)`` of a ``--trained`` model; None: random weights.
    """
    cfg = load_detector_config(detector, trained[0] if trained else None)
    record = {"detector": detector, "config": trained[0] if trained else DETECTORS[detector]}
    forms = {}
    if args.precision:  # one RSB model, in float32 and in the low precision
        model = instantiate(cfg.model).to(device)
        set_score_threshold(model, args.score_thresh)
        variant, reference = args.precision, "float32"
        models = {reference: model, variant: model}
        dtypes = {reference: torch.float32, variant: PRECISIONS[variant]}
        single = make_batch(1, args.image_size, device, seed=args.seed)
    else:
        models = build_pair(cfg, device, channels_last=args.channels_last, score_thresh=args.score_thresh)
        if trained:  # the trained weights in the RSB model, then copied into its twin
            DetectionCheckpointer(models["rsb"]).load(trained[1])
            copy_rsb_weights(models["rsb"], models["builtin"])
            record["checkpoint"] = trained[1]
        variant, reference = "rsb", "builtin"
        dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if args.amp else torch.float32
        dtypes = dict.fromkeys(("rsb", "builtin", "rsb_folded", "onnx"), dtype)
        image = load_image(args.image, args.image_size, models["rsb"].input_format) if args.image else None
        single = make_batch(1, args.image_size, device, seed=args.seed, image=image)
        with torch.no_grad(), autocast(str(device), dtype):
            outputs = {name: model.eval()(single) for name, model in models.items()}
        difference = max_output_difference(outputs["rsb"], outputs["builtin"])
        record["outputs_identical"] = difference == 0.0
        finite = difference if math.isfinite(difference) else None  # None: other fields or counts
        record.update(max_output_difference=finite, detections_per_image=len(outputs["rsb"][0]["instances"]))
        forms = build_deployment_forms(models["rsb"], single[0], device) if args.deploy else {}
    samples = {"latency_b1_ms": time_inference({**models, **forms}, single, dtypes, args, device)}
    if args.throughput and not args.precision:
        batch = make_batch(args.batch_size, args.image_size, device, seed=args.seed + 1)
        batched = {**models, **{n: f for n, f in forms.items() if isinstance(f, torch.nn.Module)}}  # ONNX: b1
        samples["time_per_image_bN_ms"] = time_inference(batched, batch, dtypes, args, device)
    if args.train:
        samples["train_step_ms"], peaks = measure_training(cfg, models, dtypes, args, device)
    metrics = {key: metric(per_model, variant, reference) for key, per_model in samples.items()}
    if args.train:
        metrics["train_peak_mem_mib"] = metric(peaks, variant, reference)
    if not args.precision:
        for key, _, form, source in DEPLOY_METRICS:
            if form in samples.get(source, {}):
                metrics[key] = metric(samples[source], form, "builtin")
                metrics[key]["ratio_to_rsb"] = metric(samples[source], form, "rsb")
        record["gflops"] = None
        if args.flops:
            record["gflops"] = {
                n: count_flops(lambda: FlopCountAnalysis(m.eval(), single), logger, n)["gflops"]
                for n, m in models.items()
            }
    return {**record, "metrics": metrics, "samples_ms": samples}


def ratio_stats(metric: Dict, pairs: int):
    """A metric's ratio for :func:`figure_table`: paired statistics where timed in pairs, else the ratio."""
    if metric.get("ratio_q1") is None:
        return metric["ratio"]
    return {"median": metric["ratio"], "q1": metric["ratio_q1"], "q3": metric["ratio_q3"], "n": pairs}


def format_table(report: Dict) -> str:
    """The markdown tables of a report: each figure of the two models (RSB and built-in, or the two
    precisions) with its ratio, the FLOPs, the deployment forms' figures and, on CUDA, the training
    memory next to mmdetection's."""
    settings, machine, pairs = report["settings"], report["machine"], report["settings"]["iters"]
    precision, bN = settings.get("precision"), f"b{settings['batch_size']}"
    variant, reference = (precision, "float32") if precision else ("rsb", "builtin")
    rows, deploy_rows, memory = [], [], []
    for record in report["results"]:
        detector, metrics, flops = record["detector"], record["metrics"], record.get("gflops")
        for key, title, unit in METRICS:
            if key in metrics:
                m, title = metrics[key], f"{title} ({unit})".replace("bN", bN)
                rows.append([detector, title, m[variant], m[reference], ratio_stats(m, pairs)])
        if flops:
            m = metric(flops, "rsb", "builtin")
            rows.append([detector, "fvcore FLOPs of one inference (G)", m["rsb"], m["builtin"], m["ratio"]])
        for key, title, form, _ in DEPLOY_METRICS:
            title, to_builtin = title.replace("bN", bN), metrics.get(key) or {}
            for m, other in ((to_builtin, "builtin"), (to_builtin.get("ratio_to_rsb"), "rsb")):
                if m:
                    figure = f"{title} / {'built-in' if other == 'builtin' else 'RSB'} (ms)"
                    deploy_rows.append([detector, figure, m[form], m[other], ratio_stats(m, pairs)])
        peak = metrics.get("train_peak_mem_mib") or {}
        gib = " / ".join(f"{peak[n] / 1024:.2f}" if peak.get(n) else "n/a" for n in ("rsb", "builtin"))
        memory.append(f"{detector} {gib} GiB (mmdet {MMDET_MEMORY_GIB.get(detector, 'n/a')} GB)")
    columns = [precision, "float32"] if precision else ["RSB", "built-in"]
    where = machine.get("gpu") or f"{machine['cpu']}, {machine['torch_threads']} threads"
    size = "x".join(map(str, settings["image_size"]))
    throughput = settings.get("throughput", True) and not precision
    inference = f"batch 1{' and ' + str(settings['batch_size']) if throughput else ''}"
    training = f", {settings['train_batch_size']} for training" if settings.get("train", True) else ""
    compared = (
        f"the RSB model in float32 and in {precision} (torch.autocast)" if precision else "RSB and built-in"
    )
    lines = [
        f"Device: {settings['device']} ({where}); torch {machine['torch']}; images {size}; {inference} for "
        f"inference{training}; amp={settings['amp']}, channels_last={settings['channels_last']}; {compared}, "
        f"median of {settings['iters']} runs after {settings['warmup']} warm-up, alternated run by run. "
        "Lower is better; ratios of times: median (IQR) of the per-pair ratios.",
        "",
        figure_table(rows, columns, f"ratio {columns[0]} / {columns[1]}"),
    ]
    if deploy_rows:
        forms = "folded = norm layers folded into the convolutions; ONNX Runtime = it exported to ONNX"
        lines += ["", f"Deployment forms of the RSB model: {forms} (CPU, b1).", ""]
        lines.append(figure_table(deploy_rows, ["form", "reference"], "ratio form / reference"))
    if settings["device"] == "cuda" and not precision:
        lines += ["", "Training memory RSB / built-in against mmdetection's Mem: " + "; ".join(memory) + "."]
    return "\n".join(lines)


def build_argument_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_model_options(parser, DETECTORS)
    add, on_off = parser.add_argument, argparse.BooleanOptionalAction
    # fmt: off
    add("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    add("--image-size", type=parse_image_size, metavar="N|HxW",
        help="square N or HxW (default: 800x1333 on CUDA, the COCO training scale; 320 on the CPU)")
    add("--batch-size", type=at_least(1), default=4, help="images per inference batch for throughput (bN)")
    add("--train-batch-size", type=at_least(1), default=2, help="images per training step")
    add("--iters", type=at_least(1), default=10, help="timed runs per figure (the median is reported)")
    add("--warmup", type=at_least(0), default=2, help="untimed runs before them")
    add("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    add("--precision", choices=["bfloat16", "float16"],
        help="measure the RSB models in float32 and in this precision (torch.autocast) instead")
    add("--channels-last", action="store_true", help="models in channels_last memory format")
    for name, what in (("train", "training step time and peak memory"), ("throughput", "inference at bN"),
                       ("deploy", "the folded RSB model and (CPU) its ONNX Runtime export"),
                       ("flops", "each model's inference FLOPs with fvcore")):
        add(f"--{name}", action=on_off, default=True, help=f"measure {what} (default: yes)")
    add("--score-thresh", type=float, default=0.0,
        help="test-time score threshold; 0 keeps 100 detections per image with random weights")
    # fmt: on
    return parser


def failed_checks(report: Dict) -> List[str]:
    """One line per figure of ``report`` outside what the docs state (``SAME_NETWORK_LIMIT``,
    ``PRECISION_GOALS``): outputs that differ, a resolved slower or larger RSB model, a resolved
    miss of a precision goal.

    Args:
        report: what :func:`main` prints as tables and ``--json`` writes (settings, machine, results).
    """
    failures, precision = [], report["settings"].get("precision")
    limits = PRECISION_GOALS if precision else {key: SAME_NETWORK_LIMIT for key, _, _ in METRICS}
    for record in report["results"]:
        name, metrics = record["detector"], record["metrics"]
        if not record.get("outputs_identical", True):
            difference = f"differ by up to {record['max_output_difference']}"
            failures.append(
                f"{name}: RSB and built-in outputs {difference} (same weights: they must be identical)"
            )
        for key, limit in limits.items():
            metric = metrics.get(key) or {"ratio": None}
            lowest = metric.get("ratio_q1", metric["ratio"])  # memory: one ratio, no spread
            if lowest is not None and lowest > limit:
                ratio = f"{precision} / float32" if precision else "RSB / built-in"
                above = f"the goal {limit}" if precision else f"{limit} for the same network"
                shown = format_ratio(ratio_stats(metric, 0)) if "ratio_q1" in metric else f"{lowest:.2f}"
                failures.append(f"{name} {key}: {ratio} = {shown}, above {above}")
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device or "auto")
        if args.precision:
            resolve_precision(args.precision, args.device, key="--precision")
    except ValueError as e:
        parser.error(str(e))
    args.image_size = args.image_size or ((800, 1333) if args.device == "cuda" else (320, 320))
    runs = models_to_measure(parser, args)
    if args.precision and (args.trained or args.amp):
        other = "--trained" if args.trained else "--amp"
        parser.error(f"--precision compares float32 with that precision; {other} does not go with it")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {name: getattr(args, name) for name in SETTINGS}
    settings.update(
        image_size=list(args.image_size),
        ratios="timed figures: median and IQR of the per-pair ratios of alternating runs",
        image=args.image or "random pixels",
        instances_per_image=INSTANCES_PER_IMAGE,
        memory=MEMORY_METHODS[args.device == "cuda"],
        builtin_norm="Detectron2 ResNet norm='BN' kept in eval mode (trainable affine), freeze_at=2: "
        "stem + res2 FrozenBN",
    )
    machine = machine_description(("torch", "detectron2", "timm", "onnxruntime"), device)
    report = {"settings": settings, "machine": machine, "results": []}
    measure_each(runs, lambda run: benchmark_detector(*run, args, device), report, args.json, logger)
    print(format_table(report))
    return exit_status(failed_checks(report), check=args.check, logger=logger)


if __name__ == "__main__":
    sys.exit(main())
