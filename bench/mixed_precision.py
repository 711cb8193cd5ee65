"""Mixed precision against float32: the same vispipe classifier, one run.

Builds the classifier a vispipe run trains (`build_classifier`: the
`Preprocess` layer, a zoo network and float32 probabilities) for CIFAR-10,
and trains it from the same seed under each Keras dtype policy in turn
("float32" is the baseline; "mixed_float16" gets Keras's loss scaling).
The optimizer and LR schedule are vispipe's own (`make_optimizer`,
`make_schedule`: SGD with Nesterov momentum, one-cycle). Prints one JSON
object: per policy the training rate (images over the fastest timed epoch;
the first epoch, with compilation, is not timed), test accuracy, the dtype
of the network's output, and the speed-up of each mixed policy over float32.

It uses only Keras and the backend it is given, not tf.data, so it also runs
where TensorFlow is absent: the GPU machines lent to this project hold JAX
and PyTorch builds for their CUDA but no TensorFlow, and the model code under
test is written in backend-independent `keras.ops`.

Usage:

    KERAS_BACKEND=jax python bench/mixed_precision.py --model resnet20 --epochs 15
    python bench/mixed_precision.py --train-images 2000 --epochs 2   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vispipe.configs import LRPolicyConfig, ModelConfig, TrainConfig  # noqa: E402
from vispipe.data.format import DatasetInfo  # noqa: E402
from vispipe.models.classifier import build_classifier  # noqa: E402
from vispipe.train.optimizers import make_optimizer  # noqa: E402
from vispipe.train.schedules import make_schedule  # noqa: E402

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def _default_archive() -> str:
    shared = os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(
        REPO, "..", "shared", "datasets"
    )
    return os.path.join(shared, "cifar10-jpg.tar.gz")


def _read_split(root: str, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decodes `root/split/<class>/*.jpg`, taking every k-th file for `limit`."""
    split_dir = os.path.join(root, split)
    classes = sorted(os.listdir(split_dir))
    files = [
        (os.path.join(split_dir, name, file), label)
        for label, name in enumerate(classes)
        for file in sorted(os.listdir(os.path.join(split_dir, name)))
    ]
    if limit and limit < len(files):
        files = files[:: len(files) // limit][:limit]
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path, _ in files])
    labels = np.array([label for _, label in files], dtype="int32")
    return images, labels, classes


def _dataset_info(images: np.ndarray, classes: list[str]) -> DatasetInfo:
    pixels = images.reshape(-1, images.shape[-1]).astype("float64")
    return DatasetInfo(
        path="", classes=classes, height=images.shape[1], width=images.shape[2],
        channels=images.shape[3], encoding="jpg",
        split_counts={"train": len(images)}, class_counts={}, shards={},
        mean_pixel=pixels.mean(axis=0).tolist(), std_pixel=pixels.std(axis=0).tolist(),
    )


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)

    def on_train_begin(self, logs=None):
        self.seconds: list[float] = []


def _flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flips, done on the host so every policy sees the same."""
    flipped = images.copy()
    mask = rng.random(len(images)) < 0.5
    flipped[mask] = flipped[mask, :, ::-1]
    return flipped


def run_policy(policy: str, args, data) -> dict:
    x_train, y_train, x_test, y_test, info = data
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(args.seed)
    model = build_classifier(ModelConfig(name=args.model), info, "standardize")
    steps = args.epochs * (len(x_train) // args.batch)
    lr = LRPolicyConfig(policy="onecycle", base_lr=args.lr)
    train_cfg = TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.compile(
        optimizer=make_optimizer(train_cfg, make_schedule(lr, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    timer = _EpochTimer()
    rng = np.random.default_rng(args.seed)
    history = []
    for _ in range(args.epochs):
        x_epoch = _flip(x_train, rng).astype("float32")
        result = model.fit(
            x_epoch, y_train, batch_size=args.batch, epochs=1, shuffle=True,
            verbose=0, callbacks=[timer],
        )
        history.append(round(float(result.history["loss"][0]), 4))
    timed = timer.seconds[1:] or timer.seconds
    _, accuracy = model.evaluate(x_test.astype("float32"), y_test, batch_size=512, verbose=0)
    output = model(x_test[:2].astype("float32"))
    return {
        "images_per_s": round(len(x_train) // args.batch * args.batch / min(timed), 1),
        "test_accuracy": round(float(accuracy), 4),
        "train_loss_per_epoch": history,
        "output_dtype": str(keras.backend.standardize_dtype(output.dtype)),
        "compute_dtype": keras.mixed_precision.dtype_policy().compute_dtype,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=_default_archive(), help="cifar10-jpg.tar.gz")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--train-images", type=int, default=None, help="default: all 50,000")
    parser.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    policies = args.policies.split(",")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        parser.error(f"--policies: unknown {unknown}; expected some of {list(POLICIES)}")

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.archive) as tar:
            tar.extractall(tmp, filter="data")
        root = os.path.join(tmp, "cifar10-jpg")
        x_train, y_train, classes = _read_split(root, "train", args.train_images)
        x_test, y_test, _ = _read_split(root, "test", args.test_images)
    data = (x_train, y_train, x_test, y_test, _dataset_info(x_train, classes))

    results = {}
    for policy in policies:
        start = time.perf_counter()
        results[policy] = run_policy(policy, args, data)
        # Progress on stderr, so a run cut short still tells what it measured.
        print(f"{policy} ({time.perf_counter() - start:.0f} s): "
              f"{json.dumps(results[policy])}", file=sys.stderr, flush=True)
    report = {
        "backend": keras.backend.backend(),
        "devices": _devices(),
        "model": args.model,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "batch": args.batch,
        "epochs": args.epochs,
        "policies": results,
    }
    if "float32" in results:
        base = results["float32"]["images_per_s"]
        for policy in policies:
            if policy != "float32":
                report[f"speedup_{policy}"] = round(results[policy]["images_per_s"] / base, 2)
    print(json.dumps(report))


def _devices() -> list[str]:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else ["cpu"]
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]


if __name__ == "__main__":
    main()
