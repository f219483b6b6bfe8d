"""mmdetection's released RSB detectors by name: ``mmdet://mask_rcnn_rsb_r50_fpn_1x`` is accepted
wherever a checkpoint is (``train.init_checkpoint``, ``MODEL.WEIGHTS``, the predictors, the
publisher), as Detectron2 accepts ``detectron2://`` and ``https://`` (docs/mmdet_checkpoints.md).

The first use downloads mmdetection's file from its release URL, checks its size and the SHA-256
prefix in its name, converts it to the matching ``_mmdet`` config's layout
(:func:`~rsb_backbone.mmdet_conversion.convert_mmdet_checkpoint`) and keeps both files in the
cache folder (:func:`cache_dir`); later uses read the cache. Importing this module (done by
``rsb_backbone.checkpoint``) registers the ``mmdet://`` handler with Detectron2's ``PathManager``.

Environment variables:
    RSB_DETECTRON2_CACHE: the cache folder (default: ``rsb_detectron2`` under torch hub's
        ``checkpoints`` folder, ``$TORCH_HOME/hub/checkpoints``).
    RSB_MMDET_BASE_URL: a mirror of mmdetection's download site, holding the same relative paths
        (default :data:`MMDET_BASE_URL`).
"""

import contextlib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler, file_lock

from ..utils.errors import one_line_summary
from ..utils.file_io import atomic_write
from .tensor_files import WeightFileError

logger = logging.getLogger(__name__)

SCHEME = "mmdet://"
MMDET_BASE_URL = "https://download.openmmlab.com/mmdetection/v2.0/"
CACHE_ENV = "RSB_DETECTRON2_CACHE"
BASE_URL_ENV = "RSB_MMDET_BASE_URL"

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60  # per socket operation: a stalled server ends the download with a message


class CheckpointDownloadError(WeightFileError):
    """A released checkpoint that could not be downloaded or verified; the message names the URL
    or file, and nothing of it is left in the cache."""


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One released detector.

    Attributes:
        name: what follows ``mmdet://``.
        detector: the converter's detector name (:data:`rsb_backbone.mmdet_conversion.DETECTORS`).
        config: the LazyConfig it converts to and is evaluated with, relative to ``configs/``.
        url_path: the file's path below :data:`MMDET_BASE_URL` (or a mirror's base URL).
        sha256_prefix: the first hex digits of the file's SHA-256, as the file name ends.
        num_bytes: the file's size, or None where the publisher gives none (then the server's
            Content-Length is checked).
        box_ap, mask_ap: mmdetection's COCO val2017 AP (its metafile.yml), not measured here.
    """

    name: str
    detector: str
    config: str
    url_path: str
    sha256_prefix: str
    num_bytes: Optional[int] = None
    box_ap: Optional[float] = None
    mask_ap: Optional[float] = None

    @property
    def file_name(self) -> str:
        return self.url_path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        base = os.environ.get(BASE_URL_ENV) or MMDET_BASE_URL
        return base.rstrip("/") + "/" + self.url_path


def _rsb_release(detector: str, stamp: str, box_ap: float, mask_ap: Optional[float] = None):
    """mmdetection v2.22's RSB release of ``detector``: ``<model>_<date_time>-<sha256[:8]>.pth``
    in ``resnet_strikes_back/<model>/`` (configs/resnet_strikes_back/metafile.yml)."""
    model = f"{detector}_r50_fpn_rsb-pretrain_1x_coco"
    return ReleasedCheckpoint(
        name=f"{detector}_rsb_r50_fpn_1x",
        detector=detector,
        config=f"COCO/{detector}_rsb_r50_fpn_1x_mmdet.py",
        url_path=f"resnet_strikes_back/{model}/{model}_{stamp}.pth",
        sha256_prefix=stamp.rsplit("-", 1)[1],
        box_ap=box_ap,
        mask_ap=mask_ap,
    )


# name -> release. mmdetection publishes no file sizes: the server's Content-Length is checked.
RELEASED_CHECKPOINTS: Dict[str, ReleasedCheckpoint] = {
    r.name: r
    for r in (
        _rsb_release("faster_rcnn", "20220113_162229-32ae82a9", 40.8),
        _rsb_release("mask_rcnn", "20220113_174054-06ce8ba0", 41.2, 38.2),
        _rsb_release("cascade_mask_rcnn", "20220113_193636-8b9ad50f", 44.8, 39.9),
        _rsb_release("retinanet", "20220113_175432-bd24aae9", 39.0),
    )
}


def cache_dir() -> str:
    """The folder of downloaded and converted checkpoints: ``$RSB_DETECTRON2_CACHE``, else
    ``rsb_detectron2`` in torch hub's checkpoints folder (``$TORCH_HOME/hub/checkpoints``)."""
    return os.path.expanduser(
        os.environ.get(CACHE_ENV) or os.path.join(torch.hub.get_dir(), "checkpoints", "rsb_detectron2")
    )


