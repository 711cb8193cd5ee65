"""Where a dataset's images come from: class names and per-split file lists.

A `DatasetConfig` names exactly one source kind:

- `source`: a folder with one sub-folder per class; validation and test
  images are held out per class by `val_percent` / `test_percent`.
- `train_dir` (+ `val_dir`, `test_dir`): a folder per split, each with one
  sub-folder per class. A split without its own folder is held out from
  `train_dir` by its percentage, as in DIGITS.
- `train_list` (+ `val_list`, `test_list`) with `labels_file`: text files
  of `path label` lines; likewise for splits without a list.
- `tfds_name`: a TensorFlow Datasets dataset already prepared in
  `tfds_data_dir` (nothing is downloaded).
- `builtin`: `"digits"`, scikit-learn's handwritten digits.

Files are only listed here; decoding (and rejecting bad files) happens when
the dataset is written. With `data_roots`, every folder, list and file must
resolve inside one of them (`vispipe.data.roots.confine`); the images are
then recorded by their real paths, so a symlink swapped in later is not
followed.

Example:

```python
source = load_source(DatasetConfig(source="photos", output="ds"))
print(source.classes, len(source.splits["train"]))
source.cleanup()
```
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from vispipe.configs import DatasetConfig
from vispipe.data.format import SPLITS
from vispipe.data.roots import confine, real_roots

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCE_KINDS",
    "SourceImage",
    "Source",
    "source_kind",
    "load_source",
]

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
)
# Config fields that select each source kind.
SOURCE_KINDS = {
    "source": ("source",),
    "train_dir": ("train_dir", "val_dir", "test_dir"),
    "train_list": ("train_list", "val_list", "test_list", "labels_file"),
    "tfds_name": ("tfds_name", "tfds_data_dir"),
    "builtin": ("builtin",),
}
_TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class SourceImage:
    """One input file.

    Attributes:
        path: The file.
        label: Class index.
        name: What the dataset stores as its filename: the path relative to
            the split's folder or list file.
    """

    path: str
    label: int
    name: str


@dataclass
class Source:
    """The inputs of a dataset.

    Attributes:
        classes: Class names, index = label.
        splits: For each of `SPLITS`, its images (train in sorted order,
            shuffled later by the writer).
        description: The source kind and its paths, for `dataset.json`.
        temp_dir: A folder written for this source (TFDS, builtin), removed
            by `cleanup`.
    """

    classes: list[str]
    splits: dict[str, list[SourceImage]]
    description: dict[str, Any]
    temp_dir: str | None = field(default=None, repr=False)

    def cleanup(self) -> None:
        """Removes the temporary folder this source wrote, if any."""
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def source_kind(config: DatasetConfig) -> str:
    """The one source kind `config` names (a key of `SOURCE_KINDS`).

    Raises:
        ValueError: None given, more than one given, or a companion field
            (e.g. `val_dir`) without its main field.
    """
    given = [kind for kind in SOURCE_KINDS if getattr(config, kind)]
    if not given:
        stray = [
            name for fields in SOURCE_KINDS.values() for name in fields
            if getattr(config, name)
        ]
        if stray:
            main = next(k for k, fields in SOURCE_KINDS.items() if stray[0] in fields)
            raise ValueError(f"{stray[0]} is set but {main} is not; set {main} too.")
        raise ValueError(
            "No dataset source: set one of source, train_dir, train_list, "
            "tfds_name or builtin."
        )
    if len(given) > 1:
        raise ValueError(
            f"Expected one dataset source, got {len(given)}: "
            + ", ".join(f"{kind}={getattr(config, kind)!r}" for kind in given) + "."
        )
    kind = given[0]
    for other, fields in SOURCE_KINDS.items():
        for name in fields[1:]:
            if other != kind and getattr(config, name):
                raise ValueError(
                    f"{name}={getattr(config, name)!r} belongs with {other}, "
                    f"but the source is {kind}={getattr(config, kind)!r}."
                )
    return kind


def _check_percentages(config: DatasetConfig, held_out: list[str]) -> None:
    for name in ("val_percent", "test_percent"):
        value = getattr(config, name)
        if not 0 <= value < 100:
            raise ValueError(f"{name}: expected a value in [0, 100), got {value!r}.")
    total = sum(getattr(config, f"{split}_percent") for split in held_out)
    if total >= 100:
        names = " + ".join(f"{split}_percent" for split in held_out)
        raise ValueError(
            f"{names} = {total:g}: expected less than 100, so that some images "
            "are left for training."
        )


def _inside(path: str, roots: list[str], what: str) -> str:
    """`path`, or with `roots` its real path, refused when outside every root."""
    return confine(os.path.abspath(path), roots, what) if roots else path


def _require_dir(path: str, field_name: str, roots: list[str]) -> str:
    path = _inside(path, roots, field_name)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"Dataset source folder {path!r} does not exist ({field_name})."
        )
    return os.path.abspath(path)


def _is_candidate(name: str) -> bool:
    # Files without an extension are tried (and rejected when not images);
    # other extensions (.txt, .csv, ...) are not images and are ignored.
    if name.startswith("."):
        return False
    extension = os.path.splitext(name)[1].lower()
    return extension == "" or extension in IMAGE_EXTENSIONS


def _class_folders(root: str) -> list[str]:
    return sorted(
        entry.name for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _scan_folder(
    root: str, classes: list[str], field_name: str, roots: list[str]
) -> list[SourceImage]:
    """Lists the candidate files of each class sub-folder, recursively.

    With `roots`, a class folder or file that is a symlink to somewhere
    outside them is refused.
    """
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in _class_folders(root) if name not in index]
    if unknown:
        raise ValueError(
            f"{field_name} {root!r} has class folder(s) {unknown} that the "
            f"training folder does not have; expected only {classes}."
        )
    images = []
    for name in _class_folders(root):
        for folder, subfolders, files in os.walk(os.path.join(root, name)):
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            for file in files:
                if _is_candidate(file):
                    path = os.path.join(folder, file)
                    images.append(SourceImage(
                        _inside(path, roots, f"{field_name} image"), index[name],
                        os.path.relpath(path, root),
                    ))
    return sorted(images, key=lambda image: image.name)


def _read_labels_file(path: str, roots: list[str]) -> list[str]:
    path = _inside(path, roots, "labels_file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels_file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    names = [name for name in names if name and not name.startswith("#")]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"labels_file {path!r} lists class(es) twice: {duplicates}.")
    return names


def _parse_label(text: str, classes: list[str]) -> int | None:
    # An integer in range is an index (DIGITS lists); otherwise a class name.
    try:
        value = int(text)
    except ValueError:
        value = -1
    if 0 <= value < len(classes):
        return value
    return classes.index(text) if text in classes else None


def _read_list(
    path: str, classes: list[str], field_name: str, roots: list[str]
) -> list[SourceImage]:
    """Reads a `path label` list; relative paths are relative to the list.

    With `roots`, the list and every file it names must lie inside them.
    """
    checked = _inside(path, roots, field_name)
    if not os.path.isfile(checked):
        raise FileNotFoundError(f"{field_name} {path!r} does not exist.")
    base = os.path.dirname(os.path.abspath(path))
    images = []
    with open(checked, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{where}: expected 'path label', got {line!r}.")
            name, label_text = parts
            label = _parse_label(label_text, classes)
            if label is None:
                raise ValueError(
                    f"{where}: unknown label {label_text!r}; expected an index "
                    f"0-{len(classes) - 1} or one of the classes in labels_file."
                )
            file = name if os.path.isabs(name) else os.path.join(base, name)
            file = _inside(file, roots, where)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{where}: image file {file!r} does not exist.")
            images.append(SourceImage(file, label, name))
    return images


def _hold_out(
    images: list[SourceImage], percents: dict[str, float], seed: int
) -> dict[str, list[SourceImage]]:
    """Moves `percents[split]` % of each class from train into `split`."""
    splits: dict[str, list[SourceImage]] = {"train": [], **{s: [] for s in percents}}
    by_class: dict[int, list[SourceImage]] = {}
    for image in sorted(images, key=lambda image: image.name):
        by_class.setdefault(image.label, []).append(image)
    for label, members in sorted(by_class.items()):
        random.Random(f"{seed}:{label}").shuffle(members)
        start = 0
        for split, percent in percents.items():
            # Round half up; keep at least one image for training.
            count = min(int(len(members) * percent / 100 + 0.5), len(members) - 1 - start)
            count = max(count, 0)
            splits[split].extend(members[start:start + count])
            start += count
        splits["train"].extend(members[start:])
    return {split: sorted(items, key=lambda image: image.name) for split, items in splits.items()}


def _cap_per_class(
    images: list[SourceImage], limit: int, seed: int, split: str
) -> list[SourceImage]:
    if limit <= 0:
        return images
    by_class: dict[int, list[SourceImage]] = {}
    for image in images:
        by_class.setdefault(image.label, []).append(image)
    kept = []
    for label, members in by_class.items():
        if len(members) > limit:
            members = random.Random(f"{seed}:{split}:{label}").sample(members, limit)
        kept.extend(members)
    return sorted(kept, key=lambda image: image.name)


def _split_sources(
    config: DatasetConfig,
    train: list[SourceImage],
    given: dict[str, list[SourceImage] | None],
) -> dict[str, list[SourceImage]]:
    """Holds out the splits not `given` from `train` by their percentages."""
    held_out = [split for split in ("val", "test") if given[split] is None]
    _check_percentages(config, held_out)
    percents = {
        split: getattr(config, f"{split}_percent")
        for split in held_out if getattr(config, f"{split}_percent") > 0
    }
    splits = _hold_out(train, percents, config.seed)
    for split in ("val", "test"):
        if given[split] is not None:
            splits[split] = given[split]
        splits.setdefault(split, [])
    return {
        split: _cap_per_class(splits[split], config.max_per_class, config.seed, split)
        for split in SPLITS
    }


def _check_classes(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        raise ValueError(
            f"{where}: expected at least 2 classes, got {len(classes)} {classes}."
        )


def _folder_source(config: DatasetConfig, kind: str) -> Source:
    roots = real_roots(config.data_roots)
    train_root = _require_dir(getattr(config, kind), kind, roots)
    classes = _class_folders(train_root)
    _check_classes(classes, f"{kind} {train_root!r} (one sub-folder per class)")
    train = _scan_folder(train_root, classes, kind, roots)
    description: dict[str, Any] = {"kind": "folder", kind: train_root}
    given: dict[str, list[SourceImage] | None] = {"val": None, "test": None}
    if kind == "train_dir":
        for split in ("val", "test"):
            folder = getattr(config, f"{split}_dir")
            if folder:
                root = _require_dir(folder, f"{split}_dir", roots)
                given[split] = _scan_folder(root, classes, f"{split}_dir", roots)
                description[f"{split}_dir"] = root
    splits = _split_sources(config, train, given)
    return Source(classes, splits, description)


def _list_source(config: DatasetConfig) -> Source:
    if not config.labels_file:
        raise ValueError(
            "train_list needs labels_file (the class names, one per line)."
        )
    roots = real_roots(config.data_roots)
    classes = _read_labels_file(config.labels_file, roots)
    _check_classes(classes, f"labels_file {config.labels_file!r}")
    train = _read_list(config.train_list, classes, "train_list", roots)
    description: dict[str, Any] = {
        "kind": "list",
        "train_list": os.path.abspath(config.train_list),
        "labels_file": os.path.abspath(config.labels_file),
    }
    given: dict[str, list[SourceImage] | None] = {"val": None, "test": None}
    for split in ("val", "test"):
        path = getattr(config, f"{split}_list")
        if path:
            given[split] = _read_list(path, classes, f"{split}_list", roots)
            description[f"{split}_list"] = os.path.abspath(path)
    return Source(classes, _split_sources(config, train, given), description)


def _write_tfds(name: str, data_dir: str, folder: str) -> tuple[list[str], list[str]]:
    """Writes a prepared TFDS dataset's images as PNG class folders."""
    try:
        import tensorflow_datasets as tfds

        tfds.builder  # noqa: B018 - tfds imports lazily; a broken install fails here
    except Exception as error:  # noqa: BLE001 - it also fails with protobuf errors
        raise ValueError(
            f"tfds_name={name!r} needs the tensorflow_datasets package, which "
            f"cannot be imported: {type(error).__name__}: {error}"
        ) from error
    from PIL import Image

    builder = tfds.builder(name, data_dir=data_dir)
    if not os.path.isdir(builder.data_dir):
        raise FileNotFoundError(
            f"TFDS dataset {name!r} not found in {data_dir!r}; vispipe cannot "
            "download: prepare it there first (tfds build)."
        )
    keys = builder.info.supervised_keys or ("image", "label")
    if len(keys) != 2 or not all(isinstance(key, str) for key in keys):
        raise ValueError(
            f"TFDS dataset {name!r}: expected (image, label) supervised keys, got {keys!r}."
        )
    image_key, label_key = keys
    classes = list(builder.info.features[label_key].names)
    written = []
    for split, tfds_split in _TFDS_SPLITS.items():
        if tfds_split not in builder.info.splits:
            continue
        for index, example in enumerate(
            tfds.as_numpy(builder.as_dataset(split=tfds_split))
        ):
            image = example[image_key]
            class_dir = os.path.join(folder, split, classes[int(example[label_key])])
            os.makedirs(class_dir, exist_ok=True)
            Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(
                os.path.join(class_dir, f"{index:07d}.png")
            )
        written.append(split)
    if "train" not in written:
        raise ValueError(f"TFDS dataset {name!r} has no 'train' split.")
    for split in written:
        for class_name in classes:  # keep every class, even when a split lacks it
            os.makedirs(os.path.join(folder, split, class_name), exist_ok=True)
    return classes, written


