#!/usr/bin/env python3
"""Run an exported RSB detector (ONNX Runtime or TorchScript, CPU): COCO results out, or COCO AP.

Examples::

    # images, a folder or a glob -> COCO results JSON (as projects/predict_demo writes it)
    python3 projects/deploy/run_exported.py --model exported/mask_rcnn_onnx \\
        --input datasets/shapes/val --coco-json datasets/shapes/val.json --output output/exported

    # COCO AP on a registered data set (pycocotools, through Detectron2's COCOEvaluator)
    python3 projects/deploy/run_exported.py --model exported/mask_rcnn_onnx --eval rsb_shapes_val \\
        --output output/exported_eval

``--model`` is a folder written by ``export_model.py``. Class indices become the category ids
stored with the model when it has them. Masks are pasted and encoded one detection at a time
(``ExportedDetector(mask_format="roi")``), so no image-sized mask is held for every detection.
"""

import argparse
import json
import logging
import os
from typing import Dict, List

from tqdm import tqdm

from detectron2.data.detection_utils import read_image
from detectron2.evaluation import COCOEvaluator, print_csv_format

from rsb_backbone.data import register_coco_from_arg
from rsb_backbone.export import ExportedDetector
from rsb_backbone.inference import coco_image_ids, collect_inputs, contiguous_to_dataset_ids, instances_to_coco_results
from rsb_backbone.utils.errors import run_command

logger = logging.getLogger("rsb_detectron2.run_exported")


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export folder (model.json + model.onnx/model.ts)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", nargs="+", help="images, folders or glob patterns")
    what.add_argument("--eval", metavar="DATASET", help="registered data set to evaluate on (COCO AP)")
    parser.add_argument("--output", required=True, help="folder for the results")
    parser.add_argument("--json", default="predictions.json", help="name of the COCO results file in --output")
    parser.add_argument("--coco-json", help="COCO file whose image ids the --input images get (by file name)")
    parser.add_argument(
        "--register-coco", action="append", default=[], metavar="NAME=JSON:IMAGE_DIR",
        help="register a COCO-format data set first (repeatable), as for train_net.py",
    )  # fmt: skip
    parser.add_argument("--num-threads", type=int, default=None, help="intra-op threads of the runtime")
    return parser


class RoiMaskCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` for outputs whose masks are ``ROIMasks``: each image's
    detections become COCO results at once, one mask pasted at a time
    (:func:`~rsb_backbone.inference.instances_to_coco_results`)."""

    def process(self, inputs, outputs):
        # COCOEvaluator.process appends {"image_id", "instances": COCO results} to _predictions,
        # which evaluate() reads; the same record, made without image-sized masks.
        for record, output in zip(inputs, outputs):
            results = instances_to_coco_results(output["instances"], record["image_id"])
            self._predictions.append({"image_id": record["image_id"], "instances": results})


def predict_images(detector: ExportedDetector, images: List[str], image_ids: Dict[str, int]) -> List[dict]:
    """COCO results of ``detector`` on image files; ``image_ids``: file name -> id (else 1, 2, ...)."""
    category_ids = contiguous_to_dataset_ids(detector.metadata)
    results: List[dict] = []
    for number, path in enumerate(tqdm(images, desc="images", unit="image"), start=1):
        image_id = image_ids.get(os.path.basename(path), number) if image_ids else number
        instances = detector(read_image(path, format="BGR"))["instances"]
        results += instances_to_coco_results(instances, image_id, category_ids=category_ids)
    return results


def evaluate(detector: ExportedDetector, dataset: str, output_dir: str) -> dict:
    """COCO AP of ``detector`` on a registered data set: ``{"bbox": {...}[, "segm": {...}]}``."""
    from detectron2.data import DatasetCatalog

    if dataset not in DatasetCatalog.list():
        raise ValueError(f"--eval {dataset}: not registered; add --register-coco {dataset}=JSON:IMAGE_DIR")
    tasks = ("bbox", "segm") if detector.has_masks else ("bbox",)
    records = DatasetCatalog.get(dataset)  # before the evaluator, which reads the metadata this load completes
    evaluator = RoiMaskCOCOEvaluator(dataset, tasks=tasks, distributed=False, output_dir=output_dir)
    evaluator.reset()
    for record in tqdm(records, desc=dataset, unit="image"):
        outputs = detector(read_image(record["file_name"], format="BGR"))
        evaluator.process([record], [outputs])
    results = dict(evaluator.evaluate())
    print_csv_format(results)
    return results


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    for spec in args.register_coco:
        register_coco_from_arg(spec)
    detector = ExportedDetector(args.model, num_threads=args.num_threads, mask_format="roi")
    logger.info("%s model %s, outputs %s", detector.format, detector.model_path, ", ".join(detector.output_names))
    os.makedirs(args.output, exist_ok=True)
    if args.eval:
        results = evaluate(detector, args.eval, args.output)
        path = os.path.join(args.output, "eval_results.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        logger.info("COCO AP on %s: %s", args.eval, path)
        return 0
    images, videos = collect_inputs(args.input)
    if videos:
        raise ValueError(f"--input {videos[0]}: videos are not supported here; pass images")
    ids = coco_image_ids(args.coco_json) if args.coco_json else {}
    results = predict_images(detector, images, ids)
    path = os.path.join(args.output, args.json)
    with open(path, "w") as f:
        json.dump(results, f)
    logger.info("%d detections on %d images: %s", len(results), len(images), path)
    return 0


if __name__ == "__main__":
    run_command(main)
