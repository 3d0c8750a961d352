"""MALLS on CIFAR-10 with the paper's settings (REFERENCE "Paper settings").

    python -m launch.replicate --config configs/cifar10.py --workdir runs/cifar10
    python -m launch.replicate --config configs/cifar10.py:dirichlet_mix_0.1 --workdir runs/c10a
    python -m launch.replicate --config configs/cifar10.py:small --workdir runs/cifar10_small

ResNet-18 (CIFAR stem, dense head of 128 with dropout 0.25) trained with SGD (lr 0.1,
fine-tuning 0.02, /4 at epochs 20/40/60, one warm-up epoch) for 80 initial and 10
fine-tuning epochs on 40,000 examples (warm start ratio 0.5) under the main
``dirichlet_mix`` shift (alpha 0.7; other presets by ``:<preset>``, see configs/presets.py);
30 rounds buying 40% of the pool; random crop 32 (padding 4), flip and rotation up to 15
degrees on the device. The full run needs a GPU.

Data: TFDS's ``cifar10`` in ``--config.dataset.data_dir`` (prepare it on a machine with
internet with ``python -m alsa_jax.datasets cifar10 --data_dir DIR``).
``:small``: 400 examples, 2 rounds, 2 initial and 1 fine-tuning epoch, on 2 CPU cores.
Cost: the small variant ran in 227 s on 2 loaded CPU cores; the full run trains 5.7 M
images through ResNet-18, about 12 days on such a CPU (README, "Cost"): use a GPU.
"""

from __future__ import annotations

import ml_collections

from configs import base, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = presets.parse_arg(arg)
    config = base.get_config()
    config.dataset.name = "cifar10"
    config.model.name = "resnet18"
    presets.resnet_lowerings(config)
    config.augment.name = "cifar"
    presets.paper_training(config)
    config.shift.dataset_cap = 40000
    config.shift.warmstart_ratio = 0.5
    config.query.num_batches = 30
    presets.apply_shift_preset(config, options.preset or "dirichlet_mix_0.7")
    if options.small:
        presets.small_cifar(config)
    return config
