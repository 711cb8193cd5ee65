"""The run folder: what a training run leaves on disk for the other stages.

```
<run>/
  run.json            # RunInfo (vispipe.train.run_info): classes, image input,
                      #  normalization, configs, status, results
  config.yaml         # the resolved model + train config
  labels.txt          # one class name per line, line number = label id
  metrics.jsonl       # one JSON record per line ("kind": "step" | "epoch")
  tensorboard/        # TensorBoard event files
  checkpoints/epoch-NNNN.keras   # full model with optimizer state
  checkpoints/latest.json        # {"epoch", "file", "step"}, written last
  curves.png          # loss / accuracy / LR against epochs
  best.keras          # the model with the best validation accuracy
  model.keras         # the final model
```

`status` is "running", "completed", "failed" (with "error") or
"interrupted". Every file is written through `vispipe.fileio.atomic_path`.

Example:

```python
info = read_run_info("runs/mnist")
print(info.status, info.image.resize_mode)
model = load_run_model("runs/mnist", which="best")
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

from vispipe.configs import WHICH_MODELS
# write_json_atomic stays importable from here for the web UI until it imports vispipe.fileio.
from vispipe.fileio import write_json_atomic, write_text_atomic
from vispipe.train.run_info import RUN_FORMAT_VERSION, RunInfo

__all__ = [
    "RunFolder",
    "CheckpointRef",
    "NotARunFolderError",
    "read_run_info",
    "upgrade_run_folder",
    "latest_checkpoint",
    "load_run_model",
]



class NotARunFolderError(FileNotFoundError):
    """The folder has no `run.json`."""


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint: the epochs it holds, its absolute path, its optimizer step."""

    epoch: int
    path: str
    step: int


