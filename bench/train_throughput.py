"""Training throughput of the vispipe input pipeline against the Keras tutorial's.

Two workloads (`--workload`), one JSON object:

photos (the default): the camera-sized JPEGs of `bench/photos.py` (500x375
and 1024x768, made from CIFAR-10), read at 128x128 by a small convnet (so
that the input, not the model, decides) for `--photo-epochs` epochs, fed two ways:

- tutorial: `keras.utils.image_dataset_from_directory(..., image_size=(128,
  128))` + `.prefetch(AUTOTUNE)`, which decodes and resizes every full JPEG
  every epoch;
- vispipe: `create_dataset` once (timed: `vispipe_creation_s`), with the
  encoding the README advises for camera photos (`--encoding`, default `jpeg`), then
  `make_dataset(training=True)` over its cached records.

A third feed, `model_only`, is one random in-memory batch repeated: the
model's own training rate with no input cost (`model_only_images_per_s`), the
ceiling no feed can pass; with a model this cheap on a CPU it is also what
vispipe's steady state reaches. The pipelines alone, without the model, are
timed after training (`*_input_only_images_per_s`).

The three take turns, one epoch each. `vispipe_images_per_s` and
`tutorial_images_per_s` are steady-state rates (the fastest epoch after the
first), `end_to_end_s` the whole time for all epochs (vispipe's including the
dataset creation), and `vispipe_ahead_from_epoch` the first epoch after which
vispipe's cumulative time is below the tutorial's. The same in CPU seconds
(`cumulative_cpu_s_by_epoch`, `vispipe_ahead_from_epoch_cpu`: this process's
CPU over each fit, plus the dataset workers' for the creation) does not
depend on how other jobs share the cores: under load, TensorFlow's many
threads take a larger share of them than the two creation workers do. The MNIST workload below
runs too (under `mnist`) unless `--no-mnist`.

mnist: trains the same LeNet with the same SGD optimizer and batch size on the same
MNIST training images fed three ways, and prints one JSON object:

- vispipe: `make_dataset(training=True)` over a vispipe dataset folder
  (TFRecord shards of the PNGs);
- tutorial: `keras.utils.image_dataset_from_directory` on the PNG folder,
  followed by `.prefetch(AUTOTUNE)`, as in the keras.io tutorial "Image
  classification from scratch"
  (https://keras.io/examples/vision/image_classification_from_scratch/),
  which reads and decodes every file every epoch (no `.cache()`);
- in_memory: numpy arrays decoded up front, `model.fit(x, y)`.

Each feed's datasets are built once, as a trainer would (the vispipe cache
lives in its dataset), and a warm-up epoch (graph tracing, the cache fill) is
left out. Then the feeds take turns, one `fit` epoch each, in a rotating order,
and each rate is the training images over its fastest epoch: on a shared
machine other load only ever adds time (epochs swing by up to 3x here), so
the fastest of several interleaved epochs is the least disturbed figure (as
`timeit` advises). The pipelines are also timed alone, without the model, to
show what they could feed a faster accelerator.

Usage:

    python bench/train_throughput.py --workload photos --photos 3000
    python bench/train_throughput.py --workload photos --no-mnist --photo-repeats 3
    python bench/train_throughput.py --workload mnist --images 20000 --epochs 6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from photos import make_photos  # noqa: E402

from vispipe.configs import ENCODINGS, DatasetConfig, ImageOptions  # noqa: E402
from vispipe.data.archive import unpack_archive  # noqa: E402
from vispipe.data.create import create_dataset  # noqa: E402
from vispipe.data.format import DatasetInfo  # noqa: E402
from vispipe.data.inputs import load_arrays, make_dataset  # noqa: E402
from vispipe.models import build_model  # noqa: E402

SHAPE = (28, 28, 1)
PHOTO_SHAPE = (128, 128, 3)


def _default_data() -> str:
    shared = os.environ.get("VISPIPE_SHARED_DATASETS") or os.path.join(
        REPO, "..", "shared", "datasets"
    )
    return os.path.normpath(os.path.join(shared, "mnist-png.tar.gz"))


def find_train_dir(data: str) -> str:
    """The folder with one sub-folder per class inside `data`."""
    root = unpack_archive(data) if os.path.isfile(data) else data
    for candidate in (
        os.path.join(root, "mnist-png", "train"), os.path.join(root, "train"), root
    ):
        if os.path.isdir(candidate) and all(
            os.path.isdir(os.path.join(candidate, str(d))) for d in range(10)
        ):
            return candidate
    raise FileNotFoundError(
        f"{data!r}: expected MNIST PNG folders <root>/[mnist-png/]train/0..9."
    )


def make_subset(train_dir: str, images: int, out: str) -> str:
    """Links the first `images / classes` files of each class into `out`."""
    classes = sorted(os.listdir(train_dir))
    per_class = images // len(classes)
    for name in classes:
        os.makedirs(os.path.join(out, name))
        files = sorted(os.listdir(os.path.join(train_dir, name)))[:per_class]
        for file in files:
            os.symlink(os.path.join(train_dir, name, file), os.path.join(out, name, file))
    return out


def build_dataset(folder: str, out: str) -> DatasetInfo:
    """A vispipe dataset of `folder` (PNG shards, no held-out split)."""
    return create_dataset(DatasetConfig(
        train_dir=folder, output=out, val_percent=0.0,
        image=ImageOptions(height=SHAPE[0], width=SHAPE[1], channels=SHAPE[2]),
    ), progress=False)


def build_lenet(num_classes: int) -> keras.Model:
    """The zoo's LeNet on 0-255 inputs (it takes normalized images)."""
    core = build_model("lenet", SHAPE, num_classes)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Rescaling(1 / 255), core])


