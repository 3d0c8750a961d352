"""NABirds (Cornell Lab, 48,562 photographs of 555 North American bird classes) for TFDS.

The archive ``nabirds.tar.gz`` is a manual download (its terms must be accepted at
https://dl.allaboutbirds.org/nabirds); put it, or the folder it unpacks to, into the
TFDS manual dir (``<data_dir>/downloads/manual/`` by default). The builder reads

- ``images/<dir>/<file>.jpg`` and ``images.txt`` (image id -> path under images/),
- ``image_class_labels.txt`` (image id -> leaf class id),
- ``bounding_boxes.txt`` (image id -> x y width height, pixels),
- ``train_test_split.txt`` (image id -> 1 train / 0 test),
- ``classes.txt`` (class id -> name) and ``hierarchy.txt`` (child id -> parent id),

crops every photograph to its bounding box, resizes the shorter side to ``image_size``
(bilinear, as torchvision's ``Resize(image_size)`` on a PIL image), centre-crops the
longer side to a square ``image_size x image_size`` (static shapes: the original kept the
aspect ratio, so its random 150-crops of ``Resize(200)`` could reach past this square
along the longer side; its centre crops never do) and stores it as a JPEG. Each example
carries its leaf label and the labels of its ``child`` and ``grand`` ancestors
(:func:`group_map`), each a ``ClassLabel`` with the names from classes.txt.

Everything here runs without TensorFlow: the archive is read with :mod:`tarfile` and the
images with PIL, and TFDS writes ``array_record`` files that ``tfds.data_source`` reads back.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

ARCHIVE = "nabirds.tar.gz"
TEXT_FILES = (
    "images.txt",
    "image_class_labels.txt",
    "bounding_boxes.txt",
    "train_test_split.txt",
    "classes.txt",
    "hierarchy.txt",
)
GRANULARITIES = ("child", "grand", "leaf")
# Depth below the root of each granularity's groups ("leaf" keeps every leaf class).
_DEPTH = {"child": 1, "grand": 2}
DEFAULT_IMAGE_SIZE = 200
JPEG_QUALITY = 95
# Per-channel statistics of NABirds images in [0, 1], as the original normalises them.
MEAN = (0.4914650835697064, 0.5085243837960608, 0.4645163551378643)
STD = (0.21973885890785005, 0.21845246127991116, 0.2653730619212676)


# ---------------------------------------------------------------------------------------
# The text files and the class hierarchy (pure functions, no TFDS).


def parse_table(text: str, name: str, columns: int) -> dict[str, list[str]]:
    """Rows of a whitespace-separated NABirds text file: first field -> the other fields.

    ``columns`` is the number of fields after the key; classes.txt passes ``-1`` (the rest
    of the line is one name with spaces). Blank lines are skipped; a short row raises a
    one-line ``ValueError`` naming the file and line.
    """
    rows: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split() if columns >= 0 else line.strip().split(maxsplit=1)
        if not fields:
            continue
        if columns >= 0 and len(fields) != columns + 1:
            raise ValueError(
                f"{name} line {number} has {len(fields)} fields, expected {columns + 1}: "
                f"{line.strip()!r}"
            )
        rows[fields[0]] = fields[1:] if columns >= 0 else [" ".join(fields[1:])]
    return rows


def parse_hierarchy(text: str) -> dict[int, int]:
    """hierarchy.txt (``child_id parent_id`` per line) as a ``{child: parent}`` dict."""
    return {
        int(child): int(parent[0])
        for child, parent in parse_table(text, "hierarchy.txt", 1).items()
    }


def ancestors(parents: Mapping[int, int], node: int) -> list[int]:
    """The path from the root down to ``node`` (``[root, ..., node]``) in ``parents``.

    The root is the node without a parent. Raises a one-line ``ValueError`` on a cycle.
    """
    path = [node]
    while path[-1] in parents:
        path.append(parents[path[-1]])
        if len(path) > len(parents) + 1:
            raise ValueError(f"hierarchy.txt has a cycle through class {node}")
    return path[::-1]


def group_map(
    parents: Mapping[int, int], leaves: list[int] | np.ndarray, granularity: str
) -> dict[int, int]:
    """Leaf class id -> its group's class id at ``granularity``.

    ``child``: the ancestor one level below the root of hierarchy.txt (NABirds: 22 groups);
    ``grand``: the ancestor two levels below the root (NABirds: 228 groups); ``leaf``: the
    class itself. A leaf shallower than the level is its own group (the original dropped
    such leaves and then failed on their images; NABirds has none). All leaves must hang
    under one root.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"dataset.label_granularity={granularity!r} is not known; use one of "
            f"{', '.join(map(repr, GRANULARITIES))}"
        )
    leaves = [int(leaf) for leaf in leaves]
    if granularity == "leaf":
        return {leaf: leaf for leaf in leaves}
    paths = {leaf: ancestors(parents, leaf) for leaf in leaves}
    roots = sorted({path[0] for path in paths.values()})
    if len(roots) > 1:
        raise ValueError(
            f"hierarchy.txt has several roots {roots[:5]}: every class must descend from one root"
        )
    depth = _DEPTH[granularity]
    return {leaf: path[min(depth, len(path) - 1)] for leaf, path in paths.items()}


