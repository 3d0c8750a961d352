import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alsa_jax import acquisition, selection

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


def test_bad_input_raises_one_line_value_errors():
    with pytest.raises(ValueError, match="probs must sum to 1"):
        acquisition.entropy(jnp.array([[2.0, 1.0, 3.0]]))  # logits, not probabilities
    with pytest.raises(ValueError, match="probs has negative entries"):
        acquisition.least_confidence(jnp.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="probs must have rank 2"):
        acquisition.margin(jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="mc_probs must have rank 3"):
        acquisition.bald(PROBS)
    with pytest.raises(ValueError, match="p_min"):
        acquisition.iwal_query_probability(MC, 0.0)
    with pytest.raises(ValueError, match="p_min"):
        acquisition.iwal_query_probability(MC, 1.5)
    with pytest.raises(ValueError, match="n must be"):
        acquisition.random_scores(KEY, -1)


# --- strategies as plug-ins ---------------------------------------------------------------

N, K = 40, 4
_RNG = np.random.default_rng(0)
_PROBS = jnp.asarray(_RNG.dirichlet(np.full(K, 0.5), size=N), jnp.float32)
_MC = jnp.asarray(_RNG.dirichlet(np.full(K, 0.5), size=(5, N)), jnp.float32)
_AVAILABLE = jnp.asarray(np.arange(N) % 3 != 0)
_WEIGHTS = jnp.array([0.5, 1.0, 2.0, 1.5])
_FEATURES = jnp.asarray(_RNG.normal(size=(N, 6)), jnp.float32)


def _ctx(**fields):
    base = dict(key=KEY, probs=_PROBS, available=_AVAILABLE, weights=_WEIGHTS)
    return acquisition.QueryContext(**{**base, **fields})


FULL = _ctx(mc_probs=_MC, committee_probs=_MC[:3], features=_FEATURES)


def test_registry_names_and_needs():
    assert set(acquisition.ACQUISITIONS) == {
        "random",
        "maxent",
        "margin",
        "least_confidence",
        "bald",
        "bald_vote",
        "qbc",
        "iwal",
        "badge",
    }
    needs = {name: acq.needs for name, acq in acquisition.ACQUISITIONS.items()}
    assert needs["bald"] == needs["bald_vote"] == needs["iwal"] == ("mc_probs",)
    assert needs["qbc"] == ("committee_probs",)
    assert needs["badge"] == ("features",)
    assert needs["maxent"] == needs["random"] == ()


