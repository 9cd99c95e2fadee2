"""One final step for every certified constant: each result type reads the same Gram matrix alike, never below
the exact sqrt(lambda_max(G)) exp(s / 2) or sqrt(c^T G c) exp(s / 2) (computed with 50 digits)."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch

from lipcert.bounds.optimize import _Problem
from lipcert.bounds.recursion import RecursionResult
from lipcert.bounds.result import Gram, LipschitzBound
from lipcert.local.bound import LocalBound, Pass, _row_norms
from lipcert.rounding import CANCELLATION, INFLATION, UNIT_ROUNDOFF, affine_gamma, certified_root, gamma

mpmath.mp.dps = 50
AGREE = 1e-12


def _exact_top(g: np.ndarray, log_scale: float) -> mpmath.mpf:
    eig = mpmath.eigsy(mpmath.matrix(g.tolist()), eigvals_only=True)
    return mpmath.sqrt(max(eig)) * mpmath.exp(mpmath.mpf(log_scale) / 2)


def _exact_along(g: np.ndarray, c: np.ndarray, log_scale: float) -> mpmath.mpf:
    q = mpmath.fsum(mpmath.mpf(c[i]) * mpmath.mpf(g[i, j]) * mpmath.mpf(c[j])
                    for i in range(len(c)) for j in range(len(c)))
    return mpmath.sqrt(max(q, 0)) * mpmath.exp(mpmath.mpf(log_scale) / 2)


def _readings(g: np.ndarray, log_scale: float) -> tuple[RecursionResult, LipschitzBound, LocalBound]:
    t = torch.as_tensor(g)
    result = RecursionResult(t, log_scale, [], [])
    bound = LipschitzBound(value=result.value, method="test", per_rule={}, rule=None, multipliers=(), slopes=(),
                           seconds=0.0, grams={"test": Gram(t, log_scale)})
    local = LocalBound(radius=0.1, norm="2", lower=(), upper=(), alphas=(), betas=(),
                       grams={"test": Gram(t, log_scale)}, anchored=False)
    return result, bound, local


@pytest.mark.parametrize("log_scale", [0.0, 3.7, -41.0])
def test_every_result_type_reads_a_gram_matrix_alike(log_scale: float, rng: np.random.Generator) -> None:
    a = rng.normal(size=(6, 9))
    g = a @ a.T
    result, bound, local = _readings(g, log_scale)
    top = _exact_top(g, log_scale)
    lipschitz = {"RecursionResult.value": result.value, "LipschitzBound.value": bound.value,
                 "Gram.value": Gram(torch.as_tensor(g), log_scale).value, "LocalBound.value": local.value,
                 "optimizer value": _Problem([], [], [], None).value(result)}
    for name, value in lipschitz.items():
        assert value == pytest.approx(result.value, rel=AGREE), name
        assert value >= top, name
        assert value <= top * (1 + 2 * INFLATION), name  # inflated by 1e-8, not more
    pair, local_pair = bound.pairwise(), local.pairwise()
    np.testing.assert_allclose(local_pair, pair, rtol=AGREE, atol=0)
    for i in range(6):
        for j in range(6):
            c = np.zeros(6)
            c[i] -= 1.0
            c[j] += 1.0
            if i == j:
                assert pair[i, j] == 0.0
                continue
            direction = _Problem([], [], [], torch.as_tensor(c)).value(result)
            assert bound.along(c) == pytest.approx(pair[i, j], rel=AGREE)
            assert direction == pytest.approx(pair[i, j], rel=AGREE)
            assert pair[i, j] >= _exact_along(g, c, log_scale)
    c = rng.normal(size=6)
    assert bound.along(c) >= _exact_along(g, c, log_scale)
    assert _Problem([], [], [], torch.as_tensor(c)).value(result) == pytest.approx(bound.along(c), rel=AGREE)


def test_row_norms_of_the_local_recursion_use_the_same_step(rng: np.random.Generator) -> None:
    """Per-neuron constants ||row_i(W F)|| exp(s / 2) of the local recursion (identity factor)."""
    w = torch.as_tensor(rng.normal(size=(5, 7)))
    log_scale = 2.3
    rows = _row_norms(w, w, Pass([], None, log_scale)).numpy()
    g = (w @ w.T).numpy()
    for i in range(5):
        assert rows[i] == pytest.approx(float(certified_root(g[i, i], log_scale)), rel=AGREE)
        assert rows[i] >= mpmath.sqrt(mpmath.fsum(mpmath.mpf(v) ** 2 for v in w[i].tolist())) * mpmath.exp(
            mpmath.mpf(log_scale) / 2)


def test_a_one_by_one_gram_matrix() -> None:
    g = np.array([[2.25]])
    result, bound, local = _readings(g, 1.0)
    assert result.value == bound.value == local.value == float(certified_root(2.25, 1.0))
    assert result.value >= _exact_top(g, 1.0)


def test_cancelling_margins_keep_their_floor() -> None:
    """Two nearly equal outputs: G_ii + G_jj - 2 G_ij cancels; every reading stays above the exact value."""
    base = np.array([1.0, 2.0, 3.0])
    a = np.stack([base, base * (1 + 1e-9), np.array([0.5, -1.0, 2.0])])
    g = a @ a.T
    _, bound, local = _readings(g, 0.5)
    c = np.array([1.0, -1.0, 0.0])
    exact = _exact_along(g, c, 0.5)
    for value in (bound.along(c), bound.pairwise()[0, 1], local.pairwise()[0, 1]):
        assert value >= exact
        # the floor is CANCELLATION (sqrt(G_00) + sqrt(G_11))^2 under the root: small against the rows' norms
        assert value <= 2 * np.sqrt(CANCELLATION) * (np.sqrt(g[0, 0]) + np.sqrt(g[1, 1])) * np.exp(0.25) + 2 * exact


def test_gamma() -> None:
    assert gamma(3) == 3 * UNIT_ROUNDOFF / (1 - 3 * UNIT_ROUNDOFF)
    assert affine_gamma(10) == 2 * 11 * UNIT_ROUNDOFF / (1 - 11 * UNIT_ROUNDOFF)  # the form the copies had
    assert gamma(10) > 10 * UNIT_ROUNDOFF
