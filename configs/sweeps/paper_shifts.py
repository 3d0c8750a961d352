"""The paper's shift presets: every method of the method comparison under each preset
(dirichlet_mix with alpha 0.7, 5.0, 1.0, 0.1; dirichlet_target 0.4; dirichlet 1.2;
dirichlet_online 3.0), 10 seeds.

    python -m launch.sweep --config configs/<dataset>.py \\
        --sweep configs/sweeps/paper_shifts.py --workdir runs/<dataset>_shifts

7 methods x 7 shifts x 10 seeds = 490 runs; 70 h0 (one per shift and seed).
"""

from __future__ import annotations

from alsa_jax import sweeps
from configs.sweeps import paper


def get_sweep() -> list[sweeps.Run]:
    return sweeps.grid(paper.METHODS, paper.SHIFTS, paper.SEEDS)
