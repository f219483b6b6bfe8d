"""Data mappers for unreadable images and images whose file does not have the size the JSON gives:
training skips them, evaluation names them in one line."""

import logging
import re
from typing import Any, Dict, Optional, Set, Tuple

from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError

from ..utils.errors import UserInputError, one_line_summary

logger = logging.getLogger(__name__)


# PIL raises OSError (unidentified image, truncated data, missing file) or, for some broken PNGs,
# SyntaxError; Detectron2 raises SizeMismatchError for a file whose size is not the JSON's.
_UNREADABLE = (OSError, SyntaxError, SizeMismatchError)


# Detectron2's check_image_size states both sizes only in its message: "... got (W, H), expect (W, H)."
_SIZES = re.compile(r"got \((\d+), (\d+)\), expect \((\d+), (\d+)\)")


def _file_and_reason(record: Dict[str, Any], error: BaseException) -> Tuple[str, str]:
    file_name = record.get("file_name", "<no file_name>")
    if isinstance(error, SizeMismatchError):
        sizes = _SIZES.search(str(error))
        if sizes:
            file_w, file_h, json_w, json_h = sizes.groups()
            return (
                file_name,
                f"its width x height in the JSON is {json_w}x{json_h} but the file's is {file_w}x{file_h}",
            )
    return file_name, f"{type(error).__name__}: {one_line_summary(error)}"


class SkippingDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) that returns None for an image it cannot
    read or whose size is not the JSON's, for training (``MapDataset`` then samples another):
    finding such files beforehand would decode the whole data set. Each is logged once per process;
    ``num_skipped`` counts every skip."""

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
                    "Skipping image %s (%s); %d such files so far in this process",
                    file_name,
                    reason,
                    len(self._unreadable_files),
                )
            return None


class UnreadableImageError(UserInputError):
    """An evaluation image that cannot be read or decoded, or whose size is not the JSON's; the
    message names the file (and both sizes)."""


class EvaluationDatasetMapper(DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) that stops at an unreadable image, or one
    whose size is not the JSON's, with :class:`UnreadableImageError` naming the file (in training
    runs: exit code 2, no traceback):
    skipping it would evaluate another image twice, and COCO AP needs a prediction for every image."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except _UNREADABLE as e:
            file_name, reason = _file_and_reason(dataset_dict, e)
            if isinstance(e, SizeMismatchError):
                raise UnreadableImageError(
                    f"evaluation image {file_name}: {reason}; correct width/height in the JSON or the file"
                ) from e
            raise UnreadableImageError(
                f"evaluation image {file_name} cannot be read ({reason}); evaluation needs every image of "
                f"the set: replace the file or remove the image from the data set"
            ) from e
