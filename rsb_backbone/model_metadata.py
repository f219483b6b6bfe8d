"""A trained model's class names and its data set's category ids, kept with the model.

The data set a model was trained on is registered only in the training process (Detectron2's
``MetadataCatalog``). What inference needs of it travels with the model as a small JSON-able
dict, its *model metadata*::

    {"thing_classes": ["box", "ring", "wedge"],
     "thing_dataset_id_to_contiguous_id": {"3": 0, "7": 1, "42": 2}}

``thing_classes`` is indexed by the model's class index; the optional
``thing_dataset_id_to_contiguous_id`` maps the data set's category ids to those indices (keys are
strings in stored form, as JSON writes them; :func:`parse_model_metadata` turns them back into
ints). Where it is stored:

- training checkpoints and published ``.pth`` files: under :data:`METADATA_KEY` next to ``"model"``;
- published ``.safetensors`` files: as JSON in the header's string metadata, under
  :data:`METADATA_KEY`;
- the ``config.yaml`` that ``train_net.py`` saves: the top-level ``metadata`` node.

Predictors use it in preference to the data set their config names (:func:`detectron2_metadata`).
"""

import json
import logging
from typing import Any, Dict, Mapping, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

logger = logging.getLogger(__name__)

__all__ = [
    "METADATA_KEY",
    "ModelMetadataState",
    "collect_model_metadata",
    "config_model_metadata",
    "detectron2_metadata",
    "metadata_from_safetensors_header",
    "metadata_to_safetensors_header",
    "parse_model_metadata",
    "read_model_metadata",
    "storable_model_metadata",
    "training_model_metadata",
]

METADATA_KEY = "metadata"  # checkpoint key, safetensors header key and LazyConfig node
_CLASSES = "thing_classes"
_IDS = "thing_dataset_id_to_contiguous_id"


