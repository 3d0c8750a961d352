"""MALLS (the paper's) and MALLS with the calibrated correction against uncorrected maxent
and random on the bundled digits, 3 seeds.

    python -m launch.sweep --config configs/digits.py \\
        --sweep configs/sweeps/digits_methods.py --workdir runs/digits_methods
    python -m launch.report runs/digits_methods

4 methods x 3 seeds = 12 runs sharing three h0; sweep and report take a few minutes on 2 CPU
cores. One change to configs/digits.py: a warm start of 0.15 / 1.15 of the 1000 examples
(about 130 labels) instead of half of them (500), so that accuracy still has room to grow
while labels are bought; with 500 warm-start labels every method starts at 0.96-0.97 and the
curves differ by less than their noise.
"""

from __future__ import annotations

from alsa_jax import sweeps
from configs.sweeps import paper

METHODS = {
    "random": paper.uncorrected("random"),
    "maxent": paper.uncorrected("maxent"),
    "malls_maxent": paper.malls("maxent"),
    "malls_maxent_calibrated": paper.POSTERIOR_ABLATIONS["malls_maxent_calibrated"],
}

# configs/digits.py's shift, named.
SHIFTS = {"dirichlet_target-0.6": {"shift.strategy": "dirichlet_target", "shift.alpha": 0.6}}


def get_sweep() -> list[sweeps.Run]:
    return sweeps.grid(METHODS, SHIFTS, range(3), common={"shift.warmstart_ratio": 0.15})
