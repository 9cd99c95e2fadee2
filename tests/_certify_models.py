"""Models and data shared by the certifier, attack and report tests.

``lipschitz_mlp`` trains a small MNIST MLP with spectrally normalized weights and a margin loss for
a few seconds, so that certified radii are far from zero (the normally trained third-party models
certify only tiny radii).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

import lipcert
from lipcert import datasets

MNIST_MLPS = ("mnistfc/mnist-net_256x2.onnx", "eran_mnist_6_100/mnist_6_100_nat.onnx",
              "eran_sigmoid_6x200/ffnnSIGMOID__Point_6x200.onnx")


def mnist(shared_data: Path, limit: int | None = None) -> datasets.Dataset:
    return datasets.load("mnist", root=shared_data / "datasets", limit=limit, download=False)


@functools.lru_cache(maxsize=1)
def _trained(root: str) -> lipcert.Network:
    data = mnist(Path(root))
    x = torch.tensor(data.x.reshape(len(data.y), -1))[2000:]  # train on test images 2000.., certify 0..1999
    y = torch.tensor(data.y)[2000:]
    gen = torch.Generator().manual_seed(0)
    sizes = [784, 64, 64, 10]
    ws = [torch.nn.Parameter(torch.randn(o, i, generator=gen) / np.sqrt(i)) for i, o in zip(sizes, sizes[1:])]
    bs = [torch.nn.Parameter(torch.zeros(o)) for o in sizes[1:]]
    us = [torch.randn(o, generator=gen) for o in sizes[1:]]
    opt = torch.optim.Adam(ws + bs, lr=1e-2)

    def scaled(k: int) -> torch.Tensor:  # W / max(1, sigma_max(W)), sigma by one power step per use
        w = ws[k]
        with torch.no_grad():
            us[k] = torch.nn.functional.normalize(w @ torch.nn.functional.normalize(w.T @ us[k], dim=0), dim=0)
        sigma = us[k] @ w @ torch.nn.functional.normalize(w.T @ us[k], dim=0)
        return w / torch.clamp(sigma, min=1.0)

    for _ in range(2):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 256):
            idx = perm[i:i + 256]
            z = x[idx]
            for k in range(3):
                z = z @ scaled(k).T + bs[k]
                z = torch.relu(z) if k < 2 else z
            z = z + 0.5 * np.sqrt(2) * (1 - torch.nn.functional.one_hot(y[idx], 10))  # Lipschitz margin
            loss = torch.nn.functional.cross_entropy(8 * z, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        weights = [(w / torch.clamp(torch.linalg.matrix_norm(w, 2), min=1.0)).double() for w in ws]
    return lipcert.Network.from_weights(weights, [b.detach() for b in bs], "relu", input_shape=(1, 28, 28),
                                        input_range=(0.0, 1.0), info={"source": "trained in test"})


def lipschitz_mlp(shared_data: Path) -> lipcert.Network:
    """784-64-64-10 ReLU MLP with every ||W_k||_2 <= 1, about 85 % clean accuracy (cached)."""
    return _trained(str(shared_data))
