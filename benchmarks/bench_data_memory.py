"""Peak host memory of preparing and loading a NABirds-sized dataset.

    python benchmarks/bench_data_memory.py [--images 30000] [--image-size 200] [--workdir DIR]

Writes ``nabirds.tar.gz`` with ``--images`` small synthetic photographs (each 64x48 with a
bounding box, a smooth colour field plus noise, 555 leaf classes under 228 "grand" and 22
"child" groups, about half for training) into ``DIR/downloads/manual``, then, each in a
fresh process, (1) prepares it with the real builder (crop, resize to ``--image-size``,
JPEG) and loads it, as the first run of ``configs/nabirds.py`` does, and (2) loads the
prepared dataset, as every later run does. Prints each step's wall time and peak resident
memory (``ru_maxrss`` of the child) beside the size of the uint8 image arrays.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOAD = """
import resource, sys
from alsa_jax import data
ds = data.load_dataset("nabirds", data_dir=sys.argv[1], image_size=int(sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(f"{len(ds.train_x)} train + {len(ds.test_x)} test images {ds.input_shape}, "
      f"{ds.num_classes} classes, {(ds.train_x.nbytes + ds.test_x.nbytes) / 2**30:.2f} GiB")
"""


def write_archive(path: str, images: int, seed: int = 0) -> None:
    """A NABirds-format archive of ``images`` synthetic photographs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    parents = {child: 0 for child in range(1, 23)}
    parents |= {100 + g: 1 + g % 22 for g in range(228)}
    parents |= {1000 + leaf: 100 + leaf % 228 for leaf in range(555)}
    names = {node: f"class {node}" for node in [0, *parents]}
    rows: dict[str, list[str]] = {name: [] for name in ("images", "labels", "boxes", "split")}
    yy, xx = np.mgrid[0:48, 0:64]
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for n in range(images):
            image_id = f"{n:08x}-0000-0000-0000-000000000000"
            leaf = 1000 + int(rng.integers(555))
            base = rng.integers(0, 256, 3)
            field = (base + 60 * np.sin(xx[..., None] / (5 + n % 7) + yy[..., None] / 9)) % 256
            pixels = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, format="JPEG", quality=90)
            info = tarfile.TarInfo(f"nabirds/images/{leaf:04d}/{image_id}.jpg")
            info.size = out.tell()
            out.seek(0)
            tar.addfile(info, out)
            x, y = int(rng.integers(0, 16)), int(rng.integers(0, 12))
            rows["images"].append(f"{image_id} {leaf:04d}/{image_id}.jpg")
            rows["labels"].append(f"{image_id} {leaf}")
            rows["boxes"].append(f"{image_id} {x} {y} {64 - x - 4} {48 - y - 3}")
            rows["split"].append(f"{image_id} {int(rng.random() < 0.49)}")
        texts = {
            "images.txt": rows["images"],
            "image_class_labels.txt": rows["labels"],
            "bounding_boxes.txt": rows["boxes"],
            "train_test_split.txt": rows["split"],
            "classes.txt": [f"{k} {v}" for k, v in sorted(names.items())],
            "hierarchy.txt": [f"{k} {v}" for k, v in sorted(parents.items())],
        }
        for name, lines in texts.items():
            payload = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"nabirds/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def run_child(data_dir: str, image_size: int) -> tuple[float, float, str]:
    """(seconds, peak resident GiB, printed line) of one loading process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LOAD, data_dir, str(image_size)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    peak_kib, line = done.stdout.strip().splitlines()[-2:]
    return seconds, int(peak_kib) / 2**20, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--image-size", type=int, default=200)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    data_dir = args.workdir or tempfile.mkdtemp(prefix="nabirds_memory_")
    manual = os.path.join(data_dir, "downloads", "manual")
    archive = os.path.join(manual, "nabirds.tar.gz")
    array_gib = args.images * args.image_size**2 * 3 / 2**30
    print(
        f"data_dir {data_dir}; {args.images} images of {args.image_size}x{args.image_size}x3 "
        f"uint8 = {array_gib:.2f} GiB of arrays"
    )
    if not os.path.exists(archive):
        os.makedirs(manual, exist_ok=True)
        start = time.perf_counter()
        write_archive(archive, args.images)
        print(
            f"archive: {os.path.getsize(archive) / 2**20:.0f} MiB in "
            f"{time.perf_counter() - start:.0f}s"
        )
    for step in ("prepare + load", "load"):
        seconds, peak, line = run_child(data_dir, args.image_size)
        print(f"{step:<15}{seconds:7.1f}s  peak RSS {peak:5.2f} GiB  ({line})", flush=True)


if __name__ == "__main__":
    main()
