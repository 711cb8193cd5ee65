"""User-supplied networks: a Python file with `build()` or a saved model.

A `.py` file must define `build(input_shape, num_classes)` returning a
`keras.Model`; a `.keras` file is loaded as is. Either way the model must
take one input of `input_shape` and output `(batch, num_classes)`.

vispipe trains on probabilities. A model that ends in a softmax is used as
is; one that ends in a Dense layer without activation (logits) gets a
float32 softmax named "predictions" appended; any other final activation is
an error. Under mixed precision, float16 probabilities are cast to float32.

Example:

```python
# my_net.py
def build(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

model = load_custom_network("my_net.py", (28, 28, 1), 10)
```
"""

from __future__ import annotations

import importlib.util
import os

import keras
from keras import layers

__all__ = ["load_custom_network"]


def load_custom_network(
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> keras.Model:
    """Builds or loads a custom network and checks its shapes.

    Args:
        path: A `.py` file defining `build(input_shape, num_classes)`, or a
            saved `.keras` model.
        input_shape: (height, width, channels) of the dataset's images.
        num_classes: Number of classes of the dataset.

    Returns:
        A model mapping `input_shape` images to float32 probabilities.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: Unsupported extension, no `build` function, wrong input
            or output shape, or a final layer that is neither softmax nor
            linear.
        TypeError: `build` returned something other than a `keras.Model`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Custom network file {path!r} does not exist.")
    if path.endswith(".py"):
        model = _build_from_python(path, tuple(input_shape), num_classes)
    elif path.endswith(".keras"):
        model = keras.saving.load_model(path, compile=False)
    else:
        raise ValueError(
            f"Custom network {path!r}: expected a .py file or a .keras "
            "model."
        )
    _check_shapes(model, path, tuple(input_shape), num_classes)
    return _with_probabilities(model, path)


def _build_from_python(path: str, input_shape: tuple, num_classes: int):
    module_name = "vispipe_custom_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build = getattr(module, "build", None)
    if not callable(build):
        raise ValueError(
            f"Custom network {path!r} defines no function "
            "`build(input_shape, num_classes)`."
        )
    model = build(input_shape, num_classes)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{path}: build() must return a keras.Model, got "
            f"{type(model).__name__}."
        )
    return model


def _check_shapes(model, path: str, input_shape: tuple, num_classes: int):
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"Custom network {path!r} must have one input and one output, "
            f"got {len(model.inputs)} and {len(model.outputs)}."
        )
    got_input = tuple(model.inputs[0].shape[1:])
    if len(got_input) != 3 or any(
        got not in (None, want) for got, want in zip(got_input, input_shape)
    ):
        raise ValueError(
            f"Custom network {path!r} takes inputs of shape "
            f"{(None, *got_input)}, the dataset's images are "
            f"{(None, *input_shape)}."
        )
    got_output = tuple(model.outputs[0].shape)
    if got_output != (None, num_classes):
        raise ValueError(
            f"Custom network {path!r} outputs shape {got_output}, expected "
            f"(None, {num_classes}) for {num_classes} classes."
        )


def _activation_name(layer) -> str:
    if isinstance(layer, layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "")


def _with_probabilities(model, path: str):
    last = model.layers[-1]
    activation = _activation_name(last)
    outputs = model.outputs[0]
    if activation == "softmax":
        if outputs.dtype == "float32":
            return model
        outputs = layers.Activation("linear", dtype="float32",
                                    name="predictions_float32")(outputs)
    elif isinstance(last, layers.Dense) and activation == "linear":
        outputs = layers.Activation("softmax", dtype="float32",
                                    name="predictions")(outputs)
    else:
        raise ValueError(
            f"Custom network {path!r} must end in a softmax (probabilities) "
            "or a Dense layer without activation (logits); its last layer "
            f"{last.name!r} ({type(last).__name__}) has activation "
            f"{activation or 'none'!r}."
        )
    return keras.Model(model.inputs, outputs, name=model.name)
