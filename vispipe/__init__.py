"""vispipe: the DIGITS image-classification workflow on TensorFlow 2 and Keras 3.

Stages, each a CLI verb and a Python module:
`vispipe.data` (datasets), `vispipe.models` (networks), `vispipe.train`
(training), `vispipe.evaluate` (evaluation and inference), `vispipe.export`
and `vispipe.serving`; `vispipe.pipeline` runs data -> train -> evaluate
from one declarative file. Heavy modules import TensorFlow lazily, so
`import vispipe` stays cheap (the web UI never loads TensorFlow).

`import vispipe` is all a saved model needs to open anywhere: vispipe's Keras
objects are registered as soon as Keras loads (`vispipe.keras_objects`).

Example:

```python
import vispipe  # noqa: F401
import keras

model = keras.models.load_model("runs/mnist/model.keras")
```
"""

from vispipe.import_hooks import on_import
from vispipe.keras_objects import register_keras_objects

__version__ = "0.1.0"

__all__ = ["__version__"]


def _load_then_register(load) -> None:
    load()
    register_keras_objects()


if not on_import("keras", _load_then_register):
    register_keras_objects()
