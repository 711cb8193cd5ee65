"""vispipe's Keras objects, registered so that a saved model opens anywhere.

`keras.models.load_model("run/model.keras")` needs the classes a vispipe
model holds: the `Preprocess` and `LocalResponseNormalization` layers and
the `PolicySchedule` / `ReplicaScaledSchedule` learning-rate schedules of
its optimizer. `import vispipe` registers them as soon as Keras is loaded
(at once when it already is, otherwise when Keras gets imported), so that
import is the one requirement, and it does not load TensorFlow itself.

Example:

```python
import vispipe  # noqa: F401
import keras

model = keras.models.load_model("runs/mnist/model.keras")
```
"""

from __future__ import annotations

import importlib
import warnings

__all__ = ["KERAS_OBJECT_MODULES", "register_keras_objects"]

# Every module that defines a `@keras.saving.register_keras_serializable` class.
KERAS_OBJECT_MODULES = ("vispipe.models.layers", "vispipe.train.schedules")


def register_keras_objects() -> None:
    """Imports the modules whose classes register themselves with Keras."""
    for name in KERAS_OBJECT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as error:  # Registration must never break `import keras`.
            warnings.warn(f"vispipe's Keras objects in {name} are not registered: {error}",
                          stacklevel=2)
