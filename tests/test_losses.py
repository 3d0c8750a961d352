import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alsa_jax import losses


def test_weighted_cross_entropy_by_hand():
    # Row 0: logits (0, 0), label 0 -> CE = ln 2. Row 1: logits (ln 3, 0), label 1 ->
    # p = (3/4, 1/4), CE = ln 4. Row 2 is padding (mask 0) and must not count.
    logits = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])
    labels = jnp.array([0, 1, 1])
    weights = jnp.array([2.0, 0.5, 7.0])
    mask = jnp.array([True, True, False])
    # (2 ln 2 + 0.5 ln 4) / 2 real rows = 1.5 ln 2.
    expected = 1.5 * math.log(2.0)
    assert float(losses.weighted_cross_entropy(logits, labels, weights, mask)) == pytest.approx(
        expected, rel=1e-6
    )
    jitted = jax.jit(losses.weighted_cross_entropy)(logits, labels, weights, mask)
    assert float(jitted) == pytest.approx(expected, rel=1e-6)
    # Without a mask all three rows count: + 7 * CE_2 with
    # CE_2 = -log softmax(5, -5)[1] = log(1 + e^10).
    all_rows = (2 * math.log(2) + 0.5 * math.log(4) + 7 * math.log1p(math.exp(10.0))) / 3
    assert float(losses.weighted_cross_entropy(logits, labels, weights)) == pytest.approx(
        all_rows, rel=1e-5
    )


def test_all_padding_gives_zero_and_padding_cannot_leak_nan():
    logits = jnp.array([[jnp.nan, 0.0], [1.0, 2.0]])
    labels = jnp.array([0, 1])
    weights = jnp.ones(2)
    assert float(losses.weighted_cross_entropy(logits, labels, weights, jnp.zeros(2))) == 0.0
    only_second = losses.weighted_cross_entropy(logits, labels, weights, jnp.array([0, 1]))
    assert float(only_second) == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="logits"):
        losses.weighted_cross_entropy(jnp.zeros(3), jnp.zeros(3, int), jnp.ones(3))
    with pytest.raises(ValueError, match="same length"):
        losses.weighted_cross_entropy(jnp.zeros((3, 2)), jnp.zeros(2, int), jnp.ones(3))
    with pytest.raises(ValueError, match="mask"):
        losses.weighted_cross_entropy(
            jnp.zeros((3, 2)), jnp.zeros(3, int), jnp.ones(3), jnp.ones(4)
        )


_jitted_loss = jax.jit(losses.weighted_cross_entropy)
_jitted_ce = jax.jit(optax.softmax_cross_entropy_with_integer_labels)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 10.0))
def test_unit_weights_are_the_mean_and_weights_scale_linearly(seed, scale):
    rng = np.random.default_rng(seed)
    n = 12
    logits = jnp.asarray(rng.normal(size=(n, 4)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 4, n))
    mean_ce = np.mean(_jitted_ce(logits, labels))
    ones = jnp.ones(n)
    np.testing.assert_allclose(_jitted_loss(logits, labels, ones, ones), mean_ce, rtol=1e-5)
    weights = jnp.asarray(rng.uniform(0, 3, n).astype(np.float32))
    base = _jitted_loss(logits, labels, weights, ones)
    scaled = _jitted_loss(logits, labels, jnp.float32(scale) * weights, ones)
    np.testing.assert_allclose(scaled, scale * base, rtol=1e-5, atol=1e-7)
