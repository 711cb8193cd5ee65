"""Transfer learning end to end on real data: pretrain on CIFAR-10, fine-tune on other classes.

The source run trains a network from scratch on five CIFAR-10 classes
(airplane, automobile, bird, cat, deer). The target set is the other five
(dog, frog, horse, ship, truck) with a few images per class, as a user's
small project would have. On the target, with the same network, data,
solver and epochs, it trains:

- `scratch`: from random weights;
- `fine_tune`: vispipe's recipe from the source run (`model.weights: RUN`):
  1 head-only epoch on cached backbone features, then all layers at 0.1x;
- `fine_tune_lr1`: the same, unfrozen at the full rate (factor 1.0);
- `head_only`: every epoch head-only on cached features (backbone frozen).

Prints one JSON object: the source run (images, epochs, accuracy, time) and,
per arm, the final and best validation accuracy and the wall time.
`--source-run` reuses an earlier source run instead of pretraining (its own
figures are then read from its run.json; `vispipe upgrade-run` a run made
before run format 2).

Usage:

    python bench/transfer.py                                # about 30 min on 2 busy cores
    python bench/transfer.py --source-run runs/cifar-src    # fine-tune arms only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cifar_subset import CIFAR_CLASSES, cifar_subset  # noqa: E402  (bench/, next to this file)

SOURCE_CLASSES = CIFAR_CLASSES[:5]
TARGET_CLASSES = CIFAR_CLASSES[5:]


def _solver(epochs: int):
    from vispipe.configs import LRPolicyConfig, TrainConfig

    return TrainConfig(epochs=epochs, batch_size=32, optimizer="adam",
                       lr=LRPolicyConfig(policy="onecycle", base_lr=2e-3),
                       mixed_precision="off", seed=1, log_every_steps=10_000)


def _arms(model: str, source_run: str, epochs: int) -> dict:
    from vispipe.configs import ModelConfig

    return {
        "scratch": ModelConfig(name=model),
        "fine_tune": ModelConfig(name=model, weights=source_run),
        "fine_tune_lr1": ModelConfig(name=model, weights=source_run, finetune_lr_factor=1.0),
        "head_only": ModelConfig(name=model, weights=source_run, freeze_epochs=epochs),
    }


def _pretrain(root: str, args: argparse.Namespace) -> str:
    from vispipe.configs import ModelConfig
    from vispipe.train import train

    dataset = cifar_subset(os.path.join(root, "source"), SOURCE_CLASSES,
                           args.source_per_class, 100, args.size)
    run_dir = os.path.join(root, "source-run")
    train(dataset, run_dir, ModelConfig(name=args.model), _solver(args.source_epochs),
          progress=False)
    return run_dir


def _source_report(run_dir: str) -> dict:
    from vispipe.data.format import read_dataset_info
    from vispipe.train.run_folder import read_run_info

    info = read_run_info(run_dir)
    data = read_dataset_info(info.dataset_dir)
    return {"run": run_dir, "classes": info.classes, "network": info.model.name,
            "train_images": data.split_counts.get("train", 0),
            "epochs": info.epochs_completed,
            "val_accuracy": info.result.get("final_val_accuracy"),
            "train_time_s": round(info.result.get("train_time_s", 0.0), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--source-run", default="", help="reuse this source run")
    parser.add_argument("--source-per-class", type=int, default=1000)
    parser.add_argument("--source-epochs", type=int, default=6)
    parser.add_argument("--target-per-class", type=int, default=30)
    parser.add_argument("--target-val-per-class", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--arms", default="scratch,fine_tune,fine_tune_lr1,head_only")
    args = parser.parse_args()

    from vispipe.train import train

    root = tempfile.mkdtemp(prefix="vispipe-bench-transfer-")
    os.environ.setdefault("VISPIPE_HOME", os.path.join(root, "home"))
    source_run = os.path.abspath(args.source_run) if args.source_run else _pretrain(root, args)
    source = _source_report(source_run)  # Before the arms: an outdated run.json fails now.
    target = cifar_subset(os.path.join(root, "target"), TARGET_CLASSES, args.target_per_class,
                          args.target_val_per_class, args.size)
    arms = _arms(args.model, source_run, args.epochs)
    results = {}
    for name in args.arms.split(","):
        start = time.perf_counter()
        result = train(target, os.path.join(root, name), arms[name], _solver(args.epochs),
                       progress=False)
        vals = [r.get("val_accuracy") for r in result.history]
        results[name] = {"s": round(time.perf_counter() - start, 1),
                         "final_val_accuracy": result.final_val_accuracy,
                         "best_val_accuracy": result.best_val_accuracy,
                         "val_accuracy_per_epoch": [round(v, 3) for v in vals if v is not None]}
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    print(json.dumps({
        "source": source,
        "target": {"classes": list(TARGET_CLASSES), "size": args.size,
                   "train_images": args.target_per_class * len(TARGET_CLASSES),
                   "val_images": args.target_val_per_class * len(TARGET_CLASSES),
                   "epochs": args.epochs, "solver": "adam, one-cycle, base_lr 2e-3, batch 32"},
        "arms": results,
    }, indent=1))


if __name__ == "__main__":
    main()
