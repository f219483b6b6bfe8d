#!/usr/bin/env python3
"""Export an RSB detector to TorchScript or ONNX (Detectron2 ``tools/deploy`` conventions).

Examples::

    # a train_net.py output folder (its saved config.yaml holds every override of the run)
    python3 projects/deploy/export_model.py --config-file output/shapes/mask_rcnn/config.yaml \\
        --checkpoint output/shapes/mask_rcnn/model_final.pth --format onnx --output exported/mask_rcnn_onnx

    # a COCO config with a sample image, or the first image of a data set
    python3 projects/deploy/export_model.py --config-file configs/COCO/cascade_mask_rcnn_rsb_r50_fpn_1x.py \\
        --checkpoint model_final.pth --format torchscript --sample-image photo.jpg --output exported/cascade_ts

``--config-file`` takes a LazyConfig (``.py`` or a saved ``config.yaml``) or a yacs config
(``configs/yacs``); ``KEY=VALUE`` overrides follow the flags. The model is traced on one image
and runs on any image size; the norm layers are folded into the convolutions first (``--no-fuse``
keeps them). Written: ``model.ts`` or ``model.onnx``, and ``model.json`` (inputs, outputs, the
test resize, the score threshold, class names). Run them with ``run_exported.py``.
"""

import argparse
import logging
import os

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from rsb_backbone.utils.errors import run_command
from rsb_backbone.data import register_coco_from_arg
from rsb_backbone.export import FORMATS, export_predictor
from rsb_backbone.inference import build_predictor


logger = logging.getLogger("rsb_detectron2.export_model")


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="LazyConfig (.py / config.yaml) or yacs (.yaml)")
    parser.add_argument(
        "--checkpoint", required=True,
        help="detector checkpoint, published file, or a released detector's name (mmdet://mask_rcnn_rsb_r50_fpn_1x)",
    )  # fmt: skip
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--output", required=True, help="folder for the exported files")
    sample = parser.add_mutually_exclusive_group()
    sample.add_argument("--sample-image", help="image to trace with (default: the first image of --dataset)")
    sample.add_argument(
        "--dataset", help="registered data set whose first image is traced (default: the config's test set)"
    )
    parser.add_argument(
        "--register-coco", action="append", default=[], metavar="NAME=JSON:IMAGE_DIR",
        help="register a COCO-format data set first (repeatable), as for train_net.py",
    )  # fmt: skip
    parser.add_argument(
        "--score-threshold", type=float, default=0.05,
        help="test score threshold built into the exported model (the configs' 0.05 by default)",
    )  # fmt: skip
    parser.add_argument("--no-fuse", action="store_true", help="keep the norm layers (no folding)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY=VALUE (yacs: KEY VALUE)")
    return parser


def _config_test_dataset(predictor) -> str:
    cfg = predictor.cfg
    if hasattr(cfg, "DATASETS"):  # yacs
        names = list(cfg.DATASETS.TEST)
    else:
        names = cfg.dataloader.test.dataset.names
        names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("the config names no test data set; pass --sample-image or --dataset")
    return names[0]


def sample_image(args, predictor):
    """The BGR image to trace with: --sample-image, or the first image of a data set."""
    if args.sample_image:
        if not os.path.isfile(args.sample_image):
            raise FileNotFoundError(f"--sample-image {args.sample_image}: no such file")
        return read_image(args.sample_image, format="BGR")
    name = args.dataset or _config_test_dataset(predictor)
    if name not in DatasetCatalog.list():
        raise ValueError(f"data set {name!r} is not registered; pass --register-coco {name}=JSON:IMAGE_DIR")
    records = DatasetCatalog.get(name)
    if not records:
        raise ValueError(f"data set {name!r} has no images")
    logger.info("Tracing with %s (first image of %s)", records[0]["file_name"], name)
    return read_image(records[0]["file_name"], format="BGR")


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    for spec in args.register_coco:
        register_coco_from_arg(spec)
    opts = [o for o in args.opts if o != "--"]
    predictor = build_predictor(
        args.config_file, args.checkpoint, device="cpu", score_threshold=args.score_threshold, opts=opts
    )
    written = export_predictor(
        predictor, sample_image(args, predictor), args.output, args.format, fuse=not args.no_fuse, opset=args.opset
    )
    classes = getattr(getattr(predictor, "metadata", None), "thing_classes", None)
    logger.info("Exported %s model: %s", args.format, written["model"])
    logger.info("Description: %s", written["spec"])
    logger.info("Class names: %s", ", ".join(classes) if classes else "none stored")
    return 0


if __name__ == "__main__":
    run_command(main)
