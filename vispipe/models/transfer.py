"""Initialising a model from earlier weights, and freezing its backbone.

`load_pretrained` copies weights layer by layer from a `.keras` model (or a
run folder holding one), matching layers by name, or from a `.weights.h5`
file, matching layers by their position in the model as Keras' own weight
files address them. A layer is loaded only when all its weight shapes
agree, so a classifier head for a different number of classes is skipped,
as is a head for other classes (a run folder's labels.txt); a skipped head
starts at zero (`zero_head`).
The target's `Preprocess` layer is never overwritten: it holds the current
dataset's statistics.

Example:

```python
report = load_pretrained(model, "runs/mnist-lenet")
print(report)
set_backbone_trainable(model, False)  # then compile and fit the head
```
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import keras
import numpy as np

from vispipe.models.layers import Preprocess

__all__ = [
    "HEAD_LAYERS",
    "TransferReport",
    "resolve_weights_path",
    "load_pretrained",
    "backbone_blocks",
    "set_backbone_trainable",
    "zero_head",
    "frozen_epochs",
]

HEAD_LAYERS = ("classifier", "predictions")
# Name prefixes that make a block (see `backbone_blocks`), tried in order.
_BLOCK_NAME = re.compile(
    r"^(conv\d+_block\d+|inception_\d+[a-z]|block_?\d+[a-z]?|expanded_conv|stem|top|conv\d+)_"
)


@dataclass
class TransferReport:
    """What `load_pretrained` did.

    Attributes:
        source: The file the weights came from.
        loaded: Names of the layers whose weights were copied.
        skipped: Layer name -> why its weights were not copied.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"Loaded {len(self.loaded)} layers from {self.source}."]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def resolve_weights_path(path: str | os.PathLike) -> str:
    """The weights file behind `path`.

    Args:
        path: A `.weights.h5` or `.keras` file, or a run folder: its
            `model.keras`, else the newest `checkpoints/*.keras`.

    Returns:
        The file path.

    Raises:
        FileNotFoundError: Nothing usable at `path`.
        ValueError: A file with another extension.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        final = os.path.join(path, "model.keras")
        if os.path.isfile(final):
            return final
        checkpoints = glob.glob(os.path.join(path, "checkpoints", "*.keras"))
        if not checkpoints:
            raise FileNotFoundError(
                f"Run folder {path!r} has neither model.keras nor "
                "checkpoints/*.keras."
            )
        return max(checkpoints, key=os.path.getmtime)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Pretrained weights {path!r} do not exist.")
    if not path.endswith((".keras", ".weights.h5")):
        raise ValueError(
            f"Pretrained weights {path!r}: expected a .keras or .weights.h5 "
            "file, or a run folder."
        )
    return path


def load_pretrained(model: keras.Model, path: str | os.PathLike,
                    classes: Sequence[str] | None = None) -> TransferReport:
    """Copies matching weights from `path` into `model`, in place.

    Args:
        model: The model to initialise (already built).
        path: See `resolve_weights_path`.
        classes: The classes `model` is for. When the source is a run
            folder (or a model file in one) whose `labels.txt` names other
            classes, the head is not copied even if its shape fits: a head
            for other classes would start out confidently wrong.

    Returns:
        A `TransferReport` naming the loaded and skipped layers.

    Raises:
        ValueError: No layer of `model` matched the source.

    Example:

    ```python
    report = load_pretrained(model, "runs/cifar-resnet18/model.keras")
    assert "classifier" in report.skipped  # a different class count
    ```
    """
    source = resolve_weights_path(path)
    if source.endswith(".keras"):
        source_model = keras.saving.load_model(source, compile=False)
        by_key = {layer.name: layer.get_weights()
                  for layer in _leaf_layers(source_model)}
        targets = {layer.name: layer for layer in _leaf_layers(model)}
    else:
        by_key = _read_h5_weights(source)
        targets = dict(_h5_paths(model, "layers"))

    report = TransferReport(source=source)
    source_classes = _run_classes(source)
    other_classes = (classes is not None and source_classes is not None
                     and list(classes) != source_classes)
    for key, layer in targets.items():
        if not layer.weights:
            continue
        if isinstance(layer, Preprocess):
            report.skipped[layer.name] = "preprocessing of this dataset is kept"
            continue
        if other_classes and layer.name in HEAD_LAYERS:
            report.skipped[layer.name] = (
                f"the source was trained on other classes ({', '.join(source_classes[:5])}"
                f"{', ...' if len(source_classes) > 5 else ''}): a new head is trained")
            continue
        arrays = by_key.get(key)
        if arrays is None:
            report.skipped[layer.name] = "not in the source"
            continue
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if want != got:
            report.skipped[layer.name] = f"shapes {got} in the source, {want} here"
            continue
        layer.set_weights(arrays)
        report.loaded.append(layer.name)
    if "classifier" in report.skipped:
        zero_head(model)
    if not report.loaded:
        raise ValueError(
            f"No layer of model {model.name!r} matched the weights in "
            f"{source!r} (by name and shape); is it the same network?"
        )
    return report


def zero_head(model: keras.Model) -> None:
    """Starts a new "classifier" head at zero: uniform predictions.

    As in BiT (Kolesnikov et al. 2020). A random head would not be new: with
    the run's seed it is the very initialisation the source run's head
    started from, and the pretrained backbone has adapted to that head, so
    the target's classes would start out mapped to the source's.
    """
    for layer in _leaf_layers(model):
        if layer.name == "classifier":
            layer.set_weights([np.zeros(w.shape, w.dtype) for w in layer.get_weights()])


def frozen_epochs(freeze_epochs: int, weights: str) -> int:
    """`ModelConfig.freeze_epochs` resolved: -1 is 1 with pretrained `weights`, else 0."""
    if freeze_epochs == -1:
        return 1 if weights else 0
    return freeze_epochs


def _run_classes(source: str) -> list[str] | None:
    """The classes of the run folder holding `source` (its labels.txt), if any."""
    folder = os.path.dirname(os.path.abspath(source))
    if os.path.basename(folder) == "checkpoints":
        folder = os.path.dirname(folder)
    labels = os.path.join(folder, "labels.txt")
    if not os.path.isfile(labels):
        return None
    with open(labels, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def backbone_blocks(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's layers with weights, grouped into blocks, input to output.

    A block is a run of layers sharing a name prefix: a residual block
    ("conv3_block2_..."), an inception module ("inception_4a_..."), an MBConv
    block ("block_5_...", "block2a_..."), a VGG stage ("block3_..."), a stem
    or top ("conv1_...", "stem_...", "top_..."); a BatchNormalization layer
    joins the layer before it, and any other layer is a block of its own
    (LeNet's and AlexNet's conv and fc layers). The head and `Preprocess`
    are left out.

    Args:
        model: A vispipe classifier (nested models are walked into).

    Returns:
        The blocks, each a list of layers, in depth order.

    Example:

    ```python
    blocks = backbone_blocks(model)
    print(len(blocks), [layer.name for layer in blocks[-1]])
    ```
    """
    blocks: dict[str, list[keras.layers.Layer]] = {}
    key = ""
    for layer in _backbone_layers(model):
        if not layer.weights:
            continue
        match = _BLOCK_NAME.match(layer.name)
        if match:
            key = match.group(1)
        elif not (isinstance(layer, keras.layers.BatchNormalization) and key):
            key = layer.name
        blocks.setdefault(key, []).append(layer)
    return list(blocks.values())


