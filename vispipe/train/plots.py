"""PNG plots of a training run: curves, learning-rate schedules, LR range tests.

Every figure is drawn with matplotlib's Agg backend and written to a
temporary name first, so a reader never sees a half-written PNG.

Example:

```python
plot_curves(epoch_records, "runs/mnist/curves.png")
```
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402

from vispipe.fileio import atomic_path  # noqa: E402

__all__ = ["save_figure", "plot_curves", "plot_lr_curve", "plot_lr_range_test"]


def save_figure(fig, path: str) -> str:
    """Writes `fig` as PNG to `path` atomically, closes it, returns `path`."""
    path = os.path.abspath(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list, list]:
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(records: Sequence[dict[str, Any]], path: str, title: str = "") -> str:
    """DIGITS-style training curves.

    Top: train and val loss (left axis) with val accuracy in percent (right
    axis) against epochs; bottom: the learning rate.

    Args:
        records: Epoch records of `metrics.jsonl` (`kind == "epoch"`), each
            with "epoch" and any of "loss", "val_loss", "val_accuracy",
            "accuracy", "lr".
        path: The PNG to write.
        title: Figure title.

    Returns:
        `path`, absolute.

    Example:

    ```python
    plot_curves([{"epoch": 1, "loss": 0.9, "val_accuracy": 0.7, "lr": 0.01}],
                "curves.png")
    ```
    """
    fig, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax_acc = ax_loss.twinx()
    for key, label, style in (("loss", "loss (train)", "-"), ("val_loss", "loss (val)", "--")):
        x, y = _series(records, key)
        if x:
            ax_loss.plot(x, y, style, marker=".", label=label)
    for key, label, color in (("accuracy", "accuracy (train)", "tab:olive"),
                              ("val_accuracy", "accuracy (val)", "tab:red")):
        x, y = _series(records, key)
        if x:
            ax_acc.plot(x, [100 * v for v in y], color=color, marker=".", label=label)
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_ylim(0, 100)
    handles = ax_loss.get_legend_handles_labels()
    acc_handles = ax_acc.get_legend_handles_labels()
    if handles[0] or acc_handles[0]:
        ax_loss.legend(handles[0] + acc_handles[0], handles[1] + acc_handles[1],
                       loc="center right", fontsize="small")
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title(title or "Training curves")
    x, y = _series(records, "lr")
    if x:
        ax_lr.plot(x, y, color="tab:green", marker=".")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_lr_curve(x: np.ndarray, lrs: np.ndarray, path: str, *, xlabel: str, title: str) -> str:
    """Plots a learning-rate schedule (`lrs` against `x`) to `path`."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, lrs, color="tab:green")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_lr_range_test(
    lrs: Sequence[float], losses: Sequence[float],
    suggestions: Mapping[str, tuple[float, tuple[float, float]]], chosen: str, path: str,
    title: str = "Learning-rate range test",
) -> str:
    """Plots smoothed loss against learning rate (log scale), marking each suggestion.

    Args:
        lrs: Learning rates.
        losses: Smoothed losses.
        suggestions: Rule -> (suggested lr, (lr, loss) of the curve point it
            comes from); the point is marked and a dotted line drawn at the
            suggested rate ("minimum" suggests a tenth of its point's).
        chosen: The rule whose suggestion is returned (drawn larger).
        path: The PNG to write.
        title: Plot title.
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(lrs, losses, color="tab:blue")
    colors = {"valley": "tab:red", "minimum": "tab:green", "steep": "tab:orange"}
    for rule, (lr, point) in suggestions.items():
        color = colors.get(rule, "tab:purple")
        marker = "o" if rule == chosen else "s"
        label = f"{rule}: {lr:.3g}" + (" (suggested)" if rule == chosen else "")
        ax.plot([point[0]], [point[1]], marker, color=color,
                markersize=9 if rule == chosen else 6, label=label)
        ax.axvline(lr, color=color, linestyle=":", alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)
