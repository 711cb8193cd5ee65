"""PNG figures of the evaluation and visualization stages.

Figures are drawn on matplotlib's Agg canvas without pyplot (no global
state, no display needed). Every file is written through
`vispipe.fileio.atomic_path`, so a reader never sees a half-written one.

Example:

```python
save_confusion_matrix(cm, ["cat", "dog"], "eval/confusion_matrix.png")
save_image_grid(images, ["cat 0.91", "dog 0.55"], "eval/top_losses.png")
```
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vispipe.fileio import atomic_path

__all__ = [
    "save_confusion_matrix",
    "save_image_grid",
    "save_histograms",
    "save_tile_grid",
]

# Counts and row shares are written in the cells up to this many classes;
# beyond it the text would not fit.
ANNOTATE_MAX_CLASSES = 20
# Class names are written along the axes up to this many classes.
TICK_LABELS_MAX_CLASSES = 60


def _save(fig: Figure, path: str, dpi: int = 100) -> str:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def save_confusion_matrix(
    cm: np.ndarray, classes: Sequence[str], path: str, title: str = "Confusion matrix"
) -> str:
    """Draws a confusion matrix normalised per row (share of each true class).

    Cells show the count and the row share when there are at most
    `ANNOTATE_MAX_CLASSES` classes.

    Args:
        cm: `[C, C]` counts, rows true, columns predicted.
        classes: The `C` class names.
        path: Output PNG.
        title: Figure title.

    Returns:
        `path`.
    """
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"cm: expected shape ({n}, {n}) for {n} classes, got {cm.shape}.")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    side = min(max(4.0, 0.45 * n + 2.0), 30.0)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= TICK_LABELS_MAX_CLASSES:
        ax.set_xticks(range(n), labels=list(classes), rotation=90)
        ax.set_yticks(range(n), labels=list(classes))
    if n <= ANNOTATE_MAX_CLASSES:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                            fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)


def save_image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str,
    *,
    columns: int = 0,
    title: str = "",
) -> str:
    """Draws images in a grid with a title over each.

    Args:
        images: uint8 `[H, W, C]` images (C = 1 or 3; sizes may differ).
        titles: One title per image (may contain newlines).
        path: Output PNG.
        columns: Images per row (0: about a square grid, at most 8 wide).
        title: Figure title.

    Returns:
        `path`.
    """
    if len(images) != len(titles):
        raise ValueError(
            f"save_image_grid: expected one title per image, got {len(images)} images "
            f"and {len(titles)} titles."
        )
    count = max(len(images), 1)
    columns = columns or min(8, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(2.0 * columns, 2.3 * rows + (0.4 if title else 0.0)))
    for i in range(rows * columns):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if i < len(images):
            image = np.asarray(images[i])
            if image.ndim == 3 and image.shape[-1] == 1:
                image = image[..., 0]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_title(titles[i], fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_histograms(
    panels: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path: str,
    title: str = "",
) -> str:
    """Draws histograms side by side.

    Args:
        panels: `(panel title, counts [B], edges [B + 1])` per histogram.
        path: Output PNG.
        title: Figure title.

    Returns:
        `path`.
    """
    fig = Figure(figsize=(3.6 * max(len(panels), 1), 2.8), layout="constrained")
    for i, (name, counts, edges) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        edges = np.asarray(edges, dtype=np.float64)
        widths = np.diff(edges)
        # A constant tensor has zero-width bins; give the bar a visible width.
        widths = np.where(widths > 0, widths, 1.0)
        ax.bar(edges[:-1], counts, width=widths, align="edge", color="tab:blue")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def save_tile_grid(tiles: np.ndarray, path: str, *, min_tile: int = 32, gap: int = 1) -> str:
    """Writes tiles (feature maps, filters) as one PNG, each scaled to 0-255.

    Each tile is min-max normalised on its own, so faint and strong maps are
    both visible, and enlarged (nearest neighbour) to at least `min_tile`
    pixels on its short side.

    Args:
        tiles: `[N, h, w]` (grayscale) or `[N, h, w, 3]` (color) values.
        path: Output PNG.
        min_tile: Smallest tile side in pixels after enlarging.
        gap: Pixels between tiles.

    Returns:
        `path`.
    """
    from PIL import Image

    tiles = np.asarray(tiles, dtype=np.float64)
    if tiles.ndim not in (3, 4) or tiles.shape[0] == 0:
        raise ValueError(
            f"tiles: expected [N, h, w] or [N, h, w, 3] with N >= 1, got shape {tiles.shape}."
        )
    axes = tuple(range(1, tiles.ndim))
    low = tiles.min(axis=axes, keepdims=True)
    span = tiles.max(axis=axes, keepdims=True) - low
    tiles = np.divide(tiles - low, span, out=np.zeros_like(tiles), where=span > 0)
    scale = max(1, math.ceil(min_tile / min(tiles.shape[1:3])))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = tiles.shape[:3]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = np.ones((rows * (h + gap) - gap, columns * (w + gap) - gap, *tiles.shape[3:]))
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[i]
    with atomic_path(path) as tmp:
        Image.fromarray(np.round(canvas * 255).astype(np.uint8)).save(tmp, format="PNG")
    return path
