"""Data mappers for unreadable images: training skips them, evaluation names them in one line."""

import logging
from typing import Any, Dict, Optional, Set

from detectron2.data import DatasetMapper

from ..errors import UserInputError

logger = logging.getLogger(__name__)

__all__ = ["SkippingDatasetMapper", "EvaluationDatasetMapper", "UnreadableImageError"]

# PIL raises OSError (UnidentifiedImageError, truncated data, missing file) and, for some broken
# PNGs, SyntaxError.
_UNREADABLE = (OSError, SyntaxError)


class SkippingDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` that returns None for an image it cannot read.

    Checking that every image decodes would mean reading the whole data set before training,
    so corrupt or truncated files are found here instead. On a None, Detectron2's
    ``MapDataset`` (used by ``build_detection_train_loader``) samples another image.

    Each unreadable file is logged once, with the number of distinct unreadable files seen so
    far; ``num_skipped`` counts every skip. The counts are per process: each data loader worker
    keeps its own.

    Use it for training only. At evaluation a skipped image would be replaced by another one
    and evaluated twice, so the test loader uses :class:`EvaluationDatasetMapper`, which stops
    with an error naming the file.

    Constructed like :class:`DatasetMapper`: ``SkippingDatasetMapper(cfg, is_train=True)`` or
    with its explicit keyword arguments.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_skipped = 0
        self._unreadable_files: Set[str] = set()

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """
        Args:
            dataset_dict: one image's record in Detectron2's dataset format.

        Returns:
            what :class:`DatasetMapper` returns, or None when the image file cannot be read or
            decoded.
        """
        try:
            return super().__call__(dataset_dict)
        except _UNREADABLE as e:
            file_name = dataset_dict.get("file_name", "<no file_name>")
            self.num_skipped += 1
            if file_name not in self._unreadable_files:
                self._unreadable_files.add(file_name)
                logger.warning(
                    "Skipping unreadable image %s (%s: %s); %d unreadable files so far in "
                    "this process",
                    file_name,
                    type(e).__name__,
                    " ".join(str(e).split()),
                    len(self._unreadable_files),
                )
            return None


class UnreadableImageError(UserInputError):
    """An evaluation image that cannot be read or decoded; the message names the file."""


class EvaluationDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` that reports an unreadable image in one line.

    COCO AP needs a prediction for every image of the set, and skipping one would count its
    objects as missed, so an unreadable evaluation image stops the evaluation with
    :class:`UnreadableImageError` naming the file (``train_net.py``: exit code 2, no traceback;
    checkpoints written before are kept).

    Constructed like :class:`DatasetMapper`.
    """

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except _UNREADABLE as e:
            file_name = dataset_dict.get("file_name", "<no file_name>")
            raise UnreadableImageError(
                f"evaluation image {file_name} cannot be read ({type(e).__name__}: {' '.join(str(e).split())}); "
                f"evaluation needs every image of the set: replace the file or remove the image "
                f"from the data set"
            ) from e
