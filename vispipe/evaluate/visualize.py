"""Per-layer activations and weights for one image (DIGITS "show visualizations").

The image goes through the network once; every layer's output is captured
by a probe model over the functional graph. Layers of nested models (a
`Sequential` or a backbone inside the network) are listed one by one as
`outer/inner`, not as a single block.

Written to the output folder:

- `layers.json`: the `LayerStats` of every layer;
- `activations/NNN_<layer>.png`: one tile per channel (up to
  `max_filters`) for layers with spatial `[H, W, C]` outputs;
- `weights/NNN_<layer>.png`: the kernels of the first convolution layers,
  one tile per filter (RGB when the layer sees a color image);
- `histograms/NNN_<layer>.png`: histograms of the activation and of each
  weight tensor.

Example:

```python
stats = visualize("runs/mnist", "digit.png", "viz/")
for s in stats:
    print(s.name, s.shape, s.mean, s.std, s.params)
```
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vispipe.configs import ImageOptions
from vispipe.data.format import ImageInput
from vispipe.evaluate.classify import load_for_inference
from vispipe.evaluate.plots import save_histograms, save_tile_grid
from vispipe.fileio import write_json_atomic

__all__ = [
    "HISTOGRAM_BINS",
    "WEIGHT_GRID_LAYERS",
    "TensorStats",
    "LayerStats",
    "tensor_stats",
    "layer_activations",
    "visualize",
]

HISTOGRAM_BINS = 20
WEIGHT_GRID_LAYERS = 2  # Kernels are drawn for this many convolution layers.


@dataclass
class TensorStats:
    """Summary of one tensor (a weight, or an activation).

    Attributes:
        name: Tensor name (a weight's path, e.g. `"conv1/kernel"`).
        shape: Its shape (activations: without the batch axis).
        mean, std, min, max: Over its finite values.
        histogram: `{"counts": [HISTOGRAM_BINS], "edges": [HISTOGRAM_BINS + 1]}`.
        size: Number of values (for a weight: its parameter count).
    """

    name: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    histogram: dict[str, list[float]]
    size: int

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["shape"] = list(self.shape)
        return data


@dataclass
class LayerStats:
    """One layer's activation for the image, its weights, and its figures.

    Attributes:
        name: Layer name; `outer/inner` inside nested models.
        class_name: Keras layer class, e.g. `"Conv2D"`.
        shape: Activation shape without the batch axis.
        mean, std, min, max, histogram: Of the activation (see `TensorStats`).
        params: Parameter count of the layer (all its weights).
        weights: `TensorStats` of each weight tensor (kernel, bias, ...).
        files: Written figures by kind (`"activations"`, `"weights"`,
            `"histogram"`).
    """

    name: str
    class_name: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    histogram: dict[str, list[float]]
    params: int
    weights: list[TensorStats] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class_name": self.class_name,
            "shape": list(self.shape),
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "histogram": self.histogram,
            "params": self.params,
            "weights": [w.to_json() for w in self.weights],
            "files": dict(self.files),
        }


def tensor_stats(name: str, values: np.ndarray, bins: int = HISTOGRAM_BINS) -> TensorStats:
    """Mean, std, min, max and a `bins`-bin histogram of `values`.

    Non-finite values are left out of the statistics (all zero when nothing
    finite remains).

    Example:

    ```python
    tensor_stats("x", np.arange(4.0)).mean  # 1.5
    ```
    """
    values = np.asarray(values)
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size:
        counts, edges = np.histogram(finite, bins=bins)
        summary = (finite.mean(), finite.std(), finite.min(), finite.max())
    else:
        counts, edges = np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1)
        summary = (0.0, 0.0, 0.0, 0.0)
    mean, std, low, high = (float(v) for v in summary)
    return TensorStats(
        name=name, shape=tuple(int(d) for d in values.shape), mean=mean, std=std,
        min=low, max=high, histogram={"counts": counts.tolist(), "edges": edges.tolist()},
        size=int(values.size),
    )


def _is_nested(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def layer_activations(model, batch: np.ndarray, prefix: str = "") -> list[tuple[str, Any, np.ndarray]]:
    """Every layer's output for `batch`, nested models flattened.

    Args:
        model: A built Keras model with one input (functional or
            `Sequential`).
        batch: Its input, `[B, ...]`.
        prefix: Prepended to layer names (used for nested models).

    Returns:
        `(name, layer, output array)` per layer, in graph order; input
        layers are left out. Layers with several outputs report the first.
    """
    import keras

    if len(model.inputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(model.inputs)} inputs; visualization "
            "supports one image input."
        )
    layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]

    def first(tensor):
        return tensor[0] if isinstance(tensor, (list, tuple)) else tensor

    # A nested model is probed at its input and then walked on its own.
    targets = [first(l.input) if _is_nested(l) else first(l.output) for l in layers]
    probe = keras.Model(model.inputs[0], targets)
    values = probe.predict_on_batch(batch)
    if not isinstance(values, (list, tuple)):
        values = [values]
    found = []
    for layer, value in zip(layers, values):
        if _is_nested(layer):
            found += layer_activations(layer, value, prefix=f"{prefix}{layer.name}/")
        else:
            found.append((prefix + layer.name, layer, np.asarray(value)))
    return found


def _file_name(index: int, name: str) -> str:
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


def _kernel_tiles(kernel: np.ndarray, max_filters: int) -> np.ndarray | None:
    """Tiles of a `[kh, kw, in, out]` kernel: RGB per filter for 3 inputs,
    else one grayscale tile per (filter, input channel)."""
    if kernel.ndim != 4:
        return None
    if kernel.shape[2] == 3:
        return kernel.transpose(3, 0, 1, 2)[:max_filters]
    return kernel.transpose(3, 2, 0, 1).reshape(-1, *kernel.shape[:2])[:max_filters]


def _layer_stats(index: int, name: str, layer, value: np.ndarray, out_dir: str,
                 max_filters: int, draw_kernel: bool) -> LayerStats:
    """Statistics of one layer's activation and weights, with its figures written."""
    activation = tensor_stats(name, value[0])
    weights = [] if layer is None else [
        tensor_stats(w.path, np.asarray(w.numpy())) for w in layer.weights
    ]
    entry = LayerStats(
        name=name,
        class_name="InputLayer" if layer is None else type(layer).__name__,
        shape=activation.shape, mean=activation.mean, std=activation.std,
        min=activation.min, max=activation.max, histogram=activation.histogram,
        params=sum(w.size for w in weights), weights=weights,
    )
    file_name = _file_name(index, name)
    if value.ndim == 4:
        entry.files["activations"] = save_tile_grid(
            value[0].transpose(2, 0, 1)[:max_filters],
            os.path.join(out_dir, "activations", file_name),
        )
    if layer is not None and draw_kernel:
        kernel = next((np.asarray(w.numpy()) for w in layer.weights if w.ndim == 4), None)
        tiles = None if kernel is None else _kernel_tiles(kernel, max_filters)
        if tiles is not None:
            entry.files["weights"] = save_tile_grid(
                tiles, os.path.join(out_dir, "weights", file_name)
            )
    panels = [("activation", activation.histogram["counts"], activation.histogram["edges"])]
    panels += [(w.name, w.histogram["counts"], w.histogram["edges"]) for w in weights]
    entry.files["histogram"] = save_histograms(
        panels, os.path.join(out_dir, "histograms", file_name),
        title=f"{name} ({entry.class_name})",
    )
    return entry


def visualize(
    run_dir,
    image_path: str,
    out_dir: str,
    *,
    image_options: ImageOptions | ImageInput | None = None,
    max_filters: int = 64,
    which: str = "final",
) -> list[LayerStats]:
    """Activations, weights and their statistics for every layer, for one image.

    Args:
        run_dir: A run folder, or a Keras model (float32 0-255 images in).
        image_path: The image; loaded like the dataset's images.
        out_dir: Folder for `layers.json` and the PNGs.
        image_options: How to load the image; default: the run's
            `RunInfo.image` (for a model: squash to its input shape).
        max_filters: Most tiles per activation or weight grid.
        which: For a run folder: `"final"`, `"best"` or `"last"` model.

    Returns:
        One `LayerStats` per layer, the input first (named after the input
        layer, `class_name` `"InputLayer"`).

    Example:

    ```python
    stats = visualize("runs/cifar", "cat.jpg", "viz/cat", max_filters=32)
    ```
    """
    from vispipe.data.images import load_image

    if max_filters < 1:
        raise ValueError(f"max_filters: expected an integer >= 1, got {max_filters!r}.")
    model, _, run_image = load_for_inference(run_dir, which)
    image_options = image_options or run_image
    image, _ = load_image(image_path, image_options)
    batch = image[None].astype(np.float32)

    input_name = model.inputs[0].name if model.inputs else "input"
    entries = [(input_name, None, batch)] + layer_activations(model, batch)
    stats = []
    for index, (name, layer, value) in enumerate(entries):
        drawn = sum("weights" in s.files for s in stats)
        stats.append(_layer_stats(index, name, layer, value, out_dir, max_filters,
                                  draw_kernel=drawn < WEIGHT_GRID_LAYERS))

    write_json_atomic(os.path.join(out_dir, "layers.json"), {
        "image": os.path.abspath(image_path),
        "model": model.name,
        "image_options": dataclasses.asdict(image_options),
        "layers": [s.to_json() for s in stats],
    })
    return stats
