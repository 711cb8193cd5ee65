"""The contract as one traced TensorFlow function, for converters that read a graph.

tf2onnx and OpenVINO's TensorFlow frontend convert a function, and name its
outputs after the graph's tensors (`Identity_2:0`). So the function returns
its outputs in a fixed order (`OUTPUT_ORDER`): each converter keeps the
order of a function's outputs, and the exporters name them by position,
then check each output's type and shape, and verification checks that the
label ids and scores are the probabilities' top-k.

The function takes uint8 `images` `[batch, height, width, channels]` with
the batch, height and width dynamic, resizes (bilinear squash) to the
trained size and normalizes inside, as the SavedModel does.

Example:

```python
graph = trace_contract(model, spec, "out/.contract")
onnx_proto, _ = tf2onnx.convert.from_function(graph.function, [graph.input_spec])
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from vispipe.export.contract import (
    INPUT_IMAGES,
    OUTPUT_LABEL_IDS,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCORES,
    RunSpec,
    serving_function,
)

__all__ = ["OUTPUT_ORDER", "ContractGraph", "trace_contract", "output_types"]

OUTPUT_ORDER = (OUTPUT_PROBABILITIES, OUTPUT_LABEL_IDS, OUTPUT_SCORES)
_ENDPOINT = "contract"


@dataclasses.dataclass(frozen=True)
class ContractGraph:
    """The traced contract.

    Attributes:
        function: A `tf.function` of `images` returning the outputs in
            `OUTPUT_ORDER`.
        input_spec: Its input: uint8 `[None, None, None, channels]`, named
            "images".
        spec: The run.
        keep_alive: The loaded SavedModel that owns the function's variables.
    """

    function: Any
    input_spec: tf.TensorSpec
    spec: RunSpec
    keep_alive: Any = None

    def concrete(self):
        """The concrete function (what OpenVINO converts)."""
        return self.function.get_concrete_function(self.input_spec)


def output_types(spec: RunSpec) -> dict[str, tuple[str, int]]:
    """`{output: (numpy dtype name, last dimension)}` of the contract's outputs."""
    return {OUTPUT_PROBABILITIES: ("float32", spec.num_classes),
            OUTPUT_LABEL_IDS: ("int32", spec.top_k),
            OUTPUT_SCORES: ("float32", spec.top_k)}


def trace_contract(model, spec: RunSpec, folder: str) -> ContractGraph:
    """Writes the contract as a SavedModel endpoint and loads it back as a function.

    Writing through a Keras `ExportArchive` lifts the Keras 3 variables into
    the SavedModel, so converters can freeze them; loading it back gives a
    plain TensorFlow function.

    Args:
        model: The Keras model (float32 0-255 in, probabilities out).
        spec: The run.
        folder: Where the SavedModel is written (kept for the function's
            lifetime; a temporary folder of the export).

    Returns:
        The `ContractGraph`.
    """
    import keras

    channels = spec.image_shape[2]
    input_spec = tf.TensorSpec([None, None, None, channels], tf.uint8, INPUT_IMAGES)
    predict = serving_function(model, spec, resize=True)

    def ordered(images):
        outputs = predict(images)
        return tuple(outputs[name] for name in OUTPUT_ORDER)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(_ENDPOINT, ordered, input_signature=[input_spec])
    archive.write_out(folder, verbose=False)
    loaded = tf.saved_model.load(folder)
    return ContractGraph(function=getattr(loaded, _ENDPOINT), input_spec=input_spec, spec=spec,
                         keep_alive=loaded)
