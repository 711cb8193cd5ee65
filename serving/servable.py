"""One loaded model version: its signatures, how they run, batching and warm-up.

TF2 SavedModels (written by `tf.saved_model.save`, Keras `export`) run through their
concrete functions. TF1 graph SavedModels run as TF Serving runs them: the
signature's tensors in a session, fed the request's values, so the graph (not a
stricter wrapper) decides which shapes it accepts.

```python
servable = Servable.load("lenet", 1, "/models/lenet/00000001", BatchingConfig())
servable.warm_up()
outputs = servable.run("serving_default", {"images": np.zeros((1, 28, 28, 1), np.uint8)})
```
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import sys
import threading
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, saved_model_pb2

from vispipe.serving.batcher import Batcher
from vispipe.serving.config import BatchingConfig
from vispipe.serving.errors import ServingError, status_name
from vispipe.serving.protos import arrays_from_tensor_protos, serialized_examples, warmup_requests
from vispipe.serving.signature import DEFAULT_SIGNATURE, SignatureInfo

__all__ = ["Servable", "WARMUP_FILE", "SERVE_TAGS"]

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SERVE_TAGS = ("serve",)
_LABEL_FILES = ("labels.txt", "labels", "class_names.txt")
# Requests that bypass batching (batching off, or more rows than a batch) run here,
# off the event loop and gRPC threads, a few at a time.
_UNBATCHED = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="unbatched")

Tensors = dict[str, np.ndarray]


def clean_tf_message(error: BaseException) -> str:
    """The cause of a TensorFlow error in one line, without graph node names and stack traces.

    Example:
    >>> clean_tf_message(tf.errors.InvalidArgumentError(None, None, "Graph execution error:\\n\\nbad image\\n\\t [[{{node D}}]]"))
    'bad image'
    """
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    kept, in_trace = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped == "Graph execution error:":
            continue
        if stripped.startswith("Detected at node"):
            in_trace = True
            continue
        if in_trace and (line[:1].isspace() or stripped == "<stack traces unavailable>"):
            continue
        in_trace = False
        kept.append(stripped)
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", " ".join(kept))
    message = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", message)
    return message.split(" [Op:")[0].strip() or type(error).__name__


def _as_serving_error(error: Exception) -> ServingError:
    if isinstance(error, tf.errors.OpError):
        return ServingError(status_name(error.error_code), clean_tf_message(error))
    return ServingError("INVALID_ARGUMENT", str(error).split("\n")[0])


def _cast(value: np.ndarray, spec: tf.TensorSpec) -> np.ndarray:
    if spec.dtype == tf.string:
        return np.asarray(value, dtype=object)
    return np.asarray(value, dtype=spec.dtype.as_numpy_dtype)


class _FunctionRunner:
    """Runs a TF2 SavedModel's signatures through its concrete functions."""

    def __init__(self, path: str, tags: tuple[str, ...]):
        self._model = tf.saved_model.load(path, tags=list(tags))  # keeps the variables alive
        self._functions = dict(self._model.signatures)

    def run(self, sig: SignatureInfo, inputs: Tensors, outputs: tuple[str, ...]) -> Tensors:
        function = self._functions[sig.name]
        result = function(**{k: tf.convert_to_tensor(_cast(v, sig.inputs[k]), sig.inputs[k].dtype) for k, v in inputs.items()})
        return {k: result[k].numpy() for k in outputs}


