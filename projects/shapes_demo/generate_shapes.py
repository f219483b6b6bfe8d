#!/usr/bin/env python3
"""Write the synthetic shapes data set (circles, squares, triangles; COCO instance format).

Example::

    python3 projects/shapes_demo/generate_shapes.py --output datasets/shapes --num-train 200

The training demos do not need this script: ``rsb_shapes_train``/``rsb_shapes_val`` generate the
set under ``$RSB_DATASETS/shapes`` on first use. Use it to write a set elsewhere, of another
size, or to look at the images.
"""

import argparse
import logging
import sys

from rsb_backbone.data.datasets.shapes import generate_shapes_dataset

logger = logging.getLogger("rsb_detectron2.generate_shapes")


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="datasets/shapes", help="folder to create (must not exist or be empty)"
    )
    parser.add_argument("--num-train", type=int, default=200, help="images in train/")
    parser.add_argument("--num-val", type=int, default=50, help="images in val/")
    parser.add_argument("--min-size", type=int, default=160, help="smallest image side, pixels")
    parser.add_argument("--max-size", type=int, default=256, help="largest image side, pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same data set")
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = generate_shapes_dataset(
            args.output,
            num_train=args.num_train,
            num_val=args.num_val,
            min_size=args.min_size,
            max_size=args.max_size,
            seed=args.seed,
        )
    except (FileExistsError, ValueError) as e:
        logger.error("%s", e)
        return 2
    for split, split_paths in paths.items():
        logger.info(
            "%s: %s, images in %s", split, split_paths["json_file"], split_paths["image_root"]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
