#!/usr/bin/env python3
"""Time and peak memory of the mask detectors' four CPU forms (``FORMS``), each in a worker process of its
own, as the image grows. Docs: docs/benchmark.md, "Large images". Exit code 1 when a form misses the
target (``failed_checks``). About 25 minutes per detector on 2 CPU cores at the default sizes::

    python3 projects/benchmark/scale_benchmark.py --json projects/benchmark/results/cpu_scale.json
    python3 projects/benchmark/scale_benchmark.py --detectors mask_rcnn --sizes 640 2048 --iters 2
"""

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import LazyConfig, instantiate

from rsb_backbone.export import ExportedDetector, export_predictor
from rsb_backbone.inference import LazyConfigPredictor
from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights

from measuring import add_model_options, alternate, at_least, exit_status, format_ratio, machine_description
from measuring import markdown_table, measure_each, models_to_measure, paired_ratio_statistics, read_image
from measuring import read_memory_mib, reset_peak_memory, script_parser

logger = logging.getLogger("rsb_detectron2.scale_benchmark")

DETECTORS = {d: f"configs/COCO/{d}_rsb_r50_fpn_1x.py" for d in ("mask_rcnn", "cascade_mask_rcnn")}
FORMS = ("predictor", "folded", "torchscript", "onnx")  # LazyConfigPredictor; fuse=True; folded + exported
REFERENCE_FORM = "predictor"
TARGET_RATIO = 1.2
MEMORY = (
    "per sample: the worker's VmHWM after resetting it through /proc/self/clear_refs (weights and "
    "runtime included); per form: the largest of its samples"
)


def serve(form: str, config_file: str, checkpoint: str, export_dir: str, threads: int, connection) -> None:
    """A worker's loop (``threads``: of torch and ONNX Runtime): a first reply once ``form`` is built, then
    per image received, ``seconds``, ``peak_rss_mib`` (``VmHWM``, reset before the call), ``detections``."""
    torch.set_num_threads(threads)
    if form in ("predictor", "folded"):
        detector = LazyConfigPredictor(config_file, checkpoint, score_threshold=0.0, fuse=form == "folded")
    else:
        detector = ExportedDetector(os.path.join(export_dir, form), num_threads=threads)
    connection.send({"ready": True, "rss_mib": read_memory_mib("VmRSS")})
    while True:  # until the parent ends it
        image = connection.recv()
        reset_peak_memory()
        start = time.perf_counter()
        with torch.no_grad():
            instances = detector(image)["instances"]
        reply = {"seconds": time.perf_counter() - start, "peak_rss_mib": read_memory_mib("VmHWM")}
        reply.update(detections=len(instances), mask_shape=list(instances.pred_masks.shape))  # bool (N, H, W)
        del instances
        connection.send(reply)


def ask(form: str, process, connection, image: Optional[np.ndarray] = None) -> Dict:
    """The reply of the ``form`` worker (:func:`serve`) to ``image`` (None: its first reply)."""
    try:
        if image is not None:
            connection.send(image)
        return connection.recv()
    except (EOFError, OSError):  # it ended: its end of the pipe closed
        process.join(timeout=60)
        raise RuntimeError(f"the {form} worker ended (exit code {process.exitcode})") from None


def load_image(path: Optional[str], long_side: int, rng) -> np.ndarray:
    """A 4:3 (H, W, 3) uint8 BGR image with this long side: the file at ``path`` resized, or random pixels."""
    shape = (round(long_side * 3 / 4), long_side)  # (height, width)
    return read_image(path, *shape) if path else rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def measure_detector(detector: str, trained: Optional[Tuple[str, str]], args, workdir: str) -> Dict:
    """The JSON record of one alternating run of ``detector``'s forms over ``args.sizes``: a key of
    ``DETECTORS`` (random weights) or a ``--trained`` name, ``trained`` its (config file, checkpoint)."""
    if trained:
        config_file, checkpoint = trained
    else:
        config_file = os.path.join(os.path.dirname(__file__), "..", "..", DETECTORS[detector])
        cfg = LazyConfig.load(config_file)
        skip_pretrained_weights(cfg.model)
        torch.manual_seed(args.seed)
        checkpoint = os.path.join(workdir, f"{detector}.pth")
        torch.save({"model": instantiate(cfg.model).state_dict()}, checkpoint)
    export_dir = os.path.join(workdir, f"{detector}_export")
    sample = load_image(args.image, 640, np.random.default_rng(args.seed))
    for fmt in ("torchscript", "onnx"):  # export_predictor folds the model in place: one each
        predictor = LazyConfigPredictor(config_file, checkpoint, score_threshold=0.0)
        export_predictor(predictor, sample, os.path.join(export_dir, fmt), fmt)
    record = {"detector": detector, "config": trained[0] if trained else DETECTORS[detector], "sizes": []}
    record.update({"checkpoint": checkpoint} if trained else {})
    spawn, workers, rng = multiprocessing.get_context("spawn"), {}, np.random.default_rng(args.seed)
    model = (config_file, checkpoint, export_dir, args.threads)
    try:
        for form in args.forms:  # one at a time, each started once the one before has built its model
            connection, its_end = spawn.Pipe()
            workers[form] = (spawn.Process(target=serve, args=(form, *model, its_end)), connection)
            workers[form][0].start()
            its_end.close()  # the worker's copy alone left: recv() fails once it has ended
            ask(form, *workers[form])  # its model built
        for long_side in args.sizes:
            image = load_image(args.image, long_side, rng)
            calls = {form: lambda form=form: ask(form, *workers[form], image) for form in workers}
            samples = alternate(calls, rounds=args.iters, warmup=args.warmup)
            record["sizes"].append(summarize_size(long_side, image.shape[:2], samples))
            forms = record["sizes"][-1]["forms"].items()
            line = "; ".join(f"{f} {e['median_ms']:.0f} ms, {e['peak_rss_mib']:.0f} MiB" for f, e in forms)
            logger.info("%s at %d px: %s", detector, long_side, line)
    finally:
        for process, _ in workers.values():
            process.terminate()  # waiting for its next image, or ended
            process.join()
    return record


