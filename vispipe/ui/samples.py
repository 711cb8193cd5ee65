"""Sample images of a dataset, read from its TFRecord shards without TensorFlow.

The dataset page shows a few images of each class as they were stored (after
resizing), so the shards are read directly: a TFRecord file is a sequence of
`length (uint64) | CRC (uint32) | data | CRC (uint32)` records, and each
record is a `tf.train.Example` with the features of `vispipe.data.format`,
decoded here with a minimal protobuf reader (the inverse of
`vispipe.data.create.serialize_example`).

Example:

```python
index = sample_index(info, "train", per_class=4)
png = sample_png(*index[3][0])  # the first sample of class 3
```
"""

from __future__ import annotations

import functools
import io
import os
import struct
from typing import Iterator

import numpy as np

from vispipe.data.format import (FEATURE_CHANNELS, FEATURE_FORMAT, FEATURE_HEIGHT,
                                 FEATURE_IMAGE, FEATURE_LABEL, FEATURE_WIDTH, DatasetInfo)
from vispipe.data.roots import is_within

__all__ = ["iter_records", "read_record", "parse_example", "sample_index", "sample_png"]

_HEADER = struct.Struct("<QI")
# A class rarer than this many records into the split shows fewer samples;
# the scan stays well under a second.
MAX_SCANNED = 20_000
THUMB_PX = 96


def iter_records(path: str) -> Iterator[tuple[int, bytes]]:
    """`(offset, data)` of each record of an uncompressed TFRecord file.

    Raises:
        ValueError: The file ends inside a record.
    """
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            if not f.peek(1):
                return
            yield offset, _read_next(f, path)


def read_record(path: str, offset: int) -> bytes:
    """The data of the record starting at byte `offset` of a TFRecord file."""
    with open(path, "rb") as f:
        f.seek(offset)
        return _read_next(f, path)


def _read_next(f, path: str) -> bytes:
    """The data of the record at `f`'s position; leaves `f` after its CRC."""
    offset = f.tell()
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise ValueError(f"{path}: truncated record header at byte {offset}.")
    length, _ = _HEADER.unpack(header)
    data = f.read(length)
    if len(data) < length:
        raise ValueError(f"{path}: truncated record at byte {offset}.")
    f.seek(4, 1)  # The data's CRC.
    return data


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buffer):
            raise ValueError("Truncated protobuf varint.")
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buffer: bytes) -> Iterator[tuple[int, int | bytes]]:
    """`(field number, value)` of a protobuf message: ints for varints, bytes for the rest."""
    pos = 0
    while pos < len(buffer):
        key, pos = _varint(buffer, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buffer, pos)
        elif wire == 2:
            length, pos = _varint(buffer, pos)
            value, pos = buffer[pos:pos + length], pos + length
        elif wire in (1, 5):  # fixed64, fixed32 (float_list values)
            size = 8 if wire == 1 else 4
            value, pos = buffer[pos:pos + size], pos + size
        else:
            raise ValueError(f"Unsupported protobuf wire type {wire}.")
        yield number, value


def parse_example(data: bytes) -> dict[str, bytes | int]:
    """The first value of each bytes or int64 feature of a serialized `tf.train.Example`."""
    features: dict[str, bytes | int] = {}
    for number, message in _fields(data):  # Example.features
        if number != 1:
            continue
        for entry_number, entry in _fields(message):  # Features.feature (map entries)
            if entry_number != 1:
                continue
            key, feature = "", b""
            for field_number, value in _fields(entry):
                if field_number == 1:
                    key = value.decode("utf-8")
                elif field_number == 2:
                    feature = value
            for kind, values in _fields(feature):
                if kind == 1:  # bytes_list
                    found = [v for n, v in _fields(values) if n == 1]
                    if found:
                        features[key] = found[0]
                elif kind == 3:  # int64_list, packed or not
                    for n, v in _fields(values):
                        if n == 1:
                            features[key] = v if isinstance(v, int) else _varint(v, 0)[0]
                            break
    return features


@functools.lru_cache(maxsize=16)
def _index(path: str, content_hash: str, shards: tuple[str, ...], num_classes: int,
           per_class: int) -> dict[int, list[tuple[str, int]]]:
    del path, content_hash  # Part of the cache key: a rewritten dataset is scanned again.
    found: dict[int, list[tuple[str, int]]] = {}
    full, scanned = 0, 0
    for shard in shards:
        for offset, data in iter_records(shard):
            label = int(parse_example(data).get(FEATURE_LABEL, -1))
            taken = found.setdefault(label, [])
            if len(taken) < per_class:
                taken.append((shard, offset))
                full += len(taken) == per_class
            scanned += 1
            if full >= num_classes or scanned >= MAX_SCANNED:
                return found
    return found


def sample_index(info: DatasetInfo, split: str, per_class: int) -> dict[int, list[tuple[str, int]]]:
    """Where the first `per_class` images of each class of a split are.

    Returns:
        Per label id, `(shard path, record offset)` pairs (fewer for a class
        that has fewer images, or none within the first `MAX_SCANNED`
        records).

    Raises:
        ValueError: `dataset.json` names a shard outside the dataset folder
            (it is never read).
    """
    folder = os.path.realpath(info.path)
    shards = tuple(info.shard_paths(split))
    for shard in shards:
        if not is_within(os.path.realpath(shard), folder):
            raise ValueError(f"shard {shard!r} is outside the dataset folder {folder!r}.")
    return _index(info.path, info.content_hash, shards, info.num_classes, per_class)


def sample_png(shard: str, offset: int) -> bytes:
    """The image of one record as a PNG, at most `THUMB_PX` pixels on a side."""
    from PIL import Image

    example = parse_example(read_record(shard, offset))
    encoded = example[FEATURE_IMAGE]
    if example.get(FEATURE_FORMAT) == b"raw":
        shape = (example[FEATURE_HEIGHT], example[FEATURE_WIDTH], example[FEATURE_CHANNELS])
        pixels = np.frombuffer(encoded, np.uint8).reshape(shape)
        image = Image.fromarray(pixels[..., 0] if shape[2] == 1 else pixels)
    else:
        image = Image.open(io.BytesIO(encoded))
    image.thumbnail((THUMB_PX, THUMB_PX))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
