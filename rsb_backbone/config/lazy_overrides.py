"""Loading a LazyConfig file with command-line overrides, refusing keys that do not exist."""

import copy
import difflib
import os
from typing import Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig

_ABSENT = object()
_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", ListConfig: "a list"}


def _all_keys(node, prefix: str = ""):
    """Dotted paths of every key under ``node`` (a plain container), for the nearest-key hint."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        yield f"{prefix}{key}"
        yield from _all_keys(value, f"{prefix}{key}.")


def _type_name(value) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return _TYPE_NAMES.get(type(value), f"a {type(value).__name__}")


def _check_type(cfg, key: str, old, source: str) -> None:
    """Refuse an override whose value cannot stand where the config has a bool, int or float.

    Integral floats are accepted for integers (``1e3`` becomes 1000), integers for floats (and
    become floats); ``null`` is accepted anywhere. Strings, lists and nested nodes are not checked.
    """
    new = OmegaConf.select(cfg, key)
    if new is None or type(old) not in (bool, int, float):
        return
    wanted = type(old)
    if not (
        isinstance(new, bool) == (wanted is bool)
        and isinstance(new, (int, float))
        and (wanted is not int or float(new).is_integer())
    ):
        raise ValueError(
            f"override {key}={new!r}: {source} has {_type_name(old)} there ({old!r}), "
            f"got {_type_name(new)}"
        )
    if type(new) is not wanted:
        OmegaConf.update(cfg, key, wanted(new), merge=False)


def load_config_with_overrides(config_file: Union[str, DictConfig], overrides: Sequence[str]) -> DictConfig:
    """Load ``config_file`` and apply ``KEY=VALUE`` overrides (value grammar, ``+KEY`` for new keys: README).

    Args:
        config_file: path of a LazyConfig ``.py`` (or ``.yaml``) file, or a loaded LazyConfig
            (copied, so the caller's stays as it is).
        overrides: ``KEY=VALUE`` strings.

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: a syntax error in the file, or an override that is malformed, names an
            unknown key or has a value of the wrong type.
    """
    if isinstance(config_file, DictConfig):
        cfg, source = copy.deepcopy(config_file), "the config"
    else:
        source = os.fspath(config_file)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"config file {source!r} does not exist")
        try:
            cfg = LazyConfig.load(source)
        except SyntaxError as e:
            # Detectron2 re-raises the parser's error with the file name only; the cause has the line.
            cause = e.__cause__ if isinstance(e.__cause__, SyntaxError) else e
            raise ValueError(f"config file {source}: syntax error at line {cause.lineno}: {cause.msg}") from e
    checked, previous = [], {}
    for override in overrides:
        key, has_value, value = override.partition("=")
        if not has_value:
            raise ValueError(f"override {override!r}: expected KEY=VALUE")
        value = "null" if value == "None" else value
        if key.startswith("+"):
            key = key[1:]
        elif (
            not all(key.split("."))
            or OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False) is _ABSENT
        ):
            keys = _all_keys(OmegaConf.to_container(cfg, resolve=False))
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"override {f'{key}={value}'!r}: {source} has no key {key!r}{hint}")
        previous.setdefault(key, OmegaConf.select(cfg, key, throw_on_resolution_failure=False))
        checked.append(f"{key}={value}")
    cfg = LazyConfig.apply_overrides(cfg, checked)
    for key, old in previous.items():
        _check_type(cfg, key, old, source)
    return cfg