def released_checkpoint(name: str) -> ReleasedCheckpoint:
    """The release called ``name`` (with or without ``mmdet://``).

    Raises:
        ValueError: no such release; the message lists the known names.
    """
    key = name[len(SCHEME) :] if name.startswith(SCHEME) else name
    if key not in RELEASED_CHECKPOINTS:
        known = ", ".join(SCHEME + n for n in RELEASED_CHECKPOINTS)
        raise ValueError(f"{name}: no released checkpoint of that name; expected one of {known}")
    return RELEASED_CHECKPOINTS[key]


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_content(release: ReleasedCheckpoint, num_bytes: int, sha256: str, source: str) -> None:
    """Raise :class:`CheckpointDownloadError` (one line naming ``source`` and both values) unless
    size and hash are the release's."""
    if release.num_bytes is not None and num_bytes != release.num_bytes:
        raise CheckpointDownloadError(f"{source}: {num_bytes} bytes, expected {release.num_bytes}")
    if not sha256.startswith(release.sha256_prefix):
        raise CheckpointDownloadError(
            f"{source}: SHA-256 {sha256} does not start with {release.sha256_prefix}, the hash in "
            f"the file name {release.file_name}"
        )


def _progress_bar(total: Optional[int], desc: str):
    """A tqdm bar on stderr (as torch hub shows downloads), or none where tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)


def _download(release: ReleasedCheckpoint, destination: str) -> None:
    """Download the release to ``destination``, which appears only once the file is complete and
    verified (:func:`~rsb_backbone.utils.file_io.atomic_write`)."""
    url = release.url

    def stream(f) -> None:
        received, expected = 0, release.num_bytes
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else expected
                logger.info("Downloading %s (%s bytes) to %s", url, expected or "unknown", destination)
                digest = hashlib.sha256()
                with _progress_bar(expected, release.file_name) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                        f.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
        except http.client.IncompleteRead:
            pass  # the connection closed early: reported below with the byte counts
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            cause = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(e, urllib.error.HTTPError):
                reason = f"HTTP {e.code} {e.reason}"
            elif isinstance(cause, OSError) and cause.strerror:
                reason = cause.strerror  # "Connection refused", without the errno
            else:
                reason = one_line_summary(cause)
            raise CheckpointDownloadError(
                f"{url}: cannot download ({reason}); without network, download it "
                f"elsewhere and place it at {destination}"
            ) from e
        if expected is not None and received != expected:
            raise CheckpointDownloadError(
                f"{url}: the connection ended after {received} of {expected} bytes; nothing was kept"
            )
        _check_content(release, received, digest.hexdigest(), f"{url} (downloaded)")

    atomic_write(destination, stream)


def fetch_released_checkpoint(name: str) -> str:
    """The converted Detectron2 checkpoint of a release: from the cache, or downloaded, verified
    and converted into it first. Processes sharing the cache wait for each other (a file lock).

    Args:
        name: ``mmdet://NAME`` or ``NAME`` (see :data:`RELEASED_CHECKPOINTS`).

    Returns:
        the path of the converted checkpoint in :func:`cache_dir`.

    Raises:
        ValueError: unknown name.
        CheckpointDownloadError: the file cannot be downloaded, or its size or hash is wrong.
        MMDetConversionError: the file does not convert to the release's config.
    """
    from ..config import get_config_file
    from ..mmdet_conversion import convert_mmdet_checkpoint  # converts with this package's checkpoint code

    release = released_checkpoint(name)
    folder = cache_dir()
    downloaded = os.path.join(folder, release.file_name)
    converted = os.path.join(folder, release.file_name[: -len(".pth")] + "_detectron2.pth")
    with file_lock(converted):
        if os.path.isfile(converted):
            logger.info("%s%s: cached in %s", SCHEME, release.name, converted)
            return converted
        if os.path.isfile(downloaded):  # an earlier download, or a file placed by hand
            source = f"{downloaded} (placed in the cache; delete it to download again)"
            _check_content(release, os.path.getsize(downloaded), _sha256_of(downloaded), source)
        else:
            _download(release, downloaded)
        convert_mmdet_checkpoint(
            downloaded, converted, detector=release.detector, config_file=get_config_file(release.config)
        )
    logger.info("%s%s converted to %s", SCHEME, release.name, converted)
    return converted


class MMDetCheckpointHandler(PathHandler):
    """Resolves ``mmdet://NAME`` to the converted checkpoint (:func:`fetch_released_checkpoint`)
    for Detectron2's ``PathManager``, as Detectron2's ``ModelCatalogHandler`` resolves ``catalog://``."""

    def _get_supported_prefixes(self):
        return [SCHEME]

    def _get_local_path(self, path: str, **kwargs) -> str:
        self._check_kwargs({k: v for k, v in kwargs.items() if k != "force"})
        return fetch_released_checkpoint(path)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs):
        return PathManager.open(self._get_local_path(path), mode, buffering=buffering, **kwargs)

    def _exists(self, path: str, **kwargs) -> bool:
        return path[len(SCHEME) :] in RELEASED_CHECKPOINTS


def local_checkpoint_path(checkpoint: str) -> str:
    """A checkpoint as a local file: ``mmdet://``, ``detectron2://`` and ``https://`` names through
    Detectron2's ``PathManager`` (downloaded once into a cache), anything else unchanged.

    Args:
        checkpoint: a path or a name.
    """
    checkpoint = os.fspath(checkpoint)
    if "://" not in checkpoint or os.path.exists(checkpoint):
        return checkpoint
    return PathManager.get_local_path(checkpoint)


PathManager.register_handler(MMDetCheckpointHandler())
