"""Every export format on a tiny trained LeNet: exported, loaded by its runtime, verified.

One export of every format is shared by the module (about 2 minutes on 2
cores, most of it loading and running the converters); the ONNX and OpenVINO
files are also loaded by a fresh interpreter without vispipe, as a user's
application would.
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).


def make_run(info, run_dir: str, model_cfg, *, epochs: int, status: str = "completed",
             name: str = "tiny") -> str:
    """Trains `model_cfg` on the dataset `info` and writes a run folder `export` reads.

    Returns:
        `run_dir`.
    """
    import keras

    from vispipe.configs import TrainConfig
    from vispipe.data.inputs import load_arrays
    from vispipe.models import build_classifier
    from vispipe.train.run_folder import RunFolder
    from vispipe.train.run_info import Normalization, RunInfo

    keras.utils.set_random_seed(1)
    model = build_classifier(model_cfg, info, "standardize")
    images, labels = load_arrays(info, "train")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(images.astype("float32"), labels, epochs=epochs, batch_size=16, verbose=0)
    os.makedirs(run_dir)
    model.save(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "labels.txt"), "w") as f:
        f.write("".join(f"{c}\n" for c in info.classes))
    RunFolder(run_dir).write_info(RunInfo(
        name=name, status=status, dataset_dir=info.path, classes=info.classes,
        image=info.image, normalization=Normalization("standardize", info.mean_pixel,
                                                      info.std_pixel),
        model=model_cfg, train=TrainConfig(epochs=epochs)))
    return run_dir


def make_tiny_run(root: str, *, status: str = "completed", epochs: int = 25) -> tuple[str, str]:
    """A real dataset (scikit-learn digits at 16x16) and a trained LeNet run folder.

    Returns:
        `(dataset_dir, run_dir)`.
    """
    from vispipe.configs import DatasetConfig, ImageOptions, ModelConfig
    from vispipe.data.create import create_dataset

    info = create_dataset(DatasetConfig(
        builtin="digits", output=os.path.join(root, "dataset"), val_percent=10,
        test_percent=25, max_per_class=16, workers=1,
        image=ImageOptions(height=16, width=16, channels=1)), progress=False)
    run_dir = make_run(info, os.path.join(root, "run"), ModelConfig(name="lenet"),
                       epochs=epochs, status=status)
    return info.path, run_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of every format (shared: the converters are slow to load)."""
    from vispipe.export import ExportOptions, export_model

    root = str(tmp_path_factory.mktemp("export"))
    dataset_dir, run_dir = make_tiny_run(root)
    out = os.path.join(root, "out")
    report = export_model(run_dir, out, options=ExportOptions(
        calibration_size=32, sparsities=(0.8,), prune_epochs=3, prune_min_steps=0,
        progress=False,
        prune_max_drop=0.25,  # a 100-image toy model; the MNIST figures are in the report
        coreml_weights=("float16", "int8"), tfjs_verify_limit=40))
    return {"dataset": dataset_dir, "run": run_dir, "out": out, "report": report,
            "rows": {r["format"]: r for r in report["formats"]}}


def _test_images(dataset_dir: str):
    from vispipe.data.inputs import load_arrays

    return load_arrays(dataset_dir, "test")


def test_every_format_is_written_and_reported(exported):
    rows = exported["rows"]
    expected = {"keras", "savedmodel", "tflite_float32", "tflite_float16",
                "tflite_dynamic_int8", "tflite_int8", "tflite_pruned80_float32",
                "tflite_pruned80_int8", "coreml_float16", "coreml_int8",
                "tfjs_float32", "tfjs_float16", "tfjs_uint8", "onnx_float32", "onnx_float16",
                "onnx_int8", "openvino_float32", "openvino_float16", "openvino_int8"}
    assert set(rows) == expected
    failed = {k: r["reason"] for k, r in rows.items() if r["status"] != "passed"}
    assert failed == {}
    out = exported["out"]
    with open(os.path.join(out, "export_report.json")) as f:
        saved = json.load(f)
    for row in saved["formats"]:
        for key in ("format", "status", "size_bytes", "gzip_bytes", "top1_accuracy",
                    "agreement", "max_prob_diff", "latency_ms"):
            assert key in row
    table = open(os.path.join(out, "export_report.md")).read()
    assert table.startswith("| format | status |") and "tflite_int8" in table
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".partial-" in p]


