"""Random networks of the published benchmarks (math.md section 9), for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from .network import Network


def gaussian(widths: list[int], activation: str = "relu", *, seed: int | np.random.Generator = 0,
             biases: bool = False) -> Network:
    """W_k ~ N(0, 1/fan_in) (math.md Table A) for widths = [n_0, ..., n_L]; zero or N(0, 1) biases."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    weights = [rng.normal(size=(o, i)) / np.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    bs = [rng.normal(size=o) if biases else None for o in widths[1:]]
    return Network.from_weights(weights, bs, activation)


def eclipse_benchmark(layers: int, width: int = 80, rd: int = 0) -> Network:
    """The original ECLipsE benchmark net (math.md section 9, Table B).

    Input 4, ``layers - 1`` hidden layers of ``width``, output 1; each W = t U / ||U||_2 with
    U ~ Uniform[0, 1) entries and t ~ U[0.4, 1.8]; a bias U[0, 1) drawn after each W; legacy
    numpy seed 77 rd + 7 width + 13 layers (ECLipsE_matlab/generate_random_weights.py).
    """
    state = np.random.RandomState(rd * 77 + width * 7 + layers * 13)
    dims = [4] + [width] * (layers - 1) + [1]
    weights, biases = [], []
    for i in range(1, len(dims)):
        t = state.uniform(0.4, 1.8)
        u = state.rand(dims[i], dims[i - 1])
        weights.append(t * u / np.linalg.norm(u, 2))
        biases.append(state.rand(dims[i]))
    return Network.from_weights(weights, biases, "relu")
