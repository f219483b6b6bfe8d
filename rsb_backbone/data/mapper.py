"""Data mappers for unreadable images: training skips them, evaluation names them in one line."""

import logging
from typing import Any, Dict, Optional, Set, Tuple

from detectron2.data import DatasetMapper

from ..utils.errors import UserInputError, one_line_summary

logger = logging.getLogger(__name__)


# PIL raises OSError (unidentified image, truncated data, missing file) or, for some broken PNGs, SyntaxError.
_UNREADABLE = (OSError, SyntaxError)


def _file_and_reason(record: Dict[str, Any], error: BaseException) -> Tuple[str, str]:
    return record.get("file_name", "<no file_name>"), f"{type(error).__name__}: {one_line_summary(error)}"


class SkippingDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) that returns None for an image it cannot
    read, for training (``MapDataset`` then samples another): finding corrupt files beforehand would
    decode the whole data set. Each is logged once per process; ``num_skipped`` counts every skip."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_skipped = 0
        self._unreadable_files: Set[str] = set()

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        try:
            return super().__call__(dataset_dict)
        except _UNREADABLE as e:
            file_name, reason = _file_and_reason(dataset_dict, e)
            self.num_skipped += 1
            if file_name not in self._unreadable_files:
                self._unreadable_files.add(file_name)
                logger.warning(
                    "Skipping unreadable image %s (%s); %d unreadable files so far in this process",
                    file_name,
                    reason,
                    len(self._unreadable_files),
                )
            return None


class UnreadableImageError(UserInputError):
    """An evaluation image that cannot be read or decoded; the message names the file."""


class EvaluationDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) that stops at an unreadable image with
    :class:`UnreadableImageError` naming the file (in training runs: exit code 2, no traceback):
    skipping it would evaluate another image twice, and COCO AP needs a prediction for every image."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except _UNREADABLE as e:
            file_name, reason = _file_and_reason(dataset_dict, e)
            raise UnreadableImageError(
                f"evaluation image {file_name} cannot be read ({reason}); evaluation needs every image of "
                f"the set: replace the file or remove the image from the data set"
            ) from e
