"""Networks: the model zoo, custom networks, preprocessing and transfer.

`list_models`, `get_spec`, `NetworkSpec` and `IMAGENET_NETWORKS` need no
TensorFlow; the other names import Keras when first used, so `vispipe
models` stays fast.

Example:

```python
from vispipe.models import build_model, list_models
model = build_model("resnet18", (32, 32, 3), num_classes=10)
```
"""

from __future__ import annotations

import importlib

from vispipe.models.imagenet_files import (
    IMAGENET_NETWORKS,
    WeightsFileError,
    WeightsUnavailableError,
)
from vispipe.models.zoo import (
    NetworkSpec,
    apply_network,
    build_model,
    get_spec,
    list_models,
)

__all__ = [
    "NetworkSpec",
    "list_models",
    "get_spec",
    "IMAGENET_NETWORKS",
    "WeightsUnavailableError",
    "WeightsFileError",
    "imagenet_weights_file",
    "build_model",
    "apply_network",
    "Preprocess",
    "LocalResponseNormalization",
    "build_classifier",
    "preprocess_config",
    "load_custom_network",
    "TransferReport",
    "load_pretrained",
    "set_backbone_trainable",
]

# Public name -> the module defining it; imported on first access.
_LAZY = {
    "Preprocess": "layers",
    "LocalResponseNormalization": "layers",
    "build_classifier": "classifier",
    "preprocess_config": "classifier",
    "imagenet_weights_file": "classifier",
    "load_custom_network": "custom",
    "TransferReport": "transfer",
    "load_pretrained": "transfer",
    "set_backbone_trainable": "transfer",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vispipe.models' has no attribute {name!r}")
    module = importlib.import_module(f"vispipe.models.{_LAZY[name]}")
    return getattr(module, name)
