"""Where a classifier looks: Grad-CAM and Grad-CAM++ heat maps for any Keras model.

Grad-CAM (Selvaraju et al. 2017) weights the feature maps `A_k` of a spatial
layer by the mean gradient of the class score over each map and keeps the
positive part: `relu(sum_k mean(d y_c / d A_k) * A_k)`. Grad-CAM++
(Chattopadhay et al. 2018) weights each position's positive gradient by
`alpha = g^2 / (2 g^2 + sum(A) g^3)`, which separates several instances of a
class better. Both take one forward and one backward pass.

The class score `y_c` is the pre-softmax logit when the model ends in a
softmax (a zoo network's "predictions" layer, a `Softmax`/`Activation` layer
or a `Dense(..., activation="softmax")`): a confident prediction's
probability saturates and its gradient vanishes, the logit's does not.

Any functional or sequential model works, nested models included (a custom
network inside vispipe's classifier, a backbone inside a custom network): the
graph is inlined so that a layer deep inside is reachable. By default the
layer is the last one with a spatial output (rank 4, more than one
position); name another as `"conv2"` or, inside a nested model,
`"network/conv2"`.

Check it the way the paper does (`pasted_localisation`): paste test images
into a larger canvas at random places; the heat map's peak should fall
inside the pasted image.

Example:

```python
cam = GradCam(model)                  # the last spatial layer
result = cam(images)                  # heat maps for the predicted classes
save_overlay(images[0], result.heatmaps[0], "cam.png")
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "CAM_METHODS",
    "CamResult",
    "GradCam",
    "gradcam",
    "spatial_layers",
    "find_target_layer",
    "overlay_heatmap",
    "save_overlay",
    "overlay_png",
    "heatmap_peak",
    "LocalisationResult",
    "paste_into_canvas",
    "pasted_localisation",
]

CAM_METHODS = ("gradcam", "gradcam++")
_EPS = 1e-7


@dataclass
class CamResult:
    """Heat maps of one batch.

    Attributes:
        heatmaps: float32 `[B, H, W]` in [0, 1] at the input's size (all
            zeros where no position supports the class).
        class_ids: int64 `[B]`: the class each map explains.
        probabilities: float32 `[B, C]`: the model's output.
        layer: The explained layer's path (`"conv2"`, `"network/conv2"`).
        method: One of `CAM_METHODS`.
    """

    heatmaps: np.ndarray
    class_ids: np.ndarray
    probabilities: np.ndarray
    layer: str
    method: str


def _keras():
    import keras

    return keras


def _is_nested(layer) -> bool:
    return isinstance(layer, _keras().Model)


def _walk(model, prefix: str = "") -> list[tuple[str, Any]]:
    """`(path, layer)` for every layer, nested models expanded, in graph order."""
    keras = _keras()
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = f"{prefix}{layer.name}"
        if _is_nested(layer):
            found += _walk(layer, prefix=f"{path}/")
        else:
            found.append((path, layer))
    return found


def _spatial(layer) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # Never called, or called several times.
        return False
    if len(shape) != 4:
        return False
    height, width = shape[1], shape[2]
    return height is None or width is None or height * width > 1


def spatial_layers(model) -> list[str]:
    """Paths of the layers whose output is a spatial map, in graph order.

    Args:
        model: A built functional or sequential Keras model.

    Returns:
        Paths such as `"conv1"`, or `"network/conv2"` inside a nested model.
    """
    keras = _keras()
    skipped = (keras.layers.InputLayer,)
    return [path for path, layer in _walk(model)
            if not isinstance(layer, skipped) and _spatial(layer)
            and not _is_preprocessing(layer)]


def _is_preprocessing(layer) -> bool:
    # vispipe's input normalization keeps the image's shape but is no feature.
    return type(layer).__name__ in ("Preprocess", "Rescaling", "Normalization")


def find_target_layer(model, layer: str | None = None) -> str:
    """The path of the layer to explain.

    Args:
        model: A built Keras model.
        layer: A layer name or path; None picks the last spatial layer.

    Returns:
        The layer's path.

    Raises:
        ValueError: No such layer, a layer without a spatial output, or a
            model without any (naming the candidates).

    Example:

    ```python
    find_target_layer(model)            # e.g. "pool2"
    find_target_layer(model, "conv1")
    ```
    """
    candidates = spatial_layers(model)
    if layer is None:
        if not candidates:
            raise ValueError(
                f"Model {model.name!r} has no layer with a spatial output (rank 4, more "
                "than one position): Grad-CAM needs one."
            )
        return candidates[-1]
    paths = [path for path, _ in _walk(model)]
    matches = [p for p in paths if p == layer or p.rsplit("/", 1)[-1] == layer]
    if not matches:
        raise ValueError(
            f"Model {model.name!r} has no layer {layer!r}; spatial layers: {candidates}."
        )
    if matches[0] not in candidates:
        raise ValueError(
            f"Layer {layer!r} of model {model.name!r} has no spatial output; choose one "
            f"of {candidates}."
        )
    return matches[0]


def _softmax_layer(layer) -> bool:
    keras = _keras()
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Activation) and getattr(
        activation, "__name__", "") == "softmax"


def _dense_softmax(layer) -> bool:
    keras = _keras()
    return isinstance(layer, keras.layers.Dense) and getattr(
        layer.activation, "__name__", "") == "softmax"


class _Inliner:
    """Rebuilds a model's graph on new inputs with every nested model inlined,
    recording the target layer's output and the logits before a softmax."""

    def __init__(self, target: str):
        self.target = target
        self.activation = None
        self.softmax_calls: list[tuple[Any, Any]] = []  # (logits, probabilities)

    def run(self, model, inputs, prefix: str = ""):
        keras = _keras()
        if isinstance(model, keras.Sequential):
            x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
            for layer in model.layers:
                x = self.call(layer, x, prefix=prefix)
            return x

        def call_fn(layer, *args, **kwargs):
            return self.call(layer, *args, prefix=prefix, **kwargs)

        # Keras's own graph walk (what `Functional.call` runs), with our call
        # at each node: the public `clone_model(call_function=...)` cannot
        # inline a nested model, and the target may be inside one.
        return model._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call_fn)

    def call(self, layer, *args, prefix: str, **kwargs):
        keras = _keras()
        path = f"{prefix}{layer.name}"
        if _is_nested(layer):
            inner = args[0] if len(args) == 1 else list(args)
            return self.run(layer, inner, prefix=f"{path}/")
        if _dense_softmax(layer):
            x = args[0]
            logits = keras.ops.matmul(x, layer.kernel)
            if layer.use_bias:
                logits = keras.ops.add(logits, layer.bias)
            output = layer(*args, **kwargs)
            self.softmax_calls.append((logits, output))
        elif _softmax_layer(layer):
            output = layer(*args, **kwargs)
            self.softmax_calls.append((args[0], output))
        else:
            output = layer(*args, **kwargs)
        if path == self.target:
            self.activation = output
        return output


