"""The paper's methods, shift presets and seeds, shared by the paper's sweep files.

Methods are config overrides. "Uncorrected" active learning estimates no weights
(w = 1: no importance weighting, no posterior correction) and takes the top of the
acquisition score. MALLS is the paper's (configs/base.py's defaults): labels from the
medial distribution N ~ P w^0.5, w estimated by RLLS on a held-out labeled sample and
re-estimated after every round, every label importance-weighted in training. The ablations
move the correction for the target from training to posteriors calibrated on the held-out
sample (alsa_jax's alternative), or stack both as the original code did.
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
    "query.diversify": "medial",
}

# MALLS's sampling with the correction for the target moved from training to prediction:
# trained on the labels as they are, the probabilities calibrated (BCTS) on the held-out
# sample and corrected by Q / P_holdout for scoring and evaluation; MLLS estimates w.
CALIBRATED = {
    "label_shift.estimator": "mlls",
    "label_shift.importance_weighting": False,
    "label_shift.posterior_correction_scoring": True,
    "label_shift.posterior_correction_eval": True,
    "label_shift.calibrated_correction": True,
}


def _leaves(overrides: dict) -> dict:
    """``label_shift.*`` overrides as leaf names (the keywords of :func:`malls`)."""
    return {key.split(".", 1)[1]: value for key, value in overrides.items()}


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

# The correction for the target, in training or on the posteriors, around MALLS on maxent.
POSTERIOR_ABLATIONS = {
    "maxent": uncorrected("maxent"),
    # The paper's MALLS: importance-weighted training (RLLS).
    "malls_maxent": malls("maxent"),
    # The same with MLLS + BCTS estimating w.
    "malls_maxent_mlls": malls("maxent", estimator="mlls"),
    # The calibrated posterior correction instead of importance weighting, for scoring and
    # evaluation, for scoring only, or for evaluation only.
    "malls_maxent_calibrated": malls("maxent", **_leaves(CALIBRATED)),
    "malls_maxent_calibrated_scoring": malls(
        "maxent", **{**_leaves(CALIBRATED), "posterior_correction_eval": False}
    ),
    "malls_maxent_calibrated_eval": malls(
        "maxent", **{**_leaves(CALIBRATED), "posterior_correction_scoring": False}
    ),
    # The original's MALLS: importance weights and the uncalibrated correction together.
    "malls_maxent_iw+pc": malls(
        "maxent",
        posterior_correction_scoring=True,
        posterior_correction_eval=True,
        calibrated_correction=False,
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
