"""The ImageNet weight files `keras.applications` publishes, and finding them.

Each zoo network with published Keras ImageNet weights has one "no top" file
per variant (MobileNetV2: per width multiplier and input size). The file
names, URLs and hashes are those of `keras.applications` (Keras 3.15), so a
file that Keras downloaded once serves vispipe too, and the other way round.

Where a file is looked for, in order:

1. `weights_dir` (`--weights-dir`, `model.weights_dir`) or else the folder
   named by `$VISPIPE_WEIGHTS_DIR`: for air-gapped clusters. A file found
   there is taken as given (no hash check: it may be a user's own copy).
2. The Keras cache, `$KERAS_HOME/models` (default `~/.keras/models`): a
   file there is checked against the published hash, and downloaded with
   `keras.utils.get_file` when missing or corrupt, exactly as
   `keras.applications` does. `keras.applications` publishes no hash for
   MobileNetV2 files; those are checked by reading every layer instead
   (see `vispipe.models.imagenet.read_weights_file`).

Example:

```python
published = published_weights("resnet50")
path = locate_weights(published)  # downloads into ~/.keras/models if needed
```
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = [
    "WEIGHTS_DIR_ENV",
    "IMAGENET_NETWORKS",
    "MOBILENET_V2_WIDTHS",
    "MOBILENET_V2_SIZES",
    "WeightsUnavailableError",
    "WeightsFileError",
    "PublishedWeights",
    "published_weights",
    "keras_cache_dir",
    "locate_weights",
]

WEIGHTS_DIR_ENV = "VISPIPE_WEIGHTS_DIR"
# Zoo networks with published ImageNet weights, and how their inputs are
# normalized (keras.applications' preprocess_input).
_PREPROCESSING = {
    "vgg16": "caffe",
    "resnet50": "caffe",
    "mobilenet_v2": "tf",
    "efficientnet_b0": "efficientnet",
}
IMAGENET_NETWORKS = tuple(_PREPROCESSING)
MOBILENET_V2_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)

_GCS = "https://storage.googleapis.com/"
_PROBE_TIMEOUT_S = 20


class WeightsUnavailableError(FileNotFoundError):
    """The weights file is neither on this machine nor downloadable."""


class WeightsFileError(ValueError):
    """A weights file exists but is corrupt, truncated or of another network."""


@dataclass(frozen=True)
class PublishedWeights:
    """One weights file as `keras.applications` publishes it.

    Attributes:
        network: The zoo network, e.g. "resnet50".
        file_name: The file's name in the Keras cache.
        url: Where Keras downloads it from.
        file_hash: Its md5 (32 hex digits) or sha256 (64), as Keras checks
            it; None where Keras publishes none (MobileNetV2).
        preprocessing: What the weights expect: "caffe" (BGR minus ImageNet
            means), "tf" ([-1, 1]) or "efficientnet" (the normalization
            stored in the file).
    """

    network: str
    file_name: str
    url: str
    file_hash: str | None
    preprocessing: str


def published_weights(
    network: str,
    width_multiplier: float = 1.0,
    image_size: tuple[int, int] = (224, 224),
) -> PublishedWeights:
    """The ImageNet weights file for a zoo network.

    Args:
        network: A zoo network name.
        width_multiplier: MobileNetV2's alpha: one of `MOBILENET_V2_WIDTHS`.
        image_size: (height, width) of the network input. MobileNetV2 has a
            file per square size in `MOBILENET_V2_SIZES`; other sizes use
            the 224 file, as `keras.applications` does.

    Returns:
        A `PublishedWeights`.

    Raises:
        ValueError: `network` has no published ImageNet weights (the message
            names those that have), or MobileNetV2 at an unpublished width.

    Example:

    ```python
    published_weights("mobilenet_v2", 0.35, (96, 96)).file_name
    # 'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5'
    ```
    """
    if network not in _PREPROCESSING:
        raise ValueError(
            f"{network} has no published ImageNet weights; networks with ImageNet "
            f"weights: {', '.join(IMAGENET_NETWORKS)}. Train {network} from scratch "
            "(no weights) or start from an earlier run (weights: RUN_DIR)."
        )
    if network != "mobilenet_v2" and width_multiplier != 1.0:
        raise ValueError(f"{network} has no width multiplier; got {width_multiplier}.")
    preprocessing = _PREPROCESSING[network]
    if network == "vgg16":
        name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return PublishedWeights(network, name, f"{_GCS}tensorflow/keras-applications/vgg16/{name}",
                                "6d6bbae143d832006294945121d1f1fc", preprocessing)
    if network == "resnet50":
        name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return PublishedWeights(network, name, f"{_GCS}tensorflow/keras-applications/resnet/{name}",
                                "4d473c1dd8becc155b73f8504c6f6626", preprocessing)
    if network == "efficientnet_b0":
        name = "efficientnetb0_notop.h5"
        return PublishedWeights(network, name, f"{_GCS}keras-applications/{name}",
                                "50bc09e76180e00e4465e1a485ddc09d", preprocessing)
    if width_multiplier not in MOBILENET_V2_WIDTHS:
        raise ValueError(
            "mobilenet_v2 ImageNet weights are published for width multipliers "
            f"{', '.join(map(str, MOBILENET_V2_WIDTHS))}; got {width_multiplier}."
        )
    height, width = image_size
    size = height if height == width and height in MOBILENET_V2_SIZES else 224
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width_multiplier)}_{size}_no_top.h5"
    return PublishedWeights(network, name, f"{_GCS}tensorflow/keras-applications/mobilenet_v2/{name}",
                            None, preprocessing)


def keras_cache_dir() -> str:
    """Where `keras.utils.get_file(..., cache_subdir="models")` keeps files.

    `$KERAS_HOME/models` (read now, not when Keras was imported), else
    `~/.keras/models`; `/tmp/.keras/models` when that is not writable, as
    Keras does.
    """
    base = os.environ.get("KERAS_HOME")
    if not base:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    base = os.path.expanduser(base)
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models")


def _file_hash(path: str, expected: str) -> str:
    hasher = hashlib.sha256() if len(expected) == 64 else hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _unreachable(url: str) -> str | None:
    """Why `url` cannot be fetched now, or None when it answers.

    A HEAD request with a timeout, so an offline machine fails in one line
    at once instead of after Keras has announced a download.
    """
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                               timeout=_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))
    return None


def locate_weights(published: PublishedWeights, weights_dir: str = "") -> str:
    """The local path of a published weights file, downloading it if needed.

    Args:
        published: The file (see `published_weights`).
        weights_dir: A folder to look in first; default `$VISPIPE_WEIGHTS_DIR`.

    Returns:
        The path of the file: in the weights folder, or in the Keras cache.

    Raises:
        WeightsUnavailableError: Not found and not downloadable; the one-line
            message names the file, its URL and where to put it.
        WeightsFileError: The cached file fails its hash check and cannot
            be downloaded again, or the download itself is corrupt.

    Example:

    ```python
    path = locate_weights(published_weights("vgg16"), "/mnt/weights")
    ```
    """
    folder = weights_dir or os.environ.get(WEIGHTS_DIR_ENV, "")
    if folder:
        candidate = os.path.join(folder, published.file_name)
        if os.path.isfile(candidate):
            return candidate
    cache = keras_cache_dir()
    cached = os.path.join(cache, published.file_name)
    corrupt = ""
    if os.path.isfile(cached):
        if published.file_hash is None:
            return cached
        actual = _file_hash(cached, published.file_hash)
        if actual == published.file_hash:
            return cached
        corrupt = (f"{cached} fails its hash check (expected {published.file_hash}, got "
                   f"{actual}): the file is corrupt or truncated")
    reason = _unreachable(published.url)
    if reason is not None:
        places = f"{cache}" + (f" or {folder}" if folder else
                               f" or a folder given by --weights-dir / ${WEIGHTS_DIR_ENV}")
        if corrupt:
            raise WeightsFileError(
                f"{corrupt}, and it cannot be downloaded again from {published.url} "
                f"({reason}). Replace it with a good copy of {published.file_name} in {places}."
            )
        raise WeightsUnavailableError(
            f"ImageNet weights for {published.network} need {published.file_name}, which is "
            f"not on this machine and cannot be downloaded from {published.url} ({reason}); "
            f"put the file in {places}."
        )
    import keras

    try:
        return keras.utils.get_file(published.file_name, published.url, cache_subdir="models",
                                    file_hash=published.file_hash,
                                    cache_dir=os.path.dirname(cache))
    except ValueError as error:  # Keras' hash check of the download.
        raise WeightsFileError(f"Downloading {published.url}: {error}") from None
    except Exception as error:  # noqa: BLE001 (Keras raises bare Exception on fetch failures)
        raise WeightsUnavailableError(
            f"Downloading {published.file_name} from {published.url} failed ({error}); put the "
            f"file in {cache} or a folder given by --weights-dir / ${WEIGHTS_DIR_ENV}."
        ) from None
