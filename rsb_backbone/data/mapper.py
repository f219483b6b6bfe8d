"""Data mappers for unreadable images, images over PIL's size limit and images whose file does not
have the size the JSON gives: training skips them, evaluation names them in one line."""

import logging
import os
import re
from typing import Any, Dict, Optional, Set, Tuple

from PIL import Image

from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError

from ..utils.errors import UserInputError, one_line_summary

logger = logging.getLogger(__name__)


# PIL raises OSError (unidentified image, truncated data, missing file) or, for some broken PNGs,
# SyntaxError, and DecompressionBombError for an image of more than twice Image.MAX_IMAGE_PIXELS;
# Detectron2 raises SizeMismatchError for a file whose size is not the JSON's.
_UNREADABLE = (OSError, SyntaxError, Image.DecompressionBombError, SizeMismatchError)

# The environment variable that sets PIL's Image.MAX_IMAGE_PIXELS in every process that maps images
# (training processes and their DataLoader workers inherit it): a number of pixels, or "none".
MAX_IMAGE_PIXELS_VARIABLE = "RSB_MAX_IMAGE_PIXELS"
_LARGE_IMAGE_HINT = (
    f"PIL refuses images of more than twice its Image.MAX_IMAGE_PIXELS; allow larger ones with the "
    f"environment variable {MAX_IMAGE_PIXELS_VARIABLE}=PIXELS, or {MAX_IMAGE_PIXELS_VARIABLE}=none for no limit"
)


def max_image_pixels_from_environment() -> Tuple[bool, Optional[int]]:
    """``(given, limit)`` of :data:`MAX_IMAGE_PIXELS_VARIABLE`: whether it is set, and the value for
    PIL's ``Image.MAX_IMAGE_PIXELS`` (None: no limit).

    Raises:
        ValueError: the variable is neither a positive whole number nor "none" (one line naming it).
    """
    text = os.environ.get(MAX_IMAGE_PIXELS_VARIABLE, "").strip()
    if not text:
        return False, None
    if text.lower() == "none":
        return True, None
    if not text.isdigit() or int(text) == 0:
        raise ValueError(
            f"{MAX_IMAGE_PIXELS_VARIABLE}={text!r}: expected a positive number of pixels or 'none'"
        )
    return True, int(text)


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
    if isinstance(error, Image.DecompressionBombError):
        return file_name, f"{one_line_summary(error)} {_LARGE_IMAGE_HINT}"
    return file_name, f"{type(error).__name__}: {one_line_summary(error)}"


class _PixelLimitMixin:
    """Applies :data:`MAX_IMAGE_PIXELS_VARIABLE` (read where the mapper is built) in whichever
    process maps an image: a DataLoader worker started by spawn has PIL's default otherwise."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pixel_limit = max_image_pixels_from_environment()

    def __call__(self, dataset_dict: Dict[str, Any]):
        given, limit = self._pixel_limit
        if given:
            Image.MAX_IMAGE_PIXELS = limit
        return super().__call__(dataset_dict)


class SkippingDatasetMapper(_PixelLimitMixin, DatasetMapper):
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


class EvaluationDatasetMapper(_PixelLimitMixin, DatasetMapper):
    """Detectron2's :class:`DatasetMapper` (same arguments) that stops at an unreadable image, or one
    whose size is not the JSON's, with :class:`UnreadableImageError` naming the file (in training
    runs: exit code 2, no traceback):
    skipping it would evaluate another image twice, and COCO AP needs a prediction for every image."""

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        try:
            return super().__call__(dataset_dict)
        except _UNREADABLE as e:
            file_name, reason = _file_and_reason(dataset_dict, e)
            if isinstance(e, Image.DecompressionBombError):
                raise UnreadableImageError(f"evaluation image {file_name} is too large: {reason}") from e
            if isinstance(e, SizeMismatchError):
                raise UnreadableImageError(
                    f"evaluation image {file_name}: {reason}; correct width/height in the JSON or the file"
                ) from e
            raise UnreadableImageError(
                f"evaluation image {file_name} cannot be read ({reason}); evaluation needs every image of "
                f"the set: replace the file or remove the image from the data set"
            ) from e