def test_contract_travels_with_the_export(exported):
    out = exported["out"]
    labels = open(os.path.join(out, "labels.txt")).read().split()
    assert labels == [str(d) for d in range(10)]
    with open(os.path.join(out, "export.json")) as f:
        contract = json.load(f)
    assert contract["labels"] == labels
    assert contract["input"]["shape"] == [None, 16, 16, 1]
    assert contract["preprocess"]["mode"] == "standardize"
    assert contract["source_run"]["path"] == exported["run"]


def test_savedmodel_serving_layout_signatures_and_warmup(exported):
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    from vispipe.export.savedmodel import classify_examples

    version_dir = os.path.join(exported["out"], "savedmodel", "tiny", "1")
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = proto.meta_graphs[0].signature_def
    assert signatures["serving_default"].method_name == "tensorflow/serving/predict"
    assert signatures["classify"].method_name == "tensorflow/serving/classify"
    assert set(signatures["classify"].outputs) == {"classes", "scores"}
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
            tf.data.TFRecordDataset(os.path.join(version_dir, "assets.extra",
                                                 "tf_serving_warmup_requests"))]
    assert {log.WhichOneof("log_type") for log in logs} == {"predict_log", "classify_log"}
    config = open(os.path.join(exported["out"], "savedmodel", "models.config")).read()
    assert 'name: "tiny"' in config
    assert f'base_path: "{os.path.join(exported["out"], "savedmodel", "tiny")}"' in config

    images, _ = _test_images(exported["dataset"])
    loaded = tf.saved_model.load(version_dir)
    big = tf.image.resize(images[:3].astype("float32"), (40, 40))  # any size is accepted
    out = loaded.signatures["serving_default"](images=tf.cast(tf.round(big), tf.uint8))
    assert out["probabilities"].shape == (3, 10) and out["classes"].shape == (3, 5)
    encoded = [tf.io.encode_png(image).numpy() for image in images[:3]]
    classes, scores = classify_examples(version_dir, encoded)
    direct = loaded.signatures["serving_default"](images=tf.constant(images[:3]))
    np.testing.assert_array_equal(classes, direct["classes"].numpy())
    np.testing.assert_allclose(scores, direct["scores"].numpy(), atol=1e-6)


def test_tflite_int8_is_uint8_in_and_out_with_packed_labels(exported):
    from ai_edge_litert.interpreter import Interpreter

    from vispipe.export.tflite import attached_files

    rows = exported["rows"]
    path = os.path.join(exported["out"], rows["tflite_int8"]["path"])
    interpreter = Interpreter(model_path=path)
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["quantization"] == (1.0, 0)
    assert detail["shape_signature"][0] == -1  # any batch size
    assert attached_files(path)["labels.txt"].decode().split() == [str(d) for d in range(10)]
    assert rows["tflite_int8"]["size_bytes"] * 2.5 < rows["tflite_float32"]["size_bytes"]
    assert rows["tflite_float16"]["size_bytes"] < rows["tflite_float32"]["size_bytes"]


def _zero_point_vectors(flatbuffer: bytes) -> tuple[int, int, int]:
    """Tensors with all-zero zero points, the vectors they point at, their lengths."""
    from ai_edge_litert.schema_py_generated import Model

    model = Model.GetRootAs(flatbuffer, 0)
    positions, lengths = [], set()
    for index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(index)
        for tensor in map(subgraph.Tensors, range(subgraph.TensorsLength())):
            params = tensor.Quantization()
            if params is not None and params.ZeroPointLength() and \
                    not params.ZeroPointAsNumpy().any():
                positions.append(params._tab.Vector(params._tab.Offset(10)))  # zero_point
                lengths.add(params.ZeroPointLength())
    return len(positions), len(set(positions)), len(lengths)


