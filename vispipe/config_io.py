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

from vispipe.configs import CHOICES, PipelineConfig

__all__ = [
    "ConfigError",
    "field_choices",
    "from_dict",
    "validate_config",
    "to_dict",
    "apply_overrides",
    "read_yaml_mapping",
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
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def _convert_sequence(value: Any, tp: Any, where: str) -> list | tuple:
    """A YAML list as `list[X]`, or as `tuple[X, ...]` (immutable defaults)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    item_type = typing.get_args(tp)[0]
    items = [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    return items if typing.get_origin(tp) is list else tuple(items)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Checks (and, for int -> float, widens) one value against a field type."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected mapping, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return _convert_sequence(value, tp, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
            )
        value_type = typing.get_args(tp)[1]
        return {str(k): _convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
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


def field_choices(field: dataclasses.Field) -> tuple | None:
    """The allowed values of a field declared with `vispipe.configs.choices`, else None."""
    return field.metadata.get(CHOICES)


def _check_choice(field: dataclasses.Field, value: Any, where: str) -> None:
    allowed = field_choices(field)
    if allowed is None:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, allowed))}, "
                          f"got {bad[0]!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Builds dataclass `cls` from a mapping, checking keys, types and choices.

    Args:
        cls: A dataclass type (`vispipe.configs`, `RunInfo`, `ExportOptions`...).
        data: The mapping (as read from YAML or JSON).
        where: Prefix for error messages (file and key path).

    Returns:
        An instance of `cls`; keys absent from `data` keep their defaults.

    Raises:
        ConfigError: An unknown key, a value of the wrong type or not among
            the field's `choices`, or a field without default that is missing.

    Example:

    ```python
    cfg = from_dict(TrainConfig, {"epochs": 5, "lr": {"policy": "step"}}, "train")
    ```
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where and not where.endswith(": ") else where
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{prefix}{key}: unknown key; expected one of {', '.join(fields)}"
            )
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
        _check_choice(fields[key], kwargs[key], f"{prefix}{key}")
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing; expected "
                          f"{_type_name(hints[missing[0]])}")
    return cls(**kwargs)


def validate_config(config: T, where: str = "") -> T:
    """Checks a dataclass built in code as `from_dict` checks one read from a file.

    Returns:
        `config`, unchanged.

    Raises:
        ConfigError: A value of the wrong type or not among the field's choices.

    Example:

    ```python
    validate_config(TrainConfig(optimizer="sgdx"), "train")  # ConfigError
    ```
    """
    from_dict(type(config), dataclasses.asdict(config), where)
    return config


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


def read_yaml_mapping(path: str) -> dict[str, Any]:
    """A YAML file's top-level mapping, `${VAR:-default}` expanded first.

    Raises:
        ConfigError: No such file, not YAML, or not a mapping at the top.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.safe_load(expand_env(text)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def load_pipeline(path: str, overrides: list[str] | None = None) -> PipelineConfig:
    """Reads and validates a pipeline file.

    `${VAR:-default}` is expanded in the text first.

    Args:
        path: The YAML pipeline file.
        overrides: `dotted.key=value` strings applied on top.

    Returns:
        The validated `PipelineConfig`.
    """
    data = read_yaml_mapping(path)
    apply_overrides(data, overrides or [])
    return from_dict(PipelineConfig, data, f"{path}: ")
