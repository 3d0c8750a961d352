import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import shift

K = 20
# Natural class proportions proportional to c + 1, so "natural" splits differ from uniform.
_NATURAL = np.arange(1, K + 1) / np.arange(1, K + 1).sum()


def _labels(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice(K, size=n, p=_NATURAL).astype(np.int32)
    labels[:K] = np.arange(K)  # every class present
    return labels


TRAIN = _labels(6000, 0)
TEST = _labels(3000, 1)
KEY = jax.random.PRNGKey(0)


def _rows(split):
    return np.asarray(split.indices)[np.asarray(split.valid)]


def _hist(labels, split):
    return np.bincount(labels[_rows(split)], minlength=K)


def _splits(strategy="dirichlet_mix", key=KEY, **kwargs):
    options = dict(num_classes=K, strategy=strategy, alpha=1.0, dataset_cap=1200)
    options.update(kwargs)
    return shift.make_splits(key, TRAIN, TEST, **options)


# --- distributions and counts -----------------------------------------------------------


def test_distributions():
    np.testing.assert_allclose(shift.uniform_distribution(4), [0.25] * 4)
    np.testing.assert_allclose(shift.tweak_one_distribution(5, 2, 0.6), [0.1, 0.1, 0.6, 0.1, 0.1])
    p = shift.dirichlet_distribution(KEY, K, 0.5)
    assert p.shape == (K,) and p.dtype == jnp.float32
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5) and bool(jnp.all(p >= 0))
    np.testing.assert_array_equal(p, shift.dirichlet_distribution(KEY, K, 0.5))


@pytest.mark.parametrize(
    ("p", "size", "expected"),
    [
        ([0.25, 0.25, 0.5], 100, [25, 25, 50]),  # exact products must not round up
        ([0.1] * 10, 3000, [300] * 10),
        ([1 / 3] * 3, 300, [100] * 3),
        ([0.26, 0.74], 10, [3, 8]),  # ceil(2.6), ceil(7.4)
        ([0.999, 0.001, 0.0], 10, [10, 1, 1]),  # at least one per class
    ],
)
def test_class_counts_by_hand(p, size, expected):
    counts = shift.class_counts(jnp.asarray(p, jnp.float32), size)
    assert counts.dtype == jnp.int32
    np.testing.assert_array_equal(counts, expected)


def test_class_counts_jits():
    counts = jax.jit(shift.class_counts, static_argnums=1)(jnp.asarray([0.25, 0.75]), 100)
    np.testing.assert_array_equal(counts, [25, 75])


# --- resample_per_class -----------------------------------------------------------------


def _resample_inputs():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 300).astype(np.int32)
    candidates = rng.random(300) < 0.4
    candidates[:5] = True
    labels[:5] = np.arange(5)
    return labels, candidates, jnp.asarray([0.1, 0.2, 0.3, 0.15, 0.25])


def test_resample_per_class_counts_and_candidates():
    labels, candidates, p = _resample_inputs()
    indices, valid = shift.resample_per_class(KEY, labels, candidates, p, 60, 5)
    assert indices.shape == valid.shape == (65,)
    assert indices.dtype == jnp.int32 and valid.dtype == jnp.bool_
    expected = np.asarray(shift.class_counts(p, 60))
    valid = np.asarray(valid)
    assert valid.sum() == expected.sum() and valid[: expected.sum()].all()  # a prefix
    rows = np.asarray(indices)[valid]
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=5), expected)
    assert candidates[rows].all()
    assert np.all(np.diff(labels[rows]) >= 0)  # grouped by class
    assert np.all(np.asarray(indices)[~valid] == 0)


def test_resample_per_class_deterministic_and_jittable():
    labels, candidates, p = _resample_inputs()
    a = shift.resample_per_class(KEY, labels, candidates, p, 60, 5)
    b = shift.resample_per_class(KEY, labels, candidates, p, 60, 5)
    c = shift.resample_per_class(jax.random.PRNGKey(1), labels, candidates, p, 60, 5)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    jitted = jax.jit(shift.resample_per_class, static_argnames=("size", "num_classes"))
    d = jitted(KEY, labels, candidates, p, size=60, num_classes=5)
    np.testing.assert_array_equal(a[0], d[0])
    np.testing.assert_array_equal(a[1], d[1])


def test_resample_per_class_class_without_candidates():
    labels, candidates, p = _resample_inputs()
    candidates = candidates & (labels != 3)
    with pytest.raises(ValueError, match="class 3"):
        shift.resample_per_class(KEY, labels, candidates, p, 60, 5)
    jitted = jax.jit(shift.resample_per_class, static_argnames=("size", "num_classes"))
    indices, valid = jitted(KEY, labels, candidates, p, size=60, num_classes=5)
    rows = np.asarray(indices)[np.asarray(valid)]
    counts = np.bincount(labels[rows], minlength=5)
    assert counts[3] == 0 and candidates[rows].all()
    np.testing.assert_array_equal(np.delete(counts, 3), np.delete(shift.class_counts(p, 60), 3))


