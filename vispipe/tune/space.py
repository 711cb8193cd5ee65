"""The search space of `vispipe tune`: which settings vary, and over what.

A space maps a dotted key of the pipeline's config tree (`train.lr.base_lr`,
`model.dropout`, the same keys as `--set`) to a range or a list of choices,
plus one derived key, `augment_strength`, a single knob in [0, 1] for the
amount of geometric and photometric augmentation (see `AUGMENT_RECIPE`).
Its type (float, int, categorical) follows the config field's type, so
`train.batch_size: {low: 16, high: 128}` samples integers.

In YAML, as a pipeline file's `tune.space` section or a file of its own:

```yaml
train.lr.base_lr: {low: 1.0e-4, high: 0.5, log: true}
train.batch_size: {choices: [32, 64, 128]}
train.optimizer: {choices: [sgd, adam, adamw]}
train.weight_decay: {low: 1.0e-6, high: 1.0e-2, log: true}
augment_strength: {low: 0.0, high: 1.0}
model.dropout: {low: 0.0, high: 0.5, step: 0.1}
```

Example:

```python
space = parse_space(yaml.safe_load(open("space.yaml")))
values = suggest(trial, space)           # {"train.lr.base_lr": 0.03, ...}
config = apply_values(pipeline_config, values)
```
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from vispipe.config_io import from_dict, to_dict
from vispipe.configs import OPTIMIZERS, PipelineConfig

__all__ = [
    "AUGMENT_STRENGTH",
    "AUGMENT_RECIPE",
    "SearchParam",
    "default_space",
    "parse_space",
    "suggest",
    "apply_values",
    "baseline_values",
]

AUGMENT_STRENGTH = "augment_strength"
# Augmentation at strength 1; strength s scales every value by s. Colour
# jitter that needs RGB (hue, saturation) is left out so any image works.
AUGMENT_RECIPE = {"rotation": 15.0, "zoom": 0.15, "translate": 0.1,
                  "brightness": 32.0, "contrast": 0.2}


@dataclass(frozen=True)
class SearchParam:
    """One dimension of the search.

    Attributes:
        key: Dotted config key, or `augment_strength`.
        kind: "float", "int" or "categorical".
        low, high: Range of a float or int (inclusive).
        log: Sample on a log scale.
        step: Grid step (0: continuous for floats, 1 for ints).
        choices: Values of a categorical.
    """

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float = 0.0
    choices: tuple = ()

    def to_json(self) -> dict[str, Any]:
        data = {"kind": self.kind}
        if self.kind == "categorical":
            data["choices"] = list(self.choices)
        else:
            data.update(low=self.low, high=self.high, log=self.log)
            if self.step:
                data["step"] = self.step
        return data


def default_space() -> list[SearchParam]:
    """The five knobs most runs are tuned on.

    Learning rate (log-uniform 1e-4..0.5), batch size (32, 64, 128),
    optimizer (sgd, adam, adamw), weight decay (log-uniform 1e-6..1e-2) and
    augmentation strength (0..1).
    """
    return [
        SearchParam("train.lr.base_lr", "float", 1e-4, 0.5, log=True),
        SearchParam("train.batch_size", "categorical", choices=(32, 64, 128)),
        SearchParam("train.optimizer", "categorical", choices=("sgd", "adam", "adamw")),
        SearchParam("train.weight_decay", "float", 1e-6, 1e-2, log=True),
        SearchParam(AUGMENT_STRENGTH, "float", 0.0, 1.0),
    ]


def _field_type(key: str) -> Any:
    """The annotated type of a dotted `PipelineConfig` key."""
    cls: Any = PipelineConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            break
        hints = typing.get_type_hints(cls)
        if part not in hints:
            known = ", ".join(sorted(hints))
            where = ".".join(parts[:depth]) or "the pipeline"
            raise ValueError(f"tune.space: unknown key {key!r}: {where} has {known}.")
        cls = hints[part]
    if dataclasses.is_dataclass(cls):
        raise ValueError(f"tune.space: {key!r} is a section; name one of its fields.")
    return cls


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a number, got {value!r}.")
    return float(value)


def _parse_one(key: str, spec: Any) -> SearchParam:
    where = f"tune.space.{key}"
    field_type = float if key == AUGMENT_STRENGTH else _field_type(key)
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected {{low, high[, log, step]}} or {{choices: [...]}}, "
                         f"got {spec!r}.")
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {sorted(unknown)}; expected low, high, "
                         "log, step or choices.")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}.choices: expected a non-empty list, got {choices!r}.")
        if key == "train.optimizer" and any(c not in OPTIMIZERS for c in choices):
            raise ValueError(f"{where}.choices: expected optimizers from {OPTIMIZERS}, got "
                             f"{choices}.")
        return SearchParam(key, "categorical", choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: expected both low and high, got {dict(spec)}.")
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    log = bool(spec.get("log", False))
    step = _number(spec.get("step", 0), f"{where}.step")
    if low > high or (log and low <= 0):
        raise ValueError(f"{where}: expected low <= high{' and low > 0 with log' if log else ''}, "
                         f"got low={low:g}, high={high:g}.")
    if field_type is int:
        return SearchParam(key, "int", low, high, log=log, step=step or 1)
    if field_type is not float:
        raise ValueError(f"{where}: a range needs a numeric setting, but {key!r} is "
                         f"{getattr(field_type, '__name__', field_type)}; use choices.")
    if log and step:
        raise ValueError(f"{where}: log and step cannot be combined.")
    return SearchParam(key, "float", low, high, log=log, step=step)


def parse_space(data: Mapping[str, Any] | None) -> list[SearchParam]:
    """Checks a YAML search space; an empty one means `default_space()`.

    Raises:
        ValueError: An unknown key, a section instead of a field, a range on
            a non-numeric field, or malformed options (each named).
    """
    if not data:
        return default_space()
    if not isinstance(data, Mapping):
        raise ValueError(f"tune.space: expected a mapping of key to range, got {data!r}.")
    return [_parse_one(str(key), spec) for key, spec in data.items()]


def suggest(trial, space: list[SearchParam]) -> dict[str, Any]:
    """Draws one value per dimension from an Optuna trial.

    Returns:
        `{key: value}` in the order of `space`.
    """
    values: dict[str, Any] = {}
    for param in space:
        if param.kind == "categorical":
            values[param.key] = trial.suggest_categorical(param.key, list(param.choices))
        elif param.kind == "int":
            values[param.key] = trial.suggest_int(param.key, int(param.low), int(param.high),
                                                  step=int(param.step or 1), log=param.log)
        else:
            values[param.key] = trial.suggest_float(param.key, param.low, param.high,
                                                    step=param.step or None, log=param.log)
    return values


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def apply_values(config: PipelineConfig, values: Mapping[str, Any]) -> PipelineConfig:
    """`config` with the sampled values set (and checked like `--set`).

    `augment_strength: s` sets `train.augment.<name> = s * AUGMENT_RECIPE[name]`
    and keeps the pipeline's other augmentation settings (flips...).
    """
    data = to_dict(config)
    for key, value in values.items():
        if key == AUGMENT_STRENGTH:
            for name, full in AUGMENT_RECIPE.items():
                data["train"]["augment"][name] = round(float(value) * full, 6)
        else:
            _set(data, key, value)
    return from_dict(PipelineConfig, data, "tune")


def baseline_values(config: PipelineConfig, space: list[SearchParam]) -> dict[str, Any]:
    """The pipeline's own values of the searched keys (the baseline trial's row).

    Returns:
        `{key: value}`; `augment_strength` is the largest share of
        `AUGMENT_RECIPE` the pipeline's augmentation uses.
    """
    data = to_dict(config)
    values: dict[str, Any] = {}
    for param in space:
        if param.key == AUGMENT_STRENGTH:
            augment = data["train"]["augment"]
            values[param.key] = max(augment[name] / full for name, full in AUGMENT_RECIPE.items())
            continue
        value = data
        for part in param.key.split("."):
            value = value[part]
        values[param.key] = value
    return values
