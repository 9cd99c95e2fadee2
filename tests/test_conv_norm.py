"""Conv operators and their certified spectral norms (lipcert.operators, lipcert.bounds.conv_norm)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipcert.bounds.conv_norm import conv_norm, dense_gram, frequency_blocks
from lipcert.errors import DenseTooLargeError, ShapeMismatchError
from lipcert.operators import Conv2dOperator

SEED = 20261207


def _random_ops(seed: int, count: int) -> list[Conv2dOperator]:
    """Random small convolutions over strides, asymmetric padding, dilation, groups, circular, adjoint."""
    gen = torch.Generator().manual_seed(seed)

    def r(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    ops = []
    while len(ops) < count:
        g = (1, 1, 2, 3)[len(ops) % 4]
        ci, co = g * r(1, 3), g * r(1, 3)
        kernel = torch.randn(co, ci // g, r(1, 3), r(1, 3), generator=gen, dtype=torch.float64)
        try:
            ops.append(Conv2dOperator.conv(kernel, (ci, r(3, 8), r(3, 8)), stride=(r(1, 2), r(1, 3)),
                                           padding=tuple(r(0, 2) for _ in range(4)), dilation=(r(1, 2), r(1, 2)),
                                           groups=g, circular=len(ops) % 5 == 0, adjoint=len(ops) % 3 == 0))
        except ShapeMismatchError:  # the kernel does not fit the input
            continue
    return ops


def test_operator_products_match_its_dense_matrix_and_torch():
    print(f"seed {SEED}")
    for op in _random_ops(SEED, 30):
        a = op.dense()
        x = torch.randn(2, op.shape[1], dtype=torch.float64)
        y = torch.randn(2, op.shape[0], dtype=torch.float64)
        torch.testing.assert_close(op.matmat(x), x @ a.T)
        torch.testing.assert_close(op.rmatmat(y), y @ a)
    # zero and circular padding as torch's Conv2d computes them; ConvTranspose2d as torch's
    gen = torch.Generator().manual_seed(SEED)
    for mode in ("zeros", "circular"):
        m = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, bias=False, padding_mode=mode).double()
        op = Conv2dOperator.conv(m.weight, (4, 8, 8), stride=2, padding=1, groups=2, circular=mode == "circular")
        x = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(op.matmat(x.reshape(3, -1)), m(x).reshape(3, -1).detach())
    t = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False).double()
    y = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64)
    out = t(y).detach()
    op = Conv2dOperator.conv(t.weight, tuple(out.shape[1:]), stride=2, padding=1, groups=2, adjoint=True)
    assert op.input_shape == (4, 5, 5)
    torch.testing.assert_close(op.matmat(y.reshape(3, -1)), out.reshape(3, -1))


def test_conv_norm_is_never_below_the_exact_norm_and_the_dense_estimator_is_exact():
    print(f"seed {SEED + 1}")
    for op in _random_ops(SEED + 1, 40):
        exact = float(torch.linalg.matrix_norm(op.dense(), 2))
        full = conv_norm(op)
        assert full.value >= exact, (op.describe(), full, exact)
        assert full.estimates["dense"] <= exact * (1 + 1e-6)
        if "frequency" in full.estimates:
            assert full.estimates["frequency"] >= exact, (op.describe(), full, exact)
            assert conv_norm(op, dense_limit=0).method == "frequency"


def test_circular_padding_is_exact_in_frequency_and_zero_padding_loosens_on_small_grids():
    gen = torch.Generator().manual_seed(SEED + 2)
    kernel = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    for stride in (1, 2):
        op = Conv2dOperator.conv(kernel, (3, 8, 8), stride=stride, padding=1, circular=True)
        exact = float(torch.linalg.matrix_norm(op.dense(), 2))
        assert exact <= conv_norm(op, dense_limit=0).value <= exact * (1 + 1e-6)
    small = Conv2dOperator.conv(kernel, (3, 4, 4), padding=1)
    bound = conv_norm(small)
    assert bound.estimates["frequency"] > 1.01 * bound.estimates["dense"]  # why the dense estimator exists
    assert bound.method == "dense"


def test_grouped_norm_is_the_max_over_groups_not_the_product():
    # group norms 0.5 and 3: the operator is block-diagonal, its norm is 3 (a product would say 1.5)
    kernel = torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    kernel[0, 0, 0, 0], kernel[1, 0, 0, 0] = 0.5, 3.0
    op = Conv2dOperator.conv(kernel, (2, 5, 5), groups=2)
    bound = conv_norm(op)
    assert 3.0 <= bound.value <= 3.0 * (1 + 1e-6)
    gen = torch.Generator().manual_seed(SEED + 3)
    op = Conv2dOperator.conv(torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64), (6, 6, 6), padding=1,
                             groups=3)
    exact = float(torch.linalg.matrix_norm(op.dense(), 2))
    per_group = [float(torch.linalg.matrix_norm(Conv2dOperator.conv(op.kernel[2 * g:2 * g + 2], (2, 6, 6),
                                                                    padding=1).dense(), 2)) for g in range(3)]
    assert exact == pytest.approx(max(per_group), rel=1e-10)
    assert exact <= conv_norm(op).value <= exact * (1 + 1e-6)


def test_average_pooling_and_folded_batch_norm_as_convolutions():
    gen = torch.Generator().manual_seed(SEED + 4)
    x = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    pool = Conv2dOperator.conv(torch.full((3, 1, 2, 2), 0.25, dtype=torch.float64), (3, 7, 7), stride=2, groups=3)
    torch.testing.assert_close(pool.matmat(x.reshape(2, -1)), F.avg_pool2d(x, 2).reshape(2, -1))
    exact = float(torch.linalg.matrix_norm(pool.dense(), 2))
    assert exact == pytest.approx(0.5)  # disjoint 2x2 windows averaged: 1/2
    assert exact <= conv_norm(pool).value <= exact * (1 + 1e-6)
    bn = torch.nn.BatchNorm2d(4).double().eval()
    bn.running_var.uniform_(0.5, 2.0, generator=gen)
    bn.weight.data.uniform_(-2.0, 2.0, generator=gen)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = Conv2dOperator.conv(conv.weight * scale[:, None, None, None], (3, 7, 7), padding=1)
    shift = bn(conv(x)) - bn(torch.zeros_like(conv(x)))
    torch.testing.assert_close(folded.matmat(x.reshape(2, -1)), shift.reshape(2, -1).detach())
    exact = float(torch.linalg.matrix_norm(folded.dense(), 2))
    assert exact <= conv_norm(folded).value <= exact * (1 + 1e-6)


def test_frequency_blocks_and_dense_gram_have_the_operator_spectrum():
    gen = torch.Generator().manual_seed(SEED + 5)
    op = Conv2dOperator.conv(torch.randn(3, 2, 3, 2, generator=gen, dtype=torch.float64), (2, 6, 5), stride=(2, 1),
                             padding=(1, 0, 1, 0), circular=True)
    a = op.dense()
    svals = torch.linalg.svdvals(a)
    gram = dense_gram(op)
    torch.testing.assert_close(torch.linalg.eigvalsh(gram).flip(0)[: len(svals)], svals**2)
    blocks = frequency_blocks(op)  # half of the frequencies: every singular value of a block is one of A's
    for s in torch.linalg.svdvals(blocks).reshape(-1):
        assert float((svals - s).abs().min()) < 1e-9 * float(svals[0])


def test_bad_shapes_and_oversized_dense_matrices_are_named_errors():
    with pytest.raises(ShapeMismatchError, match="channels"):
        Conv2dOperator.conv(torch.zeros(4, 3, 3, 3), (2, 8, 8))
    with pytest.raises(ShapeMismatchError, match="no output"):
        Conv2dOperator.conv(torch.zeros(4, 3, 5, 5), (3, 2, 2))
    op = Conv2dOperator.conv(torch.zeros(64, 64, 3, 3), (64, 32, 32), padding=1)
    assert op.dense_nbytes == 8 * (64 * 32 * 32) ** 2
    with pytest.raises(DenseTooLargeError, match="GB"):
        op.dense(max_bytes=10**9)
    assert math.prod(op.output_shape) == op.shape[0]


def test_rows_exact_estimator_is_sound_and_between_exact_and_frequency():
    print(f"seed {SEED + 6}")
    from lipcert.bounds.conv_norm import _frequency_bounds, _semi_bound, semi_grams

    for op in _random_ops(SEED + 6, 30):
        if "frequency" not in conv_norm(op, dense_limit=0).estimates:
            continue
        exact = float(torch.linalg.matrix_norm(op.dense(), 2))
        columns = _frequency_bounds(op)
        semi = _semi_bound(op, columns)
        assert exact <= semi <= float(columns.max()) * (1 + 1e-12), op.describe()
    # the per-frequency Gram matrices carry the operator's spectrum when the columns are circular and exact
    gen = torch.Generator().manual_seed(SEED + 6)
    op = Conv2dOperator.conv(torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64), (2, 5, 6), padding=1,
                             circular=True)
    eig = torch.linalg.eigvalsh(semi_grams(op)).reshape(-1)
    svals = torch.linalg.svdvals(op.dense())
    for e in eig[eig > 1e-9 * float(svals[0]) ** 2]:  # B B^H has more rows than B columns: zeros aside
        assert float((svals**2 - e).abs().min()) < 1e-9 * float(svals[0]) ** 2
    # at 8 x 8 and 64 channels (Gram 4096 > limit 2048) rows-exact replaces the exact Gram and beats frequency
    op = Conv2dOperator.conv(torch.randn(64, 64, 3, 3, generator=gen, dtype=torch.float64) / 24, (64, 8, 8), padding=1)
    bound = conv_norm(op, dense_limit=2048)
    assert set(bound.estimates) == {"frequency", "rows exact"} and bound.method == "rows exact"
    assert bound.value < bound.estimates["frequency"]
