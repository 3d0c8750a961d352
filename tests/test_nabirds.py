import os
import subprocess
import sys

import numpy as np
import pytest
import tfds_raw
from PIL import Image

from alsa_jax import data
from alsa_jax.datasets import nabirds

# A hand-written hierarchy with leaves at several depths under root 0:
#   0 -> 1 -> 10 -> {100, 101};  1 -> 11 -> 110
#   0 -> 2 -> 20 -> 200 -> 2000; 2 -> 21 (a leaf two levels down)
#   0 -> 3 (a leaf one level down)
PARENTS = {
    1: 0, 2: 0, 3: 0, 10: 1, 11: 1, 20: 2, 21: 2,
    100: 10, 101: 10, 110: 11, 200: 20, 2000: 200,
}  # fmt: skip
LEAVES = [100, 101, 110, 2000, 21, 3]
NAMES = {0: "Birds", 1: "Perching", 2: "Waterbirds", 3: "Owls", 10: "Finches", 11: "Wrens"}
NAMES |= {20: "Ducks", 21: "Loons", 100: "House Finch", 101: "Purple Finch"}
NAMES |= {110: "Marsh Wren", 200: "Teal", 2000: "Green-winged Teal"}

EXPECTED_GROUPS = {
    "child": {100: 1, 101: 1, 110: 1, 2000: 2, 21: 2, 3: 3},
    "grand": {100: 10, 101: 10, 110: 11, 2000: 20, 21: 21, 3: 3},
    "leaf": {leaf: leaf for leaf in LEAVES},
}


def _original_class_map(parents, leaves, granularity):
    """The original's change_class_map (alsa/datasets/nabirds.py), transcribed: walk each
    node up until its parent is one of the children (or grandchildren) of the root;
    renumber the distinct targets in sorted order. Leaves shallower than the level are
    dropped there."""
    hierarchy = {str(k): str(v) for k, v in parents.items()}
    child_map = {k: [] for k in hierarchy}
    child_map["0"] = []
    for k, v in hierarchy.items():
        child_map[v].append(k)
    stop = child_map["0"]
    if granularity == "grand":
        stop = [g for child in child_map["0"] for g in child_map[child]]
    parent_map = dict(hierarchy)
    parent_map["0"] = "0"
    changed = True
    while changed:
        changed = False
        for k, v in parent_map.items():
            if v in stop or v == "0":
                continue
            changed = True
            parent_map[k] = parent_map[v]
    label_map = {int(k): int(v) for k, v in parent_map.items() if v != "0"}
    uniq = sorted(set(label_map.values()))
    return {leaf: uniq.index(label_map[leaf]) for leaf in leaves if leaf in label_map}


@pytest.mark.parametrize("granularity", ["child", "grand", "leaf"])
def test_group_map_on_a_hierarchy_with_leaves_at_several_depths(granularity):
    groups = nabirds.group_map(PARENTS, LEAVES, granularity)
    assert groups == EXPECTED_GROUPS[granularity]
    numbers, ids = nabirds.renumber(groups)
    assert ids == sorted(set(EXPECTED_GROUPS[granularity].values()))
    assert sorted(set(numbers.values())) == list(range(len(ids)))
    assert all(ids[numbers[leaf]] == groups[leaf] for leaf in LEAVES)


@pytest.mark.parametrize("granularity", ["child", "grand"])
def test_group_map_equals_the_original_where_the_original_defines_one(granularity):
    # The original maps the leaves at least as deep as the level (and drops the others).
    deep = [100, 101, 110, 2000] if granularity == "grand" else [100, 101, 110, 2000, 21]
    original = _original_class_map(PARENTS, deep, granularity)
    ours, _ = nabirds.renumber(nabirds.group_map(PARENTS, deep, granularity))
    assert ours == original


def test_hierarchy_errors_are_one_line():
    with pytest.raises(ValueError, match="cycle"):
        nabirds.group_map({1: 2, 2: 1}, [1], "child")
    with pytest.raises(ValueError, match="several roots"):
        nabirds.group_map({1: 0, 5: 4}, [1, 5], "child")
    with pytest.raises(ValueError, match="label_granularity='species'"):
        nabirds.group_map(PARENTS, LEAVES, "species")
    with pytest.raises(ValueError, match="hierarchy.txt line 2 has 3 fields"):
        nabirds.parse_hierarchy("1 0\n2 0 7\n")