def test_scoring_strategies_score_from_their_context_fields():
    expected_scores = {
        "random": acquisition.random_scores(KEY, N),
        "maxent": acquisition.entropy(_PROBS),
        "margin": acquisition.margin(_PROBS),
        "least_confidence": acquisition.least_confidence(_PROBS),
        "bald": acquisition.bald(_MC),
        "bald_vote": acquisition.vote_disagreement(_MC),
        "qbc": acquisition.vote_disagreement(_MC[:3]),  # the committee, not the MC passes
    }
    for name, scores in expected_scores.items():
        np.testing.assert_allclose(acquisition.score(name, FULL), scores, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("diversify", ["none", "medial", "guess", "subguess", "overguess"])
def test_choose_spreads_the_scores_over_classes_or_takes_the_top_k(diversify):
    chosen, weight, offered = acquisition.choose(
        "maxent", FULL, 7, diversify=diversify, medial_lambda=0.25
    )
    scores = acquisition.entropy(_PROBS)
    if diversify == "none":
        expected = selection.top_k(scores, _AVAILABLE, 7)
    else:
        expected = selection.diversified_top_k(
            scores,
            _AVAILABLE,
            _PROBS.argmax(-1),
            _WEIGHTS,
            7,
            diversify=diversify,
            medial_lambda=0.25,
        )
    np.testing.assert_array_equal(chosen, expected)
    np.testing.assert_array_equal(weight, np.ones(N))
    assert not np.any(offered)


def test_iwal_selects_with_its_query_weights():
    chosen, weight, offered = acquisition.choose("iwal", FULL, 6, p_min=0.05)
    p = acquisition.iwal_query_probability(_MC, 0.05)
    expected, importance, expected_offered = selection.iwal_select(KEY, p, _AVAILABLE, 6)
    np.testing.assert_array_equal(chosen, expected)
    np.testing.assert_array_equal(offered, expected_offered)
    np.testing.assert_allclose(weight, np.where(expected, importance, 1.0), rtol=1e-6)
    _, unweighted, _ = acquisition.choose("iwal", FULL, 6, p_min=0.05, importance_weights=False)
    np.testing.assert_array_equal(unweighted, np.ones(N))
    # Rows a stream offered before are never offered again.
    again, _, offered_again = acquisition.choose("iwal", FULL.replace(offered=offered), 6)
    assert not np.any(np.asarray(offered_again) & np.asarray(offered))
    assert not np.any(np.asarray(again) & np.asarray(offered))
    with pytest.raises(ValueError, match="'iwal' selects its batch itself and takes no class"):
        acquisition.choose("iwal", FULL, 6, diversify="medial")
    with pytest.raises(ValueError, match="'iwal' takes no option 'reg'; it takes: "):
        acquisition.choose("iwal", FULL, 6, reg=1.0)
    with pytest.raises(ValueError, match="p_min= of strategy 'iwal' must be hashable"):
        acquisition.choose("iwal", FULL, 6, p_min=jnp.ones(1))


def test_a_user_defined_acquisition_is_a_function_passed_directly():
    registry = dict(acquisition.ACQUISITIONS)

    def weighted_entropy(ctx):
        """Entropy times the weight of the predicted class."""
        return acquisition.entropy(ctx.probs) * ctx.weights[ctx.predicted()]

    chosen, weight, _ = acquisition.choose(weighted_entropy, _ctx(), 5)
    scores = np.asarray(acquisition.entropy(_PROBS) * _WEIGHTS[_PROBS.argmax(-1)])
    order = [i for i in np.argsort(-scores, kind="stable") if _AVAILABLE[i]]
    np.testing.assert_array_equal(np.flatnonzero(chosen), np.sort(order[:5]))
    np.testing.assert_array_equal(weight, np.ones(N))
    # Under the caller's jit too, and nothing was registered globally.
    jitted = jax.jit(lambda ctx: acquisition.choose(weighted_entropy, ctx, 5))(_ctx())
    np.testing.assert_array_equal(jitted[0], chosen)
    assert acquisition.ACQUISITIONS == registry
    with pytest.raises(ValueError, match="'none_such'.*'maxent'"):
        acquisition.choose("none_such", _ctx(), 5)

    def wrong_shape(ctx):
        return ctx.probs

    with pytest.raises(ValueError, match=r"'wrong_shape' must return scores of shape \(40,\)"):
        acquisition.choose(wrong_shape, _ctx(), 5)

    # A selecting strategy with its own needs, as an Acquisition.
    def first_available(ctx, budget, *, offset=0):
        rank = jnp.cumsum(ctx.available) - 1 - offset
        chosen = ctx.available & (rank >= 0) & (rank < budget)
        return chosen, jnp.ones(chosen.shape), jnp.zeros(chosen.shape, bool)

    custom = acquisition.Acquisition("first", select=first_available, needs_features=True)
    with pytest.raises(ValueError, match="'first' needs ctx.features"):
        acquisition.choose(custom, _ctx(), 3)
    chosen, _, _ = acquisition.choose(custom, FULL, 3, offset=2)
    np.testing.assert_array_equal(np.flatnonzero(chosen), np.flatnonzero(_AVAILABLE)[2:5])


@pytest.mark.parametrize("name", ["bald", "bald_vote", "qbc", "iwal", "badge"])
def test_missing_context_fields_name_what_to_pass(name):
    field = acquisition.ACQUISITIONS[name].needs[0]
    with pytest.raises(ValueError, match=f"strategy '{name}' needs ctx.{field}"):
        acquisition.choose(name, _ctx(), 3)


def test_bad_context_and_budget_fail_with_one_line():
    with pytest.raises(ValueError, match="budget=30 is larger than the 26 available points"):
        acquisition.choose("maxent", _ctx(), 30)
    with pytest.raises(ValueError, match="probs must sum to 1"):
        acquisition.choose("maxent", _ctx(probs=_PROBS * 2), 3)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        acquisition.choose("maxent", _ctx(weights=-_WEIGHTS), 3, diversify="medial")
    with pytest.raises(ValueError, match="mc_probs must have shape"):
        acquisition.choose("bald", _ctx(mc_probs=_MC[:, :5]), 3)
    with pytest.raises(ValueError, match="available must be a bool mask"):
        acquisition.choose("maxent", _ctx(available=_AVAILABLE.astype(jnp.int32)), 3)
    with pytest.raises(ValueError, match="medial_lambda must lie in"):
        acquisition.choose("maxent", _ctx(), 3, diversify="medial", medial_lambda=1.5)
    with pytest.raises(ValueError, match="diversify='balanced' is not known"):
        acquisition.choose("maxent", _ctx(), 3, diversify="balanced")
    with pytest.raises(ValueError, match="budget must be a non-negative Python int"):
        acquisition.choose("maxent", _ctx(), 2.0)


# --- BADGE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("diversify", ["none", "medial"])
def test_badge_selects_the_budget_of_distinct_available_rows(diversify):
    for seed in range(3):
        ctx = FULL.replace(key=jax.random.PRNGKey(seed))
        chosen, weight, _ = acquisition.choose(
            "badge", ctx, 9, diversify=diversify, medial_lambda=1.0
        )
        assert int(chosen.sum()) == 9  # a mask: distinct rows by construction
        assert not bool(jnp.any(chosen & ~_AVAILABLE))
        np.testing.assert_array_equal(weight, np.ones(N))


def test_badge_starts_from_the_largest_gradient_embedding():
    left, right = acquisition.gradient_embedding_factors(_PROBS, _FEATURES)
    # The factors are the gradient of the cross-entropy at the predicted label with
    # respect to the final dense layer's weights: (p - e_yhat) outer h.
    g = np.einsum("nk,nd->nkd", np.asarray(left), np.asarray(right)).reshape(N, -1)
    onehot = np.eye(K)[np.asarray(_PROBS).argmax(-1)]
    np.testing.assert_allclose(
        g, np.einsum("nk,nd->nkd", np.asarray(_PROBS) - onehot, _FEATURES).reshape(N, -1)
    )
    chosen = acquisition.kmeans_pp_seeding(KEY, left, right, _AVAILABLE, 1)
    norms = np.where(np.asarray(_AVAILABLE), np.linalg.norm(g, axis=1), -1)
    np.testing.assert_array_equal(np.flatnonzero(chosen), [np.argmax(norms)])
    # Every available row when the budget equals their number (the budget is traced here).
    everything = acquisition.kmeans_pp_seeding(KEY, left, right, _AVAILABLE, 26)
    np.testing.assert_array_equal(everything, _AVAILABLE)


def test_kmeans_pp_picks_far_apart_points():
    # Three tight clusters 100 apart and a far lone point, in the plane (left = ones: plain
    # vectors). The lone point has the largest norm (first centre); D^2 sampling then takes
    # one point of each cluster (a second point of a cluster has D^2 ~ 1e-4 against
    # ~1e4 for the others).
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    rng = np.random.default_rng(0)
    points = np.concatenate([c + 0.01 * rng.normal(size=(5, 2)) for c in centres])
    points = np.concatenate([points, [[300.0, 300.0]]]).astype(np.float32)
    ones = np.ones((16, 1), np.float32)
    available = np.ones(16, bool)
    available[5] = False  # unavailable rows are never taken
    for seed in range(10):
        chosen = np.asarray(
            acquisition.kmeans_pp_seeding(jax.random.PRNGKey(seed), ones, points, available, 4)
        )
        assert chosen[15] and not chosen[5]
        assert [int(chosen[5 * c : 5 * c + 5].sum()) for c in range(3)] == [1, 1, 1]


def test_kmeans_pp_with_duplicates_still_takes_distinct_rows():
    # Every embedding identical: D^2 is 0 after the first centre, so the rest is uniform.
    ones = np.ones((6, 1), np.float32)
    same = np.ones((6, 3), np.float32)
    chosen = acquisition.kmeans_pp_seeding(KEY, ones, same, np.ones(6, bool), 4)
    assert int(chosen.sum()) == 4
    jitted = jax.jit(acquisition.kmeans_pp_seeding, static_argnums=4)
    np.testing.assert_array_equal(jitted(KEY, ones, same, np.ones(6, bool), 4), chosen)


def test_label_shift_aware_badge_scales_embeddings_by_the_weights():
    # With the weight of one predicted class set to 0 all its rows share the zero
    # embedding: once one of them is a centre the others have D^2 = 0, so at most one of
    # them is bought while other candidates remain.
    predicted = np.asarray(_PROBS.argmax(-1))
    dropped = predicted[1]
    ctx = FULL.replace(weights=jnp.where(jnp.arange(K) == dropped, 0.0, 1.0))
    assert np.sum(np.asarray(_AVAILABLE) & (predicted != dropped)) >= 9
    for seed in range(3):
        chosen, _, _ = acquisition.choose(
            "badge",
            ctx.replace(key=jax.random.PRNGKey(seed)),
            9,
            diversify="medial",
            medial_lambda=1.0,
        )
        assert int(np.sum(np.asarray(chosen) & (predicted == dropped))) <= 1
    # medial_lambda = 0 is plain BADGE.
    plain, _, _ = acquisition.choose("badge", ctx, 9)
    zero, _, _ = acquisition.choose("badge", ctx, 9, diversify="medial", medial_lambda=0.0)
    np.testing.assert_array_equal(plain, zero)
