"""The baseline servers of `serve_load.py`, each a FastAPI app run by uvicorn in its own process.

- `naive`: `model.predict` per request on the .keras model (the tutorials' way);
- `direct`: the SavedModel's `serving_default` concrete function called on each
  request's tensor, no batching (what a competent engineer writes);
- `floor`: no model: parses the raw body with orjson (the parser vispipe's
  server uses) into an array (an async endpoint, no validation, no thread hop)
  and returns a stored response, to measure what the HTTP stack alone can serve;
- `floor_json`: the same with the standard library's `json.loads`, the floor
  of a server without a faster parser.

`naive` and `direct` take the body as FastAPI's tutorials do (`body: dict`, a
sync endpoint run in its thread pool). All run under `uvicorn.run` with its
defaults, as vispipe's server does.

Usage (as `serve_load.py` starts them):

    python bench/serve_apps.py direct MODELS/lenet/1 8601
    python bench/serve_apps.py floor RESPONSE.json 8602
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["APPS", "naive_app", "direct_app", "floor_app", "floor_json_app"]

HOST = "127.0.0.1"  # loopback only
PREDICT = "/v1/models/{name}:predict"


def _app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    return app


def naive_app(keras_path: str):
    """`model.predict` per request."""
    import keras
    import numpy as np

    model = keras.models.load_model(keras_path)
    app = _app()

    @app.post(PREDICT)
    def predict(name: str, body: dict):
        images = np.asarray(body["instances"], dtype="float32")
        return {"predictions": model.predict(images, verbose=0).tolist()}

    return app


def direct_app(saved_model: str):
    """The SavedModel's `serving_default` concrete function per request."""
    import numpy as np
    import tensorflow as tf

    function = tf.saved_model.load(saved_model).signatures["serving_default"]
    app = _app()

    @app.post(PREDICT)
    def predict(name: str, body: dict):
        outputs = function(images=tf.constant(np.asarray(body["instances"], dtype=np.uint8)))
        probabilities = outputs["probabilities"].numpy().tolist()
        labels = [label.decode() for label in outputs["label"].numpy()]
        return {"predictions": [{"probabilities": p, "label": label} for p, label in zip(probabilities, labels)]}

    return app


def floor_app(response_path: str, loads=None):
    """Parses the request into an array as cheaply as Python can and returns the stored response.

    Args:
        response_path: the stored response body.
        loads: the JSON parser (default: orjson's).
    """
    import numpy as np
    import orjson
    from fastapi import Request, Response

    loads = loads or orjson.loads
    with open(response_path, "rb") as f:
        stored = f.read()
    app = _app()

    @app.post(PREDICT)
    async def predict(name: str, request: Request):
        np.asarray(loads(await request.body())["instances"], dtype=np.uint8)
        return Response(stored, media_type="application/json")

    return app


def floor_json_app(response_path: str):
    """`floor_app` with the standard library's `json.loads`."""
    import json

    return floor_app(response_path, json.loads)


APPS = {"naive": naive_app, "direct": direct_app, "floor": floor_app, "floor_json": floor_json_app}


def main(argv: list[str]) -> int:
    import uvicorn

    kind, path, port = argv
    app = APPS[kind](path)
    uvicorn.run(app, host=HOST, port=int(port), log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
