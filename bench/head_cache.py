"""The frozen (head-only) phase with and without cached backbone features.

Trains the same head on the same images twice with `vispipe.train.train`,
`freeze_epochs = epochs` (the whole run is the frozen phase): once running
the frozen backbone every step (`feature_cache_copies=0`), once on features
computed once per image (`feature_cache_copies=1`, the default). Prints one
JSON object: each run's wall time and validation accuracy, and the speed-up.

The backbone is a zoo network in the layout of its published ImageNet
weights. Without `--weights-dir` holding the real file (no network here),
the file is written with random values in keras.applications' own layout:
the timing is the same, the accuracy is then of random features, so compare
accuracies with `--weights RUN_DIR` (a vispipe run) or the real file.

Usage:

    python bench/head_cache.py --model mobilenet_v2 --size 96 --per-class 100 --epochs 5
    python bench/head_cache.py --model resnet20 --size 32 --weights runs/cifar-resnet20
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CLASSES = ("dog", "frog", "horse", "ship", "truck")


def _cifar_subset(root: str, per_class: int, size: int) -> str:
    from vispipe.configs import DatasetConfig, ImageOptions
    from vispipe.data.create import create_dataset

    shared = os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(REPO, "..", "shared",
                                                                       "datasets")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(os.path.join(shared, "cifar10-jpg.tar.gz")) as tar:
        members = []
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[2] in CLASSES:
                key = (parts[1], parts[2])
                if taken.get(key, 0) < per_class:
                    taken[key] = taken.get(key, 0) + 1
                    members.append(member)
        tar.extractall(root, members=members)
    images = os.path.join(root, "cifar10-jpg")
    return create_dataset(DatasetConfig(
        output=os.path.join(root, "dataset"), train_dir=os.path.join(images, "train"),
        val_dir=os.path.join(images, "test"), workers=2,
        image=ImageOptions(height=size, width=size, channels=3)), progress=False).path


def _random_weights_file(model: str, folder: str, size: int) -> None:
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from vispipe.models.imagenet_files import published_weights

    cls = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2",
           "efficientnet_b0": "EfficientNetB0"}[model]
    network = getattr(keras.applications, cls)(include_top=False, weights=None,
                                                input_shape=(size, size, 3))
    path = os.path.join(folder, published_weights(model, 1.0, (size, size)).file_name)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, network)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default="imagenet", help="'imagenet' or a run folder")
    parser.add_argument("--weights-dir", default="")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from vispipe.configs import LRPolicyConfig, ModelConfig, TrainConfig
    from vispipe.train import train

    root = tempfile.mkdtemp(prefix="vispipe-bench-head-")
    os.environ.setdefault("VISPIPE_HOME", os.path.join(root, "home"))
    dataset = _cifar_subset(root, args.per_class, args.size)
    weights_dir, random_weights = args.weights_dir, False
    if args.weights == "imagenet" and not weights_dir:
        weights_dir, random_weights = os.path.join(root, "weights"), True
        os.makedirs(weights_dir)
        _random_weights_file(args.model, weights_dir, args.size)
    solver = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam",
                         lr=LRPolicyConfig(policy="onecycle", base_lr=2e-3),
                         mixed_precision="off", seed=1, log_every_steps=10_000)
    results = {}
    for label, copies in (("uncached", 0), ("cached", 1)):
        model = ModelConfig(name=args.model, weights=args.weights, weights_dir=weights_dir,
                            freeze_epochs=args.epochs, feature_cache_copies=copies)
        start = time.perf_counter()
        result = train(dataset, os.path.join(root, label), model, solver, progress=False)
        results[label] = {"s": round(time.perf_counter() - start, 1),
                          "val_accuracy": result.final_val_accuracy}
    print(json.dumps({
        "model": args.model, "weights": args.weights,
        "random_weights_in_published_layout": random_weights, "size": args.size,
        "train_images": args.per_class * len(CLASSES),
        "val_images": args.per_class * len(CLASSES), "head_epochs": args.epochs,
        "uncached_s": results["uncached"]["s"], "cached_s": results["cached"]["s"],
        "speedup": round(results["uncached"]["s"] / results["cached"]["s"], 2),
        "uncached_val_accuracy": results["uncached"]["val_accuracy"],
        "cached_val_accuracy": results["cached"]["val_accuracy"],
    }))


if __name__ == "__main__":
    main()