def compiled_model(weights: list[np.ndarray], num_classes: int) -> keras.Model:
    model = build_lenet(num_classes)
    model.set_weights(weights)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(),
    )
    return model


def input_rate(dataset: tf.data.Dataset, images: int, epochs: int, warm_up: bool = True) -> float:
    """Images/s of iterating `dataset`, after one untimed warm-up pass when `warm_up`."""
    if warm_up:
        for _ in dataset:
            pass
    start = time.perf_counter()
    for _ in range(epochs):
        for _ in dataset:
            pass
    return images * epochs / (time.perf_counter() - start)


def mnist_workload(args: argparse.Namespace) -> dict:
    """LeNet on MNIST PNGs fed by vispipe, the tutorial pipeline and in-memory arrays."""
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="vispipe-bench-") as tmp:
        folder = make_subset(find_train_dir(args.data), args.images,
                             os.path.join(tmp, "png"))
        info = build_dataset(folder, os.path.join(tmp, "dataset"))
        images = info.split_counts["train"]
        x, y = load_arrays(info, "train")
        x = x.astype(np.float32)
        initial = build_lenet(info.num_classes).get_weights()

        # Built once, as a trainer would: the vispipe cache lives in its dataset.
        datasets = {
            "vispipe": make_dataset(info, "train", args.batch_size, training=True, seed=0),
            "tutorial": keras.utils.image_dataset_from_directory(
                folder, color_mode="grayscale", image_size=SHAPE[:2],
                batch_size=args.batch_size, shuffle=True, seed=0, verbose=False,
            ).prefetch(tf.data.AUTOTUNE),
        }
        feeds = {
            "vispipe": dict(x=datasets["vispipe"]),
            "tutorial": dict(x=datasets["tutorial"]),
            "in_memory": dict(x=x, y=y, batch_size=args.batch_size, shuffle=True),
        }
        models = {name: compiled_model(initial, info.num_classes) for name in feeds}
        for name, data in feeds.items():  # Warm-up: tracing, cache fill.
            models[name].fit(**data, epochs=1, verbose=0)
        seconds = {name: [] for name in feeds}
        order = list(feeds)
        for epoch in range(args.epochs):
            for name in order:
                start = time.perf_counter()
                models[name].fit(**feeds[name], epochs=1, verbose=0)
                seconds[name].append(time.perf_counter() - start)
            order = order[1:] + order[:1]  # No feed always runs first.
        for name, times in seconds.items():
            print(f"{name}: epochs {[round(t, 2) for t in times]} s", file=sys.stderr)
        # The input pipelines alone, without the model: what they could feed
        # a faster accelerator.
        input_only = {name: input_rate(ds, images, args.epochs)
                      for name, ds in datasets.items()}

    rate = {name: images / min(t) for name, t in seconds.items()}
    gpus = tf.config.list_physical_devices("GPU")
    result = {
        "vispipe_images_per_s": round(rate["vispipe"], 1),
        "tutorial_images_per_s": round(rate["tutorial"], 1),
        "in_memory_images_per_s": round(rate["in_memory"], 1),
        "ratio_vs_tutorial": round(rate["vispipe"] / rate["tutorial"], 3),
        "ratio_vs_in_memory": round(rate["vispipe"] / rate["in_memory"], 3),
        "vispipe_input_only_images_per_s": round(input_only["vispipe"], 1),
        "tutorial_input_only_images_per_s": round(input_only["tutorial"], 1),
        "input_only_ratio_vs_tutorial": round(
            input_only["vispipe"] / input_only["tutorial"], 3
        ),
        "batch_size": args.batch_size,
        "images": images,
        "epochs": args.epochs,
        "estimator": "fastest of the interleaved timed epochs",
        "device": f"GPU x{len(gpus)}" if gpus else f"CPU ({os.cpu_count()} cores)",
    }
    return result


