"""The paper's method comparison: uncorrected bald / maxent / margin / random against MALLS
on bald / maxent / margin, under the main shift (dirichlet_mix, alpha 0.7), 10 seeds.

    python -m launch.sweep --config configs/<dataset>.py \\
        --sweep configs/sweeps/paper_methods.py --workdir runs/<dataset>_methods

7 methods x 1 shift x 10 seeds = 70 runs; the 10 seeds' h0 are trained once each.
"""

from __future__ import annotations

from alsa_jax import sweeps
from configs.sweeps import paper


def get_sweep() -> list[sweeps.Run]:
    return sweeps.grid(paper.METHODS, paper.MAIN_SHIFT, paper.SEEDS)
