"""The project's configs by name relative to ``configs/``, as ``detectron2.model_zoo`` gives Detectron2's
(see the README): package data of an installed copy (``setup.py``), else the checkout's ``configs/``."""

from typing import Union

from detectron2.config import CfgNode, LazyConfig
from omegaconf import DictConfig

from ..config import configs_root, get_config_file, load_yacs_config

__all__ = ["configs_root", "get_config", "get_config_file"]


def get_config(config_path: str) -> Union[DictConfig, CfgNode]:
    """A config by name (as for :func:`get_config_file`): a LazyConfig for ``.py``, an unfrozen
    yacs CfgNode with ``MODEL.RSB`` for ``.yaml``."""
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    if path.endswith((".yaml", ".yml")):
        return load_yacs_config(path)
    raise ValueError(f"config {config_path!r}: expected a .py LazyConfig or a .yaml yacs config")
