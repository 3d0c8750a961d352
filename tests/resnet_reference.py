"""Reference outputs of the original PyTorch ResNet for tests/test_models.py.

The original's ``alsa/nets/resnet.py`` is instantiated with every parameter and running
statistic set by :func:`fill` (a deterministic function of the tensor's PyTorch name), and
run in eval mode on :func:`reference_input`. The test loads the same values into the Flax
model through :func:`torch_name` and compares logits. Regenerate with PyTorch installed:

    python tests/resnet_reference.py /path/to/original/source   # the folder holding alsa/

which prints the parameter counts and the logits pasted into the test.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np


def fill(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic values for the PyTorch tensor ``name`` of ``shape`` (PyTorch layout).

    Uniform draws seeded by the name's CRC-32: weights in +-1/sqrt(fan_in), batch-norm
    scales in [0.8, 1.2], running variances in [0.5, 1.5], dense biases 0; float32.
    """
    wave = np.random.default_rng(zlib.crc32(name.encode())).uniform(-1.0, 1.0, size=shape)
    if name.endswith("running_var"):
        values = 1.0 + 0.5 * wave
    elif name.endswith("running_mean"):
        values = 0.1 * wave
    elif name.startswith("fc") and name.endswith("bias"):  # zero: logits show the features
        values = np.zeros(shape)
    elif len(shape) == 1:  # batch-norm scale and offset
        values = (1.0 + 0.2 * wave) if name.endswith("weight") else 0.1 * wave
    else:  # PyTorch's default: uniform in +-1/sqrt(fan_in)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 128
        values = wave / np.sqrt(fan_in)
    return values.astype(np.float32)


def reference_input(batch: int, size: int) -> np.ndarray:
    """``[batch, size, size, 3]`` NHWC float32 input."""
    rng = np.random.default_rng(size)
    return rng.normal(size=(batch, size, size, 3)).astype(np.float32)


def torch_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """PyTorch state-dict name of a Flax variable path, and whether it is a dense kernel.

    ``("params", "stage2_block1", "conv1", "kernel")`` ->
    ``"conv3_x.0.residual_function.0.weight"``.
    """
    _, *modules, leaf = path
    leaf_name = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }[leaf]
    module = modules[0]
    if module in ("fc1", "fc2"):
        return f"{module}.{leaf_name}", leaf == "kernel"
    if module == "stem_conv":
        return "conv1.0.weight", False
    if module == "stem_bn":
        return f"conv1.1.{leaf_name}", False
    stage, block = module.removeprefix("stage").split("_block")
    prefix = f"conv{int(stage) + 1}_x.{int(block) - 1}"
    part = {
        "conv1": "residual_function.0",
        "bn1": "residual_function.1",
        "conv2": "residual_function.3",
        "bn2": "residual_function.4",
        "shortcut_conv": "shortcut.0",
        "shortcut_bn": "shortcut.1",
    }[modules[1]]
    return f"{prefix}.{part}.{leaf_name}", False


def main(source: str) -> None:
    import torch

    sys.path.insert(0, source)
    from alsa.nets import resnet

    for name, k in (("resnet18", 10), ("resnet18", 100), ("resnet34", 22), ("resnet34", 228)):
        net = getattr(resnet, name)(k)
        print(name, k, "parameters:", sum(p.numel() for p in net.parameters()))
    net = resnet.resnet18(10).eval()
    state = {
        key: torch.from_numpy(fill(key, tuple(v.shape)))
        for key, v in net.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    net.load_state_dict(state, strict=False)
    for size in (32, 21):
        x = torch.from_numpy(reference_input(2, size).transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            print(size, np.array2string(net(x).numpy(), precision=8, separator=", "))


if __name__ == "__main__":
    main(sys.argv[1])
