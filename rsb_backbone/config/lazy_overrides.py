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
    try:
        cfg = LazyConfig.load(config_file)
    except SyntaxError as e:
        # Detectron2 re-raises the parser's error with the file name only; the cause has the line.
        cause = e.__cause__ if isinstance(e.__cause__, SyntaxError) else e
        raise ValueError(
            f"config file {config_file}: syntax error at line {cause.lineno}: {cause.msg}"
        ) from e
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
    previous = {o.split("=", 1)[0]: _value_at(cfg, o.split("=", 1)[0]) for o in checked}
    cfg = LazyConfig.apply_overrides(cfg, checked)
    for key, old in previous.items():
        _check_type(cfg, key, old, config_file)
    return cfg


def _value_at(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if node is None:
            return None
        node = node[int(part)] if isinstance(node, (ListConfig, list)) else node.get(part)
    return node


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (ListConfig, list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _check_type(cfg, key: str, old, config_file: str) -> None:
    """Refuse an override whose value cannot stand where the config has a bool, int or float.

    Integral floats are accepted for integers (``1e3`` becomes 1000), integers for floats (and
    become floats); ``null`` is accepted anywhere. Strings, lists and nested nodes are not
    checked.
    """
    new = _value_at(cfg, key)
    if new is None or old is None or isinstance(old, str) or not isinstance(old, (bool, int, float)):
        return
    if isinstance(old, bool):
        ok = isinstance(new, bool)
    elif isinstance(old, int):
        ok = not isinstance(new, bool) and (isinstance(new, int) or (isinstance(new, float) and new.is_integer()))
        if ok and isinstance(new, float):
            _set(cfg, key, int(new))
    else:
        ok = not isinstance(new, bool) and isinstance(new, (int, float))
        if ok and isinstance(new, int):
            _set(cfg, key, float(new))
    if not ok:
        raise ValueError(
            f"override {key}={new!r}: {config_file} has {_type_name(old)} there ({old!r}), "
            f"got {_type_name(new)}"
        )


def _set(cfg, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[int(part)] if isinstance(node, (ListConfig, list)) else node[part]
    if isinstance(node, (ListConfig, list)):
        node[int(leaf)] = value
    else:
        node[leaf] = value
