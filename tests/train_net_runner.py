"""Runs train_net.py as a user would (a subprocess) on small generated data."""

import contextlib
import io
import json
import os
import subprocess
import sys
from unittest import mock
from typing import Dict, List, Optional, Sequence, Tuple

from conftest import REPO_ROOT

TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")

# CPU-sized settings for every test run (R-CNN configs): the cheapest trunk, tiny images, 2 images
# per batch, no loader workers, 100 RPN proposals per image at test time (COCO: 1000; the final
# evaluation's box head then does a tenth of the work), and AdamW's fused kernel: on the CPU torch
# otherwise steps tensor by tensor, about 6x slower for the trunk's 28 M parameters.
FAST_OVERRIDES = (
    "model.backbone.bottom_up.model_name=resnet18",
    "model.proposal_generator.post_nms_topk=[1000,100]",
    "+optimizer.fused=True",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
    "dataloader.train.mapper.augmentations.0.max_size=192",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=192",
    "train.log_period=1",
)


def shapes_config(detector: str) -> str:
    return os.path.join(REPO_ROOT, "configs", "shapes", f"{detector}_rsb_r50_fpn_shapes.py")


def dataset_args(dataset: Dict[str, Dict[str, str]]) -> List[str]:
    """--register-coco arguments and overrides pointing a config at a generated data set."""
    return [
        "--register-coco", f"tiny_train={dataset['train']['json_file']}:{dataset['train']['image_root']}",
        "--register-coco", f"tiny_val={dataset['val']['json_file']}:{dataset['val']['image_root']}",
        "dataloader.train.dataset.names=tiny_train",
        "dataloader.test.dataset.names=tiny_val",
    ]


def run_train_net(args: Sequence[str], *, timeout: float = 900, env=None, check: bool = True):
    """Run ``python3 train_net.py ARGS``; return the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, TRAIN_NET, *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"train_net.py exited {result.returncode}\n--- stderr (end) ---\n{result.stderr[-4000:]}"
        )
    return result


_MAINS_DRIVER = """
import glob, json, os, sys
sys.path.insert(0, {repo!r})
import train_net
for argv, remove_checkpoints_of in json.loads(sys.argv[1]):
    train_net.main(train_net.build_argument_parser().parse_args(argv))
    for checkpoint in glob.glob(os.path.join(remove_checkpoints_of, "*.pth")) if remove_checkpoints_of else []:
        os.remove(checkpoint)
"""


def run_train_net_mains(runs: Sequence[Tuple[Sequence[str], Optional[str]]], *, timeout: float = 1800) -> None:
    """Run ``train_net.main`` for each ``(argv, folder)`` of ``runs`` in turn, in one subprocess (one
    interpreter start-up for all); after a run, remove the ``*.pth`` files of ``folder`` if given
    (the checkpoints of large models that a test does not read).

    Raises:
        AssertionError: a run failed (the end of its stderr).
    """
    result = subprocess.run(
        [sys.executable, "-c", _MAINS_DRIVER.format(repo=REPO_ROOT), json.dumps([list(r) for r in runs])],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"train_net.py failed:\n{result.stderr[-4000:]}")


def train_net_in_process(args: Sequence[str]) -> subprocess.CompletedProcess:
    """Run ``train_net.py ARGS``'s entry point in this process, for bad input that it finds before
    any training process starts (no interpreter start-up: a second instead of ten); the returned
    object has the exit code and stderr, as :func:`run_train_net`'s."""
    import train_net

    stderr = io.StringIO()
    returncode = 0
    with mock.patch.object(sys, "argv", [TRAIN_NET, *args]), contextlib.redirect_stderr(stderr):
        try:
            train_net.invoke_main()
        except SystemExit as e:
            returncode = e.code
    return subprocess.CompletedProcess([TRAIN_NET, *args], returncode, "", stderr.getvalue())


def read_metrics(output_dir: str) -> List[dict]:
    """The records of ``metrics.json`` (one JSON object per line)."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_eval_results(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "eval_results.json")) as f:
        return json.load(f)