def summarize_size(long_side: int, shape: Tuple[int, int], samples: Dict[str, List[Dict]]) -> Dict:
    """Per form: the median time, the largest peak and, next to the predictor's, their ratios."""
    reference = samples.get(REFERENCE_FORM)
    forms = {}
    for form, replies in samples.items():
        seconds = [r["seconds"] for r in replies]
        peak = max(r["peak_rss_mib"] for r in replies)
        forms[form] = entry = {"median_ms": 1000 * statistics.median(seconds), "peak_rss_mib": peak}
        entry.update(detections=replies[-1]["detections"], samples_ms=[1000 * s for s in seconds])
        if reference is not None:
            stats = paired_ratio_statistics(seconds, [r["seconds"] for r in reference])
            entry["time_ratio"] = {k: stats[k] for k in ("median", "q1", "q3")}
            entry["memory_ratio"] = peak / max(r["peak_rss_mib"] for r in reference)
    return {"long_side": long_side, "image_size": list(shape), "pixels": shape[0] * shape[1], "forms": forms}


def format_table(report: Dict) -> str:
    """The markdown table: per detector and image size, each form's time, peak memory and ratios."""
    settings, machine, forms = report["settings"], report["machine"], report["settings"]["forms"]
    header = ["detector", "image", "detections"]
    for form in forms:
        ratios = [f"{form} time ratio", f"{form} memory ratio"] if form != REFERENCE_FORM else []
        header += [f"{form} ms", f"{form} MiB", *ratios]
    rows = []
    for record in report["results"]:
        for size in record["sizes"]:
            height, width = size["image_size"]
            row = [record["detector"], f"{width}x{height}", size["forms"][forms[0]]["detections"]]
            for form in forms:
                entry = size["forms"][form]
                row += [f"{entry['median_ms']:.0f}", f"{entry['peak_rss_mib']:.0f}"]
                if form != REFERENCE_FORM:
                    ratios = [format_ratio(entry["time_ratio"]), f"{entry['memory_ratio']:.2f}"]
                    row += ratios if "time_ratio" in entry else ["-", "-"]
            rows.append(row)
    return (
        f"CPU: {machine['cpu']}, {settings['threads']} threads; torch {machine['torch']}, ONNX Runtime "
        f"{machine['onnxruntime']}; score threshold 0 (at most 100 detections); median of "
        f"{settings['iters']} alternating rounds after {settings['warmup']} warm-up. Ratios are to the "
        "PyTorch predictor: time as median (IQR) of the per-round ratios, memory as the ratio of the peaks "
        f"(target <= {TARGET_RATIO}).\n\n"
        + markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))
    )


def failed_checks(report: Dict) -> List[str]:
    """One line per figure of ``report`` outside the target: a form whose time ratio to the predictor is above
    ``TARGET_RATIO`` over its whole IQR (resolved), whose memory ratio is too, or with other detections."""
    failures, above = [], f"above {TARGET_RATIO}"
    for record in report["results"]:
        for size in record["sizes"]:
            reference = size["forms"].get(REFERENCE_FORM)
            for form, entry in size["forms"].items():
                if form == REFERENCE_FORM or reference is None:
                    continue
                at = f"{record['detector']} {size['image_size'][1]}x{size['image_size'][0]} {form}"
                if entry["time_ratio"]["q1"] is not None and entry["time_ratio"]["q1"] > TARGET_RATIO:
                    failures.append(f"{at}: time / predictor = {format_ratio(entry['time_ratio'])}, {above}")
                if entry["memory_ratio"] > TARGET_RATIO:
                    failures.append(f"{at}: peak memory / predictor = {entry['memory_ratio']:.2f}, {above}")
                if entry["detections"] != reference["detections"]:
                    counts = f"{entry['detections']} detections, the predictor {reference['detections']}"
                    failures.append(f"{at}: {counts}")
    return failures


def build_argument_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    add_model_options(parser, DETECTORS)
    add = parser.add_argument
    # fmt: off
    add("--sizes", nargs="+", type=at_least(32), default=[640, 1333, 2048, 3840], metavar="LONG_SIDE",
        help="long sides of the 4:3 images (default: %(default)s)")
    # fmt: on
    add("--forms", nargs="+", choices=FORMS, default=list(FORMS), help="ratios need 'predictor' among them")
    add("--iters", type=at_least(1), default=3, help="timed rounds per size")
    add("--warmup", type=at_least(0), default=1, help="untimed rounds before them")
    add("--workdir", help="folder for weights and exports (default: temporary)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    runs = models_to_measure(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    machine = machine_description(("torch", "detectron2", "onnxruntime"))
    args.threads = args.threads or machine["torch_threads"]  # torch's default
    settings = {key: getattr(args, key) for key in ("sizes", "forms", "iters", "warmup", "threads", "seed")}
    settings.update(score_threshold=0.0, image=args.image or "random pixels", memory=MEMORY)
    report = {"settings": settings, "machine": machine, "results": []}
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or temporary
        os.makedirs(workdir, exist_ok=True)
        measure_each(runs, lambda run: measure_detector(*run, args, workdir), report, args.json, logger)
    print(format_table(report))
    return exit_status(failed_checks(report), check=args.check, logger=logger)


if __name__ == "__main__":
    sys.exit(main())
