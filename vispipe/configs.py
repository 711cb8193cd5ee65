"""Typed configuration for every stage, kept apart from the code that uses it.

Each stage reads one dataclass; a pipeline file is a `PipelineConfig`. The
dataclasses hold values only: loading, validation of types and `key=value`
overrides live in `vispipe.config_io`.

Example:

```python
from vispipe.configs import DatasetConfig, ImageOptions

cfg = DatasetConfig(source="data/digits", output="datasets/digits",
                    image=ImageOptions(height=28, width=28, channels=1))
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHOICES",
    "choices",
    "BUILTINS",
    "CHANNELS",
    "RESIZE_MODES",
    "ENCODINGS",
    "NORMALIZATIONS",
    "PREPROCESS_MODES",
    "OPTIMIZERS",
    "LR_POLICIES",
    "MIXED_PRECISION_MODES",
    "CACHE_MODES",
    "DISTRIBUTED_MODES",
    "GRADIENT_COMPRESSIONS",
    "SPLITS",
    "WHICH_MODELS",
    "LR_FIND_RULES",
    "LR_FIND_PHASES",
    "ImageOptions",
    "DatasetConfig",
    "AugmentConfig",
    "ModelConfig",
    "LRPolicyConfig",
    "TrainConfig",
    "EvaluateConfig",
    "LRFinderConfig",
    "PipelineConfig",
]

BUILTINS = ("digits",)  # datasets shipped inside installed packages
CHANNELS = (1, 3)
RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
ENCODINGS = ("png", "jpeg", "raw")
NORMALIZATIONS = ("standardize", "pixel", "image", "scale", "none")
# What a model's Preprocess layer may do: a dataset normalization, or the
# input normalization of ImageNet weights ("caffe": VGG-16/ResNet-50, "tf": [-1, 1]).
PREPROCESS_MODES = NORMALIZATIONS + ("caffe", "tf")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta")
LR_POLICIES = (
    "fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid",
    "cosine", "onecycle", "warmup",
)
MIXED_PRECISION_MODES = ("auto", "on", "off")
CACHE_MODES = ("auto", "memory", "none")
DISTRIBUTED_MODES = ("none", "horovod", "mirrored", "multiworker")
GRADIENT_COMPRESSIONS = ("none", "fp16")
SPLITS = ("train", "val", "test")
WHICH_MODELS = ("final", "best", "last")  # model.keras, best.keras, the latest checkpoint
LR_FIND_RULES = ("valley", "minimum", "steep")
LR_FIND_PHASES = ("auto", "frozen", "unfrozen")

CHOICES = "choices"  # dataclasses.Field.metadata key of a field's allowed values


def choices(options: tuple, default: Any = dataclasses.MISSING, *,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose value (or, for a list, every item) must be one of `options`.

    `vispipe.config_io.from_dict` checks it, and the CLI's help lists the
    same options, so each set of allowed values is written once, here.

    Example:

    ```python
    resize_mode: str = choices(RESIZE_MODES, "squash")
    ```
    """
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={CHOICES: tuple(options)})


@dataclass
class ImageOptions:
    """How every image is stored in the shards.

    Args:
        height: Stored height in pixels.
        width: Stored width in pixels.
        channels: 1 (grayscale) or 3 (color).
        resize_mode: DIGITS semantics, one of `RESIZE_MODES`.
        encoding: Pixel encoding inside the TFRecords, one of `ENCODINGS`.
        jpeg_quality: Quality for `encoding="jpeg"` (1-100).
    """

    height: int = 28
    width: int = 28
    channels: int = choices(CHANNELS, 1)
    resize_mode: str = choices(RESIZE_MODES, "squash")
    encoding: str = choices(ENCODINGS, "png")
    jpeg_quality: int = 90


@dataclass
class DatasetConfig:
    """A DIGITS "New Image Classification Dataset" job.

    Paths may point inside `archive` (a .tar.gz/.tgz/.tar/.zip unpacked once
    into a cache), and then are relative to its root.

    Exactly one source kind is used: `source` (a folder with one sub-folder
    per class, split by percentages), `train_dir` (+ optional `val_dir`,
    `test_dir`), `train_list` (+ `labels_file`, optional `val_list`,
    `test_list`), `tfds_name` (already on disk under `tfds_data_dir`) or
    `builtin` (`"digits"`: scikit-learn's handwritten digits).

    Args:
        output: Folder the dataset is written to (must not exist yet unless
            `overwrite`).
        val_percent: Share of each class held out for validation when the
            source is a single folder or a single list.
        test_percent: Share of each class held out for test, likewise.
        min_per_class: A class with fewer usable images is an error.
        max_per_class: Keep at most this many images per class (per split);
            0 keeps all.
        shard_size: Images per TFRecord shard.
        workers: Decode processes; 0 means one per CPU core.
        seed: Seed of the split and of the per-class subsampling.
        data_roots: When given, every folder, list and image file must
            resolve (symlinks followed) inside one of these folders; others
            are refused. The web UI sets its data roots here.
    """

    output: str = ""
    archive: str = ""
    source: str = ""
    train_dir: str = ""
    val_dir: str = ""
    test_dir: str = ""
    train_list: str = ""
    val_list: str = ""
    test_list: str = ""
    labels_file: str = ""
    tfds_name: str = ""
    tfds_data_dir: str = ""
    builtin: str = choices(("",) + BUILTINS, "")
    val_percent: float = 25.0
    test_percent: float = 0.0
    image: ImageOptions = field(default_factory=ImageOptions)
    min_per_class: int = 2
    max_per_class: int = 0
    shard_size: int = 10000
    workers: int = 0
    seed: int = 42
    overwrite: bool = False
    data_roots: list[str] = field(default_factory=list)


