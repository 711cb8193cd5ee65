"""What `import vispipe` does and does not do, each in a fresh interpreter.

- a saved model opens after `import vispipe` alone (its Keras objects are
  registered when Keras loads), in either import order;
- `import vispipe.ui` loads neither TensorFlow nor Keras;
- CLI verbs start without TensorFlow's start-up noise, unless the user set
  TF_CPP_MIN_LOG_LEVEL.

Each test starts Python (and most start TensorFlow): ~10-30 s apiece.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from vispipe.tensorflow_startup import STARTUP_NOISE


def _python(code: str, *, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    """A vispipe classifier saved with its optimizer (a PolicySchedule) as model.keras."""
    import keras

    from vispipe.configs import LRPolicyConfig, ModelConfig
    from vispipe.data.format import DatasetInfo
    from vispipe.models import build_classifier
    from vispipe.train.schedules import make_schedule

    info = DatasetInfo(path="", classes=["a", "b", "c"], height=16, width=16, channels=1,
                       encoding="png", split_counts={}, class_counts={}, shards={},
                       mean_pixel=[100.0], std_pixel=[50.0])
    model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
    model.compile(keras.optimizers.SGD(make_schedule(LRPolicyConfig(policy="step"), 10)),
                  "sparse_categorical_crossentropy")
    model.fit(np.zeros((4, 16, 16, 1), "float32"), np.zeros(4, "int64"), verbose=0)
    path = str(tmp_path_factory.mktemp("saved") / "model.keras")
    model.save(path)
    return path


@pytest.mark.parametrize("imports, opens", [
    ("import vispipe; import keras", True),
    ("import keras; import vispipe", True),
    # TensorFlow looks "keras" up before importing it (the CLI's order).
    ("import vispipe; import tensorflow; import keras", True),
    # A probe that loads nothing first (TensorFlow makes one on import; `vispipe export`
    # reaches Keras that way): the registration still waits for Keras to load.
    ("import vispipe, importlib.util; importlib.util.find_spec('keras'); import keras", True),
    ("import keras", False),  # Without vispipe: the control, which must fail.
])
def test_a_saved_model_opens_after_import_vispipe(saved_model, tmp_path, imports, opens):
    code = (f"{imports}\n"
            f"model = keras.models.load_model({saved_model!r})\n"
            "print(type(model.get_layer('preprocess')).__name__,\n"
            "      type(model.optimizer._learning_rate).__name__,\n"
            "      model.predict_on_batch(__import__('numpy').zeros((1, 16, 16, 1))).shape)\n")
    # From an empty folder, so that the installed vispipe is the one imported.
    result = _python(code, cwd=str(tmp_path))
    if opens:
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == ["Preprocess", "PolicySchedule", "(1,", "3)"]
    else:
        assert result.returncode != 0 and "Could not locate class 'Preprocess'" in result.stderr


def test_import_vispipe_ui_loads_neither_tensorflow_nor_keras():
    result = _python("import sys, vispipe.ui\n"
                     "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _lr_plot(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """`vispipe lr-plot`, which loads TensorFlow through Keras."""
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "vispipe", "lr-plot", "--epochs", "2",
         "--out", str(tmp_path / "lr.png")],
        capture_output=True, text=True, env={**environ, **env}, timeout=300)


def test_cli_verbs_start_without_tensorflow_noise(tmp_path):
    quiet = _lr_plot(tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert not STARTUP_NOISE.search(quiet.stderr), quiet.stderr
    assert quiet.stderr.strip() == ""
    # A level the user chose is left alone (and this stack does print the noise).
    loud = _lr_plot(tmp_path, TF_CPP_MIN_LOG_LEVEL="0")
    assert loud.returncode == 0 and STARTUP_NOISE.search(loud.stderr), loud.stderr
