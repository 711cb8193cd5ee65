"""One loaded model version: its SavedModel signatures, labels, batchers and warm-up.

```python
servable = Servable.load("lenet", 1, "/models/lenet/1", BatchingConfig())
outputs = servable.run("serving_default", {"images": np.zeros((1, 28, 28, 1), np.uint8)})
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import threading
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from vispipe.serving.batcher import Batcher
from vispipe.serving.config import BatchingConfig
from vispipe.serving.errors import ServingError

__all__ = ["SignatureInfo", "Servable", "DEFAULT_SIGNATURE", "WARMUP_FILE"]

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_LABEL_FILES = ("labels.txt", "labels", "class_names.txt")
# Requests that bypass batching (batching off, or more rows than a batch) run here,
# off the event loop and gRPC threads, a few at a time.
_UNBATCHED = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="unbatched")

Tensors = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """A signature's callable and its input/output specs.

    Args:
        name: signature key ("serving_default", "classify").
        fn: the concrete function, called with keyword tensors.
        inputs: input name -> tf.TensorSpec.
        outputs: output name -> tf.TensorSpec.
        method_name: the SignatureDef method ("tensorflow/serving/predict", ...).
    """

    name: str
    fn: Callable[..., dict[str, tf.Tensor]]
    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]
    method_name: str


def _clean_tf_message(error: tf.errors.OpError) -> str:
    # TF messages carry graph node names and Python tracebacks after the first line.
    text = error.message.split("\n")[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return text.split(" [Op:")[0].strip() or type(error).__name__


def _read_labels(version_path: str) -> list[str] | None:
    for folder in ("assets", "assets.extra"):
        for name in _LABEL_FILES:
            path = os.path.join(version_path, folder, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    return [line.rstrip("\n") for line in f if line.strip()]
    return None


class Servable:
    """A loaded SavedModel version, callable by signature, batched when enabled.

    Args:
        name: model name.
        version: version number (its folder name).
        path: the version folder.
        model: the object returned by `tf.saved_model.load`.
        signature_defs: the SignatureDef protos from saved_model.pb (for metadata).
        batching: batching settings shared by this version's signatures.
        on_batch: called with (signature name, batch size) after each batch.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        model: Any,
        signature_defs: dict[str, Any],
        batching: BatchingConfig,
        on_batch: Callable[[str, int], None] | None = None,
    ):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = signature_defs
        self.labels = _read_labels(path)
        self.batching = batching
        self._model = model  # keeps the variables the signatures use alive
        self._on_batch = on_batch
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self.signatures: dict[str, SignatureInfo] = {}
        for key, fn in model.signatures.items():
            method = signature_defs[key].method_name if key in signature_defs else "tensorflow/serving/predict"
            self.signatures[key] = SignatureInfo(
                name=key,
                fn=fn,
                inputs=dict(fn.structured_input_signature[1]),
                outputs=dict(fn.structured_outputs),
                method_name=method,
            )

    @classmethod
    def load(
        cls,
        name: str,
        version: int,
        path: str,
        batching: BatchingConfig,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> "Servable":
        """Loads `path` (a SavedModel folder) with tf.saved_model.load.

        Raises:
            ValueError: the folder has no saved_model.pb or no signatures.
        """
        pb = os.path.join(path, "saved_model.pb")
        if not os.path.isfile(pb):
            raise ValueError(f"model {name!r} version {version}: expected {pb}, which does not exist")
        proto = saved_model_pb2.SavedModel()
        with open(pb, "rb") as f:
            proto.ParseFromString(f.read())
        signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items() if not k.startswith("__")}
        model = tf.saved_model.load(path)
        if not model.signatures:
            raise ValueError(f"model {name!r} version {version}: {path} has no serving signatures")
        return cls(name, version, path, model, signature_defs, batching, on_batch)

    def signature(self, name: str | None) -> SignatureInfo:
        """The named signature (default serving_default), or a 400 naming the ones there are."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Serving signature name: \"{key}\" not found in signature def; "
                f"model {self.name!r} version {self.version} has {sorted(self.signatures)}",
            )
        return self.signatures[key]

    def classify_signature(self, name: str | None) -> SignatureInfo:
        """The classification signature: `name`; else serving_default if it classifies, else `classify`.

        Raises:
            ServingError: INVALID_ARGUMENT when there is none, or it does not take one DT_STRING input.
        """
        default = self.signatures.get(DEFAULT_SIGNATURE)
        if name:
            sig = self.signature(name)
        elif default is not None and default.method_name == CLASSIFY_METHOD:
            sig = default
        elif "classify" in self.signatures:
            sig = self.signatures["classify"]
        else:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"model {self.name!r} has no classification signature; signatures are {sorted(self.signatures)}",
            )
        if len(sig.inputs) != 1 or next(iter(sig.inputs.values())).dtype != tf.string:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"signature {sig.name!r} is not a classification signature (one DT_STRING input of tf.Examples)",
            )
        return sig

    def run(self, signature_name: str | None, inputs: Tensors) -> Tensors:
        """Calls a signature on already-validated arrays, unbatched.

        Raises:
            ServingError: INVALID_ARGUMENT when TensorFlow rejects the values.
        """
        sig = self.signature(signature_name)
        try:
            result = sig.fn(**{k: tf.convert_to_tensor(v, dtype=sig.inputs[k].dtype) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, ValueError, TypeError) as error:
            message = _clean_tf_message(error) if isinstance(error, tf.errors.OpError) else str(error).split("\n")[0]
            raise ServingError("INVALID_ARGUMENT", message) from None
        return {k: v.numpy() for k, v in result.items()}

    def submit(self, signature_name: str | None, inputs: Tensors) -> concurrent.futures.Future:
        """Runs a signature, through its batcher when batching is on and the request fits a batch.

        Returns:
            A future resolving to output name -> array.
        """
        sig = self.signature(signature_name)
        rows = {np.shape(a)[0] if np.ndim(a) else -1 for a in inputs.values()}
        if self.batching.enabled and len(rows) == 1 and 0 < min(rows) <= self.batching.max_batch_size:
            return self._batcher(sig.name).submit(inputs)
        return _UNBATCHED.submit(self.run, sig.name, inputs)

    def queue_depth(self) -> int:
        """Rows waiting in this version's batchers."""
        return sum(b.queue_depth for b in list(self._batchers.values()))

    def close(self, timeout: float | None = None) -> None:
        """Stops the batchers after the requests already queued have run."""
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close(timeout)

    def _batcher(self, signature_name: str) -> Batcher:
        with self._lock:
            if signature_name not in self._batchers:
                on_batch = None
                if self._on_batch is not None:
                    on_batch = lambda size, s=signature_name: self._on_batch(s, size)  # noqa: E731
                self._batchers[signature_name] = Batcher(
                    run=lambda inputs, s=signature_name: self.run(s, inputs),
                    config=self.batching,
                    name=f"model {self.name!r} version {self.version}",
                    on_batch=on_batch,
                )
            return self._batchers[signature_name]
