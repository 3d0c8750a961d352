"""Prepare a dataset into a TFDS data_dir, to copy onto machines without internet.

    python -m alsa_jax.datasets mnist --data_dir /data/tfds
    python -m alsa_jax.datasets nabirds --data_dir /data/tfds --manual_dir ~/Downloads

MNIST and CIFAR are downloaded by TFDS's own builders (which need TensorFlow:
``pip install tensorflow-cpu``); NABirds is read from ``nabirds.tar.gz`` in the manual dir
(``--image_size`` picks the stored side, 200 by default). The result is
``<data_dir>/<name>/`` in ``array_record`` files, which alsa_jax reads without TensorFlow.
"""

from __future__ import annotations

import argparse
import sys

from alsa_jax import data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alsa_jax.datasets", description=__doc__)
    parser.add_argument("name", choices=sorted(data.TFDS_DATASETS))
    parser.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's)")
    parser.add_argument("--manual_dir", default="", help="default: <data_dir>/downloads/manual")
    parser.add_argument("--image_size", type=int, default=200, help="NABirds: stored side")
    parser.add_argument(
        "--offline", action="store_true", help="only use files already in the manual dir"
    )
    args = parser.parse_args(argv)
    try:
        builder = data.prepare(
            args.name,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            image_size=args.image_size,
            download=not args.offline,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.name} is prepared in {builder.data_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