class RunFolder:
    """Paths and bookkeeping files of one run folder.

    Args:
        path: The run folder (need not exist yet).

    Example:

    ```python
    run = RunFolder("runs/mnist")
    run.update_info(status="completed")
    ```
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))

    def file(self, *parts: str) -> str:
        """Absolute path of a file inside the run folder."""
        return os.path.join(self.path, *parts)

    @property
    def info_path(self) -> str:
        return self.file("run.json")

    @property
    def metrics_path(self) -> str:
        return self.file("metrics.jsonl")

    @property
    def checkpoint_dir(self) -> str:
        return self.file("checkpoints")

    @property
    def tensorboard_dir(self) -> str:
        return self.file("tensorboard")

    @property
    def curves_path(self) -> str:
        return self.file("curves.png")

    @property
    def model_path(self) -> str:
        return self.file("model.keras")

    @property
    def best_path(self) -> str:
        return self.file("best.keras")

    def exists(self) -> bool:
        """Whether the folder holds a `run.json`."""
        return os.path.isfile(self.info_path)

    def _read_json(self) -> dict[str, Any]:
        if not self.exists():
            raise NotARunFolderError(
                f"{self.path!r} is not a vispipe run folder: run.json is missing."
            )
        with open(self.info_path, encoding="utf-8") as f:
            return json.load(f)

    def read_run_info(self) -> RunInfo:
        """The run's `RunInfo` (`run.json`, checked and typed).

        Raises:
            NotARunFolderError: The folder has no `run.json`.
            OutdatedRunError: A format-1 `run.json` (see `upgrade_run_folder`).
            ValueError: An unknown format version, or a missing or mistyped
                field (the message names it).
        """
        return RunInfo.from_json(self._read_json(), self.info_path, self.path)

    def read_info(self) -> dict[str, Any]:
        """`run.json` as a plain mapping, of format 1 or 2.

        Deprecated: kept one release for the web UI; read `read_run_info()`.
        """
        warnings.warn("RunFolder.read_info() is deprecated; use read_run_info(), a RunInfo.",
                      DeprecationWarning, stacklevel=2)
        info = self._read_json()
        if info.get("version") not in (1, RUN_FORMAT_VERSION):
            raise ValueError(f"{self.info_path}: expected run format version "
                             f"{RUN_FORMAT_VERSION}, got {info.get('version')!r}.")
        return info

    def write_info(self, info: RunInfo) -> None:
        """Replaces `run.json` atomically.

        A plain mapping is written as it is (deprecated; for the web UI's tests).
        """
        os.makedirs(self.path, exist_ok=True)
        if isinstance(info, dict):
            warnings.warn("RunFolder.write_info(dict) is deprecated; pass a RunInfo.",
                          DeprecationWarning, stacklevel=2)
            write_json_atomic(self.info_path, info)
            return
        write_json_atomic(self.info_path, info.to_json())

    def update_info(self, **fields: Any) -> RunInfo:
        """Sets fields of `run.json` (`RunInfo` attributes); returns the new record."""
        info = dataclasses.replace(self.read_run_info(), **fields)
        self.write_info(info)
        return info

    def read_metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Records of `metrics.jsonl` (all, or those of one `kind`).

        A last line cut off by a kill is skipped.
        """
        if not os.path.isfile(self.metrics_path):
            return []
        records = []
        with open(self.metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # A partial line written as the process died.
                if kind is None or record.get("kind") == kind:
                    records.append(record)
        return records

    def write_metrics(self, records: Iterable[dict[str, Any]]) -> None:
        """Replaces `metrics.jsonl` atomically."""
        text = "".join(json.dumps(r) + "\n" for r in records)
        write_text_atomic(self.metrics_path, text)

    def truncate_metrics(self, epoch: float) -> list[dict[str, Any]]:
        """Drops records after `epoch` (a resumed run redoes them); returns the kept ones."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= epoch]
        self.write_metrics(kept)
        return kept

    def checkpoint_path(self, epoch: int) -> str:
        return os.path.join(self.checkpoint_dir, f"epoch-{epoch:04d}.keras")

    def latest_checkpoint(self) -> CheckpointRef | None:
        """The checkpoint named by `checkpoints/latest.json`, or None."""
        pointer = os.path.join(self.checkpoint_dir, "latest.json")
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding="utf-8") as f:
            data = json.load(f)
        path = os.path.join(self.checkpoint_dir, data["file"])
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{pointer} names checkpoint {data['file']!r}, which does not exist."
            )
        return CheckpointRef(epoch=int(data["epoch"]), path=path, step=int(data["step"]))

    def set_latest_checkpoint(self, epoch: int, step: int) -> None:
        """Points `checkpoints/latest.json` at the checkpoint of `epoch`."""
        write_json_atomic(
            os.path.join(self.checkpoint_dir, "latest.json"),
            {"epoch": epoch, "file": os.path.basename(self.checkpoint_path(epoch)),
             "step": step},
        )


def read_run_info(run_dir: str | os.PathLike) -> RunInfo:
    """The `RunInfo` of a run folder; see `RunFolder.read_run_info`.

    Example:

    ```python
    info = read_run_info("runs/mnist")
    print(info.classes, info.image)
    ```
    """
    return RunFolder(run_dir).read_run_info()


def upgrade_run_folder(run_dir: str | os.PathLike, *, resize_mode: str | None = None) -> RunInfo:
    """Rewrites a format-1 `run.json` as format 2 (`vispipe upgrade-run`).

    Format 1 kept the image shape and normalization under other names and
    left the resize mode in the dataset: `image.resize_mode` is copied from
    the run's dataset, or given as `resize_mode` when that dataset is gone.

    Args:
        run_dir: The run folder.
        resize_mode: The resize mode the run's images were made with; needed
            only when its dataset cannot be read.

    Returns:
        The upgraded `RunInfo` (already written).

    Raises:
        ValueError: Not a format-1 run, or no resize mode to copy.

    Example:

    ```python
    upgrade_run_folder("runs/old-mnist")
    ```
    """
    from vispipe.data.format import IncompleteDatasetError, read_dataset_info

    run = RunFolder(run_dir)
    data = run._read_json()
    if data.get("version") != 1:
        raise ValueError(f"{run.info_path}: expected run format version 1 to upgrade, "
                         f"got {data.get('version')!r}.")
    if resize_mode is None:
        try:
            resize_mode = read_dataset_info(data.get("dataset_dir", "")).image.resize_mode
        except (IncompleteDatasetError, ValueError) as error:
            raise ValueError(
                f"{run.info_path}: image.resize_mode cannot be copied from the run's dataset "
                f"({error}); give it (--resize-mode, one of squash, crop, fill, half_crop)."
            ) from None
    height, width, channels = data.pop("image_shape")
    data["image"] = {"height": height, "width": width, "channels": channels,
                     "resize_mode": resize_mode}
    data["normalization"] = data.pop("preprocess")
    data["version"] = RUN_FORMAT_VERSION
    info = RunInfo.from_json(data, run.info_path, run.path)
    run.write_info(info)
    return info


def latest_checkpoint(run_dir: str | os.PathLike) -> CheckpointRef | None:
    """The run's latest checkpoint, or None when it has none yet.

    Example:

    ```python
    ref = latest_checkpoint("runs/mnist")
    print(ref.epoch, ref.path)
    ```
    """
    return RunFolder(run_dir).latest_checkpoint()


def load_run_model(run_dir: str | os.PathLike, which: str = "final", *, compile: bool = False):
    """Loads a model of a run folder.

    Args:
        run_dir: The run folder.
        which: "final" (`model.keras`), "best" (`best.keras`, the best
            validation accuracy) or "last" (the latest checkpoint).
        compile: Also restore the loss, metrics and optimizer state.

    Returns:
        The `keras.Model` (images 0-255 in, probabilities out).

    Raises:
        NotARunFolderError: No `run.json`.
        ValueError: Unknown `which`.
        FileNotFoundError: That model does not exist (e.g. an unfinished
            run has no final model; the message says what exists).

    Example:

    ```python
    model = load_run_model("runs/mnist", which="last")
    ```
    """
    import keras

    run = RunFolder(run_dir)
    info = run.read_run_info()
    if which not in WHICH_MODELS:
        raise ValueError(f"which: expected one of {WHICH_MODELS}, got {which!r}.")
    if which == "last":
        ref = run.latest_checkpoint()
        path = ref.path if ref else ""
    else:
        path = run.model_path if which == "final" else run.best_path
    if not path or not os.path.isfile(path):
        available = [name for name, p in (("final", run.model_path), ("best", run.best_path))
                     if os.path.isfile(p)]
        if run.latest_checkpoint():
            available.append("last")
        raise FileNotFoundError(
            f"Run {run.path!r} (status {info.status!r}) has no {which!r} model"
            f"{f' ({path})' if path else ''}; available: {available or 'none'}."
        )
    return keras.models.load_model(path, compile=compile)
