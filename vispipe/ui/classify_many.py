"""Classify many: an uploaded list or archive, a `vispipe classify` job, its results.

A request is a folder `<run>/classify-<stamp>/` that keeps everything on disk:

- `request.json`: `{"source": upload name, "kind": "list" | "archive",
  "names": [shown name per image], "notes": [...], "top_k": k}`;
- `images/`: an archive's image files, under names made here (the names in
  the archive are only ever shown, never used as paths);
- `inputs.txt`: the list file of `vispipe classify`, one `path [class id]`
  line per image;
- `predictions.csv`: what the job (`vispipe classify --run RUN inputs.txt
  --out predictions.csv`) writes, one row per image in input order, read
  back with `vispipe.evaluate.read_predictions_csv` and scored with the
  evaluate stage's own functions.

Example:

```python
request = prepare_request(data, "digits.zip", classes, settings.data_roots, folder,
                          settings.max_upload_bytes, top_k=5)
argv = classify_argv(run_dir, folder)  # its config: {"evaluate": {"top_k": request.top_k}}
results = read_results(folder, classes)  # None until the job has written its CSV
```
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from vispipe.evaluate.classify import (IMAGE_EXTENSIONS, Prediction, accuracy,
                                       read_predictions_csv)
from vispipe.evaluate.metrics import confusion_matrix
from vispipe.fileio import write_json_atomic
from vispipe.ui.settings import UnsafeInputError, confine

__all__ = ["MAX_IMAGES", "MAX_ARCHIVE_ENTRIES", "BadUpload", "Request", "Row", "Results",
           "prepare_request", "read_request", "classify_argv", "read_results", "input_paths"]

# Images of one list (an archive is bounded by MAX_ARCHIVE_ENTRIES).
MAX_IMAGES = 100_000
# Entries of any kind (files, folders, links) read from one archive: a tar.gz of
# 100,000 empty members is 470 KB, and reading its headers alone takes seconds.
MAX_ARCHIVE_ENTRIES = 20_000
# A small compressed archive may unpack to far more than the upload limit;
# this many times the limit is the most that is unpacked.
UNPACK_FACTOR = 8
_MAX_LIST_ERRORS = 5
REQUEST_FILE = "request.json"
INPUTS_FILE = "inputs.txt"
PREDICTIONS_FILE = "predictions.csv"


class BadUpload(ValueError):
    """An upload that cannot be classified; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """What was uploaded, as stored in `request.json`."""

    source: str
    kind: str
    names: list[str]
    notes: list[str]
    top_k: int

    @property
    def count(self) -> int:
        return len(self.names)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _label_of(token: str, classes: Sequence[str]) -> int | None:
    """The class id a list's last word names (a class name or id), else None."""
    if token in classes:
        return list(classes).index(token)
    if token.lstrip("-").isdigit():
        return int(token)
    return None


def _parse_list(text: str, classes: Sequence[str],
                roots: list[str]) -> list[tuple[str, int | None, str]]:
    """`(confined path, class id or None, path as written)` per line of a list.

    The grammar is `vispipe classify`'s: `path [label]`, the label a class
    name or id; `#` starts a comment line. Relative paths are relative to
    the first data root.
    """
    entries, errors = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        label, path = None, line
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2:
            label = _label_of(parts[1], classes)
            if label is not None:
                path = parts[0]
                if not 0 <= label < len(classes):
                    errors.append(f"line {number}: label {label} is out of range; expected a "
                                  f"class id in [0, {len(classes)}) or a class name")
                    continue
        try:
            entries.append((confine(path, roots, f"line {number}"), label, path))
        except UnsafeInputError as error:
            errors.append(str(error).rstrip("."))
        if len(errors) >= _MAX_LIST_ERRORS:
            break
    if errors:
        raise BadUpload("The list cannot be used: " + "; ".join(errors) + ".")
    return entries


def _archive_members(data: bytes, max_bytes: int) -> Iterator[tuple[str, bytes]] | None:
    """`(name, bytes)` of every regular file of a zip or tar archive, else None.

    Raises:
        BadUpload: A file over `max_bytes`, all files over
            `UNPACK_FACTOR * max_bytes`, or more than `MAX_ARCHIVE_ENTRIES`
            entries (413); each found while reading, before going on.
    """
    limit = UNPACK_FACTOR * max_bytes
    too_big = BadUpload(f"The archive unpacks to more than {limit} bytes, or holds a file over "
                        f"{max_bytes} bytes; expected at most {UNPACK_FACTOR}x the upload limit "
                        "in all and the upload limit per file.", status=413)
    too_many = BadUpload(f"The archive holds more than {MAX_ARCHIVE_ENTRIES} entries; expected "
                         f"at most {MAX_ARCHIVE_ENTRIES} (classify more images at once with a "
                         "list of paths inside the data roots).", status=413)
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        archive = zipfile.ZipFile(buffer)
        if len(archive.infolist()) > MAX_ARCHIVE_ENTRIES:
            raise too_many
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if sum(i.file_size for i in infos) > limit or any(i.file_size > max_bytes for i in infos):
            raise too_big

        def zip_files():
            for info in infos:
                with archive.open(info) as f:
                    content = f.read(info.file_size + 1)
                if len(content) > info.file_size:  # A size the archive lied about.
                    raise too_big
                yield info.filename, content
        return zip_files()
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError:
        return None

    def tar_files():
        # Every header is read, and the limits checked, before a file is written: a
        # compressed bomb stops at the first limit it passes, having cost no disk.
        for count, member in enumerate(archive, start=1):
            if count > MAX_ARCHIVE_ENTRIES:
                raise too_many
            if member.offset_data + member.size > limit or member.size > max_bytes:
                raise too_big
        for member in archive.getmembers():
            if member.isfile():
                yield member.name, archive.extractfile(member).read()
    return tar_files()


