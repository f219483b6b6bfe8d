"""The project's configs by name relative to ``configs/``, as ``detectron2.model_zoo`` gives Detectron2's
(see the README): package data of an installed copy (``setup.py``), else the checkout's ``configs/``."""

import os
from typing import Union

from detectron2.config import CfgNode, LazyConfig
from omegaconf import DictConfig

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # rsb_backbone/
_CANDIDATE_ROOTS = (
    os.path.join(_PACKAGE_DIR, "model_zoo", "configs"),
    os.path.join(os.path.dirname(_PACKAGE_DIR), "configs"),
)


def configs_root() -> str:
    """The folder holding the configs: the installed package data, else the checkout's ``configs/``.

    Raises:
        FileNotFoundError: neither exists (a copy of the package built without its configs).
    """
    for root in _CANDIDATE_ROOTS:
        if os.path.isdir(os.path.join(root, "COCO")):
            return root
    raise FileNotFoundError(
        f"no configs found at {' or '.join(_CANDIDATE_ROOTS)}; install the package with "
        f"pip (its configs are package data) or use a repository checkout"
    )


def get_config_file(config_path: str) -> str:
    """The real path of a config, given its name relative to ``configs/`` (``config_path``).

    Raises:
        FileNotFoundError: no such config; the message names the folder searched.
    """
    root = configs_root()
    path = os.path.normpath(os.path.join(root, config_path))
    if os.path.isabs(config_path) or not path.startswith(root + os.sep) or not os.path.isfile(path):
        raise FileNotFoundError(
            f"config {config_path!r} not found under {root}; expected a path relative to it, "
            f"e.g. 'COCO/mask_rcnn_rsb_r50_fpn_1x.py' or 'yacs/mask_rcnn_rsb_r50_fpn_1x.yaml'"
        )
    return path


def get_config(config_path: str) -> Union[DictConfig, CfgNode]:
    """A config by name (as for :func:`get_config_file`): a LazyConfig for ``.py``, an unfrozen
    yacs CfgNode with ``MODEL.RSB`` for ``.yaml``. A ``shapes/`` LazyConfig also registers the
    shapes demo data sets in a source checkout."""
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    if path.endswith((".yaml", ".yml")):
        from ..config import load_yacs_config  # not at the top: rsb_backbone.config imports this module

        return load_yacs_config(path)
    raise ValueError(f"config {config_path!r}: expected a .py LazyConfig or a .yaml yacs config")
