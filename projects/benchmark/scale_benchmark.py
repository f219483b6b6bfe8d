#!/usr/bin/env python3
"""Time and peak memory of the mask detectors' four CPU forms as the image grows.

For Mask R-CNN and Cascade Mask R-CNN (the COCO R-50 configs, random weights, score threshold 0 so
that every image keeps the configs' 100 detections), the four forms a user can run are measured on
images whose long side is 640, 1333, 2048 and 3840 pixels (4:3):

* ``predictor``: the PyTorch model as trained (``LazyConfigPredictor``);
* ``folded``: its deployment form (``fuse=True``: norm layers folded into the convolutions);
* ``torchscript`` and ``onnx``: that form exported by ``projects/deploy/export_model.py``'s code
  (``rsb_backbone.export.export_predictor``) and run by ``ExportedDetector`` (bool image masks,
  as the predictor returns them).

Every form runs in a worker process of its own, started once, so that each process's peak
resident set belongs to one form; the workers are called one after the other, image by image,
the order flipped every round (one alternating run). Before each call the worker resets its
high-water mark (``/proc/self/clear_refs``), so a sample's peak memory is the process's largest
resident set during that call: the weights and the runtime plus everything the call allocates.
The network always runs at the config's test size (shorter side 800, longer at most 1333); what
grows with the image is the pasting of the masks and the image-sized outputs.

Each form's time is reported as the median of its samples and as the median (IQR) of its
per-round ratios to the predictor; its memory as the largest peak of its samples and the ratio of
that to the predictor's. Target: every form at most 1.2x the predictor in both, at every size, with
the predictor's detections; the exit code is 1 (one line per figure, ``failed_checks``) when a form
misses it (a time ratio only when its whole interquartile range lies above), unless ``--no-check``.

Example (about 25 minutes per detector on 2 CPU cores)::

    python3 projects/benchmark/scale_benchmark.py --json projects/benchmark/results/cpu_scale.json
    python3 projects/benchmark/scale_benchmark.py --detectors mask_rcnn --sizes 640 2048 --iters 2
    # a trained model (a train_net.py run's config.yaml and checkpoint) on a real image, resized:
    python3 projects/benchmark/scale_benchmark.py --detectors --trained mask_rcnn_shapes \
        output/mask/config.yaml output/mask/model_final.pth --image datasets/shapes/val/000001.jpg
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from measuring import machine_description, read_memory_mib, reset_peak_memory
from paired_ratios import format_ratio, paired_ratio_statistics

logger = logging.getLogger("rsb_detectron2.scale_benchmark")

REPO_ROOT = Path(__file__).resolve().parents[2]
DETECTORS = {
    "mask_rcnn": "configs/COCO/mask_rcnn_rsb_r50_fpn_1x.py",
    "cascade_mask_rcnn": "configs/COCO/cascade_mask_rcnn_rsb_r50_fpn_1x.py",
}
FORMS = ("predictor", "folded", "torchscript", "onnx")
REFERENCE_FORM = "predictor"
DEFAULT_SIZES = (640, 1333, 2048, 3840)
TARGET_RATIO = 1.2


# ---- the worker: one form of one detector, called image by image --------------------------------
def build_form(form: str, config_file: str, checkpoint: str, export_dir: str, threads: int):
    """The callable detector of ``form``: an (H, W, 3) uint8 BGR image in, ``{"instances"}`` out.

    Args:
        form: one of ``FORMS``.
        config_file: the detector's LazyConfig.
        checkpoint: its weights.
        export_dir: folder holding ``torchscript/`` and ``onnx/`` exports of the folded model.
        threads: intra-op threads of torch and ONNX Runtime.
    """
    import torch

    torch.set_num_threads(threads)
    if form in ("predictor", "folded"):
        from rsb_backbone.inference import LazyConfigPredictor

        return LazyConfigPredictor(config_file, checkpoint, score_threshold=0.0, fuse=form == "folded")
    from rsb_backbone.export import ExportedDetector

    return ExportedDetector(os.path.join(export_dir, form), num_threads=threads)


def run_worker(form: str, config_file: str, checkpoint: str, export_dir: str, threads: int) -> None:
    """Serve requests from stdin (one JSON line per image: ``{"image": path of a .npy}``) with one
    JSON line each on stdout: ``seconds``, ``peak_rss_mib`` and ``detections``."""
    import torch

    detector = build_form(form, config_file, checkpoint, export_dir, threads)
    print(json.dumps({"ready": True, "rss_mib": read_memory_mib("VmRSS")}), flush=True)
    for line in sys.stdin:
        image = np.load(json.loads(line)["image"])
        reset_peak_memory()
        start = time.perf_counter()
        with torch.no_grad():
            instances = detector(image)["instances"]
            masks = instances.pred_masks  # bool (N, H, W) image masks in every form
        seconds = time.perf_counter() - start
        reply = {
            "seconds": seconds,
            "peak_rss_mib": read_memory_mib("VmHWM"),
            "detections": len(instances),
            "mask_shape": list(masks.shape),
        }
        del instances, masks
        print(json.dumps(reply), flush=True)


class Worker:
    """A worker process of :func:`run_worker`, kept alive across requests.

    Args:
        form: one of ``FORMS``.
        config_file, checkpoint, export_dir, threads: as :func:`build_form`.
    """

    def __init__(self, form: str, config_file: str, checkpoint: str, export_dir: str, threads: int):
        self.form = form
        command = [
            sys.executable, __file__, "--worker", form, "--config-file", config_file,
            "--checkpoint", checkpoint, "--export-dir", export_dir, "--threads", str(threads),
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()  # the model is built

    def _read(self) -> Dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.form} worker ended (exit code {self.process.wait()})")
        return json.loads(line)

    def __call__(self, image_path: str) -> Dict:
        self.process.stdin.write(json.dumps({"image": image_path}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ---- the run ------------------------------------------------------------------------------------
def image_shape(long_side: int) -> Tuple[int, int]:
    """(height, width) of a 4:3 landscape image with the given long side."""
    return round(long_side * 3 / 4), long_side


def load_image(path: Optional[str], shape: Tuple[int, int], rng) -> np.ndarray:
    """An (H, W, 3) uint8 BGR image of ``shape``: the file at ``path`` resized, or random pixels."""
    if path is None:
        return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    import cv2

    image = cv2.imread(path)
    if image is None:
        raise ValueError(f"--image {path}: not a readable image file")
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def export_forms(config_file: str, checkpoint: str, export_dir: str, sample: np.ndarray) -> None:
    """The folded model of ``config_file`` with ``checkpoint`` exported to TorchScript and ONNX."""
    from rsb_backbone.export import export_predictor
    from rsb_backbone.inference import LazyConfigPredictor

    for fmt in ("torchscript", "onnx"):
        predictor = LazyConfigPredictor(config_file, checkpoint, score_threshold=0.0)
        export_predictor(predictor, sample, os.path.join(export_dir, fmt), fmt)


def prepare_detector(detector: str, workdir: str, seed: int, image: Optional[str] = None) -> Tuple[str, str, str]:
    """Random weights for ``detector``'s config, saved as a checkpoint, and the folded model exported
    to TorchScript and ONNX.

    Returns:
        (config file, checkpoint, export folder).
    """
    import torch
    from detectron2.config import instantiate

    from rsb_backbone import model_zoo
    from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights

    config_file = str(REPO_ROOT / DETECTORS[detector])
    cfg = model_zoo.get_config(os.path.relpath(DETECTORS[detector], "configs"))
    skip_pretrained_weights(cfg.model)
    torch.manual_seed(seed)
    checkpoint = os.path.join(workdir, f"{detector}.pth")
    torch.save({"model": instantiate(cfg.model).state_dict()}, checkpoint)
    export_dir = os.path.join(workdir, f"{detector}_export")
    export_forms(config_file, checkpoint, export_dir, load_image(image, image_shape(640), np.random.default_rng(seed)))
    return config_file, checkpoint, export_dir


def measure_detector(detector: str, args, workdir: str, trained: Optional[Tuple[str, str]] = None) -> Dict:
    """One alternating run of the forms of ``detector`` over ``args.sizes``; its JSON record.

    Args:
        detector: a key of ``DETECTORS``, or a trained model's name.
        args: the parsed command line.
        workdir: folder for weights, exports and images.
        trained: ``(config file, checkpoint)`` of a trained model (``--trained``); None: the config
            of ``DETECTORS[detector]`` with random weights.
    """
    if trained:
        config_file, checkpoint = trained
        export_dir = os.path.join(workdir, f"{detector}_export")
        export_forms(config_file, checkpoint, export_dir, load_image(args.image, image_shape(640), None))
    else:
        config_file, checkpoint, export_dir = prepare_detector(detector, workdir, args.seed, args.image)
    workers = {form: Worker(form, config_file, checkpoint, export_dir, args.threads) for form in args.forms}
    rng = np.random.default_rng(args.seed)
    record = {"detector": detector, "config": config_file if trained else DETECTORS[detector], "sizes": []}
    if trained:
        record["checkpoint"] = checkpoint
    try:
        for long_side in args.sizes:
            height, width = image_shape(long_side)
            image_path = os.path.join(workdir, f"image_{long_side}.npy")
            np.save(image_path, load_image(args.image, (height, width), rng))
            samples = {form: [] for form in args.forms}
            for round_index in range(args.warmup + args.iters):
                order = list(args.forms) if round_index % 2 == 0 else list(args.forms)[::-1]
                for form in order:
                    reply = workers[form](image_path)
                    if round_index >= args.warmup:
                        samples[form].append(reply)
            record["sizes"].append(summarize_size(long_side, (height, width), samples))
            logger.info("%s at %d px: %s", detector, long_side, format_size_line(record["sizes"][-1]))
    finally:
        for worker in workers.values():
            worker.close()
    return record


def summarize_size(long_side: int, shape: Tuple[int, int], samples: Dict[str, List[Dict]]) -> Dict:
    """Medians, peaks and ratios to the predictor of one image size."""
    reference = samples.get(REFERENCE_FORM)
    forms = {}
    for form, replies in samples.items():
        seconds = [r["seconds"] for r in replies]
        peak = max(r["peak_rss_mib"] for r in replies)
        entry = {
            "median_ms": 1000 * statistics.median(seconds),
            "peak_rss_mib": peak,
            "detections": replies[-1]["detections"],
            "samples_ms": [1000 * s for s in seconds],
        }
        if reference is not None:
            stats = paired_ratio_statistics(seconds, [r["seconds"] for r in reference])
            entry["time_ratio"] = {k: stats[k] for k in ("median", "q1", "q3")}
            entry["memory_ratio"] = peak / max(r["peak_rss_mib"] for r in reference)
        forms[form] = entry
    return {"long_side": long_side, "image_size": list(shape), "pixels": shape[0] * shape[1], "forms": forms}


def format_size_line(size: Dict) -> str:
    return "; ".join(
        f"{form} {entry['median_ms']:.0f} ms, {entry['peak_rss_mib']:.0f} MiB" for form, entry in size["forms"].items()
    )


def format_table(report: Dict) -> str:
    """The markdown table: per detector and image size, each form's time and peak memory."""
    settings = report["settings"]
    forms = settings["forms"]
    lines = [
        f"CPU: {report['machine']['cpu']}, {settings['threads']} threads; torch {report['machine']['torch']}, "
        f"ONNX Runtime {report['machine']['onnxruntime']}; score threshold 0 (at most 100 detections); "
        f"median of {settings['iters']} alternating rounds after {settings['warmup']} warm-up. "
        f"Ratios are to the PyTorch predictor: time as median (IQR) of the per-round ratios, memory "
        f"as the ratio of the peaks (target <= {TARGET_RATIO}).",
        "",
    ]
    header = ["detector", "image", "detections"]
    for form in forms:
        header += [f"{form} ms", f"{form} MiB"]
        if form != REFERENCE_FORM:
            header += [f"{form} time ratio", f"{form} memory ratio"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
    for record in report["results"]:
        for size in record["sizes"]:
            height, width = size["image_size"]
            row = [record["detector"], f"{width}x{height}", str(size["forms"][forms[0]]["detections"])]
            for form in forms:
                entry = size["forms"][form]
                row += [f"{entry['median_ms']:.0f}", f"{entry['peak_rss_mib']:.0f}"]
                if form != REFERENCE_FORM and "time_ratio" in entry:
                    row += [format_ratio(entry["time_ratio"]), f"{entry['memory_ratio']:.2f}"]
                elif form != REFERENCE_FORM:
                    row += ["-", "-"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--detectors", nargs="*", choices=list(DETECTORS), default=list(DETECTORS),
        help="detectors to measure with random weights (none: only the --trained models)",
    )
    parser.add_argument(
        "--trained", nargs=3, action="append", default=[], metavar=("NAME", "CONFIG", "CHECKPOINT"),
        help="also measure a trained mask model (e.g. a train_net.py run's config.yaml and "
        "model_final.pth) as rows named NAME; may be repeated",
    )
    parser.add_argument(
        "--image", default=None, metavar="FILE", help="this image resized to each size instead of random pixels"
    )
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), metavar="LONG_SIDE",
        help="long sides of the 4:3 images (default: %(default)s)",
    )
    parser.add_argument(
        "--forms", nargs="+", choices=FORMS, default=list(FORMS),
        help="forms to measure; ratios need 'predictor' among them",
    )
    parser.add_argument("--iters", type=int, default=3, help="timed rounds per size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    parser.add_argument(
        "--no-check", action="store_true",
        help=f"exit 0 whatever the figures (default: exit 1, one line each, for a form resolved above "
        f"{TARGET_RATIO}x the predictor in time or memory, or keeping other detections)",
    )
    parser.add_argument("--workdir", default=None, help="folder for weights, exports, images (default: temporary)")
    # A worker's own arguments (started by the run, not by users).
    parser.add_argument("--worker", choices=FORMS, help=argparse.SUPPRESS)
    parser.add_argument("--config-file", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--export-dir", help=argparse.SUPPRESS)
    return parser


def failed_checks(report: Dict) -> List[str]:
    """One line per figure of ``report`` outside the target: a form whose time ratio to the
    predictor lies above ``TARGET_RATIO`` over its whole interquartile range (resolved), whose peak
    memory ratio is above it, or that keeps another number of detections than the predictor.

    Args:
        report: what :func:`main` writes with ``--json``.
    """
    failures = []
    for record in report["results"]:
        for size in record["sizes"]:
            where = f"{record['detector']} {size['image_size'][1]}x{size['image_size'][0]}"
            reference = size["forms"].get(REFERENCE_FORM)
            for form, entry in size["forms"].items():
                if form == REFERENCE_FORM or reference is None:
                    continue
                time_ratio = entry["time_ratio"]
                if time_ratio["q1"] is not None and time_ratio["q1"] > TARGET_RATIO:
                    failures.append(f"{where} {form}: time / predictor = {format_ratio(time_ratio)}, above {TARGET_RATIO}")
                if entry["memory_ratio"] > TARGET_RATIO:
                    failures.append(f"{where} {form}: peak memory / predictor = {entry['memory_ratio']:.2f}, above {TARGET_RATIO}")
                if entry["detections"] != reference["detections"]:
                    failures.append(f"{where} {form}: {entry['detections']} detections, the predictor {reference['detections']}")
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.config_file, args.checkpoint, args.export_dir, args.threads)
        return 0
    for name in ("iters",):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)}: expected at least 1")
    if args.warmup < 0:
        parser.error(f"--warmup={args.warmup}: expected 0 or more")
    if min(args.sizes) < 32:
        parser.error(f"--sizes {min(args.sizes)}: expected long sides of at least 32 pixels")
    if not args.detectors and not args.trained:
        parser.error("nothing to measure: name --detectors or give --trained")
    for path in [args.image] * bool(args.image) + [p for _, *paths in args.trained for p in paths]:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    args.threads = args.threads or torch.get_num_threads()
    report = {
        "settings": {
            "sizes": args.sizes, "forms": list(args.forms), "iters": args.iters, "warmup": args.warmup,
            "threads": args.threads, "seed": args.seed, "score_threshold": 0.0,
            "image": args.image or "random pixels",
            "memory": "per sample: the worker's VmHWM after resetting it through /proc/self/clear_refs "
            "(weights and runtime included); per form: the largest of its samples",
        },
        "machine": machine_description(("torch", "detectron2", "onnxruntime")),
        "results": [],
    }
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or temporary
        os.makedirs(workdir, exist_ok=True)
        runs = [(detector, None) for detector in args.detectors]
        runs += [(name, (config, checkpoint)) for name, config, checkpoint in args.trained]
        for detector, trained in runs:
            report["results"].append(measure_detector(detector, args, workdir, trained))
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    failures = failed_checks(report)
    for line in failures:
        (logger.warning if args.no_check else logger.error)("scale_benchmark.py: %s", line)
    return 1 if failures and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