def _unpack(members: Iterator[tuple[str, bytes]], classes: Sequence[str],
            folder: str) -> tuple[list[tuple[str, int | None, str]], list[str]]:
    """Writes an archive's images under made-up names; labels from class folders.

    An image whose parent folder is named like a class of the model is
    labelled with that class, so both a folder of class sub-folders and a
    folder of plain images work.
    """
    images = os.path.join(folder, "images")
    os.makedirs(images)
    entries, skipped, other_folders = [], 0, set()
    try:
        for name, content in members:
            parts = [p for p in posixpath.normpath(name).split("/") if p not in ("", ".")]
            # Hidden files (".x", "../x") and macOS resource forks are not images.
            if not parts or not _is_image(parts[-1]) or any(p.startswith(".") for p in parts) \
                    or parts[0] == "__MACOSX":
                skipped += 1
                continue
            parent = parts[-2] if len(parts) > 1 else ""
            label = list(classes).index(parent) if parent in classes else None
            if label is None and parent:
                other_folders.add(parent)
            extension = os.path.splitext(parts[-1])[1].lower()
            path = os.path.join(images, f"{len(entries):06d}{extension}")
            with open(path, "wb") as f:
                f.write(content)
            entries.append((path, label, "/".join(parts)))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        raise BadUpload(f"The archive is damaged: {error}", status=415) from None
    notes = []
    if skipped:
        notes.append(f"{skipped} files were left out: not images (by extension), hidden, or "
                     "outside the archive's top folder")
    labelled = any(label is not None for _, label, _ in entries)
    if labelled and other_folders:
        shown = ", ".join(sorted(other_folders)[:10])
        notes.append(f"images in folders that are not classes of this model are unlabelled: "
                     f"{shown}")
    return entries, notes


def prepare_request(data: bytes, filename: str, classes: Sequence[str], roots: list[str],
                    folder: str, max_bytes: int, top_k: int) -> Request:
    """Checks an upload and writes the request folder for a `vispipe classify` job.

    Args:
        data: The uploaded bytes: a zip or tar (optionally compressed)
            archive of images, or a UTF-8 text list of `path [label]` lines.
        filename: The upload's name (shown only).
        classes: The model's class names.
        roots: Data roots; a list's paths must lie inside one of them.
        folder: The new request folder (must not exist yet).
        max_bytes: The upload limit.
        top_k: Classes reported per image.

    Returns:
        The `Request`, also written to `folder/request.json`.

    Raises:
        BadUpload: Too big (413), neither archive nor text (415), a path
            outside the data roots or a bad label (400), or no images (400).
    """
    if len(data) > max_bytes:
        raise BadUpload(f"Upload {filename!r} is {len(data)} bytes; expected at most {max_bytes}.",
                        status=413)
    os.makedirs(folder)
    try:
        return _prepare(data, filename, classes, roots, folder, max_bytes, top_k)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # No half-written request stays behind.
        raise


def _prepare(data: bytes, filename: str, classes: Sequence[str], roots: list[str], folder: str,
             max_bytes: int, top_k: int) -> Request:
    members = _archive_members(data, max_bytes)
    if members is not None:
        kind = "archive"
        entries, notes = _unpack(members, classes, folder)
        if not entries:
            raise BadUpload(f"The archive {filename!r} holds no image files; expected files "
                            f"ending in {', '.join(IMAGE_EXTENSIONS)}.")
    else:
        kind, notes = "list", []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = "\0"
        if "\0" in text:
            raise BadUpload(f"Upload {filename!r} is neither a UTF-8 text list nor a zip or tar "
                            "archive.", status=415)
        entries = _parse_list(text, classes, roots)
        if not entries:
            raise BadUpload(f"The list {filename!r} holds no image paths; expected lines "
                            "'path [label]'.")
        if len(entries) > MAX_IMAGES:
            raise BadUpload(f"The list holds {len(entries)} images; expected at most "
                            f"{MAX_IMAGES}.", status=413)
    with open(os.path.join(folder, INPUTS_FILE), "w", encoding="utf-8") as f:
        for path, label, _ in entries:
            f.write(path if label is None else f"{path} {label}")
            f.write("\n")
    request = Request(source=filename, kind=kind, names=[name for _, _, name in entries],
                      notes=notes, top_k=top_k)
    write_json_atomic(os.path.join(folder, REQUEST_FILE), request.__dict__)
    return request


