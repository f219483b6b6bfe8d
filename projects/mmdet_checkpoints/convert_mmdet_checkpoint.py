#!/usr/bin/env python3
"""Convert an mmdetection v2.x RSB checkpoint into a Detectron2 checkpoint for our LazyConfig.

Examples:
    python3 projects/mmdet_checkpoints/convert_mmdet_checkpoint.py \\
        mask_rcnn_r50_fpn_rsb-pretrain_1x_coco_20220113_174054-06ce8ba0.pth \\
        output/mmdet/mask_rcnn_rsb.pth

    # then evaluate with the config the converter names:
    python3 train_net.py --config-file configs/COCO/mask_rcnn_rsb_r50_fpn_1x.py --eval-only \\
        train.init_checkpoint=output/mmdet/mask_rcnn_rsb.pth

The detector is recognised from the checkpoint's keys (``--detector auto``). Default target
configs: faster_rcnn and mask_rcnn -> configs/COCO/<name>_rsb_r50_fpn_1x.py; cascade_mask_rcnn
and retinanet -> configs/COCO/<name>_rsb_r50_fpn_1x_mmdet.py (mmdetection's test behaviour).
Every tensor must find its place in the model built from that config and every model weight must
come from the checkpoint; otherwise nothing is written and the keys are listed.
"""

import argparse
import logging
import os
import sys

from rsb_backbone.mmdet_conversion import DETECTORS, convert_mmdet_checkpoint
from rsb_backbone.checkpoint.tensor_files import WeightFileError


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="mmdetection checkpoint (.pth), read tensors-only")
    parser.add_argument("output", help="Detectron2 checkpoint to write ({'model': ...}), written atomically")
    parser.add_argument(
        "--detector",
        default="auto",
        choices=("auto",) + DETECTORS,
        help="which detector the checkpoint holds (default: recognised from its keys)",
    )
    parser.add_argument(
        "--config", default=None, help="target LazyConfig (default: the detector's, see above)"
    )
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        report = convert_mmdet_checkpoint(
            args.input, args.output, detector=args.detector, config_file=args.config
        )
    except (FileNotFoundError, ValueError, WeightFileError) as e:
        print(f"convert_mmdet_checkpoint.py: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {args.output}; evaluate with --config-file {os.path.relpath(report.config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