class _SessionRunner:
    """Runs a TF1 graph SavedModel's signatures in a session, as TF Serving does."""

    def __init__(self, path: str, tags: tuple[str, ...]):
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        with self._graph.as_default():
            tf.compat.v1.saved_model.loader.load(self._session, list(tags), path)
        self._callables: dict[tuple, Callable[..., list]] = {}
        self._lock = threading.Lock()

    def _callable(self, sig: SignatureInfo, feeds: tuple[str, ...], outputs: tuple[str, ...]) -> Callable[..., list]:
        key = (sig.name, feeds, outputs)
        with self._lock:
            if key not in self._callables:
                # A callable made from CallableOptions runs like TF Serving's C++ Session::Run:
                # Python's Session.run would refuse to feed x:0 a shape its static shape excludes,
                # the session itself lets the graph's ops decide.
                options = config_pb2.CallableOptions(
                    feed=[sig.input_tensors[name] for name in feeds],
                    fetch=[sig.output_tensors[name] for name in outputs],
                )
                self._callables[key] = self._session._make_callable_from_options(options)
            return self._callables[key]

    def run(self, sig: SignatureInfo, inputs: Tensors, outputs: tuple[str, ...]) -> Tensors:
        feeds = tuple(sorted(inputs))
        values = self._callable(sig, feeds, outputs)(*[_cast(inputs[name], sig.inputs[name]) for name in feeds])
        return {name: np.asarray(value) for name, value in zip(outputs, values)}


def _read_labels(version_path: str) -> list[str] | None:
    for folder in ("assets", "assets.extra"):
        for name in _LABEL_FILES:
            path = os.path.join(version_path, folder, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    return [line.rstrip("\n") for line in f if line.strip()]
    return None


def _meta_graph(path: str, tags: tuple[str, ...]) -> Any:
    pb = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb):
        raise ValueError(f"expected {pb}, which does not exist")
    proto = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    found = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
    raise ValueError(f"{path} has no MetaGraphDef with tags {list(tags)}; it has {found}")


