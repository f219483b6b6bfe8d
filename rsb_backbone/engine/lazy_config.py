"""Loading a LazyConfig file with command-line overrides, refusing keys that do not exist."""

import difflib
import os
from typing import List, Sequence

from omegaconf import DictConfig, ListConfig

from detectron2.config import LazyConfig

__all__ = ["load_config_with_overrides"]


def _all_keys(node, prefix: str = "") -> List[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            try:
                keys.extend(_all_keys(node.get(k), full))
            except Exception:  # interpolations that cannot be resolved yet
                pass
    elif isinstance(node, (ListConfig, list)):
        for i, v in enumerate(node):
            keys.extend(_all_keys(v, f"{prefix}.{i}"))
    return keys


def _key_exists(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig):
            if part not in node:
                return False
            node = node.get(part)
        elif isinstance(node, (ListConfig, list)) and part.isdigit():
            if int(part) >= len(node):
                return False
            node = node[int(part)]
        else:
            return False
    return True


def load_config_with_overrides(config_file: str, overrides: Sequence[str]):
    """Load ``config_file`` and apply ``KEY=VALUE`` overrides.

    Values follow Hydra's override grammar (``2``, ``1e-4``, ``[1,2]``, ``null``, ``true``, else a
    string); ``None`` is accepted as Python users write it and means ``null``. A key that is not in
    the config is an error (a typo would otherwise be silently added); prefix it with ``+`` to add
    a new key on purpose.

    Args:
        config_file: path of a LazyConfig ``.py`` (or ``.yaml``) file.
        overrides: ``KEY=VALUE`` strings.

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: an override is malformed or names an unknown key.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = LazyConfig.load(config_file)
    checked = []
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r}: expected KEY=VALUE")
        key, value = override.split("=", 1)
        if value == "None":
            value = "null"
            override = f"{key}={value}"
        if key.startswith("+"):
            checked.append(f"{key[1:]}={value}")
            continue
        if not _key_exists(cfg, key):
            close = difflib.get_close_matches(key, _all_keys(cfg), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"override {override!r}: {config_file} has no key {key!r}{hint}")
        checked.append(override)
    return LazyConfig.apply_overrides(cfg, checked)