def parse_model_metadata(raw: Any, source: str) -> Optional[Dict[str, Any]]:
    """Check stored model metadata and bring it into its in-memory form.

    Args:
        raw: the stored value: a dict (or OmegaConf node) with ``thing_classes`` and optionally
            ``thing_dataset_id_to_contiguous_id`` (keys may be strings); None or empty for none.
        source: what it was read from (file name, config key), for error messages.

    Returns:
        ``{"thing_classes": [str, ...], "thing_dataset_id_to_contiguous_id": {int: int}}`` (the
        second key only when stored), or None when ``raw`` holds no metadata.

    Raises:
        ValueError: malformed metadata; the message names ``source`` and the key.
    """
    if raw is None:
        return None
    raw = _plain(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: model metadata is a {type(raw).__name__}; expected a dict")
    if not raw:
        return None
    classes = raw.get(_CLASSES)
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{source}: model metadata {_CLASSES} = {classes!r}; expected a list of class names")
    parsed: Dict[str, Any] = {_CLASSES: list(classes)}
    id_map = raw.get(_IDS)
    if id_map is not None:
        parsed[_IDS] = _parse_id_map(id_map, len(classes), source)
    return parsed


def _parse_id_map(id_map: Any, num_classes: int, source: str) -> Dict[int, int]:
    if not isinstance(id_map, dict):
        raise ValueError(f"{source}: model metadata {_IDS} is a {type(id_map).__name__}; expected a dict")
    parsed: Dict[int, int] = {}
    for key, value in id_map.items():
        try:
            dataset_id = int(key)
        except (TypeError, ValueError):
            raise ValueError(
                f"{source}: model metadata {_IDS} has the key {key!r}; expected a category id"
            ) from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: model metadata {_IDS}[{key!r}] = {value!r}; expected a class index")
        parsed[dataset_id] = value
    if sorted(parsed.values()) != list(range(num_classes)):
        raise ValueError(
            f"{source}: model metadata {_IDS} maps to the class indices {sorted(parsed.values())}; "
            f"expected each of 0..{num_classes - 1} once (one per thing_classes entry)"
        )
    return parsed


def _plain(value: Any) -> Any:
    """OmegaConf nodes as plain Python containers; other values unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def storable_model_metadata(metadata: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """Model metadata in stored form (category ids as string keys, as JSON and YAML keep them).

    Args:
        metadata: parsed or stored model metadata, or None.

    Returns:
        a new dict of lists, strings and ints, or None.
    """
    if not metadata:
        return None
    stored: Dict[str, Any] = {_CLASSES: list(metadata[_CLASSES])}
    if metadata.get(_IDS) is not None:
        by_index = sorted(metadata[_IDS].items(), key=lambda item: int(item[1]))
        stored[_IDS] = {str(k): int(v) for k, v in by_index}
    return stored


def collect_model_metadata(dataset_name: str) -> Optional[Dict[str, Any]]:
    """The model metadata of a registered data set, in stored form.

    Args:
        dataset_name: a name in Detectron2's ``MetadataCatalog`` (e.g. the training set).

    Returns:
        its ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` (when it has one), or
        None when the data set declares no ``thing_classes``.
    """
    catalog = MetadataCatalog.get(dataset_name)
    classes = catalog.get(_CLASSES, None)
    if not classes:
        return None
    metadata: Dict[str, Any] = {_CLASSES: [str(c) for c in classes]}
    id_map = catalog.get(_IDS, None)
    if id_map:
        metadata[_IDS] = dict(id_map)
    parsed = parse_model_metadata(storable_model_metadata(metadata), f"data set {dataset_name!r}")
    return storable_model_metadata(parsed)


def training_model_metadata(cfg) -> Optional[Dict[str, Any]]:
    """The model metadata of a LazyConfig's (first) training data set, in stored form.

    Args:
        cfg: a LazyConfig with ``dataloader.train.dataset.names``; the data sets must be
            registered in this process.

    Returns:
        see :func:`collect_model_metadata`; None when the config has no training data set.
    """
    dataset = cfg.dataloader.get("train", {}).get("dataset", None)
    names = dataset.get("names", None) if dataset is not None else None
    if not names:
        return None
    first = names if isinstance(names, str) else list(names)[0]
    return collect_model_metadata(first)


def config_model_metadata(cfg, source: str = "config") -> Optional[Dict[str, Any]]:
    """The model metadata a LazyConfig records (its top-level ``metadata`` node), parsed.

    Args:
        cfg: a loaded LazyConfig, e.g. the ``config.yaml`` that ``train_net.py`` saved.
        source: the config's name, for error messages.

    Returns:
        see :func:`parse_model_metadata`; None when the config has no ``metadata`` node.
    """
    return parse_model_metadata(cfg.get(METADATA_KEY, None), f"{source}: {METADATA_KEY}")


def metadata_to_safetensors_header(metadata: Optional[Mapping[str, Any]]) -> Optional[Dict[str, str]]:
    """The string metadata of a safetensors header that carries ``metadata``.

    A single entry: safetensors writes the entries of its header in no fixed order, and a file
    whose bytes depend only on its content keeps its hash (and so its published name).

    Args:
        metadata: parsed or stored model metadata, or None.

    Returns:
        ``{"metadata": JSON text}``, or None when there is no metadata to store.
    """
    stored = storable_model_metadata(metadata)
    return {METADATA_KEY: json.dumps(stored, sort_keys=True)} if stored else None


def metadata_from_safetensors_header(
    header: Optional[Mapping[str, str]], source: str
) -> Optional[Dict[str, Any]]:
    """Model metadata from a safetensors header's string metadata; None when it has none.

    Args:
        header: ``safe_open(...).metadata()`` (None when the file has no string metadata).
        source: the file name, for error messages.
    """
    text = (header or {}).get(METADATA_KEY)
    if text is None:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: header entry {METADATA_KEY!r} is not JSON ({e})") from e
    return parse_model_metadata(raw, f"{source}: {METADATA_KEY}")


def read_model_metadata(path: str) -> Optional[Dict[str, Any]]:
    """The model metadata stored in a checkpoint or published file; None when it holds none.

    ``.safetensors`` files: only the header is read. Other files are read tensors-only
    (:func:`~rsb_backbone.tensor_files.load_tensor_file`).

    Args:
        path: a ``train_net.py`` checkpoint, a published ``.pth`` or ``.safetensors`` file, or a
            converted mmdetection checkpoint.
    """
    from .tensor_files import WeightFileError, load_tensor_file

    path = str(path)
    if path.endswith(".safetensors"):
        return metadata_from_safetensors_header(_safetensors_header(path), path)
    loaded = load_tensor_file(path)
    if not isinstance(loaded, dict):
        raise WeightFileError(f"{path}: expected a dict checkpoint, got {type(loaded).__name__}")
    return parse_model_metadata(loaded.get(METADATA_KEY), f"{path}: {METADATA_KEY}")


def _safetensors_header(path: str) -> Optional[Dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    from .tensor_files import WeightFileError

    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata()
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightFileError(f"{path}: not a readable safetensors file ({e})") from e


def detectron2_metadata(
    stored: Optional[Mapping[str, Any]], fallback: Optional[Metadata] = None, *, name: str = "model"
) -> Optional[Metadata]:
    """The ``Metadata`` a predictor exposes: the model's own when stored, else ``fallback``.

    Args:
        stored: parsed model metadata (:func:`parse_model_metadata`), or None.
        fallback: the metadata of the data set the config names, used when nothing is stored.
        name: the ``name`` of the returned Metadata (e.g. the checkpoint file), shown in
            Detectron2's messages.

    Returns:
        a new, unregistered :class:`~detectron2.data.catalog.Metadata` with ``thing_classes``
        (and ``thing_dataset_id_to_contiguous_id``), or ``fallback``.
    """
    if not stored:
        return fallback
    metadata = Metadata(name=name)
    metadata.thing_classes = list(stored[_CLASSES])
    if stored.get(_IDS) is not None:
        metadata.thing_dataset_id_to_contiguous_id = dict(stored[_IDS])
    if fallback is not None and fallback.get(_CLASSES, None) not in (None, metadata.thing_classes):
        logger.info(
            "Class names from %s (%s) instead of those of %s",
            name,
            _short(metadata.thing_classes),
            fallback.name,
        )
    return metadata


def _short(names: Sequence[str], shown: int = 5) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class ModelMetadataState:
    """Model metadata as a checkpointable of Detectron2's checkpointer.

    Passed as ``AtomicCheckpointer(model, output_dir, metadata=ModelMetadataState(...))``, it
    is saved under :data:`METADATA_KEY` with every checkpoint (periodic, final, on signal).

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
                _short(resumed[_CLASSES]) if resumed else "none stored",
                _short(self.metadata[_CLASSES]) if self.metadata else "none",
            )