def test_tflite_int8_stores_its_zero_zero_points_once(exported, tmp_path):
    """LiteRT (its loader verifies the flatbuffer) runs the shared file as the unshared one."""
    import flatbuffers
    from ai_edge_litert.tools.flatbuffer_utils import read_model_from_bytearray

    from vispipe.export.tflite import tflite_runner
    from vispipe.export.tflite_zero_points import share_zero_points

    path = os.path.join(exported["out"], exported["rows"]["tflite_int8"]["path"])
    with open(path, "rb") as f:
        shared = f.read()
    builder = flatbuffers.Builder(0)
    builder.Finish(read_model_from_bytearray(bytearray(shared)).Pack(builder), b"TFL3")
    unshared = bytes(builder.Output())
    (tmp_path / "unshared.tflite").write_bytes(unshared)
    tensors, vectors, lengths = _zero_point_vectors(shared)
    assert vectors == lengths < tensors
    assert _zero_point_vectors(unshared) == (tensors, tensors, lengths)
    assert len(share_zero_points(unshared)) < len(unshared) - 8 * (tensors - vectors)
    images, _ = _test_images(exported["dataset"])
    expected = tflite_runner(str(tmp_path / "unshared.tflite")).outputs(images)
    got = tflite_runner(path).outputs(images)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_pruned_model_reports_real_sparsity_and_compresses(exported):
    rows = exported["rows"]
    details = rows["tflite_pruned80_float32"]["details"]
    assert details["total_sparsity"] == pytest.approx(0.8, abs=0.01)
    assert {layer["name"] for layer in details["layers"]} == {"conv1", "conv2", "fc1", "classifier"}
    assert rows["tflite_pruned80_float32"]["gzip_bytes"] < 0.5 * rows["tflite_float32"]["gzip_bytes"]
    assert os.path.isfile(os.path.join(exported["out"], "pruned", "pruned80.json"))


def test_coreml_spec_has_image_input_labels_and_metadata(exported):
    rows = exported["rows"]
    details = rows["coreml_float16"]["details"]
    spec = details["spec"]
    assert spec["input"] == {"name": "image", "height": 16, "width": 16, "color": "GRAYSCALE"}
    assert spec["labels"] == [str(d) for d in range(10)]
    assert "classify" in spec["op_types"] and spec["op_count"] > 5
    assert spec["metadata"]["author"] == "vispipe"
    assert spec["metadata"]["normalization_in"] == "image_input"
    preprocess = json.loads(spec["metadata"]["preprocess"])
    mean, std = preprocess["mean"][0], preprocess["std"][0]
    assert details["image_scale"] == pytest.approx(1.0 / std)
    assert details["image_bias"][0] == pytest.approx(-mean / std)
    # 8-bit weights are about half the float16 ones.
    assert rows["coreml_int8"]["details"]["spec"]["weights_bytes"] < 0.6 * spec["weights_bytes"]


@pytest.mark.skipif(platform.system() != "Darwin",
                    reason="coremltools has no prediction runtime outside macOS")
def test_coreml_predictions_match_keras_on_macos(exported):
    from vispipe.export.contract import load_run
    from vispipe.export.coreml import coreml_runner

    spec, model = load_run(exported["run"])
    images, _ = _test_images(exported["dataset"])
    probs = coreml_runner(os.path.join(exported["out"], "coreml", "tiny_float16.mlpackage"),
                          spec)(images)
    keras_probs = model.predict(images.astype("float32"), verbose=0)
    assert np.mean(probs.argmax(1) == keras_probs.argmax(1)) >= 0.98


def test_tfjs_model_json_carries_metadata_and_node_agrees(exported):
    rows = exported["rows"]
    with open(os.path.join(exported["out"], "tfjs", "uint8", "model.json")) as f:
        model_json = json.load(f)
    meta = model_json["userDefinedMetadata"]["vispipe"]
    assert meta["labels"] == [str(d) for d in range(10)] and meta["weights"] == "uint8"
    assert rows["tfjs_float32"]["agreement"] == 1.0
    assert rows["tfjs_float32"]["max_prob_diff"] < 1e-4
    assert rows["tfjs_float32"]["details"]["node_backend"] == "cpu"
    # Pure JavaScript is slow: verified on an evenly spaced subset when asked.
    assert rows["tfjs_float32"]["details"]["verify_images"] == 40
    assert rows["tfjs_float32"]["reason"] == "verified on 40 of the 160 images"


