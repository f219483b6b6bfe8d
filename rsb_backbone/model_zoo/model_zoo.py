"""Finding and loading the configs of the repository's ``configs/`` folder by relative name.

An installed copy of the package holds them as package data in ``rsb_backbone/model_zoo/configs``
(see ``setup.py``); a source checkout (or an editable install of it) reads ``configs/`` next to
the package. Names are relative to that folder, e.g. ``"COCO/mask_rcnn_rsb_r50_fpn_1x.py"`` or
``"yacs/shapes/mask_rcnn_rsb_r50_fpn_shapes.yaml"``.
"""

import os
from typing import Union

from detectron2.config import CfgNode, LazyConfig
from omegaconf import DictConfig

from ..yacs_builders import read_rsb_yacs_config

__all__ = ["configs_root", "get_config_file", "get_config"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where configs/ is, in the order looked at: installed package data, then the source checkout.
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
    """The real path of a config, given its name relative to ``configs/``.

    Args:
        config_path: e.g. ``"COCO/mask_rcnn_rsb_r50_fpn_1x.py"`` or
            ``"yacs/mask_rcnn_rsb_r50_fpn_1x.yaml"``.

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
    """A config by name: a LazyConfig for ``.py``, a yacs CfgNode (with ``MODEL.RSB``) for ``.yaml``.

    Loading a ``shapes/`` LazyConfig in a source checkout also registers the shapes demo data
    sets (see ``configs/common/shapes_demo.py``).

    Args:
        config_path: name relative to ``configs/``, as for :func:`get_config_file`.

    Returns:
        the loaded config; the yacs one unfrozen.
    """
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return LazyConfig.load(path)
    if path.endswith((".yaml", ".yml")):
        return read_rsb_yacs_config(path)
    raise ValueError(f"config {config_path!r}: expected a .py LazyConfig or a .yaml yacs config")