def test_crop_and_resize_known_geometry():
    # Pixel value = column index in channel 0, row index in channel 1.
    rows, cols = np.mgrid[0:30, 0:40]
    image = np.stack([cols, rows, np.zeros_like(rows)], -1).astype(np.uint8)
    # Box x=5, y=3, w=12, h=20: the shorter side (12) already has the size, so no resize;
    # the centre 12 of the 20 rows start at round(8 / 2) = 4.
    out = np.asarray(nabirds.crop_and_resize(Image.fromarray(image), (5, 3, 12, 20), 12))
    np.testing.assert_array_equal(out, image[7:19, 5:17])
    # A box reaching past the image is clipped to it.
    out = np.asarray(nabirds.crop_and_resize(Image.fromarray(image), (30, 20, 50, 50), 10))
    np.testing.assert_array_equal(out, image[20:30, 30:40])
    # Halving: a 24 x 16 box to 8 -> 12 x 8, centre columns 2..10.
    out = nabirds.crop_and_resize(Image.fromarray(image), (0, 0, 24, 16), 8)
    assert out.size == (8, 8)


# 18 box colours, each channel 20, 120 or 235: far from each other and from the grey.
PALETTE = [c for c in np.ndindex(3, 3, 3) if c != (1, 1, 1)][:18]
PALETTE = [tuple(int((20, 120, 235)[i]) for i in c) for c in PALETTE]


def _photos():
    """One photo per (leaf, split), each of its own colour inside its box, grey outside."""
    photos, rng = [], np.random.default_rng(0)
    for n, (leaf, train) in enumerate((leaf, train) for leaf in LEAVES for train in (1, 1, 0)):
        height, width = int(rng.integers(24, 40)), int(rng.integers(24, 40))
        x, y = int(rng.integers(0, 8)), int(rng.integers(0, 8))
        w, h = int(rng.integers(12, width - x)), int(rng.integers(12, height - y))
        pixels = np.full((height, width, 3), 128, np.uint8)
        pixels[y : y + h, x : x + w] = PALETTE[n]
        photos.append(tfds_raw.BirdPhoto(f"{n:08x}-id", leaf, bool(train), (x, y, w, h), pixels))
    return photos


def _snap(colour, tolerance=30):
    """The palette levels of a stored mean colour (JPEG moves saturated colours ~20)."""
    levels = np.array([20, 120, 235])
    nearest = [int(levels[np.argmin(np.abs(levels - c))]) for c in colour]
    assert max(abs(a - b) for a, b in zip(nearest, colour, strict=True)) <= tolerance, colour
    return tuple(nearest)


def _assert_crops_and_labels(ds, photos, granularity):
    """Each stored image is its photo's box (one palette colour, none of the grey outside)
    with the label of its leaf's group."""
    numbers, _ = nabirds.renumber(nabirds.group_map(PARENTS, LEAVES, granularity))
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        got = sorted(
            (_snap(img.reshape(-1, 3).mean(0)), int(label)) for img, label in zip(x, y, strict=True)
        )
        want = sorted(
            (PALETTE[n], numbers[p.leaf])
            for n, p in enumerate(photos)
            if p.train == (split == "train")
        )
        assert got == want
        # Every pixel is near its image's colour: a grey pixel (128) would be >= 107 off
        # in a channel at 20 or 235, which every palette colour has.
        pixels = x.reshape(len(x), -1, 3).astype(int)
        assert np.abs(pixels - pixels.mean(1, keepdims=True)).max() <= 40


@pytest.fixture
def nabirds_archive(tmp_path):
    photos = _photos()
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_nabirds(manual, photos, NAMES, PARENTS)
    return str(tmp_path), photos


@pytest.mark.parametrize("granularity", ["child", "grand", "leaf"])
def test_nabirds_prepared_from_the_archive_cropped_and_labelled(nabirds_archive, granularity):
    data_dir, photos = nabirds_archive
    ds = data.load_dataset(
        "nabirds", data_dir=data_dir, label_granularity=granularity, image_size=16
    )
    assert ds.train_x.shape == (12, 16, 16, 3) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (6, 16, 16, 3)
    assert (ds.mean, ds.std) == (nabirds.MEAN, nabirds.STD)
    groups = sorted(set(EXPECTED_GROUPS[granularity].values()))
    assert ds.num_classes == len(groups)
    assert ds.class_names == tuple(NAMES[g] for g in groups)
    _assert_crops_and_labels(ds, photos, granularity)


