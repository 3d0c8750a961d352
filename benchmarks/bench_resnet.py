"""Training and inference images per second of the paper's ResNets, per conv lowering.

    python benchmarks/bench_resnet.py [--cases cifar,nabirds_small,nabirds] [--seconds 10]

Cases (stored uint8 batch -> augmentation -> normalisation -> network, as a run feeds it):

- ``cifar``: ResNet-18, 10 classes, 32x32x3 with the ``cifar`` pipeline, batch 128;
- ``nabirds_small``: ResNet-34, 228 classes, 24x24 crops of 32x32 (``nabirds.py:small``),
  batch 32;
- ``nabirds``: ResNet-34, 228 classes, 150x150 crops of 200x200 (the paper's size), batch 32.

Training: one SGD step (momentum 0.9, weight decay 5e-4, :func:`alsa_jax.train.make_train_step`)
after the batch's random augmentation; inference: centre crop + softmax in eval mode, on
batches of the same size. Each figure is the median over calls after compilation, the
lowerings timed in alternation for at least ``--seconds`` each and ``--min-calls`` calls;
the first (compiling) call's seconds are printed too.
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

from alsa_jax import augment, data, models, train  # noqa: E402

CASES = {
    # name: (model, classes, stored side, pipeline, pipeline options, batch)
    "cifar": ("resnet18", 10, 32, "cifar", {}, 128),
    "nabirds_small": ("resnet34", 228, 32, "nabirds", {"crop_size": 24}, 32),
    "nabirds": ("resnet34", 228, 200, "nabirds", {"crop_size": 150}, 32),
}


def _build(case: str, impl: str, batch: int | None = None):
    """(train_once, infer_once, images per call, input side) for one case and lowering."""
    name, classes, side, pipeline_name, options, case_batch = CASES[case]
    batch = batch or case_batch
    model = models.create_model(name, classes, conv_impl=impl)
    pipeline = augment.make_pipeline(pipeline_name, **options)
    input_shape = pipeline.output_shape((side, side, 3))
    tx = train.make_optimizer("sgd", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
    state = train.create_train_state(jax.random.PRNGKey(0), model, tx, input_shape)
    step = train.make_train_step(model, tx)
    mean, std = jnp.asarray(data.TFDS_DATASETS["cifar10"].mean), jnp.asarray((0.25,) * 3)
    rng = np.random.default_rng(0)
    stored = jnp.asarray(rng.integers(0, 256, (batch, side, side, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, classes, batch).astype(np.int32))
    weights, mask = jnp.ones(batch, jnp.float32), jnp.ones(batch, bool)
    prepare_train = jax.jit(lambda key, x: data.normalize(pipeline.train_fn(key, x), mean, std))
    holder = {"state": state, "key": jax.random.PRNGKey(1)}

    def train_once():
        holder["key"], aug_key, dropout_key = jax.random.split(holder["key"], 3)
        x = prepare_train(aug_key, stored)
        holder["state"], metrics = step(
            holder["state"], x, labels, weights, mask, np.float32(0.1), dropout_key
        )
        return metrics["loss"]

    @jax.jit
    def infer(variables, x):
        x = data.normalize(pipeline.eval_fn(x), mean, std)
        return jax.nn.softmax(model.apply(variables, x, train=False))

    def infer_once():
        s = holder["state"]
        return infer({"params": s.params, "batch_stats": s.batch_stats}, stored)

    return train_once, infer_once, batch, input_shape[0]


def _seconds(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def measure(
    case: str, impls: list[str], *, seconds: float, min_calls: int, batch: int | None = None
) -> dict:
    """Per lowering: median images/s of training and inference, and the first (compiling)
    call's seconds. The lowerings are timed in alternation, call by call, so that a change
    in the load of a shared machine hits them alike."""
    built = {impl: _build(case, impl, batch) for impl in impls}
    results = {}
    for kind, index in (("train", 0), ("infer", 1)):
        first = {impl: _seconds(built[impl][index]) for impl in impls}
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        start = time.perf_counter()
        while min(len(t) for t in times.values()) < min_calls or (
            time.perf_counter() - start < seconds * len(impls)
        ):
            for impl in impls:
                times[impl].append(_seconds(built[impl][index]))
        for impl in impls:
            batch = built[impl][2]
            entry = results.setdefault(impl, {"input": built[impl][3], "batch": batch})
            entry[kind] = batch / float(np.median(times[impl]))
            entry[f"{kind}_first"] = first[impl]
            entry[f"{kind}_calls"] = len(times[impl])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--impls", default=",".join(models.CONV_IMPLS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--min-calls", type=int, default=2)
    parser.add_argument("--batch", type=int, default=0, help="override every case's batch")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}  cpu count: {os.cpu_count()}")
    header = (
        f"{'case':<15}{'model':<10}{'input':>7}{'batch':>7}{'conv_impl':>16}"
        f"{'train img/s':>13}{'vs xla':>8}{'infer img/s':>13}{'vs xla':>8}"
        f"{'1st train s':>13}{'1st infer s':>13}"
    )
    print(header)
    print("-" * len(header))
    impls = args.impls.split(",")
    for case in args.cases.split(","):
        results = measure(
            case, impls, seconds=args.seconds, min_calls=args.min_calls, batch=args.batch or None
        )
        base = results.get("xla")
        for impl in impls:
            r = results[impl]
            ratios = (
                (f"{r['train'] / base['train']:>8.2f}", f"{r['infer'] / base['infer']:>8.2f}")
                if base
                else (f"{'':>8}", f"{'':>8}")
            )
            print(
                f"{case:<15}{CASES[case][0]:<10}{r['input']:>7}{r['batch']:>7}{impl:>16}"
                f"{r['train']:>13.2f}{ratios[0]}{r['infer']:>13.2f}{ratios[1]}"
                f"{r['train_first']:>13.1f}{r['infer_first']:>13.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
