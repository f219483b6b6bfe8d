"""Detector checkpoints: read tensors-only, saved atomically (never half-written), and loaded whole
with every key accounted for."""

import logging
import os
from typing import Any, Dict, Optional

from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.errors import first_items
from ..utils.file_io import atomic_torch_save, atomic_write_bytes
from .catalog import local_checkpoint_path
from .model_metadata import read_model_metadata
from .tensor_files import WeightFileError, load_tensor_file

logger = logging.getLogger(__name__)


class TensorsOnlyCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` (same arguments) that reads files tensors-only, never arbitrary
    pickles (:func:`~rsb_backbone.checkpoint.tensor_files.load_tensor_file`)."""

    # _load_file is the documented extension point of fvcore's Checkpointer for reading a file
    # ("Subclasses can override it"), private by name only; DetectionCheckpointer overrides it too.
    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = load_tensor_file(filename)
        if not isinstance(loaded, dict):
            raise WeightFileError(f"{filename}: expected a dict checkpoint, got {type(loaded).__name__}")
        if "model" not in loaded:
            loaded = {"model": loaded}
        loaded.setdefault("matching_heuristics", False)
        return loaded


class AtomicCheckpointer(TensorsOnlyCheckpointer):
    """:class:`DetectionCheckpointer` (same arguments) with atomic saves and tensors-only loading."""

    # fvcore's Checkpointer.save opens the final file name for writing, so a save interrupted by a
    # kill or a full disk leaves half a checkpoint under it; this is its body (the same data, file
    # name and log line) with the write made atomic. tag_last_checkpoint likewise.
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {key: obj.state_dict() for key, obj in {"model": self.model, **self.checkpointables}.items()}
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode())


class _CheckedCheckpointer(TensorsOnlyCheckpointer):
    """Refuses a checkpoint that leaves model weights missing, has extra ones, or other shapes:
    Detectron2's checkpointer only logs these, right for fine-tuning from a backbone, but a predictor
    would silently run with randomly initialized layers."""

    # _load_model is fvcore's documented hook that loads the weights and returns the incompatible
    # keys (private by name; DetectionCheckpointer overrides it too): they are checked here.
    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.missing_keys:
            problems.append(f"missing {first_items(incompatible.missing_keys)}")
        if incompatible.unexpected_keys:
            problems.append(f"not in the model {first_items(incompatible.unexpected_keys)}")
        if incompatible.incorrect_shapes:
            shapes = [f"{k}: {tuple(c)} vs {tuple(m)}" for k, c, m in incompatible.incorrect_shapes]
            problems.append(
                f"other shapes (checkpoint vs model) {first_items(shapes)}; if these are the class "
                f"layers, set the config's number of classes to the checkpoint's"
            )
        if problems:
            # The path, which DetectionCheckpointer.load keeps only in this private attribute.
            source = self._parsed_url_during_load.geturl()
            raise WeightFileError(
                f"{source}: does not fit the model built from the config: " + "; ".join(problems)
            )
        return incompatible


def load_detector_checkpoint(model: nn.Module, checkpoint: str) -> Optional[Dict[str, Any]]:
    """Load a detector checkpoint into ``model``, tensors-only (:class:`TensorsOnlyCheckpointer`).

    Args:
        model: the detector, built from the config the checkpoint was trained with.
        checkpoint: path of the checkpoint file, or a name such as ``mmdet://mask_rcnn_rsb_r50_fpn_1x``
            or an ``https://`` URL (downloaded once into a cache, :mod:`.catalog`).

    Raises:
        ValueError: ``checkpoint`` is empty, or the file's model metadata is malformed.
        FileNotFoundError: the file does not exist.
        CheckpointDownloadError: a released checkpoint that cannot be downloaded or verified.
        WeightFileError: unreadable file, or its weights do not fit ``model`` (missing or extra
            keys, other shapes); the message names the file and the keys.

    Returns:
        the model metadata stored with the weights (:mod:`rsb_backbone.checkpoint.model_metadata`), or None.
    """
    if not checkpoint:
        raise ValueError("checkpoint='': a detector checkpoint file is needed for inference")
    checkpoint = local_checkpoint_path(checkpoint)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: checkpoint file does not exist")
    extra = _CheckedCheckpointer(model).load(checkpoint, checkpointables=[])
    logger.info("Loaded the detector weights from %s", checkpoint)
    return read_model_metadata(checkpoint, extra)
