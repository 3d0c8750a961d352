"""The paper's methods, shift presets and seeds, shared by the paper's sweep files.

Methods are config overrides. "Uncorrected" active learning estimates no weights
(w = 1: no importance weighting, no posterior correction) and takes the top of the
acquisition score. MALLS here is alsa_jax's default MALLS (configs/base.py): labels from the
medial distribution N ~ P w^0.5, w estimated by MLLS with bias-corrected temperature
scaling and re-estimated after every round, and the correction for the target made on
calibrated posteriors (scoring and evaluation) rather than by importance-weighted training;
the paper's importance-weighted MALLS and the original's double correction are among the
ablations.
"""

from __future__ import annotations

SEEDS = tuple(range(10))

UNCORRECTED = {
    "label_shift.estimator": "none",
    "label_shift.importance_weighting": False,
    "label_shift.posterior_correction_scoring": False,
    "label_shift.posterior_correction_eval": False,
    "query.diversify": "none",
}

MALLS = {
    "label_shift.estimator": "mlls",
    "label_shift.iterative": True,
    "label_shift.reweight_all_labeled": True,
    "label_shift.importance_weighting": False,
    "label_shift.posterior_correction_scoring": True,
    "label_shift.posterior_correction_eval": True,
    "label_shift.calibrated_correction": True,
    "query.diversify": "medial",
}


def uncorrected(strategy: str) -> dict:
    """Plain active learning with ``strategy`` (top of the score, w = 1)."""
    return {**UNCORRECTED, "query.strategy": strategy}


def malls(strategy: str, **changes) -> dict:
    """MALLS with ``strategy``; ``changes`` maps config leaf names of label_shift to values."""
    return {
        **MALLS,
        "query.strategy": strategy,
        **{f"label_shift.{name}": value for name, value in changes.items()},
    }


# No correction with bald / maxent / margin / random against MALLS on bald / maxent / margin.
METHODS = {
    "random": uncorrected("random"),
    "maxent": uncorrected("maxent"),
    "margin": uncorrected("margin"),
    "bald": uncorrected("bald"),
    "malls_maxent": malls("maxent"),
    "malls_margin": malls("margin"),
    "malls_bald": malls("bald"),
}

# The posterior correction p(y|x) w(y) switched on and off around MALLS (on maxent).
POSTERIOR_ABLATIONS = {
    "maxent": uncorrected("maxent"),
    # The default: calibrated posterior correction for scoring and evaluation.
    "malls_maxent": malls("maxent"),
    # The correction for scoring only, or for evaluation only.
    "malls_maxent_pc_scoring": malls("maxent", posterior_correction_eval=False),
    "malls_maxent_pc_eval": malls("maxent", posterior_correction_scoring=False),
    # The correction on uncalibrated posteriors (by the training weights).
    "malls_maxent_pc_uncalibrated": malls("maxent", calibrated_correction=False),
    # The paper's MALLS: importance-weighted training, no posterior correction.
    "malls_maxent_iw": malls(
        "maxent",
        importance_weighting=True,
        posterior_correction_scoring=False,
        posterior_correction_eval=False,
    ),
    # The original's MALLS: importance weights and uncalibrated posterior correction together.
    "malls_maxent_iw+pc": malls("maxent", importance_weighting=True, calibrated_correction=False),
}


def _preset(strategy: str, alpha: float) -> dict:
    return {"shift.strategy": strategy, "shift.alpha": alpha}


# The main setting (dirichlet_mix, alpha 0.7) first.
MAIN_SHIFT = {"dirichlet_mix-0.7": _preset("dirichlet_mix", 0.7)}

SHIFTS = {
    **MAIN_SHIFT,
    "dirichlet_mix-5.0": _preset("dirichlet_mix", 5.0),
    "dirichlet_mix-1.0": _preset("dirichlet_mix", 1.0),
    "dirichlet_mix-0.1": _preset("dirichlet_mix", 0.1),
    "dirichlet_target-0.4": _preset("dirichlet_target", 0.4),
    "dirichlet-1.2": _preset("dirichlet", 1.2),
    "dirichlet_online-3.0": _preset("dirichlet_online", 3.0),
}