def set_backbone_trainable(model: keras.Model, trainable: bool, last_blocks: int = 0) -> None:
    """Freezes or unfreezes everything but the classifier head.

    The head is the layers named "classifier" and "predictions", or, in a
    custom network without them, its last layer with weights. A frozen
    BatchNormalization layer runs in inference mode (Keras uses its moving
    statistics when `trainable` is False), as in Keras' transfer-learning
    guide. Recompile the model afterwards for the change to take effect.

    Args:
        model: A vispipe classifier (nested models are walked into).
        trainable: False to freeze the backbone, True to unfreeze it.
        last_blocks: With `trainable`, unfreeze only the last this many
            blocks of `backbone_blocks` (0: the whole backbone).

    Example:

    ```python
    set_backbone_trainable(model, False)
    model.compile(...)
    set_backbone_trainable(model, True, last_blocks=3)  # then recompile
    ```
    """
    if last_blocks < 0:
        raise ValueError(f"last_blocks: expected an integer >= 0, got {last_blocks!r}.")
    leaves = [layer for layer in _leaf_layers(model)
              if not isinstance(layer, Preprocess)]
    head = _head(leaves)
    for layer in leaves:
        layer.trainable = (trainable and not last_blocks) or layer in head
    if trainable and last_blocks:
        for block in backbone_blocks(model)[-last_blocks:]:
            for layer in block:
                layer.trainable = True


def _head(leaves: list[keras.layers.Layer]) -> list[keras.layers.Layer]:
    head = [layer for layer in leaves if layer.name in HEAD_LAYERS]
    return head or [layer for layer in leaves if layer.weights][-1:]


def _backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    leaves = [layer for layer in _leaf_layers(model) if not isinstance(layer, Preprocess)]
    head = _head(leaves)
    return [layer for layer in leaves if layer not in head]


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _snake_case(name: str) -> str:
    # Keras' naming of saved layers (keras.src.utils.naming.to_snake_case).
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _h5_paths(model: keras.Model, prefix: str):
    """(path, layer) pairs as `save_weights` addresses each layer."""
    used: dict[str, int] = {}
    for layer in model.layers:
        name = _snake_case(type(layer).__name__)
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        if isinstance(layer, keras.Model):
            yield from _h5_paths(layer, f"{prefix}/{name}/layers")
        else:
            yield f"{prefix}/{name}", layer


def _read_h5_weights(path: str) -> dict[str, list[np.ndarray]]:
    """Layer path -> its variables, from a Keras `.weights.h5` file."""
    import h5py

    found: dict[str, list[np.ndarray]] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and name.endswith("/vars") and len(obj):
            found[name[: -len("/vars")]] = [
                obj[key][()] for key in sorted(obj, key=int)
            ]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found
