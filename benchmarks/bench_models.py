"""Training and inference throughput of the models, per conv lowering.

    python benchmarks/bench_models.py [--batch-size 128] [--eval-batch-size 128] [--seconds 3]

For the CNN on 28x28x1 and 8x8x1 inputs with ``conv_impl`` "xla" and "shifted_matmul"
(the latter whole, ``train_chunk`` 0, and in chunks of each of ``--chunks`` images), and for
the MLP, prints examples per second of the jitted training step
(:func:`alsa_jax.train.make_train_step`, Adam) and of inference
(:func:`alsa_jax.train.predict_probs`), after compilation, and the ratio of each
lowering to "xla".
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alsa_jax import models, train  # noqa: E402


def _rate(fn, examples_per_call: int, seconds: float) -> float:
    """Examples per second of ``fn`` (already compiled), timed for at least ``seconds``."""
    jax.block_until_ready(fn())
    calls, start = 0, time.perf_counter()
    while True:
        out = fn()
        calls += 1
        if calls % 5 == 0:
            jax.block_until_ready(out)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return calls * examples_per_call / elapsed


def measure(model, input_shape, *, batch_size, eval_batch_size, eval_rows, seconds):
    """(train examples/s, inference examples/s) of ``model`` on inputs of ``input_shape``."""
    num_classes = 10
    tx = train.make_optimizer("adam", learning_rate=1e-3)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, input_shape)
    step = train.make_train_step(model, tx)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch_size, *input_shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, num_classes, batch_size).astype(np.int32))
    w = jnp.ones(batch_size, jnp.float32)
    mask = jnp.ones(batch_size, bool)
    key = jax.random.PRNGKey(1)
    holder = {"state": state}

    def train_once():
        holder["state"], metrics = step(holder["state"], x, y, w, mask, np.float32(1e-3), key)
        return metrics["loss"]

    train_rate = _rate(train_once, batch_size, seconds)
    x_eval = jnp.asarray(rng.normal(size=(eval_rows, *input_shape)).astype(np.float32))
    infer_rate = _rate(
        lambda: train.predict_probs(model, state, x_eval, batch_size=eval_batch_size),
        eval_rows,
        seconds,
    )
    return train_rate, infer_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--eval-rows", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--chunks", default="8,16,32", help="train_chunk values for shifted_matmul (comma list)"
    )
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",") if c]
    cases = []
    for shape in ((28, 28, 1), (8, 8, 1)):
        name = f"cnn {shape[0]}x{shape[1]}"
        cases.append((name, "xla", models.CNN(10, conv_impl="xla"), shape))
        for chunk in (0, *chunks):
            label = f"shifted_matmul/{chunk}" if chunk else "shifted_matmul"
            model = models.CNN(10, conv_impl="shifted_matmul", train_chunk=chunk)
            cases.append((name, label, model, shape))
    for shape in ((28, 28, 1), (8, 8, 1)):
        cases.append((f"mlp {shape[0]}x{shape[1]}", "-", models.MLP(10), shape))
    print(
        f"devices: {jax.devices()}  train batch {args.batch_size}, "
        f"inference batch {args.eval_batch_size} over {args.eval_rows} rows"
    )
    results = {}
    header = (
        f"{'model':<11}{'conv_impl/chunk':<20}{'train ex/s':>12}{'vs xla':>8}"
        f"{'infer ex/s':>13}{'vs xla':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, impl, model, shape in cases:
        train_rate, infer_rate = measure(
            model,
            shape,
            batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size,
            eval_rows=args.eval_rows,
            seconds=args.seconds,
        )
        results[(name, impl)] = (train_rate, infer_rate)
        base = results.get((name, "xla"))
        ratios = (
            (f"{train_rate / base[0]:>8.2f}", f"{infer_rate / base[1]:>8.2f}")
            if base
            else (f"{'':>8}", f"{'':>8}")
        )
        print(
            f"{name:<11}{impl:<20}{train_rate:>12.0f}{ratios[0]}{infer_rate:>13.0f}{ratios[1]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
