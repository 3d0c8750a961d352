"""alsa_jax: active learning under label shift (MALLS) as pure, jitted JAX functions.

Modules, one per concept of the paper (Zhao, Liu, Anandkumar, Yue; AISTATS 2021):

- ``shift``: simulated label shift (class distributions, per-class resampling, named strategies).
- ``pool``: the immutable pool state (split membership and labeled masks over fixed arrays).
- ``label_shift``: confusion matrices, BBSE, RLLS, oracle weights, posterior correction.
- ``acquisition``: query scores (entropy, margin, BALD, vote agreement, IWAL probabilities).
- ``selection``: batch selection under a budget (top-k, medial class allocation, IWAL stream).
- ``losses`` / ``metrics``: importance-weighted cross-entropy and evaluation figures.
- ``models`` / ``train``: Flax models and the pure training state and steps.
- ``data`` / ``augment``: datasets (TFDS) as host arrays, per-batch normalisation and
  augmentation on the device; ``datasets``: the NABirds TFDS builder.
"""

__version__ = "0.1.0"
