"""A trained model's class names and category ids, its *model metadata*, kept with the model (docs/inference_and_publishing.md,
"Class names kept with the model"). Category ids are ints in memory (:func:`parse_model_metadata`)
and strings where written, as JSON and YAML keep them (:func:`storable_model_metadata`).
"""

import copy
import json
import logging
from typing import Any, Dict, Mapping, Optional

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..utils.errors import first_items
from .tensor_files import WeightFileError, load_tensor_file

logger = logging.getLogger(__name__)


METADATA_KEY = "metadata"  # checkpoint key, safetensors header key and LazyConfig node
_CLASSES = "thing_classes"
_IDS = "thing_dataset_id_to_contiguous_id"


def parse_model_metadata(raw: Any, source: str) -> Optional[Dict[str, Any]]:
    """Check stored model metadata and bring it into its in-memory form.

    Args:
        raw: the stored value (a dict or OmegaConf node; ids may be strings), or None or empty.
        source: what it was read from (file name, config key), for error messages.

    Returns:
        the metadata with int category ids, or None when ``raw`` holds none.

    Raises:
        ValueError: malformed metadata; the message names ``source`` and the key.
    """
    if isinstance(raw, (DictConfig, ListConfig)):
        raw = OmegaConf.to_container(raw, resolve=True)
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"{source}: model metadata is a {type(raw).__name__}; expected a dict")
    if not raw:
        return None
    classes, id_map = raw.get(_CLASSES), raw.get(_IDS)
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{source}: model metadata {_CLASSES} = {classes!r}; expected a list of class names")
    if id_map is None:
        return {_CLASSES: list(classes)}
    if not isinstance(id_map, dict):
        raise ValueError(f"{source}: model metadata {_IDS} is a {type(id_map).__name__}; expected a dict")
    parsed: Dict[int, int] = {}
    for key, value in id_map.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: model metadata {_IDS}[{key!r}] = {value!r}; expected a class index")
        try:
            parsed[int(key)] = value
        except (TypeError, ValueError):
            message = f"{source}: model metadata {_IDS} has the key {key!r}; expected a category id"
            raise ValueError(message) from None
    if sorted(parsed.values()) != list(range(len(classes))):
        raise ValueError(
            f"{source}: model metadata {_IDS} maps to the class indices {sorted(parsed.values())}; "
            f"expected each of 0..{len(classes) - 1} once (one per thing_classes entry)"
        )
    return {_CLASSES: list(classes), _IDS: parsed}


