"""TF Serving's inference APIs on a Servable: the checks, signature choice and results of
Predict, Classify, Regress and MultiInference, shared by REST and gRPC.

Each API is split into a synchronous `*_plan` (validate, pick the signature and
its inputs) and a result step (check and convert the outputs), so REST awaits
the run and gRPC blocks on it in between. Messages follow TF Serving's
(servables/tensorflow/predict_util.cc, classifier.cc, regressor.cc,
multi_inference.cc).

```python
plan = classify_plan(servable, "", serialized, limits)
outputs = servable.submit(plan.signature.name, plan.inputs, plan.outputs).result()
results = classification_results(plan, outputs)
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from vispipe.serving.config import LimitsConfig
from vispipe.serving.errors import ServingError
from vispipe.serving.images import check_image_pixels, count_pixels
from vispipe.serving.protos import serialized_examples
from vispipe.serving.servable import Servable
from vispipe.serving.signature import (
    CLASSIFY_CLASSES,
    CLASSIFY_INPUTS,
    CLASSIFY_METHOD,
    CLASSIFY_SCORES,
    DEFAULT_SIGNATURE,
    REGRESS_INPUTS,
    REGRESS_METHOD,
    REGRESS_OUTPUTS,
    SignatureInfo,
)

__all__ = [
    "Plan",
    "predict_signature",
    "predict_plan",
    "classify_plan",
    "regress_plan",
    "multi_inference_plans",
    "classification_results",
    "regression_results",
]

Tensors = dict[str, np.ndarray]
Examples = Any  # serialized tf.Examples (np.ndarray), or an Input proto serialized when needed


def _bad(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One signature run that an API request turns into.

    Args:
        signature: the signature run.
        inputs: input alias -> checked array.
        outputs: the output aliases fetched.
        method: the API's method ("tensorflow/serving/classify" ...).
        rows: the number of instances or examples.
    """

    signature: SignatureInfo
    inputs: Tensors
    outputs: tuple[str, ...]
    method: str
    rows: int


def _check_sizes(inputs: Tensors, limits: LimitsConfig, what: str) -> None:
    elements = sum(int(np.size(a)) for a in inputs.values())
    if elements > limits.max_tensor_elements:
        raise _bad(
            f"{what}: the inputs hold {elements} elements; this server takes at most "
            f"{limits.max_tensor_elements} per request (--max_tensor_elements)"
        )
    rows = max((a.shape[0] for a in inputs.values() if np.ndim(a)), default=0)
    if rows > limits.max_instances:
        raise _bad(f"{what}: {rows} rows in one request; this server takes at most {limits.max_instances}")
    strings = [a.reshape(-1) for a in inputs.values() if a.dtype == object or a.dtype.kind == "S"]
    if strings:
        check_image_pixels(count_pixels(v for a in strings for v in a), limits.max_image_pixels, what)


def _checked_input(servable: Servable, sig: SignatureInfo, name: str, array: np.ndarray) -> np.ndarray:
    spec, check = sig.inputs[name], sig.input_checks[name]
    if check.dtype is None:
        if array.dtype != object and array.dtype.kind not in "SU":
            raise _bad(f"input {name!r}: expected DT_STRING values, got {array.dtype}")
        array = np.asarray(array, dtype=object)
    elif array.dtype != check.dtype:
        if array.dtype == object or array.dtype.kind in "SUV":
            raise _bad(f"input {name!r}: expected {spec.dtype.name} values, got {array.dtype}")
        array = array.astype(check.dtype)
    # A TF1 graph decides itself which shapes it takes, as in TF Serving; a TF2 function
    # only takes its signature's shapes, so say which.
    if not servable.graph_mode and not check.fits(array.shape):
        raise _bad(f"input {name!r}: expected shape {spec.shape.as_list()}, got {list(array.shape)}")
    return array


def predict_signature(servable: Servable, signature_name: str, grpc: bool = False) -> SignatureInfo:
    """The signature a Predict request names, or TF Serving's error (REST and gRPC word it differently)."""
    key = signature_name or DEFAULT_SIGNATURE
    if grpc and key not in servable.signatures:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
    return servable.signature(key)


