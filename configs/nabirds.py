"""MALLS on NABirds, "grand" labels under a regional shift: the paper's NABirds setting.

    python -m launch.replicate --config configs/nabirds.py --workdir runs/nabirds
    python -m launch.replicate --config configs/nabirds.py:small --workdir runs/nabirds_small

NABirds photographs cropped to their bounding boxes and stored at 200x200; labels are the
228 "grand" groups of hierarchy.txt. ``trulyregion``: the warm start keeps the natural class
proportions, the pool and the test split follow one Dirichlet(0.1) draw. ResNet-34 (CIFAR
stem, dense head of 228 with dropout 0.25) on random 150x150 crops (centre crops at test),
SGD as for CIFAR (lr 0.1, fine-tuning 0.02, /4 at epochs 20/40/60) for 80 initial and 10
fine-tuning epochs; 30,000 examples (warm start ratio 1.0), 5,000 test examples, 20 rounds
buying 40% of the pool. The full run needs a GPU.

Data: put nabirds.tar.gz (https://dl.allaboutbirds.org/nabirds) into
``<data_dir>/downloads/manual/``; the first run prepares it (or run
``python -m alsa_jax.datasets nabirds --data_dir DIR [--image_size 32]``).
``:small``: 32x32 images cropped to 24, 300 examples (150 to test), 2 rounds, 1 initial and
1 fine-tuning epoch, on 2 CPU cores: a check of the code path, too small to learn 228 groups.
Cost: the small variant ran in 376 s on 2 loaded CPU cores; the full run trains 4.0 M
150x150 crops through ResNet-34 (README, "Cost"): use a GPU.
"""

from __future__ import annotations

import ml_collections

from configs import base, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = presets.parse_arg(arg)
    config = base.get_config()
    config.dataset.name = "nabirds"
    config.dataset.label_granularity = "grand"
    config.dataset.image_size = 200
    config.model.name = "resnet34"
    presets.resnet_lowerings(config)
    config.augment.name = "nabirds"
    config.augment.crop_size = 150
    presets.paper_training(config)
    config.shift.strategy = "trulyregion"
    config.shift.alpha = 0.1
    config.shift.dataset_cap = 30000
    config.shift.warmstart_ratio = 1.0
    config.shift.test_size = 5000
    config.query.num_batches = 20
    presets.apply_shift_preset(config, options.preset)
    if options.small:
        presets.small_nabirds(config)
    return config
