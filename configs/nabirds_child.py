"""MALLS on NABirds, the 22 "child" groups with no simulated shift: the paper's second
NABirds setting.

    python -m launch.replicate --config configs/nabirds_child.py --workdir runs/nabirds_child
    python -m launch.replicate --config configs/nabirds_child.py:small --workdir runs/nac_small

As configs/nabirds.py (ResNet-34 on 150x150 crops of 200x200 bounding-box crops, the
paper's SGD schedule, 20 rounds buying 40% of the pool, 5,000 test examples) but labelled
with the 22 groups under the root of hierarchy.txt, under ``trulynone``: the warm start and
the pool keep NABirds' natural (imbalanced) class proportions, the test split is uniform.
The full run needs a GPU.

Data: as configs/nabirds.py (the same prepared images serve every granularity).
``:small``: as configs/nabirds.py:small.
Cost: the small variant ran in 160 s on 2 loaded CPU cores; the full run trains 4.0 M
150x150 crops through ResNet-34 (README, "Cost"): use a GPU.
"""

from __future__ import annotations

import ml_collections

from configs import nabirds, presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = nabirds.get_config(arg)
    config.dataset.label_granularity = "child"
    if presets.parse_arg(arg).preset is None:
        config.shift.strategy = "trulynone"
    return config
