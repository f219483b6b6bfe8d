"""Load the ``weights`` argument of :class:`TimmResNet` into a timm ResNet by timm's key names
(sources: docs/backbone.md), and the input normalization that goes with timm weights.

Files are read tensors-only by :func:`~rsb_backbone.checkpoint.tensor_files.load_tensor_file`, not by timm's
loaders: their errors do not name the file, they do not refuse Detectron2 ``.pkl`` files, and
their strict load reports a misfit as a many-line list.
"""

import logging
import os
import re
from typing import Dict, List, Union
from urllib.parse import urlparse

import torch
from torch import nn

from ...checkpoint.tensor_files import WeightFileError, load_tensor_file
from ...utils.errors import first_items, one_line_summary

logger = logging.getLogger(__name__)

_WEIGHT_FILE_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl")
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # tried in order, as timm does
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's name-<sha256 prefix>.ext


def _download_from_hub(name: str) -> str:
    """The local copy of a timm pretrained name's hub file, fetched by ``huggingface_hub`` into its
    cache (``HF_HUB_CACHE``) as timm itself does."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from timm.models import get_pretrained_cfg, list_pretrained

    try:
        hf_hub_id = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
    except RuntimeError:  # a known architecture with an unknown tag
        hf_hub_id = None
    if not hf_hub_id:
        raise ValueError(
            f"weights={name!r} is neither an existing file nor a timm pretrained name with hub "
            f"weights (e.g. {', '.join(list_pretrained('resnet50.*'))})"
        )
    repo_id, _, revision = hf_hub_id.partition("@")  # timm's "repo@revision" form
    for filename in _HUB_FILENAMES:
        try:
            return hf_hub_download(repo_id, filename, revision=revision or None)
        except Exception as e:
            if isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
                continue  # the repository has no file of that name
            raise WeightFileError(  # offline or unreachable without a cached copy, network errors
                f"weights={name!r}: could not fetch {hf_hub_id}/{filename} from the Hugging Face "
                f"hub and no cached copy exists ({type(e).__name__}); download it on a connected "
                f"machine (or set HF_HUB_CACHE to a cache holding it) or pass a local file"
            ) from e
    raise WeightFileError(f"weights={name!r}: {hf_hub_id} has none of {', '.join(_HUB_FILENAMES)}")


def _download_address(url: str) -> str:
    """The local copy of a weight file's address, in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``),
    downloaded once; a file named ``name-<hex>.ext`` is checked against that sha256 prefix, as
    torch.hub and timm check such names."""
    filename = os.path.basename(urlparse(url).path)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if os.path.isfile(cached):
        return cached
    match = _HASH_IN_NAME.search(filename)
    try:  # download_url_to_file writes a temporary file and renames it: no half-written copy
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, hash_prefix=match.group(1) if match else None)
    except Exception as e:  # no network, HTTP errors, hash mismatch
        raise WeightFileError(
            f"weights={url!r}: download failed ({type(e).__name__}: {one_line_summary(e)}); put "
            f"the file at {cached} or pass a local file"
        ) from e
    return cached


def resolve_weights_file(weights: str) -> str:
    """Return a local file path for ``weights`` (a path, an address or a timm pretrained name)."""
    if weights.startswith(("https://", "http://")):
        return _download_address(weights)
    path = os.path.expanduser(weights)
    if os.path.exists(path) or path.endswith(_WEIGHT_FILE_EXTENSIONS) or os.sep in path or path[:1] == ".":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: backbone weight file does not exist")
        return path
    return _download_from_hub(weights)


def load_backbone_weights(model: nn.Module, weights: str) -> None:
    """Load ``weights`` (as for :class:`TimmResNet`) into a timm ResNet; ``fc`` stays as is.

    Raises:
        WeightFileError: naming the file when it is unreadable or unsafe, when no key matches, or
            when a tensor has the wrong shape or is missing (``num_batches_tracked`` excepted; extra
            keys are only logged).
    """
    from timm.models import clean_state_dict

    path = resolve_weights_file(weights)
    checkpoint = load_tensor_file(path)
    if isinstance(checkpoint, dict):  # unwrap a training checkpoint
        containers = [checkpoint.get(key) for key in ("state_dict", "model", "state_dict_ema")]
        checkpoint = next((c for c in containers if isinstance(c, dict) and c), checkpoint)
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise WeightFileError(
            f"{path}: expected a state dict of tensors (optionally under 'state_dict' or 'model'), "
            f"got {type(checkpoint).__name__}"
        )
    state_dict = clean_state_dict(checkpoint)  # drops DDP's "module." (and torch.compile's) prefix
    if any(k.startswith("backbone.") for k in state_dict):  # mmpretrain / mmcls classifier
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    state_dict = {
        k: v
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and not k.startswith(("fc.", "head.", "neck."))
    }
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    matched = [k for k in expected if k in state_dict]
    if not matched:
        raise WeightFileError(
            f"{path}: no key matches the backbone (file keys look like "
            f"{', '.join(list(state_dict)[:3])}); expected timm/torchvision ResNet names such as "
            f"conv1.weight, layer1.0.conv1.weight"
        )
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in matched
        if state_dict[k].shape != expected[k].shape
    ]
    if mismatched:
        raise WeightFileError(
            f"{path}: {len(mismatched)} tensors have the wrong shape for this architecture, "
            f"first: {mismatched[0]} (file vs model)"
        )
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightFileError(
            f"{path}: {len(missing)} backbone tensors are missing from the file, first: {missing[0]}"
        )
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        logger.warning(
            "%s: ignoring %d keys that the backbone does not have: %s",
            path,
            len(unexpected),
            first_items(unexpected, 10),
        )
    model.load_state_dict({k: state_dict[k] for k in matched}, strict=False)
    logger.info("Loaded %d backbone tensors from %s", len(matched), path)


def pixel_normalization(pretrained_name: str = "resnet50.a1_in1k") -> Dict[str, Union[List[float], str]]:
    """Detectron2's ``pixel_mean``, ``pixel_std`` and ``input_format`` for a timm model.

    timm's statistics are for RGB in [0, 1], Detectron2's for 0-255 pixels, hence the factor 255
    (ImageNet's give mmdetection's mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375]).

    Args:
        pretrained_name: a timm name with or without tag (the default tag is used without).

    Returns:
        dict with ``pixel_mean``, ``pixel_std`` (3 floats each, RGB order) and ``input_format`` "RGB".
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(pretrained_name)
    if cfg is None:
        raise ValueError(f"{pretrained_name!r} has no timm pretrained config to take statistics from")
    if tuple(cfg.input_size)[0] != 3:
        raise ValueError(f"{pretrained_name!r} takes {cfg.input_size[0]}-channel input; expected RGB")
    return {
        "pixel_mean": [round(m * 255.0, 6) for m in cfg.mean],
        "pixel_std": [round(s * 255.0, 6) for s in cfg.std],
        "input_format": "RGB",
    }
