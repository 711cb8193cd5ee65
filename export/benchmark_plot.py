"""`benchmark.png`: top-1 accuracy against size and against latency, one point per format.

Each point is a format that passed, coloured by runtime and labelled; the
Keras model's accuracy is a dashed line with the picks' accuracy budget
shaded under it, so the formats worth choosing are the ones in the band and
to the left. A format verified on fewer images (TF.js) is placed at Keras's
accuracy minus its drop on those images, so every point is on one scale.
Formats that failed are listed under the plot.

Example:

```python
plot_benchmark(summarize("exports/mnist", plot=False), "exports/mnist/benchmark.png")
```
"""

from __future__ import annotations

import os

__all__ = ["plot_benchmark"]


def plot_benchmark(report, path: str) -> str:
    """Draws the report's accuracy vs size and accuracy vs latency panels.

    Args:
        report: A `BenchmarkReport`.
        path: The PNG to write.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    passed = [r for r in report.rows if r.status == "passed" and r.top1 is not None]
    failed = [r.format for r in report.rows if r.status != "passed"]
    keras = next((r for r in report.rows if r.format == "keras"), None)

    def accuracy(r) -> float:
        if keras is None or keras.top1 is None or r.top1_drop is None:
            return 100 * r.top1
        return 100 * keras.top1 - r.top1_drop

    runtimes = sorted({r.runtime for r in passed})
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(runtimes)}
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for axis, cost, label in ((axes[0], "size_mb", "size on disk (MB, log scale)"),
                              (axes[1], "latency_ms", "latency per image on this machine "
                                                      "(ms, log scale)")):
        points = [r for r in passed if getattr(r, cost)]
        for runtime in runtimes:
            mine = [r for r in points if r.runtime == runtime]
            if mine:
                axis.scatter([getattr(r, cost) for r in mine], [accuracy(r) for r in mine],
                             s=[70 if r.picks else 35 for r in mine], color=colours[runtime],
                             edgecolors=["black" if r.picks else "none" for r in mine],
                             label=runtime, zorder=3)
        for r in points:
            axis.annotate(r.format, (getattr(r, cost), accuracy(r)), fontsize=7,
                          xytext=(4, 3), textcoords="offset points")
        front = sorted((r for r in points if r.pareto), key=lambda r: getattr(r, cost))
        if front:
            axis.plot([getattr(r, cost) for r in front], [accuracy(r) for r in front],
                      color="grey", linewidth=0.8, zorder=2)
        if keras is not None and keras.top1 is not None:
            axis.axhline(100 * keras.top1, color="black", linestyle="--", linewidth=0.8)
            axis.axhspan(100 * keras.top1 - report.max_drop, 100 * keras.top1,
                         color="green", alpha=0.08)
        if points:
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"top-1 accuracy on {report.verify_split} (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{report.name}: every format on {report.verify_images:,} "
                    f"{report.verify_split} images (dashed: Keras; shaded: within "
                    f"{report.max_drop:g} points; outlined: picks)", fontsize=10)
    if failed:
        figure.text(0.01, 0.01, "failed: " + ", ".join(failed), fontsize=8, color="firebrick")
    figure.tight_layout(rect=(0, 0.04 if failed else 0, 1, 0.95))
    tmp = f"{path}.partial.png"
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, path)
    return path