@dataclass
class AugmentConfig:
    """Training-time augmentation (all off by default).

    Angles are in degrees, fractions are of the image size, jitters are
    maximum deltas (brightness on the 0-255 scale, the others relative).
    """

    flip_horizontal: bool = False
    flip_vertical: bool = False
    rotate90: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    translate: float = 0.0
    crop_padding: int = 0
    brightness: float = 0.0
    contrast: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0
    noise_std: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(
            bool(getattr(self, f.name)) for f in dataclasses.fields(self)
        )


@dataclass
class ModelConfig:
    """Which network to train.

    Args:
        name: A zoo network (see `vispipe models`) or `"custom"`.
        custom_path: For `"custom"`: a `.py` file defining
            `build(input_shape, num_classes)`, or a saved `.keras` model.
        weights: Initialise from `"imagenet"` (keras.applications' weights,
            for the networks `vispipe models` marks; the model then
            normalizes its input as those weights expect), a local weights
            file (`.weights.h5`, `.keras`) or an earlier run folder; layers
            are matched by name and shape, the classifier head is skipped
            when it differs.
        weights_dir: Folder holding keras.applications weight files for
            air-gapped machines (default `$VISPIPE_WEIGHTS_DIR`; otherwise
            the Keras cache `$KERAS_HOME/models`, downloading if needed).
        freeze_epochs: Train only the head for this many epochs first, the
            backbone frozen (its BatchNorm in inference mode); -1: 1 epoch
            when starting from `weights`, else 0.
        finetune_lr_factor: LR multiplier once the backbone is unfrozen.
        unfreeze_blocks: Unfreeze only the last this many blocks of the
            backbone (residual / MBConv / inception blocks, VGG stages);
            0 unfreezes all of it.
        finetune_lr_mult: Discriminative rates once unfrozen: the first
            unfrozen block trains at 1/finetune_lr_mult of the head's rate,
            rising geometrically with depth (fastai's `lr_mult`); 1: one
            rate for all.
        feature_cache_copies: While the backbone is frozen, compute its
            features once per image and train the head on them: 1 caches
            the un-augmented images, N > 1 adds N - 1 augmented views of
            each (needs train.augment); 0 runs the backbone every step.
        dropout: Dropout rate before the classifier, where the network has one.
        width_multiplier: MobileNetV2 width multiplier.
    """

    name: str = "lenet"
    custom_path: str = ""
    weights: str = ""
    weights_dir: str = ""
    freeze_epochs: int = -1
    finetune_lr_factor: float = 0.1
    unfreeze_blocks: int = 0
    finetune_lr_mult: float = 1.0
    feature_cache_copies: int = 1
    dropout: float = 0.0
    width_multiplier: float = 1.0


@dataclass
class LRPolicyConfig:
    """A learning-rate policy with DIGITS's parameters.

    fixed: lr. step: lr * gamma ** floor(progress / step_size).
    multistep: lr * gamma ** (number of `steps` passed).
    exp: lr * gamma ** progress. inv: lr * (1 + gamma * progress) ** -power.
    poly: lr * (1 - progress) ** power. sigmoid: lr / (1 + exp(-gamma *
    (progress - step_size))). cosine: cosine decay to `min_lr`.
    Here progress is in percent of training: as in DIGITS, gamma of exp, inv
    and sigmoid applies per 1% of training, not per iteration.
    onecycle: Smith's one-cycle. warmup: linear warm-up to `lr` over
    `warmup_percent` of training, then the policy in `after_warmup`.

    `step_size` and `steps` are percentages of training, as in DIGITS.
    """

    policy: str = choices(LR_POLICIES, "fixed")
    base_lr: float = 0.01
    gamma: float = 0.1
    power: float = 1.0
    step_size: float = 33.0
    steps: list[float] = field(default_factory=lambda: [50.0, 75.0])
    min_lr: float = 0.0
    warmup_percent: float = 0.0
    after_warmup: str = choices(tuple(p for p in LR_POLICIES if p != "warmup"), "fixed")
    max_lr_factor: float = 10.0