def storable_model_metadata(metadata: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """Model metadata as it is written: category ids as string keys, in class-index order.

    Args:
        metadata: parsed or stored model metadata, or None.

    Returns:
        a new dict, or None.
    """
    if not metadata:
        return None
    stored: Dict[str, Any] = {_CLASSES: list(metadata[_CLASSES])}
    if metadata.get(_IDS):  # an empty map (a data set without category ids) is not stored
        by_index = sorted(metadata[_IDS].items(), key=lambda kv: int(kv[1]))
        stored[_IDS] = {str(k): int(v) for k, v in by_index}
    return stored


def training_model_metadata(cfg) -> Optional[Dict[str, Any]]:
    """The model metadata of a LazyConfig's (first) training data set, checked, in stored form.

    Args:
        cfg: a LazyConfig whose ``dataloader.train.dataset.names`` are registered in this process.

    Returns:
        the metadata; None when the config has no training data set or it has no ``thing_classes``.
    """
    names = OmegaConf.select(cfg, "dataloader.train.dataset.names")
    if not names:
        return None
    name = names if isinstance(names, str) else names[0]
    catalog = MetadataCatalog.get(name)
    if not catalog.get(_CLASSES, None):
        return None
    raw = {_CLASSES: [str(c) for c in catalog.thing_classes], _IDS: catalog.get(_IDS, None) or None}
    return storable_model_metadata(parse_model_metadata(raw, f"data set {name!r}"))


def config_model_metadata(cfg, source: str = "config") -> Optional[Dict[str, Any]]:
    """The model metadata a LazyConfig records (its top-level ``metadata`` node), parsed.

    Args:
        cfg: a loaded LazyConfig, e.g. the ``config.yaml`` that a training run saved.
        source: the config's name, for error messages.
    """
    return parse_model_metadata(cfg.get(METADATA_KEY, None), f"{source}: {METADATA_KEY}")


def metadata_to_safetensors_header(metadata: Optional[Mapping[str, Any]]) -> Optional[Dict[str, str]]:
    """``{"metadata": JSON text}`` for a safetensors header; None when there is no metadata.

    A single entry: safetensors writes the entries of its header in no fixed order, and a file
    whose bytes depend only on its content keeps its hash (and so its published name).
    """
    stored = storable_model_metadata(metadata)
    return {METADATA_KEY: json.dumps(stored, sort_keys=True)} if stored else None


def read_model_metadata(path: str, loaded: Any = None) -> Optional[Dict[str, Any]]:
    """The model metadata stored in a checkpoint or published file; None when it holds none.

    Args:
        path: a training checkpoint, a published ``.pth`` or ``.safetensors`` file (only
            its header is read), or a converted mmdetection checkpoint (read tensors-only).
        loaded: the content of a file other than ``.safetensors``, when already loaded.
    """
    from safetensors import SafetensorError, safe_open

    path = str(path)
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt") as f:
                text = (f.metadata() or {}).get(METADATA_KEY)
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightFileError(f"{path}: not a readable safetensors file ({e})") from e
        try:
            loaded = {METADATA_KEY: None if text is None else json.loads(text)}
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: header entry {METADATA_KEY!r} is not JSON ({e})") from e
    loaded = load_tensor_file(path) if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise WeightFileError(f"{path}: expected a dict checkpoint, got {type(loaded).__name__}")
    return parse_model_metadata(loaded.get(METADATA_KEY), f"{path}: {METADATA_KEY}")


def detectron2_metadata(
    stored: Optional[Mapping[str, Any]], fallback: Optional[Metadata] = None, *, name: str = "model"
) -> Optional[Metadata]:
    """The ``Metadata`` a predictor exposes: the model's own when stored, else ``fallback``.

    Args:
        stored: parsed model metadata (:func:`parse_model_metadata`), or None.
        fallback: the metadata of the data set the config names, used when nothing is stored.
        name: the ``name`` of the returned Metadata (e.g. the checkpoint file).

    Returns:
        a new, unregistered :class:`~detectron2.data.catalog.Metadata`, or ``fallback``.
    """
    if not stored:
        return fallback
    metadata = Metadata(name=name, **copy.deepcopy(dict(stored)))
    if fallback is not None and fallback.get(_CLASSES, None) not in (None, metadata.thing_classes):
        shown = first_items(metadata.thing_classes)
        logger.info("Class names from %s (%s) instead of those of %s", name, shown, fallback.name)
    return metadata


class ModelMetadataState:
    """Model metadata as a checkpointable: ``AtomicCheckpointer(..., metadata=ModelMetadataState(...))``
    saves it under :data:`METADATA_KEY` with every checkpoint (periodic, final, on signal).

    Args:
        metadata: model metadata (stored or parsed form), or None to store none.
    """

    def __init__(self, metadata: Optional[Mapping[str, Any]]):
        self.metadata = storable_model_metadata(metadata)

    def state_dict(self) -> Dict[str, Any]:
        return dict(self.metadata or {})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """On resume: keep the metadata of the data set in use now; log when it differs."""
        resumed = storable_model_metadata(parse_model_metadata(state, "resumed checkpoint"))
        if resumed != self.metadata:
            logger.warning(
                "The resumed checkpoint was trained on other classes (%s); checkpoints from now "
                "on store those of the current training set (%s)",
                first_items(resumed[_CLASSES]) if resumed else "none stored",
                first_items(self.metadata[_CLASSES]) if self.metadata else "none",
            )
