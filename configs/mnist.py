"""MALLS on MNIST with the paper's MNIST settings (REFERENCE "Paper settings").

    python -m launch.replicate --config configs/mnist.py --workdir runs/mnist
    python -m launch.replicate --config configs/mnist.py:small --workdir runs/mnist_small

The CNN (conv 32 -> conv 64 -> max-pool -> dense 128) trained with Adam (lr 1e-2, decay
0.97 per epoch) for 60 initial and 10 fine-tuning epochs; 3,000 examples under a Dirichlet
(0.6) target shift; 20 rounds buying 20% of the pool. Images stay uint8 28x28x1 and are
normalised with MNIST's mean 0.1307 and std 0.3081 per batch; no augmentation.

Data: TFDS's ``mnist`` in ``--config.dataset.data_dir`` (prepare it on a machine with
internet with ``python -m alsa_jax.datasets mnist --data_dir DIR``).
``:small``: 600 examples, 4 rounds, 3 initial and 1 fine-tuning epoch.
Cost: the small variant ran in 51 s (data prepared in 11 s) on 2 loaded CPU cores; the full
run trains 0.34 M images, about 10-15 minutes on such a CPU (README, "Cost").
"""

from __future__ import annotations

import ml_collections

from configs import base, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = presets.parse_arg(arg)
    config = base.get_config()
    config.dataset.name = "mnist"
    config.model.name = "cnn"
    config.augment.name = "none"
    # The original's MNIST defaults (its command-line defaults, which base.py keeps).
    config.shift.strategy = "dirichlet_target"
    config.shift.alpha = 0.6
    config.shift.dataset_cap = 3000
    config.shift.warmstart_ratio = 1.0
    config.query.num_batches = 20
    config.query.sample_prop = 0.2
    config.train.optimizer = "adam"
    config.train.schedule = "exponential"
    config.train.learning_rate = 1e-2
    config.train.finetune_learning_rate = 1e-2
    config.train.gamma = 0.97
    config.train.initial_epochs = 60
    config.train.partial_epochs = 10
    presets.apply_shift_preset(config, options.preset)
    if options.small:
        config.shift.dataset_cap = 600
        config.query.num_batches = 4
        config.train.initial_epochs = 3
        config.train.partial_epochs = 1
    return config
