#!/usr/bin/env python3
"""Registering a COCO-train-sized data set: ``--register-coco`` (``register_coco_instances_checked``)
against Detectron2's own ``register_coco_instances``, in time and memory.

The script writes (once, into ``--data-dir``) a COCO instances file of COCO train2017's size:
118,287 images, 860,001 polygon annotations, 80 categories, with an empty file per image (the
checked registration looks each image file up). Each loader then runs in a fresh worker process,
the two alternately (the order flipped every round), from registration to the serialised training
set, which is what a training process holds: ``register*``, then Detectron2's
``get_detection_dataset_dicts`` (``filter_empty=True``) and ``DatasetFromList(serialize=True)``, as
``build_detection_train_loader`` does. Per worker: the registration's time and the resident memory
it leaves behind, the time to the serialised set and the peak resident set (``VmHWM``, reset after
the imports).

The table gives both loaders' medians and the median (IQR) of the per-round ratios checked /
Detectron2. Exit code 1, with one line naming the figure, when the checked registration takes more
than ``TARGET_RATIO`` of Detectron2's time or peak memory, or holds more than ``HELD_LIMIT_MIB``
between registration and first use; ``--no-check`` only prints the figures.

Example (about 12 minutes on 2 CPU cores, the file's generation included)::

    python3 projects/benchmark/registration_benchmark.py --data-dir /tmp/coco_sized \\
        --json projects/benchmark/results/cpu_registration.json
    python3 projects/benchmark/registration_benchmark.py --data-dir /tmp/small --images 2000 --annotations 15000
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from measuring import machine_description, markdown_table, read_memory_mib, reset_peak_memory
from paired_ratios import format_ratio, paired_ratio_statistics

logger = logging.getLogger("rsb_detectron2.registration_benchmark")

LOADERS = ("detectron2", "checked")
TARGET_RATIO = 1.2
HELD_LIMIT_MIB = 64.0  # resident memory a registration may leave behind until the set's first use
DATASET_NAME = "coco_sized_train"


# ---- the data set -------------------------------------------------------------------------------
def write_coco_sized_file(data_dir: str, num_images: int, num_annotations: int, num_categories: int, seed: int) -> Dict[str, str]:
    """Write the COCO instances file and the empty image files into ``data_dir``, unless a file of
    the same size and seed is there already.

    Args:
        data_dir: output folder (``instances.json`` and ``images/``).
        num_images, num_annotations, num_categories: the file's size.
        seed: of the random boxes and polygons.

    Returns:
        ``json_file`` and ``image_root``.
    """
    json_file, image_root = os.path.join(data_dir, "instances.json"), os.path.join(data_dir, "images")
    spec = {"images": num_images, "annotations": num_annotations, "categories": num_categories, "seed": seed}
    spec_file = os.path.join(data_dir, "spec.json")
    if os.path.isfile(spec_file) and os.path.isfile(json_file):
        with open(spec_file) as f:
            if json.load(f) == spec:
                return {"json_file": json_file, "image_root": image_root}
    os.makedirs(image_root, exist_ok=True)
    rng = np.random.default_rng(seed)
    widths = rng.integers(320, 641, num_images)
    heights = rng.integers(240, 481, num_images)
    owner = np.sort(rng.integers(0, num_images, num_annotations))  # each annotation's image
    logger.info("Writing %s: %d images, %d annotations", json_file, num_images, num_annotations)
    with open(json_file + ".tmp", "w") as f:
        f.write('{"info": {"description": "COCO-train-sized generated set"}, "images": [')
        for i in range(num_images):
            file_name = f"{i + 1:012d}.jpg"
            open(os.path.join(image_root, file_name), "wb").close()
            entry = {"id": i + 1, "file_name": file_name, "height": int(heights[i]), "width": int(widths[i])}
            f.write(("," if i else "") + json.dumps(entry))
        f.write('], "annotations": [')
        for a in range(num_annotations):
            image = owner[a]
            w, h = int(widths[image]), int(heights[image])
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            # A star-shaped polygon of 8-20 vertices inside the box, as labelling tools draw them.
            n = int(rng.integers(8, 21))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.6, 1.0, n)
            xs = x + bw / 2 * (1 + radii * np.cos(angles))
            ys = y + bh / 2 * (1 + radii * np.sin(angles))
            polygon = np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()
            entry = {
                "id": a + 1,
                "image_id": int(image) + 1,
                "category_id": int(rng.integers(1, num_categories + 1)),
                "bbox": [round(float(v), 2) for v in (x, y, bw, bh)],
                "area": round(float(bw * bh * 0.7), 2),
                "iscrowd": 0,
                "segmentation": [polygon],
            }
            f.write(("," if a else "") + json.dumps(entry))
        categories = [{"id": c + 1, "name": f"class_{c + 1}", "supercategory": "thing"} for c in range(num_categories)]
        f.write('], "categories": ' + json.dumps(categories) + "}")
    os.replace(json_file + ".tmp", json_file)
    with open(spec_file, "w") as f:
        json.dump(spec, f)
    return {"json_file": json_file, "image_root": image_root}


# ---- the worker: one loader, from registration to the serialised training set ----------------------
def run_worker(loader: str, json_file: str, image_root: str) -> Dict[str, float]:
    """Register the file with ``loader`` and build the serialised training set; the measured figures.

    Args:
        loader: ``detectron2`` (``register_coco_instances``) or ``checked`` (``--register-coco``).
        json_file, image_root: the data set.
    """
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.data.common import DatasetFromList
    from detectron2.data.datasets import register_coco_instances

    from rsb_backbone.data import register_coco_instances_checked

    reset_peak_memory()
    start_mib = read_memory_mib("VmRSS")
    start = time.perf_counter()
    if loader == "detectron2":
        register_coco_instances(DATASET_NAME, {}, json_file, image_root)
    else:
        register_coco_instances_checked(DATASET_NAME, json_file, image_root)
    registered = time.perf_counter()
    held_mib = read_memory_mib("VmRSS") - start_mib
    dicts = get_detection_dataset_dicts([DATASET_NAME], filter_empty=True)
    dataset = DatasetFromList(dicts, copy=False, serialize=True)  # as build_detection_train_loader
    num_images = len(dicts)
    del dicts
    done = time.perf_counter()
    return {
        "registration_s": registered - start,
        "to_serialised_s": done - start,
        "held_after_registration_mib": held_mib,
        "peak_mib": read_memory_mib("VmHWM"),
        "peak_over_start_mib": read_memory_mib("VmHWM") - start_mib,
        "serialised_mib": read_memory_mib("VmRSS") - start_mib,
        "training_images": num_images,
        "dataset_length": len(dataset),
    }


def call_worker(loader: str, files: Dict[str, str]) -> Dict[str, float]:
    """Run :func:`run_worker` in a fresh interpreter; its figures."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", loader, "--json-file", files["json_file"], "--image-root", files["image_root"]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {loader} worker failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- the report ------------------------------------------------------------------------------------