def small_convnet(num_classes: int) -> keras.Model:
    """Two strided convolutions (about 2 MFLOPs an image): cheap enough at 128x128 that the input decides.

    With three 3x3 stride-2 layers (16-32-64 channels, ~20 MFLOPs) the model
    alone ran about 340 images/s here and bounded both feeds.
    """
    layers = keras.layers
    model = keras.Sequential([
        keras.Input(PHOTO_SHAPE), layers.Rescaling(1 / 255),
        layers.Conv2D(8, 5, strides=4, activation="relu"),
        layers.Conv2D(16, 3, strides=2, activation="relu"),
        layers.GlobalAveragePooling2D(), layers.Dense(num_classes),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def in_memory_batches(images: int, batch_size: int, num_classes: int) -> tf.data.Dataset:
    """One random float32 batch, repeated for an epoch's steps: the model with (almost) no input cost.

    Its rate is the model's own ceiling on this machine (its cost does not
    depend on the pixel values): no feed can train faster.
    """
    batch = (
        tf.random.uniform((batch_size, *PHOTO_SHAPE), 0, 255, seed=0),
        tf.random.uniform((batch_size,), 0, num_classes, tf.int32, seed=0),
    )
    return tf.data.Dataset.from_tensors(batch).repeat(-(-images // batch_size))


def _ahead_from(ours: np.ndarray, theirs: np.ndarray) -> int | None:
    """The first epoch (1-based) from which `ours` stays below `theirs`, or None."""
    first = None
    for epoch in reversed(range(len(ours))):
        if ours[epoch] >= theirs[epoch]:
            break
        first = epoch + 1
    return first


class DescendantsCpu:
    """CPU seconds of this process's descendants (pool workers, fork servers) while in use.

    Workers forked by a fork server are not this process's children, so
    `getrusage(RUSAGE_CHILDREN)` never sees them; they are sampled every
    `interval` seconds instead (a worker's last partial interval is missed).

    Example:

    >>> with DescendantsCpu() as children:
    ...     create_dataset(config)
    >>> children.seconds
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.seconds = 0.0
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    times = child.cpu_times()
                    self._seen[child.pid] = times.user + times.system

    def __enter__(self) -> "DescendantsCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = sum(self._seen.values())


@dataclass
class PhotosRound:
    """One round of the photos workload: a creation, then every feed's epochs in turn.

    Attributes:
        seconds: Wall seconds of each feed's epochs.
        cpu_seconds: This process's CPU seconds of each feed's epochs.
        creation_s: Wall seconds of vispipe's dataset creation.
        creation_cpu_s: Its CPU seconds (the workers' included).
    """

    seconds: dict[str, list[float]]
    cpu_seconds: dict[str, list[float]]
    creation_s: float
    creation_cpu_s: float

    def cumulative(self, cpu: bool = False) -> dict[str, np.ndarray]:
        """Cumulative seconds by epoch, vispipe's including its creation."""
        times, creation = (self.cpu_seconds, self.creation_cpu_s) if cpu else (self.seconds, self.creation_s)
        return {"vispipe": np.cumsum(times["vispipe"]) + creation, "tutorial": np.cumsum(times["tutorial"])}


def _photos_round(args: argparse.Namespace, root: str, output: str,
                  tutorial: tf.data.Dataset) -> tuple[PhotosRound, DatasetInfo, dict[str, tf.data.Dataset]]:
    """Creates vispipe's dataset into `output`, then trains each feed's model in turns."""
    feeds = {"tutorial": tutorial}
    start, cpu_start = time.perf_counter(), time.process_time()
    with DescendantsCpu() as workers_cpu:
        info = create_dataset(DatasetConfig(
            source=root, output=output, val_percent=0.0,
            image=ImageOptions(height=PHOTO_SHAPE[0], width=PHOTO_SHAPE[1], channels=3,
                               encoding=args.encoding),
        ), progress=False)
    creation_s = time.perf_counter() - start
    creation_cpu_s = time.process_time() - cpu_start + workers_cpu.seconds
    feeds["vispipe"] = make_dataset(info, "train", args.batch_size, training=True, seed=0)
    feeds["model_only"] = in_memory_batches(info.split_counts["train"], args.batch_size, info.num_classes)
    models = {name: small_convnet(info.num_classes) for name in feeds}
    initial = models["vispipe"].get_weights()
    for name in feeds:
        models[name].set_weights(initial)
    seconds: dict[str, list[float]] = {name: [] for name in feeds}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in feeds}
    order = list(feeds)
    for _ in range(args.photo_epochs):
        for name in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            models[name].fit(feeds[name], epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
        order = order[1:] + order[:1]  # no feed always runs first
    for name, times in seconds.items():
        print(f"photos {name}: epochs {[round(t, 2) for t in times]} s", file=sys.stderr)
    return PhotosRound(seconds, cpu_seconds, creation_s, creation_cpu_s), info, feeds


def _rounded(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def photos_workload(args: argparse.Namespace, work: str) -> dict:
    """The tutorial pipeline against vispipe (created once a round, then cached) on photo-sized JPEGs.

    With `--photo-repeats` R, the whole comparison (creation included) runs R
    times in turn; the cumulative times by epoch are the medians over the
    rounds (every round's are printed too), the steady rates the fastest
    epoch after the first over all rounds.
    """
    keras.utils.set_random_seed(0)
    photos = make_photos(args.work_dir or work, args.photos)
    tutorial = keras.utils.image_dataset_from_directory(
        photos.root, image_size=PHOTO_SHAPE[:2], batch_size=args.batch_size, shuffle=True,
        seed=0, verbose=False,
    ).prefetch(tf.data.AUTOTUNE)
    rounds = []
    for index in range(args.photo_repeats):
        round_, info, feeds = _photos_round(args, photos.root, os.path.join(work, f"photos-dataset-{index}"),
                                            tutorial)
        rounds.append(round_)
    images = info.split_counts["train"]
    rate = {name: images / min(min(r.seconds[name][1:] or r.seconds[name]) for r in rounds)
            for name in feeds}
    # The pipelines alone, without the model (vispipe's cache is full by now).
    input_only = {name: input_rate(feeds[name], images, 1, warm_up=False) for name in ("tutorial", "vispipe")}
    cumulative = {name: np.median([r.cumulative()[name] for r in rounds], axis=0) for name in ("vispipe", "tutorial")}
    cumulative_cpu = {name: np.median([r.cumulative(cpu=True)[name] for r in rounds], axis=0)
                      for name in ("vispipe", "tutorial")}
    creation_s = float(np.median([r.creation_s for r in rounds]))
    return {
        "vispipe_images_per_s": round(rate["vispipe"], 1),
        "tutorial_images_per_s": round(rate["tutorial"], 1),
        "ratio_vs_tutorial": round(rate["vispipe"] / rate["tutorial"], 3),
        "model_only_images_per_s": round(rate["model_only"], 1),
        "vispipe_share_of_model_only": round(rate["vispipe"] / rate["model_only"], 3),
        "ratio_ceiling_vs_tutorial": round(rate["model_only"] / rate["tutorial"], 3),
        "vispipe_input_only_images_per_s": round(input_only["vispipe"], 1),
        "tutorial_input_only_images_per_s": round(input_only["tutorial"], 1),
        "end_to_end_s": {name: round(float(c[-1]), 2) for name, c in cumulative.items()},
        "cumulative_s_by_epoch": {name: _rounded(c) for name, c in cumulative.items()},
        "cumulative_s_by_epoch_rounds": [{name: _rounded(c) for name, c in r.cumulative().items()}
                                         for r in rounds],
        "vispipe_creation_s": round(creation_s, 2),
        "vispipe_creation_s_rounds": _rounded(r.creation_s for r in rounds),
        "vispipe_creation_images_per_s": round(images / creation_s, 1),
        "encoding": args.encoding,
        "vispipe_ahead_from_epoch": _ahead_from(cumulative["vispipe"], cumulative["tutorial"]),
        "cumulative_cpu_s_by_epoch": {name: _rounded(c) for name, c in cumulative_cpu.items()},
        "vispipe_creation_cpu_s": round(float(np.median([r.creation_cpu_s for r in rounds])), 2),
        "vispipe_ahead_from_epoch_cpu": _ahead_from(cumulative_cpu["vispipe"], cumulative_cpu["tutorial"]),
        "epoch_s": {name: _rounded(np.median([r.seconds[name] for r in rounds], axis=0)) for name in feeds},
        "epoch_s_rounds": [{name: _rounded(times) for name, times in r.seconds.items()} for r in rounds],
        "photos": images,
        "photo_bytes_mean": photos.mean_bytes,
        "image_size": list(PHOTO_SHAPE),
        "epochs": args.photo_epochs,
        "repeats": args.photo_repeats,
        "batch_size": args.batch_size,
        "estimator": "steady state: fastest epoch after the first; cumulative: median over the rounds",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("photos", "mnist"), default="photos")
    parser.add_argument("--no-mnist", action="store_true", help="photos only, without the MNIST workload")
    parser.add_argument("--photos", type=int, default=3000, help="photo-sized JPEGs (photos workload)")
    parser.add_argument("--photo-epochs", type=int, default=3, help="epochs per feed (photos workload)")
    parser.add_argument("--photo-repeats", type=int, default=1,
                        help="rounds of the whole photos comparison, creation included (medians reported)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="jpeg",
                        help="vispipe's record encoding (photos workload); jpeg is what "
                        "the README advises for datasets of camera photos")
    parser.add_argument("--work-dir", help="keep the generated photos here (default: a temporary folder)")
    parser.add_argument("--data", default=_default_data(),
                        help="MNIST PNG tarball or unpacked folder")
    parser.add_argument("--images", type=int, default=20000,
                        help="MNIST training images used (split evenly over classes)")
    parser.add_argument("--epochs", type=int, default=6,
                        help="MNIST timed epochs per feed (the fastest counts)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.photo_repeats < 1:
        parser.error(f"--photo-repeats: expected at least 1, got {args.photo_repeats}")
    load_before = os.getloadavg()
    if args.workload == "mnist":
        result = mnist_workload(args)
    else:
        with tempfile.TemporaryDirectory(prefix="vispipe-bench-photos-") as work:
            result = photos_workload(args, work)
        if not args.no_mnist:
            result["mnist"] = mnist_workload(args)
    result["load_average_before"] = [round(v, 2) for v in load_before]
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
