import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import calibration

K = 5
_RNG = np.random.default_rng(0)
_TRUE_BIAS = np.array([0.6, -0.4, 0.1, -0.8, 0.5], np.float32)


def _miscalibrated(n, *, temperature=0.25, bias=_TRUE_BIAS, seed=0):
    """Labels drawn from softmax(z) and reported logits T * (z - bias): BCTS must find
    a = 1/T, b = bias (up to a constant)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, K)).astype(np.float32) * 2.0
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > np.cumsum(p, 1)).sum(1).clip(0, K - 1).astype(np.int32)
    return temperature * (z - bias), labels


def test_negative_log_likelihood_by_hand():
    logits = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    labels = np.array([0, 0], np.int32)
    params = calibration.TemperatureBias(jnp.float32(2.0), jnp.array([0.0, 1.0]), jnp.int32(0))
    # Row 1: z' = (2, 1), -log softmax_0 = log(1 + e^-1); row 2: z' = (0, 5): log(1 + e^5).
    rows = np.array([1.0, 3.0], np.float32)
    expected = (np.log1p(np.exp(-1.0)) + 3 * np.log1p(np.exp(5.0))) / 4
    got = calibration.negative_log_likelihood(params, logits, labels, rows)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_bcts_recovers_temperature_and_bias():
    logits, labels = _miscalibrated(40_000)
    fitted = calibration.fit_bcts(logits, labels)
    assert float(fitted.inverse_temperature) == pytest.approx(4.0, rel=0.03)
    # The bias is identified up to a constant shift of every class.
    b = np.asarray(fitted.bias)
    expected = 4.0 * 0.25 * _TRUE_BIAS
    np.testing.assert_allclose(b - b.mean(), expected - expected.mean(), atol=0.05)
    assert 0 < int(fitted.iterations) <= 100


def test_bcts_calibrated_probabilities_average_to_the_label_distribution():
    # The bias's stationarity condition: sum_i r_i p_cal(.|x_i) = sum_i r_i e_{y_i}.
    logits, labels = _miscalibrated(400, seed=1)
    rows = np.random.default_rng(2).integers(0, 3, size=400).astype(np.float32)
    fitted = calibration.fit_bcts(logits, labels, rows)
    mean = rows @ np.asarray(fitted.probs(logits)) / rows.sum()
    label_dist = rows @ np.eye(K)[labels] / rows.sum()
    np.testing.assert_allclose(mean, label_dist, atol=1e-4)


def test_row_weights_equal_repeated_rows():
    logits, labels = _miscalibrated(400, seed=3)
    counts = np.random.default_rng(4).permutation(np.repeat([0, 1, 2], [100, 200, 100]))
    rows = np.repeat(np.arange(400), counts)  # 400 rows again: one compilation for both
    weighted = calibration.fit_bcts(logits, labels, counts)
    repeated = calibration.fit_bcts(logits[rows], labels[rows])
    np.testing.assert_allclose(
        weighted.inverse_temperature, repeated.inverse_temperature, rtol=1e-4
    )
    np.testing.assert_allclose(weighted.bias, repeated.bias, atol=1e-4)
    # A bool mask is 0/1 row weights.
    np.testing.assert_array_equal(
        calibration.fit_bcts(logits, labels, counts > 0).bias,
        calibration.fit_bcts(logits, labels, (counts > 0).astype(np.float32)).bias,
    )


def test_temperature_scaling_and_identity():
    logits, labels = _miscalibrated(20_000, bias=np.zeros(K, np.float32), seed=5)
    ts = calibration.fit_calibration("ts", logits, labels)
    assert float(ts.inverse_temperature) == pytest.approx(4.0, rel=0.03)
    np.testing.assert_array_equal(ts.bias, np.zeros(K))
    none = calibration.fit_calibration("none", logits, labels)
    probs = jax.nn.softmax(logits[:3], axis=-1)
    np.testing.assert_allclose(none.probs(calibration.logits_from_probs(probs)), probs, atol=1e-6)
    # log-probabilities are logits: softmax(log p) = p, zeros included.
    p = np.array([[0.5, 0.5, 0.0]], np.float32)
    np.testing.assert_allclose(jax.nn.softmax(calibration.logits_from_probs(p)), p, atol=1e-30)


def test_fit_runs_under_jit_and_vmap():
    logits, labels = _miscalibrated(400, seed=6)
    rows = jnp.asarray(np.random.default_rng(7).integers(0, 2, size=(3, 400)), jnp.float32)

    def fit(r):
        return calibration.fit_bcts(logits, labels, r).inverse_temperature

    batched = jax.jit(jax.vmap(fit))(rows)
    for i in range(3):
        assert float(batched[i]) == pytest.approx(float(fit(rows[i])), rel=1e-4)


def test_bad_input_names_the_argument():
    logits, labels = _miscalibrated(400)
    with pytest.raises(ValueError, match="method='platt'"):
        calibration.fit_calibration("platt", logits, labels)
    with pytest.raises(ValueError, match="logits has non-finite entries"):
        calibration.fit_bcts(np.where(logits > 0, np.inf, logits), labels)
    with pytest.raises(ValueError, match="labels must lie in"):
        calibration.fit_bcts(logits, labels + K)
    with pytest.raises(ValueError, match="labels must hold integer"):
        calibration.fit_bcts(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match="mask must be finite and >= 0"):
        calibration.fit_bcts(logits, labels, -np.ones(400, np.float32))
    with pytest.raises(ValueError, match="max_iter"):
        calibration.fit_bcts(logits, labels, max_iter=0)
