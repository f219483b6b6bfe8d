"""Config files: where the project's own are (the packaged model zoo, else the checkout's
``configs/``) and telling a yacs config file from a LazyConfig file."""

import os

import yaml

YACS = "yacs"
LAZY = "lazy"

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


class _KeysOnlyLoader(yaml.SafeLoader):
    """Reads a config's structure; the python tags both kinds may hold (Detectron2's
    Base-RetinaNet.yaml, ShapeSpecs in a saved LazyConfig) are read as None, not built."""


_KeysOnlyLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def config_file_kind(config_file: str) -> str:
    """:data:`YACS` or :data:`LAZY`: the kind of the config file at path ``config_file``.

    ``.py`` files are LazyConfigs; a YAML file is one when it has a top-level ``model`` key (the
    ``config.yaml`` that a training run saves), a yacs config when it has ``_BASE_`` or upper-case
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
            f"a training run saves) or a yacs config (.yaml)"
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
