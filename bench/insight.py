"""The figures of issue 17, measured on real data, as one JSON object per section.

Sections (all by default, or `--only NAME ...`):

- `gradcam`: LeNet trained on MNIST digits pasted at random places of 56x56
  canvases (blank or noise background); the share of held-out digits, pasted
  anew, whose Grad-CAM / Grad-CAM++ peak falls inside the digit (chance: 25%).
- `imbalance`: MNIST with digits 2 and 7 cut to 5% of the others; LeNet
  trained without weights, with `class_weight: auto` and with the balanced
  sampler; recall of the two minority digits and balanced accuracy on the
  balanced test split.
- `mislabels`: 2% of MNIST training labels flipped; 3-fold out-of-fold
  LeNet probabilities and confident learning; precision and recall at top-N.
- `tta`: a small CNN trained on CIFAR-10 with flips and pad-and-crop; test
  accuracy without and with test-time augmentation.
- `tune`: `vispipe tune` on an MNIST subset from a deliberately bad default
  (SGD at lr 1e-5), default five-knob space.

Usage:

    python bench/insight.py --only gradcam imbalance --work /tmp/insight-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from vispipe.configs import (  # noqa: E402
    AugmentConfig,
    DatasetConfig,
    ImageOptions,
    LRPolicyConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
)
from vispipe.data.create import create_dataset  # noqa: E402
from vispipe.models import build_model  # noqa: E402

DATASETS = os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(
    os.path.dirname(REPO), "shared", "datasets")


def _extract(archive: str, dest: str, per_class: int) -> str:
    """The first `per_class` files of each class folder of a shared tarball."""
    marker = os.path.join(dest, f".done-{per_class}")
    if not os.path.exists(marker):
        taken: dict[str, int] = {}
        with tarfile.open(os.path.join(DATASETS, archive)) as tar:
            members = []
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and len(parts) == 4:
                    key = "/".join(parts[:3])
                    if taken.get(key, 0) < per_class:
                        taken[key] = taken.get(key, 0) + 1
                        members.append(member)
            tar.extractall(dest, members=members)
        open(marker, "w").close()
    (folder,) = [f for f in os.listdir(dest) if not f.startswith(".")]
    return os.path.join(dest, folder)


def _arrays(root: str, split: str, per_class: int | None = None):
    classes = sorted(os.listdir(os.path.join(root, split)))
    images, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(root, split, name)))[:per_class]:
            array = np.asarray(Image.open(os.path.join(root, split, name, file)).convert("L"))
            images.append(array[..., None])
            labels.append(index)
    return np.stack(images), np.array(labels, np.int64), classes


def _wrapped_lenet(shape) -> keras.Model:
    inputs = keras.Input(shape)
    network = build_model("lenet", shape, 10)
    return keras.Model(inputs, network(keras.layers.Rescaling(1 / 255.0)(inputs)))


def bench_gradcam(work: str) -> dict:
    from vispipe.evaluate.gradcam import paste_into_canvas, pasted_localisation

    root = _extract("mnist-png.tar.gz", os.path.join(work, "mnist300"), 300)
    images, labels, _ = _arrays(root, "train")
    test_images, test_labels, _ = _arrays(root, "test", per_class=50)
    out = {"train_canvases": len(labels), "test_images": len(test_labels), "canvas": 56,
           "digit": 28, "network": "lenet (zoo, nested)", "epochs": 4}
    for background in ("blank", "noise"):
        keras.utils.set_random_seed(0)
        canvases, _ = paste_into_canvas(images, (56, 56), background=background, seed=1)
        model = _wrapped_lenet((56, 56, 1))
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        model.fit(canvases, labels, batch_size=64, epochs=4, verbose=0)
        for method in ("gradcam", "gradcam++"):
            result = pasted_localisation(model, test_images, test_labels, background=background,
                                         seed=7, method=method)
            out[f"{background}_{method}"] = {"rate": round(result.rate, 4),
                                             "chance": result.chance,
                                             "accuracy": round(result.accuracy, 4)}
    return out


def _minority_dataset(work: str, root: str, minority: tuple[str, ...], per_class: int,
                      share: float) -> str:
    source = os.path.join(work, "imbalanced-src")
    if not os.path.isdir(source):
        for name in sorted(os.listdir(os.path.join(root, "train"))):
            keep = round(per_class * share) if name in minority else per_class
            os.makedirs(os.path.join(source, name))
            for file in sorted(os.listdir(os.path.join(root, "train", name)))[:keep]:
                shutil.copy(os.path.join(root, "train", name, file),
                            os.path.join(source, name, file))
    out = os.path.join(work, "imbalanced-ds")
    if not os.path.isdir(out):
        create_dataset(DatasetConfig(train_dir=source, test_dir=os.path.join(root, "test"),
                                     output=out, val_percent=10,
                                     image=ImageOptions(height=28, width=28, channels=1)),
                       progress=False)
    return out


def _fit_lenet(info, epochs: int, mode: str, seed: int) -> keras.Model:
    """LeNet as a run trains it (vispipe's classifier, pipeline, SGD), weighting as `mode`."""
    from vispipe.data.balance import (
        balanced_records,
        class_counts_of,
        class_weights,
        with_sample_weights,
    )
    from vispipe.data.inputs import decoded_records, make_dataset
    from vispipe.models import build_classifier

    keras.utils.set_random_seed(seed)
    model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    counts = class_counts_of(info, "train")
    records = decoded_records(info, "train", training=True)
    for epoch in range(epochs):
        feed = records
        if mode == "sampler":
            feed = balanced_records(records, counts, seed=seed + epoch)
        ds = make_dataset(info, "train", 64, training=True, seed=seed + epoch, records=feed)
        if mode == "auto":
            ds = with_sample_weights(ds, class_weights("auto", counts))
        model.fit(ds, epochs=1, verbose=0)
    return model


def bench_imbalance(work: str) -> dict:
    from vispipe.data.balance import class_counts_of, imbalance_ratio
    from vispipe.data.format import read_dataset_info
    from vispipe.data.inputs import load_arrays

    root = _extract("mnist-png.tar.gz", os.path.join(work, "mnist300"), 300)
    minority = ("2", "7")
    info = read_dataset_info(_minority_dataset(work, root, minority, 300, 0.05))
    x, y = load_arrays(info, "test")
    ids = [info.classes.index(c) for c in minority]
    out = {"train_counts": class_counts_of(info, "train"),
           "imbalance_ratio": imbalance_ratio(class_counts_of(info, "train")),
           "test_images": int(len(y)), "epochs": 5}
    for mode in ("none", "auto", "sampler"):
        recalls = []
        for seed in (1, 2, 3):
            model = _fit_lenet(info, 5, mode, seed)
            predicted = model.predict(x, batch_size=512, verbose=0).argmax(axis=1)
            recall = [float(np.mean(predicted[y == c] == c)) for c in range(info.num_classes)]
            recalls.append(recall)
        mean = np.mean(recalls, axis=0)
        out[mode] = {"minority_recall": {c: round(float(mean[i]), 4)
                                         for c, i in zip(minority, ids)},
                     "balanced_accuracy": round(float(mean.mean()), 4),
                     "majority_recall": round(float(np.delete(mean, ids).mean()), 4)}
    return out


def bench_mislabels(work: str) -> dict:
    from vispipe.evaluate.label_issues import (
        find_label_issues,
        out_of_fold_probabilities,
        precision_recall_at,
    )

    root = _extract("mnist-png.tar.gz", os.path.join(work, "mnist600"), 600)
    images, labels, classes = _arrays(root, "train")
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(labels), size=len(labels) // 50, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10

    def fit_predict(train, held):
        keras.utils.set_random_seed(1)
        model = _wrapped_lenet((28, 28, 1))
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        model.fit(images[train], noisy[train], batch_size=64, epochs=4, verbose=0)
        return model.predict(images[held], batch_size=512, verbose=0)

    probs = out_of_fold_probabilities(fit_predict, noisy, num_classes=10, folds=3,
                                      progress=False)
    issues = find_label_issues(probs, noisy, classes)
    n = len(flipped)
    out = {"images": int(len(labels)), "flipped": int(n), "folds": 3, "epochs": 4,
           "out_of_fold_accuracy": round(float(np.mean(probs.argmax(1) == labels)), 4)}
    for k in (n, 2 * n):
        precision, recall = precision_recall_at(issues.ranking, flipped, k)
        out[f"top_{k}"] = {"precision": round(precision, 4), "recall": round(recall, 4)}
    flagged = np.array([i.index for i in issues.issues])
    precision, recall = precision_recall_at(flagged, flipped, len(flagged))
    out["flagged"] = {"count": int(len(flagged)), "precision": round(precision, 4),
                      "recall": round(recall, 4)}
    return out


def bench_tta(work: str) -> dict:
    from vispipe.data.format import read_dataset_info
    from vispipe.data.inputs import load_arrays, make_dataset
    from vispipe.evaluate.tta import predict_tta, tta_views
    from vispipe.models import build_classifier

    root = _extract("cifar10-jpg.tar.gz", os.path.join(work, "cifar1000"), 1000)
    out_dir = os.path.join(work, "cifar-ds")
    if not os.path.isdir(out_dir):
        create_dataset(DatasetConfig(train_dir=os.path.join(root, "train"),
                                     test_dir=os.path.join(root, "test"), output=out_dir,
                                     val_percent=0,
                                     image=ImageOptions(height=32, width=32, channels=3)),
                       progress=False)
    info = read_dataset_info(out_dir)
    augment = AugmentConfig(flip_horizontal=True, crop_padding=4)
    keras.utils.set_random_seed(0)
    model = build_classifier(ModelConfig(name="lenet"), info, "standardize")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    epochs = 12
    for epoch in range(epochs):
        model.fit(make_dataset(info, "train", 64, training=True, augment=augment, seed=epoch),
                  epochs=1, verbose=0)
    x, y = load_arrays(info, "test")
    views = tta_views(augment, info.image_shape)
    plain = np.concatenate([model.predict_on_batch(x[i:i + 500].astype(np.float32))
                            for i in range(0, len(x), 500)])
    tta = np.concatenate([predict_tta(model.predict_on_batch, x[i:i + 500], views)
                          for i in range(0, len(x), 500)])
    flips_only = np.concatenate([predict_tta(model.predict_on_batch, x[i:i + 500], views[:2])
                                 for i in range(0, len(x), 500)])
    acc = lambda p: round(float(np.mean(p.argmax(1) == y)), 4)  # noqa: E731
    return {"train_images": info.split_counts["train"], "test_images": int(len(y)),
            "network": "lenet", "epochs": epochs, "views": [v.name for v in views],
            "accuracy": acc(plain), "accuracy_tta": acc(tta),
            "accuracy_tta_flip_only": acc(flips_only),
            "change_points": round(100 * (acc(tta) - acc(plain)), 2)}


def bench_tune(work: str) -> dict:
    from vispipe.tune import TuneSettings, tune

    root = _extract("mnist-png.tar.gz", os.path.join(work, "mnist300"), 300)
    dataset = os.path.join(work, "tune-ds")
    if not os.path.isdir(dataset):
        create_dataset(DatasetConfig(train_dir=os.path.join(root, "train"), output=dataset,
                                     val_percent=20, max_per_class=100,
                                     image=ImageOptions(height=28, width=28, channels=1)),
                       progress=False)
    config = PipelineConfig(name="bad-default", model=ModelConfig(name="lenet"),
                            train=TrainConfig(epochs=3, batch_size=64, optimizer="sgd",
                                              lr=LRPolicyConfig(base_lr=1e-5),
                                              mixed_precision="off", log_every_steps=1000))
    out = os.path.join(work, f"tune-{int(time.time())}")
    result = tune(config, out, TuneSettings(trials=10, isolation="inline", seed=5),
                  dataset_dir=dataset, progress=False)
    print(result.summary_table(), file=sys.stderr)
    return {"trials": len(result.trials), "states": [t.state for t in result.trials],
            "baseline_val_accuracy": result.baseline.value if result.baseline else None,
            "best_val_accuracy": result.best.value if result.best else None,
            "best_params": result.best.params if result.best else None,
            "pruned": sum(t.state == "PRUNED" for t in result.trials), "out": out}


SECTIONS = {"gradcam": bench_gradcam, "imbalance": bench_imbalance,
            "mislabels": bench_mislabels, "tta": bench_tta, "tune": bench_tune}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "insight-bench"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    os.environ.setdefault("VISPIPE_HOME", os.path.join(args.work, "home"))
    for name in args.only:
        start = time.perf_counter()
        figures = SECTIONS[name](args.work)
        figures["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({name: figures}), flush=True)


if __name__ == "__main__":
    main()
