"""Grad-CAM where the pipeline shows predictions: `classify --explain` and the top losses.

- `OverlayWriter`: one overlay PNG per classified image (the predicted class's
  heat map over the image), named after the image, for `vispipe classify
  --explain` and `classify(..., explain_dir=...)`.
- `save_gradcam_grid`: the top-losses grid again, each image with the heat map
  of the class the model wrongly predicted (as fastai's
  `plot_top_losses(heatmap=True)`), for `vispipe evaluate`.

A network without a spatial layer (an MLP) has nothing to localise: both
report that once instead of failing the command.

Example:

```python
writer = OverlayWriter(model, "explain/")
paths = writer.write(images, ["a.png", "b.png"], class_ids=[3, 7])
save_gradcam_grid(model, images, [3, 7], ["3 -> 7", "7 -> 1"], "top_losses_gradcam.png")
```
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np

from vispipe.evaluate.gradcam import GradCam, overlay_heatmap, save_overlay

__all__ = ["OverlayWriter", "explainer_or_none", "save_gradcam_grid"]


def explainer_or_none(model, layer: str | None = None) -> GradCam | None:
    """A `GradCam` for `model`, or None (with a warning) when it has no spatial layer.

    Args:
        model: The classifier.
        layer: The layer to explain; None: the last spatial one.
    """
    try:
        return GradCam(model, layer)
    except ValueError as error:
        warnings.warn(f"No Grad-CAM: {error}", stacklevel=2)
        return None


class OverlayWriter:
    """Writes a Grad-CAM overlay PNG per image into a folder.

    Args:
        model: The classifier (float32 0-255 images in).
        out_dir: The folder (created).
        layer: The layer to explain; None: the last spatial one.
    """

    def __init__(self, model, out_dir: str, layer: str | None = None):
        self.out_dir = out_dir
        self.explainer = explainer_or_none(model, layer)
        self.written = 0

    def write(self, images: np.ndarray, names: Sequence[str],
              class_ids: Sequence[int]) -> list[str | None]:
        """Overlays of the heat maps of `class_ids` on `images`.

        Args:
            images: `[B, H, W, C]` 0-255 images, as the model takes them.
            names: The source file of each image (its stem names the PNG).
            class_ids: The class to explain per image (the predicted one).

        Returns:
            The PNG paths, or Nones when the model has no spatial layer.
        """
        if self.explainer is None:
            return [None] * len(names)
        result = self.explainer(images, class_ids=class_ids)
        paths = []
        for image, heatmap, name in zip(images, result.heatmaps, names):
            self.written += 1
            stem = os.path.splitext(os.path.basename(name))[0]
            path = os.path.join(self.out_dir, f"{self.written:04d}-{stem}.png")
            paths.append(save_overlay(image, heatmap, path))
        return paths


def save_gradcam_grid(model, images: Sequence[np.ndarray], class_ids: Sequence[int],
                      titles: Sequence[str], path: str, *, title: str = "") -> str | None:
    """A grid of images, each with the heat map of its class in `class_ids`.

    Args:
        model: The classifier.
        images: uint8 `[H, W, C]` images (one size).
        class_ids: The class explained per image.
        titles: One title per image.
        path: The PNG to write.
        title: The figure's title.

    Returns:
        `path`, or None when the model has no spatial layer or there are no
        images.
    """
    from vispipe.evaluate.plots import save_image_grid

    explainer = explainer_or_none(model) if len(images) else None
    if explainer is None:
        return None
    batch = np.stack([np.asarray(image, np.float32) for image in images])
    result = explainer(batch, class_ids=list(class_ids))
    overlays = [overlay_heatmap(image, heatmap) for image, heatmap in zip(batch, result.heatmaps)]
    return save_image_grid(overlays, list(titles), path,
                           title=title or f"Grad-CAM ({result.layer}) of the predicted class")
