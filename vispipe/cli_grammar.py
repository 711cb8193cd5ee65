"""The command line's one config grammar: `--config FILE`, flags and `--set KEY=VALUE`.

Every verb resolves its settings the same way, over one tree whose root is
`vispipe.configs.PipelineConfig` (a pipeline file's shape), lowest
precedence first:

1. the dataclass defaults;
2. `--config FILE`: YAML of that shape (any subset of its sections; each
   verb uses the sections it needs);
3. the verb's flags, each of which sets one dotted key (a `Flag` row);
4. `--set KEY=VALUE`, repeatable, KEY always from the root
   (`train.epochs`, `dataset.image.channels`, `export.top_k`).

A flag takes its type, default and allowed values from the dataclass field
of its key, so they are written once, in `vispipe.configs` (or, for a later
stage's section, in that stage's dataclass: `sections`). Paths are operands,
not settings, and are spelled the same by every verb: `--run` (a run
folder), `--dataset` (a dataset folder read), `--out` (what the verb writes).

Example:

```python
parser = argparse.ArgumentParser(prog="vispipe train")
add_settings(parser, [Flag("--epochs", "train.epochs", "training epochs")])
args = parser.parse_args(["--epochs", "3", "--set", "train.lr.policy=step"])
config = resolve(args, parser.flags)   # a PipelineConfig
```
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from vispipe.config_io import (
    ConfigError,
    apply_overrides,
    field_choices,
    from_dict,
    read_yaml_mapping,
)
from vispipe.configs import PipelineConfig

__all__ = [
    "REMOVED_IN",
    "Flag",
    "field_at",
    "add_settings",
    "raw_settings",
    "resolve",
    "warn_deprecated",
    "add_deprecated_flag",
    "positional_operand",
    "add_output_flags",
    "add_run_flag",
    "parse_size",
]

REMOVED_IN = "vispipe 0.3"  # Old spellings keep working until then.


@dataclass(frozen=True)
class Flag:
    """One command-line flag that sets one key (or, with `parse`, several) of the tree.

    Attributes:
        name: The flag, e.g. `"--epochs"`.
        key: Its dotted key, e.g. `"train.epochs"`; a tuple when `parse`
            returns one value per key (`--size 28x32`: height, width).
        help: What it sets (type, default and choices are appended).
        parse: Text -> value; default: by the field's type (lists are
            comma-separated).
        metavar: Placeholder in the help.
    """

    name: str
    key: str | tuple[str, ...]
    help: str
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.key if isinstance(self.key, tuple) else (self.key,)

    @property
    def dest(self) -> str:
        return "setting:" + ",".join(self.keys)


def field_at(key: str, sections: Mapping[str, type] | None = None) -> tuple[Any, Any, tuple | None]:
    """The type, default and allowed values of a dotted key of the tree.

    Args:
        key: E.g. `"train.lr.policy"`.
        sections: Dataclasses of sections the root types loosely (a later
            stage's, e.g. `{"export": ExportOptions}`).

    Raises:
        ConfigError: No such key.
    """
    parts = key.split(".")
    cls: Any = (sections or {}).get(parts[0]) or PipelineConfig
    if cls is not PipelineConfig:
        parts = parts[1:]
    tp, default, allowed = cls, None, None
    for i, part in enumerate(parts):
        if typing.get_origin(tp) is dict:  # A free-form mapping: its value type.
            tp, default, allowed = typing.get_args(tp)[1], None, None
            continue
        fields = {f.name: f for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else {}
        if part not in fields:
            raise ConfigError(f"{'.'.join(key.split('.')[:i + 1])}: unknown key")
        field = fields[part]
        tp = typing.get_type_hints(tp)[part]
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory() if field.default_factory is not dataclasses.MISSING
                   else None)
        allowed = field_choices(field)
    return tp, default, allowed


def _scalar(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return typing.get_args(tp)[0]
    return tp


def _list_parser(item: Any) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [item(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.__name__} values, got {text!r}") from None
    return parse


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return repr(value) if value == "" else str(value)


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _argument(flag: Flag, sections: Mapping[str, type] | None) -> dict[str, Any]:
    """argparse keywords for a flag, from the field of its key."""
    tp, default, allowed = field_at(flag.keys[0], sections)
    kwargs: dict[str, Any] = {"dest": flag.dest, "default": None}
    notes = [", ".join(flag.keys)]
    is_list = typing.get_origin(tp) in (list, tuple)
    if flag.parse is None and tp is bool:
        kwargs.update(action="store_const", const=True)
    elif flag.parse is not None:
        kwargs.update(type=flag.parse, metavar=flag.metavar)
    elif is_list:
        # Repeating a list flag adds to the list (`--data-root A --data-root B`).
        kwargs.update(action="extend", type=_list_parser(_scalar(tp)),
                      metavar=flag.metavar or "A,B")
    elif allowed:  # "" (unset) stays allowed in files, not offered as a choice.
        kwargs.update(type=tp, choices=[v for v in allowed if v != ""])
    else:
        kwargs.update(type=tp, metavar=flag.metavar or _METAVARS.get(tp, "VALUE"))
    if allowed and "choices" not in kwargs:
        notes.append("from " + ", ".join(_show(v) for v in allowed))
    if len(flag.keys) == 1 and default is not None:
        notes.append(f"default {_show(default)}")
    kwargs["help"] = f"{flag.help} ({'; '.join(notes)})"
    return kwargs


def add_settings(parser: argparse.ArgumentParser, flags: Sequence[Flag], *,
                 sections: Mapping[str, type] | None = None) -> None:
    """Adds `--config`, the settings `flags` and `--set` to a verb's parser.

    The parser remembers its flags and sections (`parser.get_default("flags")`)
    for `resolve`.
    """
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config tree (a pipeline file's shape: name, dataset, model, "
                             "train, evaluate, lr_find, export, serve); flags and --set win")
    group = parser.add_argument_group("settings (flag -> config key)")
    for flag in flags:
        group.add_argument(flag.name, **_argument(flag, sections))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key, from the root: train.epochs=5, "
                             "dataset.image.channels=3 (repeatable; wins over flags)")
    parser.set_defaults(flags=tuple(flags), sections=dict(sections or {}))


def _set_key(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = list(value) if isinstance(value, tuple) else value


def raw_settings(args: argparse.Namespace, *, verb: str = "",
                 relative_to: str = "") -> dict[str, Any]:
    """What `--config`, the flags and `--set` give, as one mapping (not yet checked).

    Args:
        args: Parsed by a parser set up with `add_settings`.
        verb: For deprecation messages.
        relative_to: A section whose own keys `--set` used to take without
            it (`dataset create --set image.channels=3`): still accepted,
            with a deprecation message.
    """
    data = read_yaml_mapping(args.config) if args.config else {}
    for flag in args.flags:
        value = getattr(args, flag.dest)
        if value is None:
            continue
        values = value if len(flag.keys) > 1 else (value,)
        for key, item in zip(flag.keys, values):
            _set_key(data, key, item)
    overrides = list(args.set)
    if relative_to:
        overrides = [_rooted(item, relative_to, verb) for item in overrides]
    apply_overrides(data, overrides)
    return data


def resolve(args: argparse.Namespace, *, verb: str = "",
            relative_to: str = "") -> PipelineConfig:
    """The verb's config: defaults < `--config` < flags < `--set`, checked.

    Args:
        args: Parsed by a parser set up with `add_settings`.
        verb: For deprecation messages.
        relative_to: See `raw_settings`.

    Returns:
        The `PipelineConfig`; sections of later stages stay mappings for
        their stage to check (`from_dict(ExportOptions, config.export)`).

    Raises:
        ConfigError: A bad file, unknown key, or value of the wrong type or
            not allowed; the message names the file and the key.
    """
    data = raw_settings(args, verb=verb, relative_to=relative_to)
    return from_dict(PipelineConfig, data, f"{args.config}: " if args.config else "")


def _rooted(item: str, section: str, verb: str) -> str:
    key = item.partition("=")[0]
    roots = {f.name for f in dataclasses.fields(PipelineConfig)}
    if key.split(".")[0] in roots:
        return item
    warn_deprecated(verb, f"--set {key}=...", f"--set {section}.{key}=... (keys start at the root)")
    return f"{section}.{item}"


def warn_deprecated(verb: str, old: str, new: str) -> None:
    """Prints the one-line notice of an old spelling that still works."""
    print(f"vispipe {verb}: {old} is deprecated and goes in {REMOVED_IN}; use {new}.",
          file=sys.stderr)


class _DeprecatedFlag(argparse.Action):
    def __init__(self, option_strings, dest, new: str, verb: str, **kwargs):
        self.new, self.verb = new, verb
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(self.verb, option_string, self.new)
        setattr(namespace, self.dest, values)


def add_deprecated_flag(parser: argparse.ArgumentParser, old: str, new: str, dest: str,
                        verb: str) -> None:
    """Keeps `old` working as `new` (same `dest`), with a deprecation message."""
    parser.add_argument(old, action=_DeprecatedFlag, dest=dest, new=new, verb=verb,
                        default=argparse.SUPPRESS)


def add_output_flags(parser: argparse.ArgumentParser, *, quiet: bool = True) -> None:
    """`--json` (one JSON object on stdout) and `--quiet` (no progress bars)."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (progress goes to stderr)")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_run_flag(parser: argparse.ArgumentParser, help: str = "run folder") -> None:
    """`--run RUN_DIR`, and the old spelling: the run folder as a positional."""
    parser.add_argument("--run", metavar="RUN_DIR", help=help)
    parser.add_argument("legacy_run", nargs="?", help=argparse.SUPPRESS)


def parse_size(text: str) -> tuple[int, int]:
    """`HEIGHTxWIDTH` (or one number for a square) -> `(height, width)`."""
    height, sep, width = text.lower().partition("x")
    try:
        return int(height), int(width if sep else height)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH such as 28x28 or one number, got {text!r}"
        ) from None


def positional_operand(args: argparse.Namespace, legacy: str, flag: str, metavar: str,
                       verb: str) -> None:
    """Moves an old positional operand (the run folder...) to its flag, with a notice.

    Args:
        args: The parsed arguments.
        legacy: Dest of the old positional (None when not given).
        flag: Its flag now, e.g. `"--run"` (dest `run`).
        metavar: E.g. `"RUN"`, for the message.
        verb: For the message.
    """
    value = getattr(args, legacy, None)
    if value is None:
        return
    dest = flag.lstrip("-").replace("-", "_")
    if getattr(args, dest, None) not in (None, value):
        raise ConfigError(f"{metavar} given twice: {value!r} and {flag} {getattr(args, dest)!r}")
    warn_deprecated(verb, f"{metavar} as a positional argument", f"{flag} {metavar}")
    setattr(args, dest, value)