def renumber(groups: Mapping[int, int]) -> tuple[dict[int, int], list[int]]:
    """``({leaf: 0..K-1}, [group id of each new label])``: groups numbered in id order."""
    ids = sorted(set(groups.values()))
    index = {group: i for i, group in enumerate(ids)}
    return {leaf: index[group] for leaf, group in groups.items()}, ids


@dataclasses.dataclass(frozen=True)
class Annotations:
    """The six text files of NABirds, parsed.

    ``images``: image id -> path under images/; ``labels``: image id -> leaf class id;
    ``boxes``: image id -> (x, y, width, height); ``is_train``: image id -> bool;
    ``class_names``: class id -> name; ``parents``: class id -> parent class id.
    """

    images: dict[str, str]
    labels: dict[str, int]
    boxes: dict[str, tuple[int, int, int, int]]
    is_train: dict[str, bool]
    class_names: dict[int, str]
    parents: dict[int, int]

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> Annotations:
        """Parse the text files (``texts[filename]`` = file contents)."""
        images = {k: v[0] for k, v in parse_table(texts["images.txt"], "images.txt", 1).items()}
        labels = {
            k: int(v[0])
            for k, v in parse_table(
                texts["image_class_labels.txt"], "image_class_labels.txt", 1
            ).items()
        }
        boxes = {
            k: tuple(int(float(f)) for f in v)
            for k, v in parse_table(texts["bounding_boxes.txt"], "bounding_boxes.txt", 4).items()
        }
        is_train = {
            k: v[0] == "1"
            for k, v in parse_table(
                texts["train_test_split.txt"], "train_test_split.txt", 1
            ).items()
        }
        names = {
            int(k): v[0] for k, v in parse_table(texts["classes.txt"], "classes.txt", -1).items()
        }
        for field, table in (
            ("image_class_labels.txt", labels),
            ("bounding_boxes.txt", boxes),
            ("train_test_split.txt", is_train),
        ):
            missing = sorted(set(images) - set(table))
            if missing:
                raise ValueError(f"{field} has no row for image {missing[0]} of images.txt")
        return cls(images, labels, boxes, is_train, names, parse_hierarchy(texts["hierarchy.txt"]))

    def leaf_classes(self) -> list[int]:
        """The leaf class ids that label at least one image, in id order."""
        return sorted(set(self.labels.values()))