def predict_plan(
    servable: Servable,
    signature_name: str,
    inputs: Tensors,
    output_filter: list[str],
    limits: LimitsConfig,
    grpc: bool = False,
) -> Plan:
    """Checks a Predict request: signature, input names, dtypes, shapes (TF2), output filter, sizes.

    Args:
        servable: the version that answers.
        signature_name: the requested signature ("" for serving_default).
        inputs: input alias -> array.
        output_filter: output aliases to return ([] for all).
        limits: the server's request limits.
        grpc: use the gRPC API's error for an unknown signature (FAILED_PRECONDITION).

    Raises:
        ServingError: TF Serving's status and message for what is wrong.
    """
    sig = predict_signature(servable, signature_name, grpc)
    if set(inputs) != set(sig.inputs):
        sent, wanted = sorted(inputs), sorted(sig.inputs)
        raise _bad(
            f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{','.join(sent)}}}) != "
            f"len({{{','.join(wanted)}}}). Sent extra: {{{','.join(sorted(set(sent) - set(wanted)))}}}. "
            f"Missing but required: {{{','.join(sorted(set(wanted) - set(sent)))}}}."
        )
    checked = {name: _checked_input(servable, sig, name, np.asarray(a)) for name, a in inputs.items()}
    _check_sizes(checked, limits, f"signature {sig.name!r}")
    outputs = []
    for alias in output_filter:
        if alias not in sig.outputs:
            raise _bad(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(sig.outputs))}}}."
            )
        if alias in outputs:
            raise _bad(f"duplicate output tensor alias: {alias}")
        outputs.append(alias)
    rows = max((a.shape[0] for a in checked.values() if a.ndim), default=0)
    return Plan(sig, checked, tuple(outputs) or tuple(sig.outputs), sig.method_name, rows)


def _example_pixels(serialized: np.ndarray) -> int:
    pixels = 0
    for value in serialized:
        try:
            example = tf.train.Example.FromString(value)
        except DecodeError:
            continue  # the model's parse op reports it
        for feature in example.features.feature.values():
            if feature.WhichOneof("kind") == "bytes_list":
                pixels += count_pixels(feature.bytes_list.value)
    return pixels


def _checked_examples(examples: Examples, limits: LimitsConfig) -> np.ndarray:
    serialized = examples if isinstance(examples, np.ndarray) else serialized_examples(examples)
    if len(serialized) > limits.max_instances:
        raise _bad(f"{len(serialized)} examples in one request; this server takes at most {limits.max_instances}")
    check_image_pixels(_example_pixels(serialized), limits.max_image_pixels, "examples")
    return serialized


