"""The README's "Using the functions directly" block runs as written and gives sound numbers."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block() -> str:
    text = README.read_text()
    section = text[text.index("## Using the functions directly") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_as_written():
    k, n, m = 5, 600, 400
    rng = np.random.default_rng(0)
    p = np.full(k, 1 / k)
    q = np.array([0.4, 0.3, 0.15, 0.1, 0.05])

    def rows(prior, size):
        labels = rng.choice(k, size=size, p=prior)
        z = rng.normal(size=(size, k)) + 2.0 * np.eye(k)[labels]
        logits = 2.0 * z + np.log(p)  # the Bayes posterior under the source prior p
        probs = np.exp(logits - logits.max(1, keepdims=True))
        return labels.astype(np.int32), (probs / probs.sum(1, keepdims=True)).astype(np.float32)

    source_labels, source_probs = rows(p, n)
    _, target_probs = rows(q, m)
    holdout_mask = np.arange(n) < 300
    train_mask = (np.arange(n) >= 300) & (np.arange(n) < 400)
    unlabeled_mask = np.arange(n) >= 400
    namespace = dict(
        source_probs=jnp.asarray(source_probs),
        source_labels=jnp.asarray(source_labels),
        target_probs=jnp.asarray(target_probs),
        holdout_mask=jnp.asarray(holdout_mask),
        train_mask=jnp.asarray(train_mask),
        unlabeled_mask=jnp.asarray(unlabeled_mask),
    )
    exec(compile(_block(), str(README), "exec"), namespace)

    p_holdout = np.bincount(source_labels[holdout_mask], minlength=k) / holdout_mask.sum()
    assert np.max(np.abs(np.asarray(namespace["w"]) - q / p_holdout)) < 0.6
    p_train = np.bincount(source_labels[train_mask], minlength=k) / train_mask.sum()
    np.testing.assert_allclose(
        namespace["w_train"], np.asarray(namespace["w"]) * p_holdout / p_train, rtol=1e-5
    )
    boot = np.asarray(namespace["boot"])
    assert boot.shape == (100, k) and np.all(np.isfinite(boot)) and np.all(boot.std(0) > 0)
    chosen = np.asarray(namespace["chosen"])
    assert chosen.sum() == 20 and not np.any(chosen & ~unlabeled_mask)
    assert namespace["w_naive"].shape == (k,)
    assert namespace["query_weight"].shape == (n,)
    assert not np.any(np.asarray(namespace["offered"]))  # only a stream offers rows
    assert jax.numpy.all(namespace["query_weight"] == 1.0)