def test_nabirds_from_an_unpacked_folder_matches_the_archive(tmp_path, nabirds_archive):
    data_dir, photos = nabirds_archive
    folder = tmp_path / "unpacked" / "nabirds"
    for name, body in tfds_raw.nabirds_texts(photos, NAMES, PARENTS).items():
        os.makedirs(folder, exist_ok=True)
        (folder / name).write_text(body)
    for p in photos:
        os.makedirs(folder / "images" / f"{p.leaf:04d}", exist_ok=True)
        (folder / "images" / f"{p.leaf:04d}" / f"{p.image_id}.jpg").write_bytes(
            tfds_raw.jpeg(p.pixels)
        )
    from_archive = data.load_dataset("nabirds", data_dir=data_dir, image_size=16)
    from_folder = data.load_dataset(
        "nabirds",
        data_dir=str(tmp_path / "other"),
        manual_dir=str(tmp_path / "unpacked"),
        image_size=16,
    )
    order = lambda ds: np.lexsort(ds.train_x.reshape(len(ds.train_x), -1).T)  # noqa: E731
    a, b = order(from_archive), order(from_folder)
    np.testing.assert_array_equal(from_archive.train_x[a], from_folder.train_x[b])
    np.testing.assert_array_equal(from_archive.train_y[a], from_folder.train_y[b])


def test_nabirds_is_prepared_and_read_without_tensorflow(nabirds_archive):
    data_dir, photos = nabirds_archive
    # A fresh interpreter that sees TensorFlow as not installed.
    script = (
        "import sys\n"
        "from importlib.machinery import PathFinder\n"
        "find = PathFinder.find_spec\n"
        "def hide(name, path=None, target=None):\n"
        "    return None if name.split('.')[0] == 'tensorflow' else find(name, path, target)\n"
        "PathFinder.find_spec = hide\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('tensorflow') is None\n"
        "import numpy as np\n"
        "from alsa_jax import data\n"
        f"ds = data.load_dataset('nabirds', data_dir={data_dir!r}, image_size=16)\n"
        "assert 'tensorflow' not in sys.modules\n"
        "np.save(sys.argv[1], ds.train_x); np.save(sys.argv[2], ds.train_y)\n"
    )
    out_x, out_y = os.path.join(data_dir, "x.npy"), os.path.join(data_dir, "y.npy")
    subprocess.run([sys.executable, "-c", script, out_x, out_y], check=True)
    ds = data.load_dataset("nabirds", data_dir=data_dir, image_size=16)
    np.testing.assert_array_equal(np.load(out_x), ds.train_x)
    np.testing.assert_array_equal(np.load(out_y), ds.train_y)


def test_nabirds_sizes_are_separate_configs(nabirds_archive):
    data_dir, _ = nabirds_archive
    small = data.load_dataset("nabirds", data_dir=data_dir, image_size=8)
    assert small.input_shape == (8, 8, 3)
    assert os.path.isdir(os.path.join(data_dir, "nabirds", "8px"))
    assert nabirds.builder_config(200).name == "200px"
    assert nabirds.builder_config(32) is nabirds.builder_config(32)


def test_nabirds_archive_missing_an_image_is_refused(tmp_path):
    photos = _photos()
    manual = tmp_path / "downloads" / "manual"
    tfds_raw.write_nabirds(manual, photos[1:], NAMES, PARENTS)  # image 0 absent ...
    texts = tfds_raw.nabirds_texts(photos, NAMES, PARENTS)  # ... but listed
    archive = manual / "nabirds.tar.gz"
    import io
    import tarfile

    with tarfile.open(archive, "w:gz") as tar:
        for p in photos[1:]:
            payload = tfds_raw.jpeg(p.pixels)
            info = tarfile.TarInfo(f"nabirds/images/{p.leaf:04d}/{p.image_id}.jpg")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, body in texts.items():
            info = tarfile.TarInfo(f"nabirds/{name}")
            info.size = len(body.encode())
            tar.addfile(info, io.BytesIO(body.encode()))
    with pytest.raises(ValueError, match="holds 11 of the 12 train images"):
        data.load_dataset("nabirds", data_dir=str(tmp_path), image_size=16)


def test_bad_nabirds_options(tmp_path):
    with pytest.raises(ValueError, match="dataset.label_granularity"):
        data.load_dataset("nabirds", data_dir=str(tmp_path), label_granularity="family")
    with pytest.raises(ValueError, match="dataset.image_size"):
        data.load_dataset("nabirds", data_dir=str(tmp_path), image_size=4)


def test_prepare_command(nabirds_archive, tmp_path, capsys):
    from alsa_jax.datasets.__main__ import main

    data_dir, _ = nabirds_archive
    assert main(["nabirds", "--data_dir", data_dir, "--image_size", "16", "--offline"]) == 0
    assert "nabirds is prepared in" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(data_dir, "nabirds", "16px", "1.0.0", "dataset_info.json"))
    empty = str(tmp_path / "empty")
    assert main(["nabirds", "--data_dir", empty, "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset.name='nabirds' is not prepared") and err.count("\n") == 1
