"""Checkpoints: weight files read tensors-only, detector checkpoints saved atomically and loaded
strictly, their layouts, the model metadata stored with them, and publishing."""

from .checkpoint_layouts import checkpoint_tensors
from .detection_checkpoint import AtomicCheckpointer, TensorsOnlyCheckpointer, load_detector_checkpoint
from .model_metadata import read_model_metadata
from .publishing import publish_checkpoint
from .tensor_files import WeightFileError, load_tensor_file

__all__ = [
    "AtomicCheckpointer",
    "TensorsOnlyCheckpointer",
    "WeightFileError",
    "checkpoint_tensors",
    "load_detector_checkpoint",
    "load_tensor_file",
    "publish_checkpoint",
    "read_model_metadata",
]
