import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score

from alsa_jax import metrics


def _onehot_probs(pred, k):
    return np.eye(k, dtype=np.float32)[pred] * 0.9 + 0.1 / k


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    probs = jnp.asarray(_onehot_probs(pred, 3))
    out = metrics.classification_metrics(probs, jnp.asarray(labels))
    # correct: rows 0, 2, 3, 5 -> 4/6.
    assert out["accuracy"] == pytest.approx(4 / 6)
    np.testing.assert_allclose(out["per_class_accuracy"], [0.5, 1.0, 0.5], rtol=1e-6)
    assert out["average_class_accuracy"] == pytest.approx(2 / 3)
    for average in ("macro", "micro", "weighted"):
        expected = f1_score(labels, pred, average=average)
        assert float(out[f"f1_{average}"]) == pytest.approx(expected, rel=1e-6)


def test_macro_f1_counts_predicted_only_classes_like_sklearn():
    labels = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])  # class 2 predicted, never true
    out = metrics.classification_metrics(jnp.asarray(_onehot_probs(pred, 3)), jnp.asarray(labels))
    assert float(out["f1_macro"]) == pytest.approx(f1_score(labels, pred, average="macro"))


def test_bad_probabilities_and_labels_name_the_argument():
    with pytest.raises(ValueError, match="probs"):
        metrics.classification_metrics(jnp.ones((2, 3)), jnp.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        metrics.classification_metrics(jnp.ones((2, 3)) / 3, jnp.array([0, 3]))


def test_mask_drops_rows_and_absent_classes():
    labels = jnp.array([0, 1, 2, 2])
    probs = jnp.asarray(_onehot_probs(np.array([0, 0, 2, 2]), 3))
    mask = jnp.array([True, False, True, True])
    out = metrics.classification_metrics(probs, labels, mask)
    assert out["accuracy"] == pytest.approx(1.0)
    # Class 1 is absent from the masked rows: excluded from the class average.
    assert out["average_class_accuracy"] == pytest.approx(1.0)


def test_top_k_accuracy():
    probs = jnp.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    labels = jnp.array([0, 1, 2])
    assert metrics.top_k_accuracy(probs, labels, top_k=1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(probs, labels, top_k=2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(probs, labels, top_k=3) == pytest.approx(1.0)


def test_source_shift_by_hand():
    p = jnp.array([0.5, 0.25, 0.25])
    q = jnp.array([0.25, 0.25, 0.5])
    # ratios 0.5, 1, 2 -> sqrt(0.25 + 0 + 1)
    assert metrics.source_shift(p, q) == pytest.approx(np.sqrt(1.25))
    # uniform: ratios 2/3, 4/3, 4/3 -> sqrt(1/9 + 1/9 + 1/9)
    assert metrics.uniform_source_shift(p) == pytest.approx(np.sqrt(3 / 9), rel=1e-6)
    assert metrics.source_shift(q, q) == pytest.approx(0.0)
    assert np.isinf(metrics.source_shift(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5])))


def test_jit_matches_eager():
    rng = np.random.default_rng(0)
    probs = jnp.asarray(rng.dirichlet(np.ones(4), size=50).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 4, 50))
    eager = metrics.classification_metrics(probs, labels)
    jitted = jax.jit(metrics.classification_metrics)(probs, labels)
    for key in eager:
        np.testing.assert_allclose(eager[key], jitted[key], rtol=1e-6)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="labels"):
        metrics.classification_metrics(jnp.ones((3, 2)) / 2, jnp.zeros(4, dtype=jnp.int32))
    with pytest.raises(ValueError, match="target_dist"):
        metrics.source_shift(jnp.ones(3) / 3, jnp.ones(2) / 2)


def test_confusion_counts_are_predicted_by_true_like_the_joint_confusion():
    from alsa_jax import label_shift

    labels = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([1, 0, 1, 2, 0, 2])
    probs = jnp.asarray(_onehot_probs(pred, 3))
    counts = metrics.confusion_counts(probs, jnp.asarray(labels))
    # M[i, j]: predicted i, true j. Row 0 holds the rows predicted 0: true 0 once, true 2 once.
    np.testing.assert_array_equal(counts, [[1, 0, 1], [1, 1, 0], [0, 0, 2]])
    np.testing.assert_allclose(
        counts / counts.sum(), label_shift.confusion_matrix(probs, jnp.asarray(labels)), atol=1e-7
    )
    assert not hasattr(metrics, "count_confusion")  # the [true, predicted] name is gone