def _classify_outputs(sig: SignatureInfo) -> tuple[str, ...]:
    if sig.method_name != CLASSIFY_METHOD:
        raise _bad(f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise _bad("Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        raise _bad(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if CLASSIFY_INPUTS not in sig.inputs:
        raise ServingError("FAILED_PRECONDITION", f"No classification inputs found in SignatureDef {sig.name!r}")
    outputs = tuple(k for k in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if k in sig.outputs)
    if not outputs:
        raise ServingError(
            "FAILED_PRECONDITION",
            f'Expected classification signature outputs to contain at least one of "{CLASSIFY_CLASSES}" or '
            f'"{CLASSIFY_SCORES}". Signature {sig.name!r} has {sorted(sig.outputs)}',
        )
    return outputs


def _regress_outputs(sig: SignatureInfo) -> tuple[str, ...]:
    if sig.method_name != REGRESS_METHOD:
        raise _bad(f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise _bad("Expected one input Tensor.")
    if len(sig.outputs) != 1:
        raise _bad("Expected one output Tensor.")
    if REGRESS_INPUTS not in sig.inputs:
        raise ServingError("FAILED_PRECONDITION", f"No regression inputs found in SignatureDef {sig.name!r}")
    if REGRESS_OUTPUTS not in sig.outputs:
        raise ServingError("FAILED_PRECONDITION", f"No regression outputs found in SignatureDef {sig.name!r}")
    return (REGRESS_OUTPUTS,)


def _find(servable: Servable, signature_name: str, missing: str) -> SignatureInfo:
    key = signature_name or DEFAULT_SIGNATURE
    if key not in servable.signatures:
        raise _bad(f"{missing}{key}")
    return servable.signatures[key]


def classify_plan(servable: Servable, signature_name: str, examples: Examples, limits: LimitsConfig) -> Plan:
    """Checks a Classify request (classifier.cc GetClassificationSignatureDef, PreProcessClassification).

    Without a signature name, serving_default is used; if it is not a classification
    signature but one named `classify` is (as in vispipe's exports), that one is used.
    """
    if not signature_name and servable.signatures.get(DEFAULT_SIGNATURE, None) is not None:
        if servable.signatures[DEFAULT_SIGNATURE].method_name != CLASSIFY_METHOD and "classify" in servable.signatures:
            signature_name = "classify"
    sig = _find(servable, signature_name, "No signature was found with the name: ")
    outputs = _classify_outputs(sig)
    serialized = _checked_examples(examples, limits)
    return Plan(sig, {CLASSIFY_INPUTS: serialized}, outputs, CLASSIFY_METHOD, len(serialized))


def regress_plan(servable: Servable, signature_name: str, examples: Examples, limits: LimitsConfig) -> Plan:
    """Checks a Regress request (regressor.cc GetRegressionSignatureDef, PreProcessRegression)."""
    sig = _find(servable, signature_name, "No signature was found with the name: ")
    outputs = _regress_outputs(sig)
    serialized = _checked_examples(examples, limits)
    return Plan(sig, {REGRESS_INPUTS: serialized}, outputs, REGRESS_METHOD, len(serialized))


def multi_inference_plans(servable: Servable, tasks: list[Any], examples: Examples, limits: LimitsConfig) -> list[Plan]:
    """Checks a MultiInference request's tasks (multi_inference.cc TensorFlowMultiInferenceRunner::Infer).

    Args:
        servable: the version the first task's model spec names.
        tasks: InferenceTask protos (model_spec, method_name).
        examples: the request's examples (or its Input proto).
        limits: the server's request limits.

    Returns:
        One plan per task, in order.
    """
    model_name, input_tensor, seen, checked = "", "", set(), []
    for task in tasks:
        if not task.model_spec.name:
            raise _bad("Found ModelSpec with an empty model name.")
        if model_name and model_name != task.model_spec.name:
            raise _bad("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        model_name = task.model_spec.name
        key = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if key in seen:
            raise _bad(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        sig = _find(servable, key, "Requested signature not found in model graph: ")
        if task.method_name == CLASSIFY_METHOD:
            outputs = _classify_outputs(sig)
        elif task.method_name == REGRESS_METHOD:
            outputs = _regress_outputs(sig)
        else:
            raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
        tensor = sig.input_tensors.get(CLASSIFY_INPUTS, "")
        if input_tensor and tensor != input_tensor:
            raise _bad("Input tensor must be the same for all Signatures.")
        input_tensor = tensor
        checked.append((sig, outputs, task.method_name))
    serialized = _checked_examples(examples, limits)
    return [Plan(sig, {CLASSIFY_INPUTS: serialized}, outputs, method, len(serialized)) for sig, outputs, method in checked]


def classification_results(plan: Plan, outputs: Tensors) -> list[list[tuple[str, float]]]:
    """[(label, score), ...] per example, checked as classifier.cc PostProcessClassificationResult does."""
    classes, scores = outputs.get(CLASSIFY_CLASSES), outputs.get(CLASSIFY_SCORES)
    for name, value, dtype in ((CLASSIFY_CLASSES, classes, "DT_STRING"), (CLASSIFY_SCORES, scores, "DT_FLOAT")):
        if value is None:
            continue
        if value.ndim != 2:
            raise _bad(f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
        if (value.dtype == object) != (dtype == "DT_STRING") or (dtype == "DT_FLOAT" and value.dtype != np.float32):
            raise _bad(f"Expected {name} Tensor of {dtype}. Got: {value.dtype}")
        if value.shape[0] != plan.rows:
            raise _bad(f"Expected {name} output batch size of {plan.rows}. Got: {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _bad(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    return [
        [
            (
                classes[i, j].decode("utf-8", "replace") if classes is not None else "",
                float(scores[i, j]) if scores is not None else 0.0,
            )
            for j in range(width)
        ]
        for i in range(plan.rows)
    ]


def regression_results(plan: Plan, outputs: Tensors) -> list[float]:
    """One value per example, checked as regressor.cc PostProcessRegressionResult does."""
    value = outputs[REGRESS_OUTPUTS]
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise _bad(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(value.shape)}")
    if value.shape[0] != plan.rows:
        raise _bad(f"Input batch size did not match output batch size: {plan.rows} vs. {value.shape[0]}")
    if value.dtype != np.float32:
        raise _bad(f"Expected output Tensor of DT_FLOAT.  Got: {value.dtype}")
    return [float(v) for v in value.reshape(-1)]
