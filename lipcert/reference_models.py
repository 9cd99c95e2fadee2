"""Architectures of published checkpoints that ship as bare state_dicts.

A ``.pth`` state_dict holds weights but not the module that uses them, so it cannot be loaded
without its architecture.  These are the architectures of widely used verification benchmarks
(ERAN, auto_LiRPA / SDP-FO), keyed by checkpoint file name, so that such files load in one call::

    module = lipcert.reference_models.load_checkpoint("mnist_6_100_nat.pth")
    net = lipcert.load(module, input_shape=(1, 28, 28))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelLoadError


def eran_mnist_6_100() -> nn.Module:
    """ERAN mnist_relu_6_100: 784-100x5-10, ReLU after every hidden layer."""
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, 100), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(100, 100), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(100, 10))


def mnist_cnn_a() -> nn.Module:
    """MNIST CNN-A (auto_LiRPA / SDP-FO): two stride-2 convolutions, then 1568-100-10."""
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(1568, 100), nn.ReLU(), nn.Linear(100, 10))


def cifar_conv_small() -> nn.Module:
    """ERAN ConvSmall for CIFAR-10: two unpadded stride-2 convolutions, then 1152-100-10."""
    return nn.Sequential(nn.Conv2d(3, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(1152, 100), nn.ReLU(), nn.Linear(100, 10))


@dataclass(frozen=True)
class Checkpoint:
    """How a checkpoint file is laid out: its architecture, where the state_dict sits, one input's shape."""

    build: Callable[[], nn.Module]
    layout: str  # "plain" (the file is the state_dict) or "state_dict[0]" (ERAN/alpha-beta-CROWN checkpoints)
    input_shape: tuple[int, ...]


CHECKPOINTS: dict[str, Checkpoint] = {
    "mnist_6_100_nat.pth": Checkpoint(eran_mnist_6_100, "state_dict[0]", (1, 28, 28)),
    "mnist_a_adv.pth": Checkpoint(mnist_cnn_a, "plain", (1, 28, 28)),
    "cifar_conv_small_pgd.pth": Checkpoint(cifar_conv_small, "state_dict[0]", (3, 32, 32)),
}


def load_checkpoint(path: str | Path) -> nn.Module:
    """The eval-mode module of a known checkpoint file (matched by file name), weights loaded."""
    path = Path(path)
    if path.name not in CHECKPOINTS:
        raise ModelLoadError(f"no known architecture for {path.name!r}; known: {', '.join(CHECKPOINTS)}")
    spec = CHECKPOINTS[path.name]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot read checkpoint {path}: {exc}") from exc
    module = spec.build()
    module.load_state_dict(state["state_dict"][0] if spec.layout == "state_dict[0]" else state)
    return module.eval()
