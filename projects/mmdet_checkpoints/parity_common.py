"""What the mmdetection comparison scripts share: paths, command-line options, the run's set-up,
mmdetection's RSB configs, and the lines and exit status of the threshold checks.

The scripts are the four of this folder (``mmdet_parity.py``, ``mmdet_train_parity.py``,
``mmdet_data_parity.py``, ``mmdet_trajectory_parity.py``) and
``projects/benchmark/mmdet_side_by_side.py`` (which uses the check helpers only).

Options of every parity script (:func:`add_common_arguments`):

- ``--output-dir``: folder of the checkpoints and the JSON of the run;
- ``--seed``: seed of the random weights and the generated images;
- ``--detectors``: the detectors to compare (every script but the data pipeline comparison);
- ``--threads``: torch CPU threads, by default ``min(2, CPU count)`` (``DEFAULT_THREADS``), the two
  threads of the runs that docs/mmdet_parity.md reports: the thread count can change the order of
  float32 reductions, and with it the last digits the documented figures were measured with;
- ``--no-check``: print and write the figures and exit 0 whatever they are. Without it a script
  exits 1, after its usual output, when a figure lies outside the threshold the docs state, and
  logs one line per such figure (``exit_status``, from projects/benchmark/measuring.py).

Each script keeps its thresholds as module constants citing the docs, and a pure function
``failed_checks(report)`` that turns the report it writes to its JSON into those lines.

Importing this module puts the repository root (``rsb_backbone``, ``configs``), this folder
(the scripts import each other) and projects/benchmark on ``sys.path``; it needs neither mmdetection nor mmcv.
"""

import argparse
import logging
import os
import sys
from typing import Dict, List, Optional

import torch

PARITY_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(PARITY_DIR))
BENCHMARK_DIR = os.path.join(REPO_ROOT, "projects", "benchmark")  # measuring.py: the scripts' exit status
for _path in (REPO_ROOT, PARITY_DIR, BENCHMARK_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from measuring import exit_status  # noqa: E402,F401  (the parity scripts import it from here)
from rsb_backbone.mmdet_conversion import DETECTORS  # noqa: E402

# The thread count of the documented runs ("torch 2.14.1 CPU (2 threads)", docs/mmdet_parity.md).
DEFAULT_THREADS = max(1, min(2, os.cpu_count() or 1))
# mmdetection's own config of each detector, relative to the configs installed with mmdetection.
MMDET_CONFIGS = {d: f"resnet_strikes_back/{d}_r50_fpn_rsb-pretrain_1x_coco.py" for d in DETECTORS}


# ---- set-up ----------------------------------------------------------------------------------------
def thread_count(text: str) -> int:
    """``--threads``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of threads, at least 1")
    return value


def add_common_arguments(parser: argparse.ArgumentParser, *, output_dir: str, detectors: bool = True) -> None:
    """Add the options every parity script takes (see the module docstring).

    Args:
        parser: the script's parser.
        output_dir: default of ``--output-dir``.
        detectors: whether the script compares a choice of detectors (``--detectors``).
    """
    parser.add_argument("--output-dir", default=output_dir, help=f"checkpoints and JSON of the run (default: {output_dir})")
    if detectors:
        parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the generated images")
    parser.add_argument(
        "--threads", type=thread_count, default=DEFAULT_THREADS,
        help=f"torch CPU threads (default: {DEFAULT_THREADS}, min(2, CPU count), as the documented runs)",
    )
    parser.add_argument(
        "--no-check", dest="check", action="store_false",
        help="print and write the figures, exit 0 whatever they are (default: exit 1 when a figure lies "
        "outside the threshold the docs state)",
    )


def prepare_run(args: argparse.Namespace) -> None:
    """Logging at WARNING, ``--threads`` torch threads, and the output folder.

    Args:
        args: the parsed command line of :func:`add_common_arguments`.
    """
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)


def mmdet_config(detector: str):
    """mmdetection's RSB config of ``detector`` (an mmcv ``Config``), from mmdetection's installed configs.

    Args:
        detector: one of ``DETECTORS``.
    """
    from mmcv import Config

    import mmdet

    return Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", MMDET_CONFIGS[detector]))


def library_versions() -> Dict[str, str]:
    """The versions each report records: mmdetection, mmcv and torch."""
    import mmcv
    import mmdet

    return {"mmdet": mmdet.__version__, "mmcv": mmcv.__version__, "torch": torch.__version__}


# ---- threshold checks ----------------------------------------------------------------------------
def _shown(value: object) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def failure_line(subject: str, quantity: str, measured: object, threshold: str) -> str:
    """One line naming a figure outside its threshold.

    Args:
        subject: what was measured, e.g. ``"mask_rcnn image 1"``.
        quantity: the figure, e.g. ``"max box diff (px)"``.
        measured: its value.
        threshold: the condition it had to meet, e.g. ``"<= 6.103515625e-05"``.
    """
    return f"{subject}: {quantity} = {_shown(measured)}, outside the threshold {threshold}"


def check_at_most(failures: List[str], subject: str, quantity: str, measured: Optional[float], limit: float) -> None:
    """Append a failure line when ``measured`` is missing, NaN or above ``limit``.

    Args:
        failures: the lines so far.
        subject: what was measured.
        quantity: the figure.
        measured: its value.
        limit: the largest value allowed.
    """
    if measured is None or not measured <= limit:
        failures.append(failure_line(subject, quantity, measured, f"<= {_shown(limit)}"))


def check_at_least(failures: List[str], subject: str, quantity: str, measured: Optional[float], limit: float) -> None:
    """Append a failure line when ``measured`` is missing, NaN or below ``limit`` (arguments as
    :func:`check_at_most`)."""
    if measured is None or not measured >= limit:
        failures.append(failure_line(subject, quantity, measured, f">= {_shown(limit)}"))


def check_equal(failures: List[str], subject: str, quantity: str, measured: object, expected: object) -> None:
    """Append a failure line when ``measured`` differs from ``expected`` (arguments as
    :func:`check_at_most`)."""
    if measured != expected:
        failures.append(failure_line(subject, quantity, measured, f"== {_shown(expected)}"))


