"""The reports of a search: results table, CSV, JSON, the search as a PNG, best.yaml.

Example:

```python
write_reports(result, config, space, settings)
print(results_table(result))
```
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any

import numpy as np
import yaml

from vispipe.config_io import to_dict
from vispipe.configs import PipelineConfig
from vispipe.tables import format_table
from vispipe.tune.space import SearchParam, apply_values

__all__ = ["results_table", "write_reports", "plot_search"]


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def results_table(result) -> str:
    """Every trial (value, state, params, epochs), then the best and the baseline."""
    keys = sorted({k for t in result.trials for k in t.params})
    rows = [[t.number, t.state.lower() + (" (baseline)" if t.baseline else ""),
             _show(t.value), *(_show(t.params.get(k)) for k in keys), t.epochs,
             f"{t.duration_s:.0f}s", t.note[:60]] for t in result.trials]
    lines = [format_table(rows, ["trial", "state", result.metric, *keys, "epochs", "time",
                                 "note"])]
    if result.best is not None:
        lines += ["", f"Best: trial {result.best.number}, {result.metric} "
                      f"{result.best.value:.4f} ({result.best.run_dir})"]
    if result.baseline is not None and result.baseline.value is not None:
        lines.append(f"Baseline (the pipeline's own values): {result.metric} "
                     f"{result.baseline.value:.4f}")
    return "\n".join(lines)


def _write_csv(path: str, result) -> str:
    keys = sorted({k for t in result.trials for k in t.params})
    tmp = f"{path}.partial"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "baseline", result.metric, *keys, "epochs",
                         "duration_s", "run_dir", "note"])
        for t in result.trials:
            writer.writerow([t.number, t.state, int(t.baseline),
                             "" if t.value is None else t.value,
                             *("" if t.params.get(k) is None else t.params[k] for k in keys),
                             t.epochs, round(t.duration_s, 2), t.run_dir, t.note])
    os.replace(tmp, path)
    return path


def _axis_values(param: SearchParam, values: list[Any]) -> tuple[np.ndarray, list[str] | None]:
    if param.kind == "categorical":
        labels = [str(c) for c in param.choices]
        return np.array([labels.index(str(v)) for v in values], float), labels
    return np.array(values, float), None


def plot_search(result, space: list[SearchParam], path: str) -> str:
    """The search as one PNG: value per trial with the best so far, and each
    parameter against the value (pruned trials as grey crosses at the bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + len(space)
    cols = min(3, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    axes = axes.ravel()
    done = [t for t in result.trials if t.value is not None]
    pruned = [t for t in result.trials if t.state == "PRUNED"]
    values = [t.value for t in done]
    floor = min(values) if values else 0.0
    ax = axes[0]
    if done:
        ax.scatter([t.number for t in done], values, s=22, label="trial", zorder=3)
        better = max if result.direction == "maximize" else min
        running = [better(values[: i + 1]) for i in range(len(values))]
        ax.step([t.number for t in done], running, where="post", color="C1", label="best so far")
    if pruned:
        ax.scatter([t.number for t in pruned], [floor] * len(pruned), marker="x", color="grey",
                   label="pruned")
    if result.baseline is not None and result.baseline.value is not None:
        ax.axhline(result.baseline.value, color="C3", linestyle="--", linewidth=1,
                   label="baseline")
    ax.set_xlabel("trial")
    ax.set_ylabel(result.metric)
    ax.set_title("search history")
    ax.legend(fontsize=7)
    for ax, param in zip(axes[1:], space):
        shown = [t for t in done if param.key in t.params]
        if shown:
            xs, labels = _axis_values(param, [t.params[param.key] for t in shown])
            ax.scatter(xs, [t.value for t in shown], s=22, c=[t.number for t in shown],
                       cmap="viridis")
            if labels is not None:
                ax.set_xticks(range(len(labels)), labels)
        cut = [t for t in pruned if param.key in t.params]
        if cut:
            xs, _ = _axis_values(param, [t.params[param.key] for t in cut])
            ax.scatter(xs, [floor] * len(cut), marker="x", color="grey")
        if param.log:
            ax.set_xscale("log")
        ax.set_xlabel(param.key)
        ax.set_ylabel(result.metric)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.tight_layout()
    tmp = f"{path}.partial.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_text(path: str, text: str) -> str:
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_reports(result, config: PipelineConfig, space: list[SearchParam], settings) -> None:
    """Writes `tune_results.csv`, `tune.json`, `tune.png` and `best.yaml` into `result.out_dir`."""
    out = result.out_dir
    result.files["csv"] = _write_csv(os.path.join(out, "tune_results.csv"), result)
    result.files["plot"] = plot_search(result, space, os.path.join(out, "tune.png"))
    if result.best is not None:
        best = apply_values(config, result.best.params)
        result.files["best_config"] = _write_text(
            os.path.join(out, "best.yaml"), yaml.safe_dump(to_dict(best), sort_keys=False))
    summary = {**result.to_json(), "settings": dataclasses.asdict(settings),
               "space": {p.key: p.to_json() for p in space}}
    result.files["json"] = os.path.join(out, "tune.json")
    summary["files"] = dict(result.files)
    _write_text(result.files["json"], json.dumps(summary, indent=2))
