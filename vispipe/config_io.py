"""Loading typed configs from YAML and `key=value` overrides, with validation.

Unknown keys and wrong types are rejected with the file, the dotted key and
the expected type named, e.g.
`pipelines/x.yaml: train.epochs: expected int, got str 'ten'`.

Example:

```python
cfg = load_pipeline("pipelines/digits-demo.yaml", overrides=["train.epochs=1"])
```
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from typing import Any, TypeVar

import yaml

from vispipe.configs import PipelineConfig

__all__ = [
    "ConfigError",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_pipeline",
    "expand_env",
]

T = TypeVar("T")

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration value or key that is not valid."""


def expand_env(text: str) -> str:
    """Expands `${VAR}` and `${VAR:-default}`; an unset `${VAR}` is an error."""

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ConfigError(
            f"Environment variable {name} is not set (used as ${{{name}}}); "
            f"set it or write ${{{name}:-default}}."
        )

    return _ENV_PATTERN.sub(replace, text)


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Checks (and, for int -> float, widens) one value against a field type."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected mapping, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(
                f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
            )
        item_type = typing.get_args(tp)[0]
        return [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got bool {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(
            f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Builds dataclass `cls` from a mapping, checking keys and types.

    Args:
        cls: A dataclass type from `vispipe.configs`.
        data: The mapping (as read from YAML).
        where: Prefix for error messages (file and key path).

    Returns:
        An instance of `cls`; keys absent from `data` keep their defaults.

    Raises:
        ConfigError: An unknown key or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where and not where.endswith(": ") else where
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"{prefix}{key}: unknown key; expected one of {', '.join(names)}"
            )
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain dicts and lists (for YAML/JSON)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str = "--set") -> None:
    """Applies `dotted.key=value` overrides to a raw mapping in place.

    Values are parsed as YAML scalars/lists (`3`, `0.1`, `true`, `[1, 2]`).
    Types are checked later, when the mapping becomes a dataclass.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: expected key=value, got {item!r}")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {item!r}: {part} is not a mapping")
        node[parts[-1]] = value


def load_pipeline(path: str, overrides: list[str] | None = None) -> PipelineConfig:
    """Reads and validates a pipeline file.

    `${VAR:-default}` is expanded in the text first.

    Args:
        path: The YAML pipeline file.
        overrides: `dotted.key=value` strings applied on top.

    Returns:
        The validated `PipelineConfig`.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"Pipeline file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.safe_load(expand_env(text)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    apply_overrides(data, overrides or [])
    return from_dict(PipelineConfig, data, f"{path}: ")
