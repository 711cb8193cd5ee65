"""Which models are served: ModelSpec, version policies, and TF Serving's models.config.

```python
specs = read_model_config_file("models.config")   # model_config_list { config { ... } }
spec = ModelSpec(name="lenet", base_path="/models/lenet", version_labels={"stable": 1})
```
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

__all__ = [
    "VersionPolicy",
    "ModelSpec",
    "validate_model_name",
    "parse_model_config",
    "read_model_config_file",
    "specs_from_proto",
]

# TF Serving names are URL path segments; this also rules out path traversal.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_LABEL_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_POLICY_KINDS = ("latest", "all", "specific")


def validate_model_name(name: str, what: str = "model name") -> str:
    """Returns `name` if it is a safe model (or label) name, else raises ValueError.

    Args:
        name: the name to check.
        what: what the name is, for the error message.

    Returns:
        `name` unchanged.

    Example:
    >>> validate_model_name("lenet")
    'lenet'
    """
    pattern = _LABEL_PATTERN if what == "version label" else _NAME_PATTERN
    if not isinstance(name, str) or not pattern.match(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: expected letters, digits, '_', '-', '.' "
            f"(matching {pattern.pattern}) and no '..'"
        )
    return name


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which numeric version folders of a model are served (TF Serving semantics).

    Args:
        kind: "latest" (the `num_versions` highest), "all", or "specific".
        num_versions: how many of the latest versions to serve with "latest".
        versions: the version numbers to serve with "specific".
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", [int(v) for v in self.versions])
        if self.kind not in _POLICY_KINDS:
            raise ValueError(f"version policy kind: expected one of {list(_POLICY_KINDS)}, got {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"version policy latest: num_versions must be >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("version policy specific: expected at least one version, got none")

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of the `available` ones, ascending.

        Example:
        >>> VersionPolicy("latest", 2).select([1, 3, 2])
        [2, 3]
        """
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        return [v for v in ordered if v in set(self.versions)]

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """Parses "latest", "latest:2", "all" or "specific:1,3" (the CLI form).

        Example:
        >>> VersionPolicy.parse("specific:1,3").versions
        [1, 3]
        """
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                return cls("latest", int(arg) if arg else 1)
            if kind == "specific":
                return cls("specific", versions=[int(v) for v in arg.split(",") if v])
        except ValueError:
            raise ValueError(
                f"version policy: expected 'latest[:N]', 'all' or 'specific:V1,V2', got {text!r}"
            ) from None
        return cls(kind)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One served model: a base path holding numeric version folders (`00000123/` is version 123).

    Args:
        name: the model name used in URLs (`/v1/models/{name}`).
        base_path: folder with `<version>/saved_model.pb` sub-folders.
        version_policy: which versions to serve.
        version_labels: label -> version, e.g. {"stable": 1, "canary": 2}.
    """

    name: str
    base_path: str
    version_policy: VersionPolicy = VersionPolicy()
    version_labels: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_model_name(self.name)
        if not isinstance(self.base_path, str) or not self.base_path:
            raise ValueError(f"model {self.name!r}: expected a base_path, got {self.base_path!r}")
        for label, version in self.version_labels.items():
            validate_model_name(label, "version label")
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise ValueError(f"model {self.name!r} label {label!r}: expected a version number, got {version!r}")


def _policy(proto: Any) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        return VersionPolicy("specific", versions=list(proto.specific.versions))
    return VersionPolicy("latest", proto.latest.num_versions or 1)


def specs_from_proto(proto: Any, source: str, relative_to: str | None = None) -> list[ModelSpec]:
    """ModelSpecs of a `ModelServerConfig` proto (its model_config_list).

    Args:
        proto: a tensorflow.serving.ModelServerConfig.
        source: where it came from, for error messages.
        relative_to: folder that relative base paths are taken from; None
            requires absolute base paths, as TF Serving does.

    Returns:
        One ModelSpec per `config { ... }` entry.

    Raises:
        ValueError: naming the entry and what is wrong with it.
    """
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{source}: expected a model_config_list {{ config {{ ... }} }}, got none")
    specs = []
    for entry in proto.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ValueError(f"{source}: each config needs a name and a base_path, got {entry}".strip())
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"{source}: model {entry.name!r}: expected model_platform 'tensorflow', got {entry.model_platform!r}"
            )
        base_path = entry.base_path
        if not os.path.isabs(base_path):
            if relative_to is None:
                raise ValueError(
                    f"Expected model {entry.name} to have an absolute path or URI; got base_path()={base_path}"
                )
            base_path = os.path.join(relative_to, base_path)
        specs.append(ModelSpec(entry.name, base_path, _policy(entry.model_version_policy), dict(entry.version_labels)))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Illegal to list model {duplicates[0]} multiple times in config list")
    return specs


def parse_model_config(text: str, source: str = "<models.config>", relative_to: str | None = None) -> list[ModelSpec]:
    """Parses a TF Serving `--model_config_file` (ModelServerConfig text proto, model_config_list).

    Args:
        text: the text proto.
        source: the file name, for error messages.
        relative_to: folder for relative base paths (None: they must be absolute).

    Returns:
        One ModelSpec per `config { ... }` entry.

    Example:
    >>> parse_model_config('model_config_list { config { name: "m" base_path: "/models/m" } }')[0].name
    'm'
    """
    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as error:
        raise ValueError(f"{source}: not a ModelServerConfig text proto: {error}") from None
    return specs_from_proto(proto, source, relative_to)


def read_model_config_file(path: str) -> list[ModelSpec]:
    """Reads a TF Serving models.config file; relative base paths are taken from its folder.

    Example:
    >>> specs = read_model_config_file("exports/mnist/savedmodel/models.config")  # doctest: +SKIP
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_model_config(text, source=path, relative_to=os.path.dirname(os.path.abspath(path)))
