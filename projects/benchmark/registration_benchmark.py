#!/usr/bin/env python3
"""Time and memory of registering a COCO-train-sized set with ``--register-coco`` and with Detectron2's
``register_coco_instances``, each call in a fresh process, alternately. Docs: docs/benchmark.md,
"Registering a COCO-train-sized set". Exit code 1 when a figure misses its target (``failed_checks``).

    python3 projects/benchmark/registration_benchmark.py --data-dir /tmp/coco_sized \\
        --json projects/benchmark/results/cpu_registration.json
    python3 projects/benchmark/registration_benchmark.py --data-dir /tmp/small --images 2000 \\
        --annotations 15000
"""

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from measuring import alternate, at_least, exit_status, format_ratio, machine_description, markdown_table
from measuring import paired_ratio_statistics, read_memory_mib, reset_peak_memory, script_parser, write_json

logger = logging.getLogger("rsb_detectron2.registration_benchmark")

LOADERS = {"detectron2": "Detectron2 `register_coco_instances`", "checked": "`--register-coco` (checked)"}
TARGET_RATIO = 1.2
HELD_LIMIT_MIB = 64.0  # resident memory a registration may leave behind until the set's first use
DATASET_NAME = "coco_sized_train"
FIGURES = (  # key, row title, digits, whether a ratio is reported
    ("registration_s", "registration (s)", 1, False),
    ("to_serialised_s", "time to the serialised training set (s)", 1, True),
    ("held_after_registration_mib", "resident memory held from registration to first use (MiB)", 0, False),
    ("peak_mib", "peak resident set (MiB)", 0, True),
    ("peak_over_start_mib", "peak over the resident set before registration (MiB)", 0, True),
)


def write_coco_sized_file(data_dir: str, images: int, annotations: int, categories: int, seed: int) -> Tuple:
    """Write ``instances.json`` (``images`` of random sizes, ``annotations`` at random over them, each a
    random box and a star-shaped polygon of 8-20 vertices, ``categories``) and an empty file per image
    into ``data_dir``, unless its ``spec.json`` says they are there; (JSON file, images' folder)."""
    json_file, image_root = os.path.join(data_dir, "instances.json"), os.path.join(data_dir, "images")
    spec = dict(images=images, annotations=annotations, categories=categories, seed=seed)
    spec_file = Path(data_dir, "spec.json")
    if os.path.isfile(json_file) and spec_file.is_file() and json.loads(spec_file.read_text()) == spec:
        return json_file, image_root
    os.makedirs(image_root, exist_ok=True)
    rng = np.random.default_rng(seed)
    widths, heights = rng.integers(320, 641, images), rng.integers(240, 481, images)
    owners = np.sort(rng.integers(0, images, annotations))  # each annotation's image
    logger.info("Writing %s: %d images, %d annotations", json_file, images, annotations)
    with open(json_file + ".tmp", "w") as f:
        f.write('{"info": {"description": "COCO-train-sized generated set"}, "images": [')
        for i in range(images):
            name = f"{i + 1:012d}.jpg"
            open(os.path.join(image_root, name), "wb").close()
            entry = {"id": i + 1, "file_name": name, "height": int(heights[i]), "width": int(widths[i])}
            f.write(("," if i else "") + json.dumps(entry))
        f.write('], "annotations": [')
        for a, (owner, w, h) in enumerate(zip(owners, widths[owners], heights[owners])):
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            n = int(rng.integers(8, 21))
            angles, radii = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(0.6, 1.0, n)
            xs, ys = x + bw / 2 * (1 + radii * np.cos(angles)), y + bh / 2 * (1 + radii * np.sin(angles))
            polygon = np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()
            box = [round(float(v), 2) for v in (x, y, bw, bh)]
            entry = dict(id=a + 1, image_id=int(owner) + 1, category_id=int(rng.integers(1, categories + 1)))
            entry.update(bbox=box, area=round(float(bw * bh * 0.7), 2), iscrowd=0, segmentation=[polygon])
            f.write(("," if a else "") + json.dumps(entry))
        names = [{"id": c + 1, "name": f"class_{c + 1}", "supercategory": "thing"} for c in range(categories)]
        f.write('], "categories": ' + json.dumps(names) + "}")
    os.replace(json_file + ".tmp", json_file)
    spec_file.write_text(json.dumps(spec))
    return json_file, image_root


