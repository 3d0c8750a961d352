"""MALLS on scikit-learn's bundled 8x8 digits: the embedded default, under a minute on 2 CPUs."""

from __future__ import annotations

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.dataset.name = "digits"
    config.shift.strategy = "dirichlet_target"
    config.shift.alpha = 0.6
    config.shift.dataset_cap = 1000
    config.query.num_batches = 10
    config.query.sample_prop = 0.4
    config.train.learning_rate = 3e-3
    config.train.finetune_learning_rate = 1e-3
    config.train.batch_size = 64
    config.train.initial_epochs = 30
    config.train.partial_epochs = 5
    return config