def test_same_raw_image_gives_same_label_in_every_runtime(exported):
    """The preprocessing contract: raw uint8 pixels in, the same top label out."""
    from vispipe.export.savedmodel import savedmodel_runner
    from vispipe.export.tfjs import tfjs_runner
    from vispipe.export.tflite import tflite_runner

    out = exported["out"]
    images, _ = _test_images(exported["dataset"])
    images = images[:8]
    from vispipe.export.contract import load_run

    _, model = load_run(exported["run"])
    expected = model.predict(images.astype("float32"), verbose=0).argmax(1)
    runners = {
        "savedmodel": savedmodel_runner(os.path.join(out, "savedmodel", "tiny", "1")),
        "tflite_float32": tflite_runner(os.path.join(out, "tflite", "tiny_float32.tflite")),
        "tflite_int8": tflite_runner(os.path.join(out, "tflite", "tiny_int8.tflite")),
        "tfjs_float32": tfjs_runner(os.path.join(out, "tfjs", "float32")),
    }
    labels = {name: run(images).argmax(1) for name, run in runners.items()}
    labels["savedmodel_png_bytes"] = tf.saved_model.load(
        os.path.join(out, "savedmodel", "tiny", "1")).signatures["serving_bytes"](
        image_bytes=tf.constant([tf.io.encode_png(i).numpy() for i in images]))[
        "label_ids"].numpy()[:, 0]
    for name, got in labels.items():
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_onnx_keeps_the_contract_and_records_its_choices(exported):
    import onnx
    import onnxruntime as ort

    from vispipe.export.onnx import onnx_metadata

    rows, out = exported["rows"], exported["out"]
    assert rows["onnx_float32"]["agreement"] == 1.0
    assert rows["onnx_float32"]["max_prob_diff"] < 1e-5
    for variant in ("float32", "float16", "int8"):
        row = rows[f"onnx_{variant}"]
        assert row["path"] == f"onnx/tiny_{variant}.onnx"
        assert row["details"]["opset"] == 17
        session = ort.InferenceSession(os.path.join(out, row["path"]))
        (images_input,) = session.get_inputs()
        assert (images_input.name, images_input.type) == ("images", "tensor(uint8)")
        assert images_input.shape == ["batch", "height", "width", 1]
        assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
            ("probabilities", "tensor(float)", ["batch", 10]),
            ("label_ids", "tensor(int32)", ["batch", 5]),
            ("scores", "tensor(float)", ["batch", 5])]
        meta = onnx_metadata(os.path.join(out, row["path"]))
        assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
        assert json.loads(meta["export.json"])["format"]["onnx"]["opset"] == 17
    beside = json.load(open(os.path.join(out, "onnx", "export.json")))
    assert beside["format"]["onnx"]["dynamic_axes"]["images"] == ["batch", "height", "width"]
    assert open(os.path.join(out, "onnx", "labels.txt")).read().split() == beside["labels"]
    int8 = onnx.load(os.path.join(out, rows["onnx_int8"]["path"]))
    ops = {node.op_type for node in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Compact: short names, no shape annotations, no all-zero zero points (weights, biases).
    assert [node.name for node in int8.graph.node] == [f"n{i}" for i in range(len(int8.graph.node))]
    assert not int8.graph.value_info
    assert sum(len(node.input) == 2 for node in int8.graph.node
               if node.op_type == "DequantizeLinear") >= 4
    assert rows["onnx_int8"]["size_bytes"] * 2.5 < rows["onnx_float32"]["size_bytes"]
    assert rows["onnx_float16"]["size_bytes"] * 1.6 < rows["onnx_float32"]["size_bytes"]


def test_openvino_keeps_the_contract_and_carries_the_labels(exported):
    import openvino as ov

    rows, out = exported["rows"], exported["out"]
    assert rows["openvino_float32"]["agreement"] == 1.0
    assert rows["openvino_float32"]["max_prob_diff"] < 1e-5
    for variant in ("float32", "float16", "int8"):
        row = rows[f"openvino_{variant}"]
        assert row["path"] == f"openvino/{variant}"
        model = ov.Core().read_model(os.path.join(out, row["path"], "tiny.xml"))
        assert model.input(0).get_any_name() == "images"
        assert str(model.input(0).get_partial_shape()) == "[?,?,?,1]"
        assert [o.get_any_name() for o in model.outputs] == ["probabilities", "label_ids",
                                                             "scores"]
        labels = model.get_rt_info(["vispipe", "labels"]).astype(str)
        assert json.loads(labels) == [str(d) for d in range(10)]
        assert model.output(0).get_element_type() == ov.Type.f32
        constants = [op.get_data() for op in model.get_ops() if op.get_type_name() == "Constant"]
        unique = {(c.dtype.str, c.shape, c.tobytes()) for c in constants}
        assert len(unique) == len(constants), "identical constants are shared"
        with open(os.path.join(out, row["path"], "tiny.xml"), encoding="utf-8") as f:
            assert "\n" not in f.read().strip(), "the .xml has no indentation"
    int8 = ov.Core().read_model(os.path.join(out, rows["openvino_int8"]["path"], "tiny.xml"))
    assert "FakeQuantize" in {op.get_type_name() for op in int8.get_ops()}
    # The int8 weights stay int8; NNCF's scales, ranges and biases are float16.
    assert {op.get_data().dtype.name for op in int8.get_ops()
            if op.get_type_name() == "Constant" and op.get_data().dtype.kind == "f"} == {"float16"}
    assert rows["openvino_int8"]["size_bytes"] * 2.5 < rows["openvino_float32"]["size_bytes"]
    assert rows["openvino_float16"]["size_bytes"] * 1.6 < rows["openvino_float32"]["size_bytes"]


_WITHOUT_VISPIPE = """
import importlib.util, json, sys
sys.path[:] = json.loads(sys.argv[1])
assert importlib.util.find_spec("vispipe") is None, "vispipe is importable"
import numpy as np

artifacts, images_path, out_path = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
images = np.load(images_path)
results = {}
for name, path in artifacts.items():
    if path.endswith(".onnx"):
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        labels = json.loads(session.get_modelmeta().custom_metadata_map["labels"])
        run = lambda x: session.run(["probabilities", "label_ids"], {"images": x})
    else:
        import openvino as ov
        model = ov.Core().read_model(path)
        labels = json.loads(model.get_rt_info(["vispipe", "labels"]).astype(str))
        compiled = ov.Core().compile_model(model, "CPU")
        run = lambda x: [compiled(x)[o] for o in ("probabilities", "label_ids")]
    probabilities, label_ids = run(images)
    one = run(images[:1])[0]  # batch of one
    big = np.repeat(np.repeat(images[:2], 2, axis=1), 2, axis=2)  # twice the size: resized inside
    results[name] = {"probabilities": probabilities.tolist(), "one": one.tolist(),
                     "big_labels": [labels[i] for i in run(big)[1][:, 0]],
                     "labels": [labels[i] for i in label_ids[:, 0]]}
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "vispipe")]
json.dump(results, open(out_path, "w"))
"""


def test_artifacts_run_in_their_runtimes_without_vispipe(exported, tmp_path):
    """An application with only onnxruntime / openvino and numpy loads every artifact."""
    import subprocess
    import sys

    from vispipe.export.contract import load_run

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # site-packages only (a virtual environment may live inside the checkout):
    # not the checkout's source folder, nor the tests folder.
    sources = {os.path.realpath(repo), os.path.realpath(os.path.join(repo, "tests"))}
    path = [p for p in sys.path if p and os.path.isdir(p) and os.path.realpath(p) not in sources]
    rows, out = exported["rows"], exported["out"]
    artifacts = {f: os.path.join(out, rows[f]["path"], "tiny.xml") if f.startswith("openvino")
                 else os.path.join(out, rows[f]["path"])
                 for f in rows if f.startswith(("onnx_", "openvino_"))}
    images, _ = _test_images(exported["dataset"])
    np.save(tmp_path / "images.npy", images)
    # -I: no PYTHONPATH, user site or script folder; -S: no .pth files (the
    # editable install's finder); sys.path is set to site-packages only.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _WITHOUT_VISPIPE, json.dumps(path),
         json.dumps(artifacts), str(tmp_path / "images.npy"), str(tmp_path / "out.json")],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(tmp_path / "out.json"))
    assert set(results) == set(artifacts)
    _, model = load_run(exported["run"])
    keras_probs = model.predict(images.astype("float32"), verbose=0)
    keras_labels = [str(i) for i in keras_probs.argmax(1)]
    for name, result in results.items():
        probabilities = np.array(result["probabilities"])
        np.testing.assert_allclose(result["one"], probabilities[:1], atol=1e-5, err_msg=name)
        agreement = np.mean(np.array(result["labels"]) == keras_labels)
        assert agreement >= (0.99 if "int8" not in name else 0.95), name
        if name.endswith("float32"):
            np.testing.assert_allclose(probabilities, keras_probs, atol=1e-5, err_msg=name)
            assert result["big_labels"] == result["labels"][:2], name


