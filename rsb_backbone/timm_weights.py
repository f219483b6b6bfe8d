"""Resolve the ``weights`` argument of :class:`TimmResNet` to a state dict in timm's key names.

Four sources are understood:

* a timm pretrained name such as ``"resnet50.a1_in1k"``: the file is fetched from the Hugging Face
  hub through ``huggingface_hub`` (offline, it is taken from the local hub cache);
* a local file in timm's or torchvision's layout (``conv1.weight``, ``layer1.0.bn1.weight``, ...,
  optionally with a ``fc.*`` classifier and a ``module.`` prefix), ``.safetensors`` or ``.pth``;
* a local mmpretrain/mmcls checkpoint: tensors under ``state_dict`` with a ``backbone.`` prefix and
  a ``head.*`` classifier, as in mmpretrain's RSB release;
* an ``https://`` address of such a file (OpenMMLab's downloads, say): fetched once into
  PyTorch's hub cache (``$TORCH_HOME/hub/checkpoints``), checked against the hash prefix its
  name carries, and read from there afterwards.
"""

import logging
import os
from typing import Dict, Mapping, Optional
from urllib.parse import urlparse

import torch

from .tensor_files import WeightFileError, load_tensor_file

logger = logging.getLogger(__name__)

__all__ = [
    "resolve_weights_file",
    "read_backbone_state_dict",
    "check_state_dict_fits",
    "is_weight_file_path",
    "is_weight_url",
]

_WEIGHT_FILE_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl")
# Hub files tried in order; timm publishes safetensors for every RSB tag.
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def is_weight_file_path(weights: str) -> bool:
    """Whether ``weights`` names a local file rather than a timm pretrained name."""
    return (
        os.path.exists(weights)
        or weights.endswith(_WEIGHT_FILE_EXTENSIONS)
        or os.sep in weights
        or weights.startswith(("~", "."))
    )


def _download_from_hub(pretrained_name: str) -> str:
    import timm
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(pretrained_name)
    except RuntimeError:  # a known architecture with an unknown tag
        pretrained_cfg = None
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        known = ", ".join(timm.list_pretrained("resnet50.*"))
        raise ValueError(
            f"weights={pretrained_name!r} is neither an existing file nor a timm pretrained name "
            f"with hub weights (e.g. {known})"
        )
    repo_id = pretrained_cfg.hf_hub_id
    last_error: Optional[Exception] = None
    for filename in _HUB_FILENAMES:
        try:
            path = hf_hub_download(repo_id=repo_id, filename=filename)
        except LocalEntryNotFoundError as e:  # offline or unreachable, and not in the cache
            raise WeightFileError(
                f"weights={pretrained_name!r}: could not fetch {repo_id}/{filename} from the "
                f"Hugging Face hub and no cached copy exists; download it on a connected machine "
                f"(or set HF_HUB_CACHE to a cache holding it) or pass a local file"
            ) from e
        except EntryNotFoundError as e:  # the repository has no file of that name
            last_error = e
            continue
        except Exception as e:  # network errors, offline mode without a cached copy
            raise WeightFileError(
                f"weights={pretrained_name!r}: could not fetch {repo_id}/{filename} from the "
                f"Hugging Face hub and no cached copy exists ({type(e).__name__}); download it "
                f"on a connected machine or pass a local file"
            ) from e
        logger.info("Using hub weights %s from %s", pretrained_name, path)
        return path
    raise WeightFileError(f"weights={pretrained_name!r}: {repo_id} has no weight file ({last_error})")


def is_weight_url(weights: str) -> bool:
    """Whether ``weights`` is a web address of a weight file."""
    return weights.startswith(("https://", "http://"))


def _download_url(url: str) -> str:
    """The hub-cache copy of ``url``, downloaded first if it is not there yet."""
    filename = os.path.basename(urlparse(url).path)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if os.path.isfile(cached):
        logger.info("Using cached weights %s for %s", cached, url)
        return cached
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    hash_match = torch.hub.HASH_REGEX.search(filename)  # name-<sha256 prefix>.pth, as OpenMMLab names files
    try:
        torch.hub.download_url_to_file(url, cached, hash_prefix=hash_match.group(1) if hash_match else None)
    except Exception as e:  # no network, HTTP errors, hash mismatch
        raise WeightFileError(
            f"weights={url!r}: download failed ({type(e).__name__}: {e}); put the file at {cached} "
            f"or pass a local file"
        ) from e
    return cached


def resolve_weights_file(weights: str) -> str:
    """Return a local file path for ``weights`` (a path, an address or a timm pretrained name)."""
    if is_weight_url(weights):
        return _download_url(weights)
    if is_weight_file_path(weights):
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: backbone weight file does not exist")
        return path
    return _download_from_hub(weights)


def _unwrap_container(checkpoint, path: str) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model", "state_dict_ema"):
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and inner:
                return inner
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise WeightFileError(
        f"{path}: expected a state dict of tensors (optionally under 'state_dict' or 'model'), "
        f"got {type(checkpoint).__name__}"
    )


def _to_timm_names(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Normalize key names of the supported layouts to timm's ResNet names, classifier dropped."""
    keys = list(state_dict.keys())
    if any(k.startswith("module.") for k in keys):  # saved from DistributedDataParallel
        state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if any(k.startswith("backbone.") for k in state_dict):  # mmpretrain / mmcls classifier
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    return {
        k: v
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and not k.startswith(("fc.", "head.", "neck."))
    }


def read_backbone_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a local weight file of any supported layout as a timm-named state dict.

    Args:
        path: a ``.safetensors`` or PyTorch file in timm, torchvision or mmpretrain layout.

    Returns:
        dict mapping timm parameter/buffer names to tensors, with the classifier dropped.
    """
    checkpoint = load_tensor_file(path)
    return _to_timm_names(_unwrap_container(checkpoint, path))


def check_state_dict_fits(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: str
) -> None:
    """Raise :class:`WeightFileError` unless ``state_dict`` provides every tensor of ``expected``.

    Missing ``num_batches_tracked`` counters are tolerated (they do not affect the function);
    unexpected keys are logged, not fatal.
    """
    matched = [k for k in expected if k in state_dict]
    if not matched:
        sample = ", ".join(list(state_dict)[:3])
        raise WeightFileError(
            f"{path}: no key matches the backbone (file keys look like {sample}); expected timm/"
            f"torchvision ResNet names such as conv1.weight, layer1.0.conv1.weight"
        )
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
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
            ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""),
        )