def crop_and_resize(image: Any, box: tuple[int, int, int, int], size: int) -> Any:
    """Crop a PIL image to ``box`` = (x, y, w, h), clipped to the image; resize the shorter
    side to ``size`` (bilinear); centre-crop the longer side to ``size``. Returns an RGB
    PIL image of ``size x size``.
    """
    from PIL import Image

    image = image.convert("RGB")
    x, y, w, h = box
    left, top = max(0, x), max(0, y)
    right, bottom = min(image.width, x + w), min(image.height, y + h)
    if right - left < 1 or bottom - top < 1:  # an empty box: keep the whole photograph
        left, top, right, bottom = 0, 0, image.width, image.height
    image = image.crop((left, top, right, bottom))
    width, height = image.size
    # torchvision's Resize(int): the shorter side becomes `size`, the other int(size * ratio).
    if width <= height:
        new_size = (size, max(size, int(size * height / width)))
    else:
        new_size = (max(size, int(size * width / height)), size)
    image = image.resize(new_size, Image.BILINEAR)
    # torchvision's CenterCrop offsets: int(round((side - size) / 2)).
    left = int(round((image.width - size) / 2.0))
    top = int(round((image.height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


# ---------------------------------------------------------------------------------------
# Reading the manual download: the archive (streamed) or the folder it unpacks to.


def find_source(manual_dir: str | os.PathLike) -> str | None:
    """The NABirds download inside ``manual_dir``: ``nabirds.tar.gz``, or an unpacked
    folder (``manual_dir`` itself or ``manual_dir/nabirds``) holding images.txt; None if absent.
    """
    manual_dir = os.fspath(manual_dir)
    archive = os.path.join(manual_dir, ARCHIVE)
    if os.path.isfile(archive):
        return archive
    for folder in (os.path.join(manual_dir, "nabirds"), manual_dir):
        if os.path.isfile(os.path.join(folder, "images.txt")):
            return folder
    return None


def _text_name(path: str) -> str | None:
    """The text file's name if ``path`` (inside the archive) is one of TEXT_FILES."""
    base = path.rsplit("/", 1)[-1]
    if base in TEXT_FILES and "images/" not in path:
        return base
    return None


def read_texts(source: str) -> dict[str, str]:
    """The six text files of the download ``source`` (archive or folder)."""
    texts: dict[str, str] = {}
    if os.path.isdir(source):
        for name in TEXT_FILES:
            path = os.path.join(source, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    texts[name] = f.read()
    else:
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                name = _text_name(member.name) if member.isfile() else None
                if name and name not in texts:
                    texts[name] = tar.extractfile(member).read().decode("utf-8")
                    if len(texts) == len(TEXT_FILES):
                        break
    missing = [name for name in TEXT_FILES if name not in texts]
    if missing:
        raise ValueError(f"{source} lacks {', '.join(missing)}; is it the NABirds download?")
    return texts


def iter_images(source: str, wanted: Mapping[str, str]) -> Iterator[tuple[str, bytes]]:
    """``(image id, JPEG bytes)`` for each image whose path under images/ is in ``wanted``
    (path -> image id), in archive (or sorted path) order; one streaming pass."""
    if os.path.isdir(source):
        for path in sorted(wanted):
            with open(os.path.join(source, "images", path), "rb") as f:
                yield wanted[path], f.read()
        return
    with tarfile.open(source, mode="r|*") as tar:
        for member in tar:
            if not member.isfile() or "images/" not in member.name:
                continue
            path = member.name.split("images/", 1)[1]
            if path in wanted:
                yield wanted[path], tar.extractfile(member).read()


# ---------------------------------------------------------------------------------------
# The TFDS builder.


@dataclasses.dataclass
class NabirdsConfig(tfds.core.BuilderConfig):
    """A stored image size: every image is ``image_size x image_size x 3`` uint8."""

    image_size: int = DEFAULT_IMAGE_SIZE


def builder_config(image_size: int) -> NabirdsConfig:
    """The config that stores images at ``image_size`` (named ``"<image_size>px"``)."""
    for config in Nabirds.BUILDER_CONFIGS:
        if config.image_size == image_size:
            return config
    return NabirdsConfig(name=f"{image_size}px", image_size=image_size)


class Nabirds(tfds.core.GeneratorBasedBuilder):
    """NABirds cropped to bounding boxes, with leaf / child / grand labels."""

    name = "nabirds"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Bounding-box crops, square, with child and grand labels."}
    BUILDER_CONFIGS = [
        NabirdsConfig(name="200px", image_size=200, description="The paper's stored size."),
        NabirdsConfig(name="32px", image_size=32, description="Small images for CPU runs."),
    ]
    DEFAULT_CONFIG_NAME = "200px"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {ARCHIVE} from https://dl.allaboutbirds.org/nabirds (accept the terms) "
        "and put it, or the folder it unpacks to, into the manual dir."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                    "image_id": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(),
                    "child": tfds.features.ClassLabel(),
                    "grand": tfds.features.ClassLabel(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://dl.allaboutbirds.org/nabirds",
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        source = find_source(dl_manager.manual_dir)
        if source is None:
            raise ValueError(
                f"no {ARCHIVE} in {dl_manager.manual_dir}; {self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        notes = Annotations.from_texts(read_texts(source))
        leaves = notes.leaf_classes()
        self._labels = {}
        for granularity in GRANULARITIES:
            numbers, ids = renumber(group_map(notes.parents, leaves, granularity))
            self._labels[granularity] = numbers
            key = "label" if granularity == "leaf" else granularity
            self.info.features[key].names = [notes.class_names.get(i, str(i)) for i in ids]
        return {
            "train": self._generate_examples(source, notes, True),
            "test": self._generate_examples(source, notes, False),
        }

    def _generate_examples(
        self, source: str, notes: Annotations, train: bool
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from PIL import Image

        size = self.builder_config.image_size
        wanted = {
            path: image_id
            for image_id, path in notes.images.items()
            if notes.is_train[image_id] == train
        }
        found = 0
        for image_id, raw in iter_images(source, wanted):
            found += 1
            with Image.open(io.BytesIO(raw)) as photo:
                crop = crop_and_resize(photo, notes.boxes[image_id], size)
            encoded = io.BytesIO()
            crop.save(encoded, format="JPEG", quality=JPEG_QUALITY)
            leaf = notes.labels[image_id]
            yield (
                image_id,
                {
                    "image": encoded.getvalue(),
                    "image_id": image_id,
                    "label": self._labels["leaf"][leaf],
                    "child": self._labels["child"][leaf],
                    "grand": self._labels["grand"][leaf],
                },
            )
        if found != len(wanted):
            split = "train" if train else "test"
            raise ValueError(
                f"{source} holds {found} of the {len(wanted)} {split} images that images.txt "
                "lists; the download is incomplete"
            )