@dataclass
class TrainConfig:
    """Solver options of a training run.

    Args:
        epochs: Training epochs.
        batch_size: Global batch size.
        optimizer: One of `OPTIMIZERS`.
        momentum: SGD/RMSprop momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: Decoupled for AdamW, L2-style for the others.
        lr: Learning-rate policy.
        normalization: Preprocessing baked into the model, one of
            `NORMALIZATIONS`.
        augment: Training-time augmentation.
        val_interval: Validate every N epochs (0: never).
        snapshot_interval: Checkpoint every N epochs.
        early_stopping: Stop after this many validations without improvement
            (0: off).
        mixed_precision: "auto" (on with a GPU), "on" or "off".
        seed: Seed of weights init, shuffling and augmentation.
        steps_per_epoch: Cap on steps per epoch (0: a full pass).
        label_smoothing: Cross-entropy label smoothing.
        log_every_steps: Write a step record to metrics.jsonl every N steps.
        cache: Input cache: "auto" (memory when it fits), "memory", "none".
        distributed: "none" (one process, CPU or one GPU), "horovod" (under
            `horovodrun`, one GPU per rank), "mirrored" (all GPUs of one
            host) or "multiworker" (MultiWorkerMirroredStrategy, TF_CONFIG).
            `batch_size` is always the global batch.
        scale_lr: Distributed: multiply the LR by the number of replicas
            (linear scaling rule, Goyal et al. 2017), for an `lr` tuned for
            one replica's batch.
        warmup_epochs: With `scale_lr`: epochs over which the LR ramps
            linearly from the single-replica LR to the scaled one (0: none).
        gradient_compression: Horovod allreduce compression: "none" or
            "fp16".
        elastic: Horovod elastic mode (`horovodrun --min-np/--max-np
            --host-discovery-script`): workers may leave and join between
            epochs; an epoch that loses a worker is redone from the last
            epoch end.
        bn_momentum: Momentum of the trainable BatchNorm layers' moving
            statistics, at most (layers with a lower one keep it); null:
            suited to the run, so the averages forget an epoch's start
            within the epoch (see `vispipe.models.batchnorm.suited_momentum`).
        precise_bn_batches: Before each validation and checkpoint, recompute
            the trainable BatchNorm layers' statistics over this many
            training batches ("precise BN"); 0: off.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = choices(OPTIMIZERS, "sgd")
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr: LRPolicyConfig = field(default_factory=LRPolicyConfig)
    normalization: str = choices(NORMALIZATIONS, "standardize")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_interval: int = 1
    snapshot_interval: int = 1
    early_stopping: int = 0
    mixed_precision: str = choices(MIXED_PRECISION_MODES, "auto")
    seed: int = 42
    steps_per_epoch: int = 0
    label_smoothing: float = 0.0
    log_every_steps: int = 50
    cache: str = choices(CACHE_MODES, "auto")
    distributed: str = choices(DISTRIBUTED_MODES, "none")
    scale_lr: bool = False
    warmup_epochs: float = 0.0
    gradient_compression: str = choices(GRADIENT_COMPRESSIONS, "none")
    elastic: bool = False
    bn_momentum: float | None = None
    precise_bn_batches: int = 16


@dataclass
class EvaluateConfig:
    """The evaluate stage: `vispipe evaluate`, `classify` and `visualize`.

    Args:
        splits: Splits to evaluate (those the dataset has).
        top_losses: Images in the top-losses grid.
        batch_size: Inference batch size.
        which: The run's model: "final", "best" (validation) or "last"
            (checkpoint).
        top_k: Classes `classify` reports per image.
        max_filters: Most tiles per activation or weight grid of `visualize`.
    """

    splits: list[str] = choices(SPLITS, default_factory=lambda: ["val", "test"])
    top_losses: int = 16
    batch_size: int = 256
    which: str = choices(WHICH_MODELS, "final")
    top_k: int = 5
    max_filters: int = 64


@dataclass
class LRFinderConfig:
    """The learning-rate range test (`vispipe lr-find`).

    Args:
        start_lr: First learning rate.
        end_lr: Last learning rate.
        num_steps: Steps at most.
        rule: The suggestion returned (all are marked on the plot): fastai's
            "valley", "minimum" (a tenth of the rate at the lowest loss) or
            "steep".
        phase: "frozen" tests the head alone (backbone frozen), "unfrozen"
            the fine-tuning phase after the head phase; "auto" the phase the
            run starts in.
    """

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_steps: int = 100
    rule: str = choices(LR_FIND_RULES, "valley")
    phase: str = choices(LR_FIND_PHASES, "auto")


@dataclass
class PipelineConfig:
    """The root of the config tree: a pipeline file, and every verb's `--config`.

    `vispipe run` runs dataset -> train -> evaluate from it; the other verbs
    read the sections they need. `--set KEY=VALUE` always names a key from
    here (`train.epochs`, `dataset.image.channels`, `export.top_k`).

    Args:
        name: Pipeline name, also the default run name.
        dataset: The dataset job; its `output` defaults to `<out>/dataset`.
        model: The network.
        train: The solver.
        evaluate: The evaluation.
        lr_find: The LR range test.
        export: `vispipe export`'s options (`vispipe.export.ExportOptions`),
            checked by the export stage, which the core does not import.
        serve: `vispipe serve`'s options, checked by the serving stage.
    """

    name: str = "pipeline"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    lr_find: LRFinderConfig = field(default_factory=LRFinderConfig)
    export: dict[str, Any] = field(default_factory=dict)
    serve: dict[str, Any] = field(default_factory=dict)
