"""The baseline servers of `serve_load.py`, each a FastAPI app run by uvicorn in its own process.

- `naive`: `model.predict` per request on the .keras model (the tutorials' way);
- `direct`: the SavedModel's `serving_default` concrete function called on each
  request's tensor, no batching (what a competent engineer writes);
- `floor`: no model: parses the raw body with `json.loads` into an array (an
  async endpoint, no validation, no thread hop) and returns a stored
  response, to measure what the HTTP stack alone can serve.

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

__all__ = ["APPS", "naive_app", "direct_app", "floor_app"]

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


def floor_app(response_path: str):
    """Parses the request into an array as cheaply as Python can and returns the stored response."""
    import json

    import numpy as np
    from fastapi import Request, Response

    with open(response_path, "rb") as f:
        stored = f.read()
    app = _app()

    @app.post(PREDICT)
    async def predict(name: str, request: Request):
        np.asarray(json.loads(await request.body())["instances"], dtype=np.uint8)
        return Response(stored, media_type="application/json")

    return app


APPS = {"naive": naive_app, "direct": direct_app, "floor": floor_app}


def main(argv: list[str]) -> int:
    import uvicorn

    kind, path, port = argv
    app = APPS[kind](path)
    uvicorn.run(app, host=HOST, port=int(port), log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
