"""The fast lambda_max is a certified upper bound, also on adversarial spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipcert.bounds.eigen import confirms_upper, lambda_max


def with_spectrum(eigenvalues: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    a = (q * eigenvalues) @ q.T
    return torch.as_tensor((a + a.T) / 2), float(eigenvalues.max())


SPECTRA = {
    "clustered top": lambda n, rng: np.concatenate([1 - 1e-9 * rng.random(20), rng.random(n - 20) * 0.9]),
    "tiny gap": lambda n, rng: np.concatenate([[1.0, 1.0 - 1e-12], rng.random(n - 2) * 0.5]),
    "one outlier": lambda n, rng: np.concatenate([[50.0], rng.random(n - 1)]),
    "flat": lambda n, rng: np.ones(n) + 1e-14 * rng.random(n),
    "indefinite": lambda n, rng: rng.normal(size=n),
    "huge scale": lambda n, rng: 1e150 * rng.random(n),
    "tiny scale": lambda n, rng: 1e-150 * rng.random(n),
}


@pytest.mark.parametrize("kind", sorted(SPECTRA))
@pytest.mark.parametrize("n", [50, 420])
def test_never_below_the_true_top_eigenvalue(kind: str, n: int, rng: np.random.Generator) -> None:
    a, top = with_spectrum(SPECTRA[kind](n, rng), rng)
    dense_top = float(torch.linalg.eigvalsh(a)[-1])
    value = float(lambda_max(a))
    assert value >= max(top, dense_top)
    assert value <= max(top, dense_top) + 1e-6 * max(abs(top), float(a.diagonal().abs().max()))


def test_upper_bound_is_confirmed_by_cholesky(rng: np.random.Generator) -> None:
    a, top = with_spectrum(rng.random(500), rng)
    assert confirms_upper(a, top + 1e-9) and not confirms_upper(a, top - 1e-9)