FIGURES = (  # key, row title, digits, whether a ratio is reported
    ("registration_s", "registration (s)", 1, False),
    ("to_serialised_s", "time to the serialised training set (s)", 1, True),
    ("held_after_registration_mib", "resident memory held from registration to first use (MiB)", 0, False),
    ("peak_mib", "peak resident set (MiB)", 0, True),
    ("peak_over_start_mib", "peak over the resident set before registration (MiB)", 0, True),
)


def summarize(samples: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict]:
    """Per figure: each loader's median and the paired ratio checked / Detectron2."""
    summary = {}
    for key, _, _, with_ratio in FIGURES:
        entry = {loader: statistics.median(s[key] for s in samples[loader]) for loader in LOADERS}
        if with_ratio:
            entry["ratio"] = paired_ratio_statistics([s[key] for s in samples["checked"]], [s[key] for s in samples["detectron2"]])
        summary[key] = entry
    return summary


def format_table(summary: Dict[str, Dict]) -> str:
    """The markdown table of :func:`summarize`'s figures."""
    rows = []
    for key, title, digits, with_ratio in FIGURES:
        entry = summary[key]
        rows.append([title, f"{entry['detectron2']:,.{digits}f}", f"{entry['checked']:,.{digits}f}", format_ratio(entry["ratio"]) if with_ratio else "-"])
    return markdown_table(["", "Detectron2 `register_coco_instances`", "`--register-coco` (checked)", "checked / Detectron2"], rows)


def failed_checks(summary: Dict[str, Dict]) -> List[str]:
    """One line per figure outside its target: time and peak memory ratios above ``TARGET_RATIO``,
    memory held after registration above ``HELD_LIMIT_MIB``."""
    failures = []
    for key in ("to_serialised_s", "peak_mib"):
        ratio = summary[key]["ratio"]["median"]
        if ratio is None or ratio > TARGET_RATIO:
            failures.append(f"{key}: checked / Detectron2 = {ratio}, above the target {TARGET_RATIO}")
    held = summary["held_after_registration_mib"]["checked"]
    if held > HELD_LIMIT_MIB:
        failures.append(f"held_after_registration_mib: {held:.0f} MiB held after registration, above {HELD_LIMIT_MIB:.0f}")
    return failures


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="where the generated data set is written (kept for reruns)")
    parser.add_argument("--images", type=int, default=118287)
    parser.add_argument("--annotations", type=int, default=860001)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (a worker per loader each)")
    parser.add_argument("--json", help="write the samples and the summary to this file")
    parser.add_argument("--no-check", action="store_true", help="print the figures; exit 0 whatever they are")
    parser.add_argument("--worker", choices=LOADERS, help=argparse.SUPPRESS)
    parser.add_argument("--json-file", help=argparse.SUPPRESS)
    parser.add_argument("--image-root", help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_argument_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.json_file, args.image_root)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.data_dir:
        raise SystemExit("--data-dir is required: the folder for the generated data set")
    started = time.time()
    files = write_coco_sized_file(args.data_dir, args.images, args.annotations, args.categories, args.seed)
    samples: Dict[str, List[Dict[str, float]]] = {loader: [] for loader in LOADERS}
    for round_index in range(args.rounds):
        for loader in LOADERS if round_index % 2 == 0 else LOADERS[::-1]:
            samples[loader].append(call_worker(loader, files))
            logger.info("round %d %s: %s", round_index + 1, loader, samples[loader][-1])
    summary = summarize(samples)
    report = {
        "machine": machine_description(("torch", "detectron2", "pycocotools")),
        "data_set": {"images": args.images, "annotations": args.annotations, "categories": args.categories, "json_mib": os.path.getsize(files["json_file"]) / 2**20},
        "rounds": args.rounds,
        "minutes": (time.time() - started) / 60,
        "samples": samples,
        "summary": summary,
    }
    print(f"\n{args.images:,} images, {args.annotations:,} annotations, a {report['data_set']['json_mib']:.0f} MiB file; {args.rounds} rounds\n")
    print(format_table(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    failures = [] if args.no_check else failed_checks(summary)
    for line in failures:
        logger.error("registration_benchmark: %s", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
