"""The paper's posterior-correction ablations around MALLS on maxent, against uncorrected
maxent, under the main shift (dirichlet_mix, alpha 0.7), 10 seeds.

    python -m launch.sweep --config configs/<dataset>.py \\
        --sweep configs/sweeps/paper_posterior_ablations.py --workdir runs/<dataset>_posterior

7 methods x 1 shift x 10 seeds = 70 runs.
"""

from __future__ import annotations

from alsa_jax import sweeps
from configs.sweeps import paper


def get_sweep() -> list[sweeps.Run]:
    return sweeps.grid(paper.POSTERIOR_ABLATIONS, paper.MAIN_SHIFT, paper.SEEDS)
