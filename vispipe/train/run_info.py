"""`RunInfo`: the typed record of a run's `run.json`, the train stage's output contract.

At train time the run copies from its dataset everything a later stage needs
to use the model: the classes, how an image file becomes an input (`image`:
size, channels, resize mode) and the normalization inside the model.
Evaluate, classify, visualize, export and the pipeline read a run only
through `RunInfo`; none goes back to the dataset to learn how to load an
image.

`run.json` (format 2), kept thin:

```
{
  "version": 2,
  "name": "mnist",
  "status": "completed",           # running | completed | failed | interrupted
  "error": null,                   # "Type: message" when failed
  "dataset_dir": "/abs/datasets/mnist",
  "classes": ["0", "1", ...],      # index = label id (labels.txt holds the same)
  "image": {"height": 28, "width": 28, "channels": 1, "resize_mode": "squash"},
  "normalization": {"mode": "standardize", "mean": [33.3], "std": [78.6],
                    "mean_image_file": null, "to_rgb": false},
  "model": {...}, "train": {...},  # ModelConfig, TrainConfig
  "pretrained": {"source": "imagenet", "file": "/abs/.keras/models/..._notop.h5"},  # or null
  "warnings": [{"epoch": 3, "kind": "val_accuracy_at_chance", "message": "..."}],
  "steps_per_epoch": 844, "epochs_completed": 12,
  "created": "...", "finished": "...", "registry_id": 3,
  "device": {...}, "result": {...}, "distributed": {...}   # reports
}
```

A format-1 `run.json` (before `image` and `normalization`) does not load:
`OutdatedRunError` names the missing fields and the upgrade,
`vispipe upgrade-run --run RUN` (`vispipe.train.run_folder.upgrade_run_folder`).

Example:

```python
info = read_run_info("runs/mnist")
array, note = load_image("digit.png", info.image)
print(info.classes, info.normalization.mode)
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vispipe.config_io import from_dict
from vispipe.configs import PREPROCESS_MODES, ModelConfig, TrainConfig, choices
from vispipe.data.format import ImageInput

__all__ = [
    "RUN_FORMAT_VERSION",
    "RUN_STATUSES",
    "Normalization",
    "PretrainedWeights",
    "RunWarning",
    "RunInfo",
    "OutdatedRunError",
]

RUN_FORMAT_VERSION = 2
RUN_STATUSES = ("running", "completed", "failed", "interrupted")


class OutdatedRunError(ValueError):
    """A `run.json` of an older format, which `upgrade_run_folder` rewrites."""


@dataclass
class Normalization:
    """The normalization inside the run's model (its `Preprocess` layer).

    With `weights: imagenet` it is the weights' own input normalization,
    whatever `train.normalization` says.

    Attributes:
        mode: One of `vispipe.configs.PREPROCESS_MODES`: the dataset
            normalizations, or "caffe" (RGB to BGR minus the ImageNet means)
            and "tf" (to [-1, 1]) of pretrained weights.
        mean: Per-channel mean on the 0-255 scale ("standardize", "pixel").
        std: Per-channel standard deviation ("standardize").
        mean_image_file: The dataset's mean image, `mean.npy` ("image").
        to_rgb: A grayscale input is repeated to three channels first.
    """

    mode: str = choices(PREPROCESS_MODES)
    mean: list[float] | None = None
    std: list[float] | None = None
    mean_image_file: str | None = None
    to_rgb: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PretrainedWeights:
    """The weights a run started from (`model.weights`).

    Attributes:
        source: `model.weights` as given: "imagenet", a file or a run folder.
        file: The file loaded (absolute).
    """

    source: str
    file: str


@dataclass
class RunWarning:
    """A problem found while training, for the log, the UI and `run.json`.

    Attributes:
        epoch: The epoch (1-based) after which it was found.
        kind: What kind, e.g. "val_accuracy_at_chance".
        message: The sentence shown, with the likely cause.
    """

    epoch: int
    kind: str
    message: str


@dataclass
class RunInfo:
    """The contents of `run.json`.

    Attributes:
        name: Run name.
        dataset_dir: The dataset it trained on (absolute).
        classes: Class names, index = label id.
        image: How an image file becomes an input (copied from the dataset).
        normalization: What the model's preprocessing does.
        model: The network settings.
        train: The solver settings.
        pretrained: The weights it started from, or None (from scratch).
        warnings: Problems found while training (`RunWarning`).
        status: One of `RUN_STATUSES`.
        error: Why a "failed" run failed.
        created, finished: ISO-8601 UTC times.
        steps_per_epoch: Optimizer steps per epoch.
        epochs_completed: Epochs trained so far.
        registry_id: The run's registry entry, if any.
        device, result, distributed: Reports of where it trained, its
            outcome and its replicas (free-form; for people and the UI).
        version: `RUN_FORMAT_VERSION`.
        path: The run folder (not stored; set when read).
    """

    name: str
    dataset_dir: str
    classes: list[str]
    image: ImageInput
    normalization: Normalization
    model: ModelConfig
    train: TrainConfig
    pretrained: PretrainedWeights | None = None
    warnings: list[RunWarning] = field(default_factory=list)
    status: str = choices(RUN_STATUSES, "running")
    error: str | None = None
    created: str = ""
    finished: str | None = None
    steps_per_epoch: int = 0
    epochs_completed: int = 0
    registry_id: int | None = None
    device: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    distributed: dict[str, Any] = field(default_factory=dict)
    version: int = RUN_FORMAT_VERSION
    path: str = field(default="", compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        """The `run.json` mapping (without `path`)."""
        data = dataclasses.asdict(self)
        data.pop("path")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str, path: str = "") -> "RunInfo":
        """Checks and types a `run.json` mapping.

        Args:
            data: The mapping.
            where: The file, for error messages.
            path: The run folder.

        Raises:
            OutdatedRunError: Format 1 (names the missing fields and the upgrade).
            ValueError: Another unknown version.
            ConfigError: A missing, unknown or mistyped field (named).
        """
        version = data.get("version")
        if version == 1:
            raise OutdatedRunError(
                f"{where}: run format 1 has no 'image' (size, channels, resize mode) and no "
                f"'normalization'; upgrade it with `vispipe upgrade-run --run {path or '<run>'}`"
                " (it copies them from the run's dataset)."
            )
        if version != RUN_FORMAT_VERSION:
            raise ValueError(f"{where}: expected run format version {RUN_FORMAT_VERSION}, "
                             f"got {version!r}.")
        info = from_dict(cls, {k: v for k, v in data.items() if k != "path"}, f"{where}: ")
        info.path = path
        return info
