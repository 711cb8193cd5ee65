"""Runs a declarative pipeline: dataset -> train -> evaluate.

Example:

```python
from vispipe.config_io import load_pipeline
from vispipe.pipeline import run_pipeline

config = load_pipeline("pipelines/digits-demo.yaml", ["train.epochs=1"])
result = run_pipeline(config, out_dir="runs/demo",
                      base_dir=pipeline_base_dir("pipelines/digits-demo.yaml"))
print(result.test_top1_accuracy)
```
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from typing import Any

from vispipe.configs import DatasetConfig, PipelineConfig

__all__ = [
    "PipelineResult",
    "pipeline_base_dir",
    "default_out_dir",
    "resolve_dataset_paths",
    "run_pipeline",
]

_DATASET_PATH_FIELDS = (
    "output", "archive", "source", "train_dir", "val_dir", "test_dir",
    "train_list", "val_list", "test_list", "labels_file", "tfds_data_dir",
)


@dataclass
class PipelineResult:
    """What a pipeline produced.

    Attributes:
        dataset_dir: The dataset folder.
        run_dir: The training run folder.
        val_top1_accuracy: Top-1 accuracy on the validation split (None if absent).
        test_top1_accuracy: Top-1 accuracy on the test split (None if absent).
        evaluations: Per split, the evaluation's JSON summary.
        duration_s: Wall time of the whole pipeline.
    """

    dataset_dir: str
    run_dir: str
    val_top1_accuracy: float | None
    test_top1_accuracy: float | None
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    duration_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pipeline_base_dir(pipeline_path: str) -> str:
    """The folder relative paths in a pipeline file are resolved against.

    That is the project root (the parent of `pipelines/`) for files kept in a
    `pipelines` folder, so `../shared/datasets` means the same from anywhere;
    otherwise the file's own folder.
    """
    folder = os.path.dirname(os.path.abspath(pipeline_path))
    if os.path.basename(folder) == "pipelines":
        return os.path.dirname(folder)
    return folder


def default_out_dir(name: str) -> str:
    """`runs/<name>-<UTC timestamp>` under the current folder."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{name}-{stamp}")


def resolve_dataset_paths(config: DatasetConfig, base_dir: str) -> DatasetConfig:
    """Makes the dataset's relative paths absolute against `base_dir`.

    Paths that live inside `archive` stay relative: the archive resolves them.
    """
    inside_archive = bool(config.archive)
    updates = {}
    for name in _DATASET_PATH_FIELDS:
        value = getattr(config, name)
        if not value or os.path.isabs(value):
            continue
        if inside_archive and name not in ("archive", "output", "tfds_data_dir"):
            continue
        updates[name] = os.path.normpath(os.path.join(base_dir, value))
    return dataclasses.replace(config, **updates)


def _reusable_dataset(config: DatasetConfig) -> bool:
    """A complete dataset at `output` made with the same options is reused."""
    from vispipe.data.format import IncompleteDatasetError, read_dataset_info

    try:
        info = read_dataset_info(config.output)
    except (IncompleteDatasetError, ValueError):
        return False
    wanted = dataclasses.asdict(dataclasses.replace(config, overwrite=False))
    stored = dict(info.options, overwrite=False)
    return stored == wanted


def run_pipeline(
    config: PipelineConfig,
    out_dir: str,
    *,
    base_dir: str = ".",
    progress: bool = True,
) -> PipelineResult:
    """Creates the dataset, trains, and evaluates every held-out split.

    Args:
        config: The validated pipeline.
        out_dir: Folder for the pipeline's outputs (`dataset/` unless the file
            names another output, `run/`, evaluations inside the run).
        base_dir: Folder that relative dataset paths are resolved against.
        progress: Show progress bars.

    Returns:
        A `PipelineResult`.
    """
    from vispipe.data import create_dataset
    from vispipe.data.format import read_dataset_info
    from vispipe.evaluate import evaluate_splits
    from vispipe.registry import Registry
    from vispipe.train import train

    start = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    dataset_cfg = resolve_dataset_paths(config.dataset, base_dir)
    if not dataset_cfg.output:
        dataset_cfg = dataclasses.replace(
            dataset_cfg, output=os.path.join(out_dir, "dataset")
        )
    stages: dict[str, float] = {}

    t0 = time.perf_counter()
    if _reusable_dataset(dataset_cfg):
        info = read_dataset_info(dataset_cfg.output)
        print(f"Reusing dataset {dataset_cfg.output} (same options).")
    else:
        with Registry.open().recording("dataset", os.path.basename(dataset_cfg.output),
                                       dataset_cfg.output,
                                       dataclasses.asdict(dataset_cfg)) as entry:
            info = create_dataset(dataset_cfg, progress=progress)
            entry.summary = info.summary()
    stages["dataset_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_dir = os.path.join(out_dir, "run")
    train(info.path, run_dir, config.model, config.train, name=config.name,
          progress=progress)
    stages["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluations = {split: result.to_json() for split, result in
                   evaluate_splits(run_dir, config.evaluate, progress=progress).items()}
    stages["evaluate_s"] = time.perf_counter() - t0

    def top1(split: str) -> float | None:
        return evaluations[split]["top1_accuracy"] if split in evaluations else None

    return PipelineResult(
        dataset_dir=info.path,
        run_dir=run_dir,
        val_top1_accuracy=top1("val"),
        test_top1_accuracy=top1("test"),
        evaluations=evaluations,
        duration_s=time.perf_counter() - start,
        stages=stages,
    )
