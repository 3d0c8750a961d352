"""The paper's methods, shift presets and seeds, shared by the paper's sweep files.

Methods are config overrides. "Uncorrected" active learning estimates no weights
(w = 1: no importance weighting, no posterior correction) and takes the top of the
acquisition score. MALLS here is alsa_jax's default MALLS: RLLS weights re-estimated
after every round, importance-weighted training on every label, class-balanced
("guess") selection over predicted labels, and no posterior correction on top of the
importance weights (the original's double correction is one of the ablations).
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
    "label_shift.estimator": "rlls",
    "label_shift.iterative": True,
    "label_shift.reweight_all_labeled": True,
    "label_shift.importance_weighting": True,
    "label_shift.posterior_correction_scoring": False,
    "label_shift.posterior_correction_eval": False,
    "query.diversify": "guess",
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
    "malls_maxent": malls("maxent"),
    # The original's MALLS: importance weights and posterior correction together.
    "malls_maxent_iw+pc": malls(
        "maxent", posterior_correction_scoring=True, posterior_correction_eval=True
    ),
    # The original's no_infer: corrected scores, uncorrected evaluation.
    "malls_maxent_iw+pc_scoring": malls("maxent", posterior_correction_scoring=True),
    # The original's only_rlls_infer: uncorrected scores, corrected evaluation.
    "malls_maxent_iw+pc_eval": malls("maxent", posterior_correction_eval=True),
    # Posterior correction instead of importance-weighted training.
    "malls_maxent_pc": malls(
        "maxent",
        importance_weighting=False,
        posterior_correction_scoring=True,
        posterior_correction_eval=True,
    ),
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
