"""Where a run's weights started: what the model page says about `model.weights`.

Example:

```python
source = pretrained_source(read_run_info(run_dir), settings)
print(source.kind, source.label, source.url)   # "run", "cifar", "/runs/3"
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vispipe.registry import Registry
from vispipe.train.run_info import RunInfo
from vispipe.ui.settings import UISettings
from vispipe.ui.weights_store import stored_weights_at

__all__ = ["PretrainedSource", "pretrained_source"]


@dataclass(frozen=True)
class PretrainedSource:
    """The start of a run's weights.

    Attributes:
        kind: "none" (random), "imagenet" (keras.applications' weights),
            "run" (an earlier run), "file" (a weights file, stored by the UI
            or not).
        label: What the page shows: the run's name or the file's name.
        url: The earlier run's page, when the UI knows it ("" otherwise).
        file: The file training loaded (`RunInfo.pretrained.file`; "" until
            training has loaded it).
    """

    kind: str
    label: str = ""
    url: str = ""
    file: str = ""


def pretrained_source(info: RunInfo, settings: UISettings) -> PretrainedSource:
    """Where `info.model.weights` points, named as the UI knows it."""
    weights = info.model.weights
    if not weights:
        return PretrainedSource("none")
    loaded = info.pretrained.file if info.pretrained else ""
    if weights == "imagenet":
        return PretrainedSource("imagenet", "ImageNet (keras.applications)", file=loaded)
    registry = Registry.open()
    try:
        run = next((e for e in registry.list("run") if e.path == weights), None)
    finally:
        registry.close()
    if run is not None:
        return PretrainedSource("run", run.name, f"/runs/{run.id}", loaded)
    stored = stored_weights_at(settings, weights)
    if stored is not None:
        return PretrainedSource("file", stored.name, file=loaded)
    return PretrainedSource("run" if os.path.isdir(weights) else "file", weights, file=loaded)
