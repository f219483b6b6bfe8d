#!/usr/bin/env python3
"""Publish a trained detector: keep only the model tensors and its class names, named by hash.

Examples:
    python3 projects/publish_model/publish_model.py \\
        output/shapes/mask_rcnn/model_final.pth published/mask_rcnn_rsb_shapes.pth
    # -> published/mask_rcnn_rsb_shapes-1a2b3c4d.pth

    # half precision, as safetensors:
    python3 projects/publish_model/publish_model.py --fp16 --safetensors \\
        output/shapes/mask_rcnn/model_final.pth published/mask_rcnn_rsb_shapes
    # -> published/mask_rcnn_rsb_shapes-5e6f7a8b.safetensors

The input is a train_net.py checkpoint, a converted mmdetection checkpoint or a published file,
read tensors-only. The optimizer state, scheduler and iteration are dropped; the model metadata
(class names, category ids) is kept. The file name ends with the first 8 hex digits of the
file's SHA-256. The result loads wherever a checkpoint does: train.init_checkpoint= and
--eval-only of train_net.py, MODEL.WEIGHTS of the yacs configs, both predictors and the demo.
"""

import argparse
import logging
import sys

from rsb_backbone.checkpoint.publishing import publish_checkpoint
from rsb_backbone.checkpoint.tensor_files import WeightFileError

logger = logging.getLogger("rsb_detectron2.publish_model")


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="checkpoint to publish (e.g. model_final.pth)")
    parser.add_argument(
        "output", help="published file; '-<first 8 hex digits of its sha256>' is added before the suffix"
    )
    parser.add_argument("--fp16", action="store_true", help="store floating point tensors in half precision")
    parser.add_argument(
        "--safetensors",
        action="store_true",
        help="write .safetensors (class names in its header) instead of .pth",
    )
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    try:
        publish_checkpoint(args.input, args.output, fp16=args.fp16, safetensors=args.safetensors)
    except (FileNotFoundError, ValueError, WeightFileError) as e:
        logger.error("%s", e)
        return 2
    return 0  # publish_checkpoint logs what it wrote


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