def run_worker(loader: str, json_file: str, image_root: str, sender) -> None:
    """Send through ``sender`` the figures of registering the file with ``loader`` and building the
    serialised training set as ``build_detection_train_loader`` does, ``VmHWM`` reset after the imports."""
    from detectron2.data import DatasetFromList, get_detection_dataset_dicts
    from detectron2.data.datasets import register_coco_instances

    from rsb_backbone.data import register_coco_instances_checked

    reset_peak_memory()
    start_mib, start = read_memory_mib("VmRSS"), time.perf_counter()
    if loader == "detectron2":
        register_coco_instances(DATASET_NAME, {}, json_file, image_root)
    else:
        register_coco_instances_checked(DATASET_NAME, json_file, image_root)
    registration, held = time.perf_counter() - start, read_memory_mib("VmRSS") - start_mib  # to the first use
    dicts = get_detection_dataset_dicts([DATASET_NAME], filter_empty=True)
    dataset, training_images = DatasetFromList(dicts, copy=False, serialize=True), len(dicts)
    del dicts
    seconds, peak, now = time.perf_counter() - start, read_memory_mib("VmHWM"), read_memory_mib("VmRSS")
    figures = dict(registration_s=registration, to_serialised_s=seconds, held_after_registration_mib=held)
    figures.update(peak_mib=peak, peak_over_start_mib=peak - start_mib, serialised_mib=now - start_mib)
    sender.send({**figures, "training_images": training_images, "dataset_length": len(dataset)})


def call_worker(loader: str, files: Tuple[str, str]) -> Dict[str, float]:
    """The figures of :func:`run_worker` on ``files`` (JSON file, images' folder), in a fresh process."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    worker = multiprocessing.get_context("spawn").Process(target=run_worker, args=(loader, *files, sender))
    worker.start()
    worker.join()  # its figures, a few hundred bytes, wait in the pipe
    if worker.exitcode != 0:
        raise RuntimeError(f"the {loader} worker failed (exit code {worker.exitcode})")
    return receiver.recv()


def summarize(samples: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict]:
    """Per figure: each loader's median and the paired ratio checked / Detectron2."""
    summary = {}
    for key, _, _, with_ratio in FIGURES:
        values = {loader: [s[key] for s in samples[loader]] for loader in LOADERS}
        summary[key] = {loader: statistics.median(values[loader]) for loader in LOADERS}
        if with_ratio:
            summary[key]["ratio"] = paired_ratio_statistics(values["checked"], values["detectron2"])
    return summary


def format_table(summary: Dict[str, Dict]) -> str:
    """The markdown table of :func:`summarize`'s figures."""
    rows = []
    for key, title, digits, with_ratio in FIGURES:
        values = [f"{summary[key][loader]:,.{digits}f}" for loader in LOADERS]
        rows.append([title, *values, format_ratio(summary[key]["ratio"]) if with_ratio else "-"])
    return markdown_table(["", *LOADERS.values(), "checked / Detectron2"], rows)


def failed_checks(summary: Dict[str, Dict]) -> List[str]:
    """The failures, one line each: ratios above ``TARGET_RATIO``, held memory above ``HELD_LIMIT_MIB``."""
    failures = []
    for key in ("to_serialised_s", "peak_mib"):
        if (ratio := summary[key]["ratio"]["median"]) is None or ratio > TARGET_RATIO:
            failures.append(f"{key}: checked / Detectron2 = {ratio}, above the target {TARGET_RATIO}")
    if (held := summary["held_after_registration_mib"]["checked"]) > HELD_LIMIT_MIB:
        message = f"{held:.0f} MiB held after registration, above {HELD_LIMIT_MIB:.0f}"
        failures.append(f"held_after_registration_mib: {message}")
    return failures


def build_argument_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__, threads=False)
    add = parser.add_argument
    add("--data-dir", help="where the generated data set is written (kept for reruns)")
    add("--images", type=at_least(1), default=118287)
    add("--annotations", type=at_least(1), default=860001)
    add("--categories", type=at_least(1), default=80)
    add("--rounds", type=at_least(1), default=3, help="alternating rounds (a worker per loader each)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.data_dir:
        raise SystemExit("--data-dir is required: the folder for the generated data set")
    started = time.time()
    files = write_coco_sized_file(args.data_dir, args.images, args.annotations, args.categories, args.seed)
    runs = {loader: lambda loader=loader: call_worker(loader, files) for loader in LOADERS}
    samples = alternate(runs, rounds=args.rounds, on_round=lambda i, r: logger.info("round %d: %s", i + 1, r))
    data_set = dict(images=args.images, annotations=args.annotations, categories=args.categories)
    data_set["json_mib"] = os.path.getsize(files[0]) / 2**20
    summary, minutes = summarize(samples), (time.time() - started) / 60
    report = dict(machine=machine_description(("torch", "detectron2", "pycocotools")), data_set=data_set)
    report.update(rounds=args.rounds, minutes=minutes, samples=samples, summary=summary)
    size = f"{args.images:,} images, {args.annotations:,} annotations, a {data_set['json_mib']:.0f} MiB file"
    print(f"\n{size}; {args.rounds} rounds\n\n{format_table(summary)}")
    write_json(args.json, report)
    return exit_status(failed_checks(summary), check=args.check, logger=logger)


if __name__ == "__main__":
    sys.exit(main())
