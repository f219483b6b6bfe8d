"""Telling a yacs config file from a LazyConfig file."""

import os

import yaml

YACS = "yacs"
LAZY = "lazy"


class _KeysOnlyLoader(yaml.SafeLoader):
    """Reads a config's structure; the python tags both kinds may hold (Detectron2's
    Base-RetinaNet.yaml, ShapeSpecs in a saved LazyConfig) are read as None, not built."""


_KeysOnlyLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def config_file_kind(config_file: str) -> str:
    """:data:`YACS` or :data:`LAZY`: the kind of the config file at path ``config_file``.

    ``.py`` files are LazyConfigs; a YAML file is one when it has a top-level ``model`` key (the
    ``config.yaml`` that ``train_net.py`` saves), a yacs config when it has ``_BASE_`` or upper-case
    sections such as ``MODEL``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is neither kind.
    """
    config_file = os.fspath(config_file)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    if config_file.endswith(".py"):
        return LAZY
    if not config_file.endswith((".yaml", ".yml")):
        raise ValueError(
            f"config file {config_file!r}: expected a LazyConfig (.py, or the config.yaml that "
            f"train_net.py saves) or a yacs config (.yaml)"
        )
    with open(config_file) as f:
        try:
            content = yaml.load(f, Loader=_KeysOnlyLoader)
        except yaml.YAMLError as e:
            raise ValueError(f"config file {config_file!r} is not valid YAML ({e})") from e
    if isinstance(content, dict):
        if "model" in content:
            return LAZY
        if "_BASE_" in content or any(isinstance(k, str) and k.isupper() for k in content):
            return YACS
    raise ValueError(
        f"config file {config_file!r}: neither a yacs config (top-level MODEL, INPUT, ... or "
        f"_BASE_) nor a saved LazyConfig (top-level model)"
    )
