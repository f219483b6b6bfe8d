"""Checkpoints: weight files read tensors-only, detector checkpoints saved atomically and loaded
strictly, their layouts, the model metadata stored with them, publishing, and mmdetection's
released detectors by name (``mmdet://``, registered with Detectron2's PathManager on import)."""

from . import catalog  # noqa: F401  registers the mmdet:// handler
from .catalog import RELEASED_CHECKPOINTS, CheckpointDownloadError, fetch_released_checkpoint

from .checkpoint_layouts import checkpoint_tensors
from .detection_checkpoint import AtomicCheckpointer, TensorsOnlyCheckpointer, load_detector_checkpoint
from .model_metadata import read_model_metadata
from .publishing import publish_checkpoint
from .tensor_files import WeightFileError, load_tensor_file

__all__ = [
    "AtomicCheckpointer",
    "CheckpointDownloadError",
    "RELEASED_CHECKPOINTS",
    "TensorsOnlyCheckpointer",
    "WeightFileError",
    "checkpoint_tensors",
    "fetch_released_checkpoint",
    "load_detector_checkpoint",
    "load_tensor_file",
    "publish_checkpoint",
    "read_model_metadata",
]