class GradCam:
    """A Grad-CAM explainer bound to one model and layer.

    Args:
        model: A built Keras model taking images (as the model expects them:
            for a vispipe run, float32 0-255) and returning class
            probabilities (or logits) `[B, C]`.
        layer: The layer to explain (see `find_target_layer`); None: the
            last spatial layer.
        method: `"gradcam"` or `"gradcam++"`.

    Example:

    ```python
    explain = GradCam(load_run_model("runs/mnist"), method="gradcam++")
    result = explain(batch, class_ids=[3] * len(batch))
    ```
    """

    def __init__(self, model, layer: str | None = None, method: str = "gradcam"):
        keras = _keras()
        if method not in CAM_METHODS:
            raise ValueError(f"method: expected one of {CAM_METHODS}, got {method!r}.")
        if len(model.inputs) != 1:
            raise ValueError(
                f"Model {model.name!r} has {len(model.inputs)} inputs; Grad-CAM supports "
                "one image input."
            )
        self.layer = find_target_layer(model, layer)
        self.method = method
        self.model = model
        inliner = _Inliner(self.layer)
        source = model.inputs[0]
        inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype)
        output = inliner.run(model, [inputs])
        if isinstance(output, (list, tuple)):
            output = output[0]
        score = output
        for logits, probabilities in inliner.softmax_calls:
            if probabilities is output:
                score = logits
        self._graph = keras.Model(inputs, [inliner.activation, score, output])

    def __call__(self, images: np.ndarray, class_ids: Sequence[int] | None = None,
                 batch_size: int = 64) -> CamResult:
        """Heat maps for `images`.

        Args:
            images: `[B, H, W, C]` as the model takes them.
            class_ids: The class to explain per image; None: the predicted one.
            batch_size: Images per forward/backward pass.

        Returns:
            A `CamResult`.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"images: expected [batch, height, width, channels], got "
                             f"shape {images.shape}.")
        if class_ids is not None and len(class_ids) != len(images):
            raise ValueError(f"class_ids: expected {len(images)} ids, got {len(class_ids)}.")
        maps, ids, probs = [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            wanted = None if class_ids is None else np.asarray(
                class_ids[start:start + batch_size], np.int64)
            heat, chosen, prob = self._explain(chunk, wanted)
            maps.append(heat)
            ids.append(chosen)
            probs.append(prob)
        return CamResult(np.concatenate(maps), np.concatenate(ids), np.concatenate(probs),
                         self.layer, self.method)

    def _explain(self, images: np.ndarray, class_ids: np.ndarray | None):
        import tensorflow as tf

        x = tf.convert_to_tensor(images)
        with tf.GradientTape() as tape:
            tape.watch(x)  # Records every op, even with frozen layers.
            activation, score, probabilities = self._graph(x, training=False)
            activation = tf.cast(activation, tf.float32)
            score = tf.cast(score, tf.float32)
            chosen = (tf.argmax(probabilities, axis=-1) if class_ids is None
                      else tf.constant(class_ids))
            target = tf.gather(score, chosen, axis=1, batch_dims=1)
        grads = tape.gradient(target, activation)
        if grads is None:
            raise ValueError(f"Layer {self.layer!r} does not influence the model's output.")
        cam = _combine(activation.numpy(), grads.numpy(), self.method)
        resized = tf.image.resize(cam[..., None], images.shape[1:3],
                                  method="bilinear")[..., 0].numpy()
        peak = resized.reshape(len(resized), -1).max(axis=1)[:, None, None]
        resized = np.where(peak > 0, resized / np.maximum(peak, _EPS), 0.0)
        return (resized.astype(np.float32), chosen.numpy().astype(np.int64),
                np.asarray(probabilities, np.float32))


def _combine(activation: np.ndarray, grads: np.ndarray, method: str) -> np.ndarray:
    """`relu(sum_k w_k A_k)` with Grad-CAM's or Grad-CAM++'s weights `w`."""
    if method == "gradcam":
        weights = grads.mean(axis=(1, 2))
    else:
        g2 = grads ** 2
        g3 = g2 * grads
        total = activation.sum(axis=(1, 2), keepdims=True)
        alpha = g2 / (2 * g2 + total * g3 + _EPS)
        alpha = np.where(grads != 0, alpha, 0.0)
        weights = (alpha * np.maximum(grads, 0)).sum(axis=(1, 2))
    cam = np.einsum("bhwk,bk->bhw", activation, weights)
    return np.maximum(cam, 0).astype(np.float32)


def gradcam(model, images: np.ndarray, *, layer: str | None = None,
            class_ids: Sequence[int] | None = None, method: str = "gradcam") -> CamResult:
    """One-call Grad-CAM: `GradCam(model, layer, method)(images, class_ids)`.

    Example:

    ```python
    heat = gradcam(model, images[:8]).heatmaps
    ```
    """
    return GradCam(model, layer, method)(images, class_ids)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with its heat map blended on top (jet colour map).

    Args:
        image: uint8 (or 0-255 float) `[H, W]`, `[H, W, 1]` or `[H, W, 3]`.
        heatmap: `[H, W]` in [0, 1].
        alpha: Opacity of the heat map.

    Returns:
        uint8 `[H, W, 3]`.
    """
    from matplotlib import colormaps

    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"heatmap: expected shape {image.shape[:2]}, got {heatmap.shape}.")
    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * image + alpha * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


