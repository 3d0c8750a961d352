import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import acquisition

KEY = jax.random.PRNGKey(0)

# Three rows over k = 3: uniform, one-hot, and (0.5, 0.3, 0.2).
PROBS = jnp.array([[1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0], [0.5, 0.3, 0.2]])

# s = 4 passes over n = 2 rows, k = 2 classes.
# Row 0: every pass says (0.9, 0.1): votes [0, 0, 0, 0].
# Row 1: passes (1, 0), (1, 0), (1, 0), (0, 1): votes [0, 0, 0, 1].
MC = jnp.array(
    [
        [[0.9, 0.1], [1.0, 0.0]],
        [[0.9, 0.1], [1.0, 0.0]],
        [[0.9, 0.1], [1.0, 0.0]],
        [[0.9, 0.1], [0.0, 1.0]],
    ]
)


def test_entropy_known_values():
    expected = [
        math.log(3),
        0.0,
        -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)),
    ]
    np.testing.assert_allclose(acquisition.entropy(PROBS), expected, rtol=1e-6, atol=1e-7)


def test_margin_and_least_confidence_known_values():
    # 1 - (top1 - top2): 1 - 0 = 1; 1 - (1 - 0) = 0; 1 - (0.5 - 0.3) = 0.8.
    np.testing.assert_allclose(acquisition.margin(PROBS), [1.0, 0.0, 0.8], atol=1e-6)
    # 1 - max p: 2/3, 0, 0.5.
    np.testing.assert_allclose(acquisition.least_confidence(PROBS), [2 / 3, 0.0, 0.5], atol=1e-6)


def test_bald_zero_when_passes_agree_and_log2_for_opposite_confident_passes():
    agree = jnp.tile(PROBS[None], (5, 1, 1))
    np.testing.assert_allclose(acquisition.bald(agree), 0.0, atol=1e-6)
    opposite = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(acquisition.bald(opposite), [math.log(2)], rtol=1e-6)
    # Row 1 of MC: mean (0.75, 0.25), each pass has entropy 0 -> H(0.75, 0.25).
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(acquisition.bald(MC), [0.0, h], atol=1e-6)


def test_vote_disagreement_counts_votes_against_the_mode():
    np.testing.assert_allclose(acquisition.vote_disagreement(MC), [0.0, 1 - 3 / 4], atol=1e-7)
    # A tie between two modal classes: votes [0, 0, 1, 1] -> 1 - 2/4.
    tie = jnp.array([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(acquisition.vote_disagreement(tie), [0.5])


def test_iwal_query_probability_known_values():
    # Row 0: no spread -> p_min. Row 1: spread 1 in both classes -> 1.
    np.testing.assert_allclose(acquisition.iwal_query_probability(MC, 0.01), [0.01, 1.0])
    # Spread 0.4 -> 0.1 + 0.9 * 0.4 = 0.46.
    mc = jnp.array([[[0.8, 0.2]], [[0.4, 0.6]], [[0.6, 0.4]]])
    np.testing.assert_allclose(acquisition.iwal_query_probability(mc, 0.1), [0.46], rtol=1e-6)


def test_random_scores_are_uniform_and_keyed():
    a = acquisition.random_scores(KEY, 50)
    assert a.shape == (50,) and bool(jnp.all((a >= 0) & (a < 1)))
    np.testing.assert_array_equal(a, acquisition.random_scores(KEY, 50))
    assert not np.array_equal(a, acquisition.random_scores(jax.random.PRNGKey(1), 50))


def test_registry_shares_one_signature_and_runs_under_jit():
    # Passes that disagree, so the MC scores are not constant.
    mc = jax.nn.softmax(3.0 * jax.random.normal(jax.random.PRNGKey(7), (4, 3, PROBS.shape[1])))
    for name, fn in acquisition.ACQUISITIONS.items():
        eager = fn(KEY, PROBS, mc)
        jitted = jax.jit(fn)(KEY, PROBS, mc)
        assert eager.shape == (3,), name
        if name in acquisition.NEEDS_MC:
            assert float(jnp.ptp(eager)) > 1e-3, name  # rows score differently
        np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(
            acquisition.score(name, KEY, PROBS, mc), eager, rtol=1e-6, atol=1e-7
        )
    # The strategies that do not read mc_probs accept None, also under jit.
    for name in set(acquisition.ACQUISITIONS) - acquisition.NEEDS_MC:
        assert jax.jit(acquisition.ACQUISITIONS[name])(KEY, PROBS, None).shape == (3,)


def test_registry_names_and_mc_strategies():
    assert set(acquisition.ACQUISITIONS) == {
        "random",
        "maxent",
        "margin",
        "least_confidence",
        "bald",
        "bald_vote",
        "qbc",
        "iwal",
    }
    assert acquisition.NEEDS_MC == {"bald", "bald_vote", "qbc", "iwal"}
    np.testing.assert_allclose(acquisition.score("bald_vote", KEY, MC[0], MC), [0.0, 0.25])
    np.testing.assert_allclose(acquisition.score("bald", KEY, MC[0], MC), acquisition.bald(MC))


@pytest.mark.parametrize("name", sorted(acquisition.NEEDS_MC))
def test_mc_strategy_without_mc_probs_raises(name):
    with pytest.raises(ValueError, match="mc_probs"):
        acquisition.score(name, KEY, PROBS)


def test_bad_input_raises_one_line_value_errors():
    with pytest.raises(ValueError, match="name='maxentt'.*'maxent'"):
        acquisition.score("maxentt", KEY, PROBS)
    with pytest.raises(ValueError, match="probs must sum to 1"):
        acquisition.entropy(jnp.array([[2.0, 1.0, 3.0]]))  # logits, not probabilities
    with pytest.raises(ValueError, match="probs has negative entries"):
        acquisition.least_confidence(jnp.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="probs must have rank 2"):
        acquisition.margin(jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="mc_probs must have rank 3"):
        acquisition.bald(PROBS)
    with pytest.raises(ValueError, match="mc_probs must have shape"):
        acquisition.score("bald", KEY, PROBS, MC)  # n = 3 against n = 2
    with pytest.raises(ValueError, match="p_min"):
        acquisition.iwal_query_probability(MC, 0.0)
    with pytest.raises(ValueError, match="p_min"):
        acquisition.iwal_query_probability(MC, 1.5)
    with pytest.raises(ValueError, match="n must be"):
        acquisition.random_scores(KEY, -1)
