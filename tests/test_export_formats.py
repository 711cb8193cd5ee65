"""Every export format on a tiny trained LeNet: exported, loaded by its runtime, verified."""

from __future__ import annotations

import json
import os
import platform

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


def make_tiny_run(root: str, *, status: str = "completed", epochs: int = 25) -> tuple[str, str]:
    """A real dataset (scikit-learn digits at 16x16) and a trained LeNet run folder.

    Returns:
        `(dataset_dir, run_dir)`.
    """
    import keras

    from vispipe.configs import DatasetConfig, ImageOptions, ModelConfig, TrainConfig
    from vispipe.data.create import create_dataset
    from vispipe.data.inputs import load_arrays
    from vispipe.models import build_classifier
    from vispipe.train.run_folder import RunFolder
    from vispipe.train.run_info import Normalization, RunInfo

    info = create_dataset(DatasetConfig(
        builtin="digits", output=os.path.join(root, "dataset"), val_percent=10,
        test_percent=25, max_per_class=16, workers=1,
        image=ImageOptions(height=16, width=16, channels=1)), progress=False)
    keras.utils.set_random_seed(1)
    model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
    images, labels = load_arrays(info, "train")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(images.astype("float32"), labels, epochs=epochs, batch_size=16, verbose=0)
    run_dir = os.path.join(root, "run")
    os.makedirs(run_dir)
    model.save(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "labels.txt"), "w") as f:
        f.write("".join(f"{c}\n" for c in info.classes))
    RunFolder(run_dir).write_info(RunInfo(
        name="tiny", status=status, dataset_dir=info.path, classes=info.classes,
        image=info.image, normalization=Normalization("standardize", info.mean_pixel,
                                                      info.std_pixel),
        model=ModelConfig(name="lenet"), train=TrainConfig(epochs=epochs)))
    return info.path, run_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of every format (shared: the converters are slow to load)."""
    from vispipe.export import ExportOptions, export_model

    root = str(tmp_path_factory.mktemp("export"))
    dataset_dir, run_dir = make_tiny_run(root)
    out = os.path.join(root, "out")
    report = export_model(run_dir, out, options=ExportOptions(
        calibration_size=32, sparsities=(0.8,), prune_epochs=3, progress=False,
        prune_max_drop=0.25,  # a 100-image toy model; the MNIST figures are in the report
        coreml_weights=("float16", "int8")))
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
                "tfjs_float32", "tfjs_float16", "tfjs_uint8"}
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
