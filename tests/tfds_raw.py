"""Tiny datasets written in the raw formats that the TFDS builders read.

- MNIST: the four ``*-idx?-ubyte.gz`` files (big-endian idx headers, then uint8 rows);
- CIFAR-10 / CIFAR-100: the *binary* tarballs TFDS downloads (``cifar-10-binary.tar.gz``:
  ``cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``, ``batches.meta.txt``,
  each record one label byte then 3072 bytes of planar RGB; CIFAR-100 records carry a coarse
  and a fine label byte), not torchvision's pickles;
- NABirds: ``nabirds.tar.gz`` with ``nabirds/images/<dir>/<id>.jpg`` and the six text files.

Files go into a TFDS manual dir. The official checksums of the real downloads cannot match
these files, so :func:`register_checksums` records theirs in place of TFDS's, as
``DownloadConfig(register_checksums=True)`` would; everything else (the manual-dir lookup,
extraction, the builder's parsing, writing and reading) is TFDS's real code path.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import struct
import tarfile

import numpy as np


def write_mnist(manual_dir, train_x, train_y, test_x, test_y) -> None:
    """The four MNIST idx.gz files of ``[N, 28, 28]`` uint8 images and ``[N]`` labels."""
    os.makedirs(manual_dir, exist_ok=True)
    for prefix, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        with gzip.open(os.path.join(manual_dir, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, len(x), 28, 28))
            f.write(np.asarray(x, np.uint8).tobytes())
        with gzip.open(os.path.join(manual_dir, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(struct.pack(">II", 2049, len(y)))
            f.write(np.asarray(y, np.uint8).tobytes())


def _cifar_records(x: np.ndarray, *label_columns: np.ndarray) -> bytes:
    """Binary CIFAR records: the label bytes, then the image as planar R, G, B rows."""
    x = np.asarray(x, np.uint8)
    labels = np.stack([np.asarray(c, np.uint8) for c in label_columns], axis=1)
    planar = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
    return np.concatenate([labels, planar], axis=1).tobytes()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar10(manual_dir, train_x, train_y, test_x, test_y, names) -> None:
    """``cifar-10-binary.tar.gz``: the training rows spread over the five batch files."""
    os.makedirs(manual_dir, exist_ok=True)
    path = os.path.join(manual_dir, "cifar-10-binary.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for i, rows in enumerate(np.array_split(np.arange(len(train_x)), 5), start=1):
            payload = _cifar_records(train_x[rows], train_y[rows])
            _add(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", payload)
        _add(tar, "cifar-10-batches-bin/test_batch.bin", _cifar_records(test_x, test_y))
        _add(tar, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(names) + "\n").encode())


def write_cifar100(
    manual_dir, train_x, train_y, test_x, test_y, fine_names, coarse_names, coarse_of
) -> None:
    """``cifar-100-binary.tar.gz``; ``coarse_of[fine]`` gives each record's coarse label."""
    os.makedirs(manual_dir, exist_ok=True)
    coarse_of = np.asarray(coarse_of)
    path = os.path.join(manual_dir, "cifar-100-binary.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _add(tar, f"cifar-100-binary/{split}.bin", _cifar_records(x, coarse_of[y], y))
        for file, names in (("fine", fine_names), ("coarse", coarse_names)):
            _add(
                tar, f"cifar-100-binary/{file}_label_names.txt", ("\n".join(names) + "\n").encode()
            )


@dataclasses.dataclass
class BirdPhoto:
    """One NABirds image: its id, leaf class, split, bounding box and pixels."""

    image_id: str
    leaf: int
    train: bool
    box: tuple[int, int, int, int]  # x, y, width, height
    pixels: np.ndarray  # [H, W, 3] uint8


def jpeg(pixels: np.ndarray) -> bytes:
    """JPEG bytes at quality 100 without chroma subsampling, so that colours do not bleed
    across a bounding box's edge."""
    from PIL import Image

    out = io.BytesIO()
    image = Image.fromarray(np.asarray(pixels, np.uint8))
    image.save(out, format="JPEG", quality=100, subsampling=0)
    return out.getvalue()


def nabirds_texts(
    photos: list[BirdPhoto], class_names: dict[int, str], parents: dict[int, int]
) -> dict[str, str]:
    """The six text files, in NABirds' formats, for ``photos``."""
    rows = {
        "images.txt": [f"{p.image_id} {p.leaf:04d}/{p.image_id}.jpg" for p in photos],
        "image_class_labels.txt": [f"{p.image_id} {p.leaf}" for p in photos],
        "bounding_boxes.txt": [f"{p.image_id} {' '.join(map(str, p.box))}" for p in photos],
        "train_test_split.txt": [f"{p.image_id} {int(p.train)}" for p in photos],
        "classes.txt": [f"{i} {name}" for i, name in sorted(class_names.items())],
        "hierarchy.txt": [f"{child} {parent}" for child, parent in sorted(parents.items())],
    }
    return {name: "\n".join(lines) + "\n" for name, lines in rows.items()}


def write_nabirds(
    manual_dir,
    photos: list[BirdPhoto],
    class_names: dict[int, str],
    parents: dict[int, int],
    *,
    texts_first: bool = False,
) -> str:
    """``nabirds.tar.gz`` as distributed: a top folder ``nabirds/`` with images/ and the
    text files (after the images unless ``texts_first``). Returns the archive's path."""
    os.makedirs(manual_dir, exist_ok=True)
    path = os.path.join(manual_dir, "nabirds.tar.gz")
    texts = nabirds_texts(photos, class_names, parents)
    with tarfile.open(path, "w:gz") as tar:
        entries = [
            (f"nabirds/images/{p.leaf:04d}/{p.image_id}.jpg", jpeg(p.pixels)) for p in photos
        ]
        text_entries = [(f"nabirds/{name}", body.encode()) for name, body in texts.items()]
        entries = text_entries + entries if texts_first else entries + text_entries
        for name, payload in entries:
            _add(tar, name, payload)
    return path


def register_checksums(monkeypatch, builder_name: str, manual_dir) -> None:
    """Make TFDS accept the tiny files in ``manual_dir`` as the downloads of ``builder_name``.

    TFDS validates each download against the size and sha256 recorded for its URL; this
    records those of the generated files (same URLs and file names) for this test only.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums

    cls = tfds.builder_cls(builder_name)
    infos = {}
    for url, info in cls.url_infos.items():
        path = os.path.join(manual_dir, info.filename)
        if os.path.exists(path):
            infos[url] = dataclasses.replace(
                checksums.compute_url_info(path), filename=info.filename
            )
    monkeypatch.setattr(cls, "url_infos", infos)
    monkeypatch.setattr(checksums, "get_all_url_infos", lambda: {})
