"""Dataset creation from camera-sized photos: vispipe against a one-process Pillow script.

Makes photo-sized JPEGs from the shared CIFAR-10 images (`bench/photos.py`:
500x375 and 1024x768, quality 90), then, for each target size, times in the
same run:

- baseline: one process that opens, converts to RGB, resizes (bilinear) and
  encodes each photo as PNG with Pillow's defaults, writing the bytes to one
  file: what a script would do;
- vispipe: `create_dataset` (squash resize, PNG records, all splits, mean
  image, statistics), with its default worker count (one per core), and with
  one worker to separate the per-image savings from the parallelism.

TensorFlow (which `create_dataset` needs for its TFRecordWriter) is imported
before timing: a one-off of a few seconds, not a per-image cost.

It also checks the pixels: the PSNR of vispipe's draft (DCT-scaled) decode +
resize against a full decode + the same resize, on a sample of the photos.
Prints one JSON object; `vispipe_images_per_s`, `baseline_images_per_s` and
`ratio` sum over all target sizes, `sizes` has each one.

Usage:

    python bench/dataset_create.py --photos 3000 --sizes 128,224
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from photos import PhotoSet, make_photos  # noqa: E402
from vispipe.configs import DatasetConfig, ImageOptions  # noqa: E402
from vispipe.data.create import create_dataset  # noqa: E402
from vispipe.data.images import load_image, resize  # noqa: E402


def _photo_paths(photos: PhotoSet) -> list[str]:
    return sorted(
        os.path.join(photos.root, label, name)
        for label in os.listdir(photos.root)
        for name in os.listdir(os.path.join(photos.root, label))
    )


def baseline(paths: list[str], size: int, out: str) -> tuple[float, float]:
    """The one-process Pillow script; returns (seconds, mean PNG bytes)."""
    total = 0
    start = time.perf_counter()
    with open(out, "wb") as f:
        for path in paths:
            with Image.open(path) as image:
                small = image.convert("RGB").resize((size, size), Image.BILINEAR)
            buffer = io.BytesIO()
            small.save(buffer, format="PNG")
            total += f.write(buffer.getvalue())
    return time.perf_counter() - start, total / len(paths)


def vispipe(photos: PhotoSet, size: int, out: str, workers: int) -> tuple[float, float]:
    """`create_dataset` on the photos; returns (seconds, mean record bytes)."""
    start = time.perf_counter()
    info = create_dataset(DatasetConfig(
        source=photos.root, output=out, val_percent=0.0, overwrite=True, workers=workers,
        image=ImageOptions(height=size, width=size, channels=3, resize_mode="squash", encoding="png"),
    ), progress=False)
    seconds = time.perf_counter() - start
    shard_bytes = sum(os.path.getsize(os.path.join(out, name)) for name in info.shards["train"])
    return seconds, shard_bytes / info.split_counts["train"]


def psnr(paths: list[str], size: int) -> dict[str, float]:
    """PSNR (dB) of vispipe's decode + resize against a full decode + resize."""
    options = ImageOptions(height=size, width=size, channels=3)
    values = []
    for path in paths:
        fast, _ = load_image(path, options)
        with Image.open(path) as image:
            full = resize(image.convert("RGB"), size, size)
        mse = np.mean((fast.astype(np.float64) - full.astype(np.float64)) ** 2)
        values.append(99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
    return {"psnr_db_min": round(float(min(values)), 2), "psnr_db_mean": round(float(np.mean(values)), 2),
            "psnr_sample": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=3000, help="photos to make and convert")
    parser.add_argument("--sizes", default="128,224", help="target sizes (square), comma-separated")
    parser.add_argument("--psnr-sample", type=int, default=100, help="photos compared with a full decode")
    parser.add_argument("--work-dir", help="keep the generated photos here (default: a temporary folder)")
    parser.add_argument("--no-one-worker", action="store_true", help="skip the one-worker vispipe run")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="vispipe-dscreate-") as tmp:
        photos = make_photos(args.work_dir or tmp, args.photos)
        paths = _photo_paths(photos)
        sample = random.Random(0).sample(paths, min(args.psnr_sample, len(paths)))
        import tensorflow  # noqa: F401  (the parent's TFRecordWriter; a one-off, not per image)
        load_before = os.getloadavg()
        report: dict = {"sizes": {}}
        totals = {"baseline": 0.0, "vispipe": 0.0}
        for size in sizes:
            row: dict = {}
            base_s, base_bytes = baseline(paths, size, os.path.join(tmp, f"baseline-{size}.bin"))
            vis_s, vis_bytes = vispipe(photos, size, os.path.join(tmp, f"ds-{size}"), workers=0)
            row["baseline_images_per_s"] = round(len(paths) / base_s, 1)
            row["vispipe_images_per_s"] = round(len(paths) / vis_s, 1)
            row["ratio"] = round(base_s / vis_s, 3)
            if not args.no_one_worker:
                one_s, _ = vispipe(photos, size, os.path.join(tmp, f"ds1-{size}"), workers=1)
                row["vispipe_one_worker_images_per_s"] = round(len(paths) / one_s, 1)
                row["ratio_one_worker"] = round(base_s / one_s, 3)
            row["baseline_png_bytes_mean"] = round(base_bytes)
            row["vispipe_record_bytes_mean"] = round(vis_bytes)
            row.update(psnr(sample, size))
            report["sizes"][str(size)] = row
            totals["baseline"] += base_s
            totals["vispipe"] += vis_s
            print(f"{size}: {row}", file=sys.stderr)
        count = len(paths) * len(sizes)
        report = {
            "vispipe_images_per_s": round(count / totals["vispipe"], 1),
            "baseline_images_per_s": round(count / totals["baseline"], 1),
            "ratio": round(totals["baseline"] / totals["vispipe"], 3),
            **report,
            "photos": len(paths),
            "photo_sizes": [f"{w}x{h}" for w, h in photos.sizes],
            "photo_bytes_mean": photos.mean_bytes,
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
