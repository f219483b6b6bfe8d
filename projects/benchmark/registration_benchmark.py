#!/usr/bin/env python3
"""Registering a COCO-train-sized data set: ``--register-coco`` (``register_coco_instances_checked``)
against Detectron2's own ``register_coco_instances``, in time and memory, each loader in fresh worker
processes, alternately. What it measures and the figures: docs/benchmark.md, "Registering a
COCO-train-sized set"; the exit code is 1 when a figure misses its target (``failed_checks``).

    python3 projects/benchmark/registration_benchmark.py --data-dir /tmp/coco_sized \\
        --json projects/benchmark/results/cpu_registration.json
    python3 projects/benchmark/registration_benchmark.py --data-dir /tmp/small --images 2000 \\
        --annotations 15000
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from measuring import alternate, at_least, exit_status, format_ratio, machine_description, markdown_table
from measuring import paired_ratio_statistics, read_memory_mib, reset_peak_memory, script_parser, write_json

logger = logging.getLogger("rsb_detectron2.registration_benchmark")

LOADERS = ("detectron2", "checked")
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


def write_coco_sized_file(data_dir: str, images: int, annotations: int, categories: int, seed: int) -> Dict:
    """Write ``instances.json`` (``images`` of random sizes, ``annotations`` spread over them at random
    with random boxes and star-shaped polygons of 8-20 vertices, ``categories``) and an empty file per
    image into ``data_dir``, unless its ``spec.json`` says they are there; their ``json_file`` and
    ``image_root``."""
    files = {
        "json_file": os.path.join(data_dir, "instances.json"),
        "image_root": os.path.join(data_dir, "images"),
    }
    spec, spec_file = (
        dict(images=images, annotations=annotations, categories=categories, seed=seed),
        f"{data_dir}/spec.json",
    )
    if (
        os.path.isfile(files["json_file"])
        and os.path.isfile(spec_file)
        and json.load(open(spec_file)) == spec
    ):
        return files
    os.makedirs(files["image_root"], exist_ok=True)
    rng = np.random.default_rng(seed)
    widths, heights = rng.integers(320, 641, images), rng.integers(240, 481, images)
    owners = np.sort(rng.integers(0, images, annotations))  # each annotation's image
    logger.info("Writing %s: %d images, %d annotations", files["json_file"], images, annotations)
    with open(files["json_file"] + ".tmp", "w") as f:
        f.write('{"info": {"description": "COCO-train-sized generated set"}, "images": [')
        for i in range(images):
            name = f"{i + 1:012d}.jpg"
            open(os.path.join(files["image_root"], name), "wb").close()
            entry = {"id": i + 1, "file_name": name, "height": int(heights[i]), "width": int(widths[i])}
            f.write(("," if i else "") + json.dumps(entry))
        f.write('], "annotations": [')
        for a, owner in enumerate(owners):
            w, h = int(widths[owner]), int(heights[owner])
            bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            n = int(rng.integers(8, 21))
            angles, radii = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(0.6, 1.0, n)
            xs, ys = x + bw / 2 * (1 + radii * np.cos(angles)), y + bh / 2 * (1 + radii * np.sin(angles))
            entry = {
                "id": a + 1,
                "image_id": int(owner) + 1,
                "category_id": int(rng.integers(1, categories + 1)),
            }
            entry.update(
                bbox=[round(float(v), 2) for v in (x, y, bw, bh)], area=round(float(bw * bh * 0.7), 2)
            )
            entry.update(iscrowd=0, segmentation=[np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()])
            f.write(("," if a else "") + json.dumps(entry))
        names = [{"id": c + 1, "name": f"class_{c + 1}", "supercategory": "thing"} for c in range(categories)]
        f.write('], "categories": ' + json.dumps(names) + "}")
    os.replace(files["json_file"] + ".tmp", files["json_file"])
    Path(spec_file).write_text(json.dumps(spec))
    return files


def run_worker(loader: str, json_file: str, image_root: str) -> Dict[str, float]:
    """The figures of registering the file with ``loader`` (``detectron2``: ``register_coco_instances``,
    ``checked``: ``--register-coco``) and building the serialised training set as
    ``build_detection_train_loader`` does, ``VmHWM`` reset after the imports."""
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.data.common import DatasetFromList
    from detectron2.data.datasets import register_coco_instances

    from rsb_backbone.data import register_coco_instances_checked

    reset_peak_memory()
    start_mib, start = read_memory_mib("VmRSS"), time.perf_counter()
    if loader == "detectron2":
        register_coco_instances(DATASET_NAME, {}, json_file, image_root)
    else:
        register_coco_instances_checked(DATASET_NAME, json_file, image_root)
    registered, held_mib = time.perf_counter(), read_memory_mib("VmRSS") - start_mib
    dicts = get_detection_dataset_dicts([DATASET_NAME], filter_empty=True)
    dataset = DatasetFromList(dicts, copy=False, serialize=True)
    num_images = len(dicts)
    del dicts
    figures = dict(registration_s=registered - start, to_serialised_s=time.perf_counter() - start)
    figures.update(held_after_registration_mib=held_mib, peak_mib=read_memory_mib("VmHWM"))
    figures.update(
        peak_over_start_mib=figures["peak_mib"] - start_mib,
        serialised_mib=read_memory_mib("VmRSS") - start_mib,
    )
    return {**figures, "training_images": num_images, "dataset_length": len(dataset)}


def call_worker(loader: str, files: Dict[str, str]) -> Dict[str, float]:
    """Run :func:`run_worker` in a fresh interpreter; its figures."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", loader]
    command += ["--json-file", files["json_file"], "--image-root", files["image_root"]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {loader} worker failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    loaders = ["Detectron2 `register_coco_instances`", "`--register-coco` (checked)"]
    return markdown_table(["", *loaders, "checked / Detectron2"], rows)


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
        failures.append(
            f"held_after_registration_mib: {held:.0f} MiB held after registration, above {HELD_LIMIT_MIB:.0f}"
        )
    return failures


def build_argument_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__, threads=False)
    add = parser.add_argument
    add("--data-dir", help="where the generated data set is written (kept for reruns)")
    add("--images", type=at_least(1), default=118287)
    add("--annotations", type=at_least(1), default=860001)
    add("--categories", type=at_least(1), default=80)
    add("--rounds", type=at_least(1), default=3, help="alternating rounds (a worker per loader each)")
    for name in ("--worker", "--json-file", "--image-root"):  # a worker's own
        add(name, help=argparse.SUPPRESS)
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
    calls = {loader: lambda loader=loader: call_worker(loader, files) for loader in LOADERS}
    log = lambda index, results: logger.info("round %d: %s", index + 1, results)  # noqa: E731
    samples = alternate(calls, rounds=args.rounds, on_round=log)
    summary = summarize(samples)
    data_set = dict(images=args.images, annotations=args.annotations, categories=args.categories)
    data_set["json_mib"] = os.path.getsize(files["json_file"]) / 2**20
    machine = machine_description(("torch", "detectron2", "pycocotools"))
    report = dict(
        machine=machine, data_set=data_set, rounds=args.rounds, minutes=(time.time() - started) / 60
    )
    report.update(samples=samples, summary=summary)
    size = f"{args.images:,} images, {args.annotations:,} annotations, a {data_set['json_mib']:.0f} MiB file"
    print(f"\n{size}; {args.rounds} rounds\n\n{format_table(summary)}")
    write_json(args.json, report)
    return exit_status(failed_checks(summary), check=args.check, logger=logger)


if __name__ == "__main__":
    sys.exit(main())
