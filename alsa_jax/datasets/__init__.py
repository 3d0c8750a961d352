"""TensorFlow Datasets builders of the paper's datasets that TFDS does not ship (NABirds).

Importing :mod:`alsa_jax.datasets.nabirds` registers its builder with TFDS;
``python -m alsa_jax.datasets NAME --data_dir DIR`` prepares any dataset of
:data:`alsa_jax.data.TFDS_DATASETS` into a TFDS data_dir (see ``__main__``).
"""
