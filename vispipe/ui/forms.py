"""Form parsing with messages that name the field, the expectation and the value.

Example:

```python
errors = {}
epochs = int_field(form, "epochs", errors, low=1, high=1000)
```
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from vispipe.ui.settings import UnsafeInputError, check_name

__all__ = ["int_field", "float_field", "choice_field", "text_field", "new_folder_field",
           "local_path_field"]


def text_field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def local_path_field(form: Mapping[str, Any], name: str, default: str) -> str:
    """The field if it is a path of this server ("/runs/3#export"), else `default`.

    A redirect target taken from a form never leads to another site: no scheme,
    no host ("//evil.example"), no backslash (which browsers read as "/").
    """
    value = text_field(form, name)
    if (value.startswith("/") and not value.startswith("//") and "\\" not in value
            and not any(ord(c) < 32 for c in value)):
        return value
    return default


def new_folder_field(form: Mapping[str, Any], parent: str, what: str,
                     errors: dict[str, str]) -> tuple[str, str]:
    """The form's "name" as a new folder under `parent`: `(name, folder)`.

    An unsafe name or one already taken is a message in `errors["name"]`,
    and then the name and folder returned are empty.
    """
    try:
        name = check_name(text_field(form, "name"), "name")
    except UnsafeInputError as error:
        errors["name"] = str(error)
        return "", ""
    folder = os.path.join(parent, name)
    if os.path.exists(folder):
        errors["name"] = f"a {what} named {name!r} already exists; choose another name"
    return name, folder


def int_field(form: Mapping[str, Any], name: str, errors: dict[str, str], *,
              low: int, high: int, default: int | None = None) -> int:
    """An integer in [low, high]; a message in `errors[name]` otherwise."""
    text = text_field(form, name)
    if not text and default is not None:
        return default
    try:
        value = int(text)
    except ValueError:
        errors[name] = f"expected a whole number, got {text!r}"
        return default or low
    if not low <= value <= high:
        errors[name] = f"expected a number from {low} to {high}, got {value}"
    return value


def float_field(form: Mapping[str, Any], name: str, errors: dict[str, str], *,
                low: float, high: float, default: float | None = None) -> float:
    """A number in [low, high]; a message in `errors[name]` otherwise."""
    text = text_field(form, name)
    if not text and default is not None:
        return default
    try:
        value = float(text)
    except ValueError:
        errors[name] = f"expected a number, got {text!r}"
        return default or low
    if not low <= value <= high:
        errors[name] = f"expected a number from {low:g} to {high:g}, got {value:g}"
    return value


def choice_field(form: Mapping[str, Any], name: str, choices: tuple[str, ...],
                 errors: dict[str, str], default: str) -> str:
    """One of `choices`; a message in `errors[name]` otherwise."""
    value = text_field(form, name) or default
    if value not in choices:
        errors[name] = f"expected one of {', '.join(choices)}, got {value!r}"
    return value
