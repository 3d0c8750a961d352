"""MALLS against uncorrected maxent and random on the bundled digits, 3 seeds.

    python -m launch.sweep --config configs/digits.py \\
        --sweep configs/sweeps/digits_methods.py --workdir runs/digits_methods
    python -m launch.report runs/digits_methods

3 methods x 3 seeds = 9 runs, three h0.
"""

from __future__ import annotations

from alsa_jax import sweeps
from configs.sweeps import paper

METHODS = {
    "random": paper.uncorrected("random"),
    "maxent": paper.uncorrected("maxent"),
    "malls_maxent": paper.malls("maxent"),
}

SHIFTS = {"dirichlet_target-0.6": {"shift.strategy": "dirichlet_target", "shift.alpha": 0.6}}


def get_sweep() -> list[sweeps.Run]:
    return sweeps.grid(METHODS, SHIFTS, seeds=range(3))
