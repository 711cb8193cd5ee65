"""The server serves a real export (export/savedmodel.py) with its warm-up records and signatures."""

from __future__ import annotations

import base64

import numpy as np
import pytest

savedmodel = pytest.importorskip("vispipe.export.savedmodel", reason="the export stage (export/) is not importable here")
contract = pytest.importorskip("vispipe.export.contract", reason="the export stage (export/) is not importable here")
import keras
from fastapi.testclient import TestClient

from vispipe.serving.app import create_app
from vispipe.serving.config import ServerConfig
from vispipe.serving.models_config import ModelSpec
from vispipe.serving.testing import encode_png


def test_real_export_is_served_over_rest(tmp_path):
    spec = contract.RunSpec(
        name="digits", run_dir=str(tmp_path / "run"), run_name="run", classes=("a", "b", "c"), image_shape=(8, 8, 1),
        preprocess={"mode": "none"}, resize_mode="squash", dataset_dir=str(tmp_path / "data"), top_k=2,
    )
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]
    )
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    savedmodel.write_savedmodel(model, spec, str(tmp_path / "savedmodel"), images)
    app = create_app(ServerConfig(models=[ModelSpec("digits", str(tmp_path / "savedmodel" / "digits"))], grpc_port=None, poll_interval_s=0))
    with TestClient(app) as client:
        assert app.state.store.wait_ready(120)  # warm-up replays the export's records
        expected = model.predict(images.astype("float32"), verbose=0)
        body = client.post("/v1/models/digits:predict", json={"instances": images.tolist()}).json()
        np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], expected, rtol=1e-5, atol=1e-6)
        assert all(p["classes"][0] == "abc"[int(np.argmax(e))] for p, e in zip(body["predictions"], expected))
        png = encode_png(images[0])
        top = client.post("/v1/models/digits:classify_image?top_k=1", content=png, headers={"content-type": "image/png"}).json()
        assert top["predictions"][0]["label"] == "abc"[int(np.argmax(expected[0]))]
        example = {"image/encoded": {"b64": base64.b64encode(png).decode()}}
        results = client.post("/v1/models/digits:classify", json={"examples": [example]}).json()["results"]
        assert results[0][0][0] == "abc"[int(np.argmax(expected[0]))]
