"""`vispipe tune`: the search beats a deliberately bad learning rate on real
MNIST, every trial is a registered run, and a killed search resumes.

Cost: about 40 s on 2 idle cores: a 600-image MNIST dataset, 3 in-process
trials of 2 LeNet epochs, then a search in a child process (each trial in a
grandchild) killed during its first trial and finished in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("optuna")

from insight_data import extracted  # noqa: E402
from vispipe.configs import (  # noqa: E402
    DatasetConfig,
    ImageOptions,
    LRPolicyConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
)
from vispipe.registry import Registry  # noqa: E402
from vispipe.train.run_folder import RunFolder  # noqa: E402
from vispipe.tune import TuneSettings, parse_space, tune  # noqa: E402

pytestmark = pytest.mark.slow  # Scheduled first (see conftest).

BAD_LR = 1e-5
SPACE = {"train.lr.base_lr": {"low": 1e-3, "high": 0.05, "log": True}}


@pytest.fixture(scope="module")
def mnist_dataset(tmp_path_factory) -> str:
    from vispipe.data.create import create_dataset

    root = extracted("mnist-png.tar.gz", 100)
    out = tmp_path_factory.mktemp("tune-data") / "mnist"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISPIPE_HOME", str(tmp_path_factory.mktemp("home")))
        info = create_dataset(DatasetConfig(
            train_dir=os.path.join(root, "train"), output=str(out), val_percent=20,
            max_per_class=60, image=ImageOptions(height=28, width=28, channels=1), workers=1,
        ), progress=False)
    return info.path


def _pipeline(epochs: int = 2) -> PipelineConfig:
    """LeNet with plain SGD at a learning rate far too small to learn in 2 epochs."""
    return PipelineConfig(name="bad-lr", model=ModelConfig(name="lenet"), train=TrainConfig(
        epochs=epochs, batch_size=32, optimizer="sgd", lr=LRPolicyConfig(base_lr=BAD_LR),
        mixed_precision="off", log_every_steps=100, seed=1))


def test_search_space_checks_keys_and_types():
    space = parse_space({"train.batch_size": {"low": 16, "high": 64},
                         "train.optimizer": ["sgd", "adam"], "augment_strength": {"low": 0,
                                                                                  "high": 1}})
    assert [(p.key, p.kind) for p in space] == [("train.batch_size", "int"),
                                                ("train.optimizer", "categorical"),
                                                ("augment_strength", "float")]
    assert [p.key for p in parse_space({})] == [
        "train.lr.base_lr", "train.batch_size", "train.optimizer", "train.weight_decay",
        "augment_strength"]
    with pytest.raises(ValueError, match="unknown key 'train.lrate'"):
        parse_space({"train.lrate": {"low": 0.1, "high": 1}})
    with pytest.raises(ValueError, match="'train.lr' is a section"):
        parse_space({"train.lr": {"low": 0.1, "high": 1}})
    with pytest.raises(ValueError, match="a range needs a numeric setting.*use choices"):
        parse_space({"train.optimizer": {"low": 0, "high": 1}})
    with pytest.raises(ValueError, match="low > 0 with log"):
        parse_space({"train.weight_decay": {"low": 0, "high": 1, "log": True}})


def test_search_finds_a_better_learning_rate_than_a_bad_default(mnist_dataset, tmp_path):
    result = tune(_pipeline(), str(tmp_path / "search"), TuneSettings(
        trials=3, space=SPACE, isolation="inline", seed=3), dataset_dir=mnist_dataset,
        progress=False)

    assert result.baseline is not None and result.baseline.params == {
        "train.lr.base_lr": BAD_LR}
    assert [t.state for t in result.trials] == ["COMPLETE"] * 3
    assert result.best.params["train.lr.base_lr"] > 10 * BAD_LR
    # 2 epochs at 1e-5 stay near chance (10%); the search finds one that learns.
    assert result.baseline.value < 0.3
    assert result.best.value > result.baseline.value + 0.4
    for kind in ("csv", "plot", "json", "best_config"):
        assert os.path.isfile(result.files[kind]), kind
    assert "Best: trial" in result.summary_table()
    runs = {entry.path: entry for entry in Registry.open().list("run")}
    for trial in result.trials:
        assert runs[os.path.abspath(trial.run_dir)].status == "completed"
        assert RunFolder(trial.run_dir).read_run_info().status == "completed"


_DRIVER = textwrap.dedent("""
    import sys
    from vispipe.configs import *
    from vispipe.tune import TuneSettings, tune
    out, dataset = sys.argv[1], sys.argv[2]
    config = PipelineConfig(name="bad-lr", model=ModelConfig(name="lenet"), train=TrainConfig(
        epochs=4, batch_size=32, optimizer="sgd", lr=LRPolicyConfig(base_lr={bad}),
        mixed_precision="off", log_every_steps=100, seed=1))
    tune(config, out, TuneSettings(trials=2, space={space}, isolation="process",
                                   heartbeat_s=1, seed=3), dataset_dir=dataset, progress=False)
""").format(bad=BAD_LR, space=SPACE)


def test_a_killed_search_resumes_its_dead_trial(mnist_dataset, tmp_path):
    out = tmp_path / "search"
    first_run = out / "trials" / "trial-000"
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(out), mnist_dataset])
    deadline = time.monotonic() + 300
    while not (first_run / "checkpoints" / "latest.json").exists():
        assert driver.poll() is None and time.monotonic() < deadline, "no checkpoint came"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)  # No cleanup: the trial stays RUNNING in the study.
    driver.wait()
    killed = time.monotonic()
    # The trial's process gets SIGTERM from the kernel and stops like Ctrl-C; on a busy
    # machine that can take seconds (it finishes the step it is in).
    while RunFolder(str(first_run)).read_run_info().status == "running":
        assert time.monotonic() < killed + 120, "the trial kept running after its search died"
        time.sleep(0.2)
    time.sleep(max(0.0, killed + 3 - time.monotonic()))  # Past the heartbeat's grace (2 x 1 s).
    done_before = len(RunFolder(str(first_run)).read_metrics("epoch"))
    assert RunFolder(str(first_run)).read_run_info().status == "interrupted"

    pipeline = _pipeline(epochs=4)
    result = tune(pipeline, str(out), TuneSettings(trials=2, space=SPACE, isolation="inline",
                                                   heartbeat_s=1, seed=3),
                  dataset_dir=mnist_dataset, progress=False)

    dead, retry = result.trials[0], result.trials[1]
    assert dead.state == "FAIL" and dead.note == "process died; retried as trial 1"
    assert retry.state == "COMPLETE" and retry.baseline and retry.run_dir == str(first_run)
    epochs = [r["epoch"] for r in RunFolder(str(first_run)).read_metrics("epoch")]
    assert 1 <= done_before < 4 and epochs == [1, 2, 3, 4]  # Resumed, not restarted.
    assert sum(t.state == "COMPLETE" for t in result.trials) == 2
    assert not (out / "trials" / "trial-001").exists()