def read_request(folder: str) -> Request:
    """The `Request` of a request folder."""
    with open(os.path.join(folder, REQUEST_FILE), encoding="utf-8") as f:
        return Request(**json.load(f))


def classify_argv(run_dir: str, folder: str) -> list[str]:
    """The `vispipe classify` operands of a request folder (`evaluate.top_k` is its config)."""
    return ["classify", "--run", run_dir, os.path.join(folder, INPUTS_FILE),
            "--out", os.path.join(folder, PREDICTIONS_FILE)]


def input_paths(folder: str) -> list[str]:
    """The image path of each row, in order (as `vispipe classify` reads `inputs.txt`)."""
    return [p.path for p in read_predictions_csv(os.path.join(folder, PREDICTIONS_FILE))]


@dataclass(frozen=True)
class Row:
    """One classified image: its `Prediction` and the name it was uploaded under."""

    index: int
    name: str
    prediction: Prediction

    @property
    def label(self) -> str | None:
        return self.prediction.label

    @property
    def predicted(self) -> str | None:
        return self.prediction.predicted

    @property
    def probability(self) -> float | None:
        return self.prediction.probability

    @property
    def error(self) -> str:
        return self.prediction.error or ""

    @property
    def top(self) -> list[tuple[str, float]]:
        return self.prediction.top

    @property
    def correct(self) -> bool | None:
        return self.prediction.correct


@dataclass
class Results:
    """The results of a finished request.

    Attributes:
        rows: Every image, in input order.
        accuracy: Top-1 accuracy over labelled, classified images (None
            without labels), as `vispipe.evaluate.accuracy` gives it.
        labelled: Labelled, classified images.
        errors: Images that could not be classified.
        matrix_classes: Classes of the confusion matrix: those that occur
            as a label or a prediction of a labelled image, in model order.
        confusion: `[true][predicted]` counts over `matrix_classes` (the
            rows and columns of `vispipe.evaluate.metrics.confusion_matrix`
            that are not all zero).
        best: Per predicted class (model order), its most probable images.
    """

    rows: list[Row]
    accuracy: float | None
    labelled: int
    errors: int
    matrix_classes: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    best: dict[str, list[Row]] = field(default_factory=dict)


def _confusion(predictions: Sequence[Prediction], classes: Sequence[str]
               ) -> tuple[list[str], list[list[int]]]:
    """The confusion matrix of the judged predictions, over the classes that occur."""
    judged = [p for p in predictions if p.correct is not None]
    if not judged:
        return [], []
    index = {name: i for i, name in enumerate(classes)}
    cm = confusion_matrix(np.array([index[p.label] for p in judged]),
                          np.array([index[p.predicted] for p in judged]), len(classes))
    present = np.flatnonzero(cm.sum(axis=0) + cm.sum(axis=1))
    return [classes[i] for i in present], cm[np.ix_(present, present)].tolist()


def read_results(folder: str, classes: Sequence[str], per_class: int = 6) -> Results | None:
    """The results of a request folder, or None while the job has not written them.

    Args:
        folder: The request folder.
        classes: The model's class names (the order of matrices and lists).
        per_class: Images shown per predicted class.

    Raises:
        ValueError: A predictions file that is not `vispipe classify`'s, or
            that names a class the model does not have.
    """
    path = os.path.join(folder, PREDICTIONS_FILE)
    if not os.path.isfile(path):
        return None
    names = read_request(folder).names
    predictions = read_predictions_csv(path)
    unknown = {p.label for p in predictions} | {p.predicted for p in predictions}
    unknown -= set(classes) | {None}
    if unknown:
        raise ValueError(f"{path}: classes {sorted(unknown)} are not the model's.")
    rows = [Row(i, names[i] if i < len(names) else p.path, p) for i, p in enumerate(predictions)]
    matrix_classes, confusion = _confusion(predictions, list(classes))
    results = Results(rows=rows, accuracy=accuracy(predictions),
                      labelled=sum(p.correct is not None for p in predictions),
                      errors=sum(bool(p.error) for p in predictions),
                      matrix_classes=matrix_classes, confusion=confusion)
    order = {name: i for i, name in enumerate(classes)}
    for name in sorted({r.predicted for r in rows} - {None}, key=order.__getitem__):
        by_probability = sorted((r for r in rows if r.predicted == name),
                                key=lambda r: -r.probability)
        results.best[name] = by_probability[:per_class]
    return results