def _overlay_picture(image: np.ndarray, heatmap: np.ndarray, scale: int, alpha: float):
    from PIL import Image

    rgb = overlay_heatmap(image, heatmap, alpha)
    factor = scale or max(1, -(-128 // rgb.shape[0]))
    picture = Image.fromarray(rgb)
    if factor > 1:
        picture = picture.resize((rgb.shape[1] * factor, rgb.shape[0] * factor),
                                 Image.Resampling.NEAREST)
    return picture


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: str, *,
                 scale: int = 0, alpha: float = 0.45) -> str:
    """Writes `overlay_heatmap(image, heatmap)` as a PNG (upscaled small images).

    Args:
        image, heatmap, alpha: As for `overlay_heatmap`.
        path: The PNG to write (folders are created).
        scale: Integer upscale factor; 0 picks one that makes the image at
            least 128 pixels high.

    Returns:
        `path`.
    """
    picture = _overlay_picture(image, heatmap, scale, alpha)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial.png"
    picture.save(tmp)
    os.replace(tmp, path)
    return path


def overlay_png(image: np.ndarray, heatmap: np.ndarray, *, scale: int = 0,
                alpha: float = 0.45) -> bytes:
    """`save_overlay`'s PNG as bytes (for a web page or an API)."""
    import io

    buffer = io.BytesIO()
    _overlay_picture(image, heatmap, scale, alpha).save(buffer, "PNG")
    return buffer.getvalue()


def heatmap_peak(heatmap: np.ndarray) -> tuple[int, int]:
    """`(row, column)` of the heat map's maximum."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)


@dataclass
class LocalisationResult:
    """The pasted-image localisation check.

    Attributes:
        rate: Share of canvases whose heat-map peak is inside the pasted image.
        chance: The rate of a peak placed at random (pasted area / canvas area).
        hits: Per canvas, whether the peak was inside.
        boxes: Per canvas, `(top, left, height, width)` of the pasted image.
        peaks: Per canvas, `(row, column)` of the peak.
        accuracy: Share of canvases classified as the pasted image's label
            (None without labels).
        layer, method: What was explained.
    """

    rate: float
    chance: float
    hits: np.ndarray
    boxes: np.ndarray
    peaks: np.ndarray
    accuracy: float | None
    layer: str
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "chance": self.chance, "images": int(len(self.hits)),
                "accuracy": self.accuracy, "layer": self.layer, "method": self.method,
                **self.extra}


def paste_into_canvas(images: np.ndarray, canvas_hw: tuple[int, int], *, background: str = "blank",
                      seed: int = 0, noise_level: float = 96.0):
    """Pastes each image at a random place of a larger canvas.

    Args:
        images: `[N, h, w, C]` (0-255).
        canvas_hw: `(H, W)`, at least the images' size.
        background: `"blank"` (zeros) or `"noise"` (uniform in
            `[0, noise_level]`).
        seed: Seed of the places and the noise.
        noise_level: Brightest background value for `"noise"`.

    Returns:
        `(canvases float32 [N, H, W, C], boxes int [N, 4])`, each box
        `(top, left, h, w)`.
    """
    if background not in ("blank", "noise"):
        raise ValueError(f"background: expected 'blank' or 'noise', got {background!r}.")
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    height, width = canvas_hw
    if height < h or width < w:
        raise ValueError(f"canvas_hw: expected at least the image size {(h, w)}, got "
                         f"{canvas_hw}.")
    rng = np.random.default_rng(seed)
    if background == "noise":
        canvases = rng.uniform(0, noise_level, (n, height, width, c)).astype(np.float32)
    else:
        canvases = np.zeros((n, height, width, c), np.float32)
    tops = rng.integers(0, height - h + 1, n)
    lefts = rng.integers(0, width - w + 1, n)
    for i in range(n):
        canvases[i, tops[i]:tops[i] + h, lefts[i]:lefts[i] + w] = images[i]
    boxes = np.stack([tops, lefts, np.full(n, h), np.full(n, w)], axis=1)
    return canvases, boxes


def pasted_localisation(model, images: np.ndarray, labels: np.ndarray | None = None, *,
                        background: str = "blank", seed: int = 0, layer: str | None = None,
                        method: str = "gradcam") -> LocalisationResult:
    """The Grad-CAM paper's check, on a model trained here.

    Each image is pasted at a random place of a blank or noise canvas of the
    model's input size; the heat map of the predicted class must peak
    inside the pasted image.

    Args:
        model: A Keras model whose input is larger than `images`.
        images: `[N, h, w, C]` test images (0-255).
        labels: Their classes, to report the accuracy on the canvases.
        background, seed: As for `paste_into_canvas`.
        layer, method: As for `GradCam`.

    Returns:
        A `LocalisationResult`.

    Example:

    ```python
    result = pasted_localisation(model, test_images[:200], test_labels[:200])
    print(f"{result.rate:.0%} (chance {result.chance:.0%})")
    ```
    """
    explain = GradCam(model, layer, method)
    canvas_hw = tuple(int(d) for d in model.inputs[0].shape[1:3])
    canvases, boxes = paste_into_canvas(images, canvas_hw, background=background, seed=seed)
    result = explain(canvases)
    peaks = np.array([heatmap_peak(m) for m in result.heatmaps]).reshape(-1, 2)
    hits = ((peaks[:, 0] >= boxes[:, 0]) & (peaks[:, 0] < boxes[:, 0] + boxes[:, 2])
            & (peaks[:, 1] >= boxes[:, 1]) & (peaks[:, 1] < boxes[:, 1] + boxes[:, 3]))
    accuracy = None
    if labels is not None:
        accuracy = float(np.mean(result.class_ids == np.asarray(labels)))
    chance = float(boxes[0, 2] * boxes[0, 3]) / (canvas_hw[0] * canvas_hw[1]) if len(boxes) else 0.0
    return LocalisationResult(rate=float(hits.mean()) if len(hits) else 0.0, chance=chance,
                              hits=hits, boxes=boxes, peaks=peaks, accuracy=accuracy,
                              layer=explain.layer, method=method)
