#!/usr/bin/env python3
r"""Train or evaluate an RSB detector from a LazyConfig (README, "Training: train_net.py").

Examples (CPU demo on the generated shapes; COCO on 8 GPUs; evaluating a checkpoint, also possible
through a yacs config of configs/yacs with MODEL.WEIGHTS; your own COCO-format data):
    python3 train_net.py --config-file configs/shapes/faster_rcnn_rsb_r50_fpn_shapes.py
    python3 train_net.py --config-file configs/COCO/mask_rcnn_rsb_r50_fpn_1x.py --num-gpus 8
    python3 train_net.py --config-file configs/COCO/mask_rcnn_rsb_r50_fpn_1x.py --eval-only \
        train.init_checkpoint=output/model_final.pth
    python3 train_net.py --config-file configs/shapes/mask_rcnn_rsb_r50_fpn_shapes.py \
        --register-coco my_train=train.json:images/ --register-coco my_val=val.json:images/ \
        dataloader.train.dataset.names=my_train dataloader.test.dataset.names=my_val
"""

import argparse
import logging
import os
import signal
import sys

from detectron2.config import instantiate
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from rsb_backbone.config import (
    YACS,
    check_masks_for_mask_models,
    config_file_kind,
    load_config_with_overrides,
    resolve_device,
    sync_num_classes,
)
from rsb_backbone.data import register_coco_from_arg
from rsb_backbone.engine import (
    RunOutcome,
    SlurmRequeue,
    UserInputError,
    describe_process,
    do_test,
    do_train,
    evaluate_yacs,
    launch_workers,
    load_eval_checkpoint,
    outcome_of,
    parse_signal,
    setup_yacs_config,
    slurm_job,
    user_input_stage,
    wrap_ddp,
    write_eval_results,
)
from rsb_backbone.checkpoint.model_metadata import training_model_metadata
from rsb_backbone.modeling.backbone.timm_resnet import skip_pretrained_weights
from rsb_backbone.utils.file_io import check_output_dir
from rsb_backbone.utils.mixed_precision import training_precision

logger = logging.getLogger("rsb_backbone.train_net")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or a positive whole number")
    return int(text)


def build_argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--requeue-signal",
        default="USR1",
        help="in a SLURM job: the signal sent before the time limit (sbatch --signal=USR1@120); on it "
        "training stops with a checkpoint and the job requeues itself and resumes ('none': off)",
    )
    parser.add_argument(
        "--max-requeues",
        type=_count,
        default=3,
        help="in a SLURM job: how often it may requeue itself after its time-limit signal",
    )
    parser.add_argument(
        "--register-coco",
        action="append",
        default=[],
        metavar="NAME=JSON:IMAGE_DIR",
        help="register a COCO-format data set under NAME (repeatable); "
        "point the config at it with dataloader.train.dataset.names=NAME",
    )
    return parser


def setup_config(args):
    """Load the config, apply overrides, register data sets and fill in device and classes."""
    for spec in args.register_coco:
        register_coco_from_arg(spec)
    if config_file_kind(args.config_file) == YACS:
        cfg = setup_yacs_config(args.config_file, args.opts, eval_only=args.eval_only)
        check_output_dir(cfg.OUTPUT_DIR, key="OUTPUT_DIR")
        return cfg
    cfg = load_config_with_overrides(args.config_file, args.opts)
    check_output_dir(cfg.train.output_dir)
    cfg.train.device = resolve_device(cfg.train.get("device", "auto"))
    training_precision(cfg.train)  # a precision the device cannot run is refused here
    sync_num_classes(cfg, training=not args.eval_only)
    check_masks_for_mask_models(cfg, training=not args.eval_only)
    if not args.eval_only:  # class names and category ids, saved with config.yaml
        cfg.metadata = training_model_metadata(cfg)
    return cfg


# The config that invoke_main set up, by process id and arguments: a run in one process uses it as
# it is; each process that the launcher starts sets up its own (its data set catalog is its own).
_CONFIG_OF_PROCESS = {}


def main(args):
    """What each training process runs."""
    with user_input_stage():
        cfg = _CONFIG_OF_PROCESS.pop((os.getpid(), id(args)), None) or setup_config(args)
        default_setup(cfg, args)
    if config_file_kind(args.config_file) == YACS:
        return evaluate_yacs(cfg, resume=args.resume)
    setup_logger(cfg.train.output_dir, comm.get_rank(), name="rsb_backbone", abbrev_name="rsb")
    logger.info(describe_process())
    if not args.eval_only:
        requeue_signal = parse_signal(args.requeue_signal) if slurm_job() else None
        requeue = (
            SlurmRequeue(requeue_signal, args.max_requeues, cfg.train.output_dir) if requeue_signal else None
        )
        return do_train(cfg, resume=args.resume, requeue=requeue)
    with user_input_stage():  # COCO evaluation of a whole-detector checkpoint: every tensor must be in it
        skip_pretrained_weights(cfg.model)  # the detector checkpoint holds the backbone too
        model = instantiate(cfg.model).to(cfg.train.device)
        load_eval_checkpoint(model, cfg.train.output_dir, cfg.train.init_checkpoint, resume=args.resume)
    results = do_test(cfg, wrap_ddp(model))
    write_eval_results(results, cfg.train.output_dir)
    return results


def invoke_main() -> None:
    parser = build_argument_parser()
    args = parser.parse_args()
    job = slurm_job()
    # A requeued SLURM job runs its batch script again: it continues where it stopped.
    args.resume = args.resume or bool(job and job.restart_count)
    try:
        with user_input_stage():
            _CONFIG_OF_PROCESS[(os.getpid(), id(args))] = setup_config(args)  # fail fast, before any worker starts
            requeue_signal = parse_signal(args.requeue_signal) if job else None
        outcome = launch_workers(
            main,
            num_gpus_per_machine=args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            # Detectron2's default is a fixed local port; "auto" picks a free one, or SLURM's first node.
            dist_url="auto" if args.dist_url == parser.get_default("dist_url") else args.dist_url,
            args=(args,),
            requeue_signal=requeue_signal,
        )
    except UserInputError as e:
        outcome = outcome_of(e)
    except KeyboardInterrupt:  # Ctrl-C before the training loop took over SIGINT
        outcome = RunOutcome(128 + signal.SIGINT, "interrupted before training started")
    if outcome is not None:
        print(f"{parser.prog}: {outcome.message}", file=sys.stderr)
        sys.exit(outcome.exit_code)


if __name__ == "__main__":
    invoke_main()
