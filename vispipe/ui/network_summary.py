"""The layer graph of a custom network, built in a separate process.

The New-model page's "Visualize" button builds the user's `build()` with
`vispipe.models.custom.load_custom_network`, exactly as training will, but
in a child process: the user's code never runs in the UI server, a hang is
ended by a timeout, and the server does not import TensorFlow.

```
python -m vispipe.ui.network_summary NETWORK.py HEIGHT WIDTH CHANNELS NUM_CLASSES
```

prints one JSON object: `{"layers": [{"name", "type", "output_shape",
"params", "inputs"}], "total_params", "trainable_params"}` or `{"error"}`.

Example:

```python
summary = await describe_network("networks/abc.py", (28, 28, 1), 10)
print(summary["total_params"])
```
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

__all__ = ["TIMEOUT_S", "describe_network", "summarize"]

TIMEOUT_S = 120.0


def _keras_history_names(value: Any) -> list[str]:
    """Layer names referenced by `keras_history` entries anywhere in a config value."""
    if isinstance(value, dict):
        history = value.get("keras_history")
        if isinstance(history, (list, tuple)) and history:
            return [str(history[0])]
        return [name for v in value.values() for name in _keras_history_names(v)]
    if isinstance(value, (list, tuple)):
        return [name for v in value for name in _keras_history_names(v)]
    return []


def _shape(layer) -> list[int | None] | str:
    try:
        return list(layer.output.shape)
    except (AttributeError, ValueError):
        return "multiple"  # A layer used more than once, or one without a graph output.


def summarize(path: str, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
    """The layers of a custom network as training would build it.

    Args:
        path: The `.py` file defining `build(input_shape, num_classes)`.
        input_shape: (height, width, channels) of the dataset's images.
        num_classes: Classes of the dataset.

    Returns:
        `{"layers": [...], "total_params", "trainable_params"}`; each layer
        has its name, class, output shape (None for the batch), parameter
        count and the names of the layers it reads.

    Raises:
        Whatever `load_custom_network` or the user's code raises.
    """
    from vispipe.models.custom import load_custom_network

    model = load_custom_network(path, input_shape, num_classes)
    configs = {c.get("name"): c for c in model.get_config().get("layers", [])}
    layers, previous = [], None
    for layer in model.layers:
        config = configs.get(layer.name, {})
        # Functional configs name each layer's inputs; a Sequential's layers
        # read the one before.
        inputs = (_keras_history_names(config["inbound_nodes"]) if "inbound_nodes" in config
                  else [previous] if previous else [])
        layers.append({"name": layer.name, "type": type(layer).__name__,
                       "output_shape": _shape(layer), "params": int(layer.count_params()),
                       "inputs": inputs})
        previous = layer.name
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    return {"layers": layers, "total_params": int(model.count_params()),
            "trainable_params": trainable}


async def describe_network(path: str, input_shape: tuple[int, int, int], num_classes: int,
                           timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Runs `summarize` in a child process; `{"error": ...}` when it fails or times out."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               # The summary needs no GPU; leave its memory to training jobs.
               CUDA_VISIBLE_DEVICES="-1")
    # -P and the network's folder as working directory: whatever folder the UI
    # was started in, the installed vispipe is what runs (as for jobs).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "vispipe.ui.network_summary", path,
        *map(str, input_shape), str(num_classes), env=env, cwd=os.path.dirname(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"error": f"Building the network took over {timeout_s:g} s; expected build() "
                         "to return promptly."}
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        return {"error": f"Building the network failed (exit {proc.returncode}): "
                         + " ".join(tail)}


def _main(argv: list[str]) -> int:
    path, height, width, channels, classes = argv
    try:
        result = summarize(path, (int(height), int(width), int(channels)), int(classes))
    except Exception as error:  # The user's code may raise anything; report it.
        message = str(error).replace(path, "<custom network>")
        result = {"error": f"{type(error).__name__}: {message}"}
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
