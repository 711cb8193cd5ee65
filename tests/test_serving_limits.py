"""Issue 10 for the model server: hostile inputs are refused before they cost memory, every input
error gets TF Serving's status, serving_bytes errors say what was wrong, :classify_image takes
what it claims (JPEG incl. CMYK, PNG, GIF, BMP), and a non-loopback bind without a token warns.

The model is written here: uint8 images of any size (resized to 8x8 gray, like vispipe's exports),
`serving_bytes` (encoded images) and `classify` (tf.Examples); dark images are "dark", bright
ones "bright". The 20000 x 20000 PNG "bomb" is 2.5 MB of valid deflate (all-zero rows).
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import resource
import struct
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import vispipe.serving.app as serving_app
from vispipe.serving.app import create_app
from vispipe.serving.cli import add_serve_parser, config_from_args
from vispipe.serving.config import ServerConfig
from vispipe.serving.models_config import ModelSpec

LABELS = ["dark", "mid", "bright"]


class _Brightness(tf.Module):
    """8x8 gray mean brightness -> dark / mid / bright."""

    def _probabilities(self, images):
        gray = tf.image.resize(tf.cast(images, tf.float32), (8, 8))
        mean = tf.reduce_mean(gray, axis=[1, 2, 3])
        return tf.nn.softmax(tf.stack([(255.0 - mean) / 16.0, tf.zeros_like(mean) + 4.0, mean / 16.0], axis=1))

    def _decode(self, encoded):
        return tf.map_fn(
            lambda data: tf.image.resize(tf.io.decode_image(data, channels=1, expand_animations=False), (8, 8)),
            encoded, fn_output_signature=tf.TensorSpec([8, 8, 1], tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8, name="images")])
    def serving_default(self, images):
        return {"probabilities": self._probabilities(images)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_bytes(self, image_bytes):
        return {"probabilities": self._probabilities(self._decode(image_bytes))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        encoded = tf.io.parse_example(inputs, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})["image/encoded"]
        scores = self._probabilities(self._decode(encoded))
        return {"scores": scores, "classes": tf.tile([LABELS], [tf.shape(scores)[0], 1])}


def _write_model(path: str) -> None:
    module = _Brightness()
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.serving_default, "serving_bytes": module.serving_bytes, "classify": module.classify})
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    proto.meta_graphs[0].signature_def["classify"].method_name = "tensorflow/serving/classify"
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)
    with open(os.path.join(path, "assets", "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of all-zero rows: one literal and (258, distance 1) matches in fixed Huffman."""
    total = height * (width + 1)
    matches, rest = divmod(total - 1, 258)

    def code(value: int, bits: int) -> list[int]:  # Huffman codes are packed MSB first
        return [(value >> (bits - 1 - i)) & 1 for i in range(bits)]

    literal0, match258, distance1, end = code(0b00110000, 8), code(0b11000101, 8), code(0, 5), code(0, 7)
    bits = np.concatenate([
        np.array([1, 1, 0] + literal0, np.uint8),  # final block, fixed Huffman
        np.tile(np.array(match258 + distance1, np.uint8), matches),
        np.array(literal0 * rest + end, np.uint8),
    ])
    stream = b"\x78\x01" + np.packbits(bits, bitorder="little").tobytes() + struct.pack(">I", ((total % 65521) << 16) | 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(20000, 20000)  # 400 million pixels in 2.5 MB


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "brightness"
    _write_model(str(base / "1"))
    config = ServerConfig(models=[ModelSpec("brightness", str(base))], grpc_port=0, poll_interval_s=0)
    app = create_app(config)
    with TestClient(app) as client:
        assert app.state.store.wait_ready(60)
        channel = grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}")
        yield client, prediction_service_pb2_grpc.PredictionServiceStub(channel)
        channel.close()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def _assert_pixel_limit(response) -> None:
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert "400000000 pixels" in error and "--max_image_pixels" in error


# -- finding 8: bombs are refused before decoding ------------------------------------------


