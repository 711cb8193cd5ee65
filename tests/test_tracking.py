"""MLflow tracking: a run's parameters, per-epoch metrics and files in a local
store, and a resumed run logging into the same MLflow run.

Cost: about 10 s (MLflow creates its SQLite store; a 2-epoch fit of a tiny model).
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

pytest.importorskip("mlflow")

from vispipe.train.tracking import TRACKING_FILE, MlflowTracker, flatten_params  # noqa: E402


def test_params_are_flattened_with_dotted_keys():
    assert flatten_params({"train": {"epochs": 3, "lr": {"policy": "step"}, "steps": [1, 2]},
                           "name": "x"}) == {"train.epochs": "3", "train.lr.policy": "step",
                                             "train.steps": "[1, 2]", "name": "x"}


def test_a_run_logs_to_the_local_store_and_resumes_into_the_same_mlflow_run(tmp_path,
                                                                            vispipe_home):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "curves.png").write_bytes(b"\x89PNG fake")
    params = {"model": {"name": "tiny"}, "train": {"epochs": 2, "lr": {"base_lr": 0.01}}}
    tracker = MlflowTracker.open(str(run_dir), params=params, run_name="tiny")
    assert tracker.tracking_uri.startswith("sqlite:///" + str(vispipe_home))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(32, 3)), np.arange(32) % 2
    model.fit(x, y, epochs=2, validation_data=(x, y), callbacks=[tracker.callback()],
              verbose=0)

    # Resuming reopens the same MLflow run and continues its history.
    again = MlflowTracker.open(str(run_dir), params=params, run_name="tiny")
    assert again.run_id == tracker.run_id
    model.fit(x, y, epochs=3, initial_epoch=2, callbacks=[again.callback()], verbose=0)
    again.finish("completed", artifacts=[str(run_dir / "curves.png"), str(run_dir / "gone")])

    client = again.client
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["train.lr.base_lr"] == "0.01"
    assert run.data.tags["vispipe.run_dir"] == str(run_dir)
    history = client.get_metric_history(tracker.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "val_accuracy")] == [1, 2]
    assert client.get_metric_history(tracker.run_id, "lr")[0].value == pytest.approx(0.01)
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["curves.png"]
    with open(run_dir / TRACKING_FILE) as f:
        assert json.load(f)["run_id"] == tracker.run_id
    assert os.path.isdir(os.path.join(vispipe_home, "mlflow", "artifacts"))