def _temp_source(config: DatasetConfig, kind: str) -> Source:
    """TFDS and builtin datasets: write image folders, then read them as such."""
    folder = tempfile.mkdtemp(prefix="vispipe-source-")
    try:
        if kind == "builtin":
            from vispipe.data.builtin import write_builtin

            write_builtin(config.builtin, os.path.join(folder, "train"))
            written = ["train"]
            description = {"kind": "builtin", "builtin": config.builtin}
        else:
            if not config.tfds_data_dir:
                raise ValueError(
                    f"tfds_name={config.tfds_name!r} needs tfds_data_dir (the "
                    "folder the dataset was prepared in)."
                )
            _, written = _write_tfds(config.tfds_name, config.tfds_data_dir, folder)
            description = {
                "kind": "tfds", "tfds_name": config.tfds_name,
                "tfds_data_dir": os.path.abspath(config.tfds_data_dir),
            }
        folders = {
            f"{split}_dir": os.path.join(folder, split) if split in written else ""
            for split in SPLITS
        }
        # The folders are this function's own: nothing to confine.
        as_folders = dataclasses.replace(
            config, **folders, builtin="", tfds_name="", tfds_data_dir="", data_roots=[]
        )
        source = _folder_source(as_folders, "train_dir")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    source.description = description
    source.temp_dir = folder
    return source


