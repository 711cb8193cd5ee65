"""Test-time augmentation: average the model's probabilities over a few views.

The views follow the run's training augmentation, so the model is only shown
variations it learnt to be invariant to (a digit is never mirrored unless
training mirrored digits):

| training augmentation | views added |
|---|---|
| `flip_horizontal` | the mirror image |
| `flip_vertical` | the upside-down image |
| `rotate90` (square images) | the 90, 180 and 270 degree rotations |
| `crop_padding: p` | the image shifted by p pixels left, right, up, down (zero fill, as the pad-and-crop) |
| `translate: f` (without crop padding) | shifts by `round(f / 2 * size)` pixels (edge reflected, as the random translation) |
| `zoom: z` | a centre crop enlarged by `1 + z / 2` |

The identity view is always first. Without any of these augmentations TTA
has no view to add and equals plain prediction.

Example:

```python
views = tta_views(run.train.augment, (32, 32, 3))   # identity, mirror, 4 shifts
probs = predict_tta(model.predict_on_batch, images, views)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["View", "TtaSummary", "Predict", "tta_views", "apply_view", "predict_tta",
           "tta_probabilities"]


@dataclass(frozen=True)
class View:
    """One deterministic transformation of a batch.

    Attributes:
        name: For reports, e.g. `"flip_h"`, `"shift(0,+4)"`.
        flip_h: Mirror left-right.
        flip_v: Mirror top-bottom.
        rot90: Quarter turns counter-clockwise.
        dy, dx: Shift in pixels (positive: down, right).
        fill: `"zero"` or `"reflect"` for the pixels a shift uncovers.
        zoom: Centre crop of `1 / zoom` of the size, resized back (1: none).
    """

    name: str
    flip_h: bool = False
    flip_v: bool = False
    rot90: int = 0
    dy: int = 0
    dx: int = 0
    fill: str = "zero"
    zoom: float = 1.0


def _shifts(pixels_y: int, pixels_x: int, fill: str) -> list[View]:
    views = []
    for dy, dx in ((0, -pixels_x), (0, pixels_x), (-pixels_y, 0), (pixels_y, 0)):
        if dy or dx:
            views.append(View(f"shift({dy:+d},{dx:+d})", dy=dy, dx=dx, fill=fill))
    return views


def tta_views(augment, image_shape: Sequence[int]) -> list[View]:
    """The views consistent with a run's training augmentation.

    Args:
        augment: The run's `AugmentConfig` (`train.augment`).
        image_shape: `(height, width, channels)`.

    Returns:
        The identity view, then one view per applicable augmentation (see
        the module docstring).

    Example:

    ```python
    tta_views(AugmentConfig(flip_horizontal=True), (32, 32, 3))
    # [View("identity"), View("flip_h", flip_h=True)]
    ```
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    views = [View("identity")]
    if augment.flip_horizontal:
        views.append(View("flip_h", flip_h=True))
    if augment.flip_vertical:
        views.append(View("flip_v", flip_v=True))
    if augment.rotate90 and height == width:
        views += [View(f"rot{90 * k}", rot90=k) for k in (1, 2, 3)]
    if augment.crop_padding:
        pad = int(augment.crop_padding)
        views += _shifts(pad, pad, "zero")
    elif augment.translate:
        views += _shifts(round(augment.translate / 2 * height),
                         round(augment.translate / 2 * width), "reflect")
    if augment.zoom:
        views.append(View(f"zoom({1 + augment.zoom / 2:.2f})", zoom=1 + augment.zoom / 2))
    return views


def _shift(images: np.ndarray, dy: int, dx: int, fill: str) -> np.ndarray:
    mode = "constant" if fill == "zero" else "reflect"
    height, width = images.shape[1:3]
    pad_y, pad_x = abs(dy), abs(dx)
    padded = np.pad(images, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode=mode)
    top, left = pad_y - dy, pad_x - dx
    return padded[:, top:top + height, left:left + width]


def _zoom(images: np.ndarray, zoom: float) -> np.ndarray:
    import tensorflow as tf

    height, width = images.shape[1:3]
    crop_h, crop_w = max(1, round(height / zoom)), max(1, round(width / zoom))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = images[:, top:top + crop_h, left:left + crop_w]
    return tf.image.resize(crop, (height, width), method="bilinear").numpy()


def apply_view(images: np.ndarray, view: View) -> np.ndarray:
    """`images` (`[B, H, W, C]`) as seen through `view` (float32)."""
    x = np.asarray(images, np.float32)
    if view.flip_h:
        x = x[:, :, ::-1]
    if view.flip_v:
        x = x[:, ::-1]
    if view.rot90:
        x = np.rot90(x, view.rot90, axes=(1, 2))
    if view.dy or view.dx:
        x = _shift(x, view.dy, view.dx, view.fill)
    if view.zoom != 1.0:
        x = _zoom(x, view.zoom)
    return np.ascontiguousarray(x)


@dataclass
class TtaSummary:
    """What test-time augmentation changed in an evaluation.

    Attributes:
        views: The views' names (`View.name`), the identity first.
        top1_accuracy_without: Top-1 accuracy of the identity view alone.
        top1_accuracy: Top-1 accuracy of the mean over the views.
    """

    views: list[str]
    top1_accuracy_without: float
    top1_accuracy: float

    @property
    def change(self) -> float:
        """Accuracy gained (negative: lost) by the augmentation."""
        return self.top1_accuracy - self.top1_accuracy_without

    def to_json(self) -> dict:
        return {"views": list(self.views), "top1_accuracy_without": self.top1_accuracy_without,
                "top1_accuracy": self.top1_accuracy, "change": self.change}


Predict = Callable[[np.ndarray], np.ndarray]  # float32 images [B, H, W, C] -> probabilities


def tta_probabilities(predict: Predict, images: np.ndarray,
                      views: Sequence[View]) -> tuple[np.ndarray, np.ndarray]:
    """Mean class probabilities over `views`, and those of the image as it is.

    Args:
        predict: Images -> class probabilities `[B, C]`, e.g.
            `lambda x: predict_probabilities(model, x)`.
        images: One batch `[B, H, W, C]`.
        views: From `tta_views`; at least one.

    Returns:
        float32 `([B, C] mean, [B, C] of the identity view)`.
    """
    if not views:
        raise ValueError("views: expected at least one view (the identity), got none.")
    per_view = [np.asarray(predict(apply_view(images, view)), np.float32) for view in views]
    identity = (per_view[0] if views[0] == View("identity")
                else np.asarray(predict(np.asarray(images, np.float32)), np.float32))
    return np.mean(per_view, axis=0).astype(np.float32), identity


def predict_tta(predict: Predict, images: np.ndarray, views: Sequence[View]) -> np.ndarray:
    """Mean class probabilities over `views` (see `tta_probabilities`).

    Example:

    ```python
    probs = predict_tta(model.predict_on_batch, images, tta_views(augment, images.shape[1:]))
    ```
    """
    return tta_probabilities(predict, images, views)[0]