class Servable:
    """A loaded SavedModel version, callable by signature, batched when enabled.

    Args:
        name: model name.
        version: version number.
        path: the version folder (its name may be zero-padded: `00000123`).
        runner: runs one signature on a dict of arrays.
        signature_defs: the SignatureDef protos of the served MetaGraphDef (for metadata).
        graph_mode: True for a TF1 graph SavedModel (the graph decides shapes).
        batching: batching settings shared by this version's signatures.
        on_batch: called with (signature name, batch size) after each batch.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: str,
        runner: Any,
        signature_defs: dict[str, Any],
        graph_mode: bool,
        batching: BatchingConfig,
        on_batch: Callable[[str, int], None] | None = None,
    ):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = signature_defs
        self.graph_mode = graph_mode
        self.labels = _read_labels(path)
        self.batching = batching
        self.signatures = {
            key: SignatureInfo.from_signature_def(key, sig) for key, sig in signature_defs.items() if not key.startswith("__")
        }
        self._runner = runner
        self._on_batch = on_batch
        self._batchers: dict[tuple, Batcher] = {}
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        name: str,
        version: int,
        path: str,
        batching: BatchingConfig,
        on_batch: Callable[[str, int], None] | None = None,
        tags: tuple[str, ...] = SERVE_TAGS,
    ) -> "Servable":
        """Loads the SavedModel in `path`: TF2 through its functions, TF1 in a session.

        Raises:
            ValueError: no saved_model.pb, no MetaGraphDef with `tags`, or no signatures.
        """
        meta_graph = _meta_graph(path, tags)
        signature_defs = dict(meta_graph.signature_def)
        if not any(not key.startswith("__") for key in signature_defs):
            raise ValueError(f"model {name!r} version {version}: {path} has no serving signatures")
        graph_mode = not meta_graph.object_graph_def.nodes
        runner = _SessionRunner(path, tags) if graph_mode else _FunctionRunner(path, tags)
        return cls(name, version, path, runner, signature_defs, graph_mode, batching, on_batch)

    def signature(self, name: str | None) -> SignatureInfo:
        """The named signature (default serving_default), or TF Serving's REST error naming the ones there are."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise ServingError(
                "INVALID_ARGUMENT",
                f'Serving signature name: "{key}" not found in signature def '
                f"(model {self.name} version {self.version} has {sorted(self.signatures)})",
            )
        return self.signatures[key]

    def run(self, signature_name: str | None, inputs: Tensors, outputs: tuple[str, ...] | None = None) -> Tensors:
        """Runs a signature (None: serving_default) on checked arrays, unbatched; returns the `outputs` (default: all).

        Raises:
            ServingError: with TensorFlow's status code and message when the model rejects the values.
        """
        sig = self.signature(signature_name)
        try:
            return self._runner.run(sig, inputs, outputs or tuple(sig.outputs))
        except (tf.errors.OpError, ValueError, TypeError) as error:
            raise _as_serving_error(error) from None

    def submit(self, signature_name: str | None, inputs: Tensors, outputs: tuple[str, ...] | None = None) -> concurrent.futures.Future:
        """Runs a signature, through its batcher when batching is on and the request fits a batch.

        Returns:
            A future resolving to output name -> array.

        Raises:
            ServingError: UNAVAILABLE when this version is unloading or its batching queue is full.
        """
        signature_name = self.signature(signature_name).name
        outputs = outputs or tuple(self.signatures[signature_name].outputs)
        rows = {np.shape(a)[0] if np.ndim(a) else -1 for a in inputs.values()}
        if self.batching.enabled and len(rows) == 1 and 0 < min(rows) <= self.batching.max_batch_size:
            return self._batcher(signature_name, outputs).submit(inputs)
        return _UNBATCHED.submit(self.run, signature_name, inputs, outputs)

    def queue_depth(self) -> int:
        """Rows waiting in this version's batchers."""
        return sum(b.queue_depth for b in list(self._batchers.values()))

    def close(self, timeout: float | None = None) -> None:
        """Stops the batchers after the requests already queued have run.

        The model itself is freed when the last request holding this servable lets go.
        """
        with self._lock:
            self._closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close(timeout)

    def _batcher(self, signature_name: str, outputs: tuple[str, ...]) -> Batcher:
        key = (signature_name, outputs)
        batcher = self._batchers.get(key)  # the lock only to make one
        if batcher is not None:
            return batcher
        with self._lock:
            if self._closed:  # a request that took this version just before it was unloaded
                raise ServingError("UNAVAILABLE", f"model {self.name!r} version {self.version} is unloading; retry the request")
            if key not in self._batchers:
                on_batch = None
                if self._on_batch is not None:
                    on_batch = lambda size, s=signature_name: self._on_batch(s, size)  # noqa: E731
                self._batchers[key] = Batcher(
                    run=lambda inputs, s=signature_name, o=outputs: self.run(s, inputs, o),
                    config=self.batching,
                    name=f"model {self.name!r} version {self.version}",
                    on_batch=on_batch,
                )
            return self._batchers[key]

    # -- warm-up ---------------------------------------------------------------------------

    def warm_up(self) -> int:
        """Replays the export's TF Serving warm-up records, else one synthetic row (TF2 only).

        Returns:
            The number of requests run.
        """
        path = os.path.join(self.path, WARMUP_FILE)
        if os.path.isfile(path):
            count = 0
            for record in warmup_requests(path):
                count += self._replay(record)
            return count
        sig = self.signatures.get(DEFAULT_SIGNATURE)
        if self.graph_mode or sig is None or any(spec.dtype == tf.string for spec in sig.inputs.values()):
            return 0  # no synthetic value is valid for a graph of unknown shapes or encoded images
        inputs = {}
        for name, spec in sig.inputs.items():
            shape = [1] + [d if d is not None else 32 for d in spec.shape.as_list()[1:]] if spec.shape.rank else []
            inputs[name] = np.zeros(shape, dtype=spec.dtype.as_numpy_dtype)
        self.run(sig.name, inputs)
        return 1

    def _replay(self, record: Any) -> int:
        kind = record.WhichOneof("log_type")
        if kind == "predict_log":
            request = record.predict_log.request
            sig = self.signature(request.model_spec.signature_name or None)
            self.run(sig.name, arrays_from_tensor_protos(request.inputs, sys.maxsize))
            return 1
        if kind in ("classify_log", "regress_log"):
            request = getattr(record, kind).request
            self._run_examples(request.model_spec.signature_name, request.input)
            return 1
        if kind == "multi_inference_log":
            request = record.multi_inference_log.request
            for task in request.tasks:
                self._run_examples(task.model_spec.signature_name, request.input)
            return len(request.tasks)
        return 0

    def _run_examples(self, signature_name: str, input_proto: Any) -> None:
        sig = self.signature(signature_name or None)
        self.run(sig.name, {next(iter(sig.inputs)): serialized_examples(input_proto)})