def test_a_failed_converter_does_not_stop_the_others(exported, tmp_path, monkeypatch):
    from vispipe.export import ExportOptions, export_model
    from vispipe.export import onnx as onnx_export

    def broken(*args, **kwargs):
        raise RuntimeError("tf2onnx could not convert op FancyOp")

    monkeypatch.setattr(onnx_export, "convert_onnx", broken)
    report = export_model(exported["run"], str(tmp_path / "out"), "onnx,openvino_float32",
                          options=ExportOptions(verify_limit=16, progress=False))
    rows = {r["format"]: r for r in report["formats"]}
    assert {f: rows[f]["status"] for f in rows} == {
        "keras": "passed", "onnx_float32": "failed_export", "onnx_float16": "failed_export",
        "onnx_int8": "failed_export", "openvino_float32": "passed"}
    assert "FancyOp" in rows["onnx_int8"]["reason"]


def test_benchmark_tabulates_the_export_and_picks_formats(exported, capsys):
    from vispipe.cli import main
    from vispipe.export.benchmark import summarize

    report = summarize(exported["out"], max_drop=5.0)
    rows = {r.format: r for r in report.rows}
    assert list(rows) == [r["format"] for r in exported["report"]["formats"]]
    assert rows["onnx_int8"].smaller_than_float32 > 2.5
    assert rows["tflite_pruned80_int8"].smaller_than_float32 > 2.5
    assert rows["keras"].top1_drop == 0.0 and rows["coreml_float16"].top1 is None
    assert set(report.picks) == {"accurate", "smallest", "fastest", "serving", "mobile",
                                 "apple", "browser", "intel", "onnx"}
    smallest = rows[report.picks["smallest"]]
    assert smallest.top1_drop <= 5.0
    assert all(r.size_mb >= smallest.size_mb for r in report.rows
               if r.status == "passed" and r.top1_drop is not None and r.top1_drop <= 5.0)
    assert report.picks["apple"] == "coreml_int8"  # not run on Linux: the smallest that passed
    assert any(r.pareto for r in report.rows) and "smallest" in smallest.picks
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        assert os.path.getsize(os.path.join(exported["out"], name)) > 0
    assert json.load(open(os.path.join(exported["out"], "benchmark.json")))["picks"] == report.picks

    assert main(["benchmark", "--export", exported["out"], "--max-drop", "5"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Benchmarks complete for tiny on {report.verify_images} test images")
    assert "openvino_int8" in text and "Picks:" in text


def test_benchmark_a_run_exports_then_tabulates(exported, tmp_path, capsys):
    """`vispipe benchmark --run` takes `vispipe export`'s settings grammar."""
    from vispipe.cli import main

    out = tmp_path / "bench"
    assert main(["benchmark", "--run", exported["run"], "--out", str(out),
                 "--formats", "onnx_float32,openvino_int8", "--set", "export.verify_limit=16",
                 "--no-plot", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["format"] for r in report["rows"]] == ["keras", "onnx_float32", "openvino_int8"]
    assert report["verify_images"] == 16 and report["seconds"] > 0 and report["plot_path"] == ""
    assert os.path.isfile(out / "benchmark.md")
    assert not os.path.exists(out / "benchmark.png")
    assert main(["benchmark", "--run", exported["run"], "--export", exported["out"]]) == 2