# --- strategies ---------------------------------------------------------------------------

# (warm, pool, test) restated from the reference: U uniform, N natural, T tweak-one,
# a / b / c Dirichlet draws (equal letters = the same draw).
EXPECTED = {
    "none": "UUU",
    "dirichlet": "aUU",
    "tweak": "TUU",
    "dirichlet_target": "Uaa",
    "dirichlet_online_target": "UUa",
    "dirichlet_identical": "aaa",
    "dirichlet_mix": "abb",
    "dirichlet_online": "aba",
    "dirichlet_online_source": "UaU",
    "trulynone": "NNU",
    "trulyregion": "Naa",
    "dirichlet_general": "abc",
    **{name: "abc" for name in shift.DIRICHLET_GENERAL},
}


def test_strategy_table_covers_reference():
    assert set(shift.STRATEGIES) == set(EXPECTED)
    assert shift.DIRICHLET_GENERAL["dirichlet_general_3_3_0.7"] == (3.0, 3.0, 0.7)
    assert len(shift.DIRICHLET_GENERAL) == 6


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_strategy_proportions(strategy):
    splits = _splits(strategy, tweak_label=4, tweak_rho=0.3, alpha_triple=(1.0, 2.0, 0.5))
    dists = (splits.warm_dist, splits.pool_dist, splits.test_dist)
    parts = ((splits.warm, TRAIN, 600), (splits.pool, TRAIN, 600), (splits.test, TEST, 600))
    pattern = EXPECTED[strategy]
    for symbol, dist, (split, labels, size) in zip(pattern, dists, parts, strict=True):
        assert dist.shape == (K,)
        assert float(jnp.sum(dist)) == pytest.approx(1.0, abs=1e-5)
        hist = _hist(labels, split)
        if symbol == "N":
            # Natural: distinct rows of the part, proportions as in the data.
            assert split.capacity == size and bool(jnp.all(split.valid))
            assert len(np.unique(_rows(split))) == size
            np.testing.assert_allclose(hist / size, dist, atol=1e-6)
            assert np.abs(hist / size - _NATURAL).max() < 0.04
            continue
        # Resampled: exactly the per-class counts, so proportions within 1 / size of p.
        np.testing.assert_array_equal(hist, shift.class_counts(dist, size))
        assert np.abs(hist / hist.sum() - np.asarray(dist)).max() <= (K + 1) / size
        if symbol == "U":
            np.testing.assert_allclose(dist, np.full(K, 1 / K), rtol=1e-6)
        if symbol == "T":
            np.testing.assert_allclose(dist, shift.tweak_one_distribution(K, 4, 0.3))
    for i in range(3):
        for j in range(i + 1, 3):
            if pattern[i] in "abc":
                same = np.array_equal(dists[i], dists[j])
                assert same == (pattern[i] == pattern[j]), (strategy, i, j)


def test_same_p_relations():
    mix = _splits("dirichlet_mix")
    np.testing.assert_array_equal(mix.pool_dist, mix.test_dist)
    assert not np.allclose(mix.warm_dist, mix.pool_dist)
    online = _splits("dirichlet_online")
    np.testing.assert_array_equal(online.warm_dist, online.test_dist)
    assert not np.allclose(online.warm_dist, online.pool_dist)


def test_dirichlet_general_triples():
    preset = _splits("dirichlet_general_3_3_0.1")
    general = _splits("dirichlet_general", alpha_triple=(3.0, 3.0, 0.1))
    for a, b in zip(jax.tree.leaves(preset), jax.tree.leaves(general), strict=True):
        np.testing.assert_array_equal(a, b)
    # The small test concentration gives a far more peaked test distribution.
    assert float(preset.test_dist.max()) > float(preset.warm_dist.max())
    with pytest.raises(ValueError, match="alpha_triple"):
        _splits("dirichlet_general")
    with pytest.raises(ValueError, match="alpha_triple"):
        _splits("dirichlet_general", alpha_triple=(1.0, -1.0, 1.0))


def test_sizes_follow_cap_arithmetic():
    # Natural splits show the sizes without the per-class rounding.
    natural = _splits(
        "trulynone", dataset_cap=1000, warmstart_ratio=0.5, holdout_fraction=0.2, test_size=600
    )
    assert natural.warm.capacity == 333  # round(1000 * 0.5 / 1.5)
    assert natural.pool.capacity == 667  # the rest of the cap
    assert natural.holdout.capacity == 67  # round(0.2 * 333)
    assert natural.test.capacity == 600 + K
    # Resampled splits: capacity m + k, valid size in [m, m + k]; test as large as the pool.
    splits = _splits("none", holdout_fraction=0.2)
    for split, size in (
        (splits.warm, 600),
        (splits.pool, 600),
        (splits.test, 600),
        (splits.holdout, 120),
    ):
        assert split.capacity == size + K
        assert size <= int(split.size) <= size + K
    # No holdout and no separate target by default.
    plain = _splits("none")
    assert plain.holdout.capacity == 0 and plain.target is plain.test
    assert plain.initially_labeled.shape == (plain.pool.capacity,)
    assert not bool(plain.initially_labeled.any())