def test_png_bomb_in_a_predict_request_is_refused_before_decoding(served, bomb):
    client, _ = served
    response = client.post("/v1/models/brightness:predict",
                           json={"signature_name": "serving_bytes", "instances": [_b64(bomb)]})
    _assert_pixel_limit(response)


def test_png_bomb_upload_to_classify_image_is_refused(served, bomb):
    client, _ = served
    _assert_pixel_limit(client.post("/v1/models/brightness:classify_image", content=bomb, headers={"content-type": "image/png"}))


def test_png_bomb_inside_a_tf_example_is_refused(served, bomb):
    client, _ = served
    _assert_pixel_limit(client.post("/v1/models/brightness:classify", json={"examples": [{"image/encoded": _b64(bomb)}]}))


def test_grpc_tensor_declaring_400m_elements_is_refused_without_allocating(served):
    _, stub = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "brightness"
    request.inputs["images"].dtype = tf.uint8.as_datatype_enum
    for size in (1, 20000, 20000, 1):
        request.inputs["images"].tensor_shape.dim.add(size=size)
    assert request.ByteSize() < 64  # a few bytes that ask for 400 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "400000000 elements" in error.value.details() and "--max_tensor_elements" in error.value.details()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing was allocated


def test_grpc_tensor_of_2_to_the_62_elements_is_invalid_argument_not_unknown(served):
    _, stub = served
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "brightness"
    request.inputs["images"].dtype = tf.uint8.as_datatype_enum
    for size in (2**31, 2**31, 1, 1):  # 4 EiB
        request.inputs["images"].tensor_shape.dim.add(size=size)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unable to allocate" not in error.value.details()


def test_limits_are_flags_with_safe_defaults_and_listed_at_limits(served, tmp_path):
    client, _ = served
    assert client.get("/limits").json() == {
        "max_body_bytes": 16 * 1024 * 1024, "max_instances": 1024, "request_timeout_s": 30.0,
        "max_image_pixels": 50_000_000, "max_tensor_elements": 16 * 1024 * 1024,
    }
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["serve", "--model_base_path", str(tmp_path), "--max_image_pixels=1000",
                              "--max-tensor-elements", "99", "--max_body_bytes=4096"])
    limits = config_from_args(args).limits
    assert (limits.max_image_pixels, limits.max_tensor_elements, limits.max_body_bytes) == (1000, 99, 4096)


# -- finding 9: errors that say what was wrong; the image formats :classify_image claims -----


def test_serving_bytes_errors_name_the_cause(served):
    client, _ = served
    response = client.post("/v1/models/brightness:predict",
                           json={"signature_name": "serving_bytes", "instances": [_b64(b"not an image at all")]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "Graph execution error" not in error and "Unknown image file format" in error, error


@pytest.mark.parametrize("fmt, mode", [("GIF", "P"), ("BMP", "RGB"), ("BMP", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA")])
def test_classify_image_takes_gif_bmp_and_cmyk_jpeg(served, fmt, mode):
    client, _ = served
    for value, label in ((250, "bright"), (5, "dark")):
        image = Image.fromarray(np.full((24, 20, 3), value, np.uint8)).convert(mode)
        response = client.post("/v1/models/brightness:classify_image?top_k=1", content=_encoded(image, fmt),
                               headers={"content-type": f"image/{fmt.lower()}"})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == label


# -- secure by default: TF Serving's no-auth default stays on loopback only ----------------


@pytest.mark.parametrize("host, token, warned", [
    ("0.0.0.0", None, True), ("::", None, True), ("0.0.0.0", "s3cret", False), ("127.0.0.1", None, False),
])
def test_binding_beyond_loopback_without_a_token_warns(tmp_path, monkeypatch, caplog, host, token, warned):
    monkeypatch.setattr(serving_app.uvicorn.Server, "run", lambda self: None)  # no socket is opened
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="verb"))
    argv = ["serve", "--model-base-path", str(tmp_path), "--host", host] + (["--auth-token", token] if token else [])
    args = parser.parse_args(argv)
    monkeypatch.delenv("VISPIPE_SERVE_AUTH_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, logger="serving"):
        assert args.handler(args) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "auth-token" in r.getMessage()]
    assert bool(warnings) == warned, warnings
