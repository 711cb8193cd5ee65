"""TF.js graph models converted from the serving SavedModel, run in Node.

The graph model comes from the SavedModel's `serving_default` signature
(uint8 `images` of any size in; `probabilities`, `label_ids`, `scores`,
`classes` out), with float32, float16 or uint8 weights. The run's labels,
input and preprocessing are stored under `userDefinedMetadata.vispipe` in
`model.json`.

Output names do not depend on the converter keeping them: it names a
signature output by matching dtype and shape, so when `probabilities` and
`scores` have the same shape (as many classes as top labels) both become
plain tensor names (`Identity_2:0`). `name_outputs` therefore finds each
output from the graph itself (the `TopKV2` op's values are the scores, its
indices the label ids, the other float output the probabilities), writes the
map as `userDefinedMetadata.vispipe.output_names` (and `input_names`), and
restores the signature's keys. A page or app calls
`model.execute(x, meta.output_names.probabilities)`.

Verification runs the files from disk in Node with the pure-JavaScript npm
package `@tensorflow/tfjs` (`export/js/run_graph_model.js`); `npm ci` in
`export/js/` installs it (`ensure_node_packages` does it when missing).

Example:

```python
convert_tfjs("out/savedmodel/mnist/1", "out/tfjs/float16", "float16", spec.to_json())
probs = tfjs_runner("out/tfjs/float16")(images)
```
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable

import numpy as np

from vispipe.export.contract import (
    INPUT_IMAGES,
    OUTPUT_CLASSES,
    OUTPUT_LABEL_IDS,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCORES,
)
from vispipe.export.options import TFJS_QUANTIZATIONS
from vispipe.export.verify import check_top_k

__all__ = [
    "JS_DIR",
    "convert_tfjs",
    "name_outputs",
    "ensure_node_packages",
    "tfjs_runner",
]

_CONVERT = """
import json, sys
from tensorflowjs.converters.tf_saved_model_conversion_v2 import convert_tf_saved_model
convert_tf_saved_model(**json.loads(sys.argv[1]))
"""

JS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")
_SCRIPT = os.path.join(JS_DIR, "run_graph_model.js")


def convert_tfjs(
    savedmodel_dir: str, out_dir: str, quantization: str, metadata: dict[str, Any]
) -> str:
    """Converts the SavedModel's `serving_default` to a TF.js graph model.

    Args:
        savedmodel_dir: The SavedModel version folder.
        out_dir: Folder for `model.json` and the weight shards (created).
        quantization: One of `TFJS_QUANTIZATIONS` (weights only; the
            graph computes in float32).
        metadata: Stored as `userDefinedMetadata.vispipe` in `model.json`.

    Returns:
        `out_dir`.

    Raises:
        ValueError: Unknown quantization.

    Example:

    ```python
    convert_tfjs("out/savedmodel/mnist/1", "out/tfjs/uint8", "uint8", {"labels": labels})
    ```
    """
    if quantization not in TFJS_QUANTIZATIONS:
        raise ValueError(
            f"TF.js quantization: expected one of {TFJS_QUANTIZATIONS}, got {quantization!r}.")
    arguments = {
        "saved_model_dir": savedmodel_dir, "output_dir": out_dir,
        "signature_def": "serving_default", "saved_model_tags": "serve",
        "quantization_dtype_map": None if quantization == "float32" else {quantization: "*"},
        "metadata": {"vispipe": {**metadata, "weights": quantization}},
    }
    # In a child process: tensorflowjs imports TF-DF, whose op library can
    # deadlock in load_op_library when other TF op libraries (e.g. Horovod's)
    # were loaded into this process first.
    done = subprocess.run([sys.executable, "-c", _CONVERT, json.dumps(arguments, default=str)],
                          capture_output=True, text=True,
                          env={**os.environ, "TFDF_DISABLE_WELCOME_MESSAGE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"TF.js conversion of {savedmodel_dir} failed: "
                           f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    name_outputs(out_dir)
    return out_dir


def _source(nodes: dict[str, dict], tensor: str) -> tuple[dict, int]:
    """The op that computes `tensor` ("node:index"), looking through Identity/Cast."""
    name, _, index = tensor.lstrip("^").partition(":")
    node, index = nodes[name], int(index or 0)
    while node["op"] in ("Identity", "IdentityN", "Cast", "Snapshot"):
        inputs = [i for i in node.get("input", []) if not i.startswith("^")]
        name, _, next_index = inputs[index if node["op"] == "IdentityN" else 0].partition(":")
        node, index = nodes[name], int(next_index or 0)
    return node, index


def _output_role(nodes: dict[str, dict], tensor: str, dtype: str) -> str:
    node, index = _source(nodes, tensor)
    if dtype == "DT_STRING":
        return OUTPUT_CLASSES
    if node["op"] in ("TopKV2", "TopK"):
        return OUTPUT_SCORES if index == 0 else OUTPUT_LABEL_IDS
    return OUTPUT_PROBABILITIES if dtype == "DT_FLOAT" else ""


def name_outputs(model_dir: str) -> dict[str, str]:
    """Finds each contract output in a converted graph and records its name.

    Writes `userDefinedMetadata.vispipe.output_names` (`{"probabilities":
    "Identity_2:0", ...}`) and `input_names` (`{"images": "images:0"}`) into
    `model.json`, and restores the signature's output keys.

    Args:
        model_dir: Folder holding the converted `model.json`.

    Returns:
        The output-name map.

    Raises:
        RuntimeError: The graph does not have exactly one probabilities,
            label-ids and scores output.
    """
    path = os.path.join(model_dir, "model.json")
    with open(path, encoding="utf-8") as f:
        model_json = json.load(f)
    nodes = {node["name"]: node for node in model_json["modelTopology"]["node"]}
    signature = model_json["signature"]
    found: dict[str, list[str]] = {}
    outputs = {}
    for key, entry in signature["outputs"].items():
        role = _output_role(nodes, entry["name"], entry.get("dtype", ""))
        found.setdefault(role or key, []).append(entry["name"])
        outputs[role or key] = entry
    required = (OUTPUT_PROBABILITIES, OUTPUT_LABEL_IDS, OUTPUT_SCORES)
    if any(len(found.get(role, [])) != 1 for role in required):
        raise RuntimeError(f"{path}: expected one each of {required} among the graph's outputs, "
                           f"found {found}.")
    (input_entry,) = signature["inputs"].values()
    signature["outputs"] = outputs
    signature["inputs"] = {INPUT_IMAGES: input_entry}
    names = {role: entry["name"] for role, entry in outputs.items()}
    meta = model_json.setdefault("userDefinedMetadata", {}).setdefault("vispipe", {})
    meta["output_names"] = names
    meta["input_names"] = {INPUT_IMAGES: input_entry["name"]}
    with open(f"{path}.partial", "w", encoding="utf-8") as f:
        json.dump(model_json, f)
    os.replace(f"{path}.partial", path)
    return names


def ensure_node_packages() -> str:
    """Installs `@tensorflow/tfjs` into `export/js/node_modules` when missing.

    Returns:
        The `node` executable.

    Raises:
        RuntimeError: Node or npm is missing, or the install failed.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        raise RuntimeError("TF.js verification needs Node.js (`node`), which is not on PATH.")
    if os.path.isdir(os.path.join(JS_DIR, "node_modules", "@tensorflow", "tfjs")):
        return node
    if npm is None:
        raise RuntimeError(f"`npm` is not on PATH; run `npm ci` in {JS_DIR} to install "
                           "@tensorflow/tfjs.")
    command = [npm, "ci" if os.path.isfile(os.path.join(JS_DIR, "package-lock.json"))
               else "install", "--no-audit", "--no-fund"]
    done = subprocess.run(command, cwd=JS_DIR, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` in {JS_DIR} failed:\n{done.stderr[-2000:]}")
    return node


def tfjs_runner(model_dir: str, latency_images: int = 20) -> Callable[[np.ndarray], np.ndarray]:
    """`images -> probabilities` by running the graph model in Node.

    Each call starts one Node process that loads the model from disk and
    runs all images (in batches of 256), then times `latency_images` single
    images; the last call's `{"backend", "latency_ms", "metadata"}` is
    available as `runner.last`. The label ids and scores it returns must be
    the top-k of its probabilities (`check_top_k`).

    Args:
        model_dir: Folder holding `model.json`.
        latency_images: Single-image runs to time.

    Returns:
        The runner: uint8 `[N, H, W, C]` -> float32 `[N, classes]`.

    Raises:
        RuntimeError (when called): Node failed, or the outputs disagree.
    """
    node = ensure_node_packages()

    def run(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, np.uint8)
        with tempfile.TemporaryDirectory() as folder:
            inputs, outputs = os.path.join(folder, "in.bin"), os.path.join(folder, "out.bin")
            images.tofile(inputs)
            done = subprocess.run(
                [node, _SCRIPT, model_dir, inputs, ",".join(map(str, images.shape)), outputs,
                 str(latency_images)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"Node failed on {model_dir}:\n{done.stderr[-2000:]}")
            run.last = json.loads(done.stdout.strip().splitlines()[-1])
            probs = np.fromfile(outputs, np.float32).reshape(len(images), -1)
            top_k = run.last["top_k"]
            check_top_k(probs, np.fromfile(f"{outputs}.label_ids", np.int32).reshape(-1, top_k),
                        np.fromfile(f"{outputs}.scores", np.float32).reshape(-1, top_k),
                        model_dir)
        return probs

    run.last = {}
    return run
