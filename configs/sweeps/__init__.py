"""Sweep files: ``get_sweep()`` returns the runs of a comparison (``alsa_jax.sweeps.Run``)."""
