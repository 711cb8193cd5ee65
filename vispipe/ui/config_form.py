"""Form fields that each set one key of the config tree, as the CLI's flags do.

A `FormField` names its dotted key; its type, default and allowed values
come from the config classes (`vispipe.cli_grammar.field_at`), never from
copies in the UI. `read_fields` turns a submitted form into the raw tree
and `checked_config` builds the `PipelineConfig` through the same checker a
`--config` file goes through, so a form accepts exactly what the CLI does.

Example:

```python
FIELDS = (FormField("epochs", "train.epochs", 1, 10_000), FormField("policy", "train.lr.policy"))
defaults = form_defaults(FIELDS)           # {"epochs": "10", "policy": "fixed"}
errors = {}
config = checked_config(read_fields(form, FIELDS, errors), FIELDS, errors)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from vispipe.cli_grammar import field_at
from vispipe.config_io import ConfigError, from_dict
from vispipe.configs import PipelineConfig
from vispipe.ui.forms import choice_field, float_field, int_field, text_field

__all__ = ["FormField", "options", "form_defaults", "read_fields", "checked_config"]


@dataclass(frozen=True)
class FormField:
    """A form field that sets one config key.

    Attributes:
        name: The form field's name.
        key: Its dotted config key, e.g. `"train.lr.base_lr"`.
        low, high: The range the form accepts for a number.
    """

    name: str
    key: str
    low: float = 0
    high: float = 1e9


def options(key: str, sections: Mapping[str, type] | None = None) -> list[Any]:
    """The values a select offers for a key: its allowed values, "" (unset) left out.

    Args:
        key: The dotted key.
        sections: Dataclasses of later stages' sections (`{"export": ExportOptions}`).
    """
    return [v for v in field_at(key, sections)[2] or () if v != ""]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def form_defaults(fields: Sequence[FormField]) -> dict[str, str]:
    """The form's initial values: each key's default in the config classes."""
    return {f.name: _text(field_at(f.key)[1]) for f in fields}


def _read(form: Mapping[str, Any], field: FormField, errors: dict[str, str]) -> Any:
    tp, default, allowed = field_at(field.key)
    if tp is bool:
        return bool(form.get(field.name))
    if allowed:
        texts = tuple(_text(v) for v in allowed if v != "")
        value = choice_field(form, field.name, texts, errors, _text(default))
        return tp(value) if field.name not in errors else default
    if tp is int:
        return int_field(form, field.name, errors, low=int(field.low), high=int(field.high),
                         default=default)
    if tp is float:
        return float_field(form, field.name, errors, low=field.low, high=field.high,
                           default=default)
    return text_field(form, field.name) or default


def read_fields(form: Mapping[str, Any], fields: Sequence[FormField],
                errors: dict[str, str]) -> dict[str, Any]:
    """The raw config tree the fields set (a problem per field in `errors`)."""
    tree: dict[str, Any] = {}
    for field in fields:
        node = tree
        *parents, last = field.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = _read(form, field, errors)
    return tree


def checked_config(tree: dict[str, Any], fields: Sequence[FormField],
                   errors: dict[str, str]) -> PipelineConfig:
    """The tree as a `PipelineConfig`, checked as a `--config` file is.

    A refused value goes to `errors` under the field that set its key (else
    under "form"); the defaults are returned then.
    """
    try:
        return from_dict(PipelineConfig, tree, "form: ")
    except ConfigError as error:
        message = str(error).removeprefix("form: ")
        name = next((f.name for f in fields if message.startswith(f.key + ":")), "form")
        errors[name] = message
        return PipelineConfig()