def test_holdout_follows_warm_and_target_follows_test():
    splits = _splits("dirichlet_mix", holdout_fraction=0.2, target_fraction=0.4)
    hold, target = _hist(TRAIN, splits.holdout), _hist(TEST, splits.target)
    np.testing.assert_array_equal(hold, shift.class_counts(splits.warm_dist, 120))
    np.testing.assert_array_equal(target, shift.class_counts(splits.test_dist, 600))


def test_parts_are_disjoint():
    splits = _splits("dirichlet_mix", holdout_fraction=0.2, target_fraction=0.5)
    warm, hold, pool = (set(_rows(s)) for s in (splits.warm, splits.holdout, splits.pool))
    assert warm and hold and pool
    assert not (warm & pool) and not (warm & hold) and not (hold & pool)
    target, test = set(_rows(splits.target)), set(_rows(splits.test))
    assert target and test and not (target & test)
    # The parts cut the rows in the asked fractions: holdout 20% of all train rows.
    # Natural splits show the cut itself: 1200 holdout rows (20% of 6000), the other 4800
    # cut 1:1; the cap (10000 each, holdout 2000) is larger than every part.
    natural = _splits("trulynone", dataset_cap=20000, holdout_fraction=0.2, test_size=600)
    assert natural.holdout.capacity == 1200
    assert natural.warm.capacity == natural.pool.capacity == 2400


def test_trulynone_keeps_natural_splits():
    splits = _splits("trulynone")
    for split in (splits.warm, splits.pool):
        rows = _rows(split)
        assert len(rows) == len(set(rows)) == 600
    assert not set(_rows(splits.warm)) & set(_rows(splits.pool))
    np.testing.assert_allclose(splits.test_dist, np.full(K, 1 / K), rtol=1e-6)


def test_initial_prop_labels_that_fraction():
    splits = _splits("none", initial_prop=0.25)
    valid = np.asarray(splits.pool.valid)
    labeled = np.asarray(splits.initially_labeled)
    assert labeled.sum() == round(0.25 * valid.sum())
    assert not (labeled & ~valid).any()
    other = _splits("none", key=jax.random.PRNGKey(7), initial_prop=0.25)
    assert not np.array_equal(labeled, other.initially_labeled)


def test_make_splits_deterministic_in_key():
    a, b = _splits("dirichlet_mix"), _splits("dirichlet_mix")
    c = _splits("dirichlet_mix", key=jax.random.PRNGKey(5))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.warm_dist, c.warm_dist)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(alpha=0.0), "alpha"),
        (dict(strategy="dirichlet_mixed"), "strategy"),
        (dict(dataset_cap=0), "dataset_cap"),
        (dict(warmstart_ratio=-1.0), "warmstart_ratio"),
        (dict(test_size=0), "test_size"),
        (dict(holdout_fraction=1.0), "holdout_fraction"),
        (dict(target_fraction=-0.1), "target_fraction"),
        (dict(initial_prop=1.5), "initial_prop"),
        (dict(tweak_label=K), "tweak_label"),
        (dict(tweak_rho=2.0), "tweak_rho"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _splits(**kwargs)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="train_labels"):
        shift.make_splits(
            KEY, np.append(TRAIN, K), TEST, num_classes=K, strategy="none", dataset_cap=100
        )
    without_five = TRAIN[TRAIN != 5]
    with pytest.raises(ValueError, match="class 5"):
        shift.make_splits(KEY, without_five, TEST, num_classes=K, strategy="none", dataset_cap=100)
    with pytest.raises(ValueError, match="alpha"):
        shift.dirichlet_distribution(KEY, K, -1.0)
    with pytest.raises(ValueError, match="size"):
        shift.class_counts(jnp.ones(3) / 3, 0)


def test_resampled_split_order_does_not_reveal_labels():
    labels = np.repeat(np.arange(10), 50)
    splits = shift.make_splits(
        jax.random.PRNGKey(0),
        labels,
        labels,
        num_classes=10,
        strategy="none",
        dataset_cap=400,
        warmstart_ratio=1.0,
    )
    for split in (splits.warm, splits.pool, splits.test):
        valid = np.asarray(split.valid)
        assert valid[: valid.sum()].all()  # the valid slots stay a prefix
        rows = labels[np.asarray(split.indices)[valid]]
        # Grouped by class, the first 40 rows would hold 2 classes; shuffled, nearly all 10.
        assert len(np.unique(rows[:40])) >= 8
