"""`vispipe mislabels`: the training images of a run whose labels look wrong.

The run's own network, preprocessing, optimizer, LR policy and augmentation
are trained k times, each time on k-1 folds of the training split, and
predict the held-out fold (`vispipe.evaluate.label_issues`), so every image
is judged by a model that never saw its label. Confident learning then
flags the images the models are confidently of another class.

Files written to `RUN/mislabels/` (or `out_dir`):

- `label_issues.csv`: rank, file, given label, suggested label,
  probabilities, and an empty `new_label` column to fix labels from;
- `label_issues.json`: the counts, thresholds, confident joint and issues;
- `label_issues.png`: the most doubtful images with given -> suggested;
- `images/NNNN.png`: each flagged image (for the web UI);
- `probabilities.npy`: the out-of-fold probabilities, in the split's order.

Example:

```python
issues = run_label_issues("runs/mnist", folds=3, epochs=4)
print(issues.estimated_errors, issues.issues[0].filename)
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from vispipe.configs import SPLITS, choices

from vispipe.evaluate.label_issues import (
    LabelIssues,
    find_label_issues,
    out_of_fold_probabilities,
)

__all__ = ["MISLABELS_DIR", "GRID_IMAGES", "MislabelsSettings", "run_label_issues"]

MISLABELS_DIR = "mislabels"
GRID_IMAGES = 32
_MAX_IMAGES_SAVED = 500


@dataclass
class MislabelsSettings:
    """The `mislabels:` section of the config tree (`vispipe mislabels`).

    Attributes:
        folds: k of the k-fold split (k trainings of the run's network).
        epochs: Epochs per fold; 0 uses the run's.
        split: The split whose labels are judged.
    """

    folds: int = 3
    epochs: int = 0
    split: str = choices(SPLITS, "train")


def _split_arrays(info, split: str):
    """Images, labels and file names of a split, in the evaluation order."""
    import tensorflow as tf

    from vispipe.data.inputs import decoded_records

    records = decoded_records(info, split, with_filenames=True, cache="none")
    images, labels, names = [], [], []
    for batch in records.batch(1024).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        images.append(batch[0])
        labels.append(batch[1])
        names += [n.decode("utf-8", "replace") for n in batch[2]]
    names = [n or str(i) for i, n in enumerate(names)]
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), names


def _fold_trainer(info, model_cfg, train_cfg, images, labels, epochs: int):
    """`fit_predict` training the run's network as the run trained it."""
    import keras
    import tensorflow as tf

    from vispipe.data.inputs import make_dataset
    from vispipe.models import build_classifier
    from vispipe.train.optimizers import make_optimizer
    from vispipe.train.schedules import make_schedule

    batch = train_cfg.batch_size

    def fit_predict(train: np.ndarray, held: np.ndarray) -> np.ndarray:
        keras.utils.set_random_seed(train_cfg.seed)
        model = build_classifier(model_cfg, info, train_cfg.normalization)
        steps = -(-len(train) // batch)
        model.compile(optimizer=make_optimizer(train_cfg, make_schedule(train_cfg.lr,
                                                                        epochs * steps)),
                      loss=keras.losses.SparseCategoricalCrossentropy())
        records = tf.data.Dataset.from_tensor_slices((images[train], labels[train].astype(
            np.int32))).cache()
        for epoch in range(epochs):
            ds = make_dataset(info, "train", batch, training=True, augment=train_cfg.augment,
                              seed=train_cfg.seed + epoch, records=records)
            model.fit(ds, epochs=1, verbose=0, shuffle=False)  # The pipeline shuffles.
        probs = [model.predict_on_batch(images[held[i:i + 512]].astype(np.float32))
                 for i in range(0, len(held), 512)]
        return np.concatenate(probs)

    return fit_predict


def _write_outputs(issues: LabelIssues, probs: np.ndarray, images: np.ndarray,
                   out_dir: str) -> None:
    from PIL import Image

    from vispipe.evaluate.plots import save_image_grid

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    for rank, issue in enumerate(issues.issues[:_MAX_IMAGES_SAVED], 1):
        picture = images[issue.index]
        Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(
            os.path.join(out_dir, "images", f"{rank:04d}.png"))
    shown = issues.issues[:GRID_IMAGES]
    issues.files["grid"] = save_image_grid(
        [images[i.index] for i in shown],
        [f"{i.given} -> {i.suggested}\n{i.suggested_probability:.0%}" for i in shown],
        os.path.join(out_dir, "label_issues.png"),
        title=f"Likely mislabelled: {len(issues.issues)} of {issues.num_images} images")
    issues.write_csv(os.path.join(out_dir, "label_issues.csv"))
    np.save(os.path.join(out_dir, "probabilities.npy"), probs)
    issues.files["probabilities"] = os.path.join(out_dir, "probabilities.npy")
    path = os.path.join(out_dir, "label_issues.json")
    issues.files["json"] = path
    tmp = f"{path}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(issues.to_json(), f, indent=2)
    os.replace(tmp, path)


def run_label_issues(run_dir: str, *, folds: int = 3, epochs: int = 0, split: str = "train",
                     out_dir: str = "", progress: bool = True) -> LabelIssues:
    """Finds the likely mislabelled images of a run's dataset split.

    Args:
        run_dir: A run folder (its dataset, network and solver are used).
        folds: k of the k-fold split (k trainings).
        epochs: Epochs per fold; 0 uses the run's.
        split: The split to examine (its labels are judged).
        out_dir: Output folder (default `RUN/mislabels`).
        progress: A line per fold.

    Returns:
        The `LabelIssues` (with `files` set).

    Raises:
        ValueError: Invalid folds/epochs, or an empty split.
    """
    from vispipe.data.format import read_dataset_info
    from vispipe.train.run_folder import read_run_info

    if epochs < 0:
        raise ValueError(f"epochs: expected an integer >= 0 (0: the run's), got {epochs!r}.")
    run = read_run_info(run_dir)
    model_cfg, train_cfg = run.model, run.train
    info = read_dataset_info(run.dataset_dir)
    images, labels, names = _split_arrays(info, split)
    fit_predict = _fold_trainer(info, model_cfg, train_cfg, images, labels,
                                epochs or train_cfg.epochs)
    probs = out_of_fold_probabilities(fit_predict, labels, num_classes=info.num_classes,
                                      folds=folds, seed=train_cfg.seed, progress=progress)
    issues = find_label_issues(probs, labels, list(info.classes), names)
    _write_outputs(issues, probs, images, out_dir or os.path.join(run.path, MISLABELS_DIR))
    return issues