def load_source(config: DatasetConfig) -> Source:
    """Lists a dataset's classes and the files of each split.

    Splits without their own folder or list are held out from the training
    images, per class, by `val_percent` / `test_percent` (deterministic for a
    given `seed`); then each split keeps at most `max_per_class` images per
    class.

    Args:
        config: The dataset job (paths already resolved; see
            `vispipe.data.archive.resolve_archive`).

    Returns:
        A `Source`; call its `cleanup()` when done.

    Raises:
        FileNotFoundError: A folder, list or listed file does not exist.
        ValueError: No source or more than one, fewer than 2 classes, bad
            percentages, or a list line with an unknown label.
        OutsideRootsError: With `data_roots`, a folder, list or file (a
            symlink's target included) outside them.

    Example:

    >>> source = load_source(DatasetConfig(source="photos", output="ds"))
    """
    kind = source_kind(config)
    if config.max_per_class < 0:
        raise ValueError(f"max_per_class: expected >= 0, got {config.max_per_class}.")
    if kind in ("source", "train_dir"):
        return _folder_source(config, kind)
    if kind == "train_list":
        return _list_source(config)
    if kind == "tfds_name" and config.tfds_data_dir:
        _inside(config.tfds_data_dir, real_roots(config.data_roots), "tfds_data_dir")
    return _temp_source(config, kind)
